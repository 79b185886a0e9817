"""Spectrum and stability metrics, and the rank rule (property-based)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oialr.errors import TrainingDiverged
from oialr.stability import (
    basis_stability,
    dropped_mass,
    offdiag_energy,
    polar_factor,
    truncation_rank,
)


def test_polar_factor_ignores_sign_flips_of_singular_pairs():
    a = torch.tensor([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0], [1.0, 0.0, 1.0]])
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    flip = torch.tensor([1.0, -1.0, -1.0])
    q1, q2 = polar_factor(u, vh.mT), polar_factor(u * flip, vh.mT * flip)
    torch.testing.assert_close(q1, q2)
    assert basis_stability(q1, q2) == pytest.approx(1.0)


def test_stability_falls_as_the_basis_turns():
    q = torch.eye(4)[:, :3]
    angle = 0.3
    rot = torch.eye(4)
    rot[:2, :2] = torch.tensor(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    )
    turned = rot @ q
    # columns 0 and 1 turn by `angle`, column 2 stays: mean cosine = (2 cos + 1) / 3
    assert basis_stability(turned, q) == pytest.approx((2 * math.cos(angle) + 1) / 3, abs=1e-6)
    assert basis_stability(-q, q) == pytest.approx(-1.0)


def test_offdiag_energy_and_dropped_mass():
    assert offdiag_energy(torch.diag(torch.tensor([3.0, 2.0]))) == 0.0
    assert offdiag_energy(torch.tensor([[1.0, 1.0], [1.0, 1.0]])) == pytest.approx(0.5)
    assert offdiag_energy(torch.zeros(2, 2)) == 0.0
    s = torch.tensor([3.0, 2.0, 1.0])
    assert dropped_mass(s, 3) == 0.0
    assert dropped_mass(s, 2) == pytest.approx(1 / 14)


def test_rank_rule_examples():
    s = torch.tensor([10.0, 5.0, 2.0, 0.5, 0.1, 0.05])
    assert truncation_rank(s, cutoff=0.1) == (3, "cutoff")  # 2.0 >= 1.0 > 0.5
    assert truncation_rank(s, cutoff=0.004) == (6, "none")
    assert truncation_rank(s, cutoff=0.9, max_cut=0.5) == (3, "cap")  # at most half cut
    assert truncation_rank(s, cutoff=0.1, min_rank=5) == (5, "floor")
    assert truncation_rank(torch.tensor([1.0]), cutoff=0.9) == (1, "none")
    with pytest.raises(TrainingDiverged, match="NaN or Inf"):
        truncation_rank(torch.tensor([1.0, float("nan")]), cutoff=0.1)


spectra = st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=1, max_size=64).map(
    lambda xs: torch.tensor(sorted(xs, reverse=True), dtype=torch.float64)
)


@settings(max_examples=300, deadline=None)
@given(
    s=spectra,
    cutoff=st.floats(0.0, 0.999),
    max_cut=st.floats(0.01, 1.0),
    min_rank=st.integers(1, 80),
)
def test_rank_rule_properties(s, cutoff, max_cut, min_rank):
    rank, rule = truncation_rank(s, cutoff=cutoff, max_cut=max_cut, min_rank=min_rank)
    current = len(s)
    kept_by_cutoff = max(1, int((s >= cutoff * s[0]).sum()))
    assert 1 <= rank <= current  # never 0, never grows
    assert rank >= current - math.floor(max_cut * current)  # the cap per update
    assert rank >= min(min_rank, current)  # the floor
    assert rank >= kept_by_cutoff  # every value above the cutoff survives
    assert rule in {"cutoff", "cap", "floor", "none"}
    if rule == "cutoff":
        assert rank == kept_by_cutoff < current
    if rule == "none":
        assert rank == current
    # the cutoff is relative to the largest value: rescaling (exactly, by 4) changes nothing
    if float(s[0]) > 0:
        assert truncation_rank(s * 4, cutoff=cutoff, max_cut=max_cut, min_rank=min_rank)[0] == rank
