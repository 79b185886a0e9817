"""Plotly figure builders: pure functions of DataFrames, no Streamlit, unit-tested.

Figures stay small and cheap to draw whatever the study size: one trace per group (never one per
trial), numpy arrays (Plotly >= 6 ships them as base64 typed arrays), one hover template per
trace with the per-point values in ``customdata``, long series thinned to a few thousand points,
and SVG only, with at most a few thousand points per chart (``MAX_POINTS``, sampled with the
best trials kept, and said in ``layout.meta["sampled"]``): without a GPU every WebGL context
costs the browser up to a second and a half. The builders live in ``_study`` (a study's
trials), ``_params`` (hyperparameter effects), ``_run`` (a run's curves) and ``_layers`` (a
run's layers); this module is their public front.
"""

from app.charts._layers import (
    MAX_COMPARED_LAYERS,
    layer_key,
    rank_compare_figure,
    rank_heatmap,
    rank_measures_figure,
    spectrum_figure,
    stability_figure,
)
from app.charts._params import (
    contour_figure,
    importance_figure,
    parallel_figure,
    slices_figure,
)
from app.charts._run import compare_figure, curves_figure, fraction_figure
from app.charts._study import (
    clicked_trial,
    pareto_figure,
    pareto_mask,
    space_figure,
)
from app.charts._style import (
    BASELINE_SYMBOLS,
    LABELS,
    MAX_HEATMAP_COLUMNS,
    MAX_LINE_POINTS,
    MAX_POINTS,
    PALETTE,
    label,
    layer_label,
    layer_labels,
    log_axis,
    log_ticks,
    number,
    sample_rows,
    thin,
)

__all__ = [
    "BASELINE_SYMBOLS",
    "LABELS",
    "MAX_COMPARED_LAYERS",
    "MAX_HEATMAP_COLUMNS",
    "MAX_LINE_POINTS",
    "MAX_POINTS",
    "PALETTE",
    "clicked_trial",
    "compare_figure",
    "contour_figure",
    "curves_figure",
    "fraction_figure",
    "importance_figure",
    "label",
    "layer_key",
    "layer_label",
    "layer_labels",
    "log_axis",
    "log_ticks",
    "number",
    "parallel_figure",
    "pareto_figure",
    "pareto_mask",
    "rank_compare_figure",
    "rank_heatmap",
    "rank_measures_figure",
    "sample_rows",
    "slices_figure",
    "space_figure",
    "spectrum_figure",
    "stability_figure",
    "thin",
]
