"""Writes a run's metrics in batches: :class:`MetricsStore` (its recorder is
:class:`oialr.recorders.StoreRecorder`).

Training processes append rows to in-memory buffers that are written in one transaction per
flush; the dashboard polls with ``after_id`` (:mod:`oialr.metrics_reader`) and only ever fetches
rows it has not seen. Incremental reads by id are exact because each run has exactly one writer
(one store in one process) whose flushes commit one after another.

Example:
    >>> store = MetricsStore("sqlite:///oialr.db")  # doctest: +SKIP
    >>> run_id = store.create_run(name="r", mode="dense", model="mlp", dataset="mnist", config={})
    >>> store.log_step(run_id, step=0, loss=2.3, lr=0.1, step_time=0.01)
    >>> store.finish_run(run_id, "complete", result={"val_acc": 0.9})
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, SQLAlchemyError

from .errors import ConfigError, StorageError
from .metrics_schema import (
    ADDED_COLUMNS,
    CHOICES,
    EPOCH_FIELDS,
    LAYER_FIELDS,
    METRICS_TABLES,
    SCHEMA_VERSION,
    encode_spectrum,
    epochs_table,
    first_line,
    layers_table,
    make_engine,
    metadata,
    plain,
    runs_table,
    schema_table,
    to_json,
    utcnow,
)
from .vocab import FAILED, FINAL_STATUSES, MODES, RUNNING, URL_EXAMPLE, mask_url

__all__ = ["MetricsStore"]

logger = logging.getLogger(__name__)

_RETRY_SECONDS = 60  # how long a write waits for a lost server to come back


def _row(table: sa.Table, allowed: frozenset[str], run_id: int, fields: dict[str, Any]) -> dict:
    """A full row dict for an executemany insert: every column present, unknown keys refused."""
    unknown = fields.keys() - allowed
    if unknown:
        raise ConfigError(
            f"unknown {table.name} field(s) {sorted(unknown)}; known: {sorted(allowed)}"
        )
    row: dict[str, Any] = dict.fromkeys(allowed)
    row["run_id"] = int(run_id)
    for key, value in fields.items():
        choices = CHOICES.get(key)
        if choices is not None and value is not None and value not in choices:
            raise ConfigError(f"{table.name}.{key} = {value!r}; expected one of {sorted(choices)}")
        row[key] = value if key == "sigma" else plain(value)  # sigma: a list or an array
    if table is layers_table and row.get("sigma") is not None:
        # The whole spectrum as float32 bytes; the JSON column is schema 1's and stays NULL.
        row["spectrum"], row["sigma"] = encode_spectrum(row["sigma"]), None
    return row


# ---------------------------------------------------------------------------------------------
# Store
# ---------------------------------------------------------------------------------------------


class MetricsStore:
    """Writes training metrics in batches (:class:`oialr.metrics_reader.MetricsReader` reads).

    Safe to share between threads of one process. For several processes, give each its own
    store: pickling keeps only the URL and settings, so a store can be sent to a spawned worker
    and reconnects there.

    Attributes:
        url: The URL as given.
        display_url: The URL with the password masked, for logs and messages.
        engine: The SQLAlchemy engine used by reads and writes.
    """

    def __init__(self, url: str, *, flush_rows: int = 500, flush_seconds: float = 2.0) -> None:
        """Connects, creates the tables if absent and checks the schema version.

        Args:
            url: SQLAlchemy URL of the database that also holds the Optuna study.
            flush_rows: Write the buffers once this many rows are pending.
            flush_seconds: Write the buffers on the next append once this long has passed since
                the last flush.

        Raises:
            StorageError: Malformed URL, unreachable server, or a schema written by a newer
                oialr.
        """
        if flush_rows < 1 or not flush_seconds >= 0:
            raise ConfigError(
                f"flush_rows must be >= 1 and flush_seconds >= 0 "
                f"(got {flush_rows}, {flush_seconds})"
            )
        self.url = url
        self.display_url = mask_url(url)
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.engine = make_engine(url)
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._buffers: dict[str, list[dict[str, Any]]] = {t.name: [] for t in METRICS_TABLES}
        self._pending = 0
        self._last_flush = time.monotonic()
        self._ensure_schema()

    def __repr__(self) -> str:
        return f"MetricsStore({self.display_url!r})"

    # -- pickling: the engine and its pooled connections must not cross a process boundary ----

    def __getstate__(self) -> dict[str, Any]:
        # Buffered rows stay with the original store: the copy starts empty, so nothing is
        # written twice.
        return {"url": self.url, "flush_rows": self.flush_rows, "flush_seconds": self.flush_seconds}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(
            state["url"], flush_rows=state["flush_rows"], flush_seconds=state["flush_seconds"]
        )

    def __enter__(self) -> MetricsStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- transactions ----------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One connection in one transaction: commit on success, rollback on any error, always
        returned to the pool. SQLAlchemy errors become a one-line ``StorageError``."""
        if os.getpid() != self._pid:
            # Inherited by fork: pooled connections belong to the parent; drop them unclosed.
            self.engine.dispose(close=False)
            self._pid = os.getpid()
        try:
            with self.engine.connect() as conn:
                transaction = conn.begin()
                try:
                    yield conn
                except BaseException:
                    transaction.rollback()
                    raise
                transaction.commit()
        except SQLAlchemyError as exc:
            if self.engine.dialect.name == "sqlite":
                fix = "check that the file and its directory are writable"
            else:
                fix = f"check the URL (e.g. {URL_EXAMPLE}) and that the server is up and reachable"
            reason = first_line(getattr(exc, "orig", None) or exc)
            raise StorageError(
                f"metrics database {self.display_url} failed: {reason}; {fix}"
            ) from exc

    def _write(self, work: Callable[[Connection], Any]) -> Any:
        """Run ``work(conn)`` in a transaction, retrying while the server is unreachable.

        A PostgreSQL restart or a network blip drops pooled connections; ``pool_pre_ping`` finds
        out on checkout, and here a write that failed on a lost connection is retried with
        backoff for up to a minute instead of failing the training run.
        """
        deadline, delay = time.monotonic() + _RETRY_SECONDS, 0.5
        while True:
            try:
                with self._transaction() as conn:
                    return work(conn)
            except StorageError as exc:
                lost = isinstance(exc.__cause__, (OperationalError, InterfaceError))
                if not lost or self.engine.dialect.name == "sqlite" or time.monotonic() > deadline:
                    raise
                if delay == 0.5:  # once an outage; the retries that follow say nothing
                    logger.warning("%s; retrying for up to %.0f s", exc, _RETRY_SECONDS)
                time.sleep(delay)
                delay = min(5.0, delay * 2)

    def _ensure_schema(self) -> None:
        """Creates absent tables and records/checks the schema version.

        Two processes opening a fresh database at once may both try to create a table or insert
        the version row; the loser fails and simply retries, finding the winner's work.
        """
        for attempt in range(3):
            try:
                with self._transaction() as conn:
                    self._check_and_create(conn)
                return
            except StorageError as exc:
                cause = exc.__cause__
                racing = isinstance(cause, IntegrityError) or any(
                    clash in str(cause) for clash in ("already exists", "duplicate column")
                )
                if not racing or attempt == 2:
                    raise
                logger.debug("schema creation raced another process; retrying: %s", cause)
                time.sleep(0.1 * (attempt + 1))

    def _check_and_create(self, conn: Connection) -> None:
        if sa.inspect(conn).has_table(schema_table.name):
            version = conn.execute(sa.select(sa.func.max(schema_table.c.version))).scalar()
            if version is not None and version > SCHEMA_VERSION:
                # Checked before create_all: never add old-style tables to a newer schema.
                raise StorageError(
                    f"metrics database {self.display_url} was written by a newer oialr "
                    f"(schema {version} > {SCHEMA_VERSION}): upgrade oialr"
                )
        else:
            version = None
        metadata.create_all(conn, checkfirst=True)
        if version is None:
            conn.execute(sa.insert(schema_table).values(version=SCHEMA_VERSION))
            logger.info("created oialr tables (schema %d) in %s", SCHEMA_VERSION, self.display_url)
        elif version < SCHEMA_VERSION:
            self._upgrade(conn, version)

    def _upgrade(self, conn: Connection, version: int) -> None:
        """Adds the columns later schemas brought to an older database's tables, in place.

        Rows written before keep NULL there (readers fall back to what they had). Two
        processes upgrading at once race on ALTER TABLE; the loser retries and finds it done.
        """
        for later in range(version + 1, SCHEMA_VERSION + 1):
            for column in ADDED_COLUMNS.get(later, ()):
                present = {c["name"] for c in sa.inspect(conn).get_columns(column.table.name)}
                if column.name not in present:
                    kind = column.type.compile(dialect=conn.dialect)
                    conn.exec_driver_sql(
                        f"ALTER TABLE {column.table.name} ADD COLUMN {column.name} {kind}"
                    )
        conn.execute(sa.update(schema_table).values(version=SCHEMA_VERSION))
        logger.info("upgraded oialr tables (schema %d → %d)", version, SCHEMA_VERSION)

    # -- writes ----------------------------------------------------------------------------

    def create_run(
        self,
        *,
        name: str,
        mode: str,
        model: str,
        dataset: str,
        config: dict,
        study_name: str | None = None,
        trial_number: int | None = None,
        trial_id: int | None = None,
    ) -> int:
        """Inserts a run with status ``running`` (written at once) and returns its id."""
        if mode not in MODES:
            raise ConfigError(f"run mode {mode!r}; expected one of {sorted(MODES)}")
        now = utcnow()
        values = {
            "name": name,
            "study_name": study_name,
            "trial_number": trial_number,
            "trial_id": trial_id,
            "mode": mode,
            "model": model,
            "dataset": dataset,
            "config": to_json(config),
            "status": RUNNING,
            "started_at": now,
            "updated_at": now,
            "host": socket.gethostname(),
        }
        run_id = self._write(
            lambda conn: conn.execute(sa.insert(runs_table).values(**values)).inserted_primary_key[
                0
            ]
        )
        return int(run_id)

    def log_step(self, run_id: int, step: int, loss: float, lr: float, step_time: float) -> None:
        """Buffers one training step; costs a dict and a clock read unless a flush is due."""
        row = {
            "run_id": run_id,
            "step": int(step),
            "loss": float(loss),
            "lr": float(lr),
            "step_time": float(step_time),
        }
        with self._lock:
            self._buffers["oialr_steps"].append(row)
            self._appended(1)

    def log_epoch(self, run_id: int, **fields: Any) -> None:
        """Records one epoch and flushes at once: epochs are rare and the dashboard wants them.

        Args:
            run_id: The run.
            **fields: Any of the ``oialr_epochs`` columns (epoch, step, train_loss, ...).

        Raises:
            ConfigError: A field that is not a column, or an unknown ``phase``.
        """
        row = _row(epochs_table, EPOCH_FIELDS, run_id, fields)
        with self._lock:
            self._buffers["oialr_epochs"].append(row)
            self._pending += 1
            self.flush()

    def log_layers(self, run_id: int, records: list[dict]) -> None:
        """Buffers per-layer controller records (keys = ``oialr_layers`` columns, sigma a list).

        Raises:
            ConfigError: A key that is not a column, or an unknown event / rule.
        """
        rows = [_row(layers_table, LAYER_FIELDS, run_id, record) for record in records]
        with self._lock:
            self._buffers["oialr_layers"].extend(rows)
            self._appended(len(rows))

    def log_stability(self, run_id: int, step: int, values: dict[str, float]) -> None:
        """Buffers one basis-stability value per layer, measured at ``step``."""
        rows = [
            {"run_id": run_id, "step": int(step), "layer": layer, "stability": float(value)}
            for layer, value in values.items()
        ]
        with self._lock:
            self._buffers["oialr_stability"].extend(rows)
            self._appended(len(rows))

    def _appended(self, n: int) -> None:
        """Counts new rows and flushes if a threshold is reached (caller holds the lock)."""
        self._pending += n
        if (
            self._pending >= self.flush_rows
            or time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self.flush()

    def set_conversion_step(self, run_id: int, step: int) -> None:
        """Records the step at which the run switched from dense warm-up to low rank."""
        self._update_run(run_id, conversion_step=int(step))

    def finish_run(
        self,
        run_id: int,
        status: str,
        *,
        result: dict | None = None,
        error: str | None = None,
    ) -> None:
        """Flushes pending rows, then marks the run complete, failed or pruned.

        Raises:
            ConfigError: ``status`` is not one of complete / failed / pruned.
        """
        if status not in FINAL_STATUSES:
            raise ConfigError(f"run status {status!r}; expected one of {sorted(FINAL_STATUSES)}")
        self.flush()
        self._update_run(
            run_id,
            status=status,
            result=None if result is None else to_json(result),
            error=error,
            finished_at=utcnow(),
        )

    def fail_runs_of_trial(self, trial_id: int, reason: str) -> int:
        """Marks the runs of a trial failed for ``reason`` (its worker died): those still
        running, and those that finished just before, whose result never reached Optuna, so
        every run's status is its trial's. Returns how many."""
        finished = sa.func.coalesce(runs_table.c.finished_at, utcnow())
        stmt = (
            sa.update(runs_table)
            .where(runs_table.c.trial_id == trial_id, runs_table.c.status != FAILED)
            .values(status=FAILED, error=reason, finished_at=finished, updated_at=utcnow())
        )
        return int(self._write(lambda conn: conn.execute(stmt).rowcount))

    def _update_run(self, run_id: int, **values: Any) -> None:
        stmt = (
            sa.update(runs_table)
            .where(runs_table.c.id == run_id)
            .values(updated_at=utcnow(), **values)
        )
        if self._write(lambda conn: conn.execute(stmt).rowcount) == 0:
            raise StorageError(f"no run {run_id} in {self.display_url}")

    def flush(self) -> None:
        """Writes every buffered row in one transaction (executemany per table) and bumps the
        touched runs' ``updated_at``. On failure the rows stay buffered for the next flush."""
        with self._lock:
            self._last_flush = time.monotonic()
            if not self._pending:
                return
            started = self._last_flush
            run_ids: set[int] = set()

            def write(conn: Connection) -> None:
                for table in METRICS_TABLES:
                    rows = self._buffers[table.name]
                    if rows:
                        conn.execute(sa.insert(table), rows)
                        run_ids.update(row["run_id"] for row in rows)
                conn.execute(
                    sa.update(runs_table)
                    .where(runs_table.c.id.in_(sorted(run_ids)))
                    .values(updated_at=utcnow())
                )

            self._write(write)
            # Cleared only after the commit, so a failed flush loses nothing.
            for rows in self._buffers.values():
                rows.clear()
            logger.debug(
                "flushed %d rows for runs %s in %.1f ms",
                self._pending,
                sorted(run_ids),
                (time.monotonic() - started) * 1e3,
            )
            self._pending = 0

    def close(self) -> None:
        """Flushes and releases every pooled connection. The store reconnects if used again."""
        try:
            self.flush()
        finally:
            self.engine.dispose()

    # -- reads -----------------------------------------------------------------------------

    def delete_study_runs(self, study_name: str) -> int:
        """Deletes a study's runs and all their metrics rows; returns how many runs went."""
        ids = sa.select(runs_table.c.id).where(runs_table.c.study_name == study_name)
        with self._transaction() as conn:
            # Children first: SQLite does not enforce ON DELETE CASCADE unless told to.
            for table in METRICS_TABLES:
                conn.execute(sa.delete(table).where(table.c.run_id.in_(ids)))
            count = conn.execute(
                sa.delete(runs_table).where(runs_table.c.study_name == study_name)
            ).rowcount
        logger.info("deleted %d runs of study %r", count, study_name)
        return int(count)
