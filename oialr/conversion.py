"""Which layers to factorise, swapping them in and out of a model, and exporting back to dense.

Shaped like peft's ``inject_adapter``: :func:`plan_conversion` decides every candidate without
touching the model (a reason for each one left dense), and only :func:`convert` changes it, one
layer at a time. Layers are recognised by one ordered table (:data:`KINDS`, first hit wins) of
exact types: a subclass that overrides ``forward`` computes something else, so it stays dense
with that reason in the report.
"""

from __future__ import annotations

import fnmatch
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .attention import LowRankMHA, mha_unsupported
from .errors import ConfigError, NoEligibleLayersError
from .lowrank import LowRankConv, LowRankConv1D, LowRankLayer, LowRankLinear

_logger = logging.getLogger(__name__)

__all__ = [
    "ConversionReport",
    "KINDS",
    "plan_conversion",
    "convert",
    "dense_weight",
    "to_dense",
    "load_factorised",
    "rebuild_factorised",
    "rebuild_on_load",
    "unwrap",
]


@dataclass(frozen=True)
class LayerKind:
    """One row of the dispatch table: a dense module type and the layer that replaces it.

    ``own`` lists the methods a subclass must not override to count as this type.
    """

    name: str
    dense: type[nn.Module] | str  # a type, or "module:Class" for an optional package
    factorised: type[LowRankLayer]
    own: tuple[str, ...] = ("forward",)

    def dense_type(self) -> type[nn.Module] | None:
        """The dense type, if its package is loaded (a model using it has imported it)."""
        if not isinstance(self.dense, str):
            return self.dense
        module, _, name = self.dense.partition(":")
        return getattr(sys.modules.get(module), name, None)

    def overridden(self, module: nn.Module) -> list[str] | None:
        """None: not this type; else the methods of ``own`` that ``module``'s class overrides
        (none: this kind)."""
        base = self.dense_type()
        if base is None or not isinstance(module, base):
            return None
        return [m for m in self.own if getattr(type(module), m) is not getattr(base, m)]


MHA_IN, MHA_OUT = "MHA in-proj", "MHA out-proj"
# The dispatch table, tried in order. nn.MultiheadAttention is not a row: it contributes its two
# projections (MHA_IN, MHA_OUT), which are wrapped in a LowRankMHA when the first one converts.
KINDS: tuple[LayerKind, ...] = (
    LayerKind("Linear", nn.Linear, LowRankLinear),
    # timm's Linear overrides forward() only to cast under TorchScript: the same computation
    LayerKind("Linear", "timm.layers.linear:Linear", LowRankLinear),
    LayerKind("Conv1d", nn.Conv1d, LowRankConv, ("forward", "_conv_forward")),
    LayerKind("Conv2d", nn.Conv2d, LowRankConv, ("forward", "_conv_forward")),
    LayerKind("Conv1D", "transformers.pytorch_utils:Conv1D", LowRankConv1D),
)
FACTORISED: dict[str, type[LowRankLayer]] = {
    **{k.name: k.factorised for k in KINDS},
    MHA_IN: LowRankLinear,
    MHA_OUT: LowRankLinear,
}


