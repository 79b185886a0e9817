"""Every database read of the dashboard; the only module of ``app/`` that touches the database.

Two layers. Plain functions take an SQLAlchemy engine and return DataFrames: they run without a
Streamlit runtime (the benchmark and the unit tests call them directly). Cached wrappers take the
storage URL and are what the pages call: ``st.cache_resource`` holds one engine per URL and
``st.cache_data(ttl=...)`` makes many viewers cost one read per TTL.

Optuna's trials are read with a few SQL queries over its tables rather than through the Optuna
API, which takes seconds at thousands of trials (and whose storage may create or migrate tables
on open); the table layout is stable per ``version_info.schema_version``, which :func:`probe`
checks. The app only reads: SQLite files are opened with ``mode=ro`` (a missing file stays
missing instead of being created) and ``PRAGMA query_only``; PostgreSQL transactions are
``READ ONLY``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sqlite3
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
import sqlalchemy as sa
import streamlit as st
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from oialr.store import make_engine, mask_url

_logger = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///oialr.db"
# Optuna RDB schema versions whose tables we read directly (Optuna 4.x-5.x write 12).
KNOWN_OPTUNA_SCHEMAS = frozenset({12})
OPTUNA_TABLES = frozenset({"studies", "trials", "trial_values", "trial_params", "version_info"})
STATES = ("RUNNING", "WAITING", "COMPLETE", "PRUNED", "FAIL")
PARAM_PREFIX = "params_"
# Columns the live page reads, per metrics table: everything but the bulky Σ spectra, which are
# fetched one row at a time when a layer and update are chosen.
LIVE_COLUMNS: dict[str, str] = {
    "oialr_steps": "id, step, loss, lr, step_time",
    "oialr_epochs": "id, epoch, step, train_loss, train_acc, val_loss, val_acc, "
    "trainable_fraction, stored_fraction, mean_rank, phase, time",
    "oialr_layers": "id, step, layer, event, rank_before, rank_after, n, rank_fraction, "
    "trainable, stored, rule, dropped_mass, stability, cutoff",
    "oialr_stability": "id, step, layer, stability",
}
# Most recent rows the live page keeps per table (a long run has millions of steps).
LIVE_WINDOW: dict[str, int] = {
    "oialr_steps": 20_000,
    "oialr_epochs": 5_000,
    "oialr_layers": 50_000,
    "oialr_stability": 50_000,
}
# Importance evaluators usable here: Optuna's fANOVA needs scikit-learn, PED-ANOVA nothing more.
EVALUATORS = ("ped-anova", "fanova") if importlib.util.find_spec("sklearn") else ("ped-anova",)
_RUN_COLUMNS = (
    "id, name, study_name, trial_number, trial_id, mode, model, dataset, status, error, "
    "conversion_step, started_at, updated_at, finished_at, host"
)


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


# ---------------------------------------------------------------------------------------------
# Storage URL and engine
# ---------------------------------------------------------------------------------------------


def storage_from_args(argv: Sequence[str], environ: Mapping[str, str]) -> str:
    """``--storage URL`` from the script's arguments, else ``$OIALR_STORAGE``, else the default.

    ``streamlit run app -- --storage URL`` hands everything after ``--`` to the script.
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--storage")
    args, _ = parser.parse_known_args(list(argv))
    return args.storage or environ.get("OIALR_STORAGE") or DEFAULT_STORAGE


def _sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL, None for other backends.

    Raises:
        StorageUnavailable: An in-memory SQLite URL, which can hold no study to show.
    """
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = (parsed.database or "").removeprefix("file:").split("?", 1)[0]
    if database in ("", ":memory:"):
        raise StorageUnavailable("missing", f"{mask_url(url)!r} is an in-memory database.")
    return Path(database).expanduser().resolve()


def open_engine(url: str) -> Engine:
    """A read-only engine for ``url``.

    Raises:
        StorageUnavailable: A malformed URL ("error") or a SQLite file that does not exist
            ("missing"); nothing is created.
    """
    try:
        path = _sqlite_path(url)
    except StorageUnavailable:
        raise
    except Exception as exc:  # sa.make_url raises several types on garbage
        raise StorageUnavailable(
            "error", f"Malformed storage URL {mask_url(url)!r}: {exc}"
        ) from None
    if path is None:
        try:
            engine = make_engine(url)
        except Exception as exc:  # oialr's StorageError carries the fix in its message
            raise StorageUnavailable("error", str(exc)) from None
        if engine.dialect.name == "postgresql":
            # Every transaction is READ ONLY: a bug in a page can never write to a live study.
            engine = engine.execution_options(postgresql_readonly=True)
        return engine
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
        return StorageStatus("empty", f"No studies in `{shown}` yet: {hint}.", schema)
    return StorageStatus("ok", "", schema, "oialr_runs" in tables, warning)


# ---------------------------------------------------------------------------------------------
# Studies and trials (Optuna's tables)
# ---------------------------------------------------------------------------------------------


def _decode(values: pd.Series) -> list[Any]:
    """JSON texts to Python values. Most user attrs are numbers, whose JSON text is also valid
    float text: those take a vectorised path and only the rest go through ``json.loads``."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    out = numbers.astype(object)
    texts = values.to_numpy(dtype=object)
    for i in np.flatnonzero(np.isnan(numbers)):
        out[i] = json.loads(texts[i]) if isinstance(texts[i], str) else None
    return out.tolist()


