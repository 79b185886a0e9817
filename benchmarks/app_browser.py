"""Dashboard speed as a user sees it: ours and optuna-dashboard, page by page, cold and warm, in
headless Chromium, on the same SQLite files.

Builds a 1,000-trial and a 10,000-trial study with ``app_scale.build`` (about 1.0 M and 9.1 M
metric rows), then for every size, repeat and page, in the order a user meets the pages, times
both dashboards one after the other (which one goes first alternates):

- **cold**: a server started for this page alone and a new browser context (empty HTTP cache);
- **warm**: the same server and context, the same URL opened again (a full reload: code from the
  browser's cache, data from the server's caches).

A page counts as complete when every chart it shows is drawn with points in it (and, for ours,
its script has finished); the time is the page's own clock (``performance.now()``, from the
start of the navigation). Pages are paired with the optuna-dashboard page that shows the same
thing: Studies ↔ home, Pareto ↔ overview (history and Pareto front), Parameters ↔ analytics,
Trial ↔ trial list; Live has no counterpart. Goals: ≤ 1 s warm and ≤ 3 s cold per page at
10,000 trials, and ahead of optuna-dashboard on every paired page at both sizes.

    python benchmarks/app_browser.py                            # both sizes, 3 repeats
    python benchmarks/app_browser.py --sizes 1000 --repeat 1    # a quicker look

Writes ``benchmarks/results/app_browser.json``; ``python benchmarks/readme_tables.py`` turns it
into the README's table. Databases are kept in ``--data`` (default: a folder under /tmp) and
reused by later runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
logging.getLogger("streamlit.runtime.caching.cache_data_api").setLevel(logging.ERROR)

import app_scale  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

COLD_GOAL_S, WARM_GOAL_S, GOAL_SIZE = 3.0, 1.0, 10_000
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
PAGE_TIMEOUT_S = 240
BUILD_VERSION = 2  # bump when app_scale.build changes what it writes: older files are rebuilt


@dataclass(frozen=True)
class Page:
    """Where a page is and what "complete" means: ``charts`` Plotly charts drawn with points,
    ``tables`` data grids drawn, and ``text`` shown."""

    path: str
    charts: int = 0
    tables: int = 0
    text: str = ""
    streamlit: bool = True


# (our page, our spec, their page name, their spec); None: no counterpart.
PAGES: list[tuple[str, Page, str | None, Page | None]] = [
    ("Studies", Page("/", tables=1), "home",
     Page("/dashboard/", text="Direction:", streamlit=False)),
    ("Pareto", Page("/pareto", charts=1), "overview",
     Page("/dashboard/studies/1", charts=4, streamlit=False)),
    # optuna-dashboard leaves its contour plot out past a few hundred trials ("disabled by
    # default"): four charts there, against our slices, parallel coordinates, importance, contour.
    ("Parameters", Page("/parameters", charts=4), "analytics",
     Page("/dashboard/studies/1/analytics", charts=4, streamlit=False)),
    ("Trial", Page("/trial", charts=4, tables=1), "trial list",
     Page("/dashboard/studies/1/trials", text="User Attributes", streamlit=False)),
    ("Live", Page("/live?trial={live}", charts=6), None, None),
]  # fmt: skip

# True (with the page's clock) once the page is complete as its spec says.
READY_JS = """
(spec) => {
  const body = document.body;
  if (!body) return false;
  if (spec.streamlit) {
    if (!document.querySelector('[data-testid="stApp"]')) return false;
    if (document.querySelector('[data-testid="stStatusWidgetRunningIcon"]')) return false;
    if (document.querySelector('[data-testid="stSkeleton"]')) return false;
    const charts = document.querySelectorAll('[data-testid="stPlotlyChart"]');
    if (charts.length < spec.charts) return false;
    for (const box of charts) if (!box.querySelector('.js-plotly-plot')) return false;
    const grids = document.querySelectorAll('[data-testid="stDataFrame"] canvas');
    if (grids.length < spec.tables) return false;
  }
  if (spec.text && !body.innerText.includes(spec.text)) return false;
  const n = (a) => (a && a.length) || 0;
  const points = (t) => n(t.x) || n(t.y) || n(t.z) || n(t.values) ||
    (t.dimensions && t.dimensions.length && n(t.dimensions[0].values));
  const plots = [...document.querySelectorAll('.js-plotly-plot')];
  if (plots.length < spec.charts) return false;
  for (const gd of plots) {
    if (!gd._fullLayout || !gd.querySelector('.main-svg')) return false;
    if (!(gd._fullData || []).some(points)) return false;
  }
  return performance.now();
}
"""
BYTES_JS = """() => performance.getEntriesByType('resource').concat(
  performance.getEntriesByType('navigation')).reduce(
  (a, e) => [a[0] + (e.transferSize || 0), a[1] + (e.decodedBodySize || 0)], [0, 0])"""


@dataclass
class Samples:
    cold: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    cold_kb: list[float] = field(default_factory=list)  # bytes over the wire, cold
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        median = lambda xs: round(statistics.median(xs), 3) if xs else None  # noqa: E731
        return {"cold_s": median(self.cold), "warm_s": median(self.warm),
                "cold_kb": median(self.cold_kb), "cold_samples": self.cold,
                "warm_samples": self.warm, "errors": self.errors}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as reply:
            if reply.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"no answer from {url} within {timeout:.0f} s")


@contextlib.contextmanager
def server(kind: str, db_url: str, entry: str, log: Path):
    """One dashboard server on a free port; yields its base URL and stops it afterwards."""
    port = _free_port()
    env = {**os.environ, "OIALR_STORAGE": db_url, "PYTHONPATH": str(ROOT)}
    if kind == "ours":
        command = [sys.executable, "-m", "streamlit", "run", entry, "--server.headless", "true",
                   "--server.port", str(port), "--server.address", "127.0.0.1",
                   "--browser.gatherUsageStats", "false"]  # fmt: skip
        health = f"http://127.0.0.1:{port}/_stcore/health"
    else:
        binary = Path(sys.executable).with_name("optuna-dashboard")
        command = [str(binary if binary.exists() else shutil.which("optuna-dashboard")), db_url,
                   "--host", "127.0.0.1", "--port", str(port), "--quiet"]  # fmt: skip
        health = f"http://127.0.0.1:{port}/dashboard/"
    with open(log, "ab") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    try:
        _wait_http(health, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def load(page, url: str, spec: Page) -> float:
    """Opens ``url`` and returns the page's clock, in seconds, when it is complete."""
    page.goto(url, wait_until="commit", timeout=PAGE_TIMEOUT_S * 1000)
    handle = page.wait_for_function(
        READY_JS,
        arg={"charts": spec.charts, "tables": spec.tables, "text": spec.text,
             "streamlit": spec.streamlit},
        polling="raf", timeout=PAGE_TIMEOUT_S * 1000,
    )  # fmt: skip
    return round(handle.json_value() / 1000, 3)


