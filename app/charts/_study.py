"""A study's figures: the Pareto front, the searched space, states, slices, parallel
coordinates, importances and contours."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from app.charts._style import (
    BASELINE_SYMBOLS,
    MAX_POINTS,
    PALETTE,
    column_array,
    f32,
    floats,
    label,
    log_axis,
    sample_rows,
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
    log_x: bool | None = None,
    max_points: int = MAX_POINTS,
) -> go.Figure:
    """Accuracy against a parameter fraction, with each study's Pareto front.

    Args:
        studies: ``(name, complete trials, parameter columns)`` per study; the first is the main
            one, whose OIALR points are coloured by ``color``; the others are overlaid.
        x, y: Columns of the two objectives; the front is computed on them.
        color: A parameter column colouring the main study's points.
        show_test: Also draw test accuracy (open markers), e.g. to spot overfitting the search.
        log_x: A log x-axis; None: log when every searched trial lies below 0.2 (there a linear
            axis piles them up against zero).
        max_points: Searched trials drawn per study at most (the front always is; see
            :func:`sample_rows`); the figure's ``meta["sampled"]`` says what was left out.

    Every marker's ``customdata`` starts with (trial number, study index) so a click can open
    the trial; the rest are the trial's parameters, shown on hover.
    """
    fig, notes, xs = go.Figure(), [], []
    for index, (name, frame, params) in enumerate(studies):
        suffix = f" · {name}" if len(studies) > 1 else ""
        frame = frame[np.isfinite(floats(frame[x])) & np.isfinite(floats(frame[y]))]
        note, searched_x = _add_study(
            fig, index, suffix, frame, list(params), x=x, y=y,
            color=color if index == 0 else None, show_test=show_test,
            directions=(x_direction, y_direction), max_points=max_points,
        )  # fmt: skip
        notes += [f"{name}: {note}" if suffix else note] if note else []
        xs.append(searched_x)
    searched = np.concatenate(xs) if xs else np.zeros(0)
    if log_x is None:
        log_x = bool(len(searched)) and bool(np.nanmax(searched) < 0.2)
    styled(fig, f"{label(y)} vs {label(x)}", height=540, clickmode="event+select")
    fig.update_layout(meta={"sampled": "; ".join(notes), "log_x": log_x})
    all_x = np.concatenate([floats(f[x]) for _, f, _ in studies]) if studies else searched
    fig.update_xaxes(title_text=label(x) + (" (log)" if log_x else ""),
                     **(log_axis(all_x) if log_x else {}))  # fmt: skip
    fig.update_yaxes(title_text=label(y))
    return fig


def _add_study(fig, index, suffix, frame, params, *, x, y, color, show_test, directions,
               max_points) -> tuple[str, np.ndarray]:  # fmt: skip
    """One study's traces: its OIALR trials, its baselines, its front, its test accuracy.

    Returns what sampling left out ("" if nothing) and the x values of its searched trials.
    """
    tint = PALETTE[index % len(PALETTE)]
    mode = frame["mode"].fillna("oialr").to_numpy() if "mode" in frame else None
    searched = (
        np.ones(len(frame), dtype=bool) if mode is None else ~np.isin(mode, list(BASELINE_SYMBOLS))
    )
    front = pareto_mask(frame[x], frame[y], x_direction=directions[0], y_direction=directions[1])
    drawn, note = sample_rows(
        frame[searched], max_points, best={y: directions[1], x: directions[0]},
        keep=front[searched],
    )  # fmt: skip
    shown = frame.index.isin(drawn.index) | ~searched
    frame, front, mode = frame[shown], front[shown], mode[shown] if mode is not None else None
    searched = searched[shown]
    columns = [frame["number"].to_numpy(), np.full(len(frame), index)]
    columns += [column_array(frame[p]) for p in params]
    custom = np.column_stack(columns)
    if custom.dtype != object:
        custom = custom.astype(np.float32)  # exact for trial numbers below 2**24
    base = f"trial %{{customdata[0]}}{suffix}<br>{label(x)} = %{{x:.4~g}}<br>"
    base += f"{label(y)} = %{{y:.4f}}"
    hover = base + "<br>" + _hover(frame, params, 2) + "<extra></extra>"
    marker: dict = {"size": 8, "color": tint, "opacity": 0.8,
                    "line": {"width": 0.5, "color": "#404040"}}  # fmt: skip
    if color is not None and color in frame:
        marker.update(
            color=f32(frame.loc[searched, color]), colorscale="Viridis", showscale=True,
            colorbar={"title": {"text": label(color)}, "len": 0.8},
        )  # fmt: skip
    fig.add_trace(
        go.Scatter(
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
            go.Scatter(
                x=f32(frame[x]), y=f32(frame["test_acc"]), mode="markers",
                name=f"test accuracy{suffix}",
                marker={"symbol": "circle-open", "size": 7, "color": tint}, customdata=custom,
                hovertemplate=hover.replace(label(y), label("test_acc")),
            )
        )  # fmt: skip
    return note, floats(frame.loc[searched, x])


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
    scene: dict = {
        f"{k}axis": {"title": {"text": label(a)}, "type": "log" if log else "linear"}
        for a, k, log in zip(axes, "xyz", log_axes)
    }
    # Pulled back from the default eye (1.25, 1.25, 1.25) with room around the scene: at the
    # default the cube fills the frame and its axis titles are cut at the edges.
    scene.update(camera={"eye": {"x": 1.7, "y": 1.7, "z": 1.1}}, domain={"x": [0.05, 0.85]})
    return styled(fig, "search space", height=560, scene=scene,
                  margin={"l": 30, "r": 30, "t": 60, "b": 30})  # fmt: skip
