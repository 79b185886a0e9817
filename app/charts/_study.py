"""A study's figures: the Pareto front, the searched space, states, slices, parallel
coordinates, importances and contours."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.charts._style import (
    BASELINE_SYMBOLS,
    PALETTE,
    STATE_COLORS,
    column_array,
    f32,
    floats,
    label,
    styled,
)


def pareto_mask(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    x_direction: str = "minimize",
    y_direction: str = "maximize",
) -> np.ndarray:
    """Which points are non-dominated in two objectives (NaN points never are).

    A point is dominated when another is at least as good in both objectives and strictly
    better in one; exact duplicates of a front point are on the front too. O(n log n).

    >>> pareto_mask([0.1, 0.5, 0.5, 1.0], [0.80, 0.90, 0.85, 0.90]).tolist()
    [True, True, False, False]
    """
    xs, ys = floats(x), floats(y)
    # Work in "smaller is better" for both.
    xs = xs if x_direction == "minimize" else -xs
    ys = ys if y_direction == "minimize" else -ys
    mask = np.zeros(len(xs), dtype=bool)
    valid = np.flatnonzero(~(np.isnan(xs) | np.isnan(ys)))
    order = valid[np.lexsort((ys[valid], xs[valid]))]
    best_y = math.inf  # best y among points with strictly smaller x
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and xs[order[j]] == xs[order[i]]:
            j += 1
        group = order[i:j]  # same x, sorted by y: only the smallest y (and its ties) can win
        group_best = ys[group[0]]
        if group_best < best_y:
            mask[group[ys[group] == group_best]] = True
        best_y = min(best_y, group_best)
        i = j
    return mask


def _hover(frame: pd.DataFrame, params: Sequence[str], first: int) -> str:
    lines = []
    for k, p in enumerate(params):
        number = ":.4~g" if pd.api.types.is_numeric_dtype(frame[p]) else ""
        lines.append(f"{label(p)} = %{{customdata[{first + k}]{number}}}")
    return "<br>".join(lines)


def pareto_figure(
    studies: Sequence[tuple[str, pd.DataFrame, Sequence[str]]],
    *,
    x: str = "trainable_fraction",
    y: str = "val_acc",
    color: str | None = None,
    show_test: bool = False,
    x_direction: str = "minimize",
    y_direction: str = "maximize",
) -> go.Figure:
    """Accuracy against a parameter fraction, with each study's Pareto front.

    Args:
        studies: ``(name, complete trials, parameter columns)`` per study; the first is the main
            one, whose OIALR points are coloured by ``color``; the others are overlaid.
        x, y: Columns of the two objectives; the front is computed on them.
        color: A parameter column colouring the main study's points.
        show_test: Also draw test accuracy (open markers), e.g. to spot overfitting the search.

    Every marker's ``customdata`` starts with (trial number, study index) so a click can open
    the trial; the rest are the trial's parameters, shown on hover.
    """
    fig = go.Figure()
    for index, (name, frame, params) in enumerate(studies):
        suffix = f" · {name}" if len(studies) > 1 else ""
        frame = frame[np.isfinite(floats(frame[x])) & np.isfinite(floats(frame[y]))]
        _add_study(fig, index, suffix, frame, list(params), x=x, y=y,
                   color=color if index == 0 else None, show_test=show_test,
                   directions=(x_direction, y_direction))  # fmt: skip
    styled(fig, f"{label(y)} vs {label(x)}", height=540, clickmode="event+select")
    fig.update_xaxes(title_text=label(x))
    fig.update_yaxes(title_text=label(y))
    return fig


def _add_study(fig, index, suffix, frame, params, *, x, y, color, show_test, directions) -> None:
    """One study's traces: its OIALR trials, its baselines, its front, its test accuracy."""
    tint = PALETTE[index % len(PALETTE)]
    columns = [frame["number"].to_numpy(), np.full(len(frame), index)]
    columns += [column_array(frame[p]) for p in params]
    custom = np.column_stack(columns)
    if custom.dtype != object:
        custom = custom.astype(np.float32)  # exact for trial numbers below 2**24
    base = f"trial %{{customdata[0]}}{suffix}<br>{label(x)} = %{{x:.4f}}<br>"
    base += f"{label(y)} = %{{y:.4f}}"
    hover = base + "<br>" + _hover(frame, params, 2) + "<extra></extra>"
    mode = frame["mode"].fillna("oialr").to_numpy() if "mode" in frame else None
    searched = (
        np.ones(len(frame), dtype=bool) if mode is None else ~np.isin(mode, list(BASELINE_SYMBOLS))
    )
    marker: dict = {"size": 9, "color": tint, "line": {"width": 0.6, "color": "#404040"}}
    if color is not None and color in frame:
        marker.update(
            color=f32(frame.loc[searched, color]), colorscale="Viridis", showscale=True,
            colorbar={"title": {"text": label(color)}, "len": 0.8},
        )  # fmt: skip
    fig.add_trace(
        go.Scattergl(
            x=f32(frame.loc[searched, x]), y=f32(frame.loc[searched, y]), mode="markers",
            name=f"OIALR trials{suffix}", marker=marker, customdata=custom[searched],
            hovertemplate=hover,
        )
    )  # fmt: skip
    for baseline, symbol in BASELINE_SYMBOLS.items():
        rows = np.flatnonzero(mode == baseline) if mode is not None else []
        if len(rows):
            fig.add_trace(
                go.Scatter(
                    x=floats(frame[x].iloc[rows]), y=floats(frame[y].iloc[rows]), mode="markers",
                    name=f"{baseline} baseline{suffix}",
                    marker={"symbol": symbol, "size": 16, "color": tint, "line": {"width": 1}},
                    customdata=custom[rows],
                    hovertemplate=f"<b>{baseline} baseline</b><br>{base}<extra></extra>",
                )
            )  # fmt: skip
    front = pareto_mask(frame[x], frame[y], x_direction=directions[0], y_direction=directions[1])
    if front.any():
        ordered = frame[front].sort_values(x)
        fig.add_trace(
            go.Scatter(
                x=floats(ordered[x]), y=floats(ordered[y]), mode="lines",
                line={"shape": "hv", "color": tint, "width": 2}, name=f"Pareto front{suffix}",
                hoverinfo="skip",
            )
        )  # fmt: skip
    if show_test and "test_acc" in frame:
        fig.add_trace(
            go.Scattergl(
                x=f32(frame[x]), y=f32(frame["test_acc"]), mode="markers",
                name=f"test accuracy{suffix}",
                marker={"symbol": "circle-open", "size": 8, "color": tint}, customdata=custom,
                hovertemplate=hover.replace(label(y), label("test_acc")),
            )
        )  # fmt: skip


