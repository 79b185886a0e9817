"""Widgets the Live and Trial pages share: pick a layer and one of its updates, and see Σ's whole
spectrum there against the cutoff; and the layers' effective and stable rank over time."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts, queries


def spectrum_ui(url: str, layers: pd.DataFrame, key: str) -> None:
    """Σ's spectrum for a chosen layer and update; by default the layer cut the most, at its
    last update. ``layers`` are the run's convert/update records (without spectra: the chosen
    one is read alone, by id)."""
    records = layers[layers["event"] != "stability"] if "event" in layers else layers
    if records.empty:
        return
    last = records.groupby("layer")["rank_fraction"].last()
    names = sorted(last.index, key=charts.layer_key)
    labels = charts.layer_labels(records)
    left, right = st.columns([2, 3])
    layer = left.selectbox(
        "Layer", names, index=names.index(last.idxmin()), key=f"{key}_layer",
        format_func=lambda n: labels.get(str(n), str(n)),
    )  # fmt: skip
    rows = records[records["layer"] == layer]
    steps = rows["step"].tolist()
    step = steps[-1]
    if len(steps) > 1:
        step = right.select_slider("Update at step", steps, value=steps[-1], key=f"{key}_step")
    row = queries.layer_record(url, int(rows.loc[rows["step"] == step, "id"].iloc[-1]))
    if not row or not row["sigma"]:
        st.caption("This record holds no spectrum.")
        return
    title = f"Σ of {labels.get(str(layer), layer)} at step {step} ({row['event']})"
    fig = charts.spectrum_figure(
        row["sigma"], cutoff=row["cutoff"], rank=row["rank_after"], title=title
    )
    st.plotly_chart(fig, key=f"{key}_spectrum")
    values, before, kept = len(row["sigma"]), int(row["rank_before"]), int(row["rank_after"])
    if values < before:
        st.caption(
            f"The largest {values} of {before} values only: recorded with `top_k_sigma`, or by "
            "an oialr that kept 32 at most, so the tail and the cut may be out of view."
        )
    else:
        st.caption(
            f"All {values} singular values of Σ at this update: {kept} kept, {values - kept} "
            f"dropped (full rank {row['n']})."
        )


def rank_measures_ui(layers: pd.DataFrame, key: str) -> None:
    """Kept, effective and stable rank per layer over the updates."""
    records = layers[layers["event"] != "stability"] if "event" in layers else layers
    if records.empty:
        return
    st.plotly_chart(charts.rank_measures_figure(records), key=key)
    if "effective_rank" not in records or records["effective_rank"].isna().all():
        st.caption("No effective or stable rank in these records (an oialr before schema 2).")
