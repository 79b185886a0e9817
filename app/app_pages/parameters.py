"""Parameters: how each hyperparameter moves each objective, and which ones matter."""

import streamlit as st

from app import charts, queries

ctx = st.session_state["ctx"]
st.title("Parameters")
trials = queries.trials(ctx["url"], ctx["study_id"])
prefix = queries.PARAM_PREFIX
params = [prefix + p for p in trials.params]
if not params:
    st.info(f"`{ctx['study']}` searches no parameters (baselines only): nothing to show here.")
    st.stop()
frame = trials.frame
done = frame[(frame["state"] == "COMPLETE") & frame[params].notna().any(axis=1)]
if done.empty:
    st.info(
        f"No complete searched trial in `{ctx['study']}` yet; see the Studies page for failures."
    )
    st.stop()
objectives = [o for o in trials.objectives if o in done]
logs = [prefix + p for p in trials.params if trials.is_log(p)]

st.plotly_chart(charts.slices_figure(done, params, objectives, log_params=logs), key="slices")

ranges = {}
with st.expander("Filter trials (parallel coordinates)"):
    for column in params:
        values = done[column].dropna()
        if values.dtype.kind in "fi" and values.min() < values.max():
            lo, hi = float(values.min()), float(values.max())
            chosen = st.slider(charts.label(column), lo, hi, (lo, hi), key=f"range_{column}")
            if chosen != (lo, hi):
                ranges[column] = chosen
inside = done
for column, (lo, hi) in ranges.items():
    inside = inside[inside[column].between(lo, hi)]
st.caption(f"{len(inside)} of {len(done)} complete trials inside the filters.")
fig = charts.parallel_figure(
    done, params + objectives, objectives[0], ranges=ranges, log_columns=logs
)
st.plotly_chart(fig, key="parallel")

left, right = st.columns(2)
with left:
    evaluator = st.radio(
        "Importance evaluator", queries.EVALUATORS, horizontal=True, key="evaluator",
        bind="query-params",
    )  # fmt: skip
    importances = queries.importances(ctx["url"], ctx["study_id"], evaluator)
    if importances.empty:
        st.caption("Importances need at least 3 complete trials with every parameter set.")
    else:
        st.plotly_chart(charts.importance_figure(importances), key="importance")
with right:
    if len(params) >= 2:
        a, b, c = st.columns(3)
        px = a.selectbox("x", params, index=0, format_func=charts.label, key="cx")
        py = b.selectbox("y", params, index=1, format_func=charts.label, key="cy")
        pz = c.selectbox("colour", objectives, format_func=charts.label, key="cz")
        fig = charts.contour_figure(done, px, py, pz, log_x=px in logs, log_y=py in logs)
        st.plotly_chart(fig, key="contour")
