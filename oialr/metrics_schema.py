"""The metrics tables beside Optuna's, and engines tuned for many concurrent processes.

The tables live in the same database as Optuna's RDB storage (SQLite file or PostgreSQL) and
every name starts with ``oialr_`` so the two schemas never clash. :mod:`oialr.metrics_store`
writes them, :mod:`oialr.metrics_reader` reads them; both work from the Table objects here.
"""

from __future__ import annotations

import array
import json
import sqlite3
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import ArgumentError

from .errors import StorageError
from .vocab import EVENTS, PHASES, RULES, URL_EXAMPLE, mask_url

__all__ = [
    "SCHEMA_VERSION", "metadata", "runs_table", "steps_table", "epochs_table", "layers_table",
    "stability_table", "METRICS_TABLES", "ADDED_COLUMNS", "make_engine", "encode_spectrum",
    "decode_spectrum",
]  # fmt: skip

# 2: oialr_layers gained the full spectrum (float32 bytes), the layer's kind and shape, and its
# effective and stable ranks; a version-1 database gets the columns when a store opens it.
SCHEMA_VERSION = 2

_PG_CONNECT_TIMEOUT_S = 5
_SQLITE_BUSY_TIMEOUT_S = 30

# Closed vocabularies of text columns: a typo here would silently split the dashboard's plots.
CHOICES: dict[str, tuple[str, ...]] = {"phase": PHASES, "event": EVENTS, "rule": RULES}

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
    sa.Column("sigma", sa.Text),  # schema 1: the top singular values as JSON; now NULL
    # Schema 2 (added to older tables by ``MetricsStore``, so all nullable):
    sa.Column("spectrum", sa.LargeBinary, nullable=True),  # see encode_spectrum
    sa.Column("kind", sa.Text, nullable=True),  # "Linear", "Conv2d", "MHA in-proj", ...
    sa.Column("rows", sa.Integer, nullable=True),  # the weight as a matrix: rows x cols
    sa.Column("cols", sa.Integer, nullable=True),
    sa.Column("effective_rank", sa.Float, nullable=True),
    sa.Column("stable_rank", sa.Float, nullable=True),
)
# Columns each schema version added, so a store can bring an older table up to date.
ADDED_COLUMNS: dict[int, tuple[sa.Column, ...]] = {
    2: tuple(
        layers_table.c[name]
        for name in ("spectrum", "kind", "rows", "cols", "effective_rank", "stable_rank")
    ),
}

stability_table = _metrics_table(
    "oialr_stability",
    sa.Column("step", sa.Integer),
    sa.Column("layer", sa.Text),
    sa.Column("stability", sa.Float),
)

METRICS_TABLES = (steps_table, epochs_table, layers_table, stability_table)


def fields(table: sa.Table) -> frozenset[str]:
    """Columns a caller may give for ``table`` (everything but the keys we fill in)."""
    return frozenset(c.name for c in table.columns if c.name not in ("id", "run_id"))


EPOCH_FIELDS = fields(epochs_table)
LAYER_FIELDS = fields(layers_table)

# ---------------------------------------------------------------------------------------------
# Engine and URLs
# ---------------------------------------------------------------------------------------------


def _bad_url(url: str, reason: str) -> StorageError:
    reason = first_line(reason)
    return StorageError(
        f"malformed storage URL {mask_url(url)!r}: {reason}; use e.g. {URL_EXAMPLE}"
    )


def first_line(text: object) -> str:
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
    up to a power loss and much cheaper than FULL.
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_S * 1000}")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``, retried while the file is locked.

    Two workers opening a fresh file at once race to switch it, and the loser's switch can fail
    with 'database is locked' at once, busy_timeout or not (seen as a worker exiting on start).
    Once one has switched, the mode is the file's and the switch is a no-op for the others.
    """
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


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
    except (ArgumentError, ValueError, TypeError) as exc:  # host in a SQLite URL, ?timeout=abc
        raise _bad_url(url, str(exc)) from exc
    except ImportError as exc:
        raise StorageError(
            f"storage URL {mask_url(url)!r} needs a database driver that is not installed "
            f"({first_line(exc)}); for PostgreSQL install psycopg[binary] and use "
            "postgresql+psycopg://..."
        ) from exc

    if is_sqlite:
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


# ---------------------------------------------------------------------------------------------
# Value helpers
# ---------------------------------------------------------------------------------------------


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite drops the zone on the way in; every time we store is UTC, so restore it."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def plain(value: Any) -> Any:
    """numpy / torch scalars → Python numbers (DB drivers cannot bind them)."""
    if value is None or isinstance(value, (int, float, str)):
        return value
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def to_json(value: Any) -> str:
    # default=str keeps Paths, enums and the like readable instead of failing a whole run.
    return json.dumps(value, sort_keys=True, default=str)


def encode_spectrum(values: Any) -> bytes:
    """Singular values as little-endian float32 bytes: 4 bytes a value, a quarter of JSON's.

    >>> decode_spectrum(encode_spectrum([3.0, 0.5]))
    [3.0, 0.5]
    """
    packed = array.array("f", values)  # C speed for lists and numpy arrays alike
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def decode_spectrum(blob: Any) -> list[float] | None:
    """The values :func:`encode_spectrum` stored; None for a missing spectrum."""
    if blob is None or isinstance(blob, float):  # NULL (NaN in a pandas column)
        return None
    packed = array.array("f")
    packed.frombytes(bytes(blob))  # bytes(): PostgreSQL's driver hands back a memoryview
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tolist()


def from_json(text: Any) -> Any:
    # pandas 3 reads a text column as the str dtype, where a missing value is NaN, not None.
    return json.loads(text) if isinstance(text, str) else None
