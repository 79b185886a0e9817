"""Optuna studies over OIALR's hyperparameters: storage, baselines, the objective, workers.

Every worker, on this machine or another, runs the same loop against one RDB storage (Optuna's
standard distributed setup): ``create_study(load_if_exists=True)``, then one ``optimize`` trial
at a time, each claimed under :class:`~oialr.trial_budget.TrialBudget` (an exact budget across
workers, baselines owed, trials of dead workers failed and queued again). Heartbeats fail the
trials of a worker lost on another machine and a retry callback queues them again.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from . import signals
from .errors import ConfigError, Interrupted, RunPruned, StorageError, StudyStopped
from .imports import resolve
from .metrics_store import MetricsStore
from .options import SEARCHABLE, train_command
from .recorders import StoreRecorder
from .run_config import RunConfig, RunResult
from .spec import StudySpec
from .tracking import RunHandle
from .trial_budget import TrialBudget
from .vocab import (
    OBJECTIVES_ATTR,
    OIALR,
    SPEC_ATTR,
    SPEC_CHANGES_ATTR,
    TrialAttr,
    mask_url,
    sqlite_file,
)
from .warmup import WarmupCache

_logger = logging.getLogger(__name__)

__all__ = [
    "open_storage",
    "create_study",
    "load_study",
    "run_worker",
    "run_workers",
]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_RECONNECTS = 5  # tries to get back to a lost storage (1 + 2 + … + 16 s)


def open_storage(url: str, heartbeat: int | None = None, *, create: bool = True) -> RDBStorage:
    """Optuna's RDB storage on ``url``, with heartbeats when ``heartbeat`` seconds are given.

    Unless ``create`` is False (read-only commands, on a storage checked to hold studies), our
    metrics store is opened first: it validates the URL with a one-line error, creates our
    tables and puts SQLite in WAL mode, which lets readers and several writers share the file.
    """
    if create:
        MetricsStore(url).close()
    sqlite = url.startswith("sqlite")
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if sqlite:  # transactions begin explicitly (below); wait up to 30 s for the write lock
        kwargs = {"connect_args": {"timeout": 30, "isolation_level": None}}
    hb: dict[str, Any] = {}
    if heartbeat:
        hb = dict(
            heartbeat_interval=heartbeat,
            grace_period=3 * heartbeat,
            heartbeat_stale_trial_callback=_RetryStale(url),
        )
    for attempt in range(3):
        try:
            storage = RDBStorage(url, engine_kwargs=kwargs, **hb)
            break
        except Exception as err:  # sqlalchemy / optuna wrap connection problems variously
            # two workers creating Optuna's tables in a fresh database at once: the loser retries
            racing = isinstance(err, IntegrityError) or "already exists" in str(err)
            if not racing or attempt == 2:
                message = f"storage {mask_url(url)}: {type(err).__name__}: {err}"
                raise StorageError(message.split("\n")[0]) from None
            time.sleep(0.5)
    if sqlite:
        # Optuna claims a queued trial with SELECT … FOR UPDATE, which SQLite ignores, so two
        # workers could both take it; taking the write lock as each transaction begins cannot.
        sa.event.listen(
            storage.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE")
        )
    return storage


class _RetryStale:
    """Queue a dead worker's trial again (up to twice) and mark its metrics run failed."""

    def __init__(self, url: str):
        self.url = url
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=2)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        _logger.warning("trial %d lost its worker (no heartbeat): retrying it", trial.number)
        self.retry(study, trial)
        with MetricsStore(self.url) as store:
            store.fail_runs_of_trial(trial._trial_id, "worker stopped sending heartbeats")


