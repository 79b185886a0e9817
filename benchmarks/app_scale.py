"""Dashboard speed at scale: a 1,000-trial study with about 10^6 metric rows.

Builds the study through the real store API (``MetricsStore`` + Optuna, trials added with
``optuna.trial.create_trial`` + ``study.add_trials`` for speed) into a temporary SQLite file, then
times what each page does on a cold render: its queries (``app/queries.py``, called directly,
bypassing Streamlit's caches) and its figure builders (``app/charts.py``), and the size of the
figures it sends to the browser. A live poll reads only the rows a writer appended since the
previous poll.

Goals: <= 1 s per page, <= 100 ms per live poll, figures that stay small.

    python benchmarks/app_scale.py            # 1,000 trials, ~10^6 rows (about a minute to build)
    python benchmarks/app_scale.py --quick    # 100 trials, ~10^5 rows: a smoke run

Writes ``benchmarks/results/app_scale.json`` (``app_scale_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy as sa
import streamlit  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]

# Importing app.queries outside `streamlit run` logs one "No runtime found" line per cache.
logging.getLogger("streamlit.runtime.caching.cache_data_api").setLevel(logging.ERROR)

from app import charts, optuna_reads, queries  # noqa: E402
from oialr.metrics_reader import MetricsReader  # noqa: E402
from oialr.metrics_store import MetricsStore  # noqa: E402
from oialr.records import spectrum_ranks  # noqa: E402

PAGE_GOAL_S = 1.0
POLL_GOAL_S = 0.100
# (module name, kind, rows x cols of the weight): 8 converted layers of a small ViT, full rank 256.
LAYERS = [
    (name, kind, rows, 256)
    for i in range(4)
    for name, kind, rows in ((f"blocks.{i}.attn", "MHA in-proj", 768), (f"blocks.{i}.mlp.0", "Linear", 1024))
]  # fmt: skip
FULL_RANK = 256
SCALE_DISTRIBUTIONS = {
    "delay": optuna.distributions.IntDistribution(100, 5000, log=True),
    "update_freq": optuna.distributions.IntDistribution(10, 1000, log=True),
    "sigma_cutoff": optuna.distributions.FloatDistribution(0.01, 0.5, log=True),
    "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
}


# ---------------------------------------------------------------------------------------------
# Building the study
# ---------------------------------------------------------------------------------------------


def build(
    url: str,
    n_trials: int,
    steps_per_run: int,
    live_steps: int,
    seed: int = 0,
    *,
    metrics_trials: int | None = None,
) -> dict:
    """Writes the study and its runs' metrics; returns counts and timings.

    Optuna's tables are written in bulk with Optuna's own table definitions (``add_trials``
    costs a transaction per trial: minutes at 10,000); the metrics go through the real
    :class:`MetricsStore`. With ``metrics_trials``, only the last that many trials (the running
    one among them) get a run with metrics, for fixtures that need many trials, not many rows.
    """
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    store = MetricsStore(url, flush_rows=50_000, flush_seconds=1e9)  # bulk loading: big batches
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=url, study_name="scale", directions=["maximize", "minimize"]
    )
    study.set_user_attr("oialr.spec", {"name": "scale", "model": "minivit", "dataset": "cifar10"})
    study.set_user_attr("oialr.objectives", ["val_acc", "trainable_fraction"])
    first_with_metrics = 0 if metrics_trials is None else max(0, n_trials - metrics_trials)
    trials, rows = [], 0
    for number in range(n_trials):
        trial = _synthetic_trial(number, n_trials, rng)
        if number >= first_with_metrics:
            run_id = store.create_run(
                name=f"scale-{number}", mode=trial["attrs"]["mode"], model="minivit",
                dataset="cifar10", config={"params": trial["params"]}, study_name="scale",
                trial_number=number, trial_id=number + 1,  # trial ids count from 1 in a new file
            )  # fmt: skip
            trial["attrs"]["run_id"] = run_id
            live = trial["state"] == optuna.trial.TrialState.RUNNING
            n_steps = live_steps if live else steps_per_run
            rows += _write_run(store, run_id, n_steps, trial["params"], rng, finished=not live)
        trials.append(trial)
    store.flush()
    metrics_s = time.perf_counter() - started
    _write_trials(url, study._study_id, trials)
    store.close()
    return {"rows": rows, "build_s": time.perf_counter() - started, "metrics_s": metrics_s}


def _synthetic_trial(number: int, n_trials: int, rng) -> dict:
    """One trial: a dense baseline first, two fixed-rank ones, then OIALR trials whose accuracy
    falls as the cutoff (and so the fraction) shrinks; ~3 % fail, the last one is running."""
    state = optuna.trial.TrialState.COMPLETE
    mode = "dense" if number == 0 else "fixed-rank" if number in (1, 2) else "oialr"
    if number == n_trials - 1:
        state = optuna.trial.TrialState.RUNNING
    elif number > 2 and rng.random() < 0.03:
        state = optuna.trial.TrialState.FAIL
    params = {}
    if mode == "oialr":
        params = {
            "delay": int(np.exp(rng.uniform(np.log(100), np.log(5000)))),
            "update_freq": int(np.exp(rng.uniform(np.log(10), np.log(1000)))),
            "sigma_cutoff": float(np.exp(rng.uniform(np.log(0.01), np.log(0.5)))),
            "lr": float(np.exp(rng.uniform(np.log(1e-4), np.log(1e-2)))),
        }
    cut = params.get("sigma_cutoff", 0.0)
    fraction = {"dense": 1.0, "fixed-rank": 0.25}.get(mode)
    if fraction is None:
        fraction = float(np.clip(0.9 - 1.6 * cut + rng.normal(0, 0.05), 0.02, 1.0))
    val_acc = float(np.clip(0.92 - 0.25 * (1 - fraction) ** 3 + rng.normal(0, 0.01), 0, 1))
    attrs: dict[str, Any] = {"mode": mode, "command": f"oialr train #{number}"}
    values = None
    wall = float(rng.uniform(60, 600))
    if state == optuna.trial.TrialState.COMPLETE:
        attrs |= {
            "val_acc": val_acc,
            "test_acc": val_acc - abs(rng.normal(0, 0.005)),
            "trainable_fraction": fraction,
            "stored_fraction": min(1.5, fraction * 1.8),
            "wall_time": wall,
        }
        values = [val_acc, fraction]
    elif state == optuna.trial.TrialState.FAIL:
        attrs["fail_reason"] = "TrainingDiverged: loss became nan at step 812"
    # Four workers: a trial starts every wall/4 on average; the study ends now.
    start = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(
        seconds=90.0 * (n_trials - number)
    )
    done = None if state == optuna.trial.TrialState.RUNNING else start + timedelta(seconds=wall)
    return {"number": number, "state": state, "values": values, "params": params,
            "attrs": attrs, "start": start, "complete": done}  # fmt: skip


def _write_trials(url: str, study_id: int, trials: list[dict]) -> None:
    """Optuna's trials, values, params and user attrs, one executemany per table."""
    from optuna.storages._rdb import models

    values, params, attrs, rows = [], [], [], []
    finite = models.TrialValueModel.TrialValueType.FINITE
    for t in trials:
        trial_id = t["number"] + 1
        rows.append({"trial_id": trial_id, "number": t["number"], "study_id": study_id,
                     "state": t["state"], "datetime_start": t["start"],
                     "datetime_complete": t["complete"]})  # fmt: skip
        for objective, value in enumerate(t["values"] or ()):
            values.append({"trial_id": trial_id, "objective": objective, "value": value,
                           "value_type": finite})  # fmt: skip
        for name, value in t["params"].items():
            dist = SCALE_DISTRIBUTIONS[name]
            params.append({"trial_id": trial_id, "param_name": name,
                           "param_value": dist.to_internal_repr(value),
                           "distribution_json": optuna.distributions.distribution_to_json(dist)})  # fmt: skip
        for key, value in t["attrs"].items():
            attrs.append({"trial_id": trial_id, "key": key, "value_json": json.dumps(value)})
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for model, batch in ((models.TrialModel, rows), (models.TrialValueModel, values),
                             (models.TrialParamModel, params),
                             (models.TrialUserAttributeModel, attrs)):  # fmt: skip
            if batch:
                conn.execute(sa.insert(model.__table__), batch)
    engine.dispose()


