"""The dashboard's reads: one read-only engine per storage, a probe that says what the storage
holds, and the cached calls the pages make (over :mod:`app.optuna_reads` for Optuna's tables and
:class:`oialr.metrics_reader.MetricsReader` for ours).

``st.cache_resource`` holds one engine per URL and ``st.cache_data(ttl=...)`` makes many viewers
cost one read per TTL; a study's trials are re-read only when its fingerprint changes. The app
only reads: SQLite files are opened with ``mode=ro`` (a missing file stays missing instead of
being created) and ``PRAGMA query_only``; PostgreSQL transactions are ``READ ONLY``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pandas as pd
import sqlalchemy as sa
import streamlit as st
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.optuna_reads import (
    PARAM_PREFIX,
    StudyTrials,
    list_studies,
    load_study_trials,
    param_importances,
    storage_token,
    study_outline,
    study_token,
)
from oialr.metrics_reader import MetricsReader
from oialr.metrics_schema import make_engine
from oialr.vocab import TrialAttr, mask_url, resolve_storage, sqlite_file

__all__ = ["PARAM_PREFIX", "EVALUATORS", "LIVE_WINDOW", "StorageUnavailable", "StorageStatus"]

# Optuna RDB schema versions whose tables we read directly (Optuna 4.x-5.x write 12).
KNOWN_OPTUNA_SCHEMAS = frozenset({12})
OPTUNA_TABLES = frozenset({"studies", "trials", "trial_values", "trial_params", "version_info"})
# Most recent rows the live page keeps per metrics table (a long run has millions of steps).
LIVE_WINDOW: dict[str, int] = {
    "steps": 20_000,
    "epochs": 5_000,
    "layers": 50_000,
    "stability": 50_000,
}
# Importance evaluators usable here: Optuna's fANOVA needs scikit-learn, PED-ANOVA nothing more.
EVALUATORS = ("ped-anova", "fanova") if importlib.util.find_spec("sklearn") else ("ped-anova",)


class StorageUnavailable(Exception):
    """The storage cannot be read; ``kind`` is "missing", "empty" or "error"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class StorageStatus:
    """What :func:`probe` found: ``kind`` "ok", "missing", "empty" or "error" and why."""

    kind: str
    message: str = ""
    optuna_schema: int | None = None
    has_metrics: bool = False
    warning: str = ""


