"""Plotly figure builders: pure functions of DataFrames, no Streamlit, unit-tested.

Figures stay small whatever the study size: one trace per group (never one per trial), numpy
arrays (Plotly >= 6 ships them as base64 typed arrays), ``Scattergl`` for point clouds, one hover
template per trace with the per-point values in ``customdata``, long series thinned to a few
thousand points, and one ``go.Parcoords`` for parallel coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

PALETTE = qualitative.Plotly
STATE_COLORS = {
    "COMPLETE": "#2ca02c",
    "RUNNING": "#1f77b4",
    "WAITING": "#b0b0b0",
    "PRUNED": "#ff7f0e",
    "FAIL": "#d62728",
}
BASELINE_SYMBOLS = {"dense": "star", "fixed-rank": "diamond"}
MAX_LINE_POINTS = 2_000  # per series: more is invisible at dashboard width and costs bytes
MAX_HEATMAP_COLUMNS = 300

LABELS = {
    "val_acc": "validation accuracy",
    "test_acc": "test accuracy",
    "trainable_fraction": "trainable fraction",
    "stored_fraction": "stored fraction",
    "update_freq": "update frequency",
    "sigma_cutoff": "sigma cutoff",
}


def label(column: str) -> str:
    """A readable axis title for a column (``params_`` prefix dropped)."""
    name = column.removeprefix("params_")
    return LABELS.get(name, name.replace("_", " "))


def _layout(fig: go.Figure, title: str, height: int = 380, **layout) -> go.Figure:
    # uirevision keeps the user's zoom and legend toggles across the app's reruns.
    defaults = {
        "margin": {"l": 10, "r": 10, "t": 50, "b": 10},
        # Top right, clear of axis titles (a legend below the plot collides with them).
        "legend": {"orientation": "h", "x": 1, "xanchor": "right", "y": 1.02, "yanchor": "bottom"},
    }
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left"},
        height=height,
        uirevision=title,
        **{**defaults, **layout},
    )
    return fig


def thin(frame: pd.DataFrame, max_points: int = MAX_LINE_POINTS) -> pd.DataFrame:
    """Every k-th row so that at most ``max_points`` remain; the last row is always kept."""
    if len(frame) <= max_points:
        return frame
    # max_points - 1 evenly strided rows from the first one, plus the last.
    stride = math.ceil((len(frame) - 1) / (max_points - 1))
    keep = np.zeros(len(frame), dtype=bool)
    keep[: len(frame) - 1 : stride] = True
    keep[-1] = True
    return frame[keep]


def _floats(values: pd.Series | Sequence) -> np.ndarray:
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)


def _f32(values: pd.Series | Sequence) -> np.ndarray:
    """Float32 for per-point payloads: half the bytes of float64, ample for plotting. Hover
    templates format these values (``:.4~g``), or float32 noise would show (0.2 -> 0.200000003)."""
    return _floats(values).astype(np.float32)


def _column(values: pd.Series) -> np.ndarray:
    """A parameter column for the browser: float32 if numeric, else its values as text."""
    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(dtype=np.float32)
    return values.astype(str).to_numpy(dtype=object)


# ---------------------------------------------------------------------------------------------
# Pareto front
# ---------------------------------------------------------------------------------------------


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
    xs, ys = _floats(x), _floats(y)
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
        frame = frame[np.isfinite(_floats(frame[x])) & np.isfinite(_floats(frame[y]))]
        tint = PALETTE[index % len(PALETTE)]
        suffix = f" · {name}" if len(studies) > 1 else ""
        params = list(params)
        columns = [frame["number"].to_numpy(), np.full(len(frame), index)]
        columns += [_column(frame[p]) for p in params]
        custom = np.column_stack(columns)
        if custom.dtype != object:
            custom = custom.astype(np.float32)  # exact for trial numbers below 2**24
        base = f"trial %{{customdata[0]}}{suffix}<br>{label(x)} = %{{x:.4f}}<br>"
        base += f"{label(y)} = %{{y:.4f}}"
        hover = base + "<br>" + _hover(frame, params, 2) + "<extra></extra>"
        mode = frame["mode"].fillna("oialr").to_numpy() if "mode" in frame else None
        searched = (
            np.ones(len(frame), dtype=bool)
            if mode is None
            else ~np.isin(mode, list(BASELINE_SYMBOLS))
        )
        marker: dict = {"size": 9, "color": tint, "line": {"width": 0.6, "color": "#404040"}}
        if index == 0 and color is not None and color in frame:
            marker.update(
                color=_f32(frame.loc[searched, color]),
                colorscale="Viridis",
                showscale=True,
                colorbar={"title": {"text": label(color)}, "len": 0.8},
            )
        fig.add_trace(
            go.Scattergl(
                x=_f32(frame.loc[searched, x]),
                y=_f32(frame.loc[searched, y]),
                mode="markers",
                name=f"OIALR trials{suffix}",
                marker=marker,
                customdata=custom[searched],
                hovertemplate=hover,
            )
        )
        for baseline, symbol in BASELINE_SYMBOLS.items():
            rows = np.flatnonzero(mode == baseline) if mode is not None else []
            if len(rows):
                fig.add_trace(
                    go.Scatter(
                        x=_floats(frame[x].iloc[rows]),
                        y=_floats(frame[y].iloc[rows]),
                        mode="markers",
                        name=f"{baseline} baseline{suffix}",
                        marker={"symbol": symbol, "size": 16, "color": tint, "line": {"width": 1}},
                        customdata=custom[rows],
                        hovertemplate=f"<b>{baseline} baseline</b><br>{base}<extra></extra>",
                    )
                )
        front = pareto_mask(frame[x], frame[y], x_direction=x_direction, y_direction=y_direction)
        if front.any():
            ordered = frame[front].sort_values(x)
            fig.add_trace(
                go.Scatter(
                    x=_floats(ordered[x]),
                    y=_floats(ordered[y]),
                    mode="lines",
                    line={"shape": "hv", "color": tint, "width": 2},
                    name=f"Pareto front{suffix}",
                    hoverinfo="skip",
                )
            )
        if show_test and "test_acc" in frame:
            fig.add_trace(
                go.Scattergl(
                    x=_f32(frame[x]),
                    y=_f32(frame["test_acc"]),
                    mode="markers",
                    name=f"test accuracy{suffix}",
                    marker={"symbol": "circle-open", "size": 8, "color": tint},
                    customdata=custom,
                    hovertemplate=hover.replace(label(y), label("test_acc")),
                )
            )
    _layout(fig, f"{label(y)} vs {label(x)}", height=540, clickmode="event+select")
    fig.update_xaxes(title_text=label(x))
    fig.update_yaxes(title_text=label(y))
    return fig


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
    xs, ys, zs = (_f32(frame[a]) for a in axes)
    keep = np.isfinite(xs) & np.isfinite(ys) & np.isfinite(zs)
    fig = go.Figure(
        go.Scatter3d(
            x=xs[keep],
            y=ys[keep],
            z=zs[keep],
            mode="markers",
            marker={
                "size": 5,
                "color": _f32(frame[color])[keep],
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
    return _layout(fig, "search space", height=520, scene=scene)


# ---------------------------------------------------------------------------------------------
# Studies and parameters
# ---------------------------------------------------------------------------------------------


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
    return _layout(fig, "trials by state", height=min(height, 700), barmode="stack")


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
                    x=_column(frame[param]),
                    y=_f32(frame[objective]),
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
    return _layout(fig, "slices", height=260 * len(objectives) + 60)


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
            data = _floats(values)
            dim.update(values=np.log10(data).astype(np.float32), **_log_ticks(data))
            if column in ranges:
                dim["constraintrange"] = [math.log10(v) for v in ranges[column]]
        else:
            dim["values"] = _f32(values)
            if column in ranges:
                dim["constraintrange"] = list(ranges[column])
        dimensions.append(dim)
    fig = go.Figure(
        go.Parcoords(
            line={
                "color": _f32(frame[color]),
                "colorscale": "Viridis",
                "showscale": True,
                "colorbar": {"title": {"text": label(color)}},
            },
            dimensions=dimensions,
        )
    )
    return _layout(fig, "parallel coordinates", height=440, margin={"l": 60, "r": 40, "t": 80})


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
    return _layout(fig, "parameter importance", height=320, barmode="group")


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
    xs, ys, zs = _floats(frame[x]), _floats(frame[y]), _floats(frame[z])
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
    return _layout(fig, f"{label(z)} over {label(x)} × {label(y)}", height=440)


# ---------------------------------------------------------------------------------------------
# A run: live curves, ranks, stability, spectra
# ---------------------------------------------------------------------------------------------


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
            y=_f32(steps["loss"]),
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
                    y=_floats(epochs[column]),
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
    return _layout(fig, "loss and accuracy")


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
    return _layout(fig, "rank per layer", height=max(260, 60 + 22 * len(fractions)))


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
    return _layout(fig, "ranks")


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
                        y=_floats(group["stability"]),
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
    return _layout(fig, "basis stability")


def fraction_figure(epochs: pd.DataFrame) -> go.Figure:
    """Trainable and stored parameter fractions (of the dense model) over the steps."""
    fig = go.Figure()
    for index, column in enumerate(("trainable_fraction", "stored_fraction")):
        if column in epochs:
            fig.add_trace(
                go.Scatter(
                    x=epochs["step"].to_numpy(),
                    y=_floats(epochs[column]),
                    mode="lines+markers",
                    name=label(column),
                    line={"color": PALETTE[index + 3]},
                )
            )
    fig.add_hline(y=1.0, line={"dash": "dot", "color": "gray"})
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="fraction of dense", rangemode="tozero")
    return _layout(fig, "parameter fractions")


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
    return _layout(fig, title, height=340)


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
    return _layout(fig, "final spectra")


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
                    y=_floats(group[column]),
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
    return _layout(fig, "comparison")
