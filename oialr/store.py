"""Metrics store: SQLAlchemy tables beside Optuna's, written in batches, read incrementally.

The tables live in the same database as Optuna's RDB storage (SQLite file or PostgreSQL) and
every name starts with ``oialr_`` so the two schemas never clash. Training processes append
rows to in-memory buffers that are written in one transaction per flush; the dashboard polls
with ``after_id`` and only ever fetches rows it has not seen.

Incremental reads by id are exact because each run has exactly one writer (one store in one
process) whose flushes commit one after another, so within a run ids become visible in order.

Example:
    >>> store = MetricsStore("sqlite:///oialr.db")  # doctest: +SKIP
    >>> run_id = store.create_run(name="r", mode="dense", model="mlp", dataset="mnist", config={})
    >>> store.log_step(run_id, step=0, loss=2.3, lr=0.1, step_time=0.01)
    >>> store.finish_run(run_id, "complete", result={"val_acc": 0.9})
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)

from oialr.errors import ConfigError, StorageError

__all__ = ["SCHEMA_VERSION", "MetricsStore", "make_engine", "mask_url"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_URL_EXAMPLE = "sqlite:///oialr.db or postgresql+psycopg://user:password@127.0.0.1:5432/oialr"
_PG_CONNECT_TIMEOUT_S = 5
_SQLITE_BUSY_TIMEOUT_S = 30
_RETRY_SECONDS = 60  # how long a write waits for a lost server to come back

RUN_MODES = frozenset({"oialr", "dense", "fixed-rank"})
FINAL_STATUSES = frozenset({"complete", "failed", "pruned"})
# Closed vocabularies of text columns: a typo here would silently split the dashboard's plots.
_CHOICES: dict[str, frozenset[str]] = {
    "phase": frozenset({"warm-up", "low-rank", "dense"}),
    "event": frozenset({"convert", "update"}),
    "rule": frozenset({"cutoff", "cap", "floor", "none"}),
}

# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------

metadata = sa.MetaData()
# Metrics tables can reach many millions of rows on PostgreSQL; SQLite needs plain INTEGER for
# its rowid-aliased autoincrement key.
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_UtcDateTime = sa.DateTime(timezone=True)

schema_table = sa.Table(
    "oialr_schema",
    metadata,
    # Primary key so two processes creating a fresh database cannot both insert the row.
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
)

runs_table = sa.Table(
    "oialr_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("study_name", sa.Text, nullable=True, index=True),
    sa.Column("trial_number", sa.Integer, nullable=True),
    sa.Column("trial_id", sa.Integer, nullable=True),
    sa.Column("mode", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("dataset", sa.Text, nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("result", sa.Text, nullable=True),
    sa.Column("conversion_step", sa.Integer, nullable=True),
    sa.Column("started_at", _UtcDateTime, nullable=False),
    sa.Column("updated_at", _UtcDateTime, nullable=False),
    sa.Column("finished_at", _UtcDateTime, nullable=True),
    sa.Column("host", sa.Text, nullable=True),
)


def _metrics_table(name: str, *columns: sa.Column) -> sa.Table:
    """A per-run metrics table: id, run_id, the given columns, and an index on (run_id, id)."""
    return sa.Table(
        name,
        metadata,
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "run_id",
            sa.Integer,
            sa.ForeignKey("oialr_runs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        *columns,
        # The one query the dashboard repeats: WHERE run_id = :r AND id > :after ORDER BY id.
        sa.Index(f"ix_{name}_run_id_id", "run_id", "id"),
    )


steps_table = _metrics_table(
    "oialr_steps",
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("loss", sa.Float),
    sa.Column("lr", sa.Float),
    sa.Column("step_time", sa.Float),
)

epochs_table = _metrics_table(
    "oialr_epochs",
    sa.Column("epoch", sa.Integer),
    sa.Column("step", sa.Integer),
    sa.Column("train_loss", sa.Float),
    sa.Column("train_acc", sa.Float),
    sa.Column("val_loss", sa.Float),
    sa.Column("val_acc", sa.Float),
    sa.Column("trainable_fraction", sa.Float),
    sa.Column("stored_fraction", sa.Float),
    sa.Column("mean_rank", sa.Float, nullable=True),
    sa.Column("phase", sa.Text),
    sa.Column("time", sa.Float),
)

layers_table = _metrics_table(
    "oialr_layers",
    sa.Column("step", sa.Integer),
    sa.Column("layer", sa.Text),
    sa.Column("event", sa.Text),
    sa.Column("rank_before", sa.Integer),
    sa.Column("rank_after", sa.Integer),
    sa.Column("n", sa.Integer),
    sa.Column("rank_fraction", sa.Float),
    sa.Column("trainable", sa.BigInteger),
    sa.Column("stored", sa.BigInteger),
    sa.Column("rule", sa.Text),
    sa.Column("dropped_mass", sa.Float),
    sa.Column("offdiag_energy", sa.Float),
    sa.Column("rotation", sa.Float),
    sa.Column("stability", sa.Float, nullable=True),
    sa.Column("cutoff", sa.Float, nullable=True),
    sa.Column("sigma", sa.Text),
)

stability_table = _metrics_table(
    "oialr_stability",
    sa.Column("step", sa.Integer),
    sa.Column("layer", sa.Text),
    sa.Column("stability", sa.Float),
)

_METRICS_TABLES = (steps_table, epochs_table, layers_table, stability_table)


def _fields(table: sa.Table) -> frozenset[str]:
    """Columns a caller may give for ``table`` (everything but the keys we fill in)."""
    return frozenset(c.name for c in table.columns if c.name not in ("id", "run_id"))


_EPOCH_FIELDS = _fields(epochs_table)
_LAYER_FIELDS = _fields(layers_table)

# ---------------------------------------------------------------------------------------------
# Engine and URLs
# ---------------------------------------------------------------------------------------------


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``; never raises, even on garbage.

    >>> mask_url("postgresql+psycopg://me:secret@db:5432/oialr")
    'postgresql+psycopg://me:***@db:5432/oialr'
    """
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:  # masking runs while reporting errors: it must never fail itself
        # Greedy up to the last '@' before the path, so a raw '@' in the password is masked too.
        return re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", str(url))


