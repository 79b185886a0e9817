"""Shared look of every figure: palette, labels, layout, and how series are kept small."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

PALETTE = qualitative.Plotly
BASELINE_SYMBOLS = {"dense": "star", "fixed-rank": "diamond"}
MAX_LINE_POINTS = 2_000  # per series: more is invisible at dashboard width and costs bytes
MAX_HEATMAP_COLUMNS = 300
# Points drawn per scatter at most. Every chart is SVG: without a GPU (a browser in a VM, a
# remote desktop, headless Chromium) each WebGL context costs 0.4-1.5 s before one point is
# drawn, while SVG draws 2,000 points in about 0.1 s. Bigger studies are sampled, and say so.
MAX_POINTS = 2_000

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


def styled(fig: go.Figure, title: str, height: int = 380, **layout) -> go.Figure:
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


def floats(values: pd.Series | Sequence) -> np.ndarray:
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)


def f32(values: pd.Series | Sequence) -> np.ndarray:
    """Float32 for per-point payloads: half the bytes of float64, ample for plotting. Hover
    templates format these values (``:.4~g``), or float32 noise would show (0.2 -> 0.200000003)."""
    return floats(values).astype(np.float32)


def column_array(values: pd.Series) -> np.ndarray:
    """A parameter column for the browser: float32 if numeric, else its values as text."""
    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(dtype=np.float32)
    return values.astype(str).to_numpy(dtype=object)


def log_ticks(values: Sequence[float] | np.ndarray, *, log10: bool = False) -> dict:
    """Tick values and labels for a log axis that never overlap: 1-2-5 steps over at most two
    decades, decades only beyond (Plotly's own labels crowd minor ticks together).

    With ``log10``, tick values are log10 of the labels (axes drawn in log10 units).

    >>> log_ticks([0.013, 0.4])["ticktext"]
    ['0.02', '0.05', '0.1', '0.2']
    >>> log_ticks([1e-4, 0.5])["ticktext"]
    ['0.0001', '0.001', '0.01', '0.1']
    """
    data = np.asarray(values, dtype=float)
    finite = data[np.isfinite(data) & (data > 0)]
    if not len(finite):
        return {}
    lo, hi = float(finite.min()), float(finite.max())
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    steps = (1, 2, 5) if last - first <= 2 else (1,)
    ticks = [m * 10.0**e for e in range(first, last + 1) for m in steps]
    ticks = [t for t in ticks if lo * 0.999 <= t <= hi * 1.001] or [lo, hi]
    text = [f"{t:.3g}" for t in ticks]
    return {"tickvals": [math.log10(t) for t in ticks] if log10 else ticks, "ticktext": text}


def log_axis(values: Sequence[float] | np.ndarray) -> dict:
    """Axis settings of a tidy log axis over ``values`` (see :func:`log_ticks`)."""
    return {"type": "log", "tickmode": "array", **log_ticks(values)}


def sample_rows(
    frame: pd.DataFrame,
    limit: int = MAX_POINTS,
    *,
    best: Mapping[str, str] | None = None,
    keep: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[pd.DataFrame, str]:
    """At most ``limit`` rows of ``frame`` to draw, in their original order, and a note
    saying what was left out ("" when nothing was).

    Kept first: rows flagged in ``keep`` (e.g. the Pareto front), then the best tenth of the
    budget by each ``best`` column (``{"val_acc": "maximize"}``), then a random sample of the
    rest with a fixed seed, so that every rerun draws the same points.

    >>> rows, note = sample_rows(pd.DataFrame({"a": range(10)}), 4, best={"a": "maximize"})
    >>> sorted(rows["a"].tolist())[-1], note
    (9, '4 of 10 drawn: the best 1 by a, and a random sample (seed 0) of the rest')
    """
    if len(frame) <= limit:
        return frame, ""
    chosen = np.zeros(len(frame), dtype=bool)
    if keep is not None:
        chosen |= np.asarray(keep, dtype=bool)
    per = max(1, limit // 10)
    for column, direction in (best or {}).items():
        values = floats(frame[column])
        order = np.argsort(-values if direction == "maximize" else values, kind="stable")
        order = order[np.isfinite(values[order])]
        chosen[order[:per]] = True
    free = np.flatnonzero(~chosen)
    room = max(0, limit - int(chosen.sum()))
    if room and len(free):
        rng = np.random.default_rng(seed)
        chosen[rng.choice(free, size=min(room, len(free)), replace=False)] = True
    parts = ["the Pareto front"] if keep is not None else []
    parts += [f"the best {per} by {label(c)}" for c in best or {}]
    parts.append(f"a random sample (seed {seed}) of the rest")
    note = f"{int(chosen.sum()):,} of {len(frame):,} drawn: " + ", ".join(parts)
    return frame[chosen], note.replace(", a random", ", and a random") if len(parts) > 1 else note


def layer_label(name: object, kind: object = None, rows: object = None, cols: object = None) -> str:
    """A layer as the user knows it: full module name, kind and weight shape (rows × cols).

    >>> layer_label("blocks.0.attn", "MHA in-proj", 768, 256)
    'blocks.0.attn · MHA in-proj 768×256'
    >>> layer_label("fc1")
    'fc1'
    """
    text = str(name)
    if isinstance(kind, str) and kind:
        text += f" · {kind}"
        if pd.notna(rows) and pd.notna(cols):
            text += f" {int(rows)}×{int(cols)}"
    return text


def layer_labels(frame: pd.DataFrame) -> dict[str, str]:
    """Module name → :func:`layer_label` for each layer of a layers frame (the last row wins)."""
    if frame is None or not len(frame) or "layer" not in frame:
        return {}
    last = frame.drop_duplicates("layer", keep="last")
    get = lambda c: last[c] if c in last else [None] * len(last)  # noqa: E731
    return {
        str(n): layer_label(n, k, r, c)
        for n, k, r, c in zip(last["layer"], get("kind"), get("rows"), get("cols"))
    }


def number(value: object, digits: int = 4) -> str:
    """A table cell: integers as they are, floats to ``digits`` significant digits, else text.

    >>> number(0.012537839340970254), number(3.0), number(1234567.0), number("dense")
    ('0.01254', '3', '1.235e+06', 'dense')
    """
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return "" if math.isnan(value) else str(value)
        return (
            str(int(value))
            if float(value).is_integer() and abs(value) < 1e6
            else f"{value:.{digits}g}"
        )
    return str(value)
