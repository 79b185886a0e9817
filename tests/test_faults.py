"""Faults a multi-day search meets: killed workers, a restarted database, signals, failing trials.

Each test starts real processes (the `oialr` CLI) against real storage (SQLite, or a PostgreSQL
server started on 127.0.0.1) and checks that nothing is lost and nothing is left RUNNING.
"""

import re
import signal
import time
from pathlib import Path

import optuna
import pytest
from helpers import cli_process as start
from helpers import read
from optuna.trial import TrialState

from oialr.metrics_store import MetricsStore

TINY = (Path(__file__).parent / "specs" / "tiny.toml").read_text()
pytestmark = pytest.mark.slow


def spec_file(tmp_path, name, epochs=25, extra=""):
    path = tmp_path / f"{name}.toml"
    path.write_text(
        TINY.replace('name = "tiny"', f'name = "{name}"').replace(
            "epochs = 3", f"epochs = {epochs}"
        )
        + extra
    )
    return path


def storage_url(kind, request, tmp_path):
    if kind == "postgres":
        return request.getfixturevalue("postgres_server").url
    return f"sqlite:///{tmp_path / 'faults.db'}"


def trials_of(url, name):
    try:
        return optuna.load_study(study_name=name, storage=url).get_trials()
    except KeyError:  # not created yet
        return []


