"""Plain helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from oialr.metrics_reader import MetricsReader
from oialr.metrics_store import MetricsStore

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
# One controller record of a layer, as the metrics store takes it (oialr.records.LayerRecord).
LAYER_RECORD = dict(
    step=10,
    layer="fc1",
    event="convert",
    rank_before=64,
    rank_after=12,
    n=64,
    rank_fraction=12 / 64,
    trainable=144,
    stored=1680,
    rule="cutoff",
    dropped_mass=0.01,
    offdiag_energy=0.2,
    rotation=0.05,
    stability=0.97,
    cutoff=0.3,
    sigma=[3.0, 2.5, 1.0],
)


def read(store) -> MetricsReader:
    """The reader of what ``store`` (a MetricsStore) wrote."""
    return MetricsReader(store.engine)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env_with_repo(**extra: str) -> dict[str, str]:
    """The environment of a child Python: one thread (two cores are shared by every process
    of the suite), unbuffered output, and this checkout's tests importable."""
    paths = [str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(p for p in paths if p), **extra,
    }  # fmt: skip


def cli(
    *args: str, timeout: float = 600, cwd: Path = REPO, env=None
) -> subprocess.CompletedProcess:
    """Run ``python -m oialr ARGS`` in a real process and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "oialr", *args], capture_output=True, text=True, timeout=timeout,
        env=env or env_with_repo(), cwd=cwd,
    )  # fmt: skip


def cli_process(*args: str) -> subprocess.Popen:
    """Start ``python -m oialr ARGS`` and return at once (to signal or kill it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "oialr", *args], env=env_with_repo(), cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def run_benchmark(name: str, out: Path, *extra: str, timeout: int = 300) -> dict:
    """Run ``benchmarks/NAME --out OUT EXTRA…`` and return the JSON it wrote."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / name), "--out", str(out), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert out.is_file(), f"{name} did not write {out}"
    return json.loads(out.read_text())


def open_stores_at_once(url: str, n: int) -> list[str]:
    """Open ``n`` metrics stores on ``url`` from ``n`` threads at the same moment (as the
    workers of a new study do); returns the errors they raised."""
    barrier, errors = threading.Barrier(n), []

    def open_store() -> None:
        barrier.wait()
        try:
            MetricsStore(url).close()
        except Exception as exc:  # collected, then asserted by the caller
            errors.append(repr(exc))

    threads = [threading.Thread(target=open_store) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
