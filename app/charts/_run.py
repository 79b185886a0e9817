"""A run's training curves: loss and accuracy, parameter fractions, and runs side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.charts._style import PALETTE, f32, floats, label, styled, thin


def curves_figure(
    steps: pd.DataFrame,
    epochs: pd.DataFrame,
    *,
    update_steps: Sequence[int] = (),
    conversion_step: int | None = None,
) -> go.Figure:
    """Training loss per logged step (left axis) and accuracy per epoch (right axis), with the
    conversion to low rank as a vertical line and rank updates as ticks along the bottom."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    steps = thin(steps)
    fig.add_trace(
        go.Scatter(
            x=steps["step"].to_numpy(dtype=np.int32),
            y=f32(steps["loss"]),
            mode="lines",
            name="train loss (step)",
            line={"width": 1, "color": PALETTE[0]},
        ),
        secondary_y=False,
    )
    if len(epochs):
        for column, dash in (("train_acc", "dot"), ("val_acc", "solid")):
            fig.add_trace(
                go.Scatter(
                    x=epochs["step"].to_numpy(),
                    y=floats(epochs[column]),
                    mode="lines+markers",
                    name=label(column).replace("accuracy", "acc"),
                    line={"dash": dash, "color": PALETTE[2 if column == "val_acc" else 1]},
                ),
                secondary_y=True,
            )
    updates = np.unique(np.asarray(update_steps, dtype=float))
    if len(updates):
        fig.add_trace(
            go.Scatter(
                x=updates,
                y=np.zeros(len(updates)),
                mode="markers",
                marker={"symbol": "line-ns-open", "size": 10, "color": "gray"},
                name="rank update",
                hovertemplate="update at step %{x}<extra></extra>",
            ),
            secondary_y=True,
        )
    if conversion_step is not None and np.isfinite(conversion_step):
        fig.add_vline(
            x=float(conversion_step),
            line={"dash": "dash", "color": "crimson"},
            annotation_text="conversion",
        )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="loss", secondary_y=False)
    # Own ticks on the accuracy axis (not synced to the loss axis's), no second grid.
    fig.update_yaxes(
        title_text="accuracy", range=[0, 1.02], tickmode="auto", showgrid=False, secondary_y=True
    )
    return styled(fig, "loss and accuracy")


def fraction_figure(epochs: pd.DataFrame) -> go.Figure:
    """Trainable and stored parameter fractions (of the dense model) over the steps."""
    fig = go.Figure()
    for index, column in enumerate(("trainable_fraction", "stored_fraction")):
        if column in epochs:
            fig.add_trace(
                go.Scatter(
                    x=epochs["step"].to_numpy(),
                    y=floats(epochs[column]),
                    mode="lines+markers",
                    name=label(column),
                    line={"color": PALETTE[index + 3]},
                )
            )
    fig.add_hline(y=1.0, line={"dash": "dot", "color": "gray"})
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="fraction of dense", rangemode="tozero")
    return styled(fig, "parameter fractions")


def compare_figure(epochs: pd.DataFrame, names: Mapping[int, str]) -> go.Figure:
    """Validation accuracy and trainable fraction per epoch, one colour per run."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=(label("val_acc"), label("trainable_fraction"))
    )
    for index, (run_id, group) in enumerate(epochs.groupby("run_id", sort=False)):
        tint = PALETTE[index % len(PALETTE)]
        for col, column in enumerate(("val_acc", "trainable_fraction"), start=1):
            fig.add_trace(
                go.Scatter(
                    x=group["epoch"].to_numpy(),
                    y=floats(group[column]),
                    mode="lines+markers",
                    name=names.get(int(run_id), f"run {run_id}"),
                    legendgroup=str(run_id),
                    showlegend=col == 1,
                    line={"color": tint},
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="epoch")
    return styled(fig, "comparison")
