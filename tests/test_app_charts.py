"""Unit tests of the dashboard's figure builders (app/charts.py) on small DataFrames."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import charts

# -- Pareto front ------------------------------------------------------------------------------


def _brute_force(x, y, x_dir, y_dir) -> list[bool]:
    """O(n²) reference: a point is on the front unless another dominates it."""
    sx = 1 if x_dir == "minimize" else -1
    sy = 1 if y_dir == "minimize" else -1
    out = []
    for i in range(len(x)):
        if np.isnan(x[i]) or np.isnan(y[i]):
            out.append(False)
            continue
        dominated = any(
            sx * x[j] <= sx * x[i]
            and sy * y[j] <= sy * y[i]
            and (sx * x[j] < sx * x[i] or sy * y[j] < sy * y[i])
            for j in range(len(x))
            if j != i and not (np.isnan(x[j]) or np.isnan(y[j]))
        )
        out.append(not dominated)
    return out


def test_pareto_mask_small_fraction_high_accuracy():
    fraction = [0.1, 0.5, 0.5, 1.0, 0.3]
    accuracy = [0.80, 0.90, 0.85, 0.90, 0.79]
    assert charts.pareto_mask(fraction, accuracy).tolist() == [True, True, False, False, False]


def test_pareto_mask_keeps_duplicates_and_drops_nan():
    mask = charts.pareto_mask([0.2, 0.2, np.nan, 0.4], [0.9, 0.9, 0.99, 0.8])
    assert mask.tolist() == [True, True, False, False]


def test_pareto_mask_respects_directions():
    x, y = [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]
    # Small x with large y: the first point beats both others.
    assert charts.pareto_mask(x, y).tolist() == [True, False, False]
    # Both minimised (or both maximised): a pure trade-off, every point is on the front.
    assert charts.pareto_mask(x, y, y_direction="minimize").tolist() == [True, True, True]
    assert charts.pareto_mask(x, y, x_direction="maximize").tolist() == [True, True, True]
    both = {"x_direction": "maximize", "y_direction": "minimize"}
    assert charts.pareto_mask(x, y, **both).tolist() == [False, False, True]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.1, 0.2, 0.3, 0.5, np.nan]),
            st.sampled_from([0.7, 0.8, 0.9, np.nan]),
        ),
        max_size=12,
    ),
    st.sampled_from(list(itertools.product(["minimize", "maximize"], repeat=2))),
)
def test_pareto_mask_matches_brute_force(points, directions):
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    got = charts.pareto_mask(x, y, x_direction=directions[0], y_direction=directions[1])
    assert got.tolist() == _brute_force(x, y, *directions)


# -- study-level figures ---------------------------------------------------------------------


def _trials(n: int = 8, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "number": np.arange(n),
            "state": "COMPLETE",
            "mode": ["dense", "fixed-rank"] + ["oialr"] * (n - 2),
            "val_acc": rng.uniform(0.8, 0.9, n),
            "test_acc": rng.uniform(0.8, 0.9, n),
            "trainable_fraction": np.r_[1.0, 0.25, rng.uniform(0.05, 0.6, n - 2)],
            "stored_fraction": np.r_[1.0, 0.5, rng.uniform(0.1, 1.2, n - 2)],
            "params_delay": np.r_[np.nan, np.nan, rng.integers(100, 2000, n - 2)],
            "params_update_freq": np.r_[np.nan, np.nan, rng.integers(10, 500, n - 2)],
            "params_sigma_cutoff": np.r_[np.nan, np.nan, rng.uniform(0.01, 0.5, n - 2)],
        }
    )
    return frame


PARAMS = ["params_delay", "params_update_freq", "params_sigma_cutoff"]


def test_pareto_figure_draws_trials_baselines_and_front():
    frame = _trials()
    fig = charts.pareto_figure([("s", frame, PARAMS)], color="params_delay")
    names = [t.name for t in fig.data]
    assert names == ["OIALR trials", "dense baseline", "fixed-rank baseline", "Pareto front"]
    trials, dense, fixed, front = fig.data
    # SVG, not WebGL: without a GPU a WebGL context costs the browser most of a second.
    assert all(isinstance(t, go.Scatter) for t in fig.data)
    assert len(trials.x) == 6 and trials.marker.showscale
    assert fig.layout.meta["sampled"] == ""  # every trial drawn
    assert dense.marker.symbol == "star" and fixed.marker.symbol == "diamond"
    mask = charts.pareto_mask(frame["trainable_fraction"], frame["val_acc"])
    expected = frame[mask].sort_values("trainable_fraction")
    assert np.allclose(front.x, expected["trainable_fraction"])
    assert np.allclose(front.y, expected["val_acc"])
    assert front.line.shape == "hv"
    # customdata = (trial number, study index, params...) so a click can open the trial.
    assert np.asarray(trials.customdata)[:, 0].tolist() == list(range(2, 8))
    assert set(np.asarray(trials.customdata)[:, 1]) == {0}
    assert "delay" in trials.hovertemplate and "delay" not in dense.hovertemplate
    assert fig.layout.xaxis.title.text == "trainable fraction"


def test_pareto_figure_overlays_studies_and_test_accuracy():
    fig = charts.pareto_figure(
        [("a", _trials(), PARAMS), ("b", _trials(seed=1), PARAMS[:1])],
        x="stored_fraction",
        show_test=True,
    )
    names = [t.name for t in fig.data]
    assert "Pareto front · a" in names and "Pareto front · b" in names
    assert "test accuracy · b" in names
    b_trials = fig.data[names.index("OIALR trials · b")]
    assert set(np.asarray(b_trials.customdata)[:, 1]) == {1}
    assert fig.layout.xaxis.title.text == "stored fraction"


def test_pareto_figure_stays_small_at_thousands_of_trials():
    fig = charts.pareto_figure([("big", _trials(3000), PARAMS)], color="params_sigma_cutoff")
    assert len(fig.data) == 4  # never one trace per trial
    assert len(fig.to_json()) < 400_000


def test_pareto_figure_samples_big_studies_but_keeps_the_front_and_the_best():
    frame = _trials(10_000, seed=3)
    fig = charts.pareto_figure([("big", frame, PARAMS)], max_points=500)
    trials, front = fig.data[0], fig.data[-1]
    assert len(trials.x) == 500
    assert fig.layout.meta["sampled"].startswith("500 of 9,998 drawn: the Pareto front")
    drawn = set(np.asarray(trials.customdata)[:, 0].astype(int))
    on_front = frame[charts.pareto_mask(frame["trainable_fraction"], frame["val_acc"])]
    assert set(on_front["number"]) - {0, 1} <= drawn  # the whole front is drawn
    best = frame.iloc[2:].nlargest(50, "val_acc")["number"]
    assert set(best) <= drawn
    again = charts.pareto_figure([("big", frame, PARAMS)], max_points=500)
    assert np.array_equal(again.data[0].customdata, trials.customdata)  # same sample each rerun
    assert len(front.x) == len(on_front)


@pytest.mark.parametrize(("upper", "log"), [(0.15, True), (0.6, False)])
def test_pareto_x_axis_is_log_when_every_searched_trial_is_below_0_2(upper, log):
    frame = _trials(40)
    frame.loc[2:, "trainable_fraction"] = np.linspace(0.004, upper, 38)
    fig = charts.pareto_figure([("s", frame, PARAMS)])  # the dense baseline at 1.0 is ignored
    assert fig.layout.meta["log_x"] is log
    assert (fig.layout.xaxis.type == "log") is log
    if log:
        assert list(fig.layout.xaxis.ticktext) == ["0.01", "0.1", "1"]
    forced = charts.pareto_figure([("s", frame, PARAMS)], log_x=not log)
    assert (forced.layout.xaxis.type == "log") is not log


@pytest.mark.parametrize(
    ("values", "ticks"),
    [
        ([0.013, 0.4], ["0.02", "0.05", "0.1", "0.2"]),
        ([0.02, 0.6], ["0.02", "0.05", "0.1", "0.2", "0.5"]),
        ([1e-4, 0.5], ["0.0001", "0.001", "0.01", "0.1"]),
        ([3, 4], ["3", "4"]),  # inside one 1-2-5 step: the ends
    ],
)
def test_log_ticks_never_crowd(values, ticks):
    out = charts.log_ticks(values)
    assert out["ticktext"] == ticks
    assert charts.log_ticks(values, log10=True)["tickvals"] == pytest.approx(
        np.log10(out["tickvals"])
    )
    assert charts.log_ticks([0.0, -1.0]) == {}


def test_sample_rows_is_bounded_seeded_and_says_so():
    frame = pd.DataFrame({"a": np.arange(1000.0), "b": -np.arange(1000.0)})
    rows, note = charts.sample_rows(frame, 100, best={"a": "maximize", "b": "maximize"})
    assert len(rows) == 100 and rows.index.is_monotonic_increasing
    assert {990, 999, 0, 9} <= set(rows["a"].astype(int))  # top tenth by each column kept
    assert note == (
        "100 of 1,000 drawn: the best 10 by a, the best 10 by b, "
        "and a random sample (seed 0) of the rest"
    )
    assert charts.sample_rows(frame, 100)[0].equals(charts.sample_rows(frame, 100)[0])
    small, note = charts.sample_rows(frame.head(50), 100)
    assert len(small) == 50 and note == ""


def test_clicked_trial_reads_lists_and_typed_array_rows():
    assert charts.clicked_trial([{"customdata": [7, 1, 0.3]}]) == (7, 1)
    assert charts.clicked_trial([{"customdata": {"1": 0, "0": 4, "2": 9}}]) == (4, 0)
    assert charts.clicked_trial([{"x": 1}]) is None
    assert charts.clicked_trial([]) is None


def test_space_figure_is_one_3d_trace_with_log_axis():
    fig = charts.space_figure(_trials(), PARAMS, log_axes=(False, False, True))
    assert len(fig.data) == 1 and isinstance(fig.data[0], go.Scatter3d)
    assert len(fig.data[0].x) == 6  # baselines have no parameters
    assert fig.layout.scene.zaxis.type == "log"


def test_slices_figure_has_a_cell_per_objective_and_parameter():
    fig = charts.slices_figure(
        _trials(), PARAMS, ["val_acc", "trainable_fraction"], log_params=["params_sigma_cutoff"]
    )
    assert len(fig.data) == 6
    assert all(isinstance(t, go.Scatter) for t in fig.data)
    assert fig.layout.xaxis3.type == "log" and fig.layout.xaxis.type != "log"
    assert fig.layout.xaxis3.ticktext  # tidy 1-2-5 labels, not Plotly's crowded minor ones
    assert fig.layout.yaxis.title.text == "validation accuracy"


def test_slices_figure_draws_a_sample_of_big_studies_with_the_best_trials():
    frame = _trials(10_000).iloc[2:]
    fig = charts.slices_figure(frame, PARAMS, ["val_acc"], max_points=300)
    assert {len(t.x) for t in fig.data} == {300}  # 3 cells, the same 300 trials in each
    assert fig.layout.meta["sampled"].startswith("300 of 9,998 drawn: the best 30 by")
    best = frame.nlargest(30, "val_acc")["number"]
    assert set(best) <= set(np.asarray(fig.data[0].customdata))


def _parallel(frame, **kwargs):
    return charts.parallel_figure(
        frame, [*PARAMS, "params_opt", "val_acc"], "val_acc",
        log_columns=["params_sigma_cutoff"], **kwargs,
    )  # fmt: skip


def test_parallel_figure_is_svg_lines_with_filter_bands():
    frame = _trials(200).dropna()
    frame["params_opt"] = np.where(frame["number"] % 2, "adamw", "sgd")
    ranges = {"params_delay": (200.0, 900.0), "params_sigma_cutoff": (0.05, 0.2)}
    fig = _parallel(frame, ranges=ranges)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert all(isinstance(t, go.Scatter) for t in fig.data)
    assert len(lines) <= charts._params.COLOR_BANDS + 1  # one trace per colour, not per trial
    drawn = sum(int(np.isnan(np.asarray(t.y, dtype=float)).sum()) for t in lines)
    assert drawn == len(frame)  # each trial one polyline, NaN-separated
    inside = (frame["params_delay"].between(200, 900)) & frame["params_sigma_cutoff"].between(
        0.05, 0.2
    )
    grey = next(t for t in lines if t.name == "outside the filters")
    assert int(np.isnan(np.asarray(grey.y, dtype=float)).sum()) == int((~inside).sum())
    assert fig.layout.meta["inside"] == int(inside.sum())
    bands = {s.name: s for s in fig.layout.shapes if s.type == "rect"}
    lo, hi = (
        np.log10(frame["params_sigma_cutoff"].min()),
        np.log10(frame["params_sigma_cutoff"].max()),
    )
    band = bands["filter sigma cutoff"]
    assert band.y0 == pytest.approx((np.log10(0.05) - lo) / (hi - lo))  # on the log axis
    assert band.y1 == pytest.approx((np.log10(0.2) - lo) / (hi - lo))
    ticks = next(t for t in fig.data if t.mode == "text").text
    assert {"adamw", "sgd"} <= set(ticks) and "0.1" in ticks  # categories; log in real values
    assert list(fig.layout.xaxis.ticktext) == [
        "delay",
        "update frequency",
        "sigma cutoff",
        "opt",
        "validation accuracy",
    ]


def test_parallel_figure_samples_big_studies():
    frame = _trials(5000).dropna()
    frame["params_opt"] = "sgd"
    fig = _parallel(frame, max_lines=250)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert sum(int(np.isnan(np.asarray(t.y, dtype=float)).sum()) for t in lines) == 250
    assert fig.layout.meta["sampled"].startswith(f"250 of {len(frame):,} drawn")
    assert len(fig.to_json()) < 200_000


def test_importance_figure_has_a_bar_trace_per_objective():
    imp = pd.DataFrame(
        {
            "objective": ["val_acc"] * 2 + ["trainable_fraction"] * 2,
            "param": ["delay", "sigma_cutoff"] * 2,
            "importance": [0.7, 0.3, 0.1, 0.9],
        }
    )
    fig = charts.importance_figure(imp)
    assert [t.name for t in fig.data] == ["validation accuracy", "trainable fraction"]
    assert list(fig.data[1].x) == [0.1, 0.9]


def test_contour_figure_bins_scattered_trials_into_a_grid():
    frame = _trials(200).dropna()
    fig = charts.contour_figure(
        frame, "params_delay", "params_sigma_cutoff", "val_acc", log_y=True, bins=12
    )
    contour, points = fig.data
    assert isinstance(contour, go.Contour) and np.asarray(contour.z).shape == (12, 12)
    assert contour.connectgaps
    assert len(points.x) == len(frame)
    assert fig.layout.yaxis.type == "log"
    lone = charts.contour_figure(frame.head(2), "params_delay", "params_sigma_cutoff", "val_acc")
    assert [type(t) for t in lone.data] == [go.Scatter]  # too few trials for a surface


def test_contour_figure_averages_every_trial_but_draws_a_sample():
    frame = _trials(6000).dropna()
    fig = charts.contour_figure(
        frame, "params_delay", "params_update_freq", "val_acc", max_points=200
    )
    contour, points = fig.data
    assert len(points.x) == 200 and fig.layout.meta["sampled"].startswith("200 of")
    full = charts.contour_figure(frame, "params_delay", "params_update_freq", "val_acc")
    assert np.allclose(
        np.asarray(contour.z, float), np.asarray(full.data[0].z, float), equal_nan=True
    )


# -- run-level figures -------------------------------------------------------------------------


def _layers(n_layers: int = 3, n_updates: int = 4) -> pd.DataFrame:
    rows = []
    for u in range(n_updates):
        for layer in range(n_layers):
            rank = 64 - 8 * u - layer
            rows.append(
                {
                    "id": len(rows) + 1,
                    "step": 100 + 50 * u,
                    "layer": str(layer * 5),
                    "event": "convert" if u == 0 else "update",
                    "rank_after": rank,
                    "rank_fraction": rank / 64,
                    "stability": np.nan if u == 0 else 0.9 + 0.02 * u,
                }
            )
    return pd.DataFrame(rows)


def test_curves_figure_marks_conversion_and_updates():
    steps = pd.DataFrame({"step": np.arange(10_000), "loss": np.linspace(2, 0.1, 10_000)})
    epochs = pd.DataFrame({"step": [5000, 10000], "train_acc": [0.7, 0.8], "val_acc": [0.65, 0.75]})
    fig = charts.curves_figure(steps, epochs, update_steps=[200, 300, 300], conversion_step=100)
    loss, train, val, updates = fig.data
    assert len(loss.x) <= charts.MAX_LINE_POINTS and loss.x[-1] == 9999  # thinned, tail kept
    assert val.yaxis == "y2" and list(val.y) == [0.65, 0.75]
    assert list(updates.x) == [200.0, 300.0]
    assert fig.layout.shapes[0].x0 == 100


def test_curves_figure_without_epochs_or_conversion():
    steps = pd.DataFrame({"step": [1, 2], "loss": [1.0, 0.9]})
    fig = charts.curves_figure(steps, pd.DataFrame(columns=["step", "val_acc", "train_acc"]))
    assert len(fig.data) == 1 and not fig.layout.shapes


def test_rank_heatmap_is_layers_by_steps_in_numeric_layer_order():
    layers = _layers(n_layers=3, n_updates=4)
    layers.loc[layers["layer"] == "10", "layer"] = "10"
    fig = charts.rank_heatmap(layers)
    heat = fig.data[0]
    assert np.asarray(heat.z).shape == (3, 4)
    assert list(heat.y) == ["0", "5", "10"]  # numeric module names sort as numbers
    assert np.asarray(heat.customdata)[0, 0] == 64


def test_rank_heatmap_caps_its_columns():
    fig = charts.rank_heatmap(_layers(n_layers=2, n_updates=1000))
    assert np.asarray(fig.data[0].z).shape[1] <= charts.MAX_HEATMAP_COLUMNS + 1


def test_rank_measures_figure_draws_the_kept_rank_of_each_layer():
    fig = charts.rank_measures_figure(_layers())  # older records: no effective or stable rank
    kept = [t for t in fig.data if t.line.dash == "solid" and t.xaxis == "x"]
    assert [t.name for t in kept] == ["0", "5", "10"] and len(fig.data) == 3
    assert list(kept[0].y) == [64, 56, 48, 40] and kept[0].line.shape == "hv"


def test_stability_figure_splits_warmup_and_low_rank_phases():
    warmup = pd.DataFrame({"step": [20, 40, 20, 40], "layer": ["0", "0", "5", "5"]})
    warmup["stability"] = [0.5, 0.8, 0.6, 0.9]
    fig = charts.stability_figure(warmup, _layers(n_layers=2), conversion_step=100)
    names = [t.name for t in fig.data]
    assert names == ["0 (warm-up)", "0 (low-rank)", "5 (warm-up)", "5 (low-rank)"]
    assert fig.data[1].line.dash == "dash" and fig.data[0].line.color == fig.data[1].line.color
    assert len(fig.data[1].x) == 3  # the conversion record has no stability
    assert fig.layout.shapes  # conversion line


def test_fraction_figure_draws_both_fractions():
    epochs = pd.DataFrame(
        {"step": [10, 20], "trainable_fraction": [0.5, 0.3], "stored_fraction": [0.9, 0.6]}
    )
    fig = charts.fraction_figure(epochs)
    assert [t.name for t in fig.data] == ["trainable fraction", "stored fraction"]


def test_spectrum_figure_colours_kept_values_and_draws_cutoff():
    fig = charts.spectrum_figure([5.0, 3.0, 1.0, 0.2], cutoff=0.5, rank=3, title="Σ")
    kept, dropped, cutoff = fig.data
    assert list(kept.y) == [5.0, 3.0, 1.0] and list(dropped.y) == [0.2]
    assert list(cutoff.y) == [0.5, 0.5]
    assert fig.layout.yaxis.type == "log"


def test_spectrum_figure_shows_the_whole_spectrum_and_where_the_cut_falls():
    sigma = np.geomspace(10.0, 0.01, 200)  # a layer of rank 200: far past the old 32
    cutoff = 0.1 * sigma[0]
    keep = int((sigma >= cutoff).sum())
    fig = charts.spectrum_figure(sigma, cutoff=cutoff, rank=keep, title="Σ")
    kept, dropped, line = fig.data
    assert len(kept.x) + len(dropped.x) == 200 and len(kept.x) == keep
    assert min(kept.y) >= cutoff > max(dropped.y)  # the cutoff line separates the two
    assert (kept.name, dropped.name) == (f"kept ({keep})", f"dropped ({200 - keep})")
    assert list(line.x) == [1, 200] and list(line.y) == [cutoff, cutoff]
    (cut,) = fig.layout.shapes
    assert cut.x0 == keep + 0.5  # the new rank, between the last kept and first dropped value
    assert fig.layout.annotations[0].text == f"rank {keep} of 200"
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.ticktext


def _named(layers: pd.DataFrame) -> pd.DataFrame:
    kinds = {"0": ("Linear", 64, 784), "5": ("Conv2d", 16, 150), "10": ("MHA in-proj", 96, 32)}
    layers = layers.copy()
    for column, i in (("kind", 0), ("rows", 1), ("cols", 2)):
        layers[column] = [kinds[n][i] for n in layers["layer"]]
    return layers


NAMED = ["0 · Linear 64×784", "5 · Conv2d 16×150", "10 · MHA in-proj 96×32"]


def test_layer_charts_name_every_layer_with_its_kind_and_shape():
    layers = _named(_layers())
    assert list(charts.rank_heatmap(layers).data[0].y) == NAMED
    kept = [t for t in charts.rank_measures_figure(layers).data if t.showlegend]
    assert [t.name for t in kept] == NAMED
    warmup = pd.DataFrame({"step": [20, 40], "layer": ["0", "0"], "stability": [0.5, 0.8]})
    names = [t.name for t in charts.stability_figure(warmup, layers).data]
    assert names[:2] == [f"{NAMED[0]} (warm-up)", f"{NAMED[0]} (low-rank)"]
    assert charts.layer_key("blocks.2.mlp") < charts.layer_key("blocks.10.attn")


def test_rank_measures_figure_draws_effective_and_stable_rank_per_layer():
    layers = _named(_layers())
    layers["effective_rank"] = layers["rank_after"] * 0.8
    layers["stable_rank"] = layers["rank_after"] * 0.3
    fig = charts.rank_measures_figure(layers)
    effective = [t for t in fig.data if t.xaxis == "x" and t.line.dash == "dash"]
    stable = [t for t in fig.data if t.xaxis == "x2"]
    assert [t.name for t in effective] == NAMED and [t.name for t in stable] == NAMED
    assert list(effective[0].y) == pytest.approx([51.2, 44.8, 38.4, 32.0])
    assert [t.showlegend for t in fig.data].count(True) == 3  # one legend entry per layer


def test_rank_compare_figure_has_a_panel_per_layer_and_a_line_per_run():
    one, two = _named(_layers()), _named(_layers())
    two["rank_after"] = 16  # a fixed-rank baseline: flat
    history = pd.concat([one.assign(run_id=7), two.assign(run_id=9)], ignore_index=True)
    fig = charts.rank_compare_figure(history, {7: "trial 5 · oialr", 9: "trial 1 · fixed-rank"})
    assert [a.text for a in fig.layout.annotations] == NAMED
    assert len(fig.data) == 6 and [t.showlegend for t in fig.data].count(True) == 2
    flat = [t for t in fig.data if t.name == "trial 1 · fixed-rank"]
    assert all(set(t.y) == {16.0} for t in flat)
    assert fig.layout.meta["sampled"] == ""


def test_numbers_in_tables_are_formatted():
    assert charts.number(0.012537839340970254) == "0.01254"
    assert [charts.number(v) for v in (3, 3.0, np.int64(7), float("nan"), None)] == [
        "3",
        "3",
        "7",
        "",
        "",
    ]
    assert charts.number("COMPLETE") == "COMPLETE"


def test_compare_figure_two_panels_per_run():
    epochs = pd.DataFrame(
        {
            "run_id": [1, 1, 2, 2],
            "epoch": [1, 2, 1, 2],
            "val_acc": [0.8, 0.85, 0.7, 0.9],
            "trainable_fraction": [1, 1, 0.4, 0.3],
        }
    )
    fig = charts.compare_figure(epochs, {1: "trial 0", 2: "trial 3"})
    assert [t.name for t in fig.data] == ["trial 0", "trial 0", "trial 3", "trial 3"]
    assert [t.showlegend for t in fig.data] == [True, False, True, False]


def test_thin_keeps_the_last_row():
    frame = pd.DataFrame({"a": np.arange(10_001)})
    thinned = charts.thin(frame, 1000)
    assert len(thinned) <= 1001 and thinned["a"].iloc[-1] == 10_000
    assert charts.thin(frame.head(5), 1000).equals(frame.head(5))