def clicked_trial(points: Sequence[Mapping]) -> tuple[int, int] | None:
    """(trial number, study index) of the first selected point of a :func:`pareto_figure`.

    Streamlit passes customdata through as plotly.js holds it: a list for plain arrays, but an
    object keyed "0", "1", ... for rows of a typed array (what numpy customdata becomes).
    """
    for point in points:
        data = point.get("customdata")
        if isinstance(data, Mapping):
            data = [data[k] for k in sorted(data, key=int)]
        if isinstance(data, (list, tuple)) and len(data) >= 2:
            try:
                return int(data[0]), int(data[1])
            except (TypeError, ValueError):
                continue
    return None


def space_figure(
    frame: pd.DataFrame,
    axes: Sequence[str],
    color: str = "val_acc",
    log_axes: Sequence[bool] = (False, False, False),
) -> go.Figure:
    """A 3-D scatter of trials over three parameter columns, coloured by a result."""
    xs, ys, zs = (f32(frame[a]) for a in axes)
    keep = np.isfinite(xs) & np.isfinite(ys) & np.isfinite(zs)
    fig = go.Figure(
        go.Scatter3d(
            x=xs[keep],
            y=ys[keep],
            z=zs[keep],
            mode="markers",
            marker={
                "size": 5,
                "color": f32(frame[color])[keep],
                "colorscale": "Viridis",
                "showscale": True,
                "colorbar": {"title": {"text": label(color)}},
            },
            customdata=frame["number"].to_numpy(dtype=np.int32)[keep],
            hovertemplate="trial %{customdata}<br>"
            + "<br>".join(f"{label(a)} = %{{{k}:.4~g}}" for a, k in zip(axes, "xyz"))
            + f"<br>{label(color)} = %{{marker.color:.4f}}<extra></extra>",
        )
    )
    scene = {
        f"{k}axis": {"title": {"text": label(a)}, "type": "log" if log else "linear"}
        for a, k, log in zip(axes, "xyz", log_axes)
    }
    return styled(fig, "search space", height=520, scene=scene)


def states_figure(summary: pd.DataFrame) -> go.Figure:
    """Trials per study, stacked by state (one bar trace per state)."""
    fig = go.Figure()
    for state, tint in STATE_COLORS.items():
        if state in summary:
            fig.add_trace(
                go.Bar(
                    y=summary["study"].astype(str).to_numpy(),
                    x=summary[state].to_numpy(),
                    name=state.lower(),
                    orientation="h",
                    marker_color=tint,
                )
            )
    height = 120 + 28 * len(summary)
    return styled(fig, "trials by state", height=min(height, 700), barmode="stack")


