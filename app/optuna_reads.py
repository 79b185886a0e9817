"""Reads of Optuna's own tables for the dashboard, in a few SQL queries.

Reading all trials through the Optuna API takes seconds at thousands of trials (and opening its
storage may create or migrate tables), while one SQL join over ``trials`` × ``trial_values`` ×
``trial_params`` takes milliseconds. The table layout is stable per
``version_info.schema_version``, which :func:`app.queries.probe` checks. Plain functions of an
engine, so the benchmark and the unit tests call them without a Streamlit runtime.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from oialr.vocab import DENSE, OBJECTIVES_ATTR, OIALR, TrialAttr

_logger = logging.getLogger(__name__)

STATES = ("RUNNING", "WAITING", "COMPLETE", "PRUNED", "FAIL")
PARAM_PREFIX = "params_"


class StudyMissing(LookupError):
    """No study with the id asked for."""


@dataclass
class StudyTrials:
    """One study's trials as one row each, plus what is needed to read the columns.

    ``frame`` has ``number``, ``trial_id``, ``state``, ``datetime_start``, ``datetime_complete``,
    one column per objective (named as in ``objectives``), one per trial user attr, and one per
    parameter named ``params_<name>``.
    """

    study_id: int
    study_name: str
    frame: pd.DataFrame
    objectives: list[str]
    directions: list[str]  # "maximize" / "minimize", in objective order
    params: list[str]  # parameter names, without the prefix
    distributions: dict[str, str] = field(default_factory=dict)  # name -> Optuna JSON

    def direction(self, column: str) -> str:
        """The direction of an objective column; other metrics are judged by their name."""
        if column in self.objectives:
            return self.directions[self.objectives.index(column)]
        return "maximize" if column.endswith("acc") else "minimize"

    def is_log(self, param: str) -> bool:
        """Whether a parameter was sampled on a log scale (so its axes should be log too)."""
        text = self.distributions.get(param)
        return bool(text and json.loads(text).get("attributes", {}).get("log"))


def _frame(engine: Engine, sql: str, **params: Any) -> pd.DataFrame:
    """Runs one bound-parameter query and returns its rows as a DataFrame."""
    stmt = sa.text(sql)
    for name, value in params.items():
        if isinstance(value, (list, tuple)):  # IN (...) lists are bound too, never inlined
            stmt = stmt.bindparams(sa.bindparam(name, expanding=True))
    with engine.connect() as conn:
        result = conn.execute(stmt, params)
        columns = list(result.keys())
        # Rows straight from the DBAPI cursor (plain tuples): no result processing is needed
        # for text() queries, and building a frame from Row objects costs several times more.
        rows = result.cursor.fetchall() if result.returns_rows else []
        return pd.DataFrame.from_records(rows, columns=columns)


# ---------------------------------------------------------------------------------------------


def _decode(values: pd.Series) -> list[Any]:
    """JSON texts to Python values. Most user attrs are numbers, whose JSON text is also valid
    float text (a vectorised path), or plain strings such as ``"oialr"`` (unquoted directly);
    only the rest (escapes, lists, objects, booleans) go through ``json.loads``."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    out = numbers.astype(object)
    texts = values.to_numpy(dtype=object)
    for i in np.flatnonzero(np.isnan(numbers)):
        text = texts[i]
        if not isinstance(text, str):
            out[i] = None
        elif len(text) > 1 and text[0] == text[-1] == '"' and "\\" not in text:
            out[i] = text[1:-1]  # a plain JSON string: what json.loads would return
        else:
            out[i] = json.loads(text)
    return out.tolist()


