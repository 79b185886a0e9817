"""Several workers per GPU: the plan, its memory check, and what a CPU machine says to --gpus."""

import pytest

from oialr.cli import main
from oialr.errors import ConfigError
from oialr.packing import MAX_PER_GPU, plan_workers, trial_bytes

GiB = 2**30


def test_small_trials_fill_a_gpu_up_to_the_cap():
    need = trial_bytes(parameters=400_000, dataset_bytes=200 * 2**20)
    assert (
        plan_workers(["0"], None, free_bytes={"0": 140 * GiB}, need_bytes=need)
        == ["0"] * MAX_PER_GPU
    )
    assert plan_workers(
        ["0", "1"], 3, free_bytes={"0": 80 * GiB, "1": 80 * GiB}, need_bytes=need
    ) == ["0", "1", "0"]


def test_a_big_model_gets_what_the_memory_holds():
    need = trial_bytes(parameters=300_000_000, dataset_bytes=0)  # ~7 GiB with Adam's moments
    assert plan_workers(["0"], None, free_bytes={"0": 20 * GiB}, need_bytes=need) == ["0", "0"]


def test_a_plan_that_does_not_fit_is_refused_with_the_numbers():
    need = trial_bytes(parameters=300_000_000, dataset_bytes=0)
    with pytest.raises(
        ConfigError,
        match=r"8 workers on GPU 0 need about 58.3 GiB, 20.0 GiB is free: use --workers 2",
    ):
        plan_workers(["0"], 8, free_bytes={"0": 20 * GiB}, need_bytes=need)
    with pytest.raises(ConfigError, match="no GPU 3 here"):
        plan_workers(["3"], None, free_bytes={"0": 20 * GiB}, need_bytes=need)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--n-trials", "0"], "--n-trials 0: give at least 1"),
        (["--n-trials", "-3"], "--n-trials -3: give at least 1"),
        (["--workers", "0"], "--workers 0: give at least 1"),
        (["--workers", "-1"], "--workers -1: give at least 1"),
        (["--timeout", "-1"], "--timeout -1.0: give a positive number"),
        (["--timeout", "nan"], "--timeout nan: give a positive number"),
        (["--gpus", "abc"], "--gpus 'abc': give GPU ids"),
        (["--gpus", "0"], "this machine has no CUDA GPU"),
    ],
)
def test_bad_worker_arguments_are_one_line_and_write_nothing(
    argv, message, tmp_path, capsys, monkeypatch
):
    import torch

    if "no CUDA" in message and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "s.toml"
    spec.write_text(
        'name = "s"\n[run]\ndataset = "synthetic"\nepochs = 1\n[search.sigma_cutoff]\nlow = 0.1\nhigh = 0.3\n'
    )
    assert (
        main(["study", "run", str(spec), "--storage", f"sqlite:///{tmp_path / 's.db'}", *argv]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]