def _bad_url(url: str, reason: str) -> StorageError:
    reason = _first_line(reason)
    return StorageError(
        f"malformed storage URL {mask_url(url)!r}: {reason}; use e.g. {_URL_EXAMPLE}"
    )


def _first_line(text: object) -> str:
    lines = str(text).strip().splitlines()
    return lines[0].strip() if lines else type(text).__name__


def _check_sqlite_path(url: str, parsed: URL) -> None:
    """Fail now, with the fix, if a SQLite file could never be created (sqlite3 says only
    'unable to open database file', and only on first connect)."""
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    directory = Path(database).expanduser().parent
    if not directory.is_dir():
        raise StorageError(
            f"SQLite storage {mask_url(url)!r}: directory {str(directory)!r} does not exist: "
            f"create it (mkdir -p {directory}) or use another path, e.g. sqlite:///oialr.db"
        )


def _sqlite_pragmas(dbapi_connection: Any, _connection_record: Any) -> None:
    """Per-connection SQLite settings that let one reader and many writer processes share a file.

    WAL lets readers proceed while a writer commits; busy_timeout makes a writer wait for the
    lock instead of failing with 'database is locked'; synchronous=NORMAL is durable in WAL mode
    up to a power loss and much cheaper than FULL. busy_timeout goes first so that switching the
    journal mode itself waits for the lock.
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url`` tuned for many concurrent processes.

    SQLite gets WAL, a 30 s busy timeout and synchronous=NORMAL on every connection; other
    servers get ``pool_pre_ping`` (survives a restarted server) and, for psycopg, a 5 s connect
    timeout (an unreachable host fails fast instead of hanging).

    Args:
        url: A SQLAlchemy URL, e.g. ``sqlite:///oialr.db``.

    Returns:
        A lazily-connecting engine; nothing is opened until first use.

    Raises:
        StorageError: The URL is malformed, names an unknown or missing driver, or points to a
            SQLite file in a directory that does not exist.
    """
    try:
        parsed = sa.make_url(url)
        # Loads the dialect: an unknown one ("sqlte") fails here, before any option depends on it.
        driver = parsed.get_driver_name()
    except (ArgumentError, ValueError, TypeError, AttributeError) as exc:
        raise _bad_url(url, str(exc)) from exc

    kwargs: dict[str, Any] = {}
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite:
        _check_sqlite_path(url, parsed)
        kwargs["connect_args"] = {"timeout": _SQLITE_BUSY_TIMEOUT_S}
    else:
        kwargs["pool_pre_ping"] = True
        if driver in ("psycopg", "psycopg2") and "connect_timeout" not in parsed.query:
            kwargs["connect_args"] = {"connect_timeout": _PG_CONNECT_TIMEOUT_S}

    try:
        engine = sa.create_engine(parsed, **kwargs)
    except ArgumentError as exc:  # e.g. user/host given in a SQLite URL
        raise _bad_url(url, str(exc)) from exc
    except ImportError as exc:
        raise StorageError(
            f"storage URL {mask_url(url)!r} needs a database driver that is not installed "
            f"({_first_line(exc)}); for PostgreSQL install psycopg[binary] and use "
            "postgresql+psycopg://..."
        ) from exc

    if is_sqlite:
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


