"""A tiny real study database for the dashboard's tests.

``build_study_db`` runs a real (tiny) Optuna study whose trials train real models through
``oialr.train.fit`` into the metrics store, following the conventions of ``oialr study run``:
study user attrs ``oialr.spec`` / ``oialr.objectives``, trial user attrs ``mode``, ``run_id``,
``val_acc``, ... and runs linked to trials by ``study_name`` + ``trial_number``.

Later this may call the real ``oialr study run``; keep the signature.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# `import app` must work however pytest is started (`python -m pytest` adds the cwd to sys.path,
# the `pytest` script does not).
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

OBJECTIVES = ["val_acc", "trainable_fraction"]
_TRAIN = {"dataset": "synthetic", "model": "mlp", "epochs": 2, "batch_size": 64, "log_every": 2}


class _Crash(RuntimeError):
    """Raised by a recorder to stop a run half-way, as a killed or crashing worker would."""


def _command(mode: str, params: dict[str, Any]) -> str:
    opts = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in {**_TRAIN, **params}.items())
    return f"oialr train --mode {mode} {opts} --device cpu"


def build_study_db(url: str, *, n_trials: int = 4, name: str = "tiny") -> None:
    """Runs a tiny real two-objective study into ``url`` (Optuna tables + ``oialr_*`` tables).

    Trial 0 is the dense baseline, trials 1..n_trials-1 are OIALR with sampled ``delay``,
    ``update_freq`` and ``sigma_cutoff``, all COMPLETE. Then one OIALR trial FAILs half-way
    (run ``failed``, ``fail_reason`` set) and one stays RUNNING with one epoch written (its
    run still ``running``), as a live worker's would be.
    """
    import optuna
    import torch

    from oialr.recorders import StoreRecorder
    from oialr.store import MetricsStore
    from oialr.train import RunConfig, fit

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    threads = torch.get_num_threads()
    # Two cores shared with other work: one thread avoids oversubscription and is faster here.
    torch.set_num_threads(1)
    store = MetricsStore(url)
    study = optuna.create_study(
        storage=url,
        study_name=name,
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.set_user_attr(
        "oialr.spec",
        {"name": name, **_TRAIN, "space": {"delay": [6, 24], "update_freq": [3, 10]}},
    )
    study.set_user_attr("oialr.objectives", OBJECTIVES)

    def run_trial(mode: str, *, crash_after_epoch: bool = False, leave_running: bool = False):
        trial = study.ask()
        params: dict[str, Any] = {}
        if mode == "oialr":
            params = {
                "delay": trial.suggest_int("delay", 6, 24),
                "update_freq": trial.suggest_int("update_freq", 3, 10),
                "sigma_cutoff": trial.suggest_float("sigma_cutoff", 0.05, 0.5, log=True),
            }
        recorder = StoreRecorder(
            store, study_name=name, trial_number=trial.number, trial_id=trial._trial_id
        )
        if crash_after_epoch or leave_running:
            recorder = _Interrupting(recorder, keep_running=leave_running)
        cfg = RunConfig.build(**_TRAIN, mode=mode, device="cpu", seed=trial.number, **params)
        trial.set_user_attr("mode", mode)
        trial.set_user_attr("command", _command(mode, params))
        try:
            result = fit(cfg, recorder)
        except _Crash as err:
            store.flush()
            trial.set_user_attr("run_id", recorder.run_id)
            if leave_running:
                return  # never told: the trial stays RUNNING
            trial.set_user_attr("fail_reason", f"RuntimeError: {err}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        attrs = {
            "run_id": result.run_id,
            "val_acc": result.final_val_acc,  # as `oialr study run` reports it
            "test_acc": result.test_acc,
            "trainable_fraction": result.trainable_fraction,
            "stored_fraction": result.stored_fraction,
            "wall_time": round(result.wall_time, 3),
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        study.tell(trial, [result.final_val_acc, result.trainable_fraction])

    try:
        run_trial("dense")
        for _ in range(n_trials - 1):
            run_trial("oialr")
        run_trial("oialr", crash_after_epoch=True)
        run_trial("oialr", leave_running=True)
    finally:
        store.close()
        torch.set_num_threads(threads)


class _Interrupting:
    """Wraps a recorder and stops the run after its first epoch.

    With ``keep_running`` the run is left ``running`` in the store (its worker is "still
    training"); otherwise it is marked failed, as ``fit`` does for any exception.
    """

    def __init__(self, inner: Any, *, keep_running: bool) -> None:
        self.inner, self.keep_running = inner, keep_running

    @property
    def run_id(self) -> int | None:
        return self.inner.run_id

    def start(self, config: Any) -> None:
        self.inner.start(config)

    def step(self, *args: Any) -> None:
        self.inner.step(*args)

    def layers(self, records: Any) -> None:
        self.inner.layers(records)

    def epoch(self, metrics: dict[str, Any]) -> None:
        self.inner.epoch(metrics)
        raise _Crash("worker stopped after epoch 1 (simulated)")

    def finish(self, status: str, result: Any, error: str | None) -> None:
        if not self.keep_running:
            self.inner.finish(status, result, error)


def build_failed_only_db(url: str, *, name: str = "all-failed") -> None:
    """A study whose only trials FAILed before writing any metrics (e.g. a bad spec)."""
    import optuna

    from oialr.store import MetricsStore

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    MetricsStore(url).close()
    study = optuna.create_study(
        storage=url, study_name=name, directions=["maximize", "minimize"], load_if_exists=True
    )
    study.set_user_attr("oialr.objectives", OBJECTIVES)
    for _ in range(2):
        trial = study.ask()
        trial.suggest_int("delay", 6, 24)
        trial.set_user_attr("mode", "oialr")
        trial.set_user_attr("fail_reason", "ConfigError: dataset 'nope' is unknown")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)


def _checkpoint(path: Path) -> None:
    """Moves WAL content into the database file, so the file alone holds every row."""
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def build_single_objective_db(url: str, *, name: str = "acc-only") -> None:
    """A single-objective study (``["val_acc"]``) with a categorical parameter and no metrics
    (runs not linked): what an accuracy-only spec with pruning records, without training."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=url, study_name=name, direction="maximize")
    study.set_user_attr("oialr.objectives", ["val_acc"])
    dists = {
        "delay": IntDistribution(10, 1000, log=True),
        "sigma_cutoff": FloatDistribution(0.01, 0.5, log=True),
        "optimizer": CategoricalDistribution(["adamw", "sgd"]),
    }
    trials = [create_trial(value=0.9, user_attrs={"mode": "dense", "val_acc": 0.9})]
    for i in range(6):
        params = {"delay": 10 + 150 * i, "sigma_cutoff": 0.02 * (i + 1), "optimizer": "sgd"}
        if i % 2:
            params["optimizer"] = "adamw"
        acc = 0.8 + 0.01 * i
        attrs = {"mode": "oialr", "val_acc": acc, "trainable_fraction": 1 - 0.1 * i}
        state = TrialState.PRUNED if i == 5 else TrialState.COMPLETE
        trials.append(
            create_trial(
                state=state,
                value=None if state == TrialState.PRUNED else acc,
                params=params,
                distributions=dists,
                user_attrs=attrs,
            )
        )
    study.add_trials(trials)


# -- shared, built once per test process ----------------------------------------------------

_BUILT: dict[str, Path] = {}
_LOCK = threading.Lock()


def shared_databases(base: Path) -> dict[str, str]:
    """URLs of the databases the app tests use, built once per process under ``base``.

    - ``study``: the tiny study, an all-failed study and a single-objective one;
    - ``empty``: only the oialr tables (no Optuna study yet);
    - ``optuna_empty``: Optuna's tables and no study;
    - ``optuna_only``: a study, but no oialr tables yet (no worker has started);
    - ``corrupt``: a file that is not SQLite; ``missing``: a path that does not exist.
    """
    with _LOCK:
        if "dir" not in _BUILT:
            base.mkdir(parents=True, exist_ok=True)
            study = base / "study.db"
            build_study_db(f"sqlite:///{study}")
            build_failed_only_db(f"sqlite:///{study}")
            build_single_objective_db(f"sqlite:///{study}")
            from oialr.store import MetricsStore

            MetricsStore(f"sqlite:///{base / 'empty.db'}").close()
            import optuna

            optuna.storages.RDBStorage(f"sqlite:///{base / 'optuna_empty.db'}")
            # Optuna's tables only: a study whose workers have not created the oialr tables yet.
            build_single_objective_db(f"sqlite:///{base / 'optuna_only.db'}")
            (base / "corrupt.db").write_bytes(b"this is not a database\n" * 200)
            for name in ("study.db", "empty.db", "optuna_empty.db", "optuna_only.db"):
                _checkpoint(base / name)
            _BUILT["dir"] = base
    root = _BUILT["dir"]
    return {
        "study": f"sqlite:///{root / 'study.db'}",
        "empty": f"sqlite:///{root / 'empty.db'}",
        "optuna_empty": f"sqlite:///{root / 'optuna_empty.db'}",
        "optuna_only": f"sqlite:///{root / 'optuna_only.db'}",
        "corrupt": f"sqlite:///{root / 'corrupt.db'}",
        "missing": f"sqlite:///{root / 'missing' / 'nope.db'}",
    }
