"""Pareto: accuracy against trainable (or stored) fraction, the front, the baselines."""

import streamlit as st

from app import charts, queries
from oialr.vocab import TrialAttr

ctx = st.session_state["ctx"]
url = ctx["url"]
st.title("Pareto")
trials = queries.trials(url, ctx["study_id"])
frame = trials.frame
done = frame[frame["state"] == "COMPLETE"]
if done.empty:
    counts = frame["state"].value_counts().to_dict()
    st.info(f"No complete trial in `{ctx['study']}` yet ({counts or 'no trials'}).")
    if TrialAttr.FAIL_REASON in frame and frame[TrialAttr.FAIL_REASON].notna().any():
        st.dataframe(
            frame.loc[frame[TrialAttr.FAIL_REASON].notna(), ["number", TrialAttr.FAIL_REASON]],
            hide_index=True,
        )
    st.stop()

params = [queries.PARAM_PREFIX + p for p in trials.params]
c1, c2, c3 = st.columns([1, 1, 2])
x = c1.radio(
    "Size axis",
    ["trainable_fraction", "stored_fraction"],
    format_func=charts.label,
    key="x",
    bind="query-params",
)
color = c2.selectbox(
    "Colour by",
    [None, *params],
    format_func=lambda p: charts.label(p) if p else "—",
    key="color",
    bind="query-params",
)
show_test = c2.checkbox("Show test accuracy", key="test", bind="query-params")
others = [s for s in queries.studies(url)["study"] if s != ctx["study"]]
overlay = c3.multiselect("Overlay studies", others, key="overlay", bind="query-params")

names, layers = [ctx["study"]], [(ctx["study"], done, params)]
for name in overlay:
    other = queries.trials(url, int(queries.studies(url).set_index("study").loc[name, "study_id"]))
    names.append(name)
    complete = other.frame[other.frame["state"] == "COMPLETE"]
    layers.append((name, complete, [queries.PARAM_PREFIX + p for p in other.params]))
for _, part, _ in layers:
    if x not in part:
        part[x] = float("nan")  # a study that never recorded this fraction: drawn without it

fig = charts.pareto_figure(
    layers,
    x=x,
    y=TrialAttr.VAL_ACC,
    color=color,
    show_test=show_test,
    x_direction=trials.direction(x),
    y_direction=trials.direction(TrialAttr.VAL_ACC),
)


def _open() -> None:
    """Runs before the next script run, so it may still change the bound study selector."""
    clicked = charts.clicked_trial(st.session_state["pareto"].selection.points)
    if clicked is not None:
        st.session_state["study"], st.session_state["open_trial"] = names[clicked[1]], clicked[0]


st.plotly_chart(fig, key="pareto", on_select=_open, selection_mode="points")
st.caption("Click a point to open its trial.")
if (number := st.session_state.pop("open_trial", None)) is not None:
    st.switch_page("app_pages/trial.py", query_params={"trial": number})

space = [queries.PARAM_PREFIX + p for p in ("delay", "update_freq", "sigma_cutoff")]
if all(p in done for p in space):
    with st.expander("3-D view: delay × update frequency × cutoff", expanded=True):
        logs = [trials.is_log(p.removeprefix(queries.PARAM_PREFIX)) for p in space]
        st.plotly_chart(
            charts.space_figure(done, space, color=TrialAttr.VAL_ACC, log_axes=logs), key="space"
        )
