"""A run's layers: ranks per layer and step, basis stability, Σ's spectrum against the cutoff,
effective and stable rank, and rank trajectories of several runs. Every layer is named as the
user knows it (module name, kind, weight shape: see :func:`layer_label`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.charts._style import (
    MAX_HEATMAP_COLUMNS,
    PALETTE,
    floats,
    layer_labels,
    log_axis,
    styled,
    thin,
)

MAX_COMPARED_LAYERS = 16  # small multiples in the rank comparison (a 4 x 4 grid)


def layer_key(name: object) -> tuple:
    """Model order of module names: dotted parts compared as numbers where they are numbers
    ("blocks.2" before "blocks.10", "3" before "10")."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in str(name).split("."))


def _updates(layers: pd.DataFrame) -> pd.DataFrame:
    return layers[layers["event"] != "stability"] if "event" in layers else layers


def _layer_pivot(layers: pd.DataFrame, value: str) -> pd.DataFrame:
    table = _updates(layers).pivot_table(index="layer", columns="step", values=value,
                                         aggfunc="last")  # fmt: skip
    if table.shape[1] > MAX_HEATMAP_COLUMNS:
        stride = math.ceil(table.shape[1] / MAX_HEATMAP_COLUMNS)
        table = table.iloc[:, sorted({*range(0, table.shape[1], stride), table.shape[1] - 1})]
    return table.loc[sorted(table.index, key=layer_key)]


def rank_heatmap(layers: pd.DataFrame) -> go.Figure:
    """Rank fraction per layer (rows) and update step (columns); hover shows the rank."""
    fractions = _layer_pivot(layers, "rank_fraction")
    ranks = _layer_pivot(layers, "rank_after").reindex_like(fractions)
    names = layer_labels(layers)
    fig = go.Figure(
        go.Heatmap(
            z=fractions.to_numpy(dtype=float), x=fractions.columns.to_numpy(),
            y=[names.get(str(i), str(i)) for i in fractions.index],
            customdata=ranks.to_numpy(dtype=float), colorscale="Viridis", zmin=0, zmax=1,
            colorbar={"title": {"text": "rank / full"}},
            hovertemplate="%{y} · step %{x}<br>rank %{customdata} (%{z:.2f} of full)"
            "<extra></extra>",
        )
    )  # fmt: skip
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(type="category", automargin=True)
    return styled(fig, "rank per layer", height=max(260, 60 + 24 * len(fractions)))


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
    fig, names = go.Figure(), layer_labels(layers)
    after = layers[layers["event"] == "update"].dropna(subset=["stability"])
    every = sorted({*warmup.get("layer", []), *after.get("layer", [])}, key=layer_key)
    for index, layer in enumerate(every):
        tint = PALETTE[index % len(PALETTE)]
        for frame, dash, phase in ((warmup, "solid", "warm-up"), (after, "dash", "low-rank")):
            group = thin(frame[frame["layer"] == layer]) if len(frame) else frame
            if len(group):
                fig.add_trace(
                    go.Scatter(
                        x=group["step"].to_numpy(), y=floats(group["stability"]),
                        mode="lines+markers", marker={"size": 4},
                        line={"dash": dash, "color": tint},
                        name=f"{names.get(str(layer), layer)} ({phase})",
                        legendgroup=str(layer),
                    )
                )  # fmt: skip
    if conversion_step is not None and np.isfinite(conversion_step):
        fig.add_vline(x=float(conversion_step), line={"dash": "dash", "color": "crimson"})
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="basis stability")
    return styled(fig, "basis stability", legend={"orientation": "v"})


