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
    METRICS_TABLES,
    as_utc,
    from_json,
    layers_table,
    runs_table,
    stability_table,
)

__all__ = ["MetricsReader", "TABLES"]

TABLES: dict[str, sa.Table] = {t.name.removeprefix("oialr_"): t for t in METRICS_TABLES}
_TIMES = ("started_at", "updated_at", "finished_at")
_BULKY = {"config", "result", "sigma"}  # read only when asked for


def _columns(table: sa.Table, bulky: bool) -> list[sa.Column]:
    return [c for c in table.columns if bulky or c.name not in _BULKY]


class MetricsReader:
    """Reads the ``oialr_*`` tables of one database."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def frame(self, stmt: sa.Select) -> pd.DataFrame:
        """One query's rows as a DataFrame, JSON columns decoded, times UTC-aware."""
        with self.engine.connect() as conn:
            result = conn.execute(stmt)
            frame = pd.DataFrame.from_records(result.all(), columns=list(result.keys()))
        for column in frame.columns.intersection(["config", "result", "sigma"]):
            frame[column] = [from_json(text) for text in frame[column]]
        for column in frame.columns.intersection(_TIMES):
            frame[column] = pd.to_datetime(frame[column], utc=True)
        return frame

    # -- runs ------------------------------------------------------------------------------------
    def runs(self, *, study_name: str | None = None, full: bool = True) -> pd.DataFrame:
        """All runs (or those of one study), oldest first; ``full`` adds config and result."""
        stmt = sa.select(*_columns(runs_table, full)).order_by(runs_table.c.id)
        if study_name is not None:
            stmt = stmt.where(runs_table.c.study_name == study_name)
        return self.frame(stmt)

    def latest_runs(self, study_name: str, *, full: bool = True) -> pd.DataFrame:
        """The latest run of each trial of a study (a retried trial has several)."""
        latest = (
            sa.select(sa.func.max(runs_table.c.id))
            .where(runs_table.c.study_name == study_name, runs_table.c.trial_number.is_not(None))
            .group_by(runs_table.c.trial_number)
        )
        stmt = (
            sa.select(*_columns(runs_table, full))
            .where(runs_table.c.id.in_(latest))
            .order_by(runs_table.c.trial_number)
        )
        return self.frame(stmt)

    def run(self, run_id: int, *, full: bool = True) -> dict[str, Any]:
        """One run as a dict.

        Raises:
            StorageError: no run has this id.
        """
        stmt = sa.select(*_columns(runs_table, full)).where(runs_table.c.id == int(run_id))
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
            sa.select(*_columns(t, bulky))
            .where(t.c.run_id == int(run_id), t.c.id > int(after_id))
            .order_by(t.c.id.desc())
        )
        if limit is not None:
            stmt = stmt.limit(int(limit))
        return self.frame(stmt).iloc[::-1].reset_index(drop=True)

    def epochs_of_runs(self, run_ids: Sequence[int]) -> pd.DataFrame:
        """Epoch rows of several runs at once (for side-by-side comparison)."""
        t = TABLES["epochs"]
        ids = [int(r) for r in run_ids]
        return self.frame(sa.select(t).where(t.c.run_id.in_(ids)).order_by(t.c.run_id, t.c.id))

    def layer_record(self, row_id: int) -> dict[str, Any] | None:
        """One per-layer record, with the singular values of Σ (largest first)."""
        frame = self.frame(sa.select(layers_table).where(layers_table.c.id == int(row_id)))
        return None if frame.empty else frame.iloc[0].to_dict()

    def layer_summary(self, run_id: int) -> pd.DataFrame:
        """Per layer of a run: full rank, final rank and fraction, parameters, the last recorded
        spectrum, stability (mean over updates, last warm-up value) and the conversion step."""
        lt, st_ = layers_table, stability_table
        run = int(run_id)
        last = sa.select(sa.func.max(lt.c.id)).where(lt.c.run_id == run).group_by(lt.c.layer)
        latest = self.frame(
            sa.select(
                lt.c.layer, lt.c.n.label("full_rank"), lt.c.rank_after.label("rank"),
                lt.c.rank_fraction, lt.c.trainable, lt.c.stored, lt.c.cutoff, lt.c.sigma, lt.c.step,
            ).where(lt.c.id.in_(last))
        )  # fmt: skip
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
        return out.sort_values("layer", key=_model_order).reset_index(drop=True)


def _model_order(names: pd.Series) -> pd.Series:
    """Numeric module names ("3" < "10") sort as numbers; others alphabetically after them."""
    return names.map(lambda n: (0, int(n), "") if str(n).isdigit() else (1, 0, str(n)))
