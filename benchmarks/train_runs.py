"""`oialr train` on Fashion-MNIST, dense vs OIALR, and what recording a run costs.

1. Runs the README's commands (``oialr train --model mlp --dataset fashion-mnist --epochs 5``,
   and ``--model lenet5 --epochs 10``) in both modes and keeps test accuracy, trainable fraction
   and wall time.
2. Measures logging overhead: the same short MLP run with no recorder and with the metrics store
   (SQLite) at the default ``log_every=10`` and at ``log_every=1``, interleaved, median step time.

    python benchmarks/train_runs.py                  # everything (~15 min on 2 cores)
    python benchmarks/train_runs.py --only logging   # just the overhead
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from oialr.metrics_store import MetricsStore
from oialr.recorders import Recorder, StoreRecorder
from oialr.run_config import RunConfig
from oialr.train import fit

ROOT = Path(__file__).resolve().parent.parent
RUNS = {"mlp": 5, "lenet5": 10}  # model → epochs, as in the README


def train_runs(models: list[str]) -> dict:
    out = {}
    for model in models:
        for mode in ("dense", "oialr"):
            cmd = ["oialr", "train", "--model", model, "--dataset", "fashion-mnist",
                   "--epochs", str(RUNS[model]), "--mode", mode]  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                done = subprocess.run(
                    [sys.executable, "-m", "oialr", *cmd[1:], "--json", "--quiet", "--no-store",
                     "--checkpoint-dir", tmp],
                    cwd=ROOT, capture_output=True, text=True, check=True,
                )  # fmt: skip
            result = json.loads(done.stdout)
            out[f"{model} {mode}"] = {"command": " ".join(cmd), **result}
            print(f"{model:7s} {mode:6s} test acc {result['test_acc']:.4f} trainable "
                  f"{result['trainable_fraction']:.3f} wall {result['wall_time']:.0f} s", flush=True)  # fmt: skip
    return out


class StepTimes(Recorder):
    """Collects the step times fit reports (its own timer, over each logging window)."""

    def __init__(self, inner: Recorder | None = None):
        self.inner, self.times = inner, []

    def start(self, config):
        if self.inner:
            self.inner.start(config)
            self.run_id = self.inner.run_id

    def step(self, step, loss, lr, step_time):
        self.times.append(step_time)
        if self.inner:
            self.inner.step(step, loss, lr, step_time)

    def epoch(self, metrics):
        if self.inner:
            self.inner.epoch(metrics)

    def layers(self, records):
        if self.inner:
            self.inner.layers(records)

    def finish(self, status, result, error):
        if self.inner:
            self.inner.finish(status, result, error)


def logging_overhead(repeats: int) -> dict:
    """Median ms per step without recording, and with the store at log_every 10 and 1."""
    base = dict(model="mlp", dataset="fashion-mnist", subset=10000, epochs=1, batch_size=128,
                oialr={"delay": 20, "update_freq": 20}, device="cpu")  # fmt: skip
    times: dict[str, list[float]] = {"none": [], "store log_every=10": [], "store log_every=1": []}
    with tempfile.TemporaryDirectory() as tmp, MetricsStore(f"sqlite:///{tmp}/log.db") as store:
        for _ in range(repeats):  # interleaved, so drift hits every variant alike
            for name in times:
                every = 1 if name.endswith("=1") else 10
                # fit's timer spans log_every steps; a window of 10 is measured in both cases by
                # timing whole runs instead when every=1 would otherwise time single steps
                cfg = RunConfig.build(**base, log_every=every)
                rec = StepTimes(None if name == "none" else StoreRecorder(store))
                started = time.perf_counter()
                result = fit(cfg, rec)
                times[name].append((time.perf_counter() - started) / result.steps * 1e3)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {
        "ms_per_step": medians,
        "overhead_percent": {
            k: 100 * (v / medians["none"] - 1) for k, v in medians.items() if k != "none"
        },
        "repeats": repeats,
        "note": "whole-run time per step (data loading included, identical in every variant)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["runs", "logging"])
    parser.add_argument("--models", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/train_runs.json")
    args = parser.parse_args()
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.only in (None, "logging"):
        report["logging"] = logging_overhead(args.repeats)
        print(json.dumps(report["logging"], indent=1))
    if args.only in (None, "runs"):
        report["runs"] = {**report.get("runs", {}), **train_runs(args.models)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
