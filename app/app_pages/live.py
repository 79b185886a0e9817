"""Live: one run of the study, refreshed every 2 s from rows newer than the last seen."""

import pandas as pd
import streamlit as st

from app import charts, layer_ui, queries
from app.links import quoted, url_number

ctx = st.session_state["ctx"]
url, study, links = ctx["url"], ctx["study"], ctx["links"]
st.title("Live")
# A shared link may name any trial (?trial=N) or recorded run (?run=ID), not only recent ones.
trials = (
    queries.live_runs(url, study, url_number(st.query_params.get("trial")))
    if study is not None
    else pd.DataFrame(columns=queries.NO_RUNS)
)
recorded = queries.recorded_runs(url, url_number(st.query_params.get("run")))
OF_STUDY, WITHOUT = "of the study", "recorded without a study"
sources = [name for name, runs in ((OF_STUDY, trials), (WITHOUT, recorded)) if len(runs)]
if not sources:
    st.info("No run of this study has written metrics yet: they appear once a worker starts.")
    st.stop()
source = sources[0]
if len(sources) > 1:
    source = st.radio(
        "Runs", sources, index=sources.index(WITHOUT) if "run" in st.query_params else 0,
        horizontal=True, key="runs", help="`oialr.record` and `oialr train` record runs "
        "without a study.",
    )  # fmt: skip
if source == OF_STUDY:
    # Running first, then the most recently active.
    runs = trials.assign(live=trials["status"] == "running").sort_values(
        ["live", "updated_at"], ascending=False
    )
    by_trial = runs.set_index("trial_number")
    instead = f"trial {by_trial.index[0]}"
    links.check(
        "trial", {str(n) for n in by_trial.index}, what="Trial",
        where=f"a trial of {quoted(study)} with metrics", instead=instead,
    )  # fmt: skip
    if WITHOUT not in sources:
        links.check("run", (), what="Run", where="a run recorded without a study", instead=instead)
    # Plain trial numbers as options: the URL (?trial=5) stays short and is shared with the
    # Trial page.
    trial = st.selectbox(
        "Trial", by_trial.index.tolist(), key="trial", bind="query-params",
        help=f"Running trials and the {queries.RECENT_RUNS} written last (any other: ?trial=N).",
    )  # fmt: skip
    run = by_trial.loc[trial]
else:
    runs = recorded.assign(live=recorded["status"] == "running").sort_values(
        ["live", "updated_at"], ascending=False
    )
    by_id = runs.set_index("id", drop=False)
    instead = f"run {by_id.index[0]}"
    links.check(
        "run", {str(i) for i in by_id.index}, what="Run", where="a run recorded without a study",
        instead=instead,
    )  # fmt: skip
    if OF_STUDY not in sources:
        where = f"a trial of {quoted(study)} with metrics" if study else "in this storage"
        links.check("trial", (), what="Trial", where=where, instead=instead)
    # Plain run ids as options, for the same reason (?run=3).
    chosen = st.selectbox(
        "Run", by_id.index.tolist(), key="run", bind="query-params",
        help=f"Running runs and the {queries.RECENT_RUNS} written last (any other: ?run=ID).",
    )  # fmt: skip
    run = by_id.loc[chosen]
run_id, running = int(run["id"]), bool(run["live"])
st.caption(f"run {run_id} `{run['name']}` · {run['mode']} · {run['model']} on {run['dataset']}")
auto = st.toggle("Refresh every 2 s", value=running, key="auto")


def live_view() -> None:
    """Reads only new rows (id > last seen) into a bounded window kept in session state."""
    tick = queries.live_poll(url, run_id, tuple(sorted(_after().items())))
    window = queries.extend_window(st.session_state.get("live"), run_id, tick)
    st.session_state["live"] = window
    run, frames = window["run"] or {}, window["frames"]
    steps, epochs = frames["steps"], frames["epochs"]
    layers, warmup = frames["layers"], frames["stability"]
    st.caption(f"status **{run.get('status')}** · last write {run.get('updated_at')} UTC")
    if steps.empty and epochs.empty:
        st.info("This run has no metrics yet: the first rows arrive after its first logged steps.")
        return
    conversion = run.get("conversion_step")
    updates = layers.loc[layers["event"] == "update", "step"] if len(layers) else []
    left, right = st.columns(2)
    left.plotly_chart(
        charts.curves_figure(steps, epochs, update_steps=updates, conversion_step=conversion),
        key="curves",
    )
    right.plotly_chart(charts.fraction_figure(epochs), key="fractions")
    if layers.empty and warmup.empty:
        st.caption("No layer records: a dense run, or conversion has not happened yet.")
        return
    left, right = st.columns(2)
    if len(layers):
        left.plotly_chart(charts.rank_heatmap(layers), key="rank_heatmap")
        with right:
            layer_ui.rank_measures_ui(layers, key="rank_measures")
    left, right = st.columns(2)
    left.plotly_chart(
        charts.stability_figure(warmup, layers, conversion_step=conversion), key="stability"
    )
    if len(layers):
        with right:
            layer_ui.spectrum_ui(url, layers, key="live")


def _after() -> dict[str, int]:
    window = st.session_state.get("live")
    return window["after"] if window and window["run_id"] == run_id else {}


st.fragment(live_view, run_every=2 if auto else None)()
