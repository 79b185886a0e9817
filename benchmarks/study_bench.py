"""Studies on this CPU: quickstart wall time, what pruning saves, storage overhead per trial.

Three measurements, all through the real ``oialr study run`` code path:

1. **quickstart**: ``python -m oialr study run studies/quickstart.toml --storage sqlite:///… --quiet``
   as a subprocess (all 20 trials unless ``--quickstart-trials``), side by side: as shipped
   (shared dense warm-up, dataset loaded once per worker) and with both off, in alternating
   order for ``--quickstart-rounds`` rounds (default 2; wall time the median). Wall time,
   trials per hour, trial-epochs actually trained (steps not taken from a warm-up snapshot),
   whether both give the same trial values, the best validation accuracy and the smallest
   trainable fraction within 1 point of the dense baseline.
2. **pruning**: ``tests/specs/tiny.toml`` made single-objective (``objective.kind = "accuracy"``,
   6 epochs, a wide ``lr`` search so that some trials are bad, 12 trials, random sampler with a
   fixed seed) run twice as subprocesses, pruner ``median`` vs ``none``. With the random sampler
   and the same seed both studies draw the same 12 configurations, so the difference is pruning
   alone. Trial-epochs are the rows of ``oialr_epochs`` of the study's runs.
3. **storage overhead**: per trial, the trial's wall time (Optuna's ``datetime_complete -
   datetime_start``) minus the run's own training time (the trial's ``wall_time`` attr), median
   over trials. That difference also holds data loading and model building, so the same study is
   run in this process with the storage layer instrumented: time inside Optuna's RDB sessions
   and inside ``MetricsStore`` transactions (main thread only, so heartbeats are not counted),
   and the setup time inside ``fit`` before training starts. On SQLite, and on PostgreSQL when a
   throwaway server can be started (``tests/pg_server.py``).

Training processes get ``--threads`` torch threads (default 1, via ``OMP_NUM_THREADS``): on a
CPU shared with other jobs torch's default of one thread per core oversubscribes it, and a
tiny run measured 20-40x slower that way here. ``--threads 0`` keeps torch's default.

    python benchmarks/study_bench.py              # full: ~10-15 min on a busy 2-core CPU
    python benchmarks/study_bench.py --quick      # smoke run, tiny sizes (< 1 min)

Writes ``benchmarks/results/study_bench.json`` (``--out`` to change). Timings on a shared CPU
vary; the JSON records the load average at start and end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
import torch
from common import RESULTS_DIR, machine_info, write_json

ROOT = Path(__file__).resolve().parents[1]

QUICKSTART = ROOT / "studies" / "quickstart.toml"
TINY = ROOT / "tests" / "specs" / "tiny.toml"


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def thread_env(threads: int) -> dict[str, str]:
    """The environment for training subprocesses: ``OMP_NUM_THREADS`` unless ``threads`` is 0."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


THREADS = 1  # set from --threads in main()


# The product without its sharing: the dataset reloaded for every trial (the loader under the
# per-process cache), and --no-warmup-cache.
UNSHARED = "import oialr.train as t, sys; t.load_data = t._load_data; from oialr.cli import main; sys.exit(main())"


def run_cli(
    spec: Path, url: str, sets: list[str], n_trials: int | None = None, *,
    shared: bool = True, cache: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``oialr study run`` as a subprocess; returns wall time, exit code and stderr's tail."""
    program = ["-m", "oialr"] if shared else ["-c", UNSHARED]
    cmd = [sys.executable, *program, "study", "run", str(spec), "--storage", url, "--quiet"]
    if cache is not None:
        cmd += ["--warmup-cache", str(cache)] if shared else ["--no-warmup-cache"]
    if n_trials:
        cmd += ["--n-trials", str(n_trials)]
    cmd += [f"--set={item}" for item in sets]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=thread_env(THREADS))
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return {"wall_s": wall, "returncode": proc.returncode, "command": " ".join(cmd[1:])}


def only_study(url: str) -> optuna.Study:
    (summary,) = optuna.get_all_study_summaries(url, include_best_trial=False)
    return optuna.load_study(study_name=summary.study_name, storage=url)


