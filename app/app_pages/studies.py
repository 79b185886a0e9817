"""Studies: every study in the storage, its trials by state, its pace and its best results."""

import streamlit as st

from app import queries
from oialr.vocab import TrialAttr

ctx = st.session_state["ctx"]
summary = queries.studies(ctx["url"])


def _pick() -> None:
    """A click on a table row makes that study the selected one (before the sidebar draws)."""
    rows = st.session_state["studies_table"].selection.rows
    if rows:
        st.session_state["study"] = summary.iloc[rows[0]]["study"]


st.title("Studies")
st.caption(
    "Click a row to select its study. *Trials per hour*: finished trials over the study's wall "
    "clock, all workers together. *Smallest fraction ≤1 pt*: the smallest trainable fraction "
    "among trials within one accuracy point of the study's dense baseline."
)
count = st.column_config.NumberColumn
# The share of finished trials as a bar inside the table: a separate chart would load Plotly
# (4.7 MB of JavaScript) for what six numbers already say.
table = summary.drop(columns=["study_id"])
table.insert(3, "done", (table["COMPLETE"] + table["PRUNED"] + table["FAIL"]) / table["trials"])
st.dataframe(
    table,
    key="studies_table",
    on_select=_pick,
    selection_mode="single-row",
    hide_index=True,
    column_config={
        **{s: count(s.lower(), format="%d") for s in ("COMPLETE", "PRUNED", "FAIL", "WAITING")},
        "done": st.column_config.ProgressColumn(
            "finished", help="complete, pruned or failed, of all trials", format="percent"
        ),
        "RUNNING": count("running now", format="%d"),
        "trials": count("trials", format="%d"),
        "trials_per_hour": count("trials per hour", format="%.1f"),
        "best_val_acc": count("best val acc", format="%.4f"),
        "dense_val_acc": count("dense val acc", format="%.4f"),
        "min_fraction_within_1pt": count("smallest fraction ≤1 pt", format="%.3f"),
        "last_activity": st.column_config.DatetimeColumn("last activity", format="distance"),
    },
)

outline = queries.outline(ctx["url"], ctx["study_id"])
with st.expander(f"Study `{ctx['study']}`: objectives and spec"):
    st.write(
        ", ".join(f"{o} ({d})" for o, d in zip(outline["objectives"], outline["directions"]))
        or "no objectives"
    )
    st.write("Searched parameters:", ", ".join(outline["params"]) or "none")
    failed = outline["failed"]
    if len(failed) and failed[TrialAttr.FAIL_REASON].notna().any():
        st.dataframe(failed, hide_index=True)
