"""What a run exposes per layer at each event (spec §8): the dashboard's raw material."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["LayerRecord"]


@dataclass
class LayerRecord:
    """One layer at one event (spec §8): ``event`` is ``"convert"``, ``"update"`` or
    ``"stability"`` (a warm-up measurement, where only ``stability`` is meaningful)."""

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
