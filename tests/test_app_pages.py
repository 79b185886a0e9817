"""The dashboard's pages through Streamlit's AppTest, and its queries, on a real tiny study.

The study database is built once per test process by ``app_fixtures.shared_databases``: a real
two-objective Optuna study whose trials trained real models into the metrics store.
"""

from __future__ import annotations

import hashlib
import json
import re
import runpy
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import app_fixtures
import optuna
import pytest
import sqlalchemy as sa
import streamlit as st
from app_fixtures import PAGES, open_page
from helpers import REPO, env_with_repo
from streamlit.testing.v1 import AppTest

from app import charts, optuna_reads, queries
from oialr.metrics_reader import MetricsReader
from oialr.metrics_store import MetricsStore
from oialr.vocab import DEFAULT_STORAGE


@pytest.fixture(scope="session")
def dbs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return app_fixtures.shared_databases(tmp_path_factory.getbasetemp() / "app-dbs")


@pytest.fixture(autouse=True)
def fresh_caches():
    # st.cache_data / cache_resource outlive an AppTest: one test must not see another's reads.
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_resource.clear()  # dispose of engines on files a later test may delete


def charts_of(at: AppTest) -> list[dict]:
    return [json.loads(element.proto.spec) for element in at.get("plotly_chart")]


def texts(at: AppTest) -> str:
    parts = [
        e.value
        for kind in ("info", "error", "warning", "caption", "markdown")
        for e in getattr(at, kind)
    ]
    return "\n".join(str(p) for p in parts)


# -- pages on the study ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page", "min_charts"),
    [("studies", 0), ("live", 6), ("pareto", 1), ("parameters", 4), ("trial", 4)],
)
def test_every_page_renders_the_study(monkeypatch, dbs, page, min_charts):
    at = open_page(monkeypatch, dbs["study"], page)
    assert not at.exception, at.exception
    assert not at.error
    assert len(at.get("plotly_chart")) >= min_charts
    assert at.selectbox(key="study").value == "tiny"
    assert "sqlite:///" in at.sidebar.caption[0].value


def test_studies_page_summarises_every_study(monkeypatch, dbs):
    at = open_page(monkeypatch, dbs["study"])
    table = at.dataframe[0].value.set_index("study")
    assert set(table.index) == {"tiny", "all-failed", "acc-only"}
    assert table.loc["tiny", ["COMPLETE", "FAIL", "RUNNING"]].tolist() == [4, 1, 1]
    assert table.loc["tiny", "done"] == pytest.approx(5 / 6)  # finished, of all trials
    # The workers' pace, from Optuna's timestamps: finished trials per hour of wall clock.
    assert table.loc["tiny", "trials_per_hour"] > 0
    assert table.loc["all-failed", "FAIL"] == 2
    tiny = table.loc["tiny"]
    assert tiny["best_val_acc"] >= tiny["dense_val_acc"] > 0.5
    assert 0 < tiny["min_fraction_within_1pt"] < 1 or tiny.isna()["min_fraction_within_1pt"]


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "No database file"),
        ("empty", "No Optuna study"),
        ("optuna_empty", "No studies"),
        ("corrupt", "Cannot read"),
    ],
)
@pytest.mark.parametrize("page", list(PAGES))
def test_empty_storage_shows_a_message_not_a_traceback(monkeypatch, dbs, kind, message, page):
    at = open_page(monkeypatch, dbs[kind], page)
    assert not at.exception
    assert message in at.info[0].value
    assert not at.get("plotly_chart")
    if kind == "missing":
        assert not Path(dbs[kind].removeprefix("sqlite:///")).parent.exists()  # nothing created


@pytest.mark.parametrize(
    ("page", "message"),
    [
        ("live", "No run of this study"),
        ("pareto", "No complete trial"),
        ("parameters", "No complete searched trial"),
        ("trial", "No metrics recorded"),
    ],
)
def test_a_study_with_only_failed_trials_explains_itself(monkeypatch, dbs, page, message):
    at = open_page(monkeypatch, dbs["study"], page, study="all-failed")
    assert not at.exception
    assert at.selectbox(key="study").value == "all-failed"
    assert message in at.info[0].value
    if page == "trial":
        assert "dataset 'nope' is unknown" in at.error[0].value


