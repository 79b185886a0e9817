"""Per-layer basis stability during dense training, and switch="stability" vs fixed delays.

Part 1, **measurement**: lenet5 and minivit (size "small", patch 7 on 28x28) train dense on a
Fashion-MNIST subset (read offline from /usr/share/datasets/fashion-mnist). They run as OIALR
runs whose delay lies beyond the end, so nothing is ever converted and training is exactly
dense, while the controller measures each eligible layer's basis stability every
``--every`` steps (mean column cosine between the polar factors U Vᵀ of two consecutive
measurements; 1 = the bases did not move). The runs are recorded in a temporary SQLite store,
read back with the dashboard's queries (``app/queries.py``) and drawn with its chart builder
(``app/charts.stability_figure``), one panel per model, with the tested thresholds as dotted
lines. The PNG is rendered by headless Chromium through Playwright (``fig.to_html`` with
plotly.js inlined: no network, no kaleido) and written to ``docs/stability.png``.

Part 2, **comparison at equal epochs**: per model and seed, OIALR with ``switch="stability"``
(each layer converts once its stability reaches the threshold, at the latest at
``--deadline`` of the run) against fixed delays (fractions of the run), everything else equal:
test accuracy and final trainable fraction. The dense run of part 1 (same seed) is the dense
reference. Because measuring stability does not change training, a stability run follows the
dense trajectory exactly until its first conversion, so part 1 also shows when each layer
would convert under each threshold.

    python benchmarks/stability.py            # ~10 min on a busy 2-core CPU
    python benchmarks/stability.py --quick    # smoke run (< 1 min): tiny subset, lenet5 only
                                               # in the comparison

Writes ``benchmarks/results/stability.json`` (``--out``) with the numbers and a short
plain-language finding, and the figure (``--figure``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import streamlit  # noqa: F401
import torch

ROOT = Path(__file__).resolve().parents[1]

# Importing app.queries outside `streamlit run` logs one "No runtime found" line per cache.
logging.getLogger("streamlit.runtime.caching.cache_data_api").setLevel(logging.ERROR)

from common import RESULTS_DIR, machine_info, write_json  # noqa: E402

from app import charts, queries  # noqa: E402
from oialr.metrics_reader import MetricsReader  # noqa: E402
from oialr.metrics_store import MetricsStore  # noqa: E402
from oialr.recorders import StoreRecorder  # noqa: E402
from oialr.run_config import RunConfig  # noqa: E402
from oialr.train import fit  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
NEVER = 10**9  # a delay in steps beyond any run: the model stays dense
# Per model: options and learning-rate schedule (everything else is RunConfig's default).
MODELS: dict[str, dict[str, Any]] = {
    "lenet5": {"lr": 2e-3},
    "minivit": {"lr": 1e-3, "warmup_steps": 20, "model_options": {"size": "small"}},
}


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------


def run(store: MetricsStore, model: str, seed: int, args, **oialr: Any) -> dict[str, Any]:
    """One recorded run; returns its result and the controller's per-layer conversion steps."""
    cfg = RunConfig.build(
        model=model,
        dataset="fashion-mnist",
        subset=args.subset,
        epochs=args.epochs[model],
        batch_size=args.batch_size,
        device="cpu",
        seed=seed,
        oialr={"update_freq": args.update_freq, **oialr},
        **MODELS[model],
    )
    started = time.perf_counter()
    result = fit(cfg, StoreRecorder(store))
    store.flush()
    layers = args.reader.metrics("layers", result.run_id)
    converts = layers[layers["event"] == "convert"]
    return {
        "run_id": result.run_id,
        "seed": seed,
        "test_acc": result.test_acc,
        "final_val_acc": result.final_val_acc,
        "trainable_fraction": result.trainable_fraction,
        "stored_fraction": result.stored_fraction,
        "conversion_step": result.conversion_step,
        "converted_at": {str(r.layer): int(r.step) for r in converts.itertuples()},
        "steps": result.steps,
        "seconds": round(time.perf_counter() - started, 1),
    }


def first_crossing(warmup, thresholds: list[float]) -> dict[str, dict[str, int | None]]:
    """Per threshold and layer: the first measured step whose stability reaches it."""
    out: dict[str, dict[str, int | None]] = {}
    layers = sorted(set(warmup["layer"]), key=charts.layer_key)
    for threshold in thresholds:
        row: dict[str, int | None] = {}
        for layer in layers:
            hits = warmup[(warmup["layer"] == layer) & (warmup["stability"] >= threshold)]
            row[str(layer)] = int(hits["step"].iloc[0]) if len(hits) else None
        out[f"{threshold:g}"] = row
    return out


