"""How optimizer state follows each Σ: fresh at conversion, carried through rank updates, sliced
at compaction (spec §4).

A rank update is a change of variables ``Σ' = Pᵀ Σ Q`` (then a cut to the leading block). Each
per-element state entry is moved by its kind, from one table:

- ``linear`` (first moments, momentum, averaged iterates) turn like Σ itself: ``Pᵀ x Q``;
- ``squared`` (second moments) turn with the squared rotation ``(P∘P)ᵀ x (Q∘Q)``, exact for
  independent entries; ``P∘P`` of an orthogonal P is doubly stochastic, so the result stays
  positive and keeps its total;
- ``magnitude`` (Adamax's infinity norm) turns as the square root of a squared one;
- ``counter`` (step counts and what derives from them) is kept while the moments are carried.

Optimizers whose state means something only in the original coordinates (Rprop's per-element
step sizes, Adafactor's factored second moment) restart instead: their whole state for Σ goes,
counter included, exactly as at conversion. Nothing here ever writes through a view of the state
it reads (the old code zeroed Adamax's ``exp_inf`` that way).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ConfigError

_logger = logging.getLogger(__name__)

__all__ = ["SUPPORTED", "REFUSED", "resolve_optimizer", "swap_param", "rotate_state"]

LINEAR, SQUARED, MAGNITUDE, COUNTER = "linear", "squared", "magnitude", "counter"
RESTART: dict[str, str] = {}  # no entry can be carried: restart the state at every update
_ADAM = {"exp_avg": LINEAR, "exp_avg_sq": SQUARED, "max_exp_avg_sq": SQUARED, "step": COUNTER}
optim = torch.optim
SUPPORTED: dict[type[optim.Optimizer], dict[str, str]] = {
    optim.SGD: {"momentum_buffer": LINEAR},
    optim.Adam: _ADAM,
    optim.AdamW: _ADAM,
    optim.RAdam: _ADAM,
    optim.NAdam: {**_ADAM, "mu_product": COUNTER},
    optim.Adamax: {"exp_avg": LINEAR, "exp_inf": MAGNITUDE, "step": COUNTER},
    optim.Adagrad: {"sum": SQUARED, "step": COUNTER},
    optim.RMSprop: {
        "square_avg": SQUARED,
        "momentum_buffer": LINEAR,
        "grad_avg": LINEAR,
        "step": COUNTER,
    },  # fmt: skip
    optim.Adadelta: {"square_avg": SQUARED, "acc_delta": SQUARED, "step": COUNTER},
    optim.ASGD: {"ax": LINEAR, "eta": COUNTER, "mu": COUNTER, "step": COUNTER},
    optim.Rprop: RESTART,
    **({optim.Adafactor: RESTART} if hasattr(optim, "Adafactor") else {}),
    **({optim.Muon: {"momentum_buffer": LINEAR}} if hasattr(optim, "Muon") else {}),
}
REFUSED: dict[type[optim.Optimizer], str] = {
    optim.LBFGS: "keeps one curvature history over all parameters flattened together, which "
    "a change of layer shapes invalidates",
    optim.SparseAdam: "needs sparse gradients, and Σ's are dense",
}


def resolve_optimizer(optimizer: Any, policy: str) -> optim.Optimizer:
    """The torch optimizer inside ``optimizer`` (accelerate / Lightning wrap it), checked
    against the table.

    Raises:
        ConfigError: not an optimizer, or one OIALR cannot carry state for under ``policy``.
    """
    inner = optimizer
    for _ in range(4):  # accelerate's AcceleratedOptimizer, Lightning's LightningOptimizer
        wrapped = getattr(inner, "optimizer", None) or getattr(inner, "_optimizer", None)
        if not isinstance(wrapped, optim.Optimizer):
            break
        inner = wrapped
    if not isinstance(inner, optim.Optimizer):
        raise ConfigError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}: "
            "pass the optimizer itself, e.g. OIALR(model, torch.optim.AdamW(model.parameters()))"
        )
    cls = type(inner)
    refused = next((why for base, why in REFUSED.items() if isinstance(inner, base)), None)
    if refused:
        raise ConfigError(f"optimizer {cls.__name__} cannot be used with OIALR: it {refused}")
    if policy == "rotate" and _table(inner) is None:
        known = ", ".join(c.__name__ for c in SUPPORTED)
        raise ConfigError(
            f"optimizer {cls.__name__} is not supported with optimizer_state='rotate': OIALR "
            f"carries optimizer state through rank updates for {known}; pass "
            "optimizer_state='reset' to restart Σ's state at each update instead"
        )
    return inner


def _table(optimizer: optim.Optimizer) -> dict[str, str] | None:
    """The state kinds of ``optimizer``'s class or of the nearest supported base class."""
    return next((SUPPORTED[c] for c in type(optimizer).__mro__ if c in SUPPORTED), None)