def storage_from_args(argv: Sequence[str], environ: Mapping[str, str]) -> str:
    """``--storage URL`` from the script's arguments, else ``$OIALR_STORAGE``, else the default.

    ``streamlit run app -- --storage URL`` hands everything after ``--`` to the script.
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--storage")
    args, _ = parser.parse_known_args(list(argv))
    return resolve_storage(args.storage, environ)


def open_engine(url: str) -> Engine:
    """A read-only engine for ``url``.

    Raises:
        StorageUnavailable: A malformed URL ("error") or a SQLite file that does not exist
            ("missing"); nothing is created.
    """
    try:
        path = sqlite_file(url)
        in_memory = path is None and sa.make_url(url).get_backend_name() == "sqlite"
    except Exception as exc:  # sa.make_url raises several types on garbage
        raise StorageUnavailable(
            "error", f"Malformed storage URL {mask_url(url)!r}: {exc}"
        ) from None
    if in_memory:
        raise StorageUnavailable("missing", f"{mask_url(url)!r} is an in-memory database.")
    if path is None:
        try:
            engine = make_engine(url)
        except Exception as exc:  # oialr's StorageError carries the fix in its message
            raise StorageUnavailable("error", str(exc)) from None
        if engine.dialect.name == "postgresql":
            # Every transaction is READ ONLY: a bug in a page can never write to a live study.
            engine = engine.execution_options(postgresql_readonly=True)
        return engine
    path = path.resolve()
    if not path.is_file():
        raise StorageUnavailable("missing", f"No database file at `{path}` yet.")

    def connect() -> sqlite3.Connection:
        # mode=ro never creates the file; check_same_thread=False because Streamlit serves each
        # session from its own thread while the pooled engine is shared.
        conn = sqlite3.connect(
            f"file:{quote(str(path))}?mode=ro", uri=True, timeout=30, check_same_thread=False
        )
        conn.execute("PRAGMA query_only = ON")
        return conn

    return sa.create_engine("sqlite://", creator=connect, poolclass=sa.pool.QueuePool)


def probe(url: str, engine: Engine | None = None) -> StorageStatus:
    """Checks that ``url`` holds readable Optuna studies, without raising.

    Returns a status whose ``message`` tells the user what to do when ``kind`` is not "ok".
    """
    shown = mask_url(url)
    hint = f"start one with `oialr study run studies/quickstart.toml --storage {shown}`"
    try:
        engine = engine or open_engine(url)
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            if not tables >= OPTUNA_TABLES:
                what = "only OIALR run metrics" if "oialr_runs" in tables else "no Optuna tables"
                return StorageStatus(
                    "empty",
                    f"No Optuna study in `{shown}` ({what}): {hint}.",
                    has_metrics="oialr_runs" in tables,
                )
            schema = conn.execute(sa.text("SELECT MAX(schema_version) FROM version_info")).scalar()
            count = conn.execute(sa.text("SELECT COUNT(*) FROM studies")).scalar()
    except StorageUnavailable as exc:
        if exc.kind == "missing":
            return StorageStatus("missing", f"{exc} Pass `--storage URL`, or {hint}.")
        return StorageStatus(exc.kind, str(exc))
    except (SQLAlchemyError, sqlite3.Error) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return StorageStatus(
            "error",
            f"Cannot read `{shown}`: {reason}. Is it an Optuna/OIALR database? "
            "Point `--storage` at the database your study writes to.",
        )
    warning = ""
    if schema not in KNOWN_OPTUNA_SCHEMAS:
        warning = (
            f"Optuna schema version {schema} is not one this dashboard was tested with "
            f"({sorted(KNOWN_OPTUNA_SCHEMAS)}); some views may be wrong."
        )
    if not count:
        return StorageStatus(
            "empty", f"No studies in `{shown}` yet: {hint}.", schema, "oialr_runs" in tables
        )
    return StorageStatus("ok", "", schema, "oialr_runs" in tables, warning)


# -- cached calls: what the pages use ----------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def engine(url: str) -> Engine:
    """One pooled read-only engine per storage URL for the whole server."""
    return open_engine(url)


@st.cache_resource(ttl=60, show_spinner=False)
def reader(url: str) -> MetricsReader:
    """The metrics reader of a storage; renewed every minute, so columns a newer worker adds
    to an older database are read soon after (the reader remembers which ones exist)."""
    return MetricsReader(engine(url))


@st.cache_data(ttl=2, show_spinner=False)
def status(url: str) -> StorageStatus:
    """:func:`probe`, re-checked every 2 s (so a database that appears later is found)."""
    try:
        return probe(url, engine(url))
    except StorageUnavailable as exc:  # engine() raised: missing file, malformed URL
        return probe(url) if exc.kind == "missing" else StorageStatus(exc.kind, str(exc))


def studies(url: str) -> pd.DataFrame:
    """Every study's summary, re-read only when a trial anywhere changes (checked every 2 s:
    at 10,000 trials the summary takes 0.2 s, the check 3 ms)."""
    return _studies(url, _all_token(url))


@st.cache_data(ttl=2, show_spinner=False)
def _all_token(url: str) -> tuple:
    return storage_token(engine(url))


@st.cache_data(ttl=600, max_entries=8, show_spinner=False)
def _studies(url: str, token: tuple) -> pd.DataFrame:
    return list_studies(engine(url))


@st.cache_data(ttl=2, show_spinner=False)
def _token(url: str, study_id: int) -> tuple:
    return study_token(engine(url), study_id)


@st.cache_data(ttl=600, max_entries=32, show_spinner=False)
def _trials(url: str, study_id: int, token: tuple) -> StudyTrials:
    return load_study_trials(engine(url), study_id)


def outline(url: str, study_id: int) -> dict[str, Any]:
    """Objectives, parameters and failures of a study, without reading all its trials."""
    return _outline(url, study_id, _token(url, study_id))


@st.cache_data(ttl=600, max_entries=32, show_spinner=False)
def _outline(url: str, study_id: int, token: tuple) -> dict[str, Any]:
    return study_outline(engine(url), study_id)


def revision(url: str, study_id: int) -> tuple:
    """The study's fingerprint (checked every 2 s): caches keyed by it are reused until a
    trial is added, finishes or records its results."""
    return _token(url, study_id)


def trials(url: str, study_id: int) -> StudyTrials:
    """A study's trials, re-read only when its fingerprint changes (checked every 2 s)."""
    return _trials(url, study_id, _token(url, study_id))


def importances(url: str, study_id: int, evaluator: str) -> pd.DataFrame:
    """Parameter importances, recomputed only when the study changes."""
    return _importances(url, study_id, evaluator, _token(url, study_id))


@st.cache_data(ttl=600, max_entries=32, show_spinner="Computing importances…")
def _importances(url: str, study_id: int, evaluator: str, token: tuple) -> pd.DataFrame:
    return param_importances(trials(url, study_id), evaluator)


def studies_index(url: str) -> dict[str, int]:
    """Study name → id."""
    frame = studies(url)
    return dict(zip(frame["study"], frame["study_id"].astype(int)))


NO_RUNS = ["id", "trial_number", "status", "mode", "model", "dataset", "updated_at"]
RECENT_RUNS = 200  # runs the Live page offers: the running ones and the latest others


