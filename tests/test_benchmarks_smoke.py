"""The benchmark scripts run end to end (``--quick``) and write the JSON they promise.

No timing assertions: only exit codes, keys and that measured times are positive.
"""

from pathlib import Path

import pytest
from helpers import run_benchmark

from oialr.data import load_dataset
from oialr.errors import DataError


def run_script(name: str, out: Path, *extra: str) -> dict:
    return run_benchmark(name, out, "--quick", *extra)


@pytest.mark.slow
def test_step_time_quick(tmp_path):
    data = run_script("step_time.py", tmp_path / "step_time.json")
    assert data["benchmark"] == "step_time"
    for key in ("torch", "cpu", "threads", "device"):
        assert key in data["machine"]
    assert data["machine"]["threads"] >= 1
    rows = data["results"]
    assert {r["model"] for r in rows} == {"mlp", "vit"}
    assert sorted({r["rank_fraction"] for r in rows}) == [0.1, 0.25, 0.5]
    for r in rows:
        for key in ("dense_ms", "lowrank_ms", "materialised_ms", "update_ms"):
            assert r[key] > 0, (r["model"], r["rank_fraction"], key)
        for key in ("ratio", "materialised_ratio", "update_fraction"):
            assert r[key] > 0, (r["model"], r["rank_fraction"], key)
        assert r["ranks"] and all(rank >= 1 for rank in r["ranks"].values())
    assert data["goal"]["model"] == "mlp" and "met" in data["goal"]


@pytest.mark.slow
def test_optimizer_state_quick(tmp_path):
    try:  # the script reads Fashion-MNIST offline; skip where it is not installed
        load_dataset("fashion-mnist", subset=10)
    except DataError as err:
        pytest.skip(str(err))
    data = run_script("optimizer_state.py", tmp_path / "optimizer_state.json")
    assert data["benchmark"] == "optimizer_state"
    assert "torch" in data["machine"]
    results = data["results"]
    assert set(results) == {"adamw/rotate", "adamw/reset", "sgd/rotate", "sgd/reset"}
    for key, r in results.items():
        assert r["update_events"] > 0, key
        assert r["mean_jump"] == r["mean_jump"], f"{key}: jump is NaN"
        assert 0.0 <= r["test_accuracy"] <= 1.0
        for run in r["runs"]:
            assert run["update_steps"], key
    assert set(data["paired"]) == {"adamw", "sgd"}


@pytest.mark.slow
def test_conv_paths_quick(tmp_path):
    data = run_script("conv_paths.py", tmp_path / "conv_paths.json")
    assert data["benchmark"] == "conv_paths" and data["cases"] == len(data["convs"]) == 4
    assert {c["layout"] for c in data["convs"]} == {"contiguous", "channels_last"}
    for c in data["convs"]:
        assert c["dense_ms"] > 0 and c["factored"] > 0 and c["materialised"] > 0
        assert c["auto"] == "materialised"  # LeNet-5's convs, on the CPU
    (lenet,) = data["lenet5"]
    assert lenet["auto"] > 0 and lenet["factored"] > 0 and lenet["materialised"] > 0