@pytest.mark.parametrize("page", list(PAGES))
@pytest.mark.parametrize("db", ["study", "optuna_only"])
def test_a_single_objective_study_without_metrics_renders(monkeypatch, dbs, page, db):
    at = open_page(monkeypatch, dbs[db], page, study="acc-only")
    assert not at.exception, at.exception
    assert not at.error
    if page in ("pareto", "parameters"):
        assert at.get("plotly_chart")
    if page == "parameters":
        parallel = next(
            c for c in charts_of(at) if c["layout"]["title"]["text"] == "parallel coordinates"
        )
        axes = parallel["layout"]["xaxis"]["ticktext"]
        assert "optimizer" in axes
        ticks = [
            t for trace in parallel["data"] if trace.get("mode") == "text" for t in trace["text"]
        ]
        assert {"sgd", "adamw"} <= set(ticks)  # categorical choices, not indices


def test_password_is_masked_wherever_the_url_is_shown(monkeypatch):
    url = "postgresql+psycopg://me:hunter2@127.0.0.1:1/oialr"  # nothing listens on port 1
    at = open_page(monkeypatch, url, "pareto")
    assert not at.exception
    shown = texts(at) + at.sidebar.caption[0].value
    assert "hunter2" not in shown and "me:***@127.0.0.1" in shown
    assert "Cannot read" in at.info[0].value


def test_trial_page_opens_the_trial_in_the_url(monkeypatch, dbs):
    at = open_page(monkeypatch, dbs["study"], "trial", trial="3")
    assert not at.exception
    assert at.title[0].value == "Trial 3 of tiny"
    # what the worker recorded: it reproduces the trial
    command = next(m.value for m in at.markdown if m.value.startswith("Reproduce it: `"))
    command = command.removeprefix("Reproduce it: `").removesuffix("`")
    assert command.startswith("oialr train --model mlp") and "--mode oialr" in command
    layers = at.dataframe[0].value
    assert {"layer", "kind", "shape", "full_rank", "rank", "rank_fraction"} <= set(layers)
    assert {"effective_rank", "stable_rank", "mean_stability"} <= set(layers)
    # The tiny MLP (widths 64, 64 on 64 features): full module names, weight shapes, true ranks.
    assert layers["layer"].tolist() == ["1", "3"]
    assert layers["kind"].tolist() == ["Linear", "Linear"]
    assert layers["shape"].tolist() == ["64 × 64", "64 × 64"]
    assert layers["full_rank"].tolist() == [64, 64]
    assert (layers["rank"] <= layers["full_rank"]).all()
    at.multiselect(key="compare").set_value([0, 1]).run()
    figures = {c["layout"]["title"]["text"]: c for c in charts_of(at)}
    assert len(figures["comparison"]["data"]) == 6  # val acc + fraction for 3 runs
    ranks = figures["rank per layer, compared"]
    # one panel per layer, one line per run with layer records (the dense trial 0 has none)
    assert [a["text"] for a in ranks["layout"]["annotations"]] == [
        "1 · Linear 64×64",
        "3 · Linear 64×64",
    ]
    assert {t["name"] for t in ranks["data"]} == {"3 · oialr · complete", "1 · oialr · complete"}
    table = next(m.value for m in at.markdown if m.value.startswith("| trial |"))
    row = next(line for line in table.splitlines() if line.startswith("| validation accuracy |"))
    cells = [c.strip() for c in row.strip("|").split("|")[1:]]
    assert len(cells) == 3 and all(re.fullmatch(r"0\.\d{1,4}", c) for c in cells), row


def test_pareto_page_options_come_from_the_url(monkeypatch, dbs):
    query = {"x": "stored fraction", "color": "delay", "test": "true", "overlay": "all-failed"}
    at = open_page(monkeypatch, dbs["study"], "pareto", **query)
    assert not at.exception
    pareto = charts_of(at)[0]
    names = [trace["name"] for trace in pareto["data"]]
    assert "Pareto front · tiny" in names and "test accuracy · tiny" in names
    assert "OIALR trials · all-failed" in names
    assert pareto["layout"]["xaxis"]["title"]["text"] == "stored fraction"
    assert pareto["data"][0]["marker"]["showscale"]