def wait_for_running_trial(url, name, pid=None, timeout=120):
    """A RUNNING trial (of worker ``pid``) whose metrics run has started writing."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        running = [t for t in trials_of(url, name) if t.state == TrialState.RUNNING]
        if pid is not None:
            running = [t for t in running if t.user_attrs.get("worker", "").endswith(f":{pid}")]
        started = set(read(MetricsStore(url)).runs()["trial_id"])
        for t in running:
            if t._trial_id in started:
                return t
        time.sleep(0.2)
    raise AssertionError(f"no running trial in {name} after {timeout} s")


def assert_settled(url, name, n_complete):
    trials = trials_of(url, name)
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states, states
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= n_complete
    runs = read(MetricsStore(url)).runs(study_name=name)
    assert (runs["status"] != "running").all()
    for t in complete:  # every finished trial's metrics are intact
        run = runs[runs["trial_id"] == t._trial_id].iloc[-1]
        assert run["status"] == "complete"
        assert (
            len(read(MetricsStore(url)).metrics("epochs", int(run["id"])))
            == run["config"]["epochs"]
        )
    return trials


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_killed_worker_trial_is_failed_retried_and_completed(kind, request, tmp_path):
    url, name = storage_url(kind, request, tmp_path), f"kill-{kind}"
    spec = spec_file(tmp_path, name)
    victim = start("study", "run", str(spec), "--storage", url, "--heartbeat", "1", "--quiet")
    time.sleep(1.0)
    survivor = start("study", "run", str(spec), "--storage", url, "--heartbeat", "1", "--quiet")
    killed = wait_for_running_trial(url, name, pid=victim.pid)
    victim.send_signal(signal.SIGKILL)  # mid-trial: no chance to clean up
    victim.wait(timeout=30)
    _, err = survivor.communicate(timeout=400)
    assert survivor.returncode == 0, err[-3000:]

    trials = assert_settled(url, name, n_complete=6)
    assert next(t for t in trials if t.number == killed.number).state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == killed.params
    runs = read(MetricsStore(url)).runs(study_name=name)
    dead = runs[runs["trial_id"] == killed._trial_id]
    # failed by whichever came first: the survivor seeing the pid gone, or the heartbeat
    assert (dead["status"] == "failed").all()
    assert re.search(r"is gone|heartbeat", dead["error"].iloc[0]), dead["error"].iloc[0]


@pytest.mark.postgres
def test_postgres_restart_during_a_study(postgres_server, tmp_path):
    url, name = postgres_server.url, "restart"
    worker = start("study", "run", str(spec_file(tmp_path, name)), "--storage", url,
                   "--heartbeat", "1", "--quiet")  # fmt: skip
    wait_for_running_trial(url, name)
    postgres_server.stop_server()
    time.sleep(3.0)  # down for a while: flushes and heartbeats fail and retry
    postgres_server.restart_server()
    _, err = worker.communicate(timeout=400)
    assert worker.returncode == 0, err[-3000:]
    assert_settled(url, name, n_complete=6)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_study_run_records_the_trial_and_rerun_continues(sig, tmp_path):
    url, name = f"sqlite:///{tmp_path / 's.db'}", f"signal-{sig.name.lower()}"
    spec = spec_file(tmp_path, name, epochs=80)  # long trials: the signal lands mid-trial
    worker = start("study", "run", str(spec), "--storage", url, "--quiet")
    stopped = wait_for_running_trial(url, name)
    worker.send_signal(sig)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 130 and "run the same command again" in err, err[-2000:]
    trial = next(t for t in trials_of(url, name) if t.number == stopped.number)
    assert trial.state == TrialState.FAIL and sig.name in trial.user_attrs["fail_reason"]
    run = (
        read(MetricsStore(url)).runs(study_name=name).set_index("trial_number").loc[stopped.number]
    )
    assert run["status"] == "failed" and sig.name in run["error"]
    again = start("study", "run", str(spec), "--storage", url, "--quiet", "--n-trials", "3")
    _, err = again.communicate(timeout=400)
    assert again.returncode == 0, err[-2000:]
    assert_settled(url, name, n_complete=3)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_train_keeps_the_checkpoint_and_resume_finishes(sig, tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    args = ["train", "--dataset", "synthetic", "--epochs", "40", "--batch-size", "32", "--delay", "100",
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--storage", url, "--quiet"]  # fmt: skip
    run = start(*args)
    checkpoint = tmp_path / "ckpt" / "checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    run.send_signal(sig)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err[-2000:]
    first = read(MetricsStore(url)).runs().iloc[0]
    assert first["status"] == "failed" and sig.name in first["error"]
    resumed = start(*args, "--resume", "--json")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert '"steps": ' + str(40 * (1843 // 32)) in out.replace("\n", "").replace("  ", " ")


def test_failing_trials_are_recorded_and_the_study_goes_on(tmp_path):
    # valid options, so the spec passes: but at lr 1e9 training diverges, which only a run shows
    extra = "\n[search.lr]\nchoices = [1e9, 1e-3]\n"
    spec = spec_file(tmp_path, "failing", epochs=2, extra=extra)
    url = f"sqlite:///{tmp_path / 'f.db'}"
    worker = start("study", "run", str(spec), "--storage", url, "--quiet", "--n-trials", "6")
    _, err = worker.communicate(timeout=400)
    assert worker.returncode == 0, err[-2000:]
    trials = trials_of(url, "failing")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all("TrainingDiverged" in t.user_attrs["fail_reason"] for t in failed)
    assert all(t.params["lr"] == 1e9 for t in failed)
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 6


def test_kill_9_then_rerun_at_once_leaves_no_running_trial(tmp_path):
    url, name = f"sqlite:///{tmp_path / 'k.db'}", "kill-rerun"
    spec = spec_file(tmp_path, name, epochs=40)
    args = ("study", "run", str(spec), "--storage", url, "--quiet", "--n-trials", "3")
    victim = start(*args)
    killed = wait_for_running_trial(url, name, pid=victim.pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    again = start(*args)  # at once: long before any heartbeat grace period
    _, err = again.communicate(timeout=400)
    assert again.returncode == 0, err[-2000:]
    trials = assert_settled(url, name, n_complete=3)
    dead = next(t for t in trials if t.number == killed.number)
    assert dead.state == TrialState.FAIL and "is gone" in dead.user_attrs["fail_reason"]


@pytest.mark.postgres
def test_postgres_gone_for_good_is_one_line_and_a_restart_and_rerun_completes(
    postgres_server, tmp_path
):
    url, name = postgres_server.url, "gone"
    spec = spec_file(tmp_path, name, epochs=10)
    args = ("study", "run", str(spec), "--storage", url, "--quiet", "--n-trials", "3")
    worker = start(*args)
    wait_for_running_trial(url, name)
    postgres_server.stop_server()
    _, err = worker.communicate(timeout=300)
    lines = err.strip().splitlines()
    assert worker.returncode == 2 and "Traceback" not in err, err[-3000:]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    assert "is unreachable" in errors[0] and "rerun the same command" in errors[0]
    postgres_server.restart_server()
    again = start(*args)
    _, err = again.communicate(timeout=400)
    assert again.returncode == 0, err[-3000:]
    assert_settled(url, name, n_complete=3)


@pytest.mark.parametrize("round_", range(3))
def test_two_workers_with_a_budget_of_3_finish_exactly_3(round_, tmp_path):
    url, name = f"sqlite:///{tmp_path / 'two.db'}", f"two-{round_}"
    spec = spec_file(tmp_path, name, epochs=2)
    args = ("study", "run", str(spec), "--storage", url, "--quiet", "--n-trials", "3")
    workers = [start(*args), start(*args)]  # together, on one file
    for worker in workers:
        _, err = worker.communicate(timeout=400)
        assert worker.returncode == 0, err[-2000:]
    trials = trials_of(url, name)
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 3
    assert {t.user_attrs["mode"] for t in trials} == {"dense", "fixed-rank", "oialr"}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_baseline_stopped_mid_trial_is_owed_and_run_again(sig, tmp_path):
    url, name = f"sqlite:///{tmp_path / 'b.db'}", f"baseline-{sig.name.lower()}"
    spec = spec_file(tmp_path, name, epochs=40)
    args = ("study", "run", str(spec), "--storage", url, "--quiet", "--n-trials", "3")
    worker = start(*args)
    stopped = wait_for_running_trial(url, name)
    assert stopped.user_attrs["mode"] == "dense"  # the dense baseline runs first
    worker.send_signal(sig)
    worker.communicate(timeout=60)
    again = start(*args)
    _, err = again.communicate(timeout=400)
    assert again.returncode == 0, err[-2000:]
    trials = assert_settled(url, name, n_complete=3)
    dense = [t for t in trials if t.user_attrs["mode"] == "dense"]
    assert [t.state for t in dense] == [TrialState.FAIL, TrialState.COMPLETE], dense


# From the first import to well into the first trial (python, torch, optuna, the study, a run).
SIGTERM_DELAYS = [0.05, 0.3, 0.6, 1.0, 1.5, 2.0, 3.0, 4.5, 6.0]


@pytest.mark.parametrize("delay", SIGTERM_DELAYS)
def test_sigterm_anywhere_in_start_up_or_the_first_trial_stops_the_worker(delay, tmp_path):
    url, name = f"sqlite:///{tmp_path / 't.db'}", "sigterm"
    spec = spec_file(tmp_path, name, epochs=80)
    worker = start("study", "run", str(spec), "--storage", url, "--quiet")
    time.sleep(delay)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=60)  # never lost: it stops, not after the budget
    # before our handler is installed Python's default ends the process (-15); after it, 130
    assert worker.returncode in (130, -signal.SIGTERM), (worker.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    trials = trials_of(url, name)
    assert all(t.state != TrialState.RUNNING for t in trials), [t.state for t in trials]
    assert not any(t.state == TrialState.COMPLETE for t in trials)  # it ran no further
