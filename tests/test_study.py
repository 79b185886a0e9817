"""Studies end to end through the real CLI: SQLite, PostgreSQL with workers, pruning."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from oialr.store import MetricsStore

ROOT = Path(__file__).parent.parent
TINY = Path(__file__).parent / "specs" / "tiny.toml"


def oialr(*args, timeout=600, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "oialr", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=kwargs.get("cwd", ROOT))  # fmt: skip


def write_spec(tmp_path, text, name="spec.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.slow
def test_quickstart_study_on_sqlite(tmp_path):
    db = f"sqlite:///{tmp_path / 'oialr.db'}"
    done = oialr("study", "run", "studies/quickstart.toml", "--storage", db, "--n-trials", "5")
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="quickstart", storage=db)
    trials = study.get_trials()
    modes = [t.user_attrs["mode"] for t in trials]
    assert modes[:3] == ["dense", "fixed-rank", "fixed-rank"] and modes.count("oialr") >= 2
    assert all(t.state == TrialState.COMPLETE for t in trials)
    dense = trials[0]
    assert dense.values[1] == 1.0 and dense.user_attrs["test_acc"] > 0.75  # real Fashion-MNIST
    fixed = [t for t in trials if t.user_attrs["mode"] == "fixed-rank"]
    assert all(t.values[1] < 0.3 for t in fixed), "fixed-rank baselines really converted"
    assert study.best_trials
    runs = MetricsStore(db).runs(study_name="quickstart")
    assert sorted(runs["trial_number"]) == [t.number for t in trials]
    for t in trials:
        run_id = t.user_attrs["run_id"]
        assert not MetricsStore(db).epochs(run_id).empty

    show = oialr("study", "show", "quickstart", "--storage", db)
    assert show.returncode == 0 and "dense" in show.stdout and "★" in show.stdout
    best = oialr("study", "best", "quickstart", "--storage", db)
    assert best.returncode == 0 and "oialr train --model mlp" in best.stdout
    assert best.stdout.count("oialr train") == len(study.best_trials)
    exported = oialr("study", "export", "quickstart", "--storage", db, "--format", "json")
    rows = json.loads(exported.stdout)
    assert len(rows) == 5 and {"values_0", "values_1", "user_attrs_mode"} <= rows[0].keys()
    out = tmp_path / "trials.csv"
    csv = oialr("study", "export", "quickstart", "--storage", db, "--output", str(out))
    assert csv.returncode == 0 and out.read_text().count("\n") == 6
    listed = oialr("study", "list", "--storage", db)
    assert "quickstart" in listed.stdout and "val_acc, trainable_fraction" in listed.stdout
    # running the command again continues the study instead of starting over
    again = oialr("study", "run", "studies/quickstart.toml", "--storage", db, "--n-trials", "5")
    assert again.returncode == 0 and len(optuna.load_study(study_name="quickstart", storage=db).trials) == 5


@pytest.mark.slow
def test_single_objective_study_prunes(tmp_path):
    spec = TINY.read_text().replace('name = "tiny"', 'name = "pruned"\n')
    spec = spec.replace("epochs = 3", "epochs = 6").replace("n_trials = 6", "n_trials = 10")
    spec += '\n[objective]\nkind = "accuracy"\n\n[pruner]\nname = "median"\n'
    spec = spec.replace('[search.sigma_cutoff]', '[search.lr]\nlow = 1e-6\nhigh = 0.3\nlog = true\n\n[search.sigma_cutoff]')
    spec = spec.replace('name = "random"', 'name = "tpe"')
    db = f"sqlite:///{tmp_path / 'p.db'}"
    done = oialr("study", "run", str(write_spec(tmp_path, spec)), "--storage", db)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = optuna.load_study(study_name="pruned", storage=db).get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.state, t.params) for t in trials]
    runs = MetricsStore(db).runs(study_name="pruned").set_index("trial_number")
    for t in pruned:
        assert runs.loc[t.number, "status"] == "pruned"
        assert len(MetricsStore(db).epochs(int(runs.loc[t.number, "id"]))) < 6


def _running_trial_of(storage_url, study_name, pid):
    try:
        study = optuna.load_study(study_name=study_name, storage=storage_url)
    except KeyError:  # the workers have not created it yet
        return None
    for t in study.get_trials(states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker", "").endswith(f":{pid}") and t.user_attrs.get("run_id") is None:
            return t
    return None


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_on_postgres_survive_a_killed_worker(postgres_server, tmp_path):
    spec = TINY.read_text().replace('name = "tiny"', 'name = "pg-workers"').replace("epochs = 3", "epochs = 25")
    path = write_spec(tmp_path, spec)
    url = postgres_server.url
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "oialr", "study", "run", str(path), "--storage", url,
           "--heartbeat", "1", "--quiet"]  # fmt: skip
    victim = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    survivor = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 120
    while killed is None and time.time() < deadline:
        trial = _running_trial_of(url, "pg-workers", victim.pid)
        started = trial is not None and trial._trial_id in set(MetricsStore(url).runs()["trial_id"])
        if started:  # its metrics run is being written
            os.kill(victim.pid, signal.SIGKILL)  # mid-trial, no chance to clean up
            killed = trial
        time.sleep(0.2)
    assert killed is not None, "the victim never ran a trial"
    victim.wait(timeout=30)
    _, err = survivor.communicate(timeout=400)
    assert survivor.returncode == 0, err[-3000:]

    study = optuna.load_study(study_name="pg-workers", storage=url)
    trials = study.get_trials()
    states = {t.number: t.state for t in trials}
    assert TrialState.RUNNING not in states.values() and TrialState.WAITING not in states.values()
    assert states[killed.number] == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == killed.params
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 6 and len({t.number for t in complete}) == len(complete)
    runs = MetricsStore(url).runs(study_name="pg-workers")
    dead = runs[runs["trial_id"] == killed._trial_id]
    assert (dead["status"] == "failed").all() and "heartbeat" in dead["error"].iloc[0]
    assert (runs["status"] != "running").all()
