"""The shared dense warm-up and the per-process data cache: the same trial values with and
without them, snapshots shared by concurrent workers, and what must not be shared."""

from __future__ import annotations

import optuna
import pytest
import torch
from helpers import cli
from optuna.trial import TrialState

from oialr.run_config import RunConfig
from oialr.spec import load_spec
from oialr.train import fit, load_data
from oialr.warmup import WarmupCache, trajectory_key

SPEC = """
name = "warm"
[run]
model = "mlp"
model_options = {{ widths = [64, 64] }}
dataset = "synthetic"
epochs = 3
batch_size = 64
device = "cpu"
[search.delay]
low = 0.2
high = 0.7
unit = "fraction"
[search.update_freq]
low = 4
high = 12
unit = "steps"
[search.sigma_cutoff]
low = 0.1
high = 0.5
[sampler]
name = "random"
seed = 5
[budget]
n_trials = {n}
[baselines]
dense = true
fixed_rank = [0.25]
"""
BASE = dict(
    model="mlp",
    model_options={"widths": [64, 64]},
    dataset="synthetic",
    epochs=3,
    batch_size=64,
    device="cpu",
)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI's workers run here (OMP_NUM_THREADS=1)
    yield
    torch.set_num_threads(threads)


def values(url):
    study = optuna.load_study(study_name="warm", storage=url)
    return {t.number: (t.params, t.values) for t in study.trials if t.state == TrialState.COMPLETE}


def trained(url):
    study = optuna.load_study(study_name="warm", storage=url)
    return sum(t.user_attrs["steps_trained"] for t in study.trials)


