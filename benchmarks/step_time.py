"""Training-step time of OIALR's low-rank phase against the dense model.

One step = forward + cross-entropy + backward + AdamW step + ``zero_grad`` + ``ctl.step()``, on a
fixed random batch (no data loading). For each model it times, side by side in one run:

- ``dense``: the model without OIALR;
- ``low-rank``: OIALR with ``fixed_rank`` = 50 %, 25 %, 10 % of full rank (``delay=0`` converts at
  once, default ``factored="auto"``); the head stays dense (``keep_last``);
- ``materialised``: the same ranks with ``factored=False``, which rebuilds ``U Σ Vᵀ`` every step
  and runs the dense op (what the reference implementation does);
- ``update``: one OIALR rank update of every layer (SVD of each Σ, basis rotation, optimizer state
  rotation), timed through the controller's ``_run_updates`` with ``sigma_cutoff=0`` so the rank
  stays put, as a fraction of one low-rank training step.

Every configuration is built and warmed up first; then ``--repeats`` rounds each time a window of
a few steps (MLP 5, ViT 2) of every configuration in turn (the order rotates per round), so load drift hits
all of them alike. Times are medians over the rounds; ratios are medians of the per-round ratios to
the dense window of the same round. ``ratio@min`` (best low-rank window over best dense window) is
printed too: on a CPU shared with other jobs, the best window is the least disturbed estimate.

Models: an MLP 784 → 1024 ×4 → 10 (batch 256) and a small ViT (``oialr.models.minivit``: patch-4
conv embedding, 4 pre-norm blocks on ``nn.MultiheadAttention(batch_first=True)`` + GELU MLP,
dim 192, 32×32×3 input, batch 32).

    python benchmarks/step_time.py                 # full run, a few minutes on a 2-core CPU
    python benchmarks/step_time.py --quick         # tiny sizes, for the smoke test
    python benchmarks/step_time.py --device cuda --out /tmp/step_time_gpu.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import RESULTS_DIR, machine_info, median, resolve_device, sync, write_json
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

import oialr
from oialr.lowrank import LowRankConv, LowRankLayer
from oialr.models import build_model

RANKS = (0.5, 0.25, 0.1)
GOAL = ("mlp", 0.1, 0.5)  # the target: low-rank/dense <= 0.5 at 10 % rank for the MLP


@dataclass
class ModelSpec:
    name: str
    description: str
    input_shape: tuple[int, ...]
    batch: int
    steps: int  # steps per timed window
    build: Callable[[], nn.Module]


def model_specs(quick: bool) -> list[ModelSpec]:
    def mlp(width: int, depth: int) -> nn.Module:
        layers: list[nn.Module] = []
        fan_in = 784
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), nn.ReLU()]
            fan_in = width
        return nn.Sequential(*layers, nn.Linear(fan_in, 10))

    def vit(dim: int, depth: int, heads: int, patch: int) -> nn.Module:
        return build_model(
            "minivit", (3, 32, 32), 10, dim=dim, depth=depth, heads=heads, patch=patch
        )

    if quick:
        return [
            ModelSpec("mlp", "MLP 784-128x2-10", (784,), 16, 2, lambda: mlp(128, 2)),
            ModelSpec(
                "vit", "ViT dim 32, depth 1, patch 8", (3, 32, 32), 4, 2, lambda: vit(32, 1, 2, 8)
            ),
        ]
    return [
        ModelSpec("mlp", "MLP 784-1024x4-10", (784,), 256, 5, lambda: mlp(1024, 4)),
        ModelSpec(
            "vit",
            "ViT dim 192, depth 4, 3 heads, patch 4, 32x32x3",
            (3, 32, 32),
            32,
            2,
            lambda: vit(192, 4, 3, 4),
        ),
    ]


@dataclass
class Runner:
    """One model + optimizer (+ controller) training on a fixed batch."""

    label: str
    kind: str  # "dense" | "low-rank" | "materialised"
    rank: float | None
    model: nn.Module
    opt: torch.optim.Optimizer
    ctl: oialr.OIALR | None
    x: Tensor
    y: Tensor
    windows_ms: list[float] = field(default_factory=list)
    update_ms: list[float] = field(default_factory=list)
    _update_t: int = 10**6  # a step count far past the last update, bumped per timed update

    def step(self) -> None:
        loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ctl is not None:
            self.ctl.step()

    def time_window(self, steps: int, device: torch.device) -> None:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(device)
        self.windows_ms.append((time.perf_counter() - t0) / steps * 1e3)

    def time_update(self, device: torch.device) -> None:
        """One rank update of every layer. ``fixed_rank`` keeps ``ctl.step()`` from ever updating,
        so the private ``_run_updates`` is called directly; ``sigma_cutoff=0`` keeps every rank."""
        assert self.ctl is not None
        self._update_t += 1
        sync(device)
        t0 = time.perf_counter()
        self.ctl._run_updates(self._update_t)
        sync(device)
        self.update_ms.append((time.perf_counter() - t0) * 1e3)


def make_runner(
    spec: ModelSpec, kind: str, rank: float | None, device: torch.device, seed: int
) -> Runner:
    torch.manual_seed(seed)
    model = spec.build().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    ctl = None
    if kind != "dense":
        ctl = oialr.OIALR(
            model,
            opt,
            delay=0,  # convert in the constructor
            update_freq=1,
            sigma_cutoff=0.0,  # a timed update keeps every singular value
            fixed_rank=rank,
            factored="auto" if kind == "low-rank" else False,
        )
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(spec.batch, *spec.input_shape, generator=gen).to(device)
    y = torch.randint(0, 10, (spec.batch,), generator=gen).to(device)
    label = kind if rank is None else f"{kind} {rank:.0%}"
    return Runner(label, kind, rank, model, opt, ctl, x, y)


def auto_decisions(runner: Runner) -> dict[str, bool]:
    """Which path ``factored="auto"`` takes per layer for this batch (True: factored chain)."""
    assert runner.ctl is not None
    layers = runner.ctl.layers()
    seen: dict[str, bool] = {}
    hooks = []
    for name, layer in layers.items():

        def hook(mod: LowRankLayer, args: tuple, name: str = name) -> None:
            x = args[0]
            rows = mod._output_rows(x) if isinstance(mod, LowRankConv) else x.numel() // x.shape[-1]
            seen[name] = mod.factored_is_cheaper(rows)

        hooks.append(layer.register_forward_pre_hook(hook))
    with torch.no_grad():
        runner.model(runner.x)
    for h in hooks:
        h.remove()
    return seen


def bench_model(
    spec: ModelSpec, args: argparse.Namespace, device: torch.device, console: Console
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    runners = [make_runner(spec, "dense", None, device, args.seed)]
    for rank in RANKS:
        runners.append(make_runner(spec, "low-rank", rank, device, args.seed))
        runners.append(make_runner(spec, "materialised", rank, device, args.seed))
    for r in runners:  # warm-up: allocator, BLAS packing, optimizer state
        for _ in range(args.warmup):
            r.step()
        if r.kind == "low-rank":
            r.time_update(device)
            r.update_ms.clear()
    sync(device)

    for rnd in range(args.repeats):
        shift = rnd % len(runners)
        for r in runners[shift:] + runners[:shift]:
            r.time_window(spec.steps, device)
            if r.kind == "low-rank":
                r.time_update(device)
        console.log(f"{spec.name}: round {rnd + 1}/{args.repeats} done")

    dense = runners[0]
    dense_ms = median(dense.windows_ms)

    def paired_ratio(r: Runner) -> float:
        return median([a / b for a, b in zip(r.windows_ms, dense.windows_ms)])

    rows = []
    for rank in RANKS:
        low = next(r for r in runners if r.kind == "low-rank" and r.rank == rank)
        mat = next(r for r in runners if r.kind == "materialised" and r.rank == rank)
        assert low.ctl is not None
        decisions = auto_decisions(low)
        low_ms, update_ms = median(low.windows_ms), median(low.update_ms)
        rows.append(
            {
                "model": spec.name,
                "rank_fraction": rank,
                "ranks": low.ctl.ranks(),
                "trainable_fraction": low.ctl.trainable_fraction(),
                "auto_factored_layers": sum(decisions.values()),
                "converted_layers": len(decisions),
                "dense_ms": dense_ms,
                "lowrank_ms": low_ms,
                "ratio": paired_ratio(low),
                "materialised_ms": median(mat.windows_ms),
                "materialised_ratio": paired_ratio(mat),
                "update_ms": update_ms,
                "update_fraction": update_ms / low_ms,
                # best window of each: a robust estimate when other jobs share the CPU
                "dense_ms_min": min(dense.windows_ms),
                "lowrank_ms_min": min(low.windows_ms),
                "ratio_min": min(low.windows_ms) / min(dense.windows_ms),
                "materialised_ratio_min": min(mat.windows_ms) / min(dense.windows_ms),
                "windows_ms": {
                    "dense": dense.windows_ms,
                    "lowrank": low.windows_ms,
                    "materialised": mat.windows_ms,
                    "update": low.update_ms,
                },
            }
        )
    info = {
        "description": spec.description,
        "batch": spec.batch,
        "input_shape": list(spec.input_shape),
        "steps_per_window": spec.steps,
        "dense_params": sum(p.numel() for p in dense.model.parameters()),
        "converted": runners[1].ctl.report.converted if runners[1].ctl else [],
    }
    return rows, info


def print_table(console: Console, machine: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    table = Table(
        title=f"OIALR step time — {machine['cpu']}, {machine['threads']} threads, "
        f"torch {machine['torch']}, {machine['device']}"
    )
    for col in (
        "model",
        "rank",
        "dense ms",
        "low-rank ms",
        "ratio",
        "ratio@min",
        "auto fact.",
        "mat. ms",
        "mat. ratio",
        "update ms",
        "upd/step",
    ):
        table.add_column(col, justify="left" if col in ("model", "rank") else "right")
    for r in rows:
        table.add_row(
            r["model"],
            f"{r['rank_fraction']:.0%}",
            f"{r['dense_ms']:.1f}",
            f"{r['lowrank_ms']:.1f}",
            f"{r['ratio']:.2f}",
            f"{r['ratio_min']:.2f}",
            f"{r['auto_factored_layers']}/{r['converted_layers']}",
            f"{r['materialised_ms']:.1f}",
            f"{r['materialised_ratio']:.2f}",
            f"{r['update_ms']:.1f}",
            f"{r['update_fraction']:.2f}",
        )
    console.print(table)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (smoke test)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "step_time.json")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 9)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per config")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 9)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    device = resolve_device(args.device)
    console = Console()
    if not console.is_terminal:  # keep the table's columns readable in logs
        console = Console(width=120)

    t0 = time.perf_counter()
    machine = machine_info(device)
    rows, models = [], {}
    for spec in model_specs(args.quick):
        spec_rows, models[spec.name] = bench_model(spec, args, device, console)
        rows += spec_rows
    machine["load_average_after"] = machine_info(device)["load_average"]
    print_table(console, machine, rows)

    name, rank, target = GOAL
    goal_row = next((r for r in rows if r["model"] == name and r["rank_fraction"] == rank), None)
    goal = {"model": name, "rank_fraction": rank, "target_ratio": target}
    if goal_row is not None:
        goal.update(measured_ratio=goal_row["ratio"], met=goal_row["ratio"] <= target)
        verdict = "met" if goal["met"] else "NOT met"
        console.print(
            f"goal (low-rank/dense <= {target} for {name} at {rank:.0%} rank): {verdict}, "
            f"measured {goal_row['ratio']:.2f}"
        )
    payload = {
        "benchmark": "step_time",
        "machine": machine,
        "settings": {
            "quick": args.quick,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "seed": args.seed,
            "optimizer": "AdamW(lr=1e-4, weight_decay=0.01)",
            "ranks": list(RANKS),
        },
        "models": models,
        "results": rows,
        "goal": goal,
        "wall_s": time.perf_counter() - t0,
    }
    write_json(args.out, payload)
    console.print(f"wrote {args.out} ({payload['wall_s']:.0f} s)")
    return payload


if __name__ == "__main__":
    main()
