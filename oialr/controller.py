"""The OIALR schedule: dense warm-up, conversion, periodic rank updates, optimizer state.

::

    ctl = OIALR(model, optimizer, delay=1000, update_freq=100, sigma_cutoff=0.1)
    for x, y in batches:
        loss_fn(model(x), y).backward()
        optimizer.step(); optimizer.zero_grad()
        ctl.step()

The work lives in private helpers (``_convert``, ``_update_layer``, ``_move_optimizer_state``);
the public surface is ``step()``, ``ranks()``, the two fractions, ``history`` and the state dict.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .config import OIALRConfig
from .conversion import ConversionReport, convert_layer, plan_conversion, unwrap
from .lowrank import LowRankLayer, factor_modules, thin_svd
from .stability import (
    basis_stability,
    dropped_mass,
    offdiag_energy,
    polar_factor,
    truncation_rank,
)

_logger = logging.getLogger(__name__)

__all__ = ["OIALR", "LayerRecord"]

# Optimizer state that lives in Σ's coordinates: first moments rotate like a gradient, second
# moments (elementwise squares) rotate with the squared rotation (exact for independent entries).
FIRST_MOMENTS = ("exp_avg", "momentum_buffer")
SECOND_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq")


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


@dataclass
class _LayerState:
    converted_at: int | None = None
    last_update: int | None = None
    cooldown: int = 0
    capacity: int | None = None  # stored rank after compaction (None: never compacted)


class OIALR:
    """Orthogonality-informed adaptive low-rank training for any PyTorch model.

    Args:
        model: the model (or a DDP / compiled wrapper of it). Its eligible layers are replaced in
            place at conversion; ``nn.MultiheadAttention`` modules are wrapped at once (same
            function, same Parameters) so their projections can be factorised.
        optimizer: an SGD, Adam or AdamW optimizer over the model's parameters. At conversion each
            Σ takes its layer weight's slot in the same param group (same lr, weight decay), so LR
            schedulers carry on.
        delay: dense warm-up in optimizer steps.
        update_freq: optimizer steps between rank updates.
        sigma_cutoff: keep singular values ``s_i >= sigma_cutoff * s_1``.
        on_update: called as ``on_update(controller, records)`` after every conversion, update and
            warm-up stability measurement.
        **options: the other fields of :class:`OIALRConfig`.

    Under DistributedDataParallel, re-wrap the model when :meth:`step` returns ``"convert"`` (new
    Parameters appeared); updates never change a shape, so the reducer stays valid after that, and
    every update ends with the factors broadcast from rank 0.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        delay: int = 1000,
        update_freq: int = 100,
        sigma_cutoff: float = 0.1,
        *,
        on_update: Callable[[OIALR, list[LayerRecord]], Any] | None = None,
        **options: Any,
    ):
        self.config = OIALRConfig.build(
            delay=delay, update_freq=update_freq, sigma_cutoff=sigma_cutoff, **options
        )
        self.model, self.optimizer, self.on_update = model, optimizer, on_update
        root = unwrap(model)
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.report: ConversionReport = plan_conversion(root, self.config, in_optimizer)
        self.history: list[LayerRecord] = []
        self.step_count = 0
        self._layers = {name: _LayerState() for name in self.report.converted}
        self._polar: dict[str, Tensor] = {}  # last warm-up polar factor per layer
        unique = {id(p): p for p in root.parameters()}.values()
        self._dense_trainable = sum(p.numel() for p in unique if p.requires_grad)
        self._dense_stored = sum(p.numel() for p in unique)
        if self.config.delay == 0:
            self._convert(self._due_for_conversion())

    # -- public --------------------------------------------------------------------------------
    @property
    def converted(self) -> bool:
        """True once every managed layer has been converted."""
        return all(s.converted_at is not None for s in self._layers.values())

    @property
    def phase(self) -> str:
        started = any(s.converted_at is not None for s in self._layers.values())
        return "low-rank" if started else "warm-up"

    @property
    def conversion_step(self) -> int | None:
        """The step at which the first layer was factorised (None during warm-up)."""
        steps = [s.converted_at for s in self._layers.values() if s.converted_at is not None]
        return min(steps) if steps else None

    def layers(self) -> dict[str, LowRankLayer]:
        """The factorised layers by module name."""
        return factor_modules(unwrap(self.model))

    def ranks(self) -> dict[str, int]:
        """``{module name: current rank}`` for converted layers."""
        return {name: layer.rank for name, layer in self.layers().items()}

    def trainable_fraction(self) -> float:
        """Trainable parameters now over trainable parameters of the dense model (Σ counts r²)."""
        return self._count(trainable=True) / self._dense_trainable

    def stored_fraction(self) -> float:
        """Parameters needed to store the model now (U, Σ, V at their ranks) over dense."""
        return self._count(trainable=False) / self._dense_stored

    def step(self) -> str | None:
        """Advance one optimizer step; call it right after ``optimizer.step()``.

        Returns:
            ``"convert"`` when new Parameters appeared at this step (layers were factorised or,
            outside torch.distributed, compacted: re-wrap DDP now), ``"update"`` when ranks
            were updated, else ``None``.
        """
        self.step_count += 1
        cfg, t = self.config, self.step_count
        event = None
        if cfg.fixed_rank is None and self._update_due(t):
            event = self._run_updates(t)
        if not self.converted:
            if cfg.stability_interval and t % cfg.stability_interval == 0:
                self._measure_stability(t)
            due = self._due_for_conversion()
            if due:
                self._convert(due)
                event = "convert"
        return event

    def state_dict(self) -> dict[str, Any]:
        """The controller's state; save it with the model's and the optimizer's."""
        return {
            "config": self.config.model_dump(),
            "step": self.step_count,
            "layers": {n: asdict(s) for n, s in self._layers.items()},
            "polar": {n: q.cpu() for n, q in self._polar.items()},
            "history": [asdict(r) for r in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the controller and rebuild the model's factorised structure.

        Call it on a freshly built model + optimizer + controller *before*
        ``model.load_state_dict`` and ``optimizer.load_state_dict``: it factorises exactly the
        layers that were factorised (with placeholder values, which the model's state dict then
        overwrites) and puts each Σ in its optimizer slot.
        """
        self.config = OIALRConfig.build(**state["config"])
        self.step_count = int(state["step"])
        self._layers = {n: _LayerState(**s) for n, s in state["layers"].items()}
        self._polar = {n: q.to(self._device()) for n, q in state["polar"].items()}
        self.history = [LayerRecord(**r) for r in state["history"]]
        root, present = unwrap(self.model), self.layers()
        for name, s in self._layers.items():
            if s.converted_at is not None and name not in present:
                dense_weight = root.get_submodule(name).weight
                layer = convert_layer(root, name, self.config.factored, init=False)
                self._swap_in_optimizer(dense_weight, layer.sigma)
                if s.capacity is not None:  # it was stored smaller: same shapes as the checkpoint
                    layer.rank = s.capacity
                    self._swap_in_optimizer(*layer.compact())

    # -- schedule ------------------------------------------------------------------------------
    def _due_for_conversion(self) -> list[str]:
        cfg, t = self.config, self.step_count
        waiting = [n for n, s in self._layers.items() if s.converted_at is None]
        if not waiting:
            return []
        if cfg.switch == "stability":
            if t >= cfg.delay:
                return waiting
            return [n for n in waiting if self._stable(n)]
        if t < cfg.delay:
            return []
        # rollout: deepest layers first, one chunk at the delay and one per update after it
        chunk = math.ceil(cfg.rollout_fraction * len(self._layers))
        if len(waiting) < len(self._layers) and (t - cfg.delay) % cfg.update_freq:
            return []
        return waiting[::-1][:chunk][::-1]

    def _stable(self, name: str) -> bool:
        """Two readings in a row at or above the threshold: one can be a passing value."""
        recent = [
            r.stability
            for r in reversed(self.history)
            if r.layer == name and r.event == "stability" and r.stability is not None
        ][:2]
        return len(recent) == 2 and min(recent) >= self.config.stability_threshold

    def _update_due(self, t: int) -> bool:
        freq = self.config.update_freq
        return any(
            s.last_update is not None and t - s.last_update >= freq for s in self._layers.values()
        )

    # -- conversion ----------------------------------------------------------------------------
    def _convert(self, names: list[str]) -> None:
        root, t, cfg = unwrap(self.model), self.step_count, self.config
        records = []
        for name in names:
            dense_weight = root.get_submodule(name).weight
            layer = convert_layer(root, name, cfg.factored)
            self._swap_in_optimizer(dense_weight, layer.sigma)
            self._layers[name] = _LayerState(converted_at=t, last_update=t)
            self._polar.pop(name, None)
            rank_before = layer.rank
            s = layer.sigma.detach().diagonal().float()
            if cfg.fixed_rank is not None:
                self._truncate(layer, max(1, math.ceil(cfg.fixed_rank * layer.full_rank)))
                self._compact(name, layer)
            records.append(self._record(name, layer, "convert", rank_before, s, "none"))
            _logger.info("step %d: converted %s (%d×%d)", t, name, layer.m, layer.full_rank)
        self._broadcast(names)
        self._emit(records)

    def _swap_in_optimizer(
        self, old: nn.Parameter, new: nn.Parameter, carry_state: bool = False
    ) -> None:
        """Σ takes W's place in W's param group (same lr, weight decay; schedulers carry on).

        Its state starts fresh: moments and Adam's step counter together. The reference code
        zeroes the moments but keeps the counter, which makes Σ's first Adam steps ~3x too large.
        (Projecting W's moments into Σ's coordinates was measured too and did no better.)
        """
        for group in self.optimizer.param_groups:
            for i, p in enumerate(group["params"]):
                if p is old:
                    group["params"][i] = new
                    state = self.optimizer.state.pop(old, None)
                    if carry_state and state:  # compaction: the live block of each tensor
                        r = new.shape[0]
                        self.optimizer.state[new] = {
                            k: v[:r, :r].clone()
                            if isinstance(v, Tensor) and v.shape == old.shape
                            else v
                            for k, v in state.items()
                        }
                    return
        raise RuntimeError("internal: a converted weight was not found in the optimizer")

    # -- updates -------------------------------------------------------------------------------
    def _run_updates(self, t: int) -> str:
        layers, records, updated, event = self.layers(), [], [], "update"
        for name, s in self._layers.items():
            if s.last_update is None or t - s.last_update < self.config.update_freq:
                continue
            s.last_update = t
            if s.cooldown:
                s.cooldown -= 1
                continue
            records.append(self._update_layer(name, layers[name]))
            updated.append(name)
            if records[-1].rank_after < records[-1].rank_before:
                s.cooldown = self.config.cooldown_updates
                if self._compact(name, layers[name]):
                    event = "convert"
        self._broadcast(updated)
        self._emit(records)
        return event

    def _compact(self, name: str, layer: LowRankLayer) -> bool:
        """Shrink the layer's storage once its rank is below 71 % of it (half the area), so
        optimizer steps and gradients cost what the rank does; the state moves along."""
        allowed = self.config.compact
        if allowed == "auto":
            allowed = not (dist.is_available() and dist.is_initialized())
        if not allowed or 2 * layer.rank**2 > layer.capacity**2:
            return False
        self._swap_in_optimizer(*layer.compact(), carry_state=True)
        self._layers[name].capacity = layer.capacity
        return True

    @torch.no_grad()
    def _update_layer(self, name: str, layer: LowRankLayer) -> LayerRecord:
        """Rotate the bases onto Σ's singular vectors and cut the rank (spec §2.3)."""
        cfg, r = self.config, layer.rank
        u, sigma, v = layer.live()
        energy = offdiag_energy(sigma)
        p, s, q = thin_svd(sigma)  # Σ = P diag(s) Qᵀ, float32
        signs = torch.where(p.diagonal() < 0, -1.0, 1.0)  # canonical signs: P's diagonal ≥ 0
        p, q = p * signs, q * signs
        new_r, rule = truncation_rank(
            s,
            cutoff=cfg.sigma_cutoff,
            max_cut=cfg.max_cut_per_update,
            min_rank=cfg.rank_floor(layer.full_rank),
        )
        # stability: the polar factor U Vᵀ before vs after, computed in r-space since U is
        # orthonormal: column j of Q is U·V[j]ᵀ before and U·(P' Q'ᵀ)·V[j]ᵀ after.
        vf = v.float()
        turned = vf @ (p[:, :new_r] @ q[:, :new_r].mT).mT
        stability = basis_stability(vf.mT, turned.mT)
        new_u, new_v = u.float() @ p, vf @ q
        dtype = layer.sigma.dtype
        layer.u.zero_()
        layer.v.zero_()
        layer.u[:, :new_r] = new_u[:, :new_r].to(dtype)
        layer.v[:, :new_r] = new_v[:, :new_r].to(dtype)
        layer.sigma.zero_()
        layer.sigma[:new_r, :new_r] = torch.diag(s[:new_r]).to(dtype)
        if layer.sigma.grad is not None:
            layer.sigma.grad.zero_()  # it was in the old coordinates
        self._move_optimizer_state(layer.sigma, p, q, r, new_r)
        layer.rank = new_r
        record = self._record(name, layer, "update", r, s, rule)
        record.dropped_mass = dropped_mass(s, new_r)
        record.offdiag_energy = energy
        record.rotation = float(torch.linalg.matrix_norm(p - torch.eye(r, device=p.device)))
        record.stability = stability
        return record

    def _move_optimizer_state(
        self, sigma: Tensor, p: Tensor, q: Tensor, r: int, new_r: int
    ) -> None:
        state = self.optimizer.state.get(sigma)
        if not state:
            return
        if self.config.optimizer_state == "reset":
            self.optimizer.state.pop(sigma)
            return
        p2, q2 = p.square(), q.square()
        for key, value in state.items():
            if not isinstance(value, Tensor) or value.shape != sigma.shape:
                continue
            block = value[:r, :r].float()
            if key in FIRST_MOMENTS:
                block = p.mT @ block @ q
            elif key in SECOND_MOMENTS:
                block = p2.mT @ block @ q2
            value.zero_()
            value[:new_r, :new_r] = block[:new_r, :new_r].to(value.dtype)

    def _truncate(self, layer: LowRankLayer, rank: int) -> None:
        """Cut a freshly converted (diagonal Σ) layer to ``rank`` (the fixed-rank baseline)."""
        with torch.no_grad():
            layer.u[:, rank:] = 0
            layer.v[:, rank:] = 0
            layer.sigma[rank:, :] = 0
            layer.sigma[:, rank:] = 0
        layer.rank = rank

    # -- warm-up stability ---------------------------------------------------------------------
    @torch.no_grad()
    def _measure_stability(self, t: int) -> None:
        root, records = unwrap(self.model), []
        for name, s in self._layers.items():
            if s.converted_at is not None:
                continue
            w = root.get_submodule(name).weight.flatten(1)
            a = w.mT if w.shape[0] < w.shape[1] else w
            u, _, v = thin_svd(a)
            q_now = polar_factor(u, v)
            prev = self._polar.get(name)
            self._polar[name] = q_now
            if prev is None:
                continue
            n = v.shape[0]
            records.append(
                LayerRecord(
                    step=t, layer=name, event="stability", rank_before=n, rank_after=n, n=n,
                    rank_fraction=1.0, trainable=w.numel(), stored=w.numel(),
                    stability=basis_stability(q_now, prev),
                )
            )  # fmt: skip
        self._emit(records)

    # -- bookkeeping ---------------------------------------------------------------------------
    def _record(self, name, layer, event, rank_before, s, rule) -> LayerRecord:
        return LayerRecord(
            step=self.step_count,
            layer=name,
            event=event,
            rank_before=rank_before,
            rank_after=layer.rank,
            n=layer.full_rank,
            rank_fraction=layer.rank / layer.full_rank,
            trainable=layer.trainable_params(),
            stored=layer.stored_params(),
            rule=rule,
            cutoff=float(self.config.sigma_cutoff * s[0]),
            sigma=[float(x) for x in s[: self.config.top_k_sigma]],
        )

    def _emit(self, records: list[LayerRecord]) -> None:
        if not records:
            return
        self.history.extend(records)
        if self.on_update is not None:
            self.on_update(self, records)

    def _broadcast(self, names: list[str]) -> None:
        """Under torch.distributed, make every rank hold rank 0's factors bit for bit."""
        if not names or not (dist.is_available() and dist.is_initialized()):
            return
        if dist.get_world_size() == 1:
            return
        layers = self.layers()
        for name in names:
            for tensor in (layers[name].u, layers[name].v, layers[name].sigma.data):
                dist.broadcast(tensor, src=0)

    def _count(self, trainable: bool) -> int:
        root = unwrap(self.model)
        factored = {id(m.sigma): m for m in factor_modules(root).values()}
        total = 0
        for p in {id(p): p for p in root.parameters()}.values():
            layer = factored.get(id(p))
            if layer is not None:  # Σ stands for the whole factorised weight
                total += layer.rank**2 if trainable else layer.factor_params()
            elif p.requires_grad or not trainable:
                total += p.numel()
        return total

    def _device(self) -> torch.device:
        return next(unwrap(self.model).parameters()).device
