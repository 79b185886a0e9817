"""Our training loop against a plain 20-line PyTorch loop: what ``fit`` costs per step.

For each model it times, side by side in one run, on the same Fashion-MNIST tensors:

- ``fit``: ``oialr.train.fit`` in dense mode (schedule, running sums, controller hooks, logging
  every ``--window`` steps), its step time as recorded per logging window;
- ``plain``: the loop a researcher writes by hand (below, :func:`plain_loop`): the same model,
  AdamW, learning-rate schedule and gradient clipping, the same batches (from our data
  pipeline, augmentation included: data cost is not loop cost), a ``loss.item()`` every window.

Rounds alternate the two (the order flips each round) so load drift hits both alike; the first
window of every run is dropped (warm-up). A fast model gets more rounds than a slow one: rounds
go on, in pairs, until each arm has ``--seconds`` of timed steps (at least ``--rounds``, at most
``MAX_ROUNDS``), so a 15 ms step is not judged on one second of a shared CPU. ``ratio`` is the
median over rounds of fit/plain medians, ``ratio@min`` the best fit window over the best plain
window (on a shared CPU the least disturbed estimate). Convnets run in both memory formats,
which also measures what ``channels_last`` buys per model: ``memory_format="auto"`` follows these numbers.

    python benchmarks/loop_overhead.py            # about half an hour on a 2-core CPU
    python benchmarks/loop_overhead.py --quick    # smoke run, tiny sizes

Writes ``benchmarks/results/loop_overhead.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import RESULTS_DIR, machine_info, median, sync, write_json
from rich.console import Console
from rich.table import Table

from oialr.models import build_model
from oialr.recorders import Recorder
from oialr.run_config import RunConfig
from oialr.train import fit, load_data, lr_factor, resolve_device

GOAL = 1.05  # the anchor: our loop within 5 % of a plain one
MAX_ROUNDS = 24


@dataclass
class Case:
    label: str
    model: str
    memory_format: str  # "contiguous" | "channels_last" | "-" (no convolutions)
    options: dict[str, Any]
    pad_to: int | None = None


def cases(quick: bool) -> list[Case]:
    mlp = {"widths": [64] if quick else [512, 256]}
    vit = {"size": "small"} if not quick else {"dim": 32, "depth": 1, "heads": 2, "patch": 8}
    return [
        Case("mlp", "mlp", "-", mlp),
        Case("lenet5", "lenet5", "contiguous", {}),
        Case("lenet5 channels_last", "lenet5", "channels_last", {}),
        Case("resnet20", "resnet20", "contiguous", {}),
        Case("resnet20 channels_last", "resnet20", "channels_last", {}),
        Case("minivit", "minivit", "contiguous", vit, pad_to=32),
        Case("minivit channels_last", "minivit", "channels_last", vit, pad_to=32),
    ][: 3 if quick else None]


class StepTimes(Recorder):
    def __init__(self):
        self.windows: list[float] = []

    def step(self, step, loss, lr, step_time):
        self.windows.append(step_time)


def run_fit(cfg: RunConfig) -> list[float]:
    times = StepTimes()
    fit(cfg, times)
    return times.windows[1:]


def plain_loop(cfg: RunConfig) -> list[float]:
    """The hand-written loop, on the same data, model and schedule as ``fit``."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg).to(device)
    model = build_model(cfg.model, data.input_shape, data.num_classes, **cfg.model_options)
    layout = torch.channels_last if cfg.memory_format == "channels_last" else None
    model = model.to(device, memory_format=layout or torch.preserve_format)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = data.steps_per_epoch(cfg.batch_size, drop_last=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup_steps, total))
    batches = data.batches("train", cfg.batch_size, shuffle=True, drop_last=True,
                           generator=torch.Generator().manual_seed(cfg.seed))  # fmt: skip
    windows, tick = [], time.perf_counter()
    model.train()
    for step, (x, y) in enumerate(batches, start=1):
        if layout is not None:
            x = x.contiguous(memory_format=layout)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        if step % cfg.log_every == 0:
            loss.item()
            now = time.perf_counter()
            windows.append((now - tick) / cfg.log_every)
            tick = now
    return windows[1:]


