"""Which forward a low-rank conv should run: the factored chain or the materialised weight.

A factored conv runs three convs over the output positions (``r`` filters over the input, then
two 1×1 convs); the materialised one rebuilds ``W = B_out · core · B_inᵀ`` and runs one conv. The
multiply-add count favours the chain almost always, yet on the CPU LeNet-5's low-rank phase ran
at 3x dense that way. This script times, side by side in one run, per conv shape and rank
(forward + backward through the layer, the input not needing a gradient):

- ``dense``: the ``nn.Conv2d``; ``factored`` / ``materialised``: the low-rank layer forced one way;
- which path ``factored="auto"`` takes (:data:`oialr.lowrank.PASS_COST` on this device type) and
  whether that is the faster of the two;
- LeNet-5 as a whole (``channels_last``, batch 128, AdamW step included) at 50/25/10 % rank:
  low-rank step time over dense with ``auto``, always factored, always materialised.

Rounds alternate the configurations, medians of the rounds are reported.

    python benchmarks/conv_paths.py            # about 3 minutes on 2 cores
    python benchmarks/conv_paths.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import RESULTS_DIR, machine_info, median, resolve_device, sync, write_json
from torch import nn

import oialr
from oialr.lowrank import PASS_COST, LowRankConv
from oialr.models import build_model

# (in channels, out channels, kernel, input size, batch): LeNet-5's two convs, ResNet-20's
# three widths, and wider ones.
SHAPES = [(1, 6, 5, 28, 128), (6, 16, 5, 12, 128), (16, 16, 3, 32, 128), (32, 32, 3, 16, 128),
          (64, 64, 3, 8, 128), (128, 128, 3, 16, 32), (256, 256, 3, 14, 16)]  # fmt: skip
FRACTIONS = (0.5, 0.25, 0.1)


def timed(step, device: torch.device, rounds: int, repeat: int) -> list[float]:
    """Milliseconds per call of ``step``, one value per round (after two untimed calls)."""
    step(), step()
    times = []
    for _ in range(rounds):
        sync(device)
        started = time.perf_counter()
        for _ in range(repeat):
            step()
        sync(device)
        times.append((time.perf_counter() - started) / repeat * 1e3)
    return times


def side_by_side(steps: dict, device: torch.device, rounds: int, repeat: int) -> dict[str, float]:
    """Median ms of each step, the rounds alternating between them."""
    samples = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            samples[name] += timed(step, device, 1, repeat)
    return {name: median(values) for name, values in samples.items()}


def conv_case(shape, fraction, layout, device, rounds, repeat) -> dict:
    c_in, c_out, k, size, batch = shape
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2 if k == 3 else 0).to(device)
    conv = conv.to(memory_format=layout)
    x = torch.randn(batch, c_in, size, size, device=device).contiguous(memory_format=layout)
    rank = max(1, round(min(c_out, c_in * k * k) * fraction))
    layer = LowRankConv.from_dense(conv)
    layer.truncate(rank)

    def run(module, factored=None):
        def step():
            if factored is not None:
                layer.factored = factored
            module(x).sum().backward()

        return step

    ms = side_by_side({"dense": run(conv), "factored": run(layer, True),
                       "materialised": run(layer, False)}, device, rounds, repeat)  # fmt: skip
    layer.factored = "auto"
    auto = "factored" if layer.factored_is_cheaper(layer._output_rows(x)) else "materialised"
    faster = min(("factored", "materialised"), key=ms.get)
    return {
        "shape": f"{c_in}->{c_out} k{k} {size}x{size} b{batch}", "rank": rank, "layout": "channels_last" if layout == torch.channels_last else "contiguous",
        "dense_ms": ms["dense"], "factored": ms["factored"] / ms["dense"],
        "materialised": ms["materialised"] / ms["dense"], "auto": auto, "auto_is_faster": auto == faster,
    }  # fmt: skip


def lenet5_case(fraction, device, rounds, repeat, batch) -> dict:
    x = torch.randn(batch, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)

    def trainer(factored=None):
        torch.manual_seed(0)
        model = build_model("lenet5", (1, 28, 28), 10).to(device, memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ctl = None
        if factored is not None:
            ctl = oialr.OIALR(model, opt, delay=0, fixed_rank=fraction, factored=factored,
                              update_freq=10**9)  # fmt: skip
            ctl.step()  # converts

        def step():
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    ms = side_by_side({"dense": trainer(), "auto": trainer("auto"), "factored": trainer(True),
                       "materialised": trainer(False)}, device, rounds, repeat)  # fmt: skip
    return {"rank_fraction": fraction, "dense_ms": ms["dense"],
            **{k: ms[k] / ms["dense"] for k in ("auto", "factored", "materialised")}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two shapes, one round")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "conv_paths.json")
    args = parser.parse_args()
    device = resolve_device(args.device)
    shapes = SHAPES[:2] if args.quick else SHAPES
    rounds, repeat = (1, 1) if args.quick else (5, 10)
    convs = []
    for layout in (torch.contiguous_format, torch.channels_last):
        for shape in shapes:
            for fraction in FRACTIONS[:1] if args.quick else FRACTIONS:
                convs.append(conv_case(shape, fraction, layout, device, rounds, repeat))
                c = convs[-1]
                print(f"{c['shape']:28s} {c['layout']:22s} r{c['rank']:<4} factored "
                      f"{c['factored']:5.2f}x  materialised {c['materialised']:5.2f}x  "
                      f"auto {c['auto']:12s} {'ok' if c['auto_is_faster'] else 'SLOWER'}", flush=True)  # fmt: skip
    lenet5 = [lenet5_case(f, device, rounds, 2 if args.quick else 20, 8 if args.quick else 128)
              for f in (FRACTIONS[:1] if args.quick else FRACTIONS)]  # fmt: skip
    for r in lenet5:
        print(f"lenet5 at {r['rank_fraction']:.0%} rank, low-rank/dense: auto {r['auto']:.2f}, "
              f"factored {r['factored']:.2f}, materialised {r['materialised']:.2f}")  # fmt: skip
    write_json(args.out, {
        "benchmark": "conv_paths", "quick": args.quick, "machine": machine_info(device),
        "pass_cost": PASS_COST, "convs": convs, "lenet5": lenet5,
        "auto_faster": sum(c["auto_is_faster"] for c in convs), "cases": len(convs),
    })  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
