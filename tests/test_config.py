"""OIALR's options: strict types, ranges, units resolved to steps."""

import numpy as np
import pytest

from oialr.config import OIALRConfig
from oialr.errors import ConfigError


def test_durations_resolve_to_whole_steps():
    cfg = OIALRConfig.build(
        delay=0.25, delay_unit="fraction", update_freq=1.5, update_freq_unit="epochs"
    )
    steps = cfg.in_steps(steps_per_epoch=100, total_steps=1000)
    assert (steps.delay, steps.update_freq) == (250, 150)
    assert steps.delay_unit == steps.update_freq_unit == "steps"
    assert (
        OIALRConfig.build(update_freq=0.0001, update_freq_unit="fraction")
        .in_steps(10, 100)
        .update_freq
        == 1
    )


def test_stability_can_be_measured_in_epochs_too():
    cfg = OIALRConfig.build(stability_every=0.5, stability_every_unit="epochs").in_steps(100, 1000)
    assert cfg.stability_every == 50 and cfg.stability_interval == 50
    assert OIALRConfig.build(stability_every=0).in_steps().stability_interval == 0  # off
    assert OIALRConfig.build(update_freq=30).in_steps().stability_interval == 30  # default


def test_a_unit_without_the_run_length_is_refused():
    with pytest.raises(
        ConfigError, match="delay_unit='epochs' needs the run's steps_per_epoch"
    ) as err:
        OIALRConfig.build(delay=2, delay_unit="epochs").in_steps()
    assert err.value.field == "delay"


@pytest.mark.parametrize(
    "options, field",
    [
        ({"delay": 10.5}, None),
        ({"delay": 1.5, "delay_unit": "fraction"}, None),
        ({"delay": float("inf")}, "delay"),
        ({"min_rank": 2.5}, None),
        ({"switch": "stability", "rollout_fraction": 0.5}, None),
        ({"top_k_sigma": True}, "top_k_sigma"),
        ({"include": "blocks.*"}, "include"),
        ({"sigma_cutof": 0.1}, "sigma_cutof"),
    ],
)
def test_bad_options_are_one_line_naming_the_field(options, field):
    with pytest.raises(ConfigError) as err:
        OIALRConfig.build(**options)
    assert "\n" not in str(err.value)
    if field:
        assert err.value.field == field and f"`{field}`" in str(err.value)


def test_numpy_numbers_and_tuples_are_taken():
    cfg = OIALRConfig.build(delay=np.int64(5), sigma_cutoff=np.float32(0.25), include=("a", "b"))
    assert cfg.delay == 5 and cfg.sigma_cutoff == pytest.approx(0.25) and cfg.include == ["a", "b"]


def test_rank_floor():
    assert OIALRConfig.build(min_rank=0.1).rank_floor(64) == 7
    assert (
        OIALRConfig.build(min_rank=4).rank_floor(64) == 4
        and OIALRConfig.build(min_rank=100).rank_floor(64) == 64
    )
