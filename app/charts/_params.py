"""How the hyperparameters move the objectives: slices, parallel coordinates, importances and
contours. All SVG, and bounded: past a few hundred trials the points are a sample (the best
trials always in it) and every figure says so in ``layout.meta["sampled"]``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from app.charts._style import (
    PALETTE,
    column_array,
    f32,
    floats,
    label,
    log_axis,
    log_ticks,
    sample_rows,
    styled,
)

SLICE_POINTS = 400  # trials drawn in every slice cell (8 cells: 3,200 SVG points)
PARALLEL_LINES = 300  # polylines in the parallel-coordinates chart
CONTOUR_POINTS = 400  # trials drawn over the contour (the surface itself uses all of them)
COLOR_BANDS = 6  # parallel coordinates: one trace per colour band, not one per trial


def _best(objectives: Sequence[str], directions: Mapping[str, str] | None) -> dict[str, str]:
    directions = directions or {}
    return {
        o: directions.get(o, "maximize" if o.endswith("acc") else "minimize") for o in objectives
    }


def slices_figure(
    frame: pd.DataFrame,
    params: Sequence[str],
    objectives: Sequence[str],
    log_params: Sequence[str] = (),
    *,
    directions: Mapping[str, str] | None = None,
    max_points: int = SLICE_POINTS,
) -> go.Figure:
    """Each objective (rows) against each parameter (columns): one SVG scatter per cell, over
    the same trials in every cell (a sample past ``max_points``, with the best by each
    objective in it)."""
    frame, note = sample_rows(frame, max_points, best=_best(objectives, directions))
    fig = make_subplots(
        rows=len(objectives), cols=len(params), shared_yaxes=True,
        horizontal_spacing=0.03, vertical_spacing=0.12,
    )  # fmt: skip
    numbers = frame["number"].to_numpy(dtype=np.int32)
    for row, objective in enumerate(objectives, start=1):
        for col, param in enumerate(params, start=1):
            x = column_array(frame[param])
            fig.add_trace(
                go.Scatter(
                    x=x, y=f32(frame[objective]), mode="markers",
                    marker={"size": 5, "color": PALETTE[row - 1], "opacity": 0.6},
                    customdata=numbers,
                    hovertemplate=f"trial %{{customdata}}<br>{label(param)} = %{{x:.4~g}}<br>"
                    f"{label(objective)} = %{{y:.4f}}<extra></extra>",
                    showlegend=False,
                ),
                row=row, col=col,
            )  # fmt: skip
            axis = log_axis(x) if param in log_params and x.dtype != object else {}
            title = label(param) if row == len(objectives) else None
            fig.update_xaxes(title_text=title, row=row, col=col, **axis)
        fig.update_yaxes(title_text=label(objective), row=row, col=1)
    fig.update_layout(meta={"sampled": note})
    return styled(fig, "slices", height=260 * len(objectives) + 60)


def parallel_figure(
    frame: pd.DataFrame,
    columns: Sequence[str],
    color: str,
    *,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    log_columns: Sequence[str] = (),
    direction: str | None = None,
    max_lines: int = PARALLEL_LINES,
) -> go.Figure:
    """Parallel coordinates drawn as SVG polylines: one axis per column, one line per trial
    (a sample past ``max_lines``, the best by ``color`` in it), coloured by ``color``.

    ``ranges`` (the page's slider filters) are drawn as bands on their axes, and trials
    outside them in grey. Log-sampled columns get log axes; text columns one tick per value.
    Plotly's ``Parcoords`` would let the user brush the axes, but it is WebGL (over a second
    before the first line without a GPU) and a brush never reaches Streamlit anyway.
    """
    ranges = ranges or {}
    direction = direction or ("maximize" if color.endswith("acc") else "minimize")
    frame, note = sample_rows(frame, max_lines, best={color: direction})
    axes = [_parallel_axis(frame[c], c in log_columns) for c in columns]
    inside = np.ones(len(frame), dtype=bool)
    for column, (lo, hi) in ranges.items():
        if column in columns:
            values = floats(frame[column])
            inside &= (values >= lo) & (values <= hi)
    fig = go.Figure()
    ys = np.column_stack([a["y"] for a in axes]) if axes else np.zeros((len(frame), 0))
    _parallel_lines(fig, ys[~inside], "#d0d0d0", "outside the filters")
    shade = floats(frame[color])
    lo, hi = np.nanmin(shade) if len(shade) else 0.0, np.nanmax(shade) if len(shade) else 1.0
    bands = np.linspace(lo, hi, COLOR_BANDS + 1)
    tints = sample_colorscale("Viridis", list(np.linspace(0, 1, COLOR_BANDS)))
    band = np.clip(np.searchsorted(bands, shade, side="right") - 1, 0, COLOR_BANDS - 1)
    for b in range(COLOR_BANDS):
        _parallel_lines(fig, ys[inside & (band == b)], tints[b], f"band {b}")
    fig.add_trace(  # the colour scale, drawn by an invisible marker
        go.Scatter(
            x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
            marker={"color": [lo, hi], "colorscale": "Viridis", "showscale": True, "cmin": lo,
                    "cmax": hi, "colorbar": {"title": {"text": label(color)}}},
        )
    )  # fmt: skip
    _parallel_axes(fig, columns, axes, ranges, log_columns)
    fig.update_layout(meta={"sampled": note, "inside": int(inside.sum())})
    return styled(fig, "parallel coordinates", height=460, showlegend=False,
                  margin={"l": 40, "r": 40, "t": 80, "b": 30})  # fmt: skip


def _parallel_axis(values: pd.Series, log: bool) -> dict:
    """One axis: positions in [0, 1] and its ticks (value → position)."""
    if not pd.api.types.is_numeric_dtype(values.dropna().infer_objects()):
        codes, names = pd.factorize(values.astype(str))
        span = max(1, len(names) - 1)
        return {"y": codes / span, "ticks": [(i / span, str(n)) for i, n in enumerate(names)]}
    data = floats(values)
    if log:
        data = np.log10(np.where(data > 0, data, np.nan))
        ticks = log_ticks(10**data, log10=True)
        marks = list(zip(ticks.get("tickvals", []), ticks.get("ticktext", [])))
    else:
        marks = [(v, f"{v:.3g}") for v in np.linspace(np.nanmin(data), np.nanmax(data), 5)]
    lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
    scale = (hi - lo) or 1.0
    return {"y": (data - lo) / scale, "ticks": [((v - lo) / scale, t) for v, t in marks],
            "lo": lo, "scale": scale}  # fmt: skip


def _parallel_lines(fig: go.Figure, ys: np.ndarray, tint: str, name: str) -> None:
    """All lines of one colour as ONE trace: NaN between trials breaks the polyline."""
    if not len(ys):
        return
    dims = ys.shape[1]
    x = np.tile(np.r_[np.arange(dims, dtype=float), np.nan], len(ys))
    y = np.column_stack([ys, np.full(len(ys), np.nan)]).ravel()
    fig.add_trace(
        go.Scatter(
            x=x.astype(np.float32), y=y.astype(np.float32), mode="lines", name=name,
            line={"color": tint, "width": 1}, opacity=0.7, hoverinfo="skip",
            connectgaps=False,
        )
    )  # fmt: skip


def _parallel_axes(fig, columns, axes, ranges, log_columns) -> None:
    """Vertical axes with their tick labels, the filter bands, and the axis titles on top."""
    tx, ty, tt = [], [], []
    for i, (column, axis) in enumerate(zip(columns, axes)):
        fig.add_shape(type="line", x0=i, x1=i, y0=0, y1=1, line={"color": "#606060", "width": 1})
        for pos, text in axis["ticks"]:
            tx.append(i), ty.append(pos), tt.append(text)
        if column in ranges and "lo" in axis:
            lo, hi = ranges[column]
            if column in log_columns:
                lo, hi = math.log10(lo), math.log10(hi)
            y0, y1 = ((lo - axis["lo"]) / axis["scale"], (hi - axis["lo"]) / axis["scale"])
            fig.add_shape(type="rect", x0=i - 0.06, x1=i + 0.06, y0=y0, y1=y1,
                          fillcolor="rgba(220, 20, 60, 0.25)", line={"color": "crimson"},
                          name=f"filter {label(column)}")  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=tx, y=ty, mode="text", text=tt, textposition="middle left", showlegend=False,
            hoverinfo="skip", textfont={"size": 10, "color": "#404040"},
        )
    )  # fmt: skip
    fig.update_xaxes(
        tickvals=list(range(len(columns))), ticktext=[label(c) for c in columns], side="top",
        range=[-0.6, len(columns) - 0.6], showgrid=False, zeroline=False,
    )  # fmt: skip
    fig.update_yaxes(visible=False, range=[-0.05, 1.05])


def importance_figure(importances: pd.DataFrame) -> go.Figure:
    """Importance of each parameter, one bar trace per objective."""
    fig = go.Figure()
    for index, (objective, group) in enumerate(importances.groupby("objective", sort=False)):
        fig.add_trace(
            go.Bar(
                x=group["importance"].to_numpy(),
                y=[label(p) for p in group["param"]],
                orientation="h",
                name=label(objective),
                marker_color=PALETTE[index % len(PALETTE)],
            )
        )
    fig.update_xaxes(title_text="importance (sums to 1 per objective)")
    fig.update_yaxes(autorange="reversed")
    return styled(fig, "parameter importance", height=320, barmode="group")


def contour_figure(
    frame: pd.DataFrame,
    x: str,
    y: str,
    z: str,
    *,
    log_x: bool = False,
    log_y: bool = False,
    bins: int = 20,
    direction: str | None = None,
    max_points: int = CONTOUR_POINTS,
) -> go.Figure:
    """Mean of ``z`` over a ``bins`` x ``bins`` grid of two parameters (from every trial), with
    the trials on top (a sample past ``max_points``, the best by ``z`` in it).

    Scattered trials are averaged into grid cells (no per-trial rows in the contour), and empty
    cells are bridged by ``connectgaps``.
    """
    xs, ys, zs = floats(frame[x]), floats(frame[y]), floats(frame[z])
    keep = np.isfinite(xs) & np.isfinite(ys) & np.isfinite(zs)
    frame, xs, ys, zs = frame[keep], xs[keep], ys[keep], zs[keep]
    fig = go.Figure()
    if len(xs) >= 3:
        gx = np.log10(xs) if log_x else xs
        gy = np.log10(ys) if log_y else ys
        ex = np.linspace(gx.min(), gx.max() + 1e-12, bins + 1)
        ey = np.linspace(gy.min(), gy.max() + 1e-12, bins + 1)
        total, _, _ = np.histogram2d(gx, gy, bins=(ex, ey), weights=zs)
        count, _, _ = np.histogram2d(gx, gy, bins=(ex, ey))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / count  # NaN where no trial fell
        cx, cy = (ex[:-1] + ex[1:]) / 2, (ey[:-1] + ey[1:]) / 2
        fig.add_trace(
            go.Contour(
                x=10**cx if log_x else cx, y=10**cy if log_y else cy,
                z=mean.T,  # rows are y
                connectgaps=True, colorscale="Viridis", colorbar={"title": {"text": label(z)}},
                hovertemplate=f"{label(z)} ≈ %{{z:.4f}}<extra></extra>",
            )
        )  # fmt: skip
    best = {z: direction or ("maximize" if z.endswith("acc") else "minimize")}
    drawn, note = sample_rows(frame, max_points, best=best)
    fig.add_trace(
        go.Scatter(
            x=f32(drawn[x]), y=f32(drawn[y]), mode="markers",
            marker={"size": 6, "color": "white", "line": {"width": 1, "color": "black"}},
            customdata=np.column_stack([drawn["number"].to_numpy(), floats(drawn[z])]).astype(
                np.float32
            ),
            hovertemplate=f"trial %{{customdata[0]}}<br>{label(x)} = %{{x:.4~g}}<br>"
            f"{label(y)} = %{{y:.4~g}}<br>{label(z)} = %{{customdata[1]:.4f}}<extra></extra>",
            name="trials", showlegend=False,
        )
    )  # fmt: skip
    fig.update_xaxes(title_text=label(x), **(log_axis(xs) if log_x else {}))
    fig.update_yaxes(title_text=label(y), **(log_axis(ys) if log_y else {}))
    fig.update_layout(meta={"sampled": note})
    return styled(fig, f"{label(z)} over {label(x)} × {label(y)}", height=440)