@st.cache_data(ttl=2, show_spinner=False)
def live_runs(url: str, study_name: str, also: int | None = None) -> pd.DataFrame:
    """The runs the Live page offers: every running one, the ``RECENT_RUNS`` written last,
    and the latest run of trial ``also`` (the one in the URL) wherever it is."""
    if not status(url).has_metrics:
        return pd.DataFrame(columns=NO_RUNS)
    metrics = reader(url)
    found = metrics.latest_runs(study_name, full=False, recent=RECENT_RUNS)
    if also is not None and also not in set(found["trial_number"]):
        extra = metrics.latest_runs(study_name, full=False, trial_numbers=[also])
        found = pd.concat([found, extra], ignore_index=True) if len(extra) else found
    return found


@st.cache_data(ttl=2, show_spinner=False)
def recorded_runs(url: str, also: int | None = None) -> pd.DataFrame:
    """The runs recorded without a study that the Live page offers: every running one, the
    ``RECENT_RUNS`` written last, and run ``also`` (the one in the URL) wherever it is."""
    if not status(url).has_metrics:
        return pd.DataFrame(columns=NO_RUNS)
    metrics = reader(url)
    found = metrics.recorded_runs(full=False, recent=RECENT_RUNS)
    if also is not None and also not in set(found["id"]):
        extra = metrics.recorded_runs(full=False, run_ids=[also])
        found = pd.concat([found, extra], ignore_index=True) if len(extra) else found
    return found


@st.cache_data(ttl=2, show_spinner=False)
def runs_of_trials(url: str, study_name: str, numbers: tuple[int, ...]) -> pd.DataFrame:
    """The latest run of each of these trials (a few, not the study's thousands)."""
    if not status(url).has_metrics or not numbers:
        return pd.DataFrame(columns=NO_RUNS)
    return reader(url).latest_runs(study_name, full=False, trial_numbers=numbers)


def poll(metrics: MetricsReader, run_id: int, after: Mapping[str, int]) -> dict[str, Any]:
    """One live tick: the run's row and every metrics row newer than ``after[table]``."""
    try:
        run = metrics.run(run_id, full=False)
    except Exception:  # a run deleted while its page is open
        run = None
    out: dict[str, Any] = {"run": run}
    for table, window in LIVE_WINDOW.items():
        out[table] = metrics.metrics(table, run_id, after.get(table, 0), limit=window, bulky=False)
    return out


@st.cache_data(ttl=1, show_spinner=False)
def live_poll(url: str, run_id: int, after: tuple[tuple[str, int], ...]) -> dict[str, Any]:
    """One tick of the live page; viewers at the same position share one read per second."""
    return poll(reader(url), run_id, dict(after))


def extend_window(window: dict[str, Any] | None, run_id: int, tick: dict[str, Any]) -> dict:
    """Appends a :func:`poll` tick to a live window, keeping the newest ``LIVE_WINDOW`` rows.

    The window is ``{"run_id", "run", "after": {table: last id}, "frames": {table: rows}}``;
    a window of another run starts over.
    """
    if not window or window.get("run_id") != run_id:
        window = {"run_id": run_id, "run": None, "after": {}, "frames": {}}
    window["run"] = tick["run"]
    for table, limit in LIVE_WINDOW.items():
        new, old = tick[table], window["frames"].get(table)
        if len(new):
            both = new if old is None or old.empty else pd.concat([old, new], ignore_index=True)
            window["frames"][table] = both.iloc[-limit:].reset_index(drop=True)
            window["after"][table] = int(new["id"].iloc[-1])
        elif old is None:
            window["frames"][table] = new
    return window


@st.cache_data(ttl=600, max_entries=256, show_spinner=False)
def layer_record(url: str, row_id: int) -> dict[str, Any] | None:
    """One per-layer record with its spectrum (read only when a layer and update are chosen)."""
    return reader(url).layer_record(row_id)


@st.cache_data(ttl=5, show_spinner=False)
def layers_of_run(url: str, run_id: int) -> pd.DataFrame:
    if not status(url).has_metrics:
        return pd.DataFrame(columns=["layer", "rank", "sigma"])
    return reader(url).layer_summary(run_id)


@st.cache_data(ttl=5, show_spinner=False)
def epochs(url: str, run_ids: tuple[int, ...]) -> pd.DataFrame:
    return reader(url).epochs_of_runs(run_ids if status(url).has_metrics else ())


@st.cache_data(ttl=5, show_spinner=False)
def layer_history(url: str, run_ids: tuple[int, ...]) -> pd.DataFrame:
    """Every layer record of the runs, without spectra (rank trajectories to compare)."""
    return reader(url).layer_history(run_ids if status(url).has_metrics else ())


def trial_runs(trials: StudyTrials, runs: pd.DataFrame) -> pd.Series:
    """Run id per trial number: the trial's ``run_id`` attr, else its latest linked run."""
    frame = trials.frame.set_index("number")
    linked = runs.set_index("trial_number")["id"] if len(runs) else pd.Series(dtype=float)
    attr = TrialAttr.RUN_ID
    from_attr = frame[attr] if attr in frame else pd.Series(float("nan"), index=frame.index)
    return from_attr.astype(float).fillna(linked.reindex(frame.index).astype(float))
