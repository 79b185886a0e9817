"""Pareto: accuracy against trainable (or stored) fraction, the front, the baselines."""

import streamlit as st

from app import charts, queries, views
from app.links import quoted
from oialr.vocab import TrialAttr

ctx = st.session_state["ctx"]
url = ctx["url"]
st.title("Pareto")
trials = queries.trials(url, ctx["study_id"])
frame = trials.frame
done = views.complete(trials)
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
sizes = ["trainable_fraction", "stored_fraction"]
index = queries.studies_index(url)
others = [s for s in index if s != ctx["study"]]
links = ctx["links"]
links.check(
    "x",
    [charts.label(s) for s in sizes],
    what="Size axis",
    where=" or ".join(quoted(charts.label(s)) for s in sizes),
    instead=quoted(charts.label(sizes[0])),
)
links.check(
    "color",
    [charts.label(p) for p in params],
    what="Colour",
    where=f"a searched parameter of {quoted(ctx['study'])}",
    instead="no colour",
)
links.check(
    "test",
    ("true", "false"),
    what="Show test accuracy",
    where="`true` or `false`",
    instead="validation accuracy only",
    case_sensitive=False,
)
links.check_all(
    "overlay", others, what=("Overlay study", "Overlay studies"),
    where="another study in this storage", doing="overlaying", default=[],
)  # fmt: skip
c1, c2, c3 = st.columns([1, 1, 2])
x = c1.radio("Size axis", sizes, format_func=charts.label, key="x", bind="query-params")
color = c2.selectbox(
    "Colour by",
    [None, *params],
    format_func=lambda p: charts.label(p) if p else "—",
    key="color",
    bind="query-params",
)
show_test = c2.checkbox("Show test accuracy", key="test", bind="query-params")
overlay = c3.multiselect("Overlay studies", others, key="overlay", bind="query-params")
names = [ctx["study"], *overlay]
ids = tuple(index[n] for n in names)
# Log by default when every searched trial is below 0.2: a linear axis piles them against zero.
log_x = c1.toggle("Log size axis", value=views.log_x_default(url, ids, x), key="log_x")

fig = views.pareto(url, ids, x, color, show_test, log_x)


def _open() -> None:
    """Runs before the next script run, so it may still change the bound study selector."""
    clicked = charts.clicked_trial(st.session_state["pareto"].selection.points)
    if clicked is not None:
        st.session_state["study"], st.session_state["open_trial"] = names[clicked[1]], clicked[0]


st.plotly_chart(fig, key="pareto", on_select=_open, selection_mode="points")
sampled = fig.layout.meta["sampled"]
st.caption("Click a point to open its trial." + (f" Trials {sampled}." if sampled else ""))
if (number := st.session_state.pop("open_trial", None)) is not None:
    st.switch_page("app_pages/trial.py", query_params={"trial": number})

# WebGL, like every 3-D Plotly chart: about a second to draw where the browser has no GPU.
space = all(p in done for p in views.SPACE)
if space and st.toggle("3-D view: delay × update frequency × cutoff", key="space3d"):
    st.plotly_chart(views.space(url, ctx["study_id"]), key="space")
