"""The one reader of the metrics tables: runs, their step/epoch/layer/stability rows, and the
summaries the dashboard shows, as DataFrames built from the Table objects of
:mod:`oialr.metrics_schema` (a new column reaches every reader at once).

Reads are incremental (``after_id``) and windowed (``limit``): a dashboard opened late on a long
run reads its tail, and each poll only rows it has not seen; both walk the (run_id, id) index.
The reader never writes: give it a read-only engine and it works as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .errors import StorageError
from .metrics_schema import (
    ADDED_COLUMNS,
    METRICS_TABLES,
    as_utc,
    decode_spectrum,
    from_json,
    layers_table,
    runs_table,
    stability_table,
)
from .vocab import RUNNING

__all__ = ["MetricsReader", "TABLES"]

TABLES: dict[str, sa.Table] = {t.name.removeprefix("oialr_"): t for t in METRICS_TABLES}
_TIMES = ("started_at", "updated_at", "finished_at")
_BULKY = {"config", "result", "sigma", "spectrum"}  # read only when asked for
# Columns a database written by an older oialr may lack, per table.
_LATER: dict[str, set[str]] = {}
for _column in (c for added in ADDED_COLUMNS.values() for c in added):
    _LATER.setdefault(_column.table.name, set()).add(_column.name)


class MetricsReader:
    """Reads the ``oialr_*`` tables of one database.

    A database written by an older oialr may lack columns later schemas added (until a store
    opens it and adds them): those read as missing values, and ``sigma`` falls back to the
    older JSON column.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self._absent: dict[str, set[str]] = {}  # table -> later columns it does not have

    def _columns(self, table: sa.Table, bulky: bool = True) -> list[sa.Column]:
        """The table's columns this database has (bulky ones only if asked for)."""
        if table.name in _LATER and table.name not in self._absent:
            with self.engine.connect() as conn:
                present = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
            self._absent[table.name] = _LATER[table.name] - present
        absent = self._absent.get(table.name, set())
        return [
            c for c in table.columns if c.name not in absent and (bulky or c.name not in _BULKY)
        ]

    def frame(self, stmt: sa.Select) -> pd.DataFrame:
        """One query's rows as a DataFrame, JSON columns decoded, times UTC-aware, and the
        float32 ``spectrum`` decoded into ``sigma`` (a list of floats, largest first)."""
        with self.engine.connect() as conn:
            result = conn.execute(stmt)
            # Plain tuples from the DBAPI cursor: building a frame from Row objects costs
            # several times more (20,000 steps: 0.2 s), and no column needs SQLAlchemy's
            # processing here (times are parsed below, JSON and spectra decoded below).
            rows = result.cursor.fetchall() if result.cursor is not None else []
            frame = pd.DataFrame.from_records(rows, columns=list(result.keys()))
        for column in frame.columns.intersection(["config", "result", "sigma"]):
            frame[column] = [from_json(text) for text in frame[column]]
        if "spectrum" in frame:
            legacy = frame["sigma"] if "sigma" in frame else [None] * len(frame)
            frame["sigma"] = [
                decode_spectrum(blob) if blob is not None else old
                for blob, old in zip(frame.pop("spectrum").astype(object), legacy)
            ]
        for column in frame.columns.intersection(_TIMES):
            frame[column] = pd.to_datetime(frame[column], utc=True)
        return frame

    # -- runs ------------------------------------------------------------------------------------
    def runs(self, *, study_name: str | None = None, full: bool = True) -> pd.DataFrame:
        """All runs (or those of one study), oldest first; ``full`` adds config and result."""
        stmt = sa.select(*self._columns(runs_table, full)).order_by(runs_table.c.id)
        if study_name is not None:
            stmt = stmt.where(runs_table.c.study_name == study_name)
        return self.frame(stmt)

    def latest_runs(
        self,
        study_name: str,
        *,
        full: bool = True,
        trial_numbers: Sequence[int] | None = None,
        recent: int | None = None,
    ) -> pd.DataFrame:
        """The latest run of each trial of a study (a retried trial has several), in trial
        order; only those of ``trial_numbers`` if given, and with ``recent``, only the running
        runs and the ``recent`` most recently written others (a study of 10,000 trials has
        10,000 runs: a page that lists them needs the live ones, not all)."""
        rt = runs_table
        where = [rt.c.study_name == study_name, rt.c.trial_number.is_not(None)]
        if trial_numbers is not None:
            where.append(rt.c.trial_number.in_([int(n) for n in trial_numbers]))
        latest = sa.select(sa.func.max(rt.c.id)).where(*where).group_by(rt.c.trial_number)
        stmt = sa.select(*self._columns(rt, full)).where(rt.c.id.in_(latest))
        if recent is not None:
            newest = (
                sa.select(rt.c.id).where(rt.c.id.in_(latest))
                .order_by(rt.c.updated_at.desc()).limit(int(recent))
            )  # fmt: skip
            stmt = stmt.where(sa.or_(rt.c.status == RUNNING, rt.c.id.in_(newest)))
        return self.frame(stmt.order_by(rt.c.trial_number))

    def recorded_runs(
        self,
        *,
        full: bool = True,
        run_ids: Sequence[int] | None = None,
        recent: int | None = None,
    ) -> pd.DataFrame:
        """Runs recorded without a study (``oialr.record``, ``oialr train``), newest first; only
        those of ``run_ids`` if given, and with ``recent``, only the running runs and the
        ``recent`` most recently written others."""
        rt = runs_table
        where = [rt.c.study_name.is_(None)]
        if run_ids is not None:
            where.append(rt.c.id.in_([int(i) for i in run_ids]))
        stmt = sa.select(*self._columns(rt, full)).where(*where)
        if recent is not None:
            newest = sa.select(rt.c.id).where(*where).order_by(rt.c.updated_at.desc())
            stmt = stmt.where(sa.or_(rt.c.status == RUNNING, rt.c.id.in_(newest.limit(recent))))
        return self.frame(stmt.order_by(rt.c.id.desc()))

    def run(self, run_id: int, *, full: bool = True) -> dict[str, Any]:
        """One run as a dict.

        Raises:
            StorageError: no run has this id.
        """
        stmt = sa.select(*self._columns(runs_table, full)).where(runs_table.c.id == int(run_id))
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            raise StorageError(f"no run {run_id} in this database")
        record = dict(row._mapping)
        for column in ("config", "result"):
            if column in record:
                record[column] = from_json(record[column])
        for column in _TIMES:
            record[column] = as_utc(record[column])
        return record

    # -- metrics rows ----------------------------------------------------------------------------
    def metrics(
        self,
        table: str,
        run_id: int,
        after_id: int = 0,
        *,
        limit: int | None = None,
        bulky: bool = True,
    ) -> pd.DataFrame:
        """Rows of a run's ``table`` (steps, epochs, layers, stability) with ``id > after_id``,
        in id order; with ``limit``, only the newest ``limit`` of them."""
        t = TABLES[table]
        stmt = (
            sa.select(*self._columns(t, bulky))
            .where(t.c.run_id == int(run_id), t.c.id > int(after_id))
            .order_by(t.c.id.desc())
        )
        if limit is not None:
            stmt = stmt.limit(int(limit))
        return self._uniform(self.frame(stmt), t, bulky).iloc[::-1].reset_index(drop=True)

    def epochs_of_runs(self, run_ids: Sequence[int]) -> pd.DataFrame:
        """Epoch rows of several runs at once (for side-by-side comparison)."""
        t = TABLES["epochs"]
        ids = [int(r) for r in run_ids]
        return self.frame(sa.select(t).where(t.c.run_id.in_(ids)).order_by(t.c.run_id, t.c.id))

    def layer_record(self, row_id: int) -> dict[str, Any] | None:
        """One per-layer record, with Σ's whole spectrum in ``sigma`` (largest first)."""
        lt = layers_table
        frame = self.frame(sa.select(*self._columns(lt)).where(lt.c.id == int(row_id)))
        return None if frame.empty else self._uniform(frame, lt).iloc[0].to_dict()

    def layer_summary(self, run_id: int) -> pd.DataFrame:
        """Per layer of a run: its kind and shape, full rank, final rank and fraction,
        parameters, the last recorded spectrum with its cutoff, effective and stable rank,
        stability (mean over updates, last warm-up value) and the conversion step."""
        lt, st_ = layers_table, stability_table
        run = int(run_id)
        last = sa.select(sa.func.max(lt.c.id)).where(lt.c.run_id == run).group_by(lt.c.layer)
        wanted = ["id", "layer", "kind", "rows", "cols", "n", "rank_after", "rank_fraction",
                  "trainable", "stored", "cutoff", "effective_rank", "stable_rank", "sigma",
                  "spectrum", "step"]  # fmt: skip
        have = {c.name: c for c in self._columns(lt)}
        latest = self._uniform(
            self.frame(
                sa.select(*(have[name] for name in wanted if name in have)).where(lt.c.id.in_(last))
            ),
            lt,
        ).rename(columns={"n": "full_rank", "rank_after": "rank"})
        stats = self.frame(
            sa.select(
                lt.c.layer, sa.func.avg(lt.c.stability).label("mean_stability"),
                sa.func.count().label("updates"), sa.func.min(lt.c.step).label("converted_at"),
            ).where(lt.c.run_id == run).group_by(lt.c.layer)
        )  # fmt: skip
        warm_last = (
            sa.select(sa.func.max(st_.c.id)).where(st_.c.run_id == run).group_by(st_.c.layer)
        )
        warm = self.frame(
            sa.select(st_.c.layer, st_.c.stability.label("warmup_stability")).where(
                st_.c.id.in_(warm_last)
            )
        )
        out = latest.merge(stats, on="layer", how="left").merge(warm, on="layer", how="left")
        out = out[[c for c in wanted if c in out] + [c for c in out if c not in wanted]]
        return out.sort_values("layer", key=_model_order).reset_index(drop=True)

    def layer_history(self, run_ids: Sequence[int]) -> pd.DataFrame:
        """Every convert/update record of several runs, without spectra: rank trajectories
        (and kind, shape, effective and stable rank) per run and layer, in step order."""
        lt = layers_table
        ids = [int(r) for r in run_ids]
        stmt = (
            sa.select(*self._columns(lt, bulky=False))
            .where(lt.c.run_id.in_(ids))
            .order_by(lt.c.run_id, lt.c.id)
        )
        return self._uniform(self.frame(stmt), lt, bulky=False)

    def _uniform(self, frame: pd.DataFrame, table: sa.Table, bulky: bool = True) -> pd.DataFrame:
        """Adds, as missing values, the later columns an older database does not have yet."""
        for name in sorted(self._absent.get(table.name, ())):
            if (bulky or name not in _BULKY) and name != "spectrum":
                frame[name] = None
        return frame


def _model_order(names: pd.Series) -> pd.Series:
    """Numeric module names ("3" < "10") sort as numbers; others alphabetically after them."""
    return names.map(lambda n: (0, int(n), "") if str(n).isdigit() else (1, 0, str(n)))