# ---------------------------------------------------------------------------------------------
# Value helpers
# ---------------------------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _as_utc(value: datetime | None) -> datetime | None:
    """SQLite drops the zone on the way in; every time we store is UTC, so restore it."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def _plain(value: Any) -> Any:
    """numpy / torch scalars → Python numbers (DB drivers cannot bind them)."""
    if value is None or isinstance(value, (int, float, str)):
        return value
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def _to_json(value: Any) -> str:
    # default=str keeps Paths, enums and the like readable instead of failing a whole run.
    return json.dumps(value, sort_keys=True, default=str)


def _from_json(text: Any) -> Any:
    # pandas 3 reads a text column as the str dtype, where a missing value is NaN, not None.
    return json.loads(text) if isinstance(text, str) else None


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
        choices = _CHOICES.get(key)
        if choices is not None and value is not None and value not in choices:
            raise ConfigError(f"{table.name}.{key} = {value!r}; expected one of {sorted(choices)}")
        row[key] = _to_json([float(s) for s in value]) if key == "sigma" else _plain(value)
    return row


# ---------------------------------------------------------------------------------------------
# Store
# ---------------------------------------------------------------------------------------------


class MetricsStore:
    """Writes training metrics in batches and reads them back incrementally.

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
        self._buffers: dict[str, list[dict[str, Any]]] = {t.name: [] for t in _METRICS_TABLES}
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
                fix = f"check the URL (e.g. {_URL_EXAMPLE}) and that the server is up and reachable"
            reason = _first_line(getattr(exc, "orig", None) or exc)
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
                logger.warning("%s; retrying in %.1f s", exc, delay)
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
                racing = isinstance(cause, IntegrityError) or "already exists" in str(cause)
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
        if mode not in RUN_MODES:
            raise ConfigError(f"run mode {mode!r}; expected one of {sorted(RUN_MODES)}")
        now = _utcnow()
        values = {
            "name": name,
            "study_name": study_name,
            "trial_number": trial_number,
            "trial_id": trial_id,
            "mode": mode,
            "model": model,
            "dataset": dataset,
            "config": _to_json(config),
            "status": "running",
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
        row = _row(epochs_table, _EPOCH_FIELDS, run_id, fields)
        with self._lock:
            self._buffers["oialr_epochs"].append(row)
            self._pending += 1
            self.flush()

    def log_layers(self, run_id: int, records: list[dict]) -> None:
        """Buffers per-layer controller records (keys = ``oialr_layers`` columns, sigma a list).

        Raises:
            ConfigError: A key that is not a column, or an unknown event / rule.
        """
        rows = [_row(layers_table, _LAYER_FIELDS, run_id, record) for record in records]
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
            result=None if result is None else _to_json(result),
            error=error,
            finished_at=_utcnow(),
        )

    def fail_runs_of_trial(self, trial_id: int, reason: str) -> int:
        """Marks a dead worker's still-running runs of an Optuna trial failed; returns how many."""
        stmt = (
            sa.update(runs_table)
            .where(runs_table.c.trial_id == trial_id, runs_table.c.status == "running")
            .values(status="failed", error=reason, finished_at=_utcnow(), updated_at=_utcnow())
        )
        return int(self._write(lambda conn: conn.execute(stmt).rowcount))

    def _update_run(self, run_id: int, **values: Any) -> None:
        stmt = (
            sa.update(runs_table)
            .where(runs_table.c.id == run_id)
            .values(updated_at=_utcnow(), **values)
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
                for table in _METRICS_TABLES:
                    rows = self._buffers[table.name]
                    if rows:
                        conn.execute(sa.insert(table), rows)
                        run_ids.update(row["run_id"] for row in rows)
                conn.execute(
                    sa.update(runs_table)
                    .where(runs_table.c.id.in_(sorted(run_ids)))
                    .values(updated_at=_utcnow())
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

    def _frame(self, stmt: sa.Select) -> pd.DataFrame:
        with self._transaction() as conn:
            result = conn.execute(stmt)
            columns = list(result.keys())
            rows = result.all()
        return pd.DataFrame.from_records(rows, columns=columns)

    def _runs_frame(self, stmt: sa.Select) -> pd.DataFrame:
        frame = self._frame(stmt)
        for column in ("config", "result"):
            frame[column] = [_from_json(text) for text in frame[column]]
        for column in ("started_at", "updated_at", "finished_at"):
            frame[column] = pd.to_datetime(frame[column], utc=True)
        return frame

    def _metrics(self, table: sa.Table, run_id: int, after_id: int) -> pd.DataFrame:
        stmt = (
            sa.select(table)
            .where(table.c.run_id == run_id, table.c.id > after_id)
            .order_by(table.c.id)
        )
        return self._frame(stmt)

    def runs(self, *, study_name: str | None = None) -> pd.DataFrame:
        """All runs (or those of one study), oldest first; config and result decoded."""
        stmt = sa.select(runs_table).order_by(runs_table.c.id)
        if study_name is not None:
            stmt = stmt.where(runs_table.c.study_name == study_name)
        return self._runs_frame(stmt)

    def run(self, run_id: int) -> dict:
        """One run as a dict, config and result decoded, times UTC-aware.

        Raises:
            StorageError: No run has this id.
        """
        with self._transaction() as conn:
            row = conn.execute(sa.select(runs_table).where(runs_table.c.id == run_id)).first()
        if row is None:
            raise StorageError(f"no run {run_id} in {self.display_url}")
        record = dict(row._mapping)
        record["config"] = _from_json(record["config"])
        record["result"] = _from_json(record["result"])
        for column in ("started_at", "updated_at", "finished_at"):
            record[column] = _as_utc(record[column])
        return record

    def steps(self, run_id: int, after_id: int = 0) -> pd.DataFrame:
        """Steps of a run with ``id > after_id``, in id order."""
        return self._metrics(steps_table, run_id, after_id)

    def epochs(self, run_id: int, after_id: int = 0) -> pd.DataFrame:
        """Epochs of a run with ``id > after_id``, in id order."""
        return self._metrics(epochs_table, run_id, after_id)

    def layers(self, run_id: int, after_id: int = 0) -> pd.DataFrame:
        """Per-layer controller records with ``id > after_id``; ``sigma`` decoded to lists."""
        frame = self._metrics(layers_table, run_id, after_id)
        frame["sigma"] = [_from_json(text) for text in frame["sigma"]]
        return frame

    def stability(self, run_id: int, after_id: int = 0) -> pd.DataFrame:
        """Warm-up basis-stability measurements with ``id > after_id``, in id order."""
        return self._metrics(stability_table, run_id, after_id)

    def runs_for_trials(self, study_name: str) -> pd.DataFrame:
        """The latest run of each trial number of a study (a retried trial has several)."""
        latest = (
            sa.select(sa.func.max(runs_table.c.id))
            .where(
                runs_table.c.study_name == study_name,
                runs_table.c.trial_number.is_not(None),
            )
            .group_by(runs_table.c.trial_number)
        )
        stmt = (
            sa.select(runs_table)
            .where(runs_table.c.id.in_(latest))
            .order_by(runs_table.c.trial_number)
        )
        return self._runs_frame(stmt)

    def delete_study_runs(self, study_name: str) -> int:
        """Deletes a study's runs and all their metrics rows; returns how many runs went."""
        ids = sa.select(runs_table.c.id).where(runs_table.c.study_name == study_name)
        with self._transaction() as conn:
            # Children first: SQLite does not enforce ON DELETE CASCADE unless told to.
            for table in _METRICS_TABLES:
                conn.execute(sa.delete(table).where(table.c.run_id.in_(ids)))
            count = conn.execute(
                sa.delete(runs_table).where(runs_table.c.study_name == study_name)
            ).rowcount
        logger.info("deleted %d runs of study %r", count, study_name)
        return int(count)