def slices_figure(
    frame: pd.DataFrame,
    params: Sequence[str],
    objectives: Sequence[str],
    log_params: Sequence[str] = (),
) -> go.Figure:
    """Each objective (rows) against each parameter (columns): one Scattergl per cell."""
    fig = make_subplots(
        rows=len(objectives),
        cols=len(params),
        shared_yaxes=True,
        horizontal_spacing=0.03,
        vertical_spacing=0.12,
    )
    numbers = frame["number"].to_numpy(dtype=np.int32)
    for row, objective in enumerate(objectives, start=1):
        for col, param in enumerate(params, start=1):
            fig.add_trace(
                go.Scattergl(
                    x=column_array(frame[param]),
                    y=f32(frame[objective]),
                    mode="markers",
                    marker={"size": 6, "color": PALETTE[row - 1], "opacity": 0.7},
                    customdata=numbers,
                    hovertemplate=f"trial %{{customdata}}<br>{label(param)} = %{{x:.4~g}}<br>"
                    f"{label(objective)} = %{{y:.4f}}<extra></extra>",
                    showlegend=False,
                ),
                row=row,
                col=col,
            )
            fig.update_xaxes(
                title_text=label(param) if row == len(objectives) else None,
                type="log" if param in log_params else None,
                row=row,
                col=col,
            )
        fig.update_yaxes(title_text=label(objective), row=row, col=1)
    return styled(fig, "slices", height=260 * len(objectives) + 60)


def parallel_figure(
    frame: pd.DataFrame,
    columns: Sequence[str],
    color: str,
    *,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    log_columns: Sequence[str] = (),
) -> go.Figure:
    """Parallel coordinates: ONE ``go.Parcoords`` whatever the number of trials.

    ``ranges`` become each axis's ``constraintrange`` (brushing in the browser sends nothing
    back to Streamlit, so the page's sliders set them). Log-sampled parameters are drawn as
    log10 with readable ticks; text parameters as category codes.
    """
    ranges = ranges or {}
    dimensions = []
    for column in columns:
        values = frame[column]
        dim: dict = {"label": label(column)}
        if not pd.api.types.is_numeric_dtype(values.dropna().infer_objects()):
            codes, names = pd.factorize(values.astype(str))
            dim.update(values=codes, tickvals=list(range(len(names))), ticktext=list(names))
        elif column in log_columns:
            data = floats(values)
            dim.update(values=np.log10(data).astype(np.float32), **_log_ticks(data))
            if column in ranges:
                dim["constraintrange"] = [math.log10(v) for v in ranges[column]]
        else:
            dim["values"] = f32(values)
            if column in ranges:
                dim["constraintrange"] = list(ranges[column])
        dimensions.append(dim)
    fig = go.Figure(
        go.Parcoords(
            line={
                "color": f32(frame[color]),
                "colorscale": "Viridis",
                "showscale": True,
                "colorbar": {"title": {"text": label(color)}},
            },
            dimensions=dimensions,
        )
    )
    return styled(fig, "parallel coordinates", height=440, margin={"l": 60, "r": 40, "t": 80})


def _log_ticks(values: np.ndarray) -> dict:
    """tickvals (log10) / ticktext (values) at 1-2-5 steps inside the data's range."""
    finite = values[np.isfinite(values) & (values > 0)]
    if not len(finite):
        return {}
    lo, hi = math.floor(math.log10(finite.min())), math.ceil(math.log10(finite.max()))
    ticks = [m * 10.0**e for e in range(lo, hi + 1) for m in (1, 2, 5)]
    ticks = [t for t in ticks if finite.min() <= t <= finite.max()] or [float(finite.min())]
    return {"tickvals": [math.log10(t) for t in ticks], "ticktext": [f"{t:g}" for t in ticks]}


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
) -> go.Figure:
    """Mean of ``z`` over a ``bins`` x ``bins`` grid of two parameters, with the trials on top.

    Scattered trials are averaged into grid cells (no per-trial rows in the contour), and empty
    cells are bridged by ``connectgaps``.
    """
    xs, ys, zs = floats(frame[x]), floats(frame[y]), floats(frame[z])
    keep = np.isfinite(xs) & np.isfinite(ys) & np.isfinite(zs)
    xs, ys, zs = xs[keep], ys[keep], zs[keep]
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
                x=10**cx if log_x else cx,
                y=10**cy if log_y else cy,
                z=mean.T,  # rows are y
                connectgaps=True,
                colorscale="Viridis",
                colorbar={"title": {"text": label(z)}},
                hovertemplate=f"{label(z)} ≈ %{{z:.4f}}<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scattergl(
            x=xs.astype(np.float32),
            y=ys.astype(np.float32),
            mode="markers",
            marker={"size": 6, "color": "white", "line": {"width": 1, "color": "black"}},
            customdata=np.column_stack([frame["number"].to_numpy()[keep], zs]).astype(np.float32),
            hovertemplate=f"trial %{{customdata[0]}}<br>{label(x)} = %{{x:.4~g}}<br>"
            f"{label(y)} = %{{y:.4~g}}<br>{label(z)} = %{{customdata[1]:.4f}}<extra></extra>",
            name="trials",
            showlegend=False,
        )
    )
    fig.update_xaxes(title_text=label(x), type="log" if log_x else None)
    fig.update_yaxes(title_text=label(y), type="log" if log_y else None)
    return styled(fig, f"{label(z)} over {label(x)} × {label(y)}", height=440)
