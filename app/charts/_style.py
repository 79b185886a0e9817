"""Shared look of every figure: palette, labels, layout, and how series are kept small."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

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
