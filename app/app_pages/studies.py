"""Studies: every study in the storage, its trials by state and its best results."""

import streamlit as st

from app import charts, queries
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
    "Click a row to select its study. *Smallest fraction ≤1 pt* is the smallest trainable "
    "fraction among trials within one accuracy point of the study's dense baseline."
)
st.dataframe(
    summary.drop(columns=["study_id"]),
    key="studies_table",
    on_select=_pick,
    selection_mode="single-row",
    hide_index=True,
    column_config={
        "RUNNING": st.column_config.NumberColumn("running now"),
        "best_val_acc": st.column_config.NumberColumn("best val acc", format="%.4f"),
        "dense_val_acc": st.column_config.NumberColumn("dense val acc", format="%.4f"),
        "min_fraction_within_1pt": st.column_config.NumberColumn(
            "smallest fraction ≤1 pt", format="%.3f"
        ),
        "last_activity": st.column_config.DatetimeColumn("last activity", format="distance"),
    },
)
st.plotly_chart(charts.states_figure(summary), key="states")

trials = queries.trials(ctx["url"], ctx["study_id"])
with st.expander(f"Study `{ctx['study']}`: objectives and spec"):
    st.write(
        ", ".join(f"{o} ({d})" for o, d in zip(trials.objectives, trials.directions))
        or "no objectives"
    )
    st.write("Searched parameters:", ", ".join(trials.params) or "none")
    failed = trials.frame[trials.frame["state"] == "FAIL"]
    if len(failed) and TrialAttr.FAIL_REASON in failed:
        st.dataframe(failed[["number", TrialAttr.FAIL_REASON]], hide_index=True)
