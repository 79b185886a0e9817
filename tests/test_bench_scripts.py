"""The study, concurrency and stability benchmark scripts run end to end and write their JSON.

Smoke runs only (``--quick`` / a short ``--seconds``): exit codes, keys, zero lock errors. No
timing assertions.
"""

from pathlib import Path

import pytest
from helpers import run_benchmark as run_script

from oialr.data import load_dataset
from oialr.errors import DataError

CHROMIUM = Path("/usr/bin/chromium")


def need_fashion_mnist() -> None:
    try:  # read offline; skip where the Debian package is not installed
        load_dataset("fashion-mnist", subset=10)
    except DataError as err:
        pytest.skip(str(err))


@pytest.mark.slow
def test_study_bench_quick(tmp_path):
    need_fashion_mnist()  # the quickstart spec trains on it
    data = run_script("study_bench.py", tmp_path / "study_bench.json", "--quick")
    assert data["benchmark"] == "study_bench" and data["quick"] is True
    assert "torch" in data["machine"]

    q = data["quickstart"]
    for key in ("wall_s", "trials_per_hour", "finished_trials", "epochs_trained",
                "best_val_acc", "dense_val_acc", "min_fraction_within_1pt"):  # fmt: skip
        assert key in q, key
    assert q["finished_trials"] == 5
    assert q["wall_s"] > 0 and q["trials_per_hour"] > 0
    assert 0.0 <= q["best_val_acc"] <= 1.0
    # side by side without the shared warm-up and data cache: the same trials, the same values
    assert q["same_values"] is True and q["unshared"]["finished_trials"] == 5
    assert q["epochs_trained"] < q["unshared"]["epochs_trained"] == q["epochs_recorded"]
    # no cache can share more than every converted run's dense phase
    assert q["epochs_trained_ideal"] <= q["epochs_trained"] and q["work_bound"] >= 1.0

    p = data["pruning"]
    assert p["same_configurations"] is True  # random sampler, same seed
    for pruner in ("median", "none"):
        assert p[pruner]["trial_epochs"] > 0
        assert sum(p[pruner]["states"].values()) >= 5
    assert p["none"]["trial_epochs"] == 5 * 2  # every trial trains every epoch
    assert p["median"]["trial_epochs"] <= p["none"]["trial_epochs"]
    assert "saving_epochs_pct" in p and "saving_wall_pct" in p

    s = data["storage_overhead"]
    assert s["sqlite"]["trials"] >= 1
    for key in ("outside_training_ms", "storage_ms", "storage_pct", "optuna_ms"):
        assert key in s["sqlite"], key
    assert s["sqlite"]["optuna_sessions"] > 0
    assert s["postgresql"]["measured"] is False  # off with --quick


@pytest.mark.slow
def test_loop_overhead_quick(tmp_path):
    need_fashion_mnist()
    data = run_script("loop_overhead.py", tmp_path / "loop.json", "--quick")
    cases = [r["case"] for r in data["results"]]
    assert cases == ["mlp", "lenet5", "lenet5 channels_last"]
    assert all(r["fit_ms"] > 0 and r["plain_ms"] > 0 and r["windows"] >= 2 for r in data["results"])
    assert set(data["channels_last_speedup"]) == {"lenet5"} and "met" in data["goal"]


@pytest.mark.slow
def test_concurrency_short(tmp_path):
    data = run_script(
        "concurrency.py", tmp_path / "concurrency.json", "--seconds", "8", timeout=400
    )
    assert data["benchmark"] == "concurrency"
    assert data["ok"] is True
    assert data["reader_lock_errors"] == 0 and data["worker_lock_lines"] == 0
    assert data["reader_errors"] == []
    assert data["polls"] >= 3
    assert data["poll_ms"]["p50"] > 0
    assert data["rows_seen"]["trials"] > 0
    assert len(data["workers"]) == 2
    for key in ("trial_states", "run_statuses", "rows_written", "trials_claimed_twice"):
        assert key in data["final"], key
    assert data["final"]["rows_written"]["steps"] > 0


@pytest.mark.slow
def test_stability_quick(tmp_path):
    need_fashion_mnist()
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    figure = tmp_path / "stability.png"
    data = run_script(
        "stability.py", tmp_path / "stability.json", "--quick", "--figure", str(figure)
    )
    assert data["benchmark"] == "stability" and data["quick"] is True
    assert set(data["measurement"]) == {"lenet5", "minivit"}
    for model, m in data["measurement"].items():
        assert m["layers"], model
        assert all(0.0 <= v["min"] <= 1.0 + 1e-6 for v in m["layers"].values()), model
        assert m["trainable_fraction"] == 1.0  # never converted: dense
    table = data["comparison"]["lenet5"]
    assert {"dense", "delay 0.25", "stability 0.99", "stability 0.999"} <= set(table)
    for key, row in table.items():
        assert 0.0 <= row["test_acc"] <= 1.0, key
        assert 0.0 < row["trainable_fraction"] <= 1.0, key
    assert isinstance(data["finding"], str) and len(data["finding"]) > 50
    assert figure.is_file() and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