def _spectrum(rank: int, rng) -> np.ndarray:
    """A plausible spectrum of Σ: a few large values, then a decaying tail (largest first)."""
    decay = np.exp(-np.arange(rank) / rng.uniform(20, 80)) + 0.02 * rng.random(rank)
    return np.sort(decay * rng.uniform(2, 6))[::-1]


def _write_run(store: MetricsStore, run_id: int, n_steps: int, params: dict, rng, finished: bool):
    """Steps every 10th optimizer step, 10 epochs, a rank update per layer every update_freq
    steps after the delay (with Σ's whole spectrum, cut by the trial's cutoff) and warm-up
    stability rows."""
    log_every = 10
    for step in range(log_every, n_steps * log_every + 1, log_every):
        store.log_step(run_id, step, 2.3 * np.exp(-step / 4000) + 0.1, 1e-3, 0.05)
    total = n_steps * log_every
    for epoch in range(1, 11):
        store.log_epoch(
            run_id,
            epoch=epoch,
            step=total * epoch // 10,
            train_loss=1.0 / epoch,
            train_acc=0.5 + 0.04 * epoch,
            val_loss=1.1 / epoch,
            val_acc=0.45 + 0.04 * epoch,
            trainable_fraction=1.0 - 0.06 * epoch,
            stored_fraction=1.0 - 0.05 * epoch,
            phase="low-rank" if epoch > 2 else "warm-up",
            time=30.0 * epoch,
        )
    rows = n_steps + 10
    if finished:
        store.finish_run(run_id, "complete", result={"val_acc": 0.9})
    if not params:
        return rows
    delay, every = params["delay"], max(params["update_freq"], total // 12)
    ranks = {name: FULL_RANK for name, *_ in LAYERS}
    for step in range(every, delay, every):
        store.log_stability(run_id, step, {name: 1 - 0.5 * every / step for name, *_ in LAYERS})
        rows += len(LAYERS)
    for k, step in enumerate(range(delay, total, every)):
        records = []
        for name, kind, m, n in LAYERS:
            before = ranks[name]
            sigma = _spectrum(before, rng)
            cutoff = float(sigma[0] * params["sigma_cutoff"])
            keep = int((sigma >= cutoff).sum())
            ranks[name] = after = max(8, keep, before - before // 2)  # at most half per update
            effective, stable = spectrum_ranks(sigma)
            records.append(
                {"step": step, "layer": name, "event": "convert" if k == 0 else "update",
                 "rank_before": before, "rank_after": after, "n": n,
                 "rank_fraction": after / n, "trainable": after**2, "stored": after * (m + n + after),
                 "rule": "cutoff" if after == keep else "cap" if keep < after else "none",
                 "stability": None if k == 0 else float(rng.uniform(0.9, 1)), "cutoff": cutoff,
                 "sigma": sigma.astype(np.float32), "kind": kind, "rows": m, "cols": n,
                 "effective_rank": effective, "stable_rank": stable}
            )  # fmt: skip
        store.log_layers(run_id, records)
        rows += len(records)
    return rows


# ---------------------------------------------------------------------------------------------
# Timing the pages
# ---------------------------------------------------------------------------------------------


class Page:
    """Times query and figure phases of one page render and collects its figures."""

    def __init__(self) -> None:
        self.query_s = 0.0
        self.figure_s = 0.0
        self.figures: dict[str, int] = {}

    def query(self, fn: Callable, *args, **kwargs):
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        self.query_s += time.perf_counter() - started
        return out

    def figure(self, name: str, fn: Callable, *args, **kwargs):
        started = time.perf_counter()
        fig = fn(*args, **kwargs)
        size = len(fig.to_json())  # what st.plotly_chart ships to the browser
        self.figure_s += time.perf_counter() - started
        self.figures[name] = size
        return fig


def page_studies(engine, page: Page) -> None:
    page.query(optuna_reads.list_studies, engine)  # a table: no figure


def _trials(engine, page: Page):
    studies = page.query(optuna_reads.list_studies, engine)  # the sidebar's study selector
    return page.query(optuna_reads.load_study_trials, engine, int(studies["study_id"].iloc[0]))


def page_pareto(engine, page: Page) -> None:
    trials = _trials(engine, page)
    done = trials.frame[trials.frame["state"] == "COMPLETE"]
    params = [queries.PARAM_PREFIX + p for p in trials.params]
    page.figure(
        "pareto", charts.pareto_figure, [("scale", done, params)], color=params[0], show_test=True
    )  # the 3-D view is drawn on demand only


def page_parameters(engine, page: Page) -> None:
    trials = _trials(engine, page)
    params = [queries.PARAM_PREFIX + p for p in trials.params]
    done = trials.frame[
        (trials.frame["state"] == "COMPLETE") & trials.frame[params].notna().any(axis=1)
    ]
    logs = [queries.PARAM_PREFIX + p for p in trials.params if trials.is_log(p)]
    page.figure("slices", charts.slices_figure, done, params, trials.objectives, logs)
    columns = params + trials.objectives
    page.figure("parallel", charts.parallel_figure, done, columns, "val_acc", log_columns=logs)
    importances = page.query(optuna_reads.param_importances, trials)
    page.figure("importance", charts.importance_figure, importances)
    page.figure(
        "contour", charts.contour_figure, done, params[0], params[1], "val_acc",
        log_x=True, log_y=True,
    )  # fmt: skip


def page_trial(engine, page: Page) -> None:
    trials = _trials(engine, page)
    reader = MetricsReader(engine)
    runs = page.query(reader.latest_runs, trials.study_name, full=False)
    run_ids = queries.trial_runs(trials, runs)
    done = trials.frame[trials.frame["state"] == "COMPLETE"]
    best = int(done.loc[done["val_acc"].idxmax(), "number"])
    page.query(reader.layer_summary, int(run_ids[best]))
    history = page.query(reader.layer_history, [int(run_ids[best])])
    row = page.query(reader.layer_record, int(history["id"].iloc[-1]))
    page.figure(
        "spectrum", charts.spectrum_figure, row["sigma"], cutoff=row["cutoff"],
        rank=row["rank_after"], title="Σ",
    )  # fmt: skip
    page.figure("rank_measures", charts.rank_measures_figure, history)
    chosen = [int(run_ids[n]) for n in (best, 1, 2)]  # against the fixed-rank baselines
    epochs = page.query(reader.epochs_of_runs, chosen)
    page.figure("compare", charts.compare_figure, epochs, {r: str(r) for r in chosen})
    together = page.query(reader.layer_history, chosen)
    page.figure("rank_compare", charts.rank_compare_figure, together, {r: str(r) for r in chosen})


def page_live(engine, page: Page, run_id: int) -> dict:
    trials = _trials(engine, page)
    reader = MetricsReader(engine)
    page.query(reader.latest_runs, trials.study_name, full=False)
    tick = page.query(queries.poll, reader, run_id, {})  # cold: the tail of every table
    window = queries.extend_window(None, run_id, tick)
    frames, run = window["frames"], window["run"]
    steps, epochs = frames["steps"], frames["epochs"]
    layers, warmup = frames["layers"], frames["stability"]
    updates = layers.loc[layers["event"] == "update", "step"]
    conversion = run["conversion_step"]
    page.figure(
        "curves",
        charts.curves_figure,
        steps,
        epochs,
        update_steps=updates,
        conversion_step=conversion,
    )
    page.figure("fractions", charts.fraction_figure, epochs)
    page.figure("rank_heatmap", charts.rank_heatmap, layers)
    page.figure("stability", charts.stability_figure, warmup, layers, conversion_step=conversion)
    page.figure("rank_measures", charts.rank_measures_figure, layers)
    row = page.query(reader.layer_record, int(layers["id"].iloc[-1]))
    page.figure(
        "spectrum",
        charts.spectrum_figure,
        row["sigma"],
        cutoff=row["cutoff"],
        rank=row["rank_after"],
        title="Σ",
    )
    return window


def live_polls(url: str, engine, run_id: int, window: dict, n: int = 20) -> list[float]:
    """A writer appends 20 logged steps and a layer update between polls, as a fast trainer
    would in 2 s; each poll reads only what is new and extends the bounded window."""
    writer = MetricsStore(url, flush_rows=10_000, flush_seconds=1e9)
    step = int(window["frames"]["steps"]["step"].iloc[-1])
    reader = MetricsReader(engine)
    times = []
    for _ in range(n):
        for _ in range(20):
            step += 10
            writer.log_step(run_id, step, 0.5, 1e-3, 0.05)
        writer.log_layers(
            run_id,
            [
                {"step": step, "layer": layer, "event": "update", "rank_before": 64,
                 "rank_after": 60, "n": n, "rank_fraction": 60 / n, "trainable": 3600,
                 "stored": 30780, "rule": "cutoff", "stability": 0.99, "cutoff": 0.1,
                 "sigma": np.linspace(1.0, 0.05, 64), "kind": kind, "rows": m, "cols": n}
                for layer, kind, m, n in LAYERS
            ],
        )  # fmt: skip
        writer.flush()
        started = time.perf_counter()
        tick = queries.poll(reader, run_id, window["after"])
        window = queries.extend_window(window, run_id, tick)
        times.append(time.perf_counter() - started)
        assert len(tick["steps"]) == 20, "a poll must return exactly the new rows"
    writer.close()
    return times


def _count_rows(url: str) -> int:
    engine = queries.open_engine(url)
    with engine.connect() as conn:
        tables = ("oialr_steps", "oialr_epochs", "oialr_layers", "oialr_stability")
        count = sum(conn.exec_driver_sql(f"SELECT COUNT(*) FROM {t}").scalar() for t in tables)
    engine.dispose()
    return int(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 trials, ~10^5 rows")
    parser.add_argument("--repeat", type=int, default=3, help="renders per page (median kept)")
    parser.add_argument(
        "--keep", help="database path to keep (and reuse if it exists) instead of a temp file"
    )
    args = parser.parse_args()

    n_trials = 100 if args.quick else 1000
    steps_per_run = 800  # logged rows per finished run (every 10th of 8,000 optimizer steps)
    live_steps = 20_000 if args.quick else 100_000
    folder = tempfile.TemporaryDirectory(prefix="oialr-app-scale-")
    path = Path(args.keep) if args.keep else Path(folder.name) / "scale.db"
    url = f"sqlite:///{path}"
    if path.exists():
        print(f"reusing {path}", flush=True)
        built = {"rows": _count_rows(url), "build_s": float("nan")}
    else:
        print(f"building {n_trials} trials into {path} ...", flush=True)
        built = build(url, n_trials, steps_per_run, live_steps)
    size_mb = path.stat().st_size / 2**20
    print(
        f"  {built['rows']:,} metric rows, {size_mb:.0f} MB, {built['build_s']:.1f} s", flush=True
    )

    engine = queries.open_engine(url)
    live_run = int(MetricsReader(engine).latest_runs("scale", full=False)["id"].iloc[-1])
    renders = {
        "studies": lambda p: page_studies(engine, p),
        "live": lambda p: page_live(engine, p, live_run),
        "pareto": lambda p: page_pareto(engine, p),
        "parameters": lambda p: page_parameters(engine, p),
        "trial": lambda p: page_trial(engine, p),
    }
    results = {}
    for name, render in renders.items():
        samples = []
        for _ in range(args.repeat):
            page = Page()
            render(page)
            samples.append(page)
        total = [p.query_s + p.figure_s for p in samples]
        median = samples[int(np.argsort(total)[len(total) // 2])]
        results[name] = {
            "query_ms": round(median.query_s * 1e3, 1),
            "figure_ms": round(median.figure_s * 1e3, 1),
            "total_ms": round((median.query_s + median.figure_s) * 1e3, 1),
            "first_ms": round(total[0] * 1e3, 1),
            "figure_bytes": median.figures,
            "ok": median.query_s + median.figure_s <= PAGE_GOAL_S,
        }

    window = page_live(engine, Page(), live_run)
    polls = live_polls(url, engine, live_run, window)
    poll = {
        "median_ms": round(statistics.median(polls) * 1e3, 2),
        "max_ms": round(max(polls) * 1e3, 2),
        "polls": len(polls),
        "ok": statistics.median(polls) <= POLL_GOAL_S,
    }

    print()
    print(
        f"{'page':<11} {'queries':>9} {'figures':>9} {'total':>9} {'1st':>9} {'figures':>10}  goal"
    )
    for name, r in results.items():
        kb = sum(r["figure_bytes"].values()) / 1024
        mark = "ok" if r["ok"] else "SLOW"
        print(
            f"{name:<11} {r['query_ms']:>7.0f}ms {r['figure_ms']:>7.0f}ms {r['total_ms']:>7.0f}ms"
            f" {r['first_ms']:>7.0f}ms {kb:>8.0f}KB  {mark} (<= {PAGE_GOAL_S * 1e3:.0f} ms)"
        )
    print(
        f"live poll   median {poll['median_ms']:.1f} ms, max {poll['max_ms']:.1f} ms over "
        f"{poll['polls']} polls  {'ok' if poll['ok'] else 'SLOW'} (<= {POLL_GOAL_S * 1e3:.0f} ms)"
    )

    out = (
        ROOT
        / "benchmarks"
        / "results"
        / ("app_scale_quick.json" if args.quick else "app_scale.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "app_scale",
        "goal": {"page_s": PAGE_GOAL_S, "poll_s": POLL_GOAL_S},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "optuna": optuna.__version__,
        },
        "data": {
            "trials": n_trials,
            "metric_rows": built["rows"],
            "live_run_steps": live_steps,
            "db_mb": round(size_mb, 1),
            "build_s": round(built["build_s"], 1) if built["build_s"] == built["build_s"] else None,
        },
        "pages": results,
        "live_poll": poll,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")
    engine.dispose()
    folder.cleanup()


if __name__ == "__main__":
    main()
