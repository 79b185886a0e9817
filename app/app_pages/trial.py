"""Trial: one trial's parameters, results, command, layers and spectra; and a comparison."""

import pandas as pd
import streamlit as st

from app import charts, queries

ctx = st.session_state["ctx"]
url = ctx["url"]
trials = queries.trials(url, ctx["study_id"])
frame = trials.frame.set_index("number", drop=False)
if frame.empty:
    st.info(f"`{ctx['study']}` has no trials yet.")
    st.stop()
names = {int(n): f"{n} · {r['mode']} · {r['state'].lower()}" for n, r in frame.iterrows()}
trial = st.selectbox("Trial", list(names), format_func=names.get, key="trial", bind="query-params")
row = frame.loc[trial]
st.title(f"Trial {trial} of {ctx['study']}")

params = {p: row[queries.PARAM_PREFIX + p] for p in trials.params}
results = ["val_acc", "test_acc", "trainable_fraction", "stored_fraction", "wall_time"]
left, right = st.columns(2)
left.subheader("Parameters")
left.dataframe(pd.DataFrame({"value": params}).dropna(), width="stretch")
right.subheader("Results")
cells = right.columns(3)
for index, key in enumerate(k for k in results if pd.notna(row.get(k))):
    cells[index % 3].metric(charts.label(key), f"{row[key]:.4g}")
if row["state"] == "FAIL":
    st.error(f"Failed: {row.get('fail_reason') or 'no reason recorded'}")
if isinstance(row.get("command"), str):
    st.code(row["command"], language="bash")

run_ids = queries.trial_runs(trials, queries.runs(url, ctx["study"]))
run_id = run_ids.get(trial)
compare = st.multiselect(
    "Compare with",
    [n for n in names if n != trial],
    format_func=names.get,
    key="compare",
    bind="query-params",
)
chosen = [n for n in [trial, *compare] if pd.notna(run_ids.get(n))]
side = frame.loc[[trial, *compare]].set_index("number").drop(columns=["trial_id"])
st.dataframe(side.T.astype(str), width="stretch")
if chosen:
    epochs = queries.epochs(url, tuple(int(run_ids[n]) for n in chosen))
    labels = {int(run_ids[n]): names[n] for n in chosen}
    st.plotly_chart(charts.compare_figure(epochs, labels), key="compare_chart")

if pd.isna(run_id):
    st.info("No metrics recorded for this trial yet: its run appears once a worker starts it.")
    st.stop()
layers = queries.layers_of_run(url, int(run_id))
if layers.empty:
    st.caption("No low-rank layers: a dense run, or it has not been converted yet.")
    st.stop()
st.subheader("Layers")
st.dataframe(layers.drop(columns=["sigma"]), hide_index=True, width="stretch")
st.plotly_chart(charts.spectra_figure(layers), key="spectra")