def spectrum_figure(
    sigma: Sequence[float], *, cutoff: float | None, rank: int | None, title: str
) -> go.Figure:
    """Σ's whole spectrum at one update (largest first, log scale): the kept values coloured,
    the dropped ones grey, the cutoff as a dashed line and the new rank as a dotted one.

    Both lines are traces or shapes inside the axis range, so the cut is always in view.
    """
    values = np.asarray(sigma, dtype=float)
    index = np.arange(1, len(values) + 1)
    keep = len(values) if rank is None else int(rank)
    kept = index <= keep
    fig = go.Figure()
    size = 6 if len(values) <= 64 else 4
    for name, part, tint in (("kept", kept, PALETTE[0]), ("dropped", ~kept, "#a0a0a0")):
        if part.any():
            fig.add_trace(
                go.Scatter(
                    x=index[part], y=values[part], mode="markers",
                    marker={"size": size, "color": tint},
                    name=f"{name} ({int(part.sum())})",
                    hovertemplate="σ%{x} = %{y:.4g}<extra></extra>",
                )
            )  # fmt: skip
    if cutoff is not None and np.isfinite(cutoff) and len(values):
        fig.add_trace(
            go.Scatter(
                x=[1, len(values)], y=[cutoff, cutoff], mode="lines",
                line={"dash": "dash", "color": "crimson"}, name=f"cutoff {cutoff:.3g}",
                hoverinfo="skip",
            )
        )  # fmt: skip
    if rank is not None and 0 < keep < len(values):
        fig.add_vline(x=keep + 0.5, line={"dash": "dot", "color": "#505050"},
                      annotation_text=f"rank {keep} of {len(values)}",
                      annotation_position="top right")  # fmt: skip
    shown = np.r_[values[values > 0], [cutoff] if cutoff else []]
    fig.update_xaxes(title_text="index (largest first)")
    fig.update_yaxes(title_text="singular value", **log_axis(shown))
    fig.update_layout(meta={"values": len(values)})
    return styled(fig, title, height=360)


def rank_measures_figure(layers: pd.DataFrame) -> go.Figure:
    """Each layer's rank over the updates: kept (solid steps) and effective (exp of the
    spectrum's entropy, dashed) on top, stable (Σσ² / σ₁²) below: stacked, so the panel titles
    never run into each other at half width. The gap between
    kept and effective says how much of the kept rank the spectrum really uses. Records of an
    older oialr have no effective or stable rank: only the kept rank is drawn then."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.14,
                        subplot_titles=("rank kept (solid), effective (dashed)", "stable rank"))  # fmt: skip
    names = layer_labels(layers)
    for index, (layer, group) in enumerate(_by_layer(_updates(layers))):
        tint, name = PALETTE[index % len(PALETTE)], names.get(str(layer), str(layer))
        group = thin(group)
        steps = group["step"].to_numpy()
        for row, column, dash in ((1, "rank_after", "solid"), (1, "effective_rank", "dash"),
                                  (2, "stable_rank", "solid")):  # fmt: skip
            if column in group and group[column].notna().any():
                fig.add_trace(
                    go.Scatter(
                        x=steps, y=floats(group[column]), mode="lines", name=name,
                        line={"color": tint, "dash": dash, "shape": "hv" if row == 1 and dash == "solid" else None},
                        legendgroup=name, showlegend=column == "rank_after",
                        hovertemplate=f"{name}<br>step %{{x}}: {column.replace('_after', ' kept').replace('_', ' ')} "
                        "%{y:.1f}<extra></extra>",
                    ),
                    row=row, col=1,
                )  # fmt: skip
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_yaxes(rangemode="tozero")
    return styled(fig, "ranks per layer", height=480, legend={"orientation": "v"})


def rank_compare_figure(history: pd.DataFrame, names: Mapping[int, str]) -> go.Figure:
    """Rank of each layer over the steps for several runs: one small plot per layer (in model
    order, at most ``MAX_COMPARED_LAYERS``), one colour per run, e.g. the best OIALR trial
    against a fixed-rank baseline."""
    frame = _updates(history)
    layers = sorted(frame["layer"].unique(), key=layer_key) if len(frame) else []
    shown = layers[:MAX_COMPARED_LAYERS]
    labels = layer_labels(frame)
    cols = min(4, max(1, len(shown)))
    rows = max(1, math.ceil(len(shown) / cols))
    fig = make_subplots(rows=rows, cols=cols, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=[labels.get(str(n), str(n)) for n in shown] or None)  # fmt: skip
    runs = list(dict.fromkeys(frame["run_id"])) if len(frame) else []
    for k, layer in enumerate(shown):
        part = frame[frame["layer"] == layer]
        for index, run_id in enumerate(runs):
            group = thin(part[part["run_id"] == run_id])
            fig.add_trace(
                go.Scatter(
                    x=group["step"].to_numpy(), y=group["rank_after"].to_numpy(dtype=float),
                    mode="lines", line={"shape": "hv", "color": PALETTE[index % len(PALETTE)]},
                    name=names.get(int(run_id), f"run {run_id}"), legendgroup=str(run_id),
                    showlegend=k == 0,
                ),
                row=k // cols + 1, col=k % cols + 1,
            )  # fmt: skip
    fig.update_annotations(font={"size": 11})
    left = len(layers) - len(shown)
    note = f"the first {len(shown)} of {len(layers)} layers" if left else ""
    fig.update_layout(meta={"sampled": note})
    return styled(fig, "rank per layer, compared", height=80 + 230 * rows)