def _sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    seed, name = spec.sampler.seed, spec.sampler.name
    constraints = _constraints if spec.objective.max_trainable_fraction is not None else None
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, constraints_func=constraints)
    startup = max(4, min(10, spec.budget.n_trials // 3))  # TPE needs a few random trials first
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=startup, multivariate=True, constraints_func=constraints
    )


def _constraints(trial: FrozenTrial) -> list[float]:
    """Feasible when ``trainable_fraction - max_trainable_fraction <= 0``."""
    return [trial.user_attrs.get(TrialAttr.CONSTRAINT, 0.0)]


def _pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    if spec.pruner.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)  # spare epoch 1
    if spec.pruner.name == "hyperband":
        epochs = RunConfig.build(**spec.run).epochs
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def create_study(
    spec: StudySpec, storage: RDBStorage, name: str | None = None, *,
    allow_spec_change: bool = False,
) -> optuna.Study:  # fmt: skip
    """Create the study, or load it (every worker calls this) if it was made from the same spec.

    Raises:
        ConfigError: the study exists with another spec (the message lists the differences)
            and ``allow_spec_change`` is not given; with it, the change is recorded in the
            study's ``spec_changes`` attribute.
    """
    name = name or spec.name
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=spec.objective.directions,
        sampler=_sampler(spec),
        pruner=_pruner(spec),
        load_if_exists=True,
    )
    if study.directions != [
        optuna.study.StudyDirection[d.upper()] for d in spec.objective.directions
    ]:
        raise ConfigError(
            f"study {name!r} already exists with other objectives; pick another --study-name"
        )
    stored, current = study.user_attrs.get(SPEC_ATTR), spec.model_dump(mode="json")
    changes = spec_changes(_identity(stored), _identity(current)) if stored is not None else []
    if changes and not allow_spec_change:
        shown = "; ".join(changes[:4]) + ("; …" if len(changes) > 4 else "")
        raise ConfigError(
            f"study {name!r} exists with another spec ({shown}): give --study-name NEW for a "
            "new study, or --allow-spec-change to continue this one under the new spec"
        )
    if changes:
        log = study.user_attrs.get(SPEC_CHANGES_ATTR, [])
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        study.set_user_attr(SPEC_CHANGES_ATTR, [*log, {"at": at, "changes": changes}])
    if stored is None or changes:
        study.set_user_attr(SPEC_ATTR, current)
        study.set_user_attr(OBJECTIVES_ATTR, spec.objective.names)
    return study  # the baselines are queued by the first claim (oialr.trial_budget)


def _identity(spec: dict[str, Any]) -> dict[str, Any]:
    """A stored spec as this oialr reads it: fields an older one did not write at their
    defaults, and ``run`` as the whole run config it builds (an option left out and one set to
    its default are the same study)."""
    try:
        full = StudySpec(**spec).model_dump(mode="json")
        full["run"] = RunConfig.build(**full["run"]).model_dump(mode="json")
        return full
    except Exception:  # a spec this version cannot read: compared as stored
        return spec


# Not part of a study's identity: how long it runs and how it is described.
_NOT_IDENTITY = ("budget", "description")


