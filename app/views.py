"""The study pages' figures, built once per study revision.

A figure is a pure function of a study's trials (:mod:`app.charts`) and the page's options. Here
each one is cached under the study's fingerprint (:func:`app.queries.revision`), shared by every
viewer (``st.cache_resource``: figures are never modified once built, and Streamlit only reads
them), so a rerun with no new trials costs one cheap fingerprint query and builds nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app import charts, queries
from app.optuna_reads import PARAM_PREFIX, StudyTrials
from oialr.vocab import TrialAttr

SPACE = tuple(PARAM_PREFIX + p for p in ("delay", "update_freq", "sigma_cutoff"))
_CACHE = {"max_entries": 64, "ttl": 3600, "show_spinner": False}


def complete(trials: StudyTrials):
    return trials.frame[trials.frame["state"] == "COMPLETE"]


def searched(trials: StudyTrials):
    """Complete trials with at least one searched parameter (baselines have none)."""
    params = [PARAM_PREFIX + p for p in trials.params]
    done = complete(trials)
    return done[done[params].notna().any(axis=1)] if params else done.iloc[0:0]


def log_x_default(url: str, study_ids: Sequence[int], x: str) -> bool:
    """A log size axis by default when every searched trial lies below 0.2."""
    values = []
    for study_id in study_ids:
        done = complete(queries.trials(url, study_id))
        mask = ~done[TrialAttr.MODE].isin(list(charts.BASELINE_SYMBOLS))
        if x in done:
            values.append(pd.to_numeric(done.loc[mask, x], errors="coerce").to_numpy(float))
    finite = np.concatenate(values) if values else np.zeros(0)
    finite = finite[np.isfinite(finite)]
    return bool(len(finite)) and bool(finite.max() < 0.2)


def pareto(url, study_ids: tuple[int, ...], x, color, show_test, log_x) -> go.Figure:
    """The Pareto figure of a study (first id) with others overlaid."""
    revisions = tuple(queries.revision(url, s) for s in study_ids)
    return _pareto(url, study_ids, x, color, show_test, log_x, revisions)


@st.cache_resource(**_CACHE)
def _pareto(url, study_ids, x, color, show_test, log_x, revisions) -> go.Figure:
    layers, main = [], queries.trials(url, study_ids[0])
    for study_id in study_ids:
        trials = queries.trials(url, study_id)
        done = complete(trials)
        if x not in done:
            done = done.assign(**{x: np.nan})  # a study that never recorded this fraction
        layers.append((trials.study_name, done, [PARAM_PREFIX + p for p in trials.params]))
    return charts.pareto_figure(
        layers, x=x, y=TrialAttr.VAL_ACC, color=color, show_test=show_test,
        x_direction=main.direction(x), y_direction=main.direction(TrialAttr.VAL_ACC),
        log_x=log_x,
    )  # fmt: skip


def space(url: str, study_id: int) -> go.Figure:
    return _space(url, study_id, queries.revision(url, study_id))


@st.cache_resource(**_CACHE)
def _space(url: str, study_id: int, revision: tuple) -> go.Figure:
    trials = queries.trials(url, study_id)
    logs = [trials.is_log(p.removeprefix(PARAM_PREFIX)) for p in SPACE]
    return charts.space_figure(complete(trials), SPACE, color=TrialAttr.VAL_ACC, log_axes=logs)


def slices(url: str, study_id: int, objectives: tuple[str, ...]) -> go.Figure:
    return _slices(url, study_id, objectives, queries.revision(url, study_id))


@st.cache_resource(**_CACHE)
def _slices(url: str, study_id: int, objectives: tuple, revision: tuple) -> go.Figure:
    trials = queries.trials(url, study_id)
    params = [PARAM_PREFIX + p for p in trials.params]
    return charts.slices_figure(
        searched(trials), params, list(objectives), log_params=_logs(trials),
        directions={o: trials.direction(o) for o in objectives},
    )  # fmt: skip


def parallel(url: str, study_id: int, ranges: tuple) -> go.Figure:
    """``ranges``: ((column, (lo, hi)), ...) from the page's filters."""
    return _parallel(url, study_id, ranges, queries.revision(url, study_id))


@st.cache_resource(**_CACHE)
def _parallel(url: str, study_id: int, ranges: tuple, revision: tuple) -> go.Figure:
    trials = queries.trials(url, study_id)
    done = searched(trials)
    objectives = [o for o in trials.objectives if o in done]
    columns = [PARAM_PREFIX + p for p in trials.params] + objectives
    return charts.parallel_figure(
        done, columns, objectives[0], ranges=dict(ranges), log_columns=_logs(trials),
        direction=trials.direction(objectives[0]),
    )  # fmt: skip


def contour(url: str, study_id: int, x: str, y: str, z: str) -> go.Figure:
    return _contour(url, study_id, x, y, z, queries.revision(url, study_id))


@st.cache_resource(**_CACHE)
def _contour(url: str, study_id: int, x: str, y: str, z: str, revision: tuple) -> go.Figure:
    trials = queries.trials(url, study_id)
    logs = _logs(trials)
    return charts.contour_figure(
        searched(trials), x, y, z, log_x=x in logs, log_y=y in logs, direction=trials.direction(z)
    )


def _logs(trials: StudyTrials) -> list[str]:
    return [PARAM_PREFIX + p for p in trials.params if trials.is_log(p)]