def test_parameters_page_filters_set_constraint_ranges(monkeypatch, dbs):
    at = open_page(monkeypatch, dbs["study"], "parameters")
    slider = at.slider(key="range_params_delay")
    lo, hi = slider.value
    slider.set_value((lo, (lo + hi) / 2)).run()
    assert not at.exception
    parallel = next(
        c for c in charts_of(at) if c["layout"]["title"]["text"] == "parallel coordinates"
    )
    band = next(s for s in parallel["layout"]["shapes"] if s.get("name") == "filter delay")
    assert (band["y0"], band["y1"]) == (0.0, pytest.approx(0.5))  # the lower half of its axis
    engine = queries.open_engine(dbs["study"])
    tiny = int(optuna_reads.list_studies(engine).set_index("study").loc["tiny", "study_id"])
    frame = optuna_reads.load_study_trials(engine, tiny).frame
    engine.dispose()
    delays = frame.loc[(frame["state"] == "COMPLETE") & frame["mode"].eq("oialr"), "params_delay"]
    inside = int(delays.between(lo, (lo + hi) / 2).sum())
    # The caption counts the trials inside; the chart draws the others in grey.
    assert parallel["layout"]["meta"]["inside"] == inside
    assert f"{inside} of {len(delays)} complete trials inside the filters." in texts(at)
    grey = [t for t in parallel["data"] if t.get("name") == "outside the filters"]
    assert len(grey) == (inside < len(delays))
    if "fanova" in queries.EVALUATORS:  # needs scikit-learn
        at.radio(key="evaluator").set_value("fanova").run()
        assert not at.exception


def test_live_page_reads_only_new_rows(monkeypatch, dbs, tmp_path):
    db = tmp_path / "live.db"
    # The backup API copies committed rows wherever they sit (main file or WAL).
    source = sqlite3.connect(dbs["study"].removeprefix("sqlite:///"))
    copy = sqlite3.connect(db)
    source.backup(copy)
    source.close()
    copy.close()
    url = f"sqlite:///{db}"
    at = open_page(monkeypatch, url, "live", trial="5")
    assert not at.exception, at.exception
    assert at.toggle(key="auto").value  # a running trial auto-refreshes
    window = at.session_state["live"]
    seen, before = window["after"]["steps"], len(window["frames"]["steps"])
    run_id = window["run_id"]

    with MetricsStore(url) as store:
        for step in range(100, 110):
            store.log_step(run_id, step=step, loss=0.5, lr=1e-3, step_time=0.01)
    st.cache_data.clear()
    at.run()
    window = at.session_state["live"]
    assert len(window["frames"]["steps"]) == before + 10
    assert window["after"]["steps"] > seen
    assert window["frames"]["steps"]["step"].iloc[-1] == 109

    at.selectbox(key="live_layer").set_value("3").run()
    assert not at.exception
    assert any("Σ of 3 · Linear 64×64" in c["layout"]["title"]["text"] for c in charts_of(at))


def test_the_app_only_reads(monkeypatch, dbs):
    path = Path(dbs["study"].removeprefix("sqlite:///"))

    def digest() -> str:  # the database file and its write-ahead log, where writes would land
        files = [path, path.with_name(path.name + "-wal")]
        return hashlib.sha256(b"".join(f.read_bytes() for f in files if f.exists())).hexdigest()

    before = digest()
    for page in PAGES:
        assert not open_page(monkeypatch, dbs["study"], page).exception
    assert digest() == before
    engine = queries.open_engine(dbs["study"])
    with (
        pytest.raises(sa.exc.OperationalError, match="readonly|read-only"),
        engine.begin() as conn,
    ):
        conn.execute(sa.text("DELETE FROM oialr_steps"))
    engine.dispose()


# -- queries without Streamlit -------------------------------------------------------------------


def test_storage_comes_from_argv_then_env_then_default():
    env = {"OIALR_STORAGE": "sqlite:///env.db"}
    assert queries.storage_from_args(["--storage", "sqlite:///a.db"], env) == "sqlite:///a.db"
    assert queries.storage_from_args(["--storage=sqlite:///b.db"], {}) == "sqlite:///b.db"
    assert queries.storage_from_args(["-q", "tests"], env) == "sqlite:///env.db"
    assert queries.storage_from_args([], {}) == DEFAULT_STORAGE