def spec_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old → new`` for every field that differs, budget and description aside."""

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix: d}
        out: dict[str, Any] = {}
        for k, v in d.items():
            if prefix or k not in _NOT_IDENTITY:
                out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
        return out

    a, b = flat(old), flat(new)
    return [f"{k}: {a.get(k, '(unset)')} → {b.get(k, '(unset)')}"
            for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]  # fmt: skip


def load_study(name: str, storage: RDBStorage | str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        where = mask_url(storage if isinstance(storage, str) else storage.url)
        raise ConfigError(
            f"study {name!r} is not in {where}; `oialr study list` shows the studies there"
        ) from None


# -- the objective -------------------------------------------------------------------------------
class _TrialRecorder(StoreRecorder):
    """Store recorder that also reports validation accuracy to Optuna for pruning (``report``)
    and prunes (``prune``: OIALR trials only; baselines are the reference, always whole)."""

    def __init__(self, store, trial: optuna.Trial, report: bool, prune: bool, epochs: int):
        super().__init__(store, study_name=trial.study.study_name, trial_number=trial.number,
                         trial_id=trial._trial_id)  # fmt: skip
        self.trial, self.report, self.prune, self.epochs = trial, report, prune, epochs

    def step(self, step, loss, lr, step_time):
        super().step(step, loss, lr, step_time)
        signals.raise_if_received()  # one whose raise was swallowed mid-step

    def epoch(self, metrics):
        super().epoch(metrics)
        signals.raise_if_received()
        if self.report and math.isfinite(metrics["val_acc"]):
            self.trial.report(metrics["val_acc"], metrics["epoch"])
            last = metrics["epoch"] >= self.epochs  # never prune a finished run
            if self.prune and not last and self.trial.should_prune():
                raise RunPruned(f"pruned at epoch {metrics['epoch']}")


def _suggest(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    params = {}
    for name, p in spec.search.items():
        if p.choices is not None:
            params[name] = trial.suggest_categorical(name, p.choices)
        elif p.is_integer(SEARCHABLE[name], spec.unit_of(name)):
            params[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log,
                                             step=int(p.step or 1))  # fmt: skip
        else:
            params[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
    return params


@dataclass
class Objective:
    """Optuna objective: one trial = one configuration trained for ``spec.seeds`` seeds."""

    spec: StudySpec
    url: str
    interrupts: _Interrupts | None = None
    warmup: WarmupCache | None = None
    budget: TrialBudget | None = None

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        if self.budget is not None:  # the trial is RUNNING now: the other workers count it
            self.budget.release()
        signals.raise_if_received()
        if self.interrupts is not None:
            with self.interrupts.trial():
                return self._run(trial)
        return self._run(trial)

    def _run(self, trial: optuna.Trial) -> float | list[float]:
        from .train import fit  # the training code (torch) loads only where trials run

        mode = trial.user_attrs.get(TrialAttr.MODE, OIALR)
        params = _suggest(trial, self.spec) if mode == OIALR else {}
        rank = trial.user_attrs.get(TrialAttr.RANK_FRACTION)
        trial.set_user_attr(TrialAttr.MODE, mode)
        trial.set_user_attr(TrialAttr.WORKER, f"{socket.gethostname()}:{os.getpid()}")
        results: list[RunResult] = []
        loop = self.spec.objective.train
        try:
            with MetricsStore(self.url) as store:
                for seed in range(self.spec.seeds):
                    cfg = self.spec.run_config(params, mode, seed, fixed_rank=rank)
                    if seed == 0:
                        trial.set_user_attr(TrialAttr.COMMAND, self._command(cfg, params))
                    report = self.spec.objective.kind == "accuracy" and seed == 0
                    recorder = _TrialRecorder(store, trial, report, mode == OIALR, cfg.epochs)
                    if loop is None:
                        results.append(fit(cfg, recorder, warmup=self.warmup))
                    else:
                        results.append(_run_loop(loop, RunHandle(recorder, cfg, params)))
        except RunPruned as err:
            raise optuna.TrialPruned(str(err)) from None
        except BaseException as err:
            reason = f"{type(err).__name__}: {err}".split("\n")[0][:500]
            trial.set_user_attr(TrialAttr.FAIL_REASON, reason)
            raise
        return self._report(trial, results)

    def _command(self, cfg: RunConfig, params: dict[str, Any]) -> str:
        """What reproduces the trial: an ``oialr train`` command, or the loop and its parameters."""
        loop = self.spec.objective.train
        if loop is None:
            return train_command(cfg)
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items()) or cfg.mode
        return f"{loop} with {shown} (oialr study run {self.spec.name}: objective.train)"

    def _report(self, trial: optuna.Trial, results: list[RunResult]) -> float | list[float]:
        def mean(key: str) -> float:
            return statistics.fmean(getattr(r, key) for r in results)

        attrs = {
            TrialAttr.RUN_ID: results[0].run_id,
            TrialAttr.VAL_ACC: mean("final_val_acc"),
            TrialAttr.TEST_ACC: mean("test_acc"),
            TrialAttr.TRAINABLE_FRACTION: mean("trainable_fraction"),
            TrialAttr.STORED_FRACTION: mean("stored_fraction"),
            TrialAttr.WALL_TIME: mean("wall_time"),
            TrialAttr.STEPS_TRAINED: sum(r.steps - r.warm_start_step for r in results),
        }
        if len(results) > 1:
            attrs[TrialAttr.VAL_ACC_STD] = statistics.stdev(r.final_val_acc for r in results)
        cap = self.spec.objective.max_trainable_fraction
        if cap is not None:
            attrs[TrialAttr.CONSTRAINT] = attrs[TrialAttr.TRAINABLE_FRACTION] - cap
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        values = [attrs[name] for name in self.spec.objective.names]
        return values[0] if len(values) == 1 else values


def _run_loop(loop: str, handle: RunHandle) -> RunResult:
    """Run your training loop once and what it reported, as a finished run."""
    with handle:
        returned = resolve(loop, "objective.train")(handle)
        if not handle.epochs:
            raise ConfigError(
                f"objective.train {loop} reported no epoch: call run.epoch(val_acc=...) at the "
                "end of each epoch (its validation accuracy is the trial's objective)"
            )
        test = returned if isinstance(returned, dict) else {}
        return handle.finish(**{k: test[k] for k in ("test_acc", "test_loss") if k in test})


# -- workers -------------------------------------------------------------------------------------
class _Interrupts:
    """SIGINT/SIGTERM while a worker runs: inside a trial, raise at once (Optuna records the
    trial FAIL with the reason); between trials, let Optuna finish its bookkeeping, stop the
    study, and raise afterwards — so no trial is ever left RUNNING by a signal."""

    def __init__(self, study: optuna.Study):
        self.study, self.in_trial = study, False

    @contextlib.contextmanager
    def trial(self):
        self.in_trial = True
        try:
            yield
        finally:
            self.in_trial = False

    def __call__(self, signum, frame):
        name = signals.record(signum)
        if not signals.safe_to_raise(frame):
            return  # raised at the next check: the trial's next logged step, or between trials
        if self.in_trial:
            raise Interrupted(f"stopped by {name}")
        try:
            self.study.stop()
        except RuntimeError:  # not inside optimize: nothing to finish
            raise Interrupted(f"stopped by {name}") from None


def run_worker(
    spec: StudySpec,
    url: str,
    *,
    study_name: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    heartbeat: int = 30,
    callbacks: list[Callable] = (),
    warmup: WarmupCache | None = None,
    allow_spec_change: bool = False,
) -> optuna.Study:
    """Run trials in this process until the study holds ``n_trials`` finished trials, sharing
    their dense warm-up through ``warmup`` when given (:mod:`oialr.warmup`).

    SIGINT and SIGTERM end the running trial as FAIL with the reason recorded (Optuna marks it
    on the way out), then raise :class:`Interrupted`; running the command again continues.
    """
    signals.raise_if_received()  # one that landed while the command started, swallowed
    storage = open_storage(url, heartbeat=heartbeat)
    study = create_study(spec, storage, study_name, allow_spec_change=allow_spec_change)
    n_trials = n_trials or spec.budget.n_trials
    timeout = timeout if timeout is not None else spec.budget.timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    interrupts = _Interrupts(study)
    failures = FailureBudget(spec.budget.failures_in_a_row)
    budget = TrialBudget(url, spec, study.study_name, n_trials)
    objective = Objective(spec, url, interrupts, warmup, budget)
    reconnects = _Reconnects(storage, url)
    callbacks = [_log_failure, failures, reconnects, *callbacks]
    previous = signals.install(interrupts)
    try:
        with _outages_reported_once(), _objects_before_trials_frozen():
            while True:
                try:
                    _claim_and_run(study, objective, budget, callbacks, deadline,
                                   stop=lambda: failures.reason is not None or signals.received())  # fmt: skip
                    break
                except Exception as err:
                    budget.release()
                    if not reconnects.wait(err):  # not the storage: a bug of ours or Optuna's
                        raise
    finally:
        signals.restore(previous)
        budget.close()
    signals.raise_if_received()
    if failures.reason is not None:
        raise StudyStopped(
            f"study {study.study_name!r} stopped: {failures.limit} trials in a row failed with "
            f"{failures.reason}"
        )
    return study


@contextlib.contextmanager
def _objects_before_trials_frozen():
    """Keep the collection after every trial (``gc_after_trial``) to what trials allocate.

    A full collection scans every tracked object: with torch, Optuna and SQLAlchemy loaded,
    ~200k of them, 0.2 s a trial on the quickstart (5 % of its wall time). What exists before
    the first trial (modules, the storage) lives as long as the worker, so it is frozen out
    of the collector and thawed on the way out. Left alone if the caller froze objects itself.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.collect()  # only what is alive gets frozen
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _claim_and_run(study, objective, budget, callbacks, deadline, stop) -> None:
    """One trial at a time, each claimed (:mod:`oialr.trial_budget`), until the budget, the
    deadline, a signal or ``stop()`` says no."""
    while not signals.received() and _time_left(deadline) and budget.claim(study):
        study.optimize(
            objective,
            n_trials=1,
            catch=(Exception,),  # a failing trial is recorded FAIL; the study goes on
            callbacks=callbacks,
            gc_after_trial=True,
        )
        budget.release()  # if the trial never started (its ask failed)
        if stop():
            return


