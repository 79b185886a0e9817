"""The real dashboard (`streamlit run`) in headless Chromium: every page draws its Plotly charts
and shows no exception; a click on the Pareto plot opens the trial; Σ's spectrum shows every
singular value of a layer of rank > 32 with the cutoff drawn; layers are named in full (module,
kind, shape); and the pages of a 10,000-trial study draw a bounded sample and say so.

Screenshots go to a temporary folder; with ``OIALR_SCREENSHOTS=docs/screenshots`` the Pareto,
Live and Trial pages are also written there (``pareto.png``, ``live.png``, ``trial.png``) for the
README, from a somewhat larger study.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

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
    ("/trial", "Trial", "trial"),
]
README_SHOTS = os.environ.get("OIALR_SCREENSHOTS")
STUDY = "quickstart" if README_SHOTS else "tiny"  # the study the server shows


@pytest.fixture(scope="module")
def study_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    if not README_SHOTS:
        return app_fixtures.shared_databases(tmp_path_factory.getbasetemp() / "app-dbs")["study"]
    # README pictures deserve a few more trials than the tests need.
    path = tmp_path_factory.mktemp("readme") / "readme.db"
    app_fixtures.build_study_db(f"sqlite:///{path}", n_trials=12, name=STUDY)
    return f"sqlite:///{path}"


@contextlib.contextmanager
def _serve(url: str, log_path: Path) -> Iterator[str]:
    """`streamlit run app/streamlit_app.py -- --storage URL` on a free port; killed at the end."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "OIALR_STORAGE"}
    command = [sys.executable, "-m", "streamlit", "run", "app/streamlit_app.py"]
    command += ["--server.headless", "true", "--server.port", str(port)]
    command += ["--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    command += ["--", "--storage", url]
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
def server(study_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _serve(study_url, tmp_path_factory.mktemp("server") / "streamlit.log") as base:
        yield base


@pytest.fixture(scope="module")
def large_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dashboard on a 10,000-trial study (built in seconds, see build_large_study_db)."""
    folder = tmp_path_factory.mktemp("large")
    url = f"sqlite:///{folder / 'large.db'}"
    app_fixtures.build_large_study_db(url)
    with _serve(url, folder / "streamlit.log") as base:
        yield base


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
    page.wait_for_selector('.js-plotly-plot, [data-testid="stDataFrame"]', timeout=60_000)
    page.wait_for_timeout(1_500)  # let the last charts of the run finish drawing


# Every Plotly chart on the page drawn, each with at least one trace that has points.
ALL_DRAWN = """() => {
  const plots = [...document.querySelectorAll('.js-plotly-plot')];
  const n = (a) => (a && a.length) || 0;
  return plots.length > 0 && plots.every(gd => gd._fullLayout && gd.querySelector('.main-svg')
    && (gd._fullData || []).some(t => n(t.x) || n(t.y) || n(t.z)));
}"""


def _figure(page, title_start: str) -> dict:
    """What one drawn chart shows: its title, its traces' names and drawn marker counts,
    drawn lines, shapes and axis tick labels (read from the SVG, not from the data); waits for
    the chart to be drawn first."""
    page.wait_for_function(
        """(start) => [...document.querySelectorAll('.js-plotly-plot')].some(g =>
             g._fullLayout && g.querySelector('.main-svg')
             && ((g._fullLayout.title || {}).text || '').replace(/<[^>]+>/g, '').startsWith(start))""",
        arg=title_start,
        timeout=60_000,
    )
    return page.evaluate(
        """(start) => {
          const gd = [...document.querySelectorAll('.js-plotly-plot')]
            .find(g => ((g._fullLayout.title || {}).text || '').replace(/<[^>]+>/g, '').startsWith(start));
          if (!gd) return null;
          const traces = [...gd.querySelectorAll('.scatterlayer .trace')];
          return {
            title: gd._fullLayout.title.text.replace(/<[^>]+>/g, ''),  // Streamlit bolds it
            names: gd._fullData.map(t => t.name),
            points: traces.map(t => t.querySelectorAll('path.point').length),
            lines: traces.map(t => t.querySelectorAll('path.js-line').length),
            shapes: gd.querySelectorAll('.shapelayer path').length,
            yticks: [...gd.querySelectorAll('.ytick text')].map(t => t.textContent),
            legend: [...gd.querySelectorAll('.legendtext')].map(t => t.textContent),
            annotations: [...gd.querySelectorAll('.annotation-text')].map(t => t.textContent),
          };
        }""",
        title_start,
    )


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
    if title == "Studies":  # a table only: no Plotly on this page
        assert browser_page.locator('[data-testid="stDataFrame"] canvas').count() >= 1
    else:
        browser_page.wait_for_function(ALL_DRAWN, timeout=60_000)
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


def _default_spectrum(url: str) -> tuple[int, str, int, int]:
    """(trial, layer, rank_before, rank_after) of the record the Live page shows first for
    each trial (the layer cut the most, at its last update), for a trial where it holds more
    than 32 values: (the layer's rank) was above the 32 singular values records used to keep."""
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT r.trial_number, l.layer, l.rank_before, l.rank_after, l.rank_fraction "
            "FROM oialr_layers l JOIN oialr_runs r ON r.id = l.run_id WHERE l.id IN "
            "(SELECT MAX(id) FROM oialr_layers GROUP BY run_id, layer) ORDER BY r.trial_number"
        ).fetchall()
    conn.close()
    shown = {}
    for trial, layer, before, after, fraction in rows:
        if trial not in shown or fraction < shown[trial][3]:
            shown[trial] = (layer, before, after, fraction)
    wide = [(t, *v[:3]) for t, v in shown.items() if v[1] > 32]
    assert wide, f"no trial whose spectrum has more than 32 values: {shown}"
    return max(wide, key=lambda r: (r[2] > r[3], r[2]))  # one with a cut, if any


def test_the_spectrum_shows_every_singular_value_and_the_cutoff(server, browser_page, study_url):
    trial, layer, before, after = _default_spectrum(study_url)
    _open(browser_page, f"{server}/live?trial={trial}", "Live")
    browser_page.wait_for_function(ALL_DRAWN, timeout=60_000)
    spectrum = _figure(browser_page, "Σ of")
    assert spectrum is not None, "no spectrum chart on the Live page"
    assert spectrum["title"].startswith(f"Σ of {layer} · Linear 64×64")
    kept = spectrum["names"].index(f"kept ({after})")
    assert sum(spectrum["points"][:2]) == before > 32  # every value drawn, not the top 32
    assert spectrum["points"][kept] == after
    cutoff = next(i for i, n in enumerate(spectrum["names"]) if n.startswith("cutoff"))
    assert spectrum["lines"][cutoff] == 1  # the cutoff drawn as a line
    if after < before:
        assert spectrum["shapes"] >= 1  # and the new rank, between kept and dropped
    _assert_clean(browser_page)


def test_full_layer_names_shapes_and_kinds_are_shown(server, browser_page, study_url):
    trial = _default_spectrum(study_url)[0]
    _open(browser_page, f"{server}/live?trial={trial}", "Live")
    browser_page.wait_for_function(ALL_DRAWN, timeout=60_000)
    names = ["1 · Linear 64×64", "3 · Linear 64×64"]  # module name, kind, rows × cols
    assert _figure(browser_page, "rank per layer")["yticks"] == names
    assert set(names) <= set(_figure(browser_page, "ranks per layer")["legend"])
    _open(browser_page, f"{server}/trial?trial={trial}", f"Trial {trial} of")
    browser_page.wait_for_function(ALL_DRAWN, timeout=60_000)
    assert _figure(browser_page, "rank per layer, compared")["annotations"][:2] == names
    _assert_clean(browser_page)


@pytest.mark.parametrize(("path", "title"), [("/pareto", "Pareto"), ("/parameters", "Parameters")])
def test_pages_of_a_10000_trial_study_draw_a_stated_sample(large_server, browser_page, path, title):
    # The default wait budget (60 s a step) is the only time limit: the benchmark owns speed.
    _open(browser_page, large_server + path, title)
    browser_page.wait_for_function(ALL_DRAWN, timeout=60_000)
    _assert_clean(browser_page)
    text = browser_page.locator("body").inner_text()
    assert re.search(r"Trials [\d,]+ of 9,\d{3} drawn: ", text), "no word on the sample"
    drawn = browser_page.evaluate(
        "() => [...document.querySelectorAll('.js-plotly-plot')]"
        ".map(g => g.querySelectorAll('path.point').length)"
    )
    assert 0 < max(drawn) <= 2_000 + 10  # a bounded sample, drawn (and the baselines)


def _link_warnings(page) -> list[str]:
    """The text of every alert on the page that names a shared link's value and its fallback."""
    alerts = page.locator('[data-testid="stAlertContainer"]')
    return [t for t in alerts.all_inner_texts() if "instead." in t]


def test_a_shared_link_to_a_missing_trial_says_what_it_shows(server, browser_page):
    browser_page.goto(server + "/trial?trial=999999")
    browser_page.get_by_text(f"Trial 999999 is not a trial of {STUDY}").wait_for(timeout=60_000)
    browser_page.wait_for_function(ALL_DRAWN, timeout=60_000)
    [warning] = _link_warnings(browser_page)
    shown = re.search(r"showing trial (\d+) instead\.", warning)
    assert shown, warning
    heading = f"Trial {shown[1]} of {STUDY}"
    assert browser_page.get_by_role("heading", name=heading).first.is_visible()
    _assert_clean(browser_page)


def test_a_shared_link_with_garbage_is_capped_and_not_rendered_as_markdown(server, browser_page):
    link = "[click me](http://example.com)"
    browser_page.goto(f"{server}/pareto?study={quote(link)}&color={'x' * 30_000}")
    browser_page.get_by_text("is not in this storage").wait_for(timeout=60_000)
    browser_page.wait_for_function(ALL_DRAWN, timeout=60_000)
    [warning] = _link_warnings(browser_page)
    assert f"Study {link} is not in this storage: showing {STUDY} instead." in warning
    assert f"Colour {'x' * 79}… is not a searched parameter of {STUDY}" in warning
    alert = browser_page.locator('[data-testid="stAlertContainer"]', has_text="instead.")
    assert alert.locator("a").count() == 0  # the link's text stays text
    assert alert.locator("code").first.inner_text() == link
    _assert_clean(browser_page)