def _numeric(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns that hold only numbers (and gaps) become float columns."""
    for column in frame.columns:
        values = frame[column]
        if values.dtype != object or not values.notna().any():
            continue
        kinds = values.dropna().map(type)
        if kinds.isin([int, float]).all():  # bool is a type of its own: never converted
            frame[column] = values.astype(float)
    return frame


def _trial_values(kind: pd.Series, value: pd.Series) -> np.ndarray:
    """Optuna stores ±inf as a value type beside a NULL value."""
    out = value.astype(float).to_numpy(copy=True)
    out[(kind == "INF_POS").to_numpy()] = np.inf
    out[(kind == "INF_NEG").to_numpy()] = -np.inf
    return out


def _objectives(engine: Engine, study_ids: list[int]) -> dict[int, tuple[list[str], list[str]]]:
    """study id -> (objective names, directions); names from ``oialr.objectives`` if set."""
    if not study_ids:
        return {}
    dirs = _frame(
        engine,
        "SELECT study_id, objective, direction FROM study_directions "
        "WHERE study_id IN :ids ORDER BY study_id, objective",
        ids=study_ids,
    )
    names = _frame(
        engine,
        "SELECT study_id, value_json FROM study_user_attributes "
        "WHERE key = :key AND study_id IN :ids",
        key=OBJECTIVES_ATTR,
        ids=study_ids,
    )
    named = dict(zip(names["study_id"], _decode(names["value_json"])))
    out = {}
    for study_id in study_ids:
        directions = [d.lower() for d in dirs.loc[dirs["study_id"] == study_id, "direction"]]
        given = named.get(study_id)
        if not isinstance(given, list) or len(given) != len(directions):
            given = (
                ["value"]
                if len(directions) == 1
                else [f"value_{i}" for i in range(len(directions))]
            )
        out[int(study_id)] = ([str(g) for g in given], directions)
    return out


def list_studies(engine: Engine) -> pd.DataFrame:
    """One row per study: trial counts by state, best accuracy, the smallest trainable
    fraction within 1 point of the dense baseline, and the last activity."""
    counts = _frame(
        engine,
        "SELECT s.study_id, s.study_name, t.state, COUNT(t.trial_id) AS n, "
        "MIN(t.datetime_start) AS first_start, "
        "MAX(t.datetime_start) AS last_start, MAX(t.datetime_complete) AS last_complete "
        "FROM studies s LEFT JOIN trials t ON t.study_id = s.study_id "
        "GROUP BY s.study_id, s.study_name, t.state",
    )
    columns = ["study_id", "study", "objectives", *STATES, "trials", "trials_per_hour"]
    columns += ["best_val_acc", "dense_val_acc", "min_fraction_within_1pt", "last_activity"]
    if counts.empty:
        return pd.DataFrame(columns=columns)
    studies = counts.drop_duplicates("study_id")[["study_id", "study_name"]]
    studies = studies.rename(columns={"study_name": "study"}).set_index("study_id")
    by_state = counts.groupby(["study_id", "state"])["n"].sum().unstack()
    for state in STATES:
        studies[state] = by_state.get(state, 0)
    studies[list(STATES)] = studies[list(STATES)].fillna(0).astype(int)
    studies["trials"] = studies[list(STATES)].sum(axis=1)
    last = pd.concat(
        [pd.to_datetime(counts[c], utc=True) for c in ("last_start", "last_complete")], axis=1
    ).max(axis=1)
    studies["last_activity"] = last.groupby(counts["study_id"]).max()
    studies["trials_per_hour"] = _trials_per_hour(counts)

    objectives = _objectives(engine, [int(i) for i in studies.index])
    studies["objectives"] = [", ".join(objectives[int(i)][0]) for i in studies.index]
    results = _complete_results(engine, objectives)
    for study_id, group in results.groupby("study_id"):
        best, dense, within = _summary(group)
        studies.loc[study_id, ["best_val_acc", "dense_val_acc", "min_fraction_within_1pt"]] = [
            best,
            dense,
            within,
        ]
    for column in ("best_val_acc", "dense_val_acc", "min_fraction_within_1pt"):
        if column not in studies:
            studies[column] = np.nan
    return studies.reset_index()[columns]


def _trials_per_hour(counts: pd.DataFrame) -> pd.Series:
    """Finished trials (complete, pruned, failed) per hour of the study's wall clock, from its
    first trial's start to its last completion: what the workers together get through."""
    finished = counts[counts["state"].isin(["COMPLETE", "PRUNED", "FAIL"])]
    start = pd.to_datetime(counts["first_start"], utc=True).groupby(counts["study_id"]).min()
    end = pd.to_datetime(finished["last_complete"], utc=True).groupby(finished["study_id"]).max()
    hours = (end - start.reindex(end.index)).dt.total_seconds() / 3600
    rate = finished.groupby("study_id")["n"].sum() / hours.where(hours > 0)
    return rate.reindex(start.index)


def _complete_results(engine: Engine, objectives: dict) -> pd.DataFrame:
    """Accuracy, trainable fraction and mode of every complete trial, one row each: user attrs
    first (pivoted in SQL), objective values where an attr is missing."""
    keys = (TrialAttr.VAL_ACC, TrialAttr.TRAINABLE_FRACTION, TrialAttr.MODE)
    pivot = ", ".join(
        f"MAX(CASE WHEN a.key = :k{i} THEN a.value_json END) AS {k}" for i, k in enumerate(keys)
    )
    results = _frame(
        engine,
        f"SELECT t.study_id, t.trial_id, {pivot} "
        "FROM trials t LEFT JOIN trial_user_attributes a "
        "ON a.trial_id = t.trial_id AND a.key IN :keys "
        "WHERE t.state = 'COMPLETE' GROUP BY t.study_id, t.trial_id",
        keys=list(keys),
        **{f"k{i}": k for i, k in enumerate(keys)},
    )
    for column in (TrialAttr.VAL_ACC, TrialAttr.TRAINABLE_FRACTION):
        results[column] = pd.to_numeric(results[column], errors="coerce")
    results[TrialAttr.MODE] = _decode(results[TrialAttr.MODE])
    values = _frame(
        engine,
        "SELECT t.study_id, t.trial_id, v.objective, v.value, v.value_type FROM trial_values v "
        "JOIN trials t ON t.trial_id = v.trial_id WHERE t.state = 'COMPLETE'",
    )
    values["value"] = _trial_values(values["value_type"], values["value"])
    named = pd.DataFrame(
        [(sid, i, name) for sid, (names, _) in objectives.items() for i, name in enumerate(names)],
        columns=["study_id", "objective", "key"],
    )
    values = values.merge(named, on=["study_id", "objective"])
    for column in (TrialAttr.VAL_ACC, TrialAttr.TRAINABLE_FRACTION):
        fill = values[values["key"] == column].set_index("trial_id")["value"]
        results[column] = results[column].fillna(results["trial_id"].map(fill))
    return results


def _summary(group: pd.DataFrame) -> tuple[float, float, float]:
    """(best val_acc, dense baseline val_acc, smallest trainable fraction among trials whose
    val_acc is within 1 point of the dense baseline) for one study's complete trials."""
    acc = pd.to_numeric(group[TrialAttr.VAL_ACC], errors="coerce")
    frac = pd.to_numeric(group[TrialAttr.TRAINABLE_FRACTION], errors="coerce")
    best = float(acc.max()) if acc.notna().any() else np.nan
    dense_acc = acc[group[TrialAttr.MODE] == DENSE]
    if dense_acc.notna().any():
        dense = float(dense_acc.max())
        ok = frac[(acc >= dense - 0.01) & (group[TrialAttr.MODE] != DENSE)]
        within = float(ok.min()) if ok.notna().any() else np.nan
    else:
        dense, within = np.nan, np.nan
    return best, dense, within


def storage_token(engine: Engine) -> tuple:
    """A cheap fingerprint of every study at once (3 ms at 10,000 trials): it changes when a
    study or trial is added, a trial finishes or changes state, or user attrs are written."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT (SELECT COUNT(*) FROM studies), COUNT(*), MAX(trial_id), "
                "MAX(datetime_complete), SUM(CASE WHEN state = 'RUNNING' THEN 1 ELSE 0 END), "
                "(SELECT MAX(trial_user_attribute_id) FROM trial_user_attributes) FROM trials"
            )
        ).one()
    return tuple(str(v) for v in row)


def study_token(engine: Engine, study_id: int) -> tuple:
    """A cheap fingerprint of a study that changes whenever a trial is added or finishes (and
    whenever user attrs are written, as ``oialr study run`` does at the end of a trial)."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT COUNT(*), MAX(t.trial_id), MAX(t.datetime_complete), "
                "SUM(CASE WHEN t.state = 'RUNNING' THEN 1 ELSE 0 END), "
                "(SELECT MAX(a.trial_user_attribute_id) FROM trial_user_attributes a "
                " JOIN trials u ON u.trial_id = a.trial_id WHERE u.study_id = :sid) "
                "FROM trials t WHERE t.study_id = :sid"
            ),
            {"sid": study_id},
        ).one()
    return tuple(str(v) for v in row)


