"""A run's figures: live curves, trainable fractions, ranks per layer, basis stability and
the spectra of Σ."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.charts._style import MAX_HEATMAP_COLUMNS, PALETTE, f32, floats, label, styled, thin


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
        go.Scattergl(
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
            go.Scattergl(
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


def _layer_pivot(layers: pd.DataFrame, value: str) -> pd.DataFrame:
    frame = layers[layers["event"] != "stability"] if "event" in layers else layers
    table = frame.pivot_table(index="layer", columns="step", values=value, aggfunc="last")
    if table.shape[1] > MAX_HEATMAP_COLUMNS:
        stride = math.ceil(table.shape[1] / MAX_HEATMAP_COLUMNS)
        table = table.iloc[:, sorted({*range(0, table.shape[1], stride), table.shape[1] - 1})]
    return table.loc[sorted(table.index, key=layer_key)]


def layer_key(name: object) -> tuple:
    text = str(name)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def rank_heatmap(layers: pd.DataFrame) -> go.Figure:
    """Rank fraction per layer (rows) and update step (columns); hover shows the rank."""
    fractions = _layer_pivot(layers, "rank_fraction")
    ranks = _layer_pivot(layers, "rank_after").reindex_like(fractions)
    fig = go.Figure(
        go.Heatmap(
            z=fractions.to_numpy(dtype=float),
            x=fractions.columns.to_numpy(),
            y=[str(i) for i in fractions.index],
            customdata=ranks.to_numpy(dtype=float),
            colorscale="Viridis",
            zmin=0,
            zmax=1,
            colorbar={"title": {"text": "rank / full"}},
            hovertemplate="layer %{y} · step %{x}<br>rank %{customdata} "
            "(%{z:.2f} of full)<extra></extra>",
        )
    )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="layer", type="category")
    return styled(fig, "rank per layer", height=max(260, 60 + 22 * len(fractions)))


def rank_lines(layers: pd.DataFrame) -> go.Figure:
    """Rank of each layer over the steps (one line per layer)."""
    fig = go.Figure()
    frame = layers[layers["event"] != "stability"]
    for index, (layer, group) in enumerate(_by_layer(frame)):
        group = thin(group)
        fig.add_trace(
            go.Scatter(
                x=group["step"].to_numpy(),
                y=group["rank_after"].to_numpy(dtype=float),
                mode="lines",
                line={"shape": "hv", "color": PALETTE[index % len(PALETTE)]},
                name=str(layer),
            )
        )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="rank")
    return styled(fig, "ranks")


def _by_layer(frame: pd.DataFrame):
    groups = dict(list(frame.groupby("layer", sort=False)))
    return [(name, groups[name]) for name in sorted(groups, key=layer_key)]


def stability_figure(
    warmup: pd.DataFrame,
    layers: pd.DataFrame,
    *,
    conversion_step: int | None = None,
) -> go.Figure:
    """Basis stability per layer: during warm-up (solid, from ``oialr_stability``) and after
    conversion (dashed, from each update's record), same colour for the same layer."""
    fig = go.Figure()
    after = layers[layers["event"] == "update"].dropna(subset=["stability"])
    names = sorted({*warmup.get("layer", []), *after.get("layer", [])}, key=layer_key)
    for index, layer in enumerate(names):
        tint = PALETTE[index % len(PALETTE)]
        for frame, dash, phase in ((warmup, "solid", "warm-up"), (after, "dash", "low-rank")):
            group = thin(frame[frame["layer"] == layer]) if len(frame) else frame
            if len(group):
                fig.add_trace(
                    go.Scatter(
                        x=group["step"].to_numpy(),
                        y=floats(group["stability"]),
                        mode="lines+markers",
                        marker={"size": 4},
                        line={"dash": dash, "color": tint},
                        name=f"{layer} ({phase})",
                        legendgroup=str(layer),
                    )
                )
    if conversion_step is not None and np.isfinite(conversion_step):
        fig.add_vline(x=float(conversion_step), line={"dash": "dash", "color": "crimson"})
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="basis stability")
    return styled(fig, "basis stability")


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


def spectrum_figure(
    sigma: Sequence[float], *, cutoff: float | None, rank: int | None, title: str
) -> go.Figure:
    """Singular values of Σ (largest first, log scale): kept ones coloured, dropped ones grey,
    and the cutoff as a dashed line (a trace, so the axis range always includes it)."""
    values = np.asarray(sigma, dtype=float)
    index = np.arange(1, len(values) + 1)
    kept = index <= (rank if rank is not None else len(values))
    fig = go.Figure()
    for name, part, tint in (("kept", kept, PALETTE[0]), ("dropped", ~kept, "#a0a0a0")):
        if part.any():
            fig.add_trace(
                go.Scatter(
                    x=index[part],
                    y=values[part],
                    mode="markers",
                    marker={"size": 6, "color": tint},
                    name=name,
                    hovertemplate="σ%{x} = %{y:.4g}<extra></extra>",
                )
            )
    if cutoff is not None and np.isfinite(cutoff) and len(values):
        fig.add_trace(
            go.Scatter(
                x=[1, len(values)],
                y=[cutoff, cutoff],
                mode="lines",
                line={"dash": "dash", "color": "crimson"},
                name=f"cutoff {cutoff:.3g}",
                hoverinfo="skip",
            )
        )
    fig.update_xaxes(title_text="index (largest first)")
    fig.update_yaxes(title_text="singular value", type="log")
    return styled(fig, title, height=340)


def spectra_figure(layers: pd.DataFrame) -> go.Figure:
    """Each layer's last recorded spectrum, normalised by its largest value (log scale)."""
    fig = go.Figure()
    for index, row in enumerate(layers.itertuples()):
        values = np.asarray(row.sigma, dtype=float)
        if len(values) and values[0] > 0:
            fig.add_trace(
                go.Scatter(
                    x=np.arange(1, len(values) + 1),
                    y=values / values[0],
                    mode="lines",
                    name=f"{row.layer} (rank {row.rank})",
                    line={"color": PALETTE[index % len(PALETTE)]},
                )
            )
    fig.update_xaxes(title_text="index")
    fig.update_yaxes(title_text="σ / σ₁", type="log")
    return styled(fig, "final spectra")


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
