"""Who runs the next trial: an exact budget across workers, the baselines a study owes, and the
trials of workers that died on this machine.

A worker claims each trial under a lock all workers of the storage share (a file lock beside a
SQLite file, an advisory lock on PostgreSQL): it counts the trials finished or running, asks
Optuna for one only while that count is below the budget, and lets go once the trial is
RUNNING, where the others count it. (Optuna's ``MaxTrialsCallback`` counts after the fact, so K
workers could finish K - 1 trials too many.) Under the same lock it

- fails the RUNNING trials whose worker was a process on this host that no longer exists (a
  ``kill -9``), at once rather than after the heartbeat's grace period, and queues them again;
- queues every baseline of the spec that has no COMPLETE, RUNNING or WAITING trial (the first
  time, or after it failed or was killed), so a study never ends without its reference points.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
from typing import IO, Any

import optuna
import sqlalchemy as sa
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from .metrics_schema import make_engine
from .metrics_store import MetricsStore
from .spec import StudySpec
from .vocab import DENSE, FIXED_RANK, TrialAttr, sqlite_file

_logger = logging.getLogger(__name__)

__all__ = ["TrialBudget", "baselines_of", "fail_dead_workers"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
BASELINE_ATTEMPTS = 3  # a baseline that failed this often is not queued again


class _Lock:
    """A lock shared by every process using one storage, for one study."""

    def __init__(self, url: str, study_name: str):
        path = sqlite_file(url)
        self._path = path.with_name(f"{path.name}.lock") if path is not None else None
        self._engine = None
        if path is None and sa.make_url(url).get_backend_name() == "postgresql":
            self._engine = make_engine(url)
        digest = hashlib.sha256(f"oialr:{study_name}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        self._file: IO | None = None
        self._conn = None

    def acquire(self) -> None:
        if self._path is not None:
            self._file = self._path.open("a")
            fcntl.flock(self._file, fcntl.LOCK_EX)
        elif self._engine is not None:
            self._conn = self._engine.connect()
            self._conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
        # other servers: no lock; the budget may then run over by the workers it has, less one

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        if self._conn is not None:
            try:
                self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
            finally:  # a dropped connection frees the lock as well
                self._conn.close()
                self._conn = None

    def close(self) -> None:
        self.release()
        if self._engine is not None:
            self._engine.dispose()


def baselines_of(spec: StudySpec) -> list[dict[str, Any]]:
    """The user attributes of each baseline trial the spec asks for, dense first."""
    dense = [{TrialAttr.MODE: DENSE}] if spec.baselines.dense else []
    return dense + [
        {TrialAttr.MODE: FIXED_RANK, TrialAttr.RANK_FRACTION: f} for f in spec.baselines.fixed_rank
    ]


def _is(trial: FrozenTrial, attrs: dict[str, Any]) -> bool:
    return all(trial.user_attrs.get(k) == v for k, v in attrs.items())


def owe_baselines(study: optuna.Study, spec: StudySpec, trials: list[FrozenTrial]) -> bool:
    """Queue each baseline that has no COMPLETE, RUNNING or WAITING trial in ``trials``;
    returns whether one is waiting to run (queued now or before)."""
    owed = False
    for attrs in baselines_of(spec):
        same = [t for t in trials if _is(t, attrs)]
        if any(t.state == TrialState.WAITING for t in same):
            owed = True
            continue
        if any(t.state in (TrialState.COMPLETE, TrialState.RUNNING) for t in same):
            continue
        failed = sum(t.state == TrialState.FAIL for t in same)
        if failed >= BASELINE_ATTEMPTS:
            _logger.warning("baseline %s failed %d times: not queued again", attrs, failed)
            continue
        if same:
            _logger.warning("baseline %s did not complete: queued again", attrs)
        study.enqueue_trial({}, user_attrs=attrs)
        owed = True
    return owed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def fail_dead_workers(study: optuna.Study, url: str) -> list[int]:
    """Fail (and queue again) the RUNNING trials of processes of this host that are gone, and
    this process's own (it calls between trials); returns their numbers."""
    host, failed = socket.gethostname(), []
    retry = RetryHeartbeatStaleTrialCallback(max_retry=2)  # queued again as a stale one would be
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get(TrialAttr.WORKER, "")).rpartition(":")
        if worker_host != host or not pid.isdigit():
            continue
        if int(pid) == os.getpid():  # claiming, so running nothing: the storage went away mid-trial
            reason = "its worker lost the storage during the trial"
        elif not _alive(int(pid)):
            reason = f"its worker ({worker_host}:{pid}) is gone"
        else:
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, TrialAttr.FAIL_REASON, reason)
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # it finished meanwhile after all
            continue
        retry(study, trial)
        with MetricsStore(url) as store:
            store.fail_runs_of_trial(trial._trial_id, reason)
        _logger.warning("trial %d: %s; failed and queued again", trial.number, reason)
        failed.append(trial.number)
    return failed


class TrialBudget:
    """Claims trials for one worker: see the module's docstring.

    Use as ``while budget.claim(study): study.optimize(objective, n_trials=1)``, with the
    objective calling :meth:`release` first thing (the trial is RUNNING by then).
    """

    def __init__(self, url: str, spec: StudySpec, study_name: str, n_trials: int):
        self.url, self.spec, self.n_trials = url, spec, n_trials
        self._lock = _Lock(url, study_name)

    def claim(self, study: optuna.Study) -> bool:
        """Whether this worker may start a trial; if so the lock is held until :meth:`release`."""
        self._lock.acquire()
        try:
            fail_dead_workers(study, self.url)
            trials = study.get_trials(deepcopy=False)  # one read of the study per claim
            owed = owe_baselines(study, self.spec, trials)
            taken = sum(t.state in (*FINISHED, TrialState.RUNNING) for t in trials)
            if taken < self.n_trials or owed:
                return True
        except BaseException:
            self._lock.release()
            raise
        self._lock.release()
        return False

    def release(self) -> None:
        self._lock.release()

    def close(self) -> None:
        self._lock.close()
