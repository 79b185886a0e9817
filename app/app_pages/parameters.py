"""Parameters: how each hyperparameter moves each objective, and which ones matter."""

import streamlit as st

from app import charts, queries, views
from app.links import quoted

ctx = st.session_state["ctx"]
url, study_id = ctx["url"], ctx["study_id"]
st.title("Parameters")
trials = queries.trials(url, study_id)
prefix = queries.PARAM_PREFIX
params = [prefix + p for p in trials.params]
if not params:
    st.info(f"`{ctx['study']}` searches no parameters (baselines only): nothing to show here.")
    st.stop()
done = views.searched(trials)
if done.empty:
    st.info(
        f"No complete searched trial in `{ctx['study']}` yet; see the Studies page for failures."
    )
    st.stop()
objectives = [o for o in trials.objectives if o in done]


def sampled(fig) -> None:
    """Says which trials a chart draws when it cannot draw them all."""
    if note := (fig.layout.meta or {}).get("sampled"):
        st.caption(f"Trials {note}.")


# One objective at a time: a row of cells per objective doubled the page's drawing time.
links = ctx["links"]
shown = objectives
if len(objectives) > 1:
    links.check(
        "slices_of", [charts.label(o) for o in objectives], what="Slices of",
        where=" or ".join(quoted(charts.label(o)) for o in objectives),
        instead=quoted(charts.label(objectives[0])),
    )  # fmt: skip
    shown = [st.radio("Slices of", objectives, format_func=charts.label, horizontal=True,
                      key="slices_of", bind="query-params")]  # fmt: skip
fig = views.slices(url, study_id, tuple(shown))
st.plotly_chart(fig, key="slices")
sampled(fig)

ranges = {}
with st.expander("Filter trials (parallel coordinates)"):
    for column in params:
        values = done[column].dropna()
        if values.dtype.kind in "fi" and values.min() < values.max():
            lo, hi = float(values.min()), float(values.max())
            chosen = st.slider(charts.label(column), lo, hi, (lo, hi), key=f"range_{column}")
            if chosen != (lo, hi):
                ranges[column] = chosen
fig = views.parallel(url, study_id, tuple(sorted(ranges.items())))
inside = done
for column, (lo, hi) in ranges.items():
    inside = inside[inside[column].between(lo, hi)]
st.caption(f"{len(inside):,} of {len(done):,} complete trials inside the filters.")
st.plotly_chart(fig, key="parallel")
sampled(fig)

left, right = st.columns(2)
with left:
    links.check(
        "evaluator", queries.EVALUATORS, what="Importance evaluator",
        where=" or ".join(quoted(e) for e in queries.EVALUATORS),
        instead=quoted(queries.EVALUATORS[0]),
    )  # fmt: skip
    evaluator = st.radio(
        "Importance evaluator", queries.EVALUATORS, horizontal=True, key="evaluator",
        bind="query-params",
    )  # fmt: skip
    importances = queries.importances(url, study_id, evaluator)
    if importances.empty:
        st.caption("Importances need at least 3 complete trials with every parameter set.")
    else:
        st.plotly_chart(charts.importance_figure(importances), key="importance")
        if note := importances.attrs.get("sampled"):
            st.caption(f"Importances {note}.")
with right:
    if len(params) >= 2:
        a, b, c = st.columns(3)
        px = a.selectbox("x", params, index=0, format_func=charts.label, key="cx")
        py = b.selectbox("y", params, index=1, format_func=charts.label, key="cy")
        pz = c.selectbox("colour", objectives, format_func=charts.label, key="cz")
        fig = views.contour(url, study_id, px, py, pz)
        st.plotly_chart(fig, key="contour")
        sampled(fig)