def measure(store: MetricsStore, model: str, seed: int, args) -> dict[str, Any]:
    """Part 1: a dense run with warm-up stability measurements, read back as the app does."""
    result = run(store, model, seed, args, delay=NEVER, stability_every=args.every)
    warmup = args.reader.metrics("stability", result["run_id"])
    summary = {}
    for layer, group in warmup.groupby("layer"):
        values = group["stability"].to_numpy()
        summary[str(layer)] = {
            "first": round(float(values[0]), 5),
            "min": round(float(values.min()), 5),
            "last": round(float(values[-1]), 5),
            "measurements": len(values),
        }
    return {
        **result,
        "stability_every": args.every,
        "layers": summary,
        "first_step_at_threshold": first_crossing(warmup, args.thresholds),
        "_warmup": warmup,
    }


def compare(store: MetricsStore, model: str, seeds: list[int], dense: dict[int, dict], args):
    """Part 2: fixed delays and stability thresholds at equal epochs, per seed."""
    rows: dict[str, list[dict[str, Any]]] = {"dense": [dense[s] for s in seeds]}
    every = {"stability_every": args.every}
    # (label, delay as a fraction of the run, OIALR options): fixed delays, then thresholds
    variants = [(f"delay {f:g}", f, every) for f in args.delays] + [
        (f"stability {t:g}", args.deadline,
         {**every, "switch": "stability", "stability_threshold": t})
        for t in args.thresholds
    ]  # fmt: skip
    for key, delay, options in variants:
        rows[key] = []
        for seed in seeds:
            print(f"  {model} seed {seed}: {key} ...", flush=True)
            rows[key].append(
                run(store, model, seed, args, delay=delay, delay_unit="fraction", **options)
            )
    return {key: aggregate(runs) for key, runs in rows.items()}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(key: str) -> float:
        return statistics.fmean(r[key] for r in runs)

    return {
        "test_acc": mean("test_acc"),
        "test_acc_spread": max(r["test_acc"] for r in runs) - min(r["test_acc"] for r in runs),
        "trainable_fraction": mean("trainable_fraction"),
        "stored_fraction": mean("stored_fraction"),
        "conversion_step": [r["conversion_step"] for r in runs],
        "runs": runs,
    }


# ---------------------------------------------------------------------------------------------
# Figure
# ---------------------------------------------------------------------------------------------


def figures(measured: dict[str, dict[str, Any]], args) -> list:
    """One stability panel per model from the app's builder, thresholds as dotted lines."""
    figs = []
    for model, m in measured.items():
        empty_layers = args.reader.metrics("layers", m["run_id"])  # none: dense
        fig = charts.stability_figure(m["_warmup"], empty_layers)
        for threshold in args.thresholds:
            fig.add_hline(
                y=threshold,
                line={"dash": "dot", "color": "gray", "width": 1},
                annotation_text=f"threshold {threshold:g}",
                annotation_position="bottom right",
            )
        opts = MODELS[model].get("model_options", {})
        name = model + (f" ({opts['size']})" if "size" in opts else "")
        # Standalone layout only (no data change): outside Streamlit's theme the app's 10 px
        # margins clip the tick labels, and a many-layer legend fits better on the right.
        fig.update_layout(
            title_text=f"basis stability during dense training: {name}, Fashion-MNIST "
            f"({args.subset} images, {args.epochs[model]} epochs, every {args.every} steps)",
            width=1000,
            height=max(440, 140 + 24 * len(set(m["_warmup"]["layer"]))),  # legend fits
            margin={"l": 70, "r": 20, "t": 60, "b": 55},
            legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1, "yanchor": "top",
                    "font": {"size": 10}, "tracegroupgap": 0},
        )  # fmt: skip
        fig.update_xaxes(automargin=True)
        fig.update_yaxes(automargin=True, tickformat=".3f")
        figs.append(fig)
    return figs


def render_png(figs: list, path: Path) -> None:
    """Inline plotly.js (no network), open in headless Chromium, screenshot the panels."""
    from playwright.sync_api import sync_playwright

    parts = [
        fig.to_html(include_plotlyjs=(i == 0), full_html=False, config={"displayModeBar": False})
        for i, fig in enumerate(figs)
    ]
    html = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'></head>"
        "<body style='margin:0;background:#fff'><div id='panels' style='width:1000px'>"
        + "".join(parts)
        + "</div></body></html>"
    )
    with tempfile.TemporaryDirectory(prefix="oialr-stability-fig-") as folder:
        page_path = Path(folder) / "stability.html"
        page_path.write_text(html)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1020, "height": 900})
                page.goto(page_path.as_uri())
                page.wait_for_selector(".js-plotly-plot")
                page.wait_for_function(
                    f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {len(figs)}"
                )
                path.parent.mkdir(parents=True, exist_ok=True)
                page.locator("#panels").screenshot(path=str(path))
            finally:
                browser.close()