def study_scalar(url: str, study_name: str, query: str) -> int:
    """One number about the study's runs from the metrics tables (``:name`` is the study)."""
    from oialr.metrics_schema import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(query), {"name": study_name}).scalar() or 0)
    finally:
        engine.dispose()


def epochs_trained(url: str, study_name: str) -> int:
    """Rows of ``oialr_epochs`` over every run of the study (pruned runs included)."""
    return study_scalar(url, study_name, "SELECT COUNT(e.id) FROM oialr_epochs e JOIN oialr_runs r "
                        "ON r.id = e.run_id WHERE r.study_name = :name")  # fmt: skip


def dense_steps_before_conversion(url: str, study_name: str) -> int:
    """Steps every converted run trained dense: what a perfect warm-up cache could share."""
    return study_scalar(url, study_name, "SELECT SUM(conversion_step) FROM oialr_runs "
                        "WHERE study_name = :name AND conversion_step IS NOT NULL")  # fmt: skip


def trial_seconds(t: optuna.trial.FrozenTrial) -> float:
    return (t.datetime_complete - t.datetime_start).total_seconds()


def outside_training(trials: list[optuna.trial.FrozenTrial]) -> dict[str, Any]:
    """Median (trial wall - training wall) over complete trials: the README's definition."""
    rows = [
        (trial_seconds(t), t.user_attrs["wall_time"])
        for t in trials
        if t.state == optuna.trial.TrialState.COMPLETE and "wall_time" in t.user_attrs
    ]
    if not rows:
        return {"trials": 0}
    outside = [total - train for total, train in rows]
    return {
        "trials": len(rows),
        "trial_s": round(statistics.median(r[0] for r in rows), 3),
        "train_s": round(statistics.median(r[1] for r in rows), 3),
        "outside_training_ms": round(statistics.median(outside) * 1e3, 1),
        "outside_training_pct": round(
            100 * statistics.median(o / total for o, (total, _) in zip(outside, rows)), 2
        ),
    }


def summarise(study: optuna.Study) -> dict[str, Any]:
    """States, best accuracy, dense baseline and the smallest fraction within 1 point of it."""
    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    accs = [t.user_attrs.get("val_acc", math.nan) for t in done]
    dense = [t.user_attrs["val_acc"] for t in done if t.user_attrs.get("mode") == "dense"]
    out: dict[str, Any] = {
        "states": {k: v for k, v in states.items() if v},
        "best_val_acc": max(accs) if accs else None,
        "dense_val_acc": max(dense) if dense else None,
        "min_fraction_within_1pt": None,
        "trial_within_1pt": None,
    }
    if dense:
        ok = [
            t
            for t in done
            if t.user_attrs.get("mode") != "dense" and t.user_attrs["val_acc"] >= max(dense) - 0.01
        ]
        if ok:
            best = min(ok, key=lambda t: t.user_attrs["trainable_fraction"])
            out["min_fraction_within_1pt"] = best.user_attrs["trainable_fraction"]
            out["trial_within_1pt"] = {
                "number": best.number,
                "mode": best.user_attrs.get("mode"),
                "val_acc": best.user_attrs["val_acc"],
                "test_acc": best.user_attrs.get("test_acc"),
                "params": best.params,
            }
    return out


# ---------------------------------------------------------------------------------------------
# 1. quickstart
# ---------------------------------------------------------------------------------------------


