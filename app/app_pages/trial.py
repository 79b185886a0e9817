"""Trial: one trial's parameters, results, command, layers and spectra; and a comparison."""

import pandas as pd
import streamlit as st

from app import charts, layer_ui, queries
from app.links import quoted
from app.tables import markdown_table
from oialr.vocab import FIXED_RANK, TrialAttr

ctx = st.session_state["ctx"]
url = ctx["url"]
trials = queries.trials(url, ctx["study_id"])
frame = trials.frame.set_index("number", drop=False)
if frame.empty:
    st.info(f"`{ctx['study']}` has no trials yet.")
    st.stop()
names = {int(n): f"{n} · {m} · {s.lower()}" for n, m, s in
         zip(frame["number"], frame[TrialAttr.MODE], frame["state"])}  # fmt: skip
numbers = list(names)
baseline = frame[TrialAttr.MODE].isin(charts.BASELINE_SYMBOLS)
# Without a trial in the URL, open the best complete searched one by the first objective.
score = frame[trials.objectives[0]].where(frame["state"] == "COMPLETE")
if score[~baseline].notna().any():
    score = score[~baseline]
if score.isna().all():
    best = None
else:
    best = score.idxmax() if trials.directions[0] == "maximize" else score.idxmin()
default = numbers.index(best) if best is not None else 0
# Plain numbers as options: a bound widget writes its *label* to the URL, and ?trial=5 must
# stay valid when the trial's state changes.
links = ctx["links"]
links.check(
    "trial", {str(n) for n in numbers}, what="Trial", where=f"a trial of {quoted(ctx['study'])}",
    instead=f"trial {numbers[default]}",
)  # fmt: skip
trial = st.selectbox("Trial", numbers, index=default, key="trial", bind="query-params")
row = frame.loc[trial]
others = [n for n in numbers if n != trial]
# An OIALR trial is compared with the fixed-rank baselines by default: what adaptivity buys.
fixed = [] if baseline[trial] else frame.index[frame[TrialAttr.MODE] == FIXED_RANK].tolist()
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
    left.markdown(markdown_table(pd.DataFrame({"value": params}), "parameter"))
else:
    left.caption(f"A {row[TrialAttr.MODE]} baseline: no searched parameters.")
right.subheader("Results")
right.markdown(
    markdown_table(pd.DataFrame({"value": {charts.label(k): row[k] for k in results}}), "result")
)
if row["state"] == "FAIL":
    st.error(f"Failed: {row.get(TrialAttr.FAIL_REASON) or 'no reason recorded'}")
if isinstance(row.get(TrialAttr.COMMAND), str):
    # Inline code, not st.code: its syntax highlighter is a 1.5 MB chunk (0.4 s per page load).
    st.markdown(f"Reproduce it: `{row[TrialAttr.COMMAND]}`")

run_id = queries.trial_runs(trials, queries.runs_of_trials(url, ctx["study"], (trial,))).get(trial)
layers = queries.layers_of_run(url, int(run_id)) if pd.notna(run_id) else None
st.subheader("Layers")
if layers is None:
    st.info("No metrics recorded for this trial yet: its run appears once a worker starts it.")
elif layers.empty:
    st.caption("No low-rank layers: a dense run, or one not converted yet.")
else:
    table = layers.assign(
        shape=[f"{int(r)} × {int(c)}" if pd.notna(r) and pd.notna(c) else "" for r, c in
               zip(layers["rows"], layers["cols"])],
    ).drop(columns=["sigma", "id", "rows", "cols", "step"], errors="ignore")  # fmt: skip
    first = ["layer", "kind", "shape", "full_rank", "rank", "rank_fraction"]
    number = st.column_config.NumberColumn
    st.dataframe(
        table[first + [c for c in table if c not in first]], hide_index=True, width="stretch",
        column_config={
            "layer": st.column_config.TextColumn("layer (module)"),
            "full_rank": number("full rank", format="%d", help="min(rows, cols) of the weight"),
            "rank": number("rank", format="%d"), "rank_fraction": number(format="%.3f"),
            "trainable": number(format="%d"), "stored": number(format="%d"),
            "cutoff": number(format="%.3g"), "effective_rank": number(format="%.1f"),
            "stable_rank": number(format="%.1f"), "mean_stability": number(format="%.4f"),
            "warmup_stability": number(format="%.4f"), "updates": number(format="%d"),
            "converted_at": number("converted at step", format="%d"),
        },
    )  # fmt: skip
    history = queries.layer_history(url, (int(run_id),))
    layer_ui.spectrum_ui(url, history, key="trial")
    layer_ui.rank_measures_ui(history, key="trial_ranks")

st.subheader("Compare")
# The URL holds these labels: number and mode, which a trial keeps, not its state, which changes.
kept = {n: f"{n} · {frame.loc[n, TrialAttr.MODE]}" for n in others}
links.check_all(
    "compare", set(kept.values()), what=("Trial to compare", "Trials to compare"),
    where=f"another trial of {quoted(ctx['study'])}", doing="comparing with",
    default=[kept[n] for n in fixed[:3]],
)  # fmt: skip
compare = st.multiselect(
    "Compare with trials (up to 3)", others, default=fixed[:3], max_selections=3,
    key="compare", bind="query-params", format_func=kept.get,
)  # fmt: skip
shown = ["state", TrialAttr.MODE, *results, *(queries.PARAM_PREFIX + p for p in trials.params)]
side = frame.loc[[trial, *compare], [c for c in shown if c in frame]]
side = side.set_axis([names[n] for n in side.index]).T
st.markdown(markdown_table(side.rename(index=charts.label), "trial"))
run_ids = queries.trial_runs(
    trials, queries.runs_of_trials(url, ctx["study"], tuple(sorted({trial, *compare})))
)
chosen = [n for n in [trial, *compare] if pd.notna(run_ids.get(n))]
if chosen:
    ids = tuple(int(run_ids[n]) for n in chosen)
    labels = {int(run_ids[n]): names[n] for n in chosen}
    st.plotly_chart(charts.compare_figure(queries.epochs(url, ids), labels), key="compare_chart")
    history = queries.layer_history(url, ids)
    if len(history):
        fig = charts.rank_compare_figure(history, labels)
        st.plotly_chart(fig, key="rank_compare")
        if note := fig.layout.meta["sampled"]:
            st.caption(f"Showing {note}.")
