"""Plotly figure builders: pure functions of DataFrames, no Streamlit, unit-tested.

Figures stay small whatever the study size: one trace per group (never one per trial), numpy
arrays (Plotly >= 6 ships them as base64 typed arrays), ``Scattergl`` for point clouds, one hover
template per trace with the per-point values in ``customdata``, long series thinned to a few
thousand points, and one ``go.Parcoords`` for parallel coordinates. The builders live in
``_study`` (a study's figures) and ``_run`` (a run's); this module is their public front.
"""

from app.charts._run import (
    compare_figure,
    curves_figure,
    fraction_figure,
    layer_key,
    rank_heatmap,
    rank_lines,
    spectra_figure,
    spectrum_figure,
    stability_figure,
)
from app.charts._study import (
    clicked_trial,
    contour_figure,
    importance_figure,
    parallel_figure,
    pareto_figure,
    pareto_mask,
    slices_figure,
    space_figure,
    states_figure,
)
from app.charts._style import (
    BASELINE_SYMBOLS,
    LABELS,
    MAX_HEATMAP_COLUMNS,
    MAX_LINE_POINTS,
    PALETTE,
    STATE_COLORS,
    label,
    thin,
)

__all__ = [
    "BASELINE_SYMBOLS",
    "LABELS",
    "MAX_HEATMAP_COLUMNS",
    "MAX_LINE_POINTS",
    "PALETTE",
    "STATE_COLORS",
    "clicked_trial",
    "compare_figure",
    "contour_figure",
    "curves_figure",
    "fraction_figure",
    "importance_figure",
    "label",
    "layer_key",
    "parallel_figure",
    "pareto_figure",
    "pareto_mask",
    "rank_heatmap",
    "rank_lines",
    "slices_figure",
    "space_figure",
    "spectra_figure",
    "spectrum_figure",
    "stability_figure",
    "states_figure",
    "thin",
]
