"""Loss jump right after an OIALR rank update, for the two ``optimizer_state`` policies.

- ``rotate``: at each update Σ's first moments (Adam's ``exp_avg``, SGD's ``momentum_buffer``) are
  rotated into the new bases (``Pᵀ m Q``), second moments with the squared rotations, then sliced;
- ``reset``: Σ's optimizer state is dropped and restarts (moments and Adam's step counter).

Each policy trains the same MLP (``oialr.models.build_model("mlp")``: 784-512-256-10) on a
Fashion-MNIST subset (read offline from /usr/share/datasets/fashion-mnist, no augmentation) with
AdamW and with SGD + momentum, for a few seeds. A seed fixes the initial weights and the batch
order, so the two policies are identical up to the first update. For every update event the jump
is the mean training (mini-batch) loss over the 5 steps after the update minus the mean over the 5
steps up to it; jumps are averaged over events, then over seeds (± standard error over seeds).
``drift`` is the same statistic at the steps halfway between updates: what the loss does anyway
with no update. Also reported: final test accuracy on the official test set, final rank fraction.

    python benchmarks/optimizer_state.py            # full run, about a minute on a 2-core CPU
    python benchmarks/optimizer_state.py --quick    # tiny run, for the smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import RESULTS_DIR, machine_info, resolve_device, write_json
from rich.console import Console
from rich.table import Table
from torch import nn

import oialr
from oialr.data import Dataset, load_dataset
from oialr.models import build_model

POLICIES = ("rotate", "reset")
OPTIMIZERS = {
    "adamw": "AdamW(lr=1e-3, weight_decay=0.01)",
    "sgd": "SGD(lr=0.05, momentum=0.9, weight_decay=5e-4)",
}
WINDOW = 5  # steps averaged on each side of an update
# Schedules in optimizer steps. Full: updates at 300, 400, ..., 800 (the last has no "after").
PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(subset=1500, batch=64, steps=60, delay=20, update_freq=15, widths=(128, 64)),
    "full": dict(subset=20000, batch=128, steps=800, delay=200, update_freq=100, widths=(512, 256)),
}


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def jumps_at(losses: list[float], last_before: list[int]) -> list[float]:
    """mean(loss[i+1 : i+1+W]) - mean(loss[i+1-W : i+1]) for each i with full windows."""
    out = []
    for i in last_before:
        if i + 1 - WINDOW >= 0 and i + 1 + WINDOW <= len(losses):
            after = statistics.fmean(losses[i + 1 : i + 1 + WINDOW])
            before = statistics.fmean(losses[i + 1 - WINDOW : i + 1])
            out.append(after - before)
    return out


@torch.no_grad()
def test_accuracy(model: nn.Module, ds: Dataset, batch: int = 2000) -> float:
    model.eval()
    x, y = ds.split("test")
    correct = sum(
        int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
        for i in range(0, len(y), batch)
    )
    model.train()
    return correct / len(y)


def train_one(
    ds: Dataset, opt_name: str, policy: str, seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model("mlp", ds.input_shape, ds.num_classes, widths=args.widths).to(ds.device)
    opt = make_optimizer(opt_name, model)
    ctl = oialr.OIALR(
        model,
        opt,
        delay=args.delay,
        update_freq=args.update_freq,
        sigma_cutoff=args.sigma_cutoff,
        optimizer_state=policy,
    )
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    updates: list[int] = []  # index in `losses` of the last step before each update
    while len(losses) < args.steps:
        for xb, yb in ds.batches("train", args.batch, shuffle=True, generator=gen, drop_last=True):
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if ctl.step() == "update":
                updates.append(len(losses) - 1)
            if len(losses) == args.steps:
                break
    jumps = jumps_at(losses, updates)
    middles = [i + args.update_freq // 2 for i in updates]
    drift = jumps_at(losses, middles)
    return {
        "seed": seed,
        "update_steps": [i + 1 for i in updates],
        "jumps": jumps,
        "mean_jump": statistics.fmean(jumps) if jumps else float("nan"),
        "drift": drift,
        "mean_drift": statistics.fmean(drift) if drift else float("nan"),
        "test_accuracy": test_accuracy(model, ds),
        "final_train_loss": statistics.fmean(losses[-WINDOW:]),
        "ranks": ctl.ranks(),
        "trainable_fraction": ctl.trainable_fraction(),
        "wall_s": time.perf_counter() - t0,
    }


def mean_sem(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return mean, sem


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    jump, jump_sem = mean_sem([r["mean_jump"] for r in runs])
    drift, drift_sem = mean_sem([r["mean_drift"] for r in runs])
    acc, acc_sem = mean_sem([r["test_accuracy"] for r in runs])
    return {
        "mean_jump": jump,
        "mean_jump_sem": jump_sem,
        "mean_drift": drift,
        "mean_drift_sem": drift_sem,
        "test_accuracy": acc,
        "test_accuracy_sem": acc_sem,
        "trainable_fraction": statistics.fmean(r["trainable_fraction"] for r in runs),
        "update_events": sum(len(r["jumps"]) for r in runs),
    }


def pm(mean: float, sem: float, fmt: str = "+.4f") -> str:
    return f"{mean:{fmt}}" + ("" if sem != sem else f" ± {sem:{fmt.lstrip('+')}}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "optimizer_state.json")
    parser.add_argument("--seeds", type=int, default=None, help="default 5 (quick: 1)")
    args = parser.parse_args(argv)
    vars(args).update(PRESETS["quick" if args.quick else "full"])
    args.sigma_cutoff = 0.1
    args.seeds = args.seeds or (1 if args.quick else 5)
    device = resolve_device(args.device)
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)

    t0 = time.perf_counter()
    ds = load_dataset("fashion-mnist", subset=args.subset, val_fraction=0.0, device=device)
    ds = dataclasses.replace(ds, augment="none")
    results: dict[str, dict[str, Any]] = {}
    for opt_name in OPTIMIZERS:
        for policy in POLICIES:
            runs = [train_one(ds, opt_name, policy, seed, args) for seed in range(args.seeds)]
            results[f"{opt_name}/{policy}"] = {
                "optimizer": opt_name,
                "policy": policy,
                **summarise(runs),
                "runs": runs,
            }
            console.log(f"{opt_name}/{policy}: {len(runs)} seed(s) done")

    # rotate - reset, paired by seed (same init and batch order)
    paired = {}
    for opt_name in OPTIMIZERS:
        rot, res = results[f"{opt_name}/rotate"]["runs"], results[f"{opt_name}/reset"]["runs"]
        diff, diff_sem = mean_sem([a["mean_jump"] - b["mean_jump"] for a, b in zip(rot, res)])
        paired[opt_name] = {"rotate_minus_reset_jump": diff, "sem": diff_sem}

    table = Table(title="Loss jump after an OIALR update (mean over events, ± s.e. over seeds)")
    for col in (
        "optimizer",
        "policy",
        "jump",
        "drift (no update)",
        "rotate − reset",
        "test acc",
        "trainable",
    ):
        table.add_column(col, justify="left" if col in ("optimizer", "policy") else "right")
    for r in results.values():
        p = paired[r["optimizer"]]
        table.add_row(
            r["optimizer"],
            r["policy"],
            pm(r["mean_jump"], r["mean_jump_sem"]),
            pm(r["mean_drift"], r["mean_drift_sem"]),
            pm(p["rotate_minus_reset_jump"], p["sem"]) if r["policy"] == "rotate" else "",
            pm(r["test_accuracy"], r["test_accuracy_sem"], ".4f"),
            f"{r['trainable_fraction']:.3f}",
        )
    console.print(table)

    payload = {
        "benchmark": "optimizer_state",
        "machine": machine_info(device),
        "settings": {
            "quick": args.quick,
            "dataset": "fashion-mnist",
            "subset": args.subset,
            "model": f"oialr.models.build_model('mlp', widths={args.widths})",
            "batch": args.batch,
            "steps": args.steps,
            "delay": args.delay,
            "update_freq": args.update_freq,
            "sigma_cutoff": args.sigma_cutoff,
            "window": WINDOW,
            "seeds": args.seeds,
            "optimizers": OPTIMIZERS,
        },
        "results": results,
        "paired": paired,
        "wall_s": time.perf_counter() - t0,
    }
    write_json(args.out, payload)
    console.print(f"wrote {args.out} ({payload['wall_s']:.0f} s)")
    return payload


if __name__ == "__main__":
    main()