def study_outline(engine: Engine, study_id: int) -> dict[str, Any]:
    """What a study is, without reading its trials: objectives and directions, searched
    parameters, and the failed trials with their reasons (the Studies page's summary)."""
    objectives, directions = _objectives(engine, [study_id]).get(study_id, ([], []))
    params = _frame(
        engine,
        "SELECT DISTINCT p.param_name FROM trial_params p JOIN trials t "
        "ON t.trial_id = p.trial_id WHERE t.study_id = :sid ORDER BY p.param_name",
        sid=study_id,
    )
    failed = _frame(
        engine,
        "SELECT t.number, a.value_json FROM trials t LEFT JOIN trial_user_attributes a "
        "ON a.trial_id = t.trial_id AND a.key = :key "
        "WHERE t.study_id = :sid AND t.state = 'FAIL' ORDER BY t.number",
        sid=study_id,
        key=TrialAttr.FAIL_REASON,
    )
    failed[TrialAttr.FAIL_REASON] = _decode(failed.pop("value_json"))
    return {"objectives": objectives, "directions": directions,
            "params": params["param_name"].tolist(), "failed": failed}  # fmt: skip


def load_study_trials(engine: Engine, study_id: int) -> StudyTrials:
    """All trials of one study, one row each (see :class:`StudyTrials`), in six queries."""
    name = _frame(engine, "SELECT study_name FROM studies WHERE study_id = :sid", sid=study_id)
    if name.empty:
        raise StudyMissing(f"No study with id {study_id}.")
    objectives, directions = _objectives(engine, [study_id])[study_id]
    trials = _frame(
        engine,
        "SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials "
        "WHERE study_id = :sid ORDER BY number",
        sid=study_id,
    )
    for column in ("datetime_start", "datetime_complete"):
        trials[column] = pd.to_datetime(trials[column], utc=True)
    trials["duration_s"] = (
        trials["datetime_complete"] - trials["datetime_start"]
    ).dt.total_seconds()
    trials = _with_results(engine, study_id, trials.set_index("trial_id"), objectives)
    trials, distributions = _with_params(engine, study_id, trials)
    frame = trials.reset_index()
    if TrialAttr.MODE not in frame:
        frame[TrialAttr.MODE] = OIALR
    return StudyTrials(
        study_id=study_id,
        study_name=str(name.iloc[0, 0]),
        frame=frame,
        objectives=objectives,
        directions=directions,
        params=sorted(distributions),
        distributions=distributions,
    )