@pytest.mark.slow
def test_a_study_gives_the_same_values_with_and_without_the_shared_warm_up(tmp_path):
    spec = tmp_path / "warm.toml"
    spec.write_text(SPEC.format(n=7))
    plain, warm = f"sqlite:///{tmp_path / 'plain.db'}", f"sqlite:///{tmp_path / 'warm.db'}"
    assert (
        cli(
            "study", "run", str(spec), "--storage", plain, "--quiet", "--no-warmup-cache"
        ).returncode
        == 0
    )
    cache = tmp_path / "cache"
    done = cli(
        "study", "run", str(spec), "--storage", warm, "--quiet", "--warmup-cache", str(cache)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(values(plain)) == 7 and values(warm) == values(plain), "bit for bit"
    snapshots = list(cache.glob("*/step-*.pt"))
    assert len(snapshots) >= 6 and all((p.parent / "key.json").is_file() for p in snapshots)
    assert trained(warm) < trained(plain) == 7 * 3 * 28, "the OIALR trials skipped their warm-up"


@pytest.mark.slow
def test_two_workers_share_one_cache(tmp_path):
    path = tmp_path / "warm.toml"
    path.write_text(SPEC.format(n=6))
    url, cache = f"sqlite:///{tmp_path / 'two.db'}", tmp_path / "cache"
    done = cli(
        "study",
        "run",
        str(path),
        "--storage",
        url,
        "--quiet",
        "--workers",
        "2",
        "--warmup-cache",
        str(cache),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    spec = load_spec(path)
    study = optuna.load_study(study_name="warm", storage=url)
    trials = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(trials) == 6 and list(cache.glob("*/step-*.pt"))  # the budget, exactly
    for trial in trials:  # each as it would have been, trained alone from step 0
        mode = trial.user_attrs["mode"]
        cfg = spec.run_config(trial.params, mode, fixed_rank=trial.user_attrs.get("rank_fraction"))
        alone = fit(cfg)
        assert trial.values == [alone.final_val_acc, alone.trainable_fraction], trial.number


def test_a_run_continues_from_the_latest_snapshot_before_its_conversion(tmp_path):
    cache = WarmupCache(tmp_path)
    dense = fit(RunConfig.build(**BASE, mode="dense"), warmup=cache)
    cfg = RunConfig.build(**BASE, oialr={"delay": 50, "update_freq": 7, "sigma_cutoff": 0.3})
    key = trajectory_key(cfg, torch.device("cpu"))
    assert key == trajectory_key(RunConfig.build(**BASE, mode="dense"), torch.device("cpu"))
    # eighths of an epoch of 28 steps: a snapshot every 3 steps, the latest before 50 at 48
    assert cache.latest(key, 50).name == "step-00000048.pt"
    warm, cold = fit(cfg, warmup=cache), fit(cfg)
    assert (warm.final_val_acc, warm.test_loss, warm.ranks) == (
        cold.final_val_acc,
        cold.test_loss,
        cold.ranks,
    )
    assert warm.conversion_step == 50 and dense.steps == 84
    assert (warm.warm_start_step, cold.warm_start_step) == (48, 0)


def test_a_run_starts_from_an_earlier_runs_last_dense_step(tmp_path):
    cache = WarmupCache(tmp_path)
    options = {"update_freq": 7, "sigma_cutoff": 0.3}
    first = RunConfig.build(**BASE, oialr={"delay": 45, **options})
    fit(first, warmup=cache)  # the grid is every 3 steps: 42, then its last dense step, 44
    later = RunConfig.build(**BASE, oialr={"delay": 47, **options})
    warm, cold = fit(later, warmup=cache), fit(later)
    assert warm.warm_start_step == 44
    assert (warm.final_val_acc, warm.test_loss, warm.ranks) == (
        cold.final_val_acc,
        cold.test_loss,
        cold.ranks,
    )


def test_what_changes_the_trajectory_changes_the_key():
    cpu = torch.device("cpu")
    base = trajectory_key(RunConfig.build(**BASE), cpu)
    same = RunConfig.build(**BASE, name="x", log_every=3, oialr={"delay": 5, "sigma_cutoff": 0.7})
    assert trajectory_key(same, cpu) == base
    for change in (
        {"lr": 2e-3},
        {"seed": 1},
        {"batch_size": 32},
        {"memory_format": "channels_last"},
    ):
        assert trajectory_key(RunConfig.build(**{**BASE, **change}), cpu) != base, change


def test_a_new_oialr_training_loop_changes_the_key(monkeypatch):
    import inspect

    from oialr import train

    cpu = torch.device("cpu")
    base = trajectory_key(RunConfig.build(**BASE), cpu)
    source = inspect.getsource
    edited = lambda obj: source(obj) + ("# foreach" if obj is train else "")  # noqa: E731
    monkeypatch.setattr(inspect, "getsource", edited)  # as if a new oialr were installed
    assert trajectory_key(RunConfig.build(**BASE), cpu) != base


def test_stability_switch_runs_start_from_scratch(tmp_path, monkeypatch):
    cache = WarmupCache(tmp_path)
    fit(RunConfig.build(**BASE, mode="dense"), warmup=cache)
    monkeypatch.setattr(
        WarmupCache, "load", lambda *_: pytest.fail("a stability run read a snapshot")
    )
    options = {"delay": 60, "update_freq": 7, "switch": "stability", "stability_every": 5}
    cfg = RunConfig.build(**BASE, oialr=options)
    warm, cold = fit(cfg, warmup=cache), fit(cfg)  # when it converts depends on its own readings
    assert (warm.final_val_acc, warm.ranks, warm.conversion_step) == (
        cold.final_val_acc,
        cold.ranks,
        cold.conversion_step,
    )


def test_a_damaged_snapshot_is_ignored(tmp_path, caplog):
    cache = WarmupCache(tmp_path)
    fit(RunConfig.build(**BASE, mode="dense"), warmup=cache)
    for path in tmp_path.glob("*/step-*.pt"):
        path.write_bytes(b"torn")
    cfg = RunConfig.build(**BASE, oialr={"delay": 50, "update_freq": 7})
    assert fit(cfg, warmup=cache).final_val_acc == fit(cfg).final_val_acc
    assert "unreadable" in caplog.text


def test_the_dataset_is_loaded_once_per_process():
    a = load_data(RunConfig.build(**BASE, lr=0.1))
    assert load_data(RunConfig.build(**{**BASE, "epochs": 7}, mode="dense")) is a
    assert load_data(RunConfig.build(**BASE, seed=3)) is not a