def bench(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    batch = 16 if args.quick else 128
    steps = (4 if args.quick else args.windows + 1) * args.window
    cfg = RunConfig(
        model=case.model, model_options=case.options, dataset="fashion-mnist",
        data_dir=args.data_dir, subset=math.ceil(steps * batch / 0.9) + 1, val_fraction=0.1,
        pad_to=case.pad_to, epochs=1, batch_size=batch, lr=1e-3, mode="dense",
        log_every=args.window, device=args.device,
        memory_format="contiguous" if case.memory_format == "-" else case.memory_format,
    )  # fmt: skip
    fit_ms, plain_ms, ratios = [], [], []
    r = 0
    while r < args.rounds or (sum(fit_ms) * args.window < args.seconds and r < MAX_ROUNDS) or r % 2:
        arms = (run_fit, plain_loop) if r % 2 == 0 else (plain_loop, run_fit)
        results = {arm: arm(cfg) for arm in arms}
        sync(torch.device(args.device))
        f, p = results[run_fit], results[plain_loop]
        fit_ms += f
        plain_ms += p
        ratios.append(median(f) / median(p))
        r += 1
    row = {
        "case": case.label, "model": case.model, "memory_format": case.memory_format,
        "batch": batch, "rounds": r, "windows": len(fit_ms), "fit_ms": median(fit_ms) * 1e3,
        "plain_ms": median(plain_ms) * 1e3, "ratio": median(ratios),
        "ratio_min": min(fit_ms) / min(plain_ms),
    }  # fmt: skip
    print(
        f"{case.label}: fit {row['fit_ms']:.1f} ms, plain {row['plain_ms']:.1f} ms, "
        f"ratio {row['ratio']:.3f} (@min {row['ratio_min']:.3f})",
        flush=True,
    )
    return row


def channels_last_speedups(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Plain-loop step time in the default format over channels_last, per convnet."""
    plain = {(r["model"], r["memory_format"]): r["plain_ms"] for r in rows}
    return {
        model: plain[(model, "contiguous")] / plain[(model, "channels_last")]
        for model, fmt in plain
        if fmt == "channels_last" and (model, "contiguous") in plain
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST folder")
    parser.add_argument(
        "--rounds", type=int, default=None, help="alternating rounds, at least (default 8)"
    )
    parser.add_argument("--windows", type=int, default=6, help="timed windows per run")
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="timed seconds per arm and case before rounds stop (default 15)",
    )
    parser.add_argument("--window", type=int, default=None, help="steps per window (default 10)")
    parser.add_argument("--models", nargs="+", default=None, help="only these models")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "loop_overhead.json")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 8)
    args.window = args.window or (2 if args.quick else 10)
    args.seconds = args.seconds if args.seconds is not None else (0.0 if args.quick else 15.0)
    t0 = time.perf_counter()
    machine = machine_info(torch.device(args.device))
    chosen = [c for c in cases(args.quick) if args.models is None or c.model in args.models]
    rows = [bench(case, args) for case in chosen]
    machine["load_average_after"] = machine_info(torch.device(args.device))["load_average"]
    worst = max(rows, key=lambda r: r["ratio"])
    goal = {"target_ratio": GOAL, "worst_case": worst["case"], "worst_ratio": worst["ratio"],
            "met": all(r["ratio"] <= GOAL for r in rows)}  # fmt: skip
    console = Console(width=120)
    table = Table(title=f"fit vs a plain loop — {machine['cpu']}, {machine['threads']} threads")
    for col in ("case", "batch", "rounds", "fit ms", "plain ms", "ratio", "ratio@min"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for r in rows:
        table.add_row(r["case"], str(r["batch"]), str(r["rounds"]), f"{r['fit_ms']:.1f}", f"{r['plain_ms']:.1f}",
                      f"{r['ratio']:.3f}", f"{r['ratio_min']:.3f}")  # fmt: skip
    console.print(table)
    speedups = channels_last_speedups(rows)
    console.print(
        f"goal (fit/plain <= {GOAL}): {'met' if goal['met'] else 'NOT met'}, worst "
        f"{worst['ratio']:.3f} ({worst['case']}); channels_last speed-up: "
        + ", ".join(f"{m} {s:.2f}x" for m, s in speedups.items())
    )
    payload = {
        "benchmark": "loop_overhead", "quick": args.quick, "machine": machine,
        "settings": {"rounds": args.rounds, "max_rounds": MAX_ROUNDS, "seconds": args.seconds,
                     "windows": args.windows, "window": args.window},
        "results": rows, "channels_last_speedup": speedups, "goal": goal,
        "wall_s": time.perf_counter() - t0,
    }  # fmt: skip
    write_json(args.out, payload)
    console.print(f"wrote {args.out} ({payload['wall_s']:.0f} s)")
    return payload


if __name__ == "__main__":
    main()