def _with_results(engine: Engine, study_id: int, trials: pd.DataFrame, objectives) -> pd.DataFrame:
    """Trials joined with their user attrs and, where an attr is missing, objective values."""
    values = _frame(
        engine,
        "SELECT v.trial_id, v.objective, v.value, v.value_type FROM trial_values v "
        "JOIN trials t ON t.trial_id = v.trial_id WHERE t.study_id = :sid",
        sid=study_id,
    )
    values["value"] = _trial_values(values["value_type"], values["value"])
    values = values.pivot(index="trial_id", columns="objective", values="value")
    attrs = _frame(
        engine,
        "SELECT a.trial_id, a.key, a.value_json FROM trial_user_attributes a "
        "JOIN trials t ON t.trial_id = a.trial_id WHERE t.study_id = :sid",
        sid=study_id,
    )
    attrs["value"] = _decode(attrs["value_json"])
    attrs = attrs.pivot(index="trial_id", columns="key", values="value")
    attrs = _numeric(attrs.drop(columns=[c for c in attrs if c in trials], errors="ignore"))
    trials = trials.join(attrs)
    for i, objective in enumerate(objectives):
        if i in values:
            from_value = values[i].reindex(trials.index)
            trials[objective] = (
                trials[objective].astype(float).fillna(from_value)
                if objective in trials
                else from_value
            )
        elif objective not in trials:
            trials[objective] = np.nan
    return trials