@dataclass
class ConversionReport:
    """What will be (or was) factorised, and why every other weight stays dense.

    Attributes:
        converted: module names of the layers OIALR manages, in model order.
        shapes: ``name → (out, in_flat)`` of each converted layer's weight.
        kinds: ``name → kind`` of each converted layer (``Linear``, ``Conv2d``, ``MHA in-proj``…).
        skipped: ``name → reason`` for every weight left dense.
    """

    converted: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"OIALR manages {len(self.converted)} layer(s):"]
        lines += [
            f"  {n}  {self.kinds[n]} {self.shapes[n][0]}×{self.shapes[n][1]}"
            for n in self.converted
        ]
        if self.skipped:
            lines.append(f"left dense ({len(self.skipped)}):")
            lines += [f"  {n}: {why}" for n, why in self.skipped.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "converted": list(self.converted),
            "shapes": {n: list(s) for n, s in self.shapes.items()},
            "kinds": dict(self.kinds),
            "skipped": dict(self.skipped),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConversionReport:
        return cls(
            converted=list(data["converted"]),
            shapes={n: tuple(s) for n, s in data["shapes"].items()},
            kinds=dict(data["kinds"]),
            skipped=dict(data["skipped"]),
        )


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or name.endswith("." + pattern) or name == pattern


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _describe(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__name__} ({cls.__module__})"


def _candidates(model: nn.Module, report: ConversionReport) -> Iterator[tuple[str, str, Tensor]]:
    """``(name, kind, dense weight Parameter)`` of every layer the table knows, in model order;
    every other module holding a matrix weight goes to ``report.skipped`` with the reason."""
    attention: set[str] = set()
    for name, mod in model.named_modules():
        if name.rpartition(".")[0] in attention:
            continue  # an attention's own projection: yielded with it
        if type(mod).forward is nn.MultiheadAttention.forward:
            attention.add(name)
            why = mha_unsupported(mod) or (
                None if name else "the model is an attention module itself: wrap it in one"
            )
            if why:
                report.skipped[name] = why
                continue
            yield f"{name}.in_proj", MHA_IN, mod.in_proj_weight
            yield f"{name}.out_proj", MHA_OUT, mod.out_proj.weight
            continue
        if isinstance(mod, nn.MultiheadAttention):
            report.skipped[name] = f"{_describe(mod)} overrides forward(); left dense"
            continue
        verdicts = [(kind, kind.overridden(mod)) for kind in KINDS]
        kind = next((k for k, methods in verdicts if methods == []), None)
        extended = next(((k, methods) for k, methods in verdicts if methods), None)
        if kind is not None:
            yield name, kind.name, mod.weight
        elif extended is not None:
            base, methods = extended
            report.skipped[name] = (
                f"{_describe(mod)} overrides {' and '.join(m + '()' for m in methods)} of "
                f"{base.name}: left dense, its own computation would be lost"
            )
        elif _matrix_weight(mod) is not None:
            report.skipped[name] = f"{_describe(mod)} is not supported"


def _matrix_weight(module: nn.Module) -> Tensor | None:
    weight = module._parameters.get("weight")
    return weight if weight is not None and weight.dim() >= 2 else None


def plan_conversion(model: nn.Module, config, trainable: set[int]) -> ConversionReport:
    """Decide every candidate weight of ``model`` (already unwrapped); changes nothing.

    Args:
        model: the dense model.
        config: an :class:`oialr.OIALRConfig`.
        trainable: ``id()`` of every Parameter the optimizer updates.

    Raises:
        ConfigError: the model already holds factorised layers.
        NoEligibleLayersError: nothing can be converted, or ``include`` matched no layer.
    """
    present = [n for n, m in model.named_modules() if isinstance(m, (LowRankLayer, LowRankMHA))]
    if present:
        raise ConfigError(
            f"the model is already converted ({', '.join(present[:3])}…): one OIALR controller "
            "manages a model; to continue a run, load its checkpoint with "
            "OIALR.load_state_dict on a controller built over the dense model"
        )
    shared = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    report = ConversionReport()
    candidates = list(_candidates(model, report))
    if not candidates:
        raise NoEligibleLayersError(
            "the model has no nn.Linear, nn.Conv1d/2d, attention or transformers Conv1D layer"
            + (f" OIALR can factorise ({_first_reasons(report)})" if report.skipped else "")
        )
    first = candidates[0][0]
    heads = [n for n, kind, _ in candidates if kind in ("Linear", "Conv1D")]
    context = dict(
        config=config, first=first, head=heads[-1] if heads else None, shared=shared,
        trainable=trainable, used_includes=set(),
    )  # fmt: skip
    for name, kind, weight in candidates:
        reason = _skip_reason(model, name, kind, weight, **context)
        if reason:
            report.skipped[name] = reason
            continue
        report.converted.append(name)
        report.kinds[name] = kind
        report.shapes[name] = (weight.shape[0], weight[0].numel())
        if kind == "Conv1D":  # stored (in, out)
            report.shapes[name] = (weight.shape[1], weight.shape[0])

    if config.include and not context["used_includes"]:
        raise NoEligibleLayersError(
            f"include={config.include!r} matched no layer; "
            f"module names look like {[n for n, _, _ in candidates[:4]]!r}"
        )
    for pattern in config.exclude:
        if not any(_matches(n, pattern) for n, _, _ in candidates):
            _logger.warning("exclude pattern %r matched no layer", pattern)
    if not report.converted:
        raise NoEligibleLayersError(
            f"no layer can be converted with these options: {_first_reasons(report)}"
        )
    return report


def _first_reasons(report: ConversionReport, count: int = 3) -> str:
    """The reasons layers were left dense, most common first, with a few of their names."""
    names: dict[str, list[str]] = {}
    for name, reason in report.skipped.items():
        names.setdefault(reason, []).append(name)
    ranked = sorted(names.items(), key=lambda item: -len(item[1]))[:count]
    return "; ".join(
        f"{reason} ({len(n)} layer{'s' * (len(n) > 1)}: {', '.join(n[:2])}{', …' * (len(n) > 2)})"
        for reason, n in ranked
    )


def _skip_reason(
    model, name, kind, weight, *, config, first, head, shared, trainable, used_includes
) -> str:
    if kind in ("Conv1d", "Conv2d"):
        conv = model.get_submodule(name)
        if conv.groups != 1:
            return f"grouped or depthwise conv (groups={conv.groups})"
        if conv.padding_mode != "zeros":
            return f"padding_mode={conv.padding_mode!r} is not supported"
    if config.include:
        hits = [p for p in config.include if _matches(name, p)]
        if not hits:
            return "not matched by include"
        used_includes.update(hits)
    if any(_matches(name, p) for p in config.exclude):
        return "matched by exclude"
    if config.keep_first and name == first:
        return "input layer kept dense (keep_first=True)"
    if config.keep_last and name == head:
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


def _attention(model: nn.Module, name: str) -> nn.Module:
    parent = name.rpartition(".")[0]
    return model.get_submodule(parent) if parent else model


def dense_weight(model: nn.Module, name: str, kind: str) -> nn.Parameter:
    """The dense weight Parameter of a planned layer that is not converted yet."""
    if kind == MHA_IN and isinstance(_attention(model, name), nn.MultiheadAttention):
        return _attention(model, name).in_proj_weight
    return model.get_submodule(name).weight


def dense_weight2d(model: nn.Module, name: str, kind: str) -> Tensor:
    """That weight as the ``(out, in_flat)`` matrix OIALR factorises."""
    weight = dense_weight(model, name, kind)
    if kind == MHA_IN:
        return weight
    return FACTORISED[kind].dense_weight2d(model.get_submodule(name))


def convert(
    model: nn.Module, name: str, kind: str, factored: bool | str, capacity: int | None = None
) -> LowRankLayer:
    """Replace the dense layer ``name`` by its factorisation and return it.

    With ``capacity`` the factors are zero placeholders of that rank, for a state dict to fill.
    A projection of an ``nn.MultiheadAttention`` first wraps the attention in a
    :class:`LowRankMHA` (same function, same Parameters).
    """
    mha = _attention(model, name)
    if kind in (MHA_IN, MHA_OUT) and isinstance(mha, nn.MultiheadAttention):
        _set_submodule(model, name.rpartition(".")[0], LowRankMHA(mha))
    dense = model.get_submodule(name)
    layer = FACTORISED[kind].from_dense(dense, factored=factored, capacity=capacity)
    _set_submodule(model, name, layer)
    return layer


def factorised_keys(state_dict: dict[str, Any]) -> dict[str, int]:
    """``{module name: capacity}`` of every factorised layer a model state dict describes."""
    return {
        key.removesuffix(".sigma"): value.shape[0]
        for key, value in state_dict.items()
        if key.endswith(".sigma")
        and key.removesuffix(".sigma") + ".u" in state_dict
        and key.removesuffix(".sigma") + ".v" in state_dict
    }


def rebuild_factorised(model: nn.Module, state_dict: dict[str, Any], factored="auto") -> list[str]:
    """Give ``model`` the factorised layers a (possibly partial) state dict describes, at the
    saved shapes, with placeholder values for the load to overwrite; returns their names.

    Raises:
        ConfigError: a factorised layer in ``state_dict`` names no layer of ``model`` that OIALR
            can factorise.
    """
    root = unwrap(model)
    known = {n: k for n, k, _ in _candidates(root, ConversionReport())}
    rebuilt = []
    for name, capacity in factorised_keys(state_dict).items():
        current = root.get_submodule(name) if _has_submodule(root, name) else None
        if isinstance(current, LowRankLayer) and current.capacity == capacity:
            continue
        if isinstance(current, LowRankLayer):  # converted at a larger capacity: shrink it
            if capacity > current.capacity:
                raise ConfigError(
                    f"{name}: the state dict stores rank {capacity}, more than the layer's "
                    f"{current.capacity}; load it into the dense model"
                )
            current.rank = capacity
            current.compact()
        elif name in known:
            convert(root, name, known[name], factored, capacity=capacity)
        else:
            raise ConfigError(
                f"the state dict holds a factorised layer {name!r} that this model has no "
                "Linear/Conv/attention layer for: it was saved from another model"
            )
        rebuilt.append(name)
    return rebuilt


def rebuild_on_load(model: nn.Module) -> None:
    """Make ``model.load_state_dict`` of a checkpoint saved after conversion rebuild the
    factorised layers first: what a training framework needs, since it loads the weights
    (HF Trainer, Lightning's ``ckpt_path``) before any callback of ours can act."""

    def hook(module, state_dict, prefix, *_):
        scoped = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
        rebuild_factorised(module, scoped)

    unwrap(model).register_load_state_dict_pre_hook(hook)


def load_factorised(model: nn.Module, state_dict: dict[str, Any], factored="auto") -> nn.Module:
    """Load a state dict saved after conversion (``torch.save`` or safetensors) into ``model``,
    first rebuilding, at the saved shapes, every factorised layer it describes.

    ``model`` is the dense model as built (or one with some of those layers converted already).
    Keys that safetensors' ``save_model`` dropped as aliases of tied weights are not missing.
    Returns ``model``.

    Raises:
        ConfigError: the state dict does not fit the model (a layer it factorised is not in
            ``model``, or keys are missing or unexpected).
    """
    root = unwrap(model)
    rebuild_factorised(root, state_dict, factored)
    missing, unexpected = root.load_state_dict(state_dict, strict=False)
    own = root.state_dict()
    loaded = {own[k].data_ptr() for k in state_dict if k in own and own[k].numel()}
    missing = [k for k in missing if own[k].data_ptr() not in loaded]  # tied aliases
    if missing or unexpected:
        raise ConfigError(
            f"the state dict does not fit this model: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}; it was saved from another model"
        )
    return model


def _has_submodule(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def to_dense(model: nn.Module) -> nn.Module:
    """Merge every factorisation back into ordinary ``nn.Linear`` / ``nn.Conv*d`` /
    ``Conv1D`` / ``nn.MultiheadAttention`` modules, for export.

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
