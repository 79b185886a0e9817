"""Rebuild the README's result tables from ``benchmarks/results/*.json`` (never by hand).

Each table sits between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in README.md; a missing
result file leaves a line saying which command produces it.

    python benchmarks/readme_tables.py
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def train_runs(d: dict) -> str:
    out = []
    if "runs" in d:
        rows = [[f"`{r['command']}`", f"{100 * r['test_acc']:.2f}", f"{r['trainable_fraction']:.3f}",
                 f"{r['wall_time']:.0f} s"] for r in d["runs"].values()]  # fmt: skip
        out.append("Measured on this 2-core CPU (`python benchmarks/train_runs.py --only runs`):\n")
        out.append(table(["command", "test accuracy (%)", "trainable fraction", "wall time"], rows))
    if "logging" in d:
        log = d["logging"]
        ms = log["ms_per_step"]
        over = ", ".join(f"{k}: {v:+.2f} %" for k, v in log["overhead_percent"].items())
        out.append(
            f"\nRecording a run in the metrics store costs {over} of the time per step "
            f"({ms['none']:.2f} ms without recording; median of {log['repeats']} interleaved runs, "
            "`python benchmarks/train_runs.py --only logging`)."
        )
    return "\n".join(out)


def step_time(d: dict) -> str:
    rows = [[r["model"], pct(r["rank_fraction"]), f"{r['dense_ms']:.1f}", f"{r['lowrank_ms']:.1f}",
             f"**{r['ratio']:.2f}**", f"{r['materialised_ratio']:.2f}", f"{r['update_fraction']:.1f} steps"]
            for r in d["results"]]  # fmt: skip
    m = d["machine"]
    goal = d.get("goal", {})
    verdict = ""
    if goal:
        verdict = f" Goal (MLP at 10 % rank ≤ 0.5): **{'met' if goal.get('met') else 'not met'}**, {goal.get('measured_ratio', 0):.2f}."
    where = (
        f"{m.get('threads', '?')} threads of a {m.get('cpu_count', '?')}-core {m.get('cpu', '?')}"
    )
    if m.get("cpu_count", 2) != 2:
        where += " — the lent GPU machine's CPU, pinned to 2 threads, because this shared 2-core machine was too loaded to time"
    return (
        f"**Training-step time, low-rank phase over dense** ({where}, torch {m.get('torch', '?')}; "
        "`python benchmarks/step_time.py`). *Materialised* "
        "rebuilds `U Σ Vᵀ` every step as the reference code does; *update* is one OIALR update "
        f"(all SVDs) in training steps: at the default update_freq=100 it adds a few per cent.{verdict}\n\n"
        + table(
            [
                "model",
                "rank",
                "dense ms",
                "low-rank ms",
                "ratio",
                "materialised ratio",
                "update / step",
            ],
            rows,
        )
    )


def compare(d: dict) -> str:
    rows = []
    for model, configs in d["results"].items():
        for name, r in configs.items():
            acc, wt = r["test_acc"], r["wall_time"]
            rows.append([model, name, f"{acc['mean']:.2f} ± {acc['std']:.2f}",
                         f"{r['trainable_fraction']['mean']:.3f}", f"{r['stored_fraction']['mean']:.3f}",
                         f"{wt['mean']:.0f}"])  # fmt: skip
    goals = "\n".join(f"- {'**met**' if g['met'] else '**not met**'}: {name} "
                      f"({', '.join(f'{k} {v:.3g}' for k, v in g.items() if k != 'met')})"
                      for name, g in d["goals"].items())  # fmt: skip
    studies = "; ".join(f"{m}: trial {s['trial']} of {s['trials']} ({', '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}' for k, v in s['params'].items())})"
                        for m, s in d["studies"].items())  # fmt: skip
    # a kept study's storage is a path of the machine that ran it: name the option, not the path
    command, kept = re.subn(r" --storage \S+", "", d["command"])
    kept_note = ", its studies kept with `--storage` and evaluated from there" if kept else ""
    epochs = ", ".join(f"{m} {e}" for m, e in d["epochs"].items())
    return (
        f"**Accuracy versus parameters on Fashion-MNIST** — {d['seeds']} seeds, epochs: {epochs}, "
        f"{d['subset']:,} training images (`{command}`{kept_note}). *Tuned* is the most accurate "
        f"Pareto trial at ≤ 10 % trainable parameters found by `oialr study run` ({studies}).\n\n"
        + table(
            ["model", "configuration", "test accuracy (%)", "trainable", "stored", "wall time (s)"],
            rows,
        )
        + "\n\nGoals:\n\n"
        + goals
    )


def app_scale(d: dict) -> str:
    rows = [[page, f"{p['query_ms']:.0f}", f"{p['figure_ms']:.0f}", f"{p['total_ms']:.0f}",
             f"{sum(p['figure_bytes'].values()) / 1024:.0f} KB"] for page, p in d["pages"].items()]  # fmt: skip
    poll = d["live_poll"]
    median = poll.get("median_ms", poll.get("p50_ms", 0))
    return (
        f"**Scale** (`python benchmarks/app_scale.py`): a study of {d['data']['trials']:,} trials and "
        f"{d['data']['metric_rows']:,} metric rows in SQLite. Goal ≤ 1 s per page, ≤ 100 ms per live "
        f"poll; a live poll took {median:.1f} ms.\n\n"
        + table(["page", "queries (ms)", "figures (ms)", "total (ms)", "figure size"], rows)
    )


def _goal_words(met: list[str], missed: list[str]) -> str:
    if not met and not missed:
        return "not measured"
    if not missed:
        return "**met** on every page"
    if not met:
        return "**not met** on any page"
    return f"**not met**: met on {', '.join(met)}; not on {', '.join(missed)}"


def app_browser(d: dict) -> str:
    """Both dashboards, both sizes, cold and warm, and the goals marked met or not met."""
    sizes = sorted(d["sizes"], key=int)
    goals, verdict = d["goals"], d["verdict"]

    def cell(page: dict, key: str, size: str) -> str:
        ours, theirs = page["ours"][key], (page.get("theirs") or {}).get(key)
        text = "—" if ours is None else f"{ours:.2f}"
        if int(size) == goals["size"] and ours is not None:
            limit = goals["cold_s"] if key == "cold_s" else goals["warm_s"]
            text += " ✓" if ours <= limit else " ✗"
        other = page.get("theirs")
        if other is not None and theirs is not None:
            text += f" vs {theirs:.2f}"
        elif other is not None and other.get("errors"):
            text += " vs (did not finish)"
        return text

    pages = d["sizes"][sizes[0]]["pages"]
    header = ["our page ↔ optuna-dashboard"]
    header += [f"{int(s) // 1000}k {kind}" for s in sizes for kind in ("cold", "warm")]
    rows = []
    for name, page in pages.items():
        pair = f"{name} ↔ {page['their_page']}" if page.get("their_page") else f"{name} (ours only)"
        row = [pair]
        for size in sizes:
            here = d["sizes"][size]["pages"][name]
            row += [cell(here, "cold_s", size), cell(here, "warm_s", size)]
        rows.append(row)
    page_goals = verdict["page_goals"]
    met = [k.split(" at ")[0] for k, v in page_goals.items() if v["met"]]
    missed = [k.split(" at ")[0] for k, v in page_goals.items() if not v["met"]]
    ahead = verdict["ahead"]
    behind = [k for k, v in ahead.items() if not v]
    every = [p for s in sizes for p in d["sizes"][s]["pages"].values()]
    ours_kb = [p["ours"]["cold_kb"] for p in every if p["ours"]["cold_kb"] is not None]
    theirs_kb = [p["theirs"]["cold_kb"] for p in every if (p.get("theirs") or {}).get("cold_kb")]
    m = d["machine"]
    studied = ", ".join(
        f"{int(s):,} trials ({d['sizes'][s]['metric_rows'] / 1e6:.1f} M metric rows)" for s in sizes
    )
    lines = [
        f"**In the browser** (`{d['command'].strip()}`): headless Chromium without a GPU on this "
        f"{m['cpus']}-core machine (load average {m['load_average'][0]:.1f} at the end), Streamlit "
        f"{m['streamlit']} against optuna-dashboard {m['optuna-dashboard']} on the same SQLite "
        f"files, {studied}. "
        f"Seconds until every chart of the page is drawn with points (median of {d['method']['repeat']} "
        f"cold loads, each on a freshly started server in a new browser context, and of "
        f"{d['method']['warm_reloads']} reloads after each); ours vs theirs, ✓/✗ against the "
        f"goals at {goals['size']:,} trials (≤ {goals['cold_s']:.0f} s cold, ≤ {goals['warm_s']:.0f} s warm).\n",
        table(header, rows),
        "",
        f"- Goal ≤ {goals['cold_s']:.0f} s cold and ≤ {goals['warm_s']:.0f} s warm per page at "
        f"{goals['size']:,} trials: " + _goal_words(met, missed) + ".",
        f"- Goal ahead of optuna-dashboard on every paired page, cold and warm, at both sizes: "
        f"**{'met' if not behind else 'not met'}**"
        + (f" (behind on {', '.join(behind)})" if behind else "")
        + ".",
    ]
    if ours_kb and theirs_kb:
        lines.append(
            f"- A cold page downloads {min(ours_kb) / 1024:.1f}-{max(ours_kb) / 1024:.1f} MB of "
            f"ours (JavaScript gzipped), {min(theirs_kb) / 1024:.1f}-{max(theirs_kb) / 1024:.1f} "
            "MB of theirs (its bundle, and the study as JSON)."
        )
    return "\n".join(lines)


def sharing(q: dict) -> str:
    """The quickstart with and without the shared warm-up and data cache (side by side)."""
    u = q["unshared"]
    rows = [
        ["shared warm-up + data cache (default)", f"{q['wall_s']:.0f} s",
         f"{q['trials_per_hour']:.0f}", f"{q['epochs_trained']:.1f}"],
        ["neither (`--no-warmup-cache`, dataset per trial)", f"{u['wall_s']:.0f} s",
         f"{u['trials_per_hour']:.0f}", f"{u['epochs_trained']:.1f}"],
    ]  # fmt: skip
    verdict = "met" if q["speedup"] >= 1.5 else "**not met**"
    rounds = len(q["wall_s_rounds"])
    pairs = zip(q["wall_s_rounds"], u["wall_s_rounds"])
    walls = "; ".join(f"{a:.0f}/{b:.0f} s ({b / a:.2f}×)" for a, b in pairs)
    same = "identical" if q["same_values"] else "**different**"
    return (
        "\n\n"
        + table(["quickstart", "wall time", "trials per hour", "trial-epochs trained"], rows)
        + f"\n\nWall time is the median of {rounds} round{'s' * (rounds != 1)} in alternating order "
        f"(shared/neither: {walls}). **{q['speedup']:.3f}×** trials per hour (goal ≥ 1.5×: "
        f"{verdict}); the {q['finished_trials']} trial values are {same} in all runs. A perfect "
        "cache, sharing every converted run's whole dense phase to the step, would train "
        f"{q['epochs_trained_ideal']:.1f} trial-epochs: {q['work_bound']:.2f}× less work than "
        "neither, the most warm-up sharing can give at this spec's delays."
    )


def study_bench(d: dict) -> str:
    q, p = d["quickstart"], d["pruning"]
    over = q["storage_overhead_sqlite"]
    med, none = p["median"], p["none"]
    saving = 100 * (1 - med["trial_epochs"] / none["trial_epochs"])
    return (
        f"**Study costs** on a {d['machine']['cpu_count']}-core {d['machine']['cpu']} (load average "
        f"{d['machine']['load_average_end'][0]:.1f} at the end; `python benchmarks/study_bench.py`):\n\n"
        f"- `oialr study run studies/quickstart.toml`: {q['finished_trials']} trials in "
        f"{q['wall_s'] / 60:.1f} min ({q['trials_per_hour']:.0f} trials per hour); dense reached "
        f"{100 * q['dense_val_acc']:.1f} % validation accuracy, and OIALR stayed within 1 point of "
        f"it at **{100 * q['min_fraction_within_1pt']:.1f} %** of the trainable parameters.\n"
        f"- Pruning (single objective, median pruner, same sampler seed): {med['trial_epochs']} "
        f"trial-epochs instead of {none['trial_epochs']} (**{saving:.0f} % saved**), same best "
        f"value ({med['best_value']:.4f} vs {none['best_value']:.4f}).\n"
        f"- Per trial, {over['outside_training_ms']:.0f} ms ({over['outside_training_pct']:.1f} %) is "
        "spent outside training (data loading, Optuna and metrics storage, SQLite)." + sharing(q)
    )


def conv_paths(d: dict) -> str:
    rows = [[c["shape"], c["layout"], c["rank"], f"{c['factored']:.2f}", f"{c['materialised']:.2f}",
             c["auto"] + ("" if c["auto_is_faster"] else " ✗")] for c in d["convs"]]  # fmt: skip
    lenet = "; ".join(
        f"{100 * r['rank_fraction']:.0f} % rank: **{r['auto']:.2f}** (factored {r['factored']:.2f}, "
        f"materialised {r['materialised']:.2f})"
        for r in d["lenet5"]
    )
    return (
        f"**Which forward a low-rank conv runs** ({d['machine']['cpu']}, {d['machine']['threads']} "
        "threads; `python benchmarks/conv_paths.py`): forward + backward of one layer over the "
        "dense conv's, medians of alternating rounds. `auto` counts multiply-adds plus "
        f"{d['pass_cost'].get('cpu', 0)} a row for each extra pass the factored chain makes over "
        f"the output positions; it took the faster path in {d['auto_faster']} of {d['cases']} "
        "cases (✗: the slower). LeNet-5's training step, low-rank over dense (channels_last, "
        f"batch 128): {lenet}.\n\n"
        + table(
            ["conv", "layout", "rank", "factored / dense", "materialised / dense", "auto"], rows
        )
    )


def loop_overhead(d: dict) -> str:
    rows = [[r["case"], r["batch"], r["rounds"], f"{r['fit_ms']:.1f}", f"{r['plain_ms']:.1f}",
             f"**{r['ratio']:.3f}**", f"{r['ratio_min']:.3f}"] for r in d["results"]]  # fmt: skip
    goal = d["goal"]
    speedups = ", ".join(f"{m} {s:.2f}×" for m, s in d["channels_last_speedup"].items())
    verdict = (
        "met" if goal["met"] else f"**not met** ({goal['worst_case']}: {goal['worst_ratio']:.3f})"
    )
    return (
        f"**Our loop against a plain one** ({d['machine']['cpu']}, {d['machine']['threads']} "
        f"thread{'s' if d['machine']['threads'] != 1 else ''}; `python benchmarks/loop_overhead.py`): `fit`'s step time (dense mode) over a "
        "20-line PyTorch loop with the same model, AdamW, schedule, gradient clipping and "
        "batches (augmentation included), medians of alternating rounds (more for faster models, "
        f"until each arm has timed {d['settings']['seconds']:g} s); `ratio@min` compares "
        "the least disturbed windows. "
        f"Goal (≤ {goal['target_ratio']}): {verdict}. `channels_last` over the default layout, "
        f'plain loop: {speedups}; `memory_format = "auto"` (the default) uses it for '
        "convnets on the CPU.\n\n"
        + table(
            ["model", "batch", "rounds", "fit ms", "plain ms", "fit / plain", "ratio@min"], rows
        )
    )


def stability(d: dict) -> str:
    text = d.get("finding", "")
    return f"**Basis stability** (`python benchmarks/stability.py`). {text}\n\n![Basis stability per layer during dense training](docs/stability.png)"


def gpu(d: dict) -> str:
    machine = d.get("machine", {})
    dense, low = d.get("minivit_dense", {}), d.get("minivit_oialr", {})
    rows = [[name, f"{100 * r['test_acc']:.2f}", f"{r['trainable_fraction']:.3f}", f"{r['wall_time']:.0f} s"]
            for name, r in (("dense", dense), ("OIALR", low)) if r]  # fmt: skip
    # a later `step_time.py --device cuda` run (step_time_gpu.json) supersedes the check's own
    st = (load("step_time_gpu") or d.get("step_time", {})).get("results", [])
    ratios = ", ".join(f"{r['model']} {pct(r['rank_fraction'])}: {r['ratio']:.2f}" for r in st)
    tests = "GPU-marked tests passed" if d.get("machine") else ""
    study = d.get("study_time", {})
    return (
        f"**GPU** ({machine.get('device', '?')}, torch {machine.get('torch', '?')}; "
        "`benchmarks/gpu_check.sh OUTDIR WHEELDIR`): "
        f"{tests}; mini-ViT (paper shape, patch 8, depth 6, 6 heads, dim 768) on Fashion-MNIST "
        "padded to 32×32, 8 epochs, bf16:\n\n"
        + table(["mode", "test accuracy (%)", "trainable", "wall time"], rows)
        + f"\n\nStep-time ratio low-rank/dense on the GPU: {ratios}. A {study.get('trials', '?')}-trial "
        f"study with `--gpus 0` took {study.get('study_seconds', '?')} s."
        + packing(d.get("packing"))
    )


def packing(d: dict | None) -> str:
    """Trials per hour with K workers on one GPU (gpu_check.sh step 5), or why there are none."""
    if not d:
        return (
            "\n\nTrials per hour with 1, 2, 4 and 8 workers on one GPU (`benchmarks/packing.py`, "
            "step 5 of `gpu_check.sh`, goal ≥ 4× at the best K): *pending: no GPU run since it "
            "was added*."
        )
    ks = [r["workers"] for r in next(iter(d["specs"].values()))["rows"]]
    rows = []
    for name, spec in d["specs"].items():
        per_k = [f"{r['trials_per_hour']:.0f}" for r in spec["rows"]]
        rows.append([name, *per_k, f"**{spec['gain']:.2f}×**"])
    return "\n\nTrials per hour on one GPU (`benchmarks/packing.py`):\n\n" + table(
        ["spec", *(f"{k} workers" for k in ks), "best / 1 worker"], rows
    )


def reliability(d: dict) -> str:
    rows = [[f["fault"], f["outcome"], f"`{f['command']}`"] for f in d["faults"]]
    return (
        f"Faults injected and survived, with real processes and a real PostgreSQL on 127.0.0.1 "
        f"(`python benchmarks/reliability.py`): **{d['faults_survived']} of {d['faults_injected']}** "
        f"survived, **{d['bad_inputs_refused']} of {d['bad_inputs']} bad inputs** (specs, command "
        f"lines, storages, export targets) refused with exit code 2 and a one-line message, "
        f"nothing written; **{d.get('bad_links_named', 0)} of {d.get('bad_links', 0)} shared "
        f"links** to what the dashboard cannot show named in one warning with the fallback; **trials lost: {d['trials_lost']}**.\n\n"
        + table(["fault", "outcome", "reproduce"], rows)
        + (f"\n\n{d['concurrency']}" if d.get("concurrency") else "")
    )


def support_matrix(d: dict) -> str:
    rows = []
    for f in d["families"]:
        if f["status"] == "refused":
            rows.append([f["family"], "—", "refused", f["reason"].split(": ", 1)[-1]])
            continue
        reasons = "; ".join(f"{n} × {why}" for why, n in f["reasons"].items())
        rows.append(
            [f["family"], f"{f['converted']} ({', '.join(f['kinds'])})", f["left_dense"], reasons]
        )
    return (
        "Each row is a real model class built from a small config, run through every test of "
        "`tests/test_third_party.py` (function kept at conversion, loss falling through truncating "
        "updates, safetensors round trip, bit-exact resume, `to_dense`). Generated by "
        "`OIALR_SUPPORT_MATRIX=benchmarks/results/support_matrix.json pytest tests/test_third_party.py`.\n\n"
        + table(["family", "converted layers", "left dense", "why left dense"], rows)
    )


SECTIONS: dict[str, tuple[str, Callable[[dict], str], str]] = {
    "support_matrix": (
        "support_matrix",
        support_matrix,
        "OIALR_SUPPORT_MATRIX=benchmarks/results/support_matrix.json pytest tests/test_third_party.py",
    ),
    "train_runs": ("train_runs", train_runs, "python benchmarks/train_runs.py"),
    "step_time": ("step_time", step_time, "python benchmarks/step_time.py"),
    "conv_paths": ("conv_paths", conv_paths, "python benchmarks/conv_paths.py"),
    "compare": ("compare", compare, "python benchmarks/compare.py"),
    "app_scale": ("app_scale", app_scale, "python benchmarks/app_scale.py"),
    "app_browser": ("app_browser", app_browser, "python benchmarks/app_browser.py"),
    "study_bench": ("study_bench", study_bench, "python benchmarks/study_bench.py"),
    "loop_overhead": ("loop_overhead", loop_overhead, "python benchmarks/loop_overhead.py"),
    "stability": ("stability", stability, "python benchmarks/stability.py"),
    "gpu": ("gpu_check", gpu, "benchmarks/gpu_check.sh OUTDIR WHEELDIR on a GPU machine"),
    "reliability": ("reliability", reliability, "python benchmarks/reliability.py"),
}


def main() -> None:
    readme = (ROOT / "README.md").read_text()
    for section, (result, render, command) in SECTIONS.items():
        data = load(result)
        body = render(data) if data else f"*Pending: `{command}` has not been run yet.*"
        pattern = re.compile(rf"(<!-- BEGIN {section} -->\n).*?(<!-- END {section} -->)", re.S)
        readme = pattern.sub(lambda m, b=body: m.group(1) + b + "\n" + m.group(2), readme)
    (ROOT / "README.md").write_text(readme)
    print("README.md tables rebuilt")


if __name__ == "__main__":
    main()