def test_study_trials_are_one_row_each(dbs):
    engine = queries.open_engine(dbs["study"])
    studies = optuna_reads.list_studies(engine).set_index("study")
    trials = optuna_reads.load_study_trials(engine, int(studies.loc["tiny", "study_id"]))
    frame = trials.frame
    assert trials.objectives == ["val_acc", "trainable_fraction"]
    assert trials.directions == ["maximize", "minimize"]
    assert trials.params == ["delay", "sigma_cutoff", "update_freq"]
    assert trials.is_log("sigma_cutoff") and not trials.is_log("delay")
    assert frame["number"].tolist() == list(range(6))
    assert frame["state"].tolist() == ["COMPLETE"] * 4 + ["FAIL", "RUNNING"]
    assert frame["mode"].iloc[0] == "dense" and frame["params_delay"].isna().iloc[0]
    assert frame["params_delay"].iloc[1:].between(6, 24).all()
    assert frame.loc[4, "fail_reason"] == "Interrupted: stopped by SIGTERM"
    done = frame[frame["state"] == "COMPLETE"]
    assert studies.loc["tiny", "best_val_acc"] == pytest.approx(done["val_acc"].max())
    importances = optuna_reads.param_importances(trials)
    assert set(importances["objective"]) == {"val_acc", "trainable_fraction"}
    engine.dispose()


def test_metrics_reads_are_incremental_and_bounded(dbs):
    engine = queries.open_engine(dbs["study"])
    reader = MetricsReader(engine)
    runs = reader.latest_runs("tiny", full=False)
    run_id = int(runs.loc[runs["trial_number"] == 3, "id"].iloc[0])
    steps = reader.metrics("steps", run_id)
    assert steps["id"].is_monotonic_increasing and len(steps) > 10
    newer = reader.metrics("steps", run_id, int(steps["id"].iloc[4]))
    assert newer["id"].tolist() == steps["id"].iloc[5:].tolist()
    tail = reader.metrics("steps", run_id, limit=3)
    assert tail["id"].tolist() == steps["id"].iloc[-3:].tolist()

    window = None
    for after in (0, int(steps["id"].iloc[4])):
        tick = queries.poll(reader, run_id, {"steps": after})
        window = queries.extend_window(window, run_id, tick)
    assert window["after"]["steps"] == int(steps["id"].iloc[-1])
    assert "sigma" not in window["frames"]["layers"], "spectra are read one record at a time"
    record = reader.layer_record(int(window["frames"]["layers"]["id"].iloc[-1]))
    assert record["sigma"] == sorted(record["sigma"], reverse=True)
    engine.dispose()


def _record_script(url: str) -> int:
    """Runs examples/record_script.py (``oialr.record``, no study) into ``url``: its run id."""
    module = runpy.run_path(str(REPO / "examples" / "record_script.py"))
    return int(module["main"](["--storage", url]).result.run_id)


def test_a_run_recorded_without_a_study_is_live(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'script.db'}"
    run_id = _record_script(url)
    at = open_page(monkeypatch, url)  # no Optuna study: Live is the only page, and the default
    assert not at.exception, at.exception
    assert not at.info and not at.warning
    assert [t.value for t in at.title] == ["Live"]
    assert at.selectbox(key="run").value == run_id
    assert f"run {run_id} `my-script`" in texts(at)
    assert len(at.get("plotly_chart")) >= 6  # curves, fractions, ranks, measures, warm-up, Σ
    assert "All 46 singular values" in texts(at)
    assert "only runs recorded without a study" in at.sidebar.caption[1].value


def test_runs_recorded_without_a_study_are_offered_beside_the_study(monkeypatch, dbs, tmp_path):
    path = tmp_path / "both.db"
    shutil.copy(dbs["study"].removeprefix("sqlite:///"), path)
    url = f"sqlite:///{path}"
    run_id = _record_script(url)
    at = open_page(monkeypatch, url, "live")
    assert not at.exception and not at.warning
    assert at.radio(key="runs").value == "of the study"  # the study's trials first
    assert at.selectbox(key="trial").value is not None
    at = open_page(monkeypatch, url, "live", run=str(run_id))  # a shared link to the run
    assert not at.exception and not at.warning
    assert at.radio(key="runs").value == "recorded without a study"
    assert at.selectbox(key="run").value == run_id
    assert len(at.get("plotly_chart")) >= 6
    at = open_page(monkeypatch, url, "studies")  # the study's pages are unchanged
    assert at.dataframe[0].value.set_index("study").loc["tiny", "trials_per_hour"] > 0


