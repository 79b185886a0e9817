"""The evidence scripts run end to end at toy sizes, so they cannot rot between full runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.slow


def test_compare_smoke(tmp_path):
    out = tmp_path / "compare.json"
    done = subprocess.run([sys.executable, "benchmarks/compare.py", "--smoke", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["results"]["mlp"]
    expected = {
        "dense",
        "fixed-rank 25%",
        "fixed-rank 10%",
        "oialr reference defaults",
        "oialr tuned",
    }
    assert expected < set(rows) and any(name.endswith("(matched)") for name in rows)
    assert rows["dense"]["trainable_fraction"]["mean"] == 1.0
    assert (
        rows["fixed-rank 10%"]["trainable_fraction"]["mean"]
        < rows["fixed-rank 25%"]["trainable_fraction"]["mean"]
    )
    assert all(0 < r["test_acc"]["mean"] <= 100 for r in rows.values())
    assert report["studies"]["mlp"]["trials"] >= 4
    assert "| mlp | oialr tuned |" in done.stdout  # the README's table, rendered from the report


def test_gpu_check_dry_run(tmp_path):
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(tmp_path), "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {
        "machine",
        "minivit_dense",
        "minivit_oialr",
        "step_time",
        "conv_paths",
        "study_time",
        "packing",
    } <= summary.keys()
    assert [r["workers"] for r in summary["packing"]["specs"]["quickstart"]["rows"]] == [1, 2]
    assert summary["minivit_oialr"]["trainable_fraction"] < 1.0
