"""The OIALR schedule: dense warm-up, conversion, periodic rank updates.

::

    ctl = OIALR(model, optimizer, delay=1000, update_freq=100, sigma_cutoff=0.1)
    for x, y in batches:
        loss_fn(model(x), y).backward()
        optimizer.step(); optimizer.zero_grad()
        ctl.step()

The controller decides *when* and *to which rank*; the layers own their factors
(``rotate``/``truncate``/``compact``), :mod:`oialr.conversion` swaps modules and
:mod:`oialr.optim_state` moves the optimizer's state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .config import OIALRConfig
from .conversion import (
    ConversionReport,
    convert,
    dense_weight,
    dense_weight2d,
    plan_conversion,
    unwrap,
)
from .errors import ConfigError
from .lowrank import LowRankLayer, factor_modules, thin_svd
from .optim_state import resolve_optimizer, rotate_state, swap_param
from .records import LayerRecord, spectrum_ranks
from .stability import (
    basis_stability,
    dropped_mass,
    offdiag_energy,
    polar_factor,
    truncation_rank,
)

_logger = logging.getLogger(__name__)

__all__ = ["OIALR", "LayerRecord"]

_STATE_KEYS = ("config", "step", "layers", "polar", "history", "report", "dense")


@dataclass
class _LayerState:
    converted_at: int | None = None
    last_update: int | None = None
    cooldown: int = 0
    capacity: int | None = None  # stored rank after compaction (None: never compacted)


class OIALR:
    """Orthogonality-informed adaptive low-rank training for any PyTorch model.

    Args:
        model: the model (or a DDP / compiled wrapper of it). Nothing changes until conversion,
            when its eligible layers are replaced in place (:attr:`report` says which and why).
        optimizer: a ``torch.optim`` optimizer over the model's parameters (see
            :data:`oialr.optim_state.SUPPORTED`). At conversion each Σ takes its layer
            weight's slot in the same param group (same lr, weight decay), so LR schedulers
            carry on.
        delay: dense warm-up, in optimizer steps (or ``delay_unit``).
        update_freq: optimizer steps between rank updates (or ``update_freq_unit``).
        sigma_cutoff: keep singular values ``s_i >= sigma_cutoff * s_1``.
        on_update: called as ``on_update(controller, records)`` after every conversion, update and
            warm-up stability measurement.
        steps_per_epoch, total_steps: the run's length, needed only when a unit is ``"epochs"``
            or ``"fraction"``.
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
        steps_per_epoch: int | None = None,
        total_steps: int | None = None,
        **options: Any,
    ):
        config = OIALRConfig.build(
            delay=delay, update_freq=update_freq, sigma_cutoff=sigma_cutoff, **options
        )
        self._attach(model, optimizer, config.in_steps(steps_per_epoch, total_steps), on_update)
        root = unwrap(model)
        in_optimizer = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        self.report = plan_conversion(root, config, in_optimizer)
        unique = {id(p): p for p in root.parameters()}.values()
        self._dense = {
            "trainable": sum(p.numel() for p in unique if p.requires_grad),
            "stored": sum(p.numel() for p in unique),
        }
        self._layers = {name: _LayerState() for name in self.report.converted}
        if config.delay == 0:
            self._convert(self._due_for_conversion())

    def _attach(self, model, optimizer, config: OIALRConfig, on_update) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model, self.config, self.on_update = model, config, on_update
        self.optimizer = resolve_optimizer(optimizer, config.optimizer_state)
        self.history: list[LayerRecord] = []
        self.step_count = 0
        self._polar: dict[str, Tensor] = {}  # last warm-up polar factor per layer

    @classmethod
    def from_state_dict(
        cls,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
        *,
        on_update: Callable[[OIALR, list[LayerRecord]], Any] | None = None,
    ) -> OIALR:
        """A controller continuing ``state`` on ``model``, dense or already holding the
        factorised layers (as after :func:`oialr.load_factorised`, which training frameworks
        reach first), with ``optimizer`` built over it."""
        _check_state(state)
        ctl = cls.__new__(cls)
        ctl._attach(model, optimizer, OIALRConfig.build(**state["config"]), on_update)
        ctl.report = ConversionReport.from_dict(state["report"])
        ctl.load_state_dict(state)
        return ctl

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
        return self._count(trainable=True) / self._dense["trainable"]

    def stored_fraction(self) -> float:
        """Parameters needed to store the model now (U, Σ, V at their ranks) over dense."""
        return self._count(trainable=False) / self._dense["stored"]

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
            "report": self.report.to_dict(),
            "dense": dict(self._dense),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the controller and the model's factorised structure.

        Call it on a controller built over a freshly built model and optimizer *before*
        ``model.load_state_dict`` and ``optimizer.load_state_dict``: it factorises exactly the
        layers that were factorised, at their stored sizes (with placeholder values, which the
        model's state dict then overwrites), and puts each Σ in its optimizer slot.

        Raises:
            ConfigError: ``state`` is not a controller state, or comes from another model.
        """
        _check_state(state)
        layers = {n: _LayerState(**s) for n, s in state["layers"].items()}
        foreign = sorted(set(layers) ^ set(self.report.converted))
        if foreign:
            raise ConfigError(
                f"this OIALR state manages other layers than this model's ({', '.join(foreign[:3])}"
                "…): it was saved from another model or with other OIALR options"
            )
        self.config = OIALRConfig.build(**state["config"])
        self.step_count = int(state["step"])
        self._layers, self._dense = layers, dict(state["dense"])
        self._polar = {n: q.to(self._device()) for n, q in state["polar"].items()}
        self.history = [LayerRecord(**r) for r in state["history"]]
        for name, s in self._layers.items():
            if s.converted_at is not None:
                self._restore_layer(name, s.capacity)

    def _restore_layer(self, name: str, capacity: int | None) -> None:
        """Make layer ``name`` factorised at ``capacity`` (None: full) with Σ in the optimizer."""
        root, kind = unwrap(self.model), self.report.kinds[name]
        layer = self.layers().get(name)
        if layer is None:
            dense = dense_weight(root, name, kind)
            capacity = capacity or min(self.report.shapes[name])  # placeholders: no SVD
            layer = convert(root, name, kind, self.config.factored, capacity=capacity)
            swap_param(self.optimizer, dense, layer.sigma)
        elif capacity is not None and layer.capacity != capacity:  # converted at construction
            layer.rank = capacity
            swap_param(self.optimizer, *layer.compact())
        in_optimizer = any(
            p is layer.sigma for g in self.optimizer.param_groups for p in g["params"]
        )
        if not in_optimizer:
            raise ConfigError(
                f"layer {name!r} is factorised but its Σ is not in the optimizer: build the "
                "optimizer over the model after loading its factorised state"
            )

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
            kind = self.report.kinds[name]
            dense = dense_weight(root, name, kind)
            layer = convert(root, name, kind, cfg.factored)
            swap_param(self.optimizer, dense, layer.sigma)
            self._layers[name] = _LayerState(converted_at=t, last_update=t)
            self._polar.pop(name, None)
            rank_before = layer.rank
            s = layer.sigma.detach().diagonal().float()
            if cfg.fixed_rank is not None:
                layer.truncate(max(1, math.ceil(cfg.fixed_rank * layer.full_rank)))
                self._compact(name, layer)
            records.append(self._record(name, layer, "convert", rank_before, s, "none"))
            _logger.info("step %d: converted %s (%d×%d)", t, name, layer.m, layer.full_rank)
        self._broadcast(names)
        self._emit(records)

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
        swap_param(self.optimizer, *layer.compact(), carry=True)
        self._layers[name].capacity = layer.capacity
        return True

    @torch.no_grad()
    def _update_layer(self, name: str, layer: LowRankLayer) -> LayerRecord:
        """Rotate the bases onto Σ's singular vectors and cut the rank (spec §2.3)."""
        cfg, r = self.config, layer.rank
        _, sigma, v = layer.live()
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
        layer.rotate(p, q, s, new_r)
        rotate_state(self.optimizer, layer.sigma, p, q, new_r, cfg.optimizer_state)
        record = self._record(name, layer, "update", r, s, rule)
        record.dropped_mass = dropped_mass(s, new_r)
        record.offdiag_energy = energy
        record.rotation = float(torch.linalg.matrix_norm(p - torch.eye(r, device=p.device)))
        record.stability = stability
        return record

    # -- warm-up stability ---------------------------------------------------------------------
    @torch.no_grad()
    def _measure_stability(self, t: int) -> None:
        root, records = unwrap(self.model), []
        for name, s in self._layers.items():
            if s.converted_at is not None:
                continue
            w = dense_weight2d(root, name, self.report.kinds[name])
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
        """The layer's record at this event; ``s`` is Σ's whole spectrum, before any cut."""
        sigma = s[: self.config.top_k_sigma].tolist()  # one copy to the host, not one per value
        rows, cols = self.report.shapes[name]
        effective, stable = spectrum_ranks(sigma)
        return LayerRecord(
            step=self.step_count, layer=name, event=event, rank_before=rank_before,
            rank_after=layer.rank, n=layer.full_rank, rank_fraction=layer.rank / layer.full_rank,
            trainable=layer.trainable_params(), stored=layer.stored_params(), rule=rule,
            cutoff=float(self.config.sigma_cutoff * s[0]), sigma=sigma,
            kind=self.report.kinds[name], rows=int(rows), cols=int(cols),
            effective_rank=effective, stable_rank=stable,
        )  # fmt: skip

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


def _check_state(state: Any) -> None:
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ConfigError(
            f"not an OIALR controller state (missing {', '.join(missing)}): pass what "
            "OIALR.state_dict() returned, not the model's or the optimizer's state dict"
        )