def bench_quickstart(
    tmp: Path, n_trials: int | None, sets: list[str], rounds: int
) -> dict[str, Any]:
    """The quickstart side by side: as shipped (shared dense warm-up, dataset loaded once per
    worker) and with both switched off, ``rounds`` times in alternating order (each shared run
    on an empty cache), so load drift on a shared CPU hits both alike; wall time is the median
    over rounds. The same sampler seed makes the same trials when sharing changes no result."""
    arms, walls, per_epoch = {}, {"unshared": [], "shared": []}, steps_per_epoch(sets)
    for r in range(rounds):
        for arm in ("unshared", "shared") if r % 2 == 0 else ("shared", "unshared"):
            url = f"sqlite:///{tmp / f'quickstart-{arm}-{r}.db'}"
            print(f"quickstart ({arm}, round {r + 1}/{rounds}): "
                  f"{QUICKSTART.relative_to(ROOT)} {' '.join(sets)} ...", flush=True)  # fmt: skip
            ran = run_cli(QUICKSTART, url, sets, n_trials, shared=arm == "shared",
                          cache=tmp / f"warmup-{r}")  # fmt: skip
            walls[arm].append(ran["wall_s"])
            study = only_study(url)
            trials = study.get_trials(deepcopy=False)
            values = [t.values for t in sorted(trials, key=lambda t: t.number)]
            if arm in arms:  # a later round: only its wall time and its values are new
                if arms[arm]["values"] != values:
                    raise SystemExit(f"quickstart ({arm}): round {r + 1} gave other trial values")
                continue
            summary = summarise(study)
            arms[arm] = {
                "command": ran["command"],
                "finished_trials": summary["states"].get("complete", 0)
                + summary["states"].get("pruned", 0),
                "epochs_recorded": epochs_trained(url, study.study_name),
                "epochs_trained": round(steps_trained(trials) / per_epoch, 1),
                **summary,
                "storage_overhead_sqlite": outside_training(trials),
                "values": values,
                "shareable_steps": dense_steps_before_conversion(url, study.study_name),
            }
    for arm, times in walls.items():
        wall = statistics.median(times)
        arms[arm] |= {"wall_s": round(wall, 1), "wall_s_rounds": [round(w, 1) for w in times],
                      "trials_per_hour": round(arms[arm]["finished_trials"] / wall * 3600, 1)}  # fmt: skip
    shared, unshared = arms["shared"], arms["unshared"]
    # The most any cache could save: every converted run's whole dense phase, to the step.
    shareable = shared.pop("shareable_steps") / per_epoch
    ideal = unshared["epochs_trained"] - shareable
    del unshared["shareable_steps"]
    return {
        "data_load_ms": data_load_ms(QUICKSTART, sets),
        "overrides": sets,
        **{k: v for k, v in shared.items() if k != "values"},
        "unshared": {k: v for k, v in unshared.items() if k != "values"},
        "same_values": shared.pop("values") == unshared.pop("values"),
        "speedup": shared["trials_per_hour"] / unshared["trials_per_hour"],  # judged unrounded
        "epochs_trained_ideal": round(ideal, 1),
        "work_bound": round(unshared["epochs_trained"] / ideal, 2),
    }


def steps_trained(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Training steps the study's trials ran themselves (not taken from a warm-up snapshot)."""
    return sum(t.user_attrs.get("steps_trained", 0) for t in trials)


def steps_per_epoch(sets: list[str]) -> int:
    from oialr.spec import load_spec
    from oialr.train import load_data

    cfg = load_spec(QUICKSTART, sets).run_config({}, "dense")
    return load_data(cfg).steps_per_epoch(cfg.batch_size, drop_last=True)


def data_load_ms(spec_path: Path, sets: list[str]) -> float:
    """Median time to load the spec's dataset as ``fit`` does at the start of every trial."""
    from oialr.data import load_dataset
    from oialr.spec import load_spec

    cfg = load_spec(spec_path, sets).run_config({}, "dense")
    times = []
    for _ in range(3):
        started = time.perf_counter()
        load_dataset(cfg.dataset, data_dir=cfg.data_dir, val_fraction=cfg.val_fraction,
                     subset=cfg.subset, seed=cfg.seed, pad_to=cfg.pad_to)  # fmt: skip
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1e3, 1)


# ---------------------------------------------------------------------------------------------
# 2. pruning
# ---------------------------------------------------------------------------------------------


def pruning_sets(epochs: int, n_trials: int, seed: int, pruner: str) -> list[str]:
    return [
        'objective.kind="accuracy"',
        f"run.epochs={epochs}",
        "search.lr={low=1e-5, high=0.3, log=true}",  # AdamW: both ends train badly
        f"budget.n_trials={n_trials}",
        'sampler.name="random"',  # same seed + random = the same configurations in both
        f"sampler.seed={seed}",
        f'pruner.name="{pruner}"',
    ]


