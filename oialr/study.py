"""Optuna studies over OIALR's hyperparameters: storage, baselines, the objective, workers.

Every worker, on this machine or another, runs the same loop against one RDB storage (Optuna's
standard distributed setup): ``create_study(load_if_exists=True)`` then ``optimize``. Heartbeats
fail the trials of a killed worker and a retry callback queues them again; a global
``MaxTrialsCallback`` caps the study. There is no scheduler of our own.
"""

from __future__ import annotations

import contextlib
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
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .errors import ConfigError, Interrupted, RunPruned, StorageError, StudyStopped
from .imports import resolve
from .metrics_store import MetricsStore
from .options import SEARCHABLE, train_command
from .recorders import StoreRecorder
from .run_config import RunConfig, RunResult
from .spec import StudySpec
from .tracking import RunHandle
from .vocab import (
    DENSE,
    FIXED_RANK,
    OBJECTIVES_ATTR,
    OIALR,
    SPEC_ATTR,
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
_RECONNECTS = 6  # tries to get back to a lost storage between trials (1 + 2 + … + 32 s)


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


def create_study(spec: StudySpec, storage: RDBStorage, name: str | None = None) -> optuna.Study:
    """Create the study (or load it: every worker calls this) and queue the baselines once."""
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
    if SPEC_ATTR not in study.user_attrs:
        study.set_user_attr(SPEC_ATTR, spec.model_dump(mode="json"))
        study.set_user_attr(OBJECTIVES_ATTR, spec.objective.names)
        if spec.baselines.dense:
            study.enqueue_trial({}, user_attrs={TrialAttr.MODE: DENSE})
        for fraction in spec.baselines.fixed_rank:
            attrs = {TrialAttr.MODE: FIXED_RANK, TrialAttr.RANK_FRACTION: fraction}
            study.enqueue_trial({}, user_attrs=attrs)
    return study


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
    """Store recorder that also reports validation accuracy to Optuna for pruning."""

    def __init__(self, store, trial: optuna.Trial, prune: bool, epochs: int):
        super().__init__(store, study_name=trial.study.study_name, trial_number=trial.number,
                         trial_id=trial._trial_id)  # fmt: skip
        self.trial, self.prune, self.epochs = trial, prune, epochs

    def epoch(self, metrics):
        super().epoch(metrics)
        if self.prune and math.isfinite(metrics["val_acc"]):
            self.trial.report(metrics["val_acc"], metrics["epoch"])
            if metrics["epoch"] < self.epochs and self.trial.should_prune():  # never a finished run
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

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
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
                    prune = self.spec.objective.kind == "accuracy" and seed == 0
                    recorder = _TrialRecorder(store, trial, prune, cfg.epochs)
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
        self.study, self.in_trial, self.received = study, False, None

    @contextlib.contextmanager
    def trial(self):
        self.in_trial = True
        try:
            yield
        finally:
            self.in_trial = False

    def __call__(self, signum, _frame):
        self.received = signal.Signals(signum).name
        if self.in_trial:
            raise Interrupted(f"stopped by {self.received}")
        try:
            self.study.stop()
        except RuntimeError:  # not inside optimize yet: nothing to finish
            raise Interrupted(f"stopped by {self.received}") from None

    def raise_if_received(self) -> None:
        if self.received:
            raise Interrupted(f"stopped by {self.received}")


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
) -> optuna.Study:
    """Run trials in this process until the study holds ``n_trials`` finished trials, sharing
    their dense warm-up through ``warmup`` when given (:mod:`oialr.warmup`).

    SIGINT and SIGTERM end the running trial as FAIL with the reason recorded (Optuna marks it
    on the way out), then raise :class:`Interrupted`; running the command again continues.
    """
    storage = open_storage(url, heartbeat=heartbeat)
    study = create_study(spec, storage, study_name)
    n_trials = n_trials or spec.budget.n_trials
    timeout = timeout if timeout is not None else spec.budget.timeout
    interrupts = _Interrupts(study)
    failures = FailureBudget(spec.budget.failures_in_a_row)
    previous = {s: signal.signal(s, interrupts) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for attempt in range(_RECONNECTS + 1):
            try:
                if _finished(study) < n_trials:
                    study.optimize(
                        Objective(spec, url, interrupts, warmup),
                        timeout=timeout,
                        catch=(Exception,),  # a failing trial is recorded FAIL; the study goes on
                        callbacks=[
                            MaxTrialsCallback(n_trials, states=FINISHED),
                            _log_failure,
                            failures,
                            *callbacks,
                        ],
                        gc_after_trial=True,
                    )
                break
            except (SQLAlchemyError, StorageInternalError, StorageError) as err:
                # the database went away between trials (a restart, a network cut): wait and go
                # on; a trial left RUNNING is failed by its stale heartbeat and retried
                if attempt == _RECONNECTS:
                    raise StorageError(
                        f"storage {mask_url(url)} unreachable: {err}".split("\n")[0]
                    ) from None
                _logger.warning("storage error (%s); reconnecting in %d s", err, 2**attempt)
                time.sleep(2**attempt)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    interrupts.raise_if_received()
    if failures.reason is not None:
        raise StudyStopped(
            f"study {study.study_name!r} stopped: {failures.limit} trials in a row failed with "
            f"{failures.reason}"
        )
    return study


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


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


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
