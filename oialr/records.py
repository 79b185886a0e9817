"""What a run exposes per layer at each event (spec §8): the dashboard's raw material."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["LayerRecord", "spectrum_ranks"]


@dataclass
class LayerRecord:
    """One layer at one event (spec §8): ``event`` is ``"convert"``, ``"update"`` or
    ``"stability"`` (a warm-up measurement, where only ``stability`` is meaningful).

    ``sigma`` is Σ's whole spectrum at the event, largest first (``rank_before`` values, the
    dropped ones included, unless ``top_k_sigma`` caps it), so a reader sees where the cutoff
    cut. ``kind`` and ``rows`` × ``cols`` say which weight this is (``"Linear"``, 512 × 784:
    out × in, kernel included for convolutions); ``n`` is its full rank. ``effective_rank`` and
    ``stable_rank`` summarise ``sigma`` (see :func:`spectrum_ranks`).
    """

    step: int
    layer: str
    event: str
    rank_before: int
    rank_after: int
    n: int
    rank_fraction: float
    trainable: int
    stored: int
    rule: str = "none"
    dropped_mass: float = 0.0
    offdiag_energy: float = 0.0
    rotation: float = 0.0
    stability: float | None = None
    cutoff: float | None = None
    sigma: list[float] = field(default_factory=list)
    kind: str | None = None
    rows: int | None = None
    cols: int | None = None
    effective_rank: float | None = None
    stable_rank: float | None = None


def spectrum_ranks(sigma: Sequence[float]) -> tuple[float | None, float | None]:
    """(effective rank, stable rank) of a spectrum; ``(None, None)`` if it is all zeros.

    The effective rank (Roy & Vetterli, 2007) is ``exp`` of the entropy of ``σ_i / Σ σ``: how
    many directions carry the weight's energy, smoothly. The stable rank is ``Σ σ_i² / σ_1²``,
    which is at most the rank and robust to tiny singular values.

    >>> spectrum_ranks([1.0, 1.0, 1.0, 1.0])
    (4.0, 4.0)
    >>> [round(r, 2) for r in spectrum_ranks([4.0, 2.0, 1.0, 0.0])]
    [2.6, 1.31]
    """
    values = [abs(float(s)) for s in sigma]
    total, top = sum(values), max(values, default=0.0)
    if not total > 0:
        return None, None
    entropy = -sum(p * math.log(p) for p in (s / total for s in values) if p > 0)
    return math.exp(entropy), sum(s * s for s in values) / (top * top)