def bench_pruning(tmp: Path, epochs: int, n_trials: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pruner in ("median", "none"):
        url = f"sqlite:///{tmp / f'prune-{pruner}.db'}"
        sets = pruning_sets(epochs, n_trials, seed, pruner)
        print(f"pruning: pruner={pruner}, {n_trials} trials x {epochs} epochs ...", flush=True)
        ran = run_cli(TINY, url, sets)
        study = only_study(url)
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = max(done, key=lambda t: t.value) if done else None
        out[pruner] = {
            "wall_s": round(ran["wall_s"], 1),
            "trial_epochs": epochs_trained(url, study.study_name),
            "states": {
                s.name.lower(): sum(t.state == s for t in trials)
                for s in optuna.trial.TrialState
                if any(t.state == s for t in trials)
            },
            "best_value": best.value if best else None,
            "best_trial": {"number": best.number, "params": best.params} if best else None,
            "pruned_at_epoch": {
                t.number: max(t.intermediate_values)
                for t in trials
                if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values
            },
            "configs": [t.params for t in trials],
        }
    med, none = out["median"], out["none"]
    out["same_configurations"] = med.pop("configs") == none.pop("configs")
    out["overrides"] = pruning_sets(epochs, n_trials, seed, "<median|none>")
    out["saving_epochs_pct"] = round(100 * (1 - med["trial_epochs"] / none["trial_epochs"]), 1)
    out["saving_wall_pct"] = round(100 * (1 - med["wall_s"] / none["wall_s"]), 1)
    return out


# ---------------------------------------------------------------------------------------------
# 3. storage overhead, instrumented
# ---------------------------------------------------------------------------------------------


class StorageTimer:
    """Accumulates main-thread time inside Optuna's RDB sessions and MetricsStore transactions,
    and per-trial ``fit`` totals (setup = fit's wall time minus the run's training time)."""

    def __init__(self) -> None:
        self.seconds = {"optuna": 0.0, "metrics": 0.0}
        self.calls = {"optuna": 0, "metrics": 0}
        self.marks: list[dict[str, float]] = []  # cumulative totals at each trial's end
        self.fits: dict[int, tuple[float, float]] = {}  # trial number -> (fit total, train)
        self._main = threading.main_thread()

    def wrap(self, kind: str, factory):
        timer = self

        @contextmanager
        def timed(*args, **kwargs):
            if threading.current_thread() is not timer._main:
                with factory(*args, **kwargs) as value:
                    yield value
                return
            started = time.perf_counter()
            try:
                with factory(*args, **kwargs) as value:
                    yield value
            finally:
                timer.seconds[kind] += time.perf_counter() - started
                timer.calls[kind] += 1

        return timed

    def mark(self, *_args) -> None:
        self.marks.append({**self.seconds, **{f"{k}_calls": v for k, v in self.calls.items()}})


@contextmanager
def instrumented(timer: StorageTimer):
    import optuna.storages._rdb.storage as rdb

    import oialr.train as train_module  # where the objective takes fit from, at each trial
    from oialr.metrics_store import MetricsStore

    original = rdb._create_scoped_session, MetricsStore._transaction, train_module.fit

    def fit(cfg, recorder, **kwargs):
        started = time.perf_counter()
        result = original[2](cfg, recorder, **kwargs)
        timer.fits[recorder.trial.number] = (time.perf_counter() - started, result.wall_time)
        return result

    rdb._create_scoped_session = timer.wrap("optuna", original[0])
    MetricsStore._transaction = timer.wrap("metrics", original[1])
    train_module.fit = fit
    try:
        yield
    finally:
        rdb._create_scoped_session, MetricsStore._transaction, train_module.fit = original


def bench_storage_backend(url: str, sets: list[str], n_trials: int) -> dict[str, Any]:
    from oialr.spec import load_spec
    from oialr.study import run_worker

    spec = load_spec(TINY, sets)
    timer = StorageTimer()
    with instrumented(timer):
        timer.mark()
        study = run_worker(spec, url, n_trials=n_trials, callbacks=[timer.mark])
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    rows = []
    # marks[i + 1] - marks[i] is the storage time from one trial's end to the next's: the
    # sampler's reads, the trial's own writes and its end (callbacks run after the tell).
    for prev, now, t in zip(timer.marks, timer.marks[1:], trials):
        if t.state != optuna.trial.TrialState.COMPLETE or t.number not in timer.fits:
            continue
        fit_s, train_s = timer.fits[t.number]
        total = trial_seconds(t)
        rows.append(
            {
                "trial_s": total,
                "train_s": train_s,
                "outside_training_s": total - train_s,
                "setup_s": fit_s - train_s,  # data, model, optimizer, create/finish run
                "optuna_s": now["optuna"] - prev["optuna"],
                "metrics_s": now["metrics"] - prev["metrics"],
                "optuna_calls": now["optuna_calls"] - prev["optuna_calls"],
                "metrics_calls": now["metrics_calls"] - prev["metrics_calls"],
            }
        )
    if not rows:
        return {"trials": 0}

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    storage = [r["optuna_s"] + r["metrics_s"] for r in rows]
    return {
        "trials": len(rows),
        "trial_s": round(med("trial_s"), 3),
        "train_s": round(med("train_s"), 3),
        "outside_training_ms": round(med("outside_training_s") * 1e3, 1),
        "outside_training_pct": round(
            100 * statistics.median(r["outside_training_s"] / r["trial_s"] for r in rows), 2
        ),
        "setup_in_fit_ms": round(med("setup_s") * 1e3, 1),
        "storage_ms": round(statistics.median(storage) * 1e3, 1),
        "storage_pct": round(
            100 * statistics.median(s / r["trial_s"] for s, r in zip(storage, rows)), 2
        ),
        "optuna_ms": round(med("optuna_s") * 1e3, 1),
        "metrics_store_ms": round(med("metrics_s") * 1e3, 1),
        "optuna_sessions": int(med("optuna_calls")),
        "metrics_transactions": int(med("metrics_calls")),
    }


def bench_storage(tmp: Path, n_trials: int, epochs: int, postgres: str) -> dict[str, Any]:
    sets = [f"run.epochs={epochs}", f"budget.n_trials={n_trials}"]
    out: dict[str, Any] = {"spec": str(TINY.relative_to(ROOT)), "overrides": sets}
    print(f"storage overhead: sqlite, {n_trials} trials in-process ...", flush=True)
    out["sqlite"] = bench_storage_backend(f"sqlite:///{tmp / 'storage.db'}", sets, n_trials)
    if postgres == "off":
        out["postgresql"] = {"measured": False, "reason": "--postgres off"}
        return out
    sys.path.insert(0, str(ROOT / "tests"))
    from pg_server import PostgresServer, available

    reason = available()
    if reason:
        out["postgresql"] = {"measured": False, "reason": reason}
        return out
    print(f"storage overhead: postgresql (throwaway server), {n_trials} trials ...", flush=True)
    try:
        with PostgresServer() as pg:
            out["postgresql"] = {"measured": True, **bench_storage_backend(pg.url, sets, n_trials)}
    except Exception as exc:  # a server that will not start is a result, not a crash
        out["postgresql"] = {"measured": False, "reason": f"{type(exc).__name__}: {exc}"[:500]}
    return out


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def report(results: dict[str, Any]) -> None:
    q = results["quickstart"]
    print("\n== quickstart (subprocess, SQLite) ==")
    print(f"command            {q['command']}")
    print(f"{'':<34} {'shared':>10} {'unshared':>10}")
    for key, label in (("wall_s", "wall time (s)"), ("trials_per_hour", "trials per hour"),
                       ("epochs_trained", "trial-epochs trained"),
                       ("epochs_recorded", "trial-epochs recorded")):  # fmt: skip
        print(f"{label:<34} {q[key]:>10} {q['unshared'][key]:>10}")
    print(f"speed-up {q['speedup']:.3f}x; identical trial values: {q['same_values']}")
    print(f"a perfect cache would train {q['epochs_trained_ideal']} trial-epochs: "
          f"{q['work_bound']:.2f}x less work than unshared")  # fmt: skip
    print(f"data load / trial  {q['data_load_ms']:.0f} ms (in this process, median of 3)")
    print(f"best val acc       {_fmt(q['best_val_acc'])}  (dense {_fmt(q['dense_val_acc'])})")
    print(f"min trainable fraction within 1 pt of dense: {_fmt(q['min_fraction_within_1pt'])}")

    p = results["pruning"]
    print("\n== pruning (tiny spec, single objective, same random configurations) ==")
    print(f"{'pruner':<8} {'wall s':>8} {'trial-epochs':>13} {'pruned':>7} {'best val acc':>13}")
    for name in ("median", "none"):
        r = p[name]
        print(
            f"{name:<8} {r['wall_s']:>8.1f} {r['trial_epochs']:>13} "
            f"{r['states'].get('pruned', 0):>7} {_fmt(r['best_value']):>13}"
        )
    print(
        f"saving: {p['saving_epochs_pct']:.1f} % of trial-epochs, {p['saving_wall_pct']:.1f} % of "
        f"wall time (same configurations: {p['same_configurations']})"
    )

    s = results["storage_overhead"]
    print("\n== storage overhead per trial (medians) ==")
    head = f"{'backend':<22} {'trial s':>8} {'outside train':>14} {'setup':>8} {'storage':>9}"
    print(head + f" {'optuna':>8} {'metrics':>8} {'% trial':>8}")
    qs = q["storage_overhead_sqlite"]
    if qs.get("trials"):
        print(
            f"{'sqlite (quickstart)':<22} {qs['trial_s']:>8.2f} {qs['outside_training_ms']:>11.0f} ms"
            f" {'-':>8} {'-':>9} {'-':>8} {'-':>8} {qs['outside_training_pct']:>7.1f}%"
        )
    for name in ("sqlite", "postgresql"):
        r = s.get(name, {})
        if not r.get("trials"):
            print(f"{name + ' (tiny)':<22} not measured: {r.get('reason', 'no complete trials')}")
            continue
        print(
            f"{name + ' (tiny)':<22} {r['trial_s']:>8.2f} {r['outside_training_ms']:>11.0f} ms"
            f" {r['setup_in_fit_ms']:>5.0f} ms {r['storage_ms']:>6.0f} ms {r['optuna_ms']:>5.0f} ms"
            f" {r['metrics_store_ms']:>5.0f} ms {r['storage_pct']:>7.1f}%"
        )
    print(
        "(outside train = trial wall - training wall; storage = time in DB sessions, main thread;"
    )
    print(
        " % trial = storage / trial wall, or outside-training / trial wall for the quickstart row)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--quickstart-trials", type=int, help="default: the spec's 20 (5 quick)")
    parser.add_argument("--quickstart-rounds", type=int, help="default 2 (1 quick)")
    parser.add_argument("--prune-trials", type=int, help="default 12 (5 quick)")
    parser.add_argument("--prune-epochs", type=int, help="default 6 (2 quick)")
    parser.add_argument("--storage-trials", type=int, help="default 8 (3 quick)")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed of the pruning study")
    parser.add_argument(
        "--postgres",
        choices=("auto", "off"),
        help="measure PostgreSQL too when a server can be started (default auto; off with --quick)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per training process (OMP_NUM_THREADS; 0: torch's default, one per "
        "core, which oversubscribes a CPU shared with other jobs)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "study_bench.json")
    args = parser.parse_args()
    global THREADS
    THREADS = args.threads
    if args.threads:
        torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    quick = args.quick
    qs_trials = args.quickstart_trials or (5 if quick else None)  # 3 baselines, 2 OIALR
    qs_sets = ["run.subset=2000", "run.epochs=1"] if quick else []
    qs_rounds = args.quickstart_rounds or (1 if quick else 2)
    prune_trials = args.prune_trials or (5 if quick else 12)
    prune_epochs = args.prune_epochs or (2 if quick else 6)
    storage_trials = args.storage_trials or (3 if quick else 8)
    postgres = args.postgres or ("off" if quick else "auto")

    started = time.perf_counter()
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="oialr-study-bench-") as folder:
        tmp = Path(folder)
        results = {
            "quickstart": bench_quickstart(tmp, qs_trials, qs_sets, qs_rounds),
            "pruning": bench_pruning(tmp, prune_epochs, prune_trials, args.seed),
            "storage_overhead": bench_storage(tmp, storage_trials, 3, postgres),
        }
    report(results)
    payload = {
        "benchmark": "study_bench",
        "quick": quick,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            **machine_info(torch.device("cpu")),
            "optuna": optuna.__version__,
            "torch_threads_per_process": args.threads or "torch default",
            "load_average_end": list(os.getloadavg()),
            "load_average_start": load_before,
        },
        "total_s": round(time.perf_counter() - started, 1),
        **results,
    }
    write_json(args.out, payload)
    print(f"\nwrote {args.out} ({payload['total_s']:.0f} s in all)")


if __name__ == "__main__":
    main()