class _Reconnects:
    """Rides out a storage outage (a restart, a network cut): waits 1, 2, 4, … s between tries,
    at most ``_RECONNECTS`` in a row; a trial finishing (an Optuna callback) resets the count.
    The trial the outage cut short is failed and queued again by the next claim."""

    def __init__(self, storage: RDBStorage, url: str):
        self.storage, self.url, self.lost = storage, url, 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.lost = 0

    def wait(self, err: Exception) -> bool:
        """False when ``err`` is not the storage's; else wait for it, or raise once it stays
        gone."""
        cause = _storage_fault(err, self.storage)
        if cause is None:
            return False
        where = mask_url(self.url)
        if self.lost == _RECONNECTS:
            reason = f"{type(cause).__name__}: {cause}".split("\n")[0]
            raise StorageError(f"storage {where} is unreachable ({reason}); start it again and "
                               "rerun the same command: the study continues") from None  # fmt: skip
        if self.lost == 0:  # one line while it waits; the outcome is the next one
            _logger.warning("storage %s is unreachable (%s): retrying for up to %d s",
                            where, type(cause).__name__, 2**_RECONNECTS - 1)  # fmt: skip
        time.sleep(2**self.lost)
        self.lost += 1
        return True


def _time_left(deadline: float | None) -> bool:
    return deadline is None or time.monotonic() < deadline


