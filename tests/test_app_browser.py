"""The real dashboard (`streamlit run`) in headless Chromium: every page draws its Plotly charts
and shows no exception; a click on the Pareto plot opens the trial.

Screenshots go to a temporary folder; with ``OIALR_SCREENSHOTS=docs/screenshots`` the Pareto and
Live pages are also written there (``pareto.png``, ``live.png``) for the README, from a somewhat
larger study.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import app_fixtures
import pytest
from helpers import REPO, free_port

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# (URL path, page title, README picture name). Live opens the leanest complete OIALR trial, whose
# rank plots have the most to show; a running trial's live view is covered by the AppTests.
PAGES = [
    ("/", "Studies", None),
    ("/live?trial={lean}", "Live", "live"),
    ("/pareto?color=sigma+cutoff", "Pareto", "pareto"),
    ("/parameters", "Parameters", None),
    ("/trial", "Trial", None),
]
README_SHOTS = os.environ.get("OIALR_SCREENSHOTS")


@pytest.fixture(scope="module")
def study_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    if not README_SHOTS:
        return app_fixtures.shared_databases(tmp_path_factory.getbasetemp() / "app-dbs")["study"]
    # README pictures deserve a few more trials than the tests need.
    path = tmp_path_factory.mktemp("readme") / "readme.db"
    app_fixtures.build_study_db(f"sqlite:///{path}", n_trials=12, name="quickstart")
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def server(study_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`streamlit run app/streamlit_app.py -- --storage URL` on a free port; killed at the end."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "streamlit.log"
    env = {k: v for k, v in os.environ.items() if k != "OIALR_STORAGE"}
    command = [sys.executable, "-m", "streamlit", "run", "app/streamlit_app.py"]
    command += ["--server.headless", "true", "--server.port", str(port)]
    command += ["--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    command += ["--", "--storage", study_url]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser_page():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        # Tall viewport instead of full_page: Streamlit scrolls inside its own container.
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        yield page
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def _open(page, url: str, title: str) -> None:
    """Loads a page and waits for the app, its title and its Plotly charts to be drawn."""
    page.goto(url)
    page.wait_for_selector('[data-testid="stApp"]', timeout=60_000)
    page.get_by_role("heading", name=title).first.wait_for(timeout=60_000)
    page.wait_for_selector(".js-plotly-plot", timeout=60_000)
    page.wait_for_timeout(1_500)  # let the last charts of the run finish drawing


def _assert_clean(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "Traceback" not in page.locator("body").inner_text()


def _leanest_trial(url: str) -> int:
    """The complete OIALR trial with the smallest trainable fraction."""
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        row = conn.execute(
            "SELECT t.number FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id"
            " WHERE t.state = 'COMPLETE' AND a.key = 'trainable_fraction'"
            " ORDER BY CAST(a.value_json AS REAL) LIMIT 1"
        ).fetchone()
    conn.close()
    return int(row[0])


@pytest.mark.parametrize(("path", "title", "picture"), PAGES)
def test_page_draws_its_charts_without_errors(
    server, browser_page, shots, study_url, path, title, picture
):
    _open(browser_page, server + path.format(lean=_leanest_trial(study_url)), title)
    _assert_clean(browser_page)
    assert browser_page.locator(".js-plotly-plot").count() >= 1
    name = picture or path.strip("/") or "studies"
    browser_page.screenshot(path=str(shots / f"{name}.png"))
    assert (shots / f"{name}.png").stat().st_size > 10_000
    if picture and README_SHOTS:
        out = Path(REPO, README_SHOTS)
        out.mkdir(parents=True, exist_ok=True)
        # Cropped to the content: the tall viewport leaves empty space below it.
        bottom = browser_page.evaluate(
            "document.querySelector('[data-testid=\"stMainBlockContainer\"]')"
            ".getBoundingClientRect().bottom"
        )
        clip = {"x": 0, "y": 0, "width": 1400, "height": min(2400, int(bottom) + 20)}
        browser_page.screenshot(path=str(out / f"{picture}.png"), clip=clip)


def test_clicking_a_pareto_point_opens_its_trial(server, browser_page):
    _open(browser_page, server + "/pareto", "Pareto")
    # Traces in order: the OIALR trials, then the dense baseline: click its star.
    star = browser_page.locator(".js-plotly-plot .scatterlayer .trace:nth-of-type(2) path.point")
    star = star.first
    box = star.bounding_box()
    browser_page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    browser_page.wait_for_url("**/trial?trial=0*", timeout=60_000)
    browser_page.get_by_role("heading", name="Trial 0 of").first.wait_for(timeout=60_000)
    _assert_clean(browser_page)