def test_live_window_keeps_only_the_newest_rows(monkeypatch, dbs):
    monkeypatch.setitem(queries.LIVE_WINDOW, "steps", 5)
    engine = queries.open_engine(dbs["study"])
    reader = MetricsReader(engine)
    run_id = int(reader.latest_runs("tiny")["id"].iloc[1])
    window = queries.extend_window(None, run_id, queries.poll(reader, run_id, {}))
    assert len(window["frames"]["steps"]) == 5
    steps = reader.metrics("steps", run_id)
    assert window["frames"]["steps"]["id"].tolist() == steps["id"].iloc[-5:].tolist()
    engine.dispose()


@pytest.mark.postgres
def test_pages_read_a_study_on_postgresql(monkeypatch, postgres_server):
    name = f"app-pg-{uuid.uuid4().hex[:6]}"  # the server is shared with other tests
    app_fixtures.build_study_db(postgres_server.url, n_trials=2, name=name)
    for page in PAGES:
        at = open_page(monkeypatch, postgres_server.url, page, study=name)
        assert not at.exception, (page, at.exception)
        assert at.selectbox(key="study").value == name
        # Studies is a table (it loads no Plotly); every other page draws charts.
        assert at.dataframe if page == "studies" else at.get("plotly_chart"), page
    engine = queries.open_engine(postgres_server.url)
    with pytest.raises(sa.exc.InternalError, match="read-only transaction"), engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM oialr_steps"))
    engine.dispose()


def test_a_rerun_without_new_trials_builds_no_figure(monkeypatch, dbs, tmp_path):
    db = tmp_path / "rev.db"
    source = sqlite3.connect(dbs["study"].removeprefix("sqlite:///"))
    copy = sqlite3.connect(db)
    source.backup(copy)
    source.close()
    copy.close()
    url = f"sqlite:///{db}"
    built = []
    for name in ("pareto_figure", "slices_figure", "parallel_figure", "contour_figure"):
        real = getattr(charts, name)
        monkeypatch.setattr(
            charts, name, lambda *a, _f=real, _n=name, **k: built.append(_n) or _f(*a, **k)
        )
    at = open_page(monkeypatch, url, "parameters")
    assert sorted(built) == ["contour_figure", "parallel_figure", "slices_figure"]
    at.run()  # the same study revision: every figure comes from the cache
    at = open_page(monkeypatch, url, "parameters")  # another viewer, too
    assert len(built) == 3
    engine = queries.open_engine(url)
    before = optuna_reads.storage_token(engine)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="tiny", storage=url)
    study.add_trial(optuna.trial.create_trial(values=[0.5, 0.5], user_attrs={"mode": "dense"}))
    assert optuna_reads.storage_token(engine) != before  # the Studies summary is re-read too
    engine.dispose()
    st.cache_data.clear()  # instead of waiting the 2 s the fingerprint is cached for
    open_page(monkeypatch, url, "parameters")
    assert len(built) == 6  # a new trial: a new revision, new figures


def test_runs_can_be_read_for_a_few_trials_or_the_recent_ones(dbs):
    engine = queries.open_engine(dbs["study"])
    reader = MetricsReader(engine)
    every = reader.latest_runs("tiny", full=False)
    some = reader.latest_runs("tiny", full=False, trial_numbers=[1, 3])
    assert some["trial_number"].tolist() == [1, 3]
    assert some["id"].tolist() == every.set_index("trial_number").loc[[1, 3], "id"].tolist()
    recent = reader.latest_runs("tiny", full=False, recent=2)
    newest = set(every.nlargest(2, "updated_at")["trial_number"])
    running = set(every.loc[every["status"] == "running", "trial_number"])
    assert set(recent["trial_number"]) == newest | running
    engine.dispose()


def test_the_app_imports_no_torch_and_no_training_code():
    """What the server and every page import (the import-linter contract checks the code;
    this checks what a real import pulls in, e.g. through oialr/__init__.py)."""
    modules = "app.queries, app.charts, app.views, app.layer_ui, app.compression, app.tables"
    code = (
        f"import sys, {modules}, oialr.metrics_reader, optuna; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch' "
        "or m in ('oialr.controller', 'oialr.train', 'oialr.models', 'oialr.data')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env_with_repo(), cwd=REPO
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
