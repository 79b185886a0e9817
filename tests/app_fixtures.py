"""Real study databases for the dashboard's tests.

``build_study_db`` runs the real ``oialr study run`` on a tiny spec: its trials train real models
into the metrics store. Then a worker is stopped by SIGTERM half-way through a trial (the trial
FAILs with the reason, its run is marked failed) and another is killed outright (its trial stays
RUNNING, its run "running"), as happens to live workers. The other builders set up states a
study reaches without training (only failures, a single objective, empty storages).
``open_page`` runs one page of the dashboard on such a database in Streamlit's AppTest.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import sqlalchemy as sa
from helpers import REPO, env_with_repo

APP = str(REPO / "app" / "dashboard.py")
PAGES = {
    "studies": "app_pages/studies.py",
    "live": "app_pages/live.py",
    "pareto": "app_pages/pareto.py",
    "parameters": "app_pages/parameters.py",
    "trial": "app_pages/trial.py",
}


def open_page(monkeypatch, url: str, page: str = "studies", /, **query: str | list[str]):
    """The dashboard's ``page`` on storage ``url``, with these URL parameters, run once."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("OIALR_STORAGE", url)
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in query.items():
        at.query_params[key] = value
    if page != "studies":
        at.switch_page(PAGES[page])
    return at.run()


OBJECTIVES = ["val_acc", "trainable_fraction"]
SPEC = """
name = "{name}"
[run]
model = "mlp"
model_options = {{ widths = [64, 64] }}
dataset = "synthetic"
epochs = 3
batch_size = 64
log_every = 2
device = "cpu"
[search.delay]
low = 6
high = 24
unit = "steps"
[search.update_freq]
low = 3
high = 10
unit = "steps"
[search.sigma_cutoff]
low = 0.05
high = 0.5
log = true
[sampler]
name = "random"
seed = 0
[budget]
n_trials = {n_trials}
[baselines]
dense = true
"""


def build_study_db(url: str, *, n_trials: int = 4, name: str = "tiny") -> None:
    """Trial 0 is the dense baseline, trials 1..n_trials-1 OIALR with sampled ``delay``,
    ``update_freq`` and ``sigma_cutoff``, all COMPLETE; then one trial FAILs half-way (SIGTERM)
    and one stays RUNNING with an epoch written (SIGKILL), each from a real worker."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / f"{name}.toml"
        spec.write_text(SPEC.format(name=name, n_trials=n_trials))
        done = _worker(spec, url, n_trials).wait(timeout=600)
        assert done == 0, f"the tiny study failed (exit {done})"
        for extra, sig in ((1, signal.SIGTERM), (2, signal.SIGKILL)):
            worker = _worker(spec, url, n_trials + extra)
            _wait_for_an_epoch(url, name, trial_number=n_trials + extra - 1, worker=worker)
            worker.send_signal(sig)
            worker.wait(timeout=120)


def _worker(spec: Path, url: str, n_trials: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "oialr", "study", "run", str(spec), "--storage", url,
           "--n-trials", str(n_trials), "--quiet", "--heartbeat", "3600"]  # fmt: skip
    return subprocess.Popen(
        cmd, env=env_with_repo(OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _wait_for_an_epoch(url: str, study: str, trial_number: int, worker: subprocess.Popen) -> None:
    """Until the trial's run has written an epoch (then the signal lands mid-trial)."""
    engine = sa.create_engine(url)
    query = sa.text(
        "SELECT COUNT(*) FROM oialr_epochs e JOIN oialr_runs r ON r.id = e.run_id "
        "WHERE r.study_name = :s AND r.trial_number = :n"
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and worker.poll() is None:
            with engine.connect() as conn:
                if conn.execute(query, {"s": study, "n": trial_number}).scalar():
                    return
            time.sleep(0.05)
    finally:
        engine.dispose()
    raise AssertionError(f"trial {trial_number} of {study} wrote no epoch (worker {worker.poll()})")


def build_failed_only_db(url: str, *, name: str = "all-failed") -> None:
    """A study whose only trials FAILed before writing any metrics (e.g. a bad spec)."""
    import optuna

    from oialr.metrics_store import MetricsStore

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


def build_large_study_db(url: str, *, n_trials: int = 10_000, with_metrics: int = 20) -> None:
    """A 10,000-trial study (named "scale") in a couple of seconds: the synthetic study of
    ``benchmarks/app_scale.py`` (Optuna's tables written in bulk, through Optuna's own table
    definitions), with runs and metrics for its last ``with_metrics`` trials only."""
    import importlib.util

    from helpers import BENCH

    spec = importlib.util.spec_from_file_location("app_scale", BENCH / "app_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(url, n_trials, steps_per_run=40, live_steps=200, metrics_trials=with_metrics)


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
            from oialr.metrics_store import MetricsStore

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
