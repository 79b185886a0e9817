"""The words the library, the studies and the dashboard share, each defined once: run modes,
phases, controller events, rank rules, run statuses, Optuna attribute keys, and how a storage
URL is found and read. No heavy imports: the dashboard reads this without torch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

# -- runs ----------------------------------------------------------------------------------------
OIALR, DENSE, FIXED_RANK = "oialr", "dense", "fixed-rank"
MODES = (OIALR, DENSE, FIXED_RANK)

WARM_UP, LOW_RANK = "warm-up", "low-rank"
PHASES = (WARM_UP, LOW_RANK, DENSE)  # an epoch's phase; dense runs are always "dense"

CONVERT, UPDATE, STABILITY = "convert", "update", "stability"
EVENTS = (CONVERT, UPDATE)  # per-layer records in the layers table (stability has its own)
RULES = ("cutoff", "cap", "floor", "none")  # which rule set a layer's rank at an update

RUNNING, COMPLETE, FAILED, PRUNED = "running", "complete", "failed", "pruned"
FINAL_STATUSES = (COMPLETE, FAILED, PRUNED)


# -- studies: Optuna attributes ------------------------------------------------------------------
SPEC_ATTR = "oialr.spec"  # study user attr: the validated spec
OBJECTIVES_ATTR = "oialr.objectives"  # study user attr: objective names, in Optuna's order


class TrialAttr:
    """Trial user-attribute keys written by workers and read by the CLI and the dashboard."""

    MODE = "mode"
    RANK_FRACTION = "rank_fraction"  # fixed-rank baselines: their rank
    RUN_ID = "run_id"
    COMMAND = "command"  # the `oialr train …` command that reproduces the trial
    WORKER = "worker"  # host:pid
    FAIL_REASON = "fail_reason"
    VAL_ACC = "val_acc"
    VAL_ACC_STD = "val_acc_std"
    TEST_ACC = "test_acc"
    TRAINABLE_FRACTION = "trainable_fraction"
    STORED_FRACTION = "stored_fraction"
    WALL_TIME = "wall_time"
    STEPS_TRAINED = "steps_trained"  # its runs' steps, less those a warm-up snapshot gave them
    CONSTRAINT = "constraint"  # ≤ 0: feasible under objective.max_trainable_fraction


# -- storage ---------------------------------------------------------------------------------------
DEFAULT_STORAGE = "sqlite:///oialr.db"
STORAGE_ENV = "OIALR_STORAGE"
URL_EXAMPLE = "sqlite:///oialr.db or postgresql+psycopg://user:password@127.0.0.1:5432/oialr"


def resolve_storage(url: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """``--storage``, else ``$OIALR_STORAGE``, else ``sqlite:///oialr.db``."""
    return url or environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def sqlite_file(url: str) -> Path | None:
    """The file behind a SQLite URL (None for other backends and in-memory databases).

    Raises:
        sqlalchemy.exc.ArgumentError: the URL cannot be parsed.
    """
    import sqlalchemy as sa  # only here: the vocabulary itself stays import-light

    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = (parsed.database or "").removeprefix("file:").split("?", 1)[0]
    if database in ("", ":memory:"):
        return None
    return Path(database).expanduser()


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``; never raises, even on garbage.

    Textual on purpose: a raw ``@`` in a password fools URL parsers into showing part of it, so
    everything up to the last ``@`` before the path goes, and any ``password=`` query value.

    >>> mask_url("postgresql+psycopg://me:secret@db:5432/oialr")
    'postgresql+psycopg://me:***@db:5432/oialr'
    """
    masked = re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", str(url))
    return re.sub(r"(?i)(password=)[^&]*", r"\1***", masked)