def _storage_cause(err: BaseException) -> BaseException | None:
    """The database error anywhere in ``err``'s chain (Optuna can mask one, e.g. as an
    ``UnboundLocalError`` raised while it propagates), or None."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (SQLAlchemyError, StorageInternalError, StorageError)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _storage_fault(err: BaseException, storage: RDBStorage) -> BaseException | None:
    """The storage's error behind ``err``, or ``err`` itself when the storage does not answer
    now; None when the storage is not to blame."""
    if (cause := _storage_cause(err)) is not None:
        return cause
    try:
        with storage.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return None
    except Exception:
        return err


@contextlib.contextmanager
def _outages_reported_once():
    """Optuna's heartbeat thread dies with a traceback when the storage goes away; the worker
    reports that outage in one line of its own, so the thread's is dropped."""
    previous = threading.excepthook

    def excepthook(args) -> None:
        if _storage_cause(args.exc_value) is None:
            previous(args)

    threading.excepthook = excepthook
    try:
        yield
    finally:
        threading.excepthook = previous


class FailureBudget:
    """Stops the study once its last ``limit`` finished trials (every worker's) all failed for
    the same reason (numbers aside): an error each trial meets again, a broken loop or a missing
    file, is not worth the rest of the budget. The reason is then kept in ``reason``."""

    def __init__(self, limit: int):
        self.limit, self.reason = limit, None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state != TrialState.FAIL:
            return
        ended = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.FAIL))
        last = sorted(ended, key=lambda t: t.datetime_complete or t.datetime_start)[-self.limit :]
        reasons = {_shape(t.user_attrs.get(TrialAttr.FAIL_REASON, "")) for t in last}
        if (
            len(last) == self.limit
            and len(reasons) == 1
            and all(t.state == TrialState.FAIL for t in last)
        ):
            self.reason = trial.user_attrs.get(TrialAttr.FAIL_REASON, "no reason recorded")
            study.stop()


def _shape(reason: str) -> str:
    """A failure reason without its numbers (a step, a loss value), to compare with others."""
    return re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", reason)


def _log_failure(study: optuna.Study, trial: FrozenTrial) -> None:
    if trial.state == TrialState.FAIL:
        reason = trial.user_attrs.get(TrialAttr.FAIL_REASON, "see --verbose")
        _logger.warning("trial %d failed: %s", trial.number, reason)


def worker_command(spec_path: str, url: str, study_name: str, n_trials: int | None,
                   timeout: float | None, heartbeat: int, warmup: Path | None) -> list[str]:  # fmt: skip
    cmd = [sys.executable, "-m", "oialr", "study", "run", spec_path, "--storage", url,
           "--study-name", study_name, "--workers", "1", "--quiet", "--heartbeat", str(heartbeat)]  # fmt: skip
    if n_trials:
        cmd += ["--n-trials", str(n_trials)]
    if timeout:
        cmd += ["--timeout", str(timeout)]
    cmd += ["--warmup-cache", str(warmup)] if warmup is not None else ["--no-warmup-cache"]
    return cmd


def default_warmup_cache(url: str) -> Path:
    """Where a study's warm-up snapshots go unless told: beside a SQLite file, else in the
    user's cache (a shared path, given with --warmup-cache, serves several machines)."""
    path = sqlite_file(url)
    if path is not None:
        return path.with_name(path.name + ".warmup")
    return Path("~/.cache/oialr/warmup").expanduser()


def run_workers(
    commands: list[list[str]], envs: list[dict[str, str]], on_tick: Callable[[], None]
) -> int:
    """Start one process per command, tick while they run, forward SIGINT/SIGTERM to all.

    Returns the first non-zero exit code, or 0.
    """
    procs = [subprocess.Popen(cmd, env=env) for cmd, env in zip(commands, envs)]
    stop = threading.Event()

    def forward(signum, _frame):
        stop.set()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(p.poll() is None for p in procs):
            on_tick()
            time.sleep(1.0)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    on_tick()
    if stop.is_set():
        raise Interrupted("stopped by a signal")
    return next((p.returncode for p in procs if p.returncode), 0)


def progress_counts(study: optuna.Study) -> dict[str, Any]:
    """Trials by state and the best validation accuracy so far (for progress lines)."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    counts["best_val_acc"] = max(
        (t.user_attrs.get(TrialAttr.VAL_ACC, math.nan) for t in done), default=None
    )
    return counts