# ---------------------------------------------------------------------------------------------
# Finding
# ---------------------------------------------------------------------------------------------


def verdict(table: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The best stability threshold against the best fixed delay (by mean test accuracy)."""
    fixed = {k: v for k, v in table.items() if k.startswith("delay")}
    stable = {k: v for k, v in table.items() if k.startswith("stability")}
    if not fixed or not stable:
        return None
    best_fixed = max(fixed, key=lambda k: fixed[k]["test_acc"])
    best_stable = max(stable, key=lambda k: stable[k]["test_acc"])
    f, s = fixed[best_fixed], stable[best_stable]
    diff = s["test_acc"] - f["test_acc"]
    noise = max(0.005, f["test_acc_spread"], s["test_acc_spread"])
    outcome = "beats" if diff > noise else "matches" if diff >= -noise else "falls short of"
    return {
        "best_fixed": best_fixed,
        "best_stability": best_stable,
        "test_acc_diff": diff,
        "noise": noise,
        "outcome": outcome,
        "fraction_fixed": f["trainable_fraction"],
        "fraction_stability": s["trainable_fraction"],
    }


def finding(measured: dict, comparison: dict, args) -> str:
    """3-5 plain sentences from the numbers (no judgement beyond what they show)."""
    sentences = []
    lo = min(args.thresholds)
    for model, m in measured.items():
        firsts = [v["first"] for v in m["layers"].values()]
        lasts = [v["last"] for v in m["layers"].values()]
        crossing = [s for s in m["first_step_at_threshold"][f"{lo:g}"].values() if s is not None]
        steps_per_epoch = m["steps"] / args.epochs[model]
        if len(crossing) == len(m["layers"]):
            when = (
                f"every layer had reached {lo:g} by step {max(crossing)} "
                f"(epoch {max(crossing) / steps_per_epoch:.1f} of {args.epochs[model]})"
            )
        else:
            when = f"only {len(crossing)} of {len(m['layers'])} layers ever reached {lo:g}"
        sentences.append(
            f"During dense training of {model} ({len(m['layers'])} eligible layers), basis "
            f"stability measured every {args.every} steps was {min(firsts):.3f}-{max(firsts):.3f} "
            f"at the first measurement and {min(lasts):.4f}-{max(lasts):.4f} at the last; {when}."
        )
    for model, table in comparison.items():
        v = verdict(table)
        if v is None:
            continue
        seeds = len(table["dense"]["runs"])
        noise = (
            f"seed spread/noise floor ±{v['noise']:.3f}"
            if seeds > 1
            else f"one seed, so ±{v['noise']:.3f} is only an assumed noise floor"
        )
        sentences.append(
            f"On {model} at equal epochs ({seeds} seed{'s' if seeds > 1 else ''}), switch="
            f"'stability' (best threshold {v['best_stability'].split()[1]}) {v['outcome']} the "
            f"best fixed delay ({v['best_fixed'].split()[1]} of the run): test accuracy "
            f"{table[v['best_stability']]['test_acc']:.3f} vs "
            f"{table[v['best_fixed']]['test_acc']:.3f} ({v['test_acc_diff']:+.3f}; {noise}), "
            f"trainable fraction {v['fraction_stability']:.2f} vs {v['fraction_fixed']:.2f}; "
            f"dense reached {table['dense']['test_acc']:.3f}."
        )
    lasts = [v["last"] for m in measured.values() for v in m["layers"].values()]
    late = (
        "late values of 1.000 partly reflect the learning rate decaying to zero (cosine schedule), "
        if min(lasts) >= 0.9995
        else ""
    )
    sentences.append(
        f"Caveats: {late}a threshold only means something together with the measurement "
        f"interval ({args.every} steps here), and on runs this small and short, differences "
        "inside the noise band are not meaningful."
    )
    return " ".join(sentences)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny subset, few runs")
    parser.add_argument("--subset", type=int, help="training images (default 10000; 1500 quick)")
    parser.add_argument("--lenet-epochs", type=int, help="default 5 (1 quick)")
    parser.add_argument("--vit-epochs", type=int, help="default 3 (1 quick)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--every", type=int, help="steps between stability measurements (35)")
    parser.add_argument("--update-freq", type=float, help="steps between rank updates (35)")
    parser.add_argument("--thresholds", type=float, nargs="+", help="default 0.99 0.999")
    parser.add_argument(
        "--delays", type=float, nargs="+", help="fixed delays, fractions (0.1 0.25 0.5)"
    )
    parser.add_argument(
        "--deadline", type=float, default=0.75, help="latest conversion of a stability run (0.75)"
    )
    parser.add_argument("--seeds", type=int, help="lenet5 seeds (default 2; 1 quick)")
    parser.add_argument("--vit-seeds", type=int, help="minivit seeds, 0 skips (default 1; 0 quick)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "stability.png")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "stability.json")
    args = parser.parse_args()
    q = args.quick
    args.subset = args.subset or (1500 if q else 10000)
    args.epochs = {"lenet5": args.lenet_epochs or (1 if q else 5),
                   "minivit": args.vit_epochs or (1 if q else 3)}  # fmt: skip
    args.every = args.every or (3 if q else 35)
    args.update_freq = args.update_freq or (3 if q else 35)
    args.thresholds = args.thresholds or [0.99, 0.999]
    args.delays = args.delays or ([0.25] if q else [0.1, 0.25, 0.5])
    seeds = list(range(args.seeds or (1 if q else 2)))
    vit_seeds = list(range(args.vit_seeds if args.vit_seeds is not None else (0 if q else 1)))
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="oialr-stability-") as folder:
        url = f"sqlite:///{Path(folder) / 'stability.db'}"
        store = MetricsStore(url)
        args.reader = MetricsReader(queries.open_engine(url))
        measured: dict[str, dict[str, Any]] = {}
        dense: dict[str, dict[int, dict]] = {"lenet5": {}, "minivit": {}}
        for model, model_seeds in (("lenet5", seeds), ("minivit", vit_seeds or [0])):
            for seed in model_seeds:
                print(f"{model} seed {seed}: dense with stability measurement ...", flush=True)
                m = measure(store, model, seed, args)
                dense[model][seed] = {k: v for k, v in m.items() if not k.startswith("_")}
                measured.setdefault(model, m)  # seed 0 is drawn
        comparison = {}
        for model, model_seeds in (("lenet5", seeds), ("minivit", vit_seeds)):
            if model_seeds:
                print(f"{model}: comparison at {args.epochs[model]} epochs ...", flush=True)
                comparison[model] = compare(store, model, model_seeds, dense[model], args)
        print(f"rendering {args.figure} ...", flush=True)
        render_png(figures(measured, args), args.figure)
        args.reader.engine.dispose()
        store.close()

    print("\n== basis stability during dense training (first step reaching each threshold) ==")
    for model, m in measured.items():
        print(f"{model} (seed 0, every {args.every} steps, {m['steps']} steps in all)")
        print(f"  {'layer':<28} {'first':>7} {'min':>7} {'last':>7} " + " ".join(
            f"{'>=' + format(t, 'g'):>9}" for t in args.thresholds))  # fmt: skip
        for layer, s in sorted(m["layers"].items(), key=lambda kv: charts.layer_key(kv[0])):
            steps = [m["first_step_at_threshold"][f"{t:g}"][layer] for t in args.thresholds]
            print(
                f"  {layer:<28} {s['first']:>7.4f} {s['min']:>7.4f} {s['last']:>7.4f} "
                + " ".join(f"{'-' if x is None else x:>9}" for x in steps)
            )
    print("\n== switch='stability' vs fixed delays at equal epochs (means over seeds) ==")
    for model, table in comparison.items():
        print(f"{model}:")
        print(
            f"  {'config':<18} {'test acc':>9} {'spread':>7} {'trainable':>10} {'convert at':>18}"
        )
        for key, r in table.items():
            steps = ",".join("-" if s is None else str(s) for s in r["conversion_step"])
            print(
                f"  {key:<18} {r['test_acc']:>9.4f} {r['test_acc_spread']:>7.4f} "
                f"{r['trainable_fraction']:>10.3f} {steps:>18}"
            )
    text = finding(measured, comparison, args)
    print("\n" + text)

    payload = {
        "benchmark": "stability",
        "quick": q,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine_info(torch.device("cpu")), "load_average_end": list(os.getloadavg())},
        "config": {
            "dataset": "fashion-mnist",
            "subset": args.subset,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "models": MODELS,
            "stability_every": args.every,
            "update_freq": args.update_freq,
            "thresholds": args.thresholds,
            "fixed_delays": args.delays,
            "stability_deadline": args.deadline,
            "seeds": {"lenet5": seeds, "minivit": vit_seeds},
        },
        "measurement": {
            model: {k: v for k, v in m.items() if not k.startswith("_")}
            for model, m in measured.items()
        },
        "comparison": comparison,
        "verdict": {model: verdict(table) for model, table in comparison.items()},
        "figure": str(
            args.figure.relative_to(ROOT) if args.figure.is_relative_to(ROOT) else args.figure
        ),
        "finding": text,
        "total_s": round(time.perf_counter() - started, 1),
    }
    write_json(args.out, payload)
    print(f"\nwrote {args.out} and {args.figure} ({payload['total_s']:.0f} s in all)")


if __name__ == "__main__":
    main()
