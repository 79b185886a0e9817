"""Basis stability and spectrum metrics: pure functions on tensors (spec §2, §6, §8)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import TrainingDiverged

__all__ = [
    "polar_factor",
    "basis_stability",
    "offdiag_energy",
    "dropped_mass",
    "truncation_rank",
]


def polar_factor(u: Tensor, v: Tensor) -> Tensor:
    """``Q = U Vᵀ``, the orthogonal polar factor of ``A = U Σ Vᵀ``.

    Unlike U or V alone it does not flip when a singular-vector pair changes sign, so two
    measurements can be compared column by column.
    """
    return u.float() @ v.float().mT


def basis_stability(q_now: Tensor, q_prev: Tensor) -> float:
    """Mean over columns of ``cos(Q_now[:, j], Q_prev[:, j])``; 1.0 means the bases did not move.

    >>> q = torch.eye(3)
    >>> basis_stability(q, q)
    1.0
    """
    cos = torch.nn.functional.cosine_similarity(q_now.float(), q_prev.float(), dim=0, eps=1e-12)
    return float(cos.mean())


def offdiag_energy(sigma: Tensor) -> float:
    """Share of ``‖Σ‖²_F`` off the diagonal: how far training has mixed the frozen bases."""
    total = float(sigma.float().square().sum())
    if total == 0.0:
        return 0.0
    return (total - float(sigma.float().diagonal().square().sum())) / total


def dropped_mass(s: Tensor, keep: int) -> float:
    """Share of the Frobenius mass ``Σ s_i²`` in the singular values beyond ``keep``."""
    sq = s.float().square()
    total = float(sq.sum())
    return 0.0 if total == 0.0 else float(sq[keep:].sum()) / total


def truncation_rank(
    s: Tensor,
    *,
    cutoff: float,
    max_cut: float = 0.5,
    min_rank: int = 1,
) -> tuple[int, str]:
    """The rank to keep from descending singular values ``s`` of Σ, and which rule set it.

    Keep ``s_i ≥ cutoff · s_1`` (relative to the largest), but cut at most ``max_cut`` of the
    current rank in one update and never below ``min_rank`` (itself at least 1). The result never
    exceeds ``len(s)``: the rank never grows.

    Returns:
        ``(rank, rule)`` with rule ``"cutoff"`` (the cutoff decided), ``"cap"`` (the per-update cap
        held it up), ``"floor"`` (the minimum did) or ``"none"`` (the cutoff keeps every value).

    >>> truncation_rank(torch.tensor([4.0, 2.0, 0.1, 0.01]), cutoff=0.1)
    (2, 'cutoff')
    """
    current = len(s)
    if current == 0:
        raise ValueError("truncation_rank needs at least one singular value")
    if not bool(torch.isfinite(s).all()):
        raise TrainingDiverged(
            "the mixing matrix Σ holds NaN or Inf: training diverged; lower the learning rate"
        )
    keep = max(1, int((s >= cutoff * s[0]).sum()))
    if keep >= current:
        return current, "none"
    cap = current - math.floor(max_cut * current)
    floor = min(current, max(1, min_rank))
    rank, rule = keep, "cutoff"
    if rank < cap:
        rank, rule = cap, "cap"
    if rank < floor:
        rank, rule = floor, "floor"
    return rank, rule