def _with_params(engine: Engine, study_id: int, trials: pd.DataFrame):
    """Trials with one ``params_<name>`` column per parameter (choices decoded), and each
    parameter's distribution as Optuna's JSON."""
    params = _frame(
        engine,
        "SELECT p.trial_id, p.param_name, p.param_value FROM trial_params p "
        "JOIN trials t ON t.trial_id = p.trial_id WHERE t.study_id = :sid",
        sid=study_id,
    )
    dists = _frame(
        engine,
        "SELECT param_name, distribution_json FROM trial_params WHERE param_id IN ("
        " SELECT MAX(p.param_id) FROM trial_params p JOIN trials t ON t.trial_id = p.trial_id "
        " WHERE t.study_id = :sid GROUP BY p.param_name)",
        sid=study_id,
    )
    distributions = dict(zip(dists["param_name"], dists["distribution_json"]))
    if len(params):
        wide = params.pivot(index="trial_id", columns="param_name", values="param_value")
        for param in sorted(distributions):
            column = wide[param].astype(object)
            choices = json.loads(distributions[param]).get("attributes", {}).get("choices")
            if choices is not None:  # categorical: Optuna stores the index of the choice
                column = column.map(lambda i, c=choices: c[int(i)] if pd.notna(i) else None)
            trials[PARAM_PREFIX + param] = column.reindex(trials.index)
        trials = _numeric(trials)
    return trials, distributions


IMPORTANCE_TRIALS = 2_000  # trials the evaluators see at most (a seeded sample beyond)


def param_importances(
    trials: StudyTrials, evaluator: str = "ped-anova", max_trials: int = IMPORTANCE_TRIALS
) -> pd.DataFrame:
    """Importance of each parameter for each objective with Optuna's evaluators.

    The study is rebuilt in memory from the SQL rows, so Optuna's storage is never opened on the
    user's database (opening it may migrate or write). Rebuilding costs about 0.4 ms a trial
    (Optuna copies each one) and the evaluators grow with the trials too, so past
    ``max_trials`` they see a random sample (seed 0); ``attrs["sampled"]`` then says so.
    Returns columns objective, param, importance; empty when fewer than 3 complete trials have
    every parameter.
    """
    import optuna
    from optuna.distributions import json_to_distribution
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator
    from optuna.trial import TrialState, create_trial

    columns = [PARAM_PREFIX + p for p in trials.params]
    frame = trials.frame
    done = frame[(frame["state"] == "COMPLETE") & frame[columns].notna().all(axis=1)]
    done = done[np.isfinite(done[trials.objectives].to_numpy(dtype=float)).all(axis=1)]
    if len(done) < 3 or not columns:
        return pd.DataFrame(columns=["objective", "param", "importance"])
    note = ""
    if len(done) > max_trials:
        note = f"from a random sample (seed 0) of {max_trials:,} of {len(done):,} complete trials"
        done = done.sample(n=max_trials, random_state=0).sort_index()
    dists = {p: json_to_distribution(trials.distributions[p]) for p in trials.params}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line per call
    try:
        study = optuna.create_study(directions=trials.directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.add_trials(
        [
            create_trial(
                state=TrialState.COMPLETE,
                params={p: _internal(dists[p], row[PARAM_PREFIX + p]) for p in trials.params},
                distributions=dists,
                values=[float(row[o]) for o in trials.objectives],
            )
            for row in done.to_dict("records")
        ]
    )
    rows = []
    for i, objective in enumerate(trials.objectives):
        method = (
            FanovaImportanceEvaluator(seed=0)
            if evaluator == "fanova"
            else PedAnovaImportanceEvaluator()
        )
        # PED-ANOVA looks for what makes the target *low*: flip objectives to be maximised.
        sign = -1.0 if trials.directions[i] == "maximize" else 1.0
        with warnings.catch_warnings():  # its "computes ... low target values" note: handled
            warnings.simplefilter("ignore", UserWarning)
            try:
                scores = optuna.importance.get_param_importances(
                    study, evaluator=method, target=lambda t, i=i, s=sign: s * t.values[i]
                )
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                # Degenerate data (e.g. one distinct value everywhere): no importances, no crash.
                _logger.info("no importances for %s: %s", objective, exc)
                continue
        rows += [(objective, param, float(score)) for param, score in scores.items()]
    out = pd.DataFrame(rows, columns=["objective", "param", "importance"])
    out.attrs["sampled"] = note
    return out


def _internal(dist: Any, value: Any) -> Any:
    """Frame values are external (choices already mapped); ints must be ints again."""
    if type(dist).__name__ == "IntDistribution":
        return int(value)
    return value