def _numeric(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns that hold only numbers (and gaps) become float columns."""
    for column in frame.columns:
        if frame[column].dtype == object:
            values = frame[column].dropna()
            if len(values) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
            ):
                frame[column] = frame[column].astype(float)
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
        key="oialr.objectives",
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
        "MAX(t.datetime_start) AS last_start, MAX(t.datetime_complete) AS last_complete "
        "FROM studies s LEFT JOIN trials t ON t.study_id = s.study_id "
        "GROUP BY s.study_id, s.study_name, t.state",
    )
    columns = ["study_id", "study", "objectives", *STATES, "trials", "best_val_acc"]
    columns += ["dense_val_acc", "min_fraction_within_1pt", "last_activity"]
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

    objectives = _objectives(engine, [int(i) for i in studies.index])
    studies["objectives"] = [", ".join(objectives[int(i)][0]) for i in studies.index]
    # Results of complete trials, one row each: user attrs first (pivoted in SQL), objective
    # values where an attr is missing.
    results = _frame(
        engine,
        "SELECT t.study_id, t.trial_id, "
        "MAX(CASE WHEN a.key = 'val_acc' THEN a.value_json END) AS val_acc, "
        "MAX(CASE WHEN a.key = 'trainable_fraction' THEN a.value_json END) "
        "AS trainable_fraction, "
        "MAX(CASE WHEN a.key = 'mode' THEN a.value_json END) AS mode "
        "FROM trials t LEFT JOIN trial_user_attributes a "
        "ON a.trial_id = t.trial_id AND a.key IN :keys "
        "WHERE t.state = 'COMPLETE' GROUP BY t.study_id, t.trial_id",
        keys=["val_acc", "trainable_fraction", "mode"],
    )
    for column in ("val_acc", "trainable_fraction"):
        results[column] = pd.to_numeric(results[column], errors="coerce")
    results["mode"] = _decode(results["mode"])
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
    for column in ("val_acc", "trainable_fraction"):
        fill = values[values["key"] == column].set_index("trial_id")["value"]
        results[column] = results[column].fillna(results["trial_id"].map(fill))
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


def _summary(group: pd.DataFrame) -> tuple[float, float, float]:
    """(best val_acc, dense baseline val_acc, smallest trainable fraction among trials whose
    val_acc is within 1 point of the dense baseline) for one study's complete trials."""
    acc = pd.to_numeric(group["val_acc"], errors="coerce")
    frac = pd.to_numeric(group["trainable_fraction"], errors="coerce")
    best = float(acc.max()) if acc.notna().any() else np.nan
    dense_acc = acc[group["mode"] == "dense"]
    if dense_acc.notna().any():
        dense = float(dense_acc.max())
        ok = frac[(acc >= dense - 0.01) & (group["mode"] != "dense")]
        within = float(ok.min()) if ok.notna().any() else np.nan
    else:
        dense, within = np.nan, np.nan
    return best, dense, within


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


def load_study_trials(engine: Engine, study_id: int) -> StudyTrials:
    """All trials of one study, one row each (see :class:`StudyTrials`), in five queries."""
    name = _frame(engine, "SELECT study_name FROM studies WHERE study_id = :sid", sid=study_id)
    if name.empty:
        raise StorageUnavailable("empty", f"No study with id {study_id}.")
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
    trials = trials.set_index("trial_id")

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
    names = sorted(distributions)
    if len(params):
        wide = params.pivot(index="trial_id", columns="param_name", values="param_value")
        for param in names:
            column = wide[param].astype(object)
            choices = json.loads(distributions[param]).get("attributes", {}).get("choices")
            if choices is not None:  # categorical: Optuna stores the index of the choice
                column = column.map(lambda i, c=choices: c[int(i)] if pd.notna(i) else None)
            trials[PARAM_PREFIX + param] = column.reindex(trials.index)
        trials = _numeric(trials)
    frame = trials.reset_index()
    if "mode" not in frame:
        frame["mode"] = "oialr"
    return StudyTrials(
        study_id=study_id,
        study_name=str(name.iloc[0, 0]),
        frame=frame,
        objectives=objectives,
        directions=directions,
        params=names,
        distributions=distributions,
    )


def param_importances(trials: StudyTrials, evaluator: str = "ped-anova") -> pd.DataFrame:
    """Importance of each parameter for each objective with Optuna's evaluators.

    The study is rebuilt in memory from the SQL rows, so Optuna's storage is never opened on the
    user's database (opening it may migrate or write). Returns columns objective, param,
    importance; empty when fewer than 3 complete trials have every parameter.
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
    return pd.DataFrame(rows, columns=["objective", "param", "importance"])


def _internal(dist: Any, value: Any) -> Any:
    """Frame values are external (choices already mapped); ints must be ints again."""
    if type(dist).__name__ == "IntDistribution":
        return int(value)
    return value


# ---------------------------------------------------------------------------------------------
# Runs and metrics (oialr_* tables)
# ---------------------------------------------------------------------------------------------


def study_runs(engine: Engine, study_name: str) -> pd.DataFrame:
    """The latest run of every trial of a study (a resumed trial may have several)."""
    frame = _frame(
        engine,
        f"SELECT {_RUN_COLUMNS} FROM oialr_runs WHERE id IN ("
        " SELECT MAX(id) FROM oialr_runs WHERE study_name = :name AND trial_number IS NOT NULL"
        " GROUP BY trial_number) ORDER BY trial_number",
        name=study_name,
    )
    for column in ("started_at", "updated_at", "finished_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def run_info(engine: Engine, run_id: int) -> dict[str, Any] | None:
    """One run's row (without its config), or None."""
    frame = _frame(engine, f"SELECT {_RUN_COLUMNS} FROM oialr_runs WHERE id = :run", run=run_id)
    return None if frame.empty else frame.iloc[0].to_dict()


def metrics(
    engine: Engine, table: str, run_id: int, after_id: int = 0, limit: int | None = None
) -> pd.DataFrame:
    """Rows of a run's metrics table with ``id > after_id``, in id order.

    With ``limit``, only the newest ``limit`` of them: a dashboard opened late on a long run
    reads its tail, not millions of rows. Both forms walk the (run_id, id) index.
    """
    columns = LIVE_COLUMNS[table]  # a fixed name from our own schema: safe to format in
    frame = _frame(
        engine,
        f"SELECT {columns} FROM {table} WHERE run_id = :run AND id > :after "
        "ORDER BY id DESC LIMIT :limit",
        run=int(run_id),
        after=int(after_id),
        limit=int(limit if limit is not None else 2**62),
    )
    return frame.iloc[::-1].reset_index(drop=True)


def poll(engine: Engine, run_id: int, after: Mapping[str, int]) -> dict[str, Any]:
    """One live tick: the run's row and every metrics row newer than ``after[table]``."""
    out: dict[str, Any] = {"run": run_info(engine, run_id)}
    for table, window in LIVE_WINDOW.items():
        out[table] = metrics(engine, table, run_id, after.get(table, 0), window)
    return out


def sigma(engine: Engine, layer_row_id: int) -> dict[str, Any] | None:
    """The recorded singular values of Σ (largest first) and the cutoff of one layer record."""
    frame = _frame(
        engine,
        "SELECT step, layer, event, rank_after, cutoff, sigma FROM oialr_layers WHERE id = :id",
        id=int(layer_row_id),
    )
    if frame.empty:
        return None
    row = frame.iloc[0].to_dict()
    row["sigma"] = json.loads(row["sigma"]) if isinstance(row["sigma"], str) else []
    return row


def layer_table(engine: Engine, run_id: int) -> pd.DataFrame:
    """Per layer of a run: full rank, final rank and fraction, parameters, stability (last and
    mean after conversion, last warm-up value) and the last recorded spectrum."""
    last = _frame(
        engine,
        "SELECT l.layer, l.n AS full_rank, l.rank_after AS rank, l.rank_fraction, l.trainable, "
        "l.stored, l.cutoff, l.sigma, l.step FROM oialr_layers l WHERE l.id IN ("
        " SELECT MAX(id) FROM oialr_layers WHERE run_id = :run GROUP BY layer)",
        run=int(run_id),
    )
    stats = _frame(
        engine,
        "SELECT layer, AVG(stability) AS mean_stability, COUNT(*) AS updates, "
        "MIN(step) AS converted_at FROM oialr_layers WHERE run_id = :run GROUP BY layer",
        run=int(run_id),
    )
    warm = _frame(
        engine,
        "SELECT s.layer, s.stability AS warmup_stability FROM oialr_stability s WHERE s.id IN ("
        " SELECT MAX(id) FROM oialr_stability WHERE run_id = :run GROUP BY layer)",
        run=int(run_id),
    )
    out = last.merge(stats, on="layer", how="left").merge(warm, on="layer", how="left")
    out["sigma"] = [json.loads(s) if isinstance(s, str) else [] for s in out["sigma"]]
    return out.sort_values("layer", key=_layer_order).reset_index(drop=True)


def _layer_order(names: pd.Series) -> pd.Series:
    """Numeric module names ("3" < "10") sort as numbers; others alphabetically after them."""
    return names.map(lambda n: (0, int(n), "") if str(n).isdigit() else (1, 0, str(n)))


def epochs_of_runs(engine: Engine, run_ids: Sequence[int]) -> pd.DataFrame:
    """Epoch rows of several runs at once (for side-by-side comparison)."""
    if not run_ids:
        return pd.DataFrame(columns=["run_id", *LIVE_COLUMNS["oialr_epochs"].split(", ")])
    return _frame(
        engine,
        f"SELECT run_id, {LIVE_COLUMNS['oialr_epochs']} FROM oialr_epochs "
        "WHERE run_id IN :runs ORDER BY run_id, id",
        runs=[int(r) for r in run_ids],
    )


def trial_runs(trials: StudyTrials, runs: pd.DataFrame) -> pd.Series:
    """Run id per trial number: the trial's ``run_id`` attr, else its latest linked run."""
    frame = trials.frame.set_index("number")
    linked = runs.set_index("trial_number")["id"] if len(runs) else pd.Series(dtype=float)
    from_attr = frame["run_id"] if "run_id" in frame else pd.Series(np.nan, index=frame.index)
    return from_attr.astype(float).fillna(linked.reindex(frame.index).astype(float))


# ---------------------------------------------------------------------------------------------
# Cached wrappers: what the pages call
# ---------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def engine(url: str) -> Engine:
    """One pooled read-only engine per storage URL for the whole server."""
    return open_engine(url)


@st.cache_data(ttl=2, show_spinner=False)
def status(url: str) -> StorageStatus:
    """:func:`probe`, re-checked every 2 s (so a database that appears later is found)."""
    try:
        return probe(url, engine(url))
    except StorageUnavailable as exc:  # engine() raised: missing file, malformed URL
        return probe(url) if exc.kind == "missing" else StorageStatus(exc.kind, str(exc))


@st.cache_data(ttl=5, show_spinner=False)
def studies(url: str) -> pd.DataFrame:
    return list_studies(engine(url))


@st.cache_data(ttl=2, show_spinner=False)
def _token(url: str, study_id: int) -> tuple:
    return study_token(engine(url), study_id)


@st.cache_data(ttl=600, max_entries=32, show_spinner=False)
def _trials(url: str, study_id: int, token: tuple) -> StudyTrials:
    return load_study_trials(engine(url), study_id)


def trials(url: str, study_id: int) -> StudyTrials:
    """A study's trials, re-read only when its fingerprint changes (checked every 2 s)."""
    return _trials(url, study_id, _token(url, study_id))


def importances(url: str, study_id: int, evaluator: str) -> pd.DataFrame:
    """Parameter importances, recomputed only when the study changes."""
    return _importances(url, study_id, evaluator, _token(url, study_id))


@st.cache_data(ttl=600, max_entries=32, show_spinner="Computing importances…")
def _importances(url: str, study_id: int, evaluator: str, token: tuple) -> pd.DataFrame:
    return param_importances(trials(url, study_id), evaluator)


@st.cache_data(ttl=2, show_spinner=False)
def runs(url: str, study_name: str) -> pd.DataFrame:
    """A study's runs; none while the oialr tables do not exist (no worker has started yet)."""
    if not status(url).has_metrics:
        return pd.DataFrame(columns=[c.strip() for c in _RUN_COLUMNS.split(",")])
    return study_runs(engine(url), study_name)


@st.cache_data(ttl=1, show_spinner=False)
def live_poll(url: str, run_id: int, after: tuple[tuple[str, int], ...]) -> dict[str, Any]:
    """One tick of the live page; viewers at the same position share one read per second."""
    return poll(engine(url), run_id, dict(after))


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
def sigma_row(url: str, layer_row_id: int) -> dict[str, Any] | None:
    return sigma(engine(url), layer_row_id)


@st.cache_data(ttl=5, show_spinner=False)
def layers_of_run(url: str, run_id: int) -> pd.DataFrame:
    if not status(url).has_metrics:
        return pd.DataFrame(columns=["layer", "rank", "sigma"])
    return layer_table(engine(url), run_id)


@st.cache_data(ttl=5, show_spinner=False)
def epochs(url: str, run_ids: tuple[int, ...]) -> pd.DataFrame:
    return epochs_of_runs(engine(url), run_ids if status(url).has_metrics else ())
