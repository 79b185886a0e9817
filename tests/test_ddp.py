"""DDP under torchrun (gloo, CPU): every rank ends with identical factors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import free_port

HERE = Path(__file__).parent


@pytest.mark.slow
def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(HERE / "ddp_worker.py"), str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["rewraps"] == 1, "DDP is rebuilt once, at conversion, never at an update"
    assert r0["history"] > len(r0["ranks"]), "updates happened"
    assert r0["ranks"] == r1["ranks"] and min(r0["ranks"].values()) < 32
    assert r0["state"].keys() == r1["state"].keys()
    assert any(k.endswith(".sigma") for k in r0["state"])
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key
