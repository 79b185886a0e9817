"""Trials per hour with K workers packed on one GPU (``oialr study run --gpus 0 --workers K``).

For each spec and each K, a fresh study (its own SQLite file and warm-up cache) runs the same
number of trials as a subprocess; trials per hour = finished trials / wall time, and the ratio
of the best K over K = 1 is the packing gain (goal ≥ 4× on an H100/H200 for the quickstart and
LeNet-5). ``--device cpu`` (the dry run) uses ``--workers K`` without ``--gpus``.

    python benchmarks/packing.py --out OUT/packing.json                       # on a GPU machine
    python benchmarks/packing.py --device cpu --ks 1,2 --trials 2 --quick     # smoke run

Writes ``benchmarks/results/packing.json`` unless ``--out``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from common import RESULTS_DIR, write_json

ROOT = Path(__file__).resolve().parents[1]
SPECS = {  # spec → overrides that keep one trial at seconds to a minute on a GPU
    "quickstart": ("studies/quickstart.toml", []),
    "lenet5": ("studies/fashion-lenet5.toml", ["run.epochs=6", "run.subset=20000"]),
}
GOAL = 4.0


def run_study(spec: str, sets: list[str], k: int, trials: int, device: str, data_dir: str | None,
              folder: Path) -> dict[str, Any]:  # fmt: skip
    url = f"sqlite:///{folder / f'k{k}.db'}"
    sets = [*sets, f'run.device="{device}"', *([f'run.data_dir="{data_dir}"'] if data_dir else [])]
    placement = ["--gpus", "0", "--workers", str(k)] if device == "cuda" else ["--workers", str(k)]
    cmd = [sys.executable, "-m", "oialr", "study", "run", str(ROOT / spec), "--storage", url,
           "--n-trials", str(trials), "--quiet", *placement, *[f"--set={s}" for s in sets]]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    (summary,) = optuna.get_all_study_summaries(url, include_best_trial=False)
    study = optuna.load_study(study_name=summary.study_name, storage=url)
    finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
    return {"workers": k, "wall_s": round(wall, 1), "finished_trials": finished,
            "trials_per_hour": round(finished / wall * 3600, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--ks", default="1,2,4,8", help="workers per GPU to try")
    parser.add_argument("--trials", type=int, default=16, help="trials per study")
    parser.add_argument("--specs", default=",".join(SPECS))
    parser.add_argument("--quick", action="store_true", help="tiny datasets and one epoch")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "packing.json")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ks = [int(k) for k in args.ks.split(",")]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="oialr-packing-") as tmp:
        for name in args.specs.split(","):
            spec, sets = SPECS[name]
            sets = [*sets, "run.subset=1000", "run.epochs=1"] if args.quick else sets
            rows = []
            for k in ks:
                folder = Path(tmp) / f"{name}-k{k}"
                folder.mkdir()
                rows.append(
                    run_study(spec, sets, k, args.trials, args.device, args.data_dir, folder)
                )
                print(
                    f"{name}: {k} workers, {rows[-1]['trials_per_hour']:.0f} trials/h", flush=True
                )
            best = max(rows, key=lambda r: r["trials_per_hour"])
            gain = best["trials_per_hour"] / rows[0]["trials_per_hour"]
            results[name] = {"spec": spec, "overrides": sets, "rows": rows, "best_workers":
                             best["workers"], "gain": round(gain, 2), "met": gain >= GOAL}  # fmt: skip
    payload = {"benchmark": "packing", "device": args.device, "trials": args.trials,
               "goal": GOAL, "specs": results}  # fmt: skip
    write_json(args.out, payload)
    print(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