def measure(browser, kind, db_url, entry, spec: Page, path: str, warm: int, log, out: Samples):
    """One cold load and ``warm`` warm loads of one page on a fresh server."""
    try:
        with server(kind, db_url, entry, log) as base:
            context = browser.new_context(viewport={"width": 1400, "height": 1600})
            try:
                page = context.new_page()
                out.cold.append(load(page, base + path, spec))
                out.cold_kb.append(round(page.evaluate(BYTES_JS)[0] / 1024, 1))
                for _ in range(warm):
                    out.warm.append(load(page, base + path, spec))
            finally:
                context.close()
    except Exception as exc:  # a page that never completes is a result, not a crash
        out.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        print(f"    {kind} {path}: {out.errors[-1]}", flush=True)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def database(folder: Path, n_trials: int) -> tuple[str, dict]:
    """The study of ``n_trials`` (built once, then reused while BUILD_VERSION matches)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"scale-{n_trials}.db"
    stamp = path.with_suffix(".json")
    if path.exists() and stamp.exists():
        info = json.loads(stamp.read_text())
        if info.get("version") == BUILD_VERSION:
            return f"sqlite:///{path}", info
    for old in folder.glob(f"scale-{n_trials}.db*"):
        old.unlink()
    print(f"building {n_trials:,} trials into {path} ...", flush=True)
    live_steps = 100_000
    built = app_scale.build(f"sqlite:///{path}", n_trials, 800, live_steps)
    _checkpoint(path)
    info = {"version": BUILD_VERSION, "trials": n_trials, "metric_rows": built["rows"],
            "db_mb": round(path.stat().st_size / 2**20, 1), "build_s": round(built["build_s"], 1),
            "live_trial": n_trials - 1}  # fmt: skip
    stamp.write_text(json.dumps(info))
    print(f"  {built['rows']:,} metric rows, {info['db_mb']} MB in {info['build_s']} s", flush=True)
    return f"sqlite:///{path}", info


def _checkpoint(path: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _versions() -> dict:
    from importlib.metadata import version

    chromium = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout
    return {
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "chromium": chromium.strip(), "streamlit": version("streamlit"),
        "optuna": version("optuna"), "optuna-dashboard": version("optuna-dashboard"),
        "load_average": list(os.getloadavg()),
    }  # fmt: skip


def verdict(sizes: dict) -> dict:
    """Which goals the medians meet."""
    goals = {}
    largest = sizes.get(str(GOAL_SIZE), {}).get("pages", {})
    for name, p in largest.items():
        ours = p["ours"]
        goals[f"{name} at {GOAL_SIZE:,}"] = {
            "cold_s": ours["cold_s"], "warm_s": ours["warm_s"],
            "met": ours["cold_s"] is not None and ours["warm_s"] is not None
            and ours["cold_s"] <= COLD_GOAL_S and ours["warm_s"] <= WARM_GOAL_S,
        }  # fmt: skip
    ahead = {}
    for size, d in sizes.items():
        for name, p in d["pages"].items():
            if p.get("theirs") is None:
                continue
            ours, theirs = p["ours"], p["theirs"]
            if theirs["cold_s"] is None and not theirs["errors"]:
                continue  # not measured (--only ours)
            # Theirs not finishing within PAGE_TIMEOUT_S counts as slower than ours.
            faster = all(
                ours[k] is not None and (theirs[k] is None or ours[k] < theirs[k])
                for k in ("cold_s", "warm_s")
            )
            ahead[f"{name} at {int(size):,}"] = faster
    return {"page_goals": goals, "ahead": ahead}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--repeat", type=int, default=3, help="cold loads per page (median kept)")
    parser.add_argument("--warm", type=int, default=2, help="warm reloads after each cold load")
    parser.add_argument("--data", type=Path, default=Path("/tmp/oialr-app-browser"))
    parser.add_argument(
        "--entry", default="app/streamlit_app.py", help="what `streamlit run` serves"
    )
    parser.add_argument("--only", choices=["ours", "theirs"], help="time one dashboard only")
    parser.add_argument("--pages", nargs="+", help="page names to time (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/app_browser.json")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.data.mkdir(parents=True, exist_ok=True)
    log = args.data / "servers.log"
    sizes: dict[str, dict] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        for n_trials in args.sizes:
            db_url, info = database(args.data, n_trials)
            pages = {}
            for name, ours, their_name, theirs in PAGES:
                if args.pages and name not in args.pages:
                    continue
                got = {"ours": Samples(), "theirs": Samples() if theirs else None}
                for repeat in range(args.repeat):
                    order = ["ours", "theirs"] if repeat % 2 == 0 else ["theirs", "ours"]
                    for kind in order:
                        spec = ours if kind == "ours" else theirs
                        if spec is None or (args.only and kind != args.only):
                            continue
                        path = spec.path.format(live=info["live_trial"])
                        measure(browser, kind, db_url, args.entry, spec, path, args.warm, log,
                                got[kind])  # fmt: skip
                pages[name] = {"their_page": their_name,
                               **{k: v.summary() if v else None for k, v in got.items()}}  # fmt: skip
                mine, other = pages[name]["ours"], pages[name]["theirs"]
                print(f"{n_trials:>6} {name:<11} ours cold {mine['cold_s']} warm {mine['warm_s']}"
                      + (f" | theirs cold {other['cold_s']} warm {other['warm_s']}" if other else ""),
                      flush=True)  # fmt: skip
            sizes[str(n_trials)] = {**info, "pages": pages}
        browser.close()
    report = {
        "benchmark": "app_browser",
        "command": "python benchmarks/app_browser.py " + " ".join(sys.argv[1:]),
        "goals": {"cold_s": COLD_GOAL_S, "warm_s": WARM_GOAL_S, "size": GOAL_SIZE},
        "method": {"repeat": args.repeat, "warm_reloads": args.warm, "entry": args.entry},
        "machine": _versions(),
        "sizes": sizes,
        "verdict": verdict(sizes),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