def swap_param(
    optimizer: optim.Optimizer, old: nn.Parameter, new: nn.Parameter, carry: bool = False
) -> None:
    """``new`` takes ``old``'s place in its param group (same lr, weight decay; schedulers hold
    groups, not tensors, so they carry on).

    Without ``carry`` (conversion) the state starts fresh: moments and step counter together;
    the reference code zeroes the moments but keeps the counter, which makes Σ's first Adam
    steps ~3x too large. With ``carry`` (compaction) every entry keeps its leading block.
    """
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
                state = optimizer.state.pop(old, None)
                if carry and state:
                    optimizer.state[new] = {k: _leading(v, old, new) for k, v in state.items()}
                return
    raise RuntimeError("internal: a converted weight was not found in the optimizer")


def _leading(value: Any, old: Tensor, new: Tensor) -> Any:
    """The part of a state entry that belongs to the leading block ``new`` of ``old``:
    every axis as long as Σ's is cut (``(c, c)`` moments, Adafactor's ``(c, 1)``/``(1, c)``)."""
    if not isinstance(value, Tensor) or value.dim() != old.dim():
        return value
    index = tuple(
        slice(0, n) if size == c else slice(None)
        for size, c, n in zip(value.shape, old.shape, new.shape)
    )
    return value[index].clone()


@torch.no_grad()
def rotate_state(
    optimizer: optim.Optimizer, sigma: Tensor, p: Tensor, q: Tensor, rank: int, policy: str
) -> None:
    """Move Σ's state into the coordinates of ``Σ = P diag(s) Qᵀ`` and keep its leading
    ``rank × rank`` block; entries past the rank are zero, as Σ's are."""
    state = optimizer.state.get(sigma)
    if not state:
        return
    kinds = _table(optimizer) if policy == "rotate" else RESTART
    unknown = [
        k for k, v in state.items() if isinstance(v, Tensor) and v.dim() > 0 and k not in kinds
    ]
    if unknown and kinds is not RESTART:  # a subclass with state of its own: nothing is guessed
        _logger.warning(
            "%s state %s has no rotation rule: restarting it", type(optimizer).__name__, unknown
        )
    if kinds is RESTART or unknown:
        optimizer.state.pop(sigma)
        return
    r = p.shape[0]
    p2, q2 = p.square(), q.square()
    for key, value in state.items():
        if not isinstance(value, Tensor) or value.shape != sigma.shape:
            continue
        block = value[:r, :r].float()
        kind = kinds[key]
        if kind == LINEAR:
            block = p.mT @ block @ q
        elif kind == SQUARED:
            block = p2.mT @ block @ q2
        elif kind == MAGNITUDE:
            block = (p2.mT @ block.square() @ q2).sqrt()
        moved = torch.zeros_like(value)
        moved[:rank, :rank] = block[:rank, :rank].to(value.dtype)
        value.copy_(moved)
