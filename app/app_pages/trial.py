"""Trial: one trial's parameters, results, command, layers and spectra; and a comparison."""

import pandas as pd
import streamlit as st

from app import charts, queries
from oialr.vocab import TrialAttr

ctx = st.session_state["ctx"]
url = ctx["url"]
trials = queries.trials(url, ctx["study_id"])
frame = trials.frame.set_index("number", drop=False)
if frame.empty:
    st.info(f"`{ctx['study']}` has no trials yet.")
    st.stop()
names = {int(n): f"{n} · {r[TrialAttr.MODE]} · {r['state'].lower()}" for n, r in frame.iterrows()}
numbers = list(names)
# Without a trial in the URL, open the best complete searched one by the first objective.
score = frame[trials.objectives[0]].where(frame["state"] == "COMPLETE")
if score[~frame[TrialAttr.MODE].isin(charts.BASELINE_SYMBOLS)].notna().any():
    score = score[~frame[TrialAttr.MODE].isin(charts.BASELINE_SYMBOLS)]
if score.isna().all():
    best = None
else:
    best = score.idxmax() if trials.directions[0] == "maximize" else score.idxmin()
default = numbers.index(best) if best is not None else 0
# Plain numbers as options: a bound widget writes its *label* to the URL, and ?trial=5 must
# stay valid when the trial's state changes.
trial = st.selectbox("Trial", numbers, index=default, key="trial", bind="query-params")
row = frame.loc[trial]
st.title(f"Trial {trial} of {ctx['study']}")
st.caption(f"{row[TrialAttr.MODE]} · {row['state'].lower()}")

params = {
    p: row[queries.PARAM_PREFIX + p]
    for p in trials.params
    if pd.notna(row[queries.PARAM_PREFIX + p])
}
results = [*trials.objectives, "test_acc", "stored_fraction", "wall_time"]
results = list(dict.fromkeys(k for k in results if k in row and pd.notna(row[k])))
left, right = st.columns(2)
left.subheader("Parameters")
if params:
    left.dataframe(pd.DataFrame({"value": params}), width="stretch")
else:
    left.caption(f"A {row[TrialAttr.MODE]} baseline: no searched parameters.")
right.subheader("Results")
cells = right.columns(3)
for index, key in enumerate(results):
    cells[index % 3].metric(charts.label(key), f"{row[key]:.4g}")
if row["state"] == "FAIL":
    st.error(f"Failed: {row.get(TrialAttr.FAIL_REASON) or 'no reason recorded'}")
if isinstance(row.get(TrialAttr.COMMAND), str):
    st.code(row[TrialAttr.COMMAND], language="bash")

run_ids = queries.trial_runs(trials, queries.runs(url, ctx["study"]))
run_id = run_ids.get(trial)
layers = queries.layers_of_run(url, int(run_id)) if pd.notna(run_id) else None
st.subheader("Layers")
if layers is None:
    st.info("No metrics recorded for this trial yet: its run appears once a worker starts it.")
elif layers.empty:
    st.caption("No low-rank layers: a dense run, or one not converted yet.")
else:
    st.dataframe(layers.drop(columns=["sigma"]), hide_index=True, width="stretch")
    st.plotly_chart(charts.spectra_figure(layers), key="spectra")

st.subheader("Compare")
others = [n for n in numbers if n != trial]
compare = st.multiselect("Compare with trials", others, key="compare", bind="query-params")
shown = ["state", TrialAttr.MODE, *results, *(queries.PARAM_PREFIX + p for p in trials.params)]
side = frame.loc[[trial, *compare], [c for c in shown if c in frame]]
st.dataframe(side.set_axis([names[n] for n in side.index]).T.astype(str), width="stretch")
chosen = [n for n in [trial, *compare] if pd.notna(run_ids.get(n))]
if chosen:
    epochs = queries.epochs(url, tuple(int(run_ids[n]) for n in chosen))
    labels = {int(run_ids[n]): names[n] for n in chosen}
    st.plotly_chart(charts.compare_figure(epochs, labels), key="compare_chart")
