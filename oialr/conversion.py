"""Which layers to factorise, swapping them in and out of a model, and exporting back to dense.

Shaped like peft's ``inject_adapter``: every candidate is decided first, with a reason for each
one left dense, and only then is the model touched, so an error never leaves it half-converted.
"""

from __future__ import annotations

import fnmatch
import logging
from collections import Counter
from dataclasses import dataclass, field

from torch import nn

from .errors import ConfigError, NoEligibleLayersError
from .lowrank import LowRankConv, LowRankLayer, LowRankLinear, LowRankMHA

_logger = logging.getLogger(__name__)

__all__ = ["ConversionReport", "plan_conversion", "convert_layer", "to_dense", "unwrap"]

CONVS = (nn.Conv1d, nn.Conv2d)


@dataclass
class ConversionReport:
    """What will be (or was) factorised, and why every other weight stays dense.

    Attributes:
        converted: module names of the layers OIALR manages, in model order.
        shapes: ``name → (out, in_flat)`` of each converted layer's weight.
        skipped: ``name → reason`` for every Linear/Conv/attention weight left dense.
    """

    converted: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"OIALR manages {len(self.converted)} layer(s):"]
        lines += [f"  {n}  {self.shapes[n][0]}×{self.shapes[n][1]}" for n in self.converted]
        if self.skipped:
            lines.append(f"left dense ({len(self.skipped)}):")
            lines += [f"  {n}: {why}" for n, why in self.skipped.items()]
        return "\n".join(lines)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or name.endswith("." + pattern) or name == pattern


def _wrap_attention(model: nn.Module) -> None:
    """Swap every supported ``nn.MultiheadAttention`` for a LowRankMHA with dense projections that
    share the original Parameters: same function, same optimizer slots, and both projections are
    now ordinary Linears that can be factorised by name (``<mha>.in_proj``, ``<mha>.out_proj``)."""
    for name, mod in list(model.named_modules()):
        if type(mod) is nn.MultiheadAttention and _mha_unsupported(mod) is None:
            _set_submodule(
                model, name, LowRankMHA(LowRankMHA.dense_in_proj(mod), mod.out_proj, mod)
            )


def _mha_unsupported(mha: nn.MultiheadAttention) -> str | None:
    if not mha._qkv_same_embed_dim:
        return "attention with kdim/vdim different from embed_dim is not supported"
    if mha.bias_k is not None or mha.add_zero_attn:
        return "attention with add_bias_kv/add_zero_attn is not supported"
    return None


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def plan_conversion(model: nn.Module, config, trainable: set[int]) -> ConversionReport:
    """Decide every candidate weight of ``model`` (already unwrapped) without changing any.

    Args:
        model: the dense model; its ``nn.MultiheadAttention`` modules are wrapped in place first.
        config: an :class:`oialr.OIALRConfig`.
        trainable: ``id()`` of every Parameter the optimizer updates.

    Raises:
        NoEligibleLayersError: nothing can be converted, or ``include`` matched no layer.
    """
    _wrap_attention(model)
    shared = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    report = ConversionReport()
    candidates: list[tuple[str, nn.Module]] = []
    for name, mod in model.named_modules():
        if type(mod) is nn.MultiheadAttention:
            report.skipped[name] = _mha_unsupported(mod) or "unsupported attention"
        elif isinstance(mod, (nn.Linear, *CONVS)) and not isinstance(mod, LowRankLayer):
            candidates.append((name, mod))
        elif isinstance(mod, (nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Embedding)):
            report.skipped[name] = f"{type(mod).__name__} is not supported"
    if not candidates:
        raise NoEligibleLayersError("the model has no nn.Linear, nn.Conv1d/2d or attention layer")

    first = candidates[0][0]
    last_linear = next((n for n, m in reversed(candidates) if isinstance(m, nn.Linear)), None)
    used_includes: set[str] = set()
    for name, mod in candidates:
        reason = _skip_reason(
            name, mod, config, first, last_linear, shared, trainable, used_includes
        )
        if reason:
            report.skipped[name] = reason
        else:
            report.converted.append(name)
            report.shapes[name] = (mod.weight.shape[0], mod.weight[0].numel())

    if config.include:
        unused = [p for p in config.include if p not in used_includes]
        if len(unused) == len(config.include):
            raise NoEligibleLayersError(
                f"include={config.include!r} matched no Linear/Conv layer; "
                f"module names look like {[n for n, _ in candidates[:4]]!r}"
            )
    for pattern in config.exclude:
        if not any(_matches(n, pattern) for n, _ in candidates):
            _logger.warning("exclude pattern %r matched no layer", pattern)
    if not report.converted:
        raise NoEligibleLayersError(
            "no layer can be converted with these options: "
            + "; ".join(f"{n}: {r}" for n, r in list(report.skipped.items())[:5])
        )
    return report


def _skip_reason(name, mod, config, first, last_linear, shared, trainable, used_includes) -> str:
    weight = mod.weight
    if isinstance(mod, CONVS):
        if mod.groups != 1:
            return f"grouped or depthwise conv (groups={mod.groups})"
        if mod.padding_mode != "zeros":
            return f"padding_mode={mod.padding_mode!r} is not supported"
    if config.include:
        hits = [p for p in config.include if _matches(name, p)]
        if not hits:
            return "not matched by include"
        used_includes.update(hits)
    if any(_matches(name, p) for p in config.exclude):
        return "matched by exclude"
    if config.keep_first and name == first:
        return "input layer kept dense (keep_first=True)"
    if config.keep_last and name == last_linear:
        return "output head kept dense (keep_last=True)"
    if not weight.requires_grad:
        return "weight is frozen (requires_grad=False)"
    if id(weight) not in trainable:
        return "weight is not in the optimizer"
    if shared[id(weight)] > 1:
        return "weight is shared with another module (tied weights)"
    out_f, in_f = weight.shape[0], weight[0].numel()
    aspect = max(out_f, in_f) / min(out_f, in_f)
    if aspect >= config.min_aspect:
        return f"aspect ratio {aspect:.1f} >= min_aspect {config.min_aspect:g}"
    return ""


def convert_layer(model: nn.Module, name: str, factored, init: bool = True) -> LowRankLayer:
    """Replace the dense layer ``name`` by its factorisation; returns the new module."""
    dense = model.get_submodule(name)
    cls = LowRankConv if isinstance(dense, CONVS) else LowRankLinear
    layer = cls.from_dense(dense, factored=factored, init=init)
    _set_submodule(model, name, layer)
    return layer


def to_dense(model: nn.Module) -> nn.Module:
    """Merge every factorisation back into ordinary ``nn.Linear`` / ``nn.Conv*d`` /
    ``nn.MultiheadAttention`` modules, for export.

    This mutates ``model`` in place (and returns it); the new weights are fresh Parameters, so an
    optimizer built before no longer refers to them.
    """
    root = unwrap(model)
    if isinstance(root, (LowRankLayer, LowRankMHA)):
        raise ConfigError("to_dense needs a model that contains factorised layers, not one itself")
    replaced: list[str] = []
    for name, mod in list(root.named_modules()):
        inside_replaced = any(name.startswith(r + ".") for r in replaced)
        if isinstance(mod, (LowRankLayer, LowRankMHA)) and not inside_replaced:
            _set_submodule(root, name, mod.to_dense())
            replaced.append(name)
    return model
