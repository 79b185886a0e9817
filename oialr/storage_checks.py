"""What a storage may be, checked before anything touches it.

A SQLite file that already holds another application's tables is refused unless the user says
so (``--allow-foreign-database``): our tables and Optuna's would land beside theirs. Read-only
commands (``study list|show|best|export``) look without creating: a missing file, or a database
without Optuna's tables, is an error, not an empty storage made on the spot.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa

from .errors import StorageError
from .vocab import mask_url, sqlite_file

__all__ = ["check_writable", "check_readable", "foreign_tables"]

# Optuna's RDB storage (optuna/storages/_rdb/models.py) and its migration bookkeeping.
OPTUNA_TABLES = frozenset({
    "studies", "study_directions", "study_user_attributes", "study_system_attributes",
    "trials", "trial_params", "trial_values", "trial_intermediate_values",
    "trial_user_attributes", "trial_system_attributes", "trial_heartbeats", "version_info",
    "alembic_version",
})  # fmt: skip


def _sqlite_path(url: str) -> Path | None:
    try:
        return sqlite_file(url)
    except sa.exc.ArgumentError:  # a malformed URL: the store's own check says how
        return None


def _sqlite_tables(path: Path) -> set[str]:
    """Table names, read without writing a byte. Read-only, with the write-ahead log a running
    study keeps; where there is none to read (no worker has the file open), as an immutable
    file, which needs no WAL index either."""
    query = "SELECT name FROM sqlite_master WHERE type = 'table'"
    for mode in ("ro", "ro&immutable=1"):
        try:
            conn = sqlite3.connect(f"file:{path}?mode={mode}", uri=True)
            try:
                return {name for (name,) in conn.execute(query)}
            finally:
                conn.close()
        except sqlite3.OperationalError:  # a WAL database whose index cannot be made read-only
            continue
        except sqlite3.Error as err:
            raise StorageError(f"storage {path}: not a SQLite database ({err})") from None
    raise StorageError(f"storage {path}: cannot be read")


def foreign_tables(tables: set[str]) -> list[str]:
    """The tables that are neither Optuna's nor ours."""
    return sorted(
        t for t in tables
        if t not in OPTUNA_TABLES and not t.startswith(("oialr_", "sqlite_"))
    )  # fmt: skip


def check_writable(url: str, allow_foreign: bool = False) -> None:
    """Refuse a SQLite file holding other applications' tables (unless ``allow_foreign``)."""
    path = _sqlite_path(url)
    if path is None or not path.is_file() or allow_foreign:
        return
    foreign = foreign_tables(_sqlite_tables(path))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
        raise StorageError(
            f"storage {path} belongs to another application (tables {shown}); point --storage "
            "at a new file, or pass --allow-foreign-database to add oialr's tables beside them"
        )


def check_readable(url: str) -> None:
    """A read-only command's storage must exist and hold studies; nothing is created."""
    path = _sqlite_path(url)
    if path is not None:
        if not path.is_file():
            raise StorageError(
                f"storage {mask_url(url)}: no such database file; run `oialr study run` first"
            )
        tables = _sqlite_tables(path)
    else:
        from .metrics_schema import make_engine

        engine = make_engine(url)
        try:
            tables = set(sa.inspect(engine).get_table_names())
        except sa.exc.SQLAlchemyError as err:
            message = str(err).split("\n")[0]
            raise StorageError(f"storage {mask_url(url)}: {message}") from None
        finally:
            engine.dispose()
    if "studies" not in tables:
        raise StorageError(
            f"storage {mask_url(url)} holds no studies; run `oialr study run` with it first"
        )
