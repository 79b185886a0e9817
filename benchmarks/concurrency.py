"""Two study workers writing to one SQLite file while the dashboard's queries poll it.

Starts two real ``python -m oialr study run`` worker processes on one SQLite file (the tiny
synthetic spec, made long: many epochs, a loss row every step, single objective with the median
pruner so that every epoch also reports to Optuna, and far more trials than fit in the time), and
in this process, once every worker is training, polls every second for ``--seconds`` what the dashboard
reads: the storage probe, the studies list, the study's fingerprint and trials table, its runs,
and for the newest running trial the live page's incremental read (``queries.poll`` +
``extend_window``) and its layer table. The plain functions of ``app/queries.py`` are called on
the app's own read-only engine (``queries.open_engine``), bypassing Streamlit's caches, so every
poll really reads the file.

At the end both workers get SIGTERM (they record the running trial as failed and exit 130).
Counted: polls, poll latency (p50/p95), rows the reader saw, reader errors of any kind, and
"locked" in either worker's stderr. Exits 1 if there was any "database is locked" or any reader
error (or nothing could be measured). Workers that die early or exit other than 130, and trials
that both workers ran (``trials_claimed_twice``), are reported and warned about, not failed on.

    python benchmarks/concurrency.py              # 60 s
    python benchmarks/concurrency.py --seconds 8  # what CI runs

Writes ``benchmarks/results/concurrency.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import streamlit  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]

# Importing app.queries outside `streamlit run` logs one "No runtime found" line per cache.
logging.getLogger("streamlit.runtime.caching.cache_data_api").setLevel(logging.ERROR)

from common import RESULTS_DIR, write_json  # noqa: E402

from app import optuna_reads, queries  # noqa: E402
from oialr.metrics_reader import MetricsReader  # noqa: E402

TINY = ROOT / "tests" / "specs" / "tiny.toml"
OVERRIDES = [
    "run.epochs=40",
    "run.log_every=1",  # a step row per optimizer step: the steps table grows all the time
    "run.batch_size=32",
    "run.oialr={stability_every=5}",  # warm-up stability rows too
    'objective.kind="accuracy"',  # single objective: every epoch reports to Optuna…
    'pruner.name="median"',  # …and asks whether to prune, so trials also start and end often
    "budget.n_trials=100000",
]


def start_workers(n: int, url: str, folder: Path, threads: int) -> list[dict[str, Any]]:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "oialr", "study", "run", str(TINY), "--storage", url, "--quiet"]
    cmd += [f"--set={item}" for item in OVERRIDES]
    workers = []
    for i in range(n):
        out = open(folder / f"worker{i}.out", "w")  # noqa: SIM115 - closed in stop_workers
        err = open(folder / f"worker{i}.err", "w")  # noqa: SIM115
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err)
        workers.append({"proc": proc, "out": out, "err": err})
    return workers


def stop_workers(workers: list[dict[str, Any]], wait_s: float) -> list[dict[str, Any]]:
    """SIGTERM each worker that still runs, wait, and report exit codes and stderr."""
    alive_at_end = [w["proc"].poll() is None for w in workers]
    for w in workers:
        if w["proc"].poll() is None:
            w["proc"].send_signal(signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    for w in workers:
        try:
            w["proc"].wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w["proc"].kill()  # our own child, by its pid
            w["proc"].wait()
    out = []
    for w, alive in zip(workers, alive_at_end):
        w["out"].close()
        w["err"].close()
        stderr = Path(w["err"].name).read_text(errors="replace")
        out.append(
            {
                "pid": w["proc"].pid,
                "alive_at_end": alive,
                "returncode": w["proc"].returncode,
                "locked_lines": [ln for ln in stderr.splitlines() if "locked" in ln.lower()],
                "stderr_tail": stderr[-1500:],
            }
        )
    return out


def prepare_storage(url: str) -> None:
    """Create the tables and the study here first, as ``oialr study run --workers N`` does in its
    parent before starting workers (two workers opening a fresh file at once can race on
    Optuna's schema creation: see ``--cold-start``)."""
    import optuna

    from oialr.spec import load_spec
    from oialr.study import create_study, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = open_storage(url)
    create_study(load_spec(TINY, OVERRIDES), storage)
    storage.engine.dispose()


def wait_for_workers(
    url: str, path: Path, workers: list[dict[str, Any]], timeout: float
) -> tuple[Any, float]:
    """The app's read-only engine once ``n`` runs are training at the same time (every worker
    is writing metrics), or at least one when ``timeout`` passes; (engine, seconds waited)."""
    started, n = time.monotonic(), len(workers)
    engine, running = None, 0
    while time.monotonic() - started < timeout:
        if any(w["proc"].poll() is not None for w in workers):
            raise RuntimeError("a worker exited before training started")
        if path.exists():
            engine = engine or queries.open_engine(url)
            if queries.probe(url, engine).kind == "ok":
                with engine.connect() as conn:  # every run, also two of one trial
                    running = conn.exec_driver_sql(
                        "SELECT COUNT(*) FROM oialr_runs WHERE status = 'running'"
                    ).scalar()
                if running >= n:
                    return engine, time.monotonic() - started
        time.sleep(0.25)
    if running:
        return engine, time.monotonic() - started
    raise RuntimeError(f"no run started within {timeout:.0f} s")


def poll_once(engine, url: str, state: dict[str, Any]) -> dict[str, int]:
    """One dashboard tick; returns rows read per source."""
    status = queries.probe(url, engine)
    if status.kind != "ok":
        raise RuntimeError(f"probe: {status.kind}: {status.message}")
    studies = optuna_reads.list_studies(engine)
    row = studies.iloc[0]
    study_id, name = int(row["study_id"]), str(row["study"])
    optuna_reads.study_token(engine, study_id)
    trials = optuna_reads.load_study_trials(engine, study_id)
    reader = MetricsReader(engine)
    runs = reader.latest_runs(name, full=False)
    seen = {"trials": len(trials.frame), "runs": len(runs)}
    running = runs[runs["status"] == "running"]
    if len(running):
        run_id = int(running["id"].max())  # the newest running trial
        after = state["window"]["after"] if state.get("window") else {}
        tick = queries.poll(reader, run_id, after)
        state["window"] = queries.extend_window(state.get("window"), run_id, tick)
        state["runs_followed"].add(run_id)
        for table in queries.LIVE_WINDOW:
            seen[table] = len(tick[table])
        seen["layer_table"] = len(reader.layer_summary(run_id))
    return seen


def final_counts(url: str) -> dict[str, Any]:
    """Trial states and run statuses once the workers have stopped."""
    import sqlalchemy as sa

    from oialr.metrics_schema import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            states = dict(
                conn.execute(sa.text("SELECT state, COUNT(*) FROM trials GROUP BY state")).all()
            )
            statuses = dict(
                conn.execute(
                    sa.text("SELECT status, COUNT(*) FROM oialr_runs GROUP BY status")
                ).all()
            )
            baselines = conn.execute(
                sa.text(
                    "SELECT COUNT(*) FROM trial_user_attributes "
                    "WHERE key = 'mode' AND value_json != '\"oialr\"'"
                )
            ).scalar()
            rows = {
                t: conn.execute(sa.text(f"SELECT COUNT(*) FROM oialr_{t}")).scalar()
                for t in queries.LIVE_WINDOW
            }
            # seeds = 1: one run per trial, unless two workers claimed the same trial
            double = conn.execute(
                sa.text(
                    "SELECT MAX(trial_number) FROM oialr_runs GROUP BY trial_id HAVING COUNT(*) > 1"
                )
            ).all()
    finally:
        engine.dispose()
    return {
        "trial_states": {str(k): int(v) for k, v in states.items()},
        "run_statuses": {str(k): int(v) for k, v in statuses.items()},
        "baseline_trials": int(baselines),
        "rows_written": {k: int(v) for k, v in rows.items()},
        "trials_claimed_twice": [int(r[0]) for r in double],
    }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def poll_loop(engine, url, args, state, latencies, errors, rows) -> int:
    """Polls every ``args.interval`` s for ``args.seconds`` s; returns how many polls ran."""
    polls = 0
    begin = time.monotonic()
    next_tick = begin
    while time.monotonic() - begin < args.seconds:
        tick_started = time.perf_counter()
        try:
            seen = poll_once(engine, url, state)
            for key, n in seen.items():
                rows[key] = rows.get(key, 0) + n
        except Exception as exc:  # every kind counts: the dashboard would show it
            errors.append(f"{time.monotonic() - begin:.1f}s {type(exc).__name__}: {exc}"[:400])
        latencies.append(time.perf_counter() - tick_started)
        polls += 1
        next_tick += args.interval
        time.sleep(max(0.0, next_tick - time.monotonic()))
    return polls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to poll (60)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per worker (0: torch's default)"
    )
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument(
        "--cold-start",
        action="store_true",
        help="start the workers on a fresh file (no tables yet) instead of creating the study "
        "here first",
    )
    parser.add_argument("--keep", type=Path, help="folder to keep the database and worker logs in")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "concurrency.json")
    args = parser.parse_args()

    folder = tempfile.TemporaryDirectory(prefix="oialr-concurrency-")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        if any(args.keep.iterdir()):
            raise SystemExit(f"--keep {args.keep}: the folder must be empty")
    path = (args.keep or Path(folder.name)) / "shared.db"
    url = f"sqlite:///{path}"
    started = time.monotonic()
    if not args.cold_start:
        prepare_storage(url)
    print(f"starting {args.workers} workers on {path} ...", flush=True)
    workers = start_workers(args.workers, url, path.parent, args.threads)
    latencies: list[float] = []
    errors: list[str] = []
    rows: dict[str, int] = {}
    state: dict[str, Any] = {"window": None, "runs_followed": set()}
    polls, waited, startup_error = 0, None, None
    try:
        try:
            engine, waited = wait_for_workers(url, path, workers, args.startup_timeout)
        except RuntimeError as exc:
            startup_error = str(exc)
            print(f"startup failed: {exc}", flush=True)
        if startup_error is None:
            print(f"workers training after {waited:.1f} s; polling for {args.seconds:.0f} s")
            polls = poll_loop(engine, url, args, state, latencies, errors, rows)
            engine.dispose()
    finally:
        print("stopping workers (SIGTERM) ...", flush=True)
        reports = stop_workers(workers, wait_s=90)
    counts = final_counts(url)
    folder.cleanup()

    reader_locked = [e for e in errors if "locked" in e.lower()]
    worker_locked = sum(len(r["locked_lines"]) for r in reports)
    workers_ok = all(r["alive_at_end"] and r["returncode"] == 130 for r in reports)
    # The criterion: no lock error anywhere and no reader error, over a real measurement.
    ok = not errors and not worker_locked and startup_error is None and polls > 0
    result = {
        "benchmark": "concurrency",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_end": list(os.getloadavg()),
            "python": sys.version.split()[0],
        },
        "config": {
            "seconds": args.seconds,
            "interval_s": args.interval,
            "workers": args.workers,
            "torch_threads_per_worker": args.threads or "torch default",
            "cold_start": args.cold_start,
            "spec": str(TINY.relative_to(ROOT)),
            "overrides": OVERRIDES,
        },
        "startup_s": None if waited is None else round(waited, 1),
        "startup_error": startup_error,
        "polls": polls,
        "poll_ms": {
            "p50": round(statistics.median(latencies) * 1e3, 1) if latencies else None,
            "p95": round(pct(latencies, 0.95) * 1e3, 1) if latencies else None,
            "max": round(max(latencies) * 1e3, 1) if latencies else None,
        },
        "rows_seen": rows,
        "runs_followed": len(state["runs_followed"]),
        "reader_errors": errors,
        "reader_lock_errors": len(reader_locked),
        "worker_lock_lines": worker_locked,
        "workers": reports,
        "workers_ok": workers_ok,
        "final": counts,
        "ok": ok,
        "total_s": round(time.monotonic() - started, 1),
    }

    print()
    print(f"{'polls':<26} {polls} in {args.seconds:.0f} s (every {args.interval:g} s)")
    print(
        f"{'poll latency':<26} p50 {result['poll_ms']['p50']} ms, "
        f"p95 {result['poll_ms']['p95']} ms, max {result['poll_ms']['max']} ms"
    )
    shown = ", ".join(f"{k} {v}" for k, v in rows.items())
    print(f"{'rows seen (sum of polls)':<26} {shown}")
    print(f"{'live runs followed':<26} {len(state['runs_followed'])}")
    print(f"{'reader errors':<26} {len(errors)} ({len(reader_locked)} 'locked')")
    print(f"{'worker stderr locked':<26} {worker_locked}")
    codes = ", ".join(str(r["returncode"]) for r in reports)
    print(f"{'worker exit codes':<26} {codes} (expected 130 after SIGTERM)")
    print(f"{'trials at the end':<26} {counts['trial_states']}")
    print(f"{'runs at the end':<26} {counts['run_statuses']}")
    print(f"{'rows written':<26} {counts['rows_written']}")
    if not workers_ok or counts["trials_claimed_twice"]:
        print(
            f"WARNING: workers_ok={workers_ok}; trials run by both workers at once: "
            f"{counts['trials_claimed_twice']} (not a lock error; see the stderr below)"
        )
    for e in errors[:10]:
        print(f"  reader error: {e}")
    for r in reports:
        if r["locked_lines"] or r["returncode"] != 130:
            print(f"  worker {r['pid']} stderr tail:\n{r['stderr_tail']}")
    write_json(args.out, result)
    print(f"\n{'OK' if ok else 'FAILED'}: wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
