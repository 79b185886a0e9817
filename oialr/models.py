"""Model registry: a name and an input shape in, an ``nn.Module`` producing logits out.

Built-in models ("mlp", "lenet5", "resnet20", "minivit") take keyword options checked against
their builder's signature. ``tv:<name>`` builds any torchvision classification model and
``timm:<name>`` any timm model, both untrained.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oialr.errors import ConfigError
from oialr.imports import call_with, is_import_string, resolve
from oialr.run_config import BUILTIN_MODELS, MODEL_PREFIXES, mistyped_prefix, model_names

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# MLP


def mlp(
    input_shape: tuple[int, ...], num_classes: int, *, widths: Sequence[int] = (512, 256)
) -> nn.Module:
    """Flatten, then Linear+ReLU layers of the given ``widths``, then a Linear head."""
    if any(int(w) < 1 for w in widths):
        raise ConfigError(f"mlp: widths must be positive (got {tuple(widths)})")
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = math.prod(input_shape)
    for width in widths:
        layers += [nn.Linear(fan_in, int(width)), nn.ReLU(inplace=True)]
        fan_in = int(width)
    layers.append(nn.Linear(fan_in, num_classes))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------
# LeNet-5


def lenet5(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """LeNet-5: conv 6@5x5, pool, conv 16@5x5, pool, fc 120, fc 84, head.

    Uses ReLU and max-pooling (the common modern reading). Inputs smaller than 32 pixels get
    2 pixels of padding on the first convolution, so 28x28 images reach the classic 16x5x5 map.
    """
    channels, height, width = input_shape
    pad = 2 if min(height, width) < 32 else 0

    def after(size: int) -> int:
        return ((size + 2 * pad - 4) // 2 - 4) // 2

    h, w = after(height), after(width)
    if h < 1 or w < 1:
        raise ConfigError(
            f"lenet5: input {height}x{width} is too small for its two conv+pool stages"
        )
    return nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=pad),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * h * w, 120),
        nn.ReLU(inplace=True),
        nn.Linear(120, 84),
        nn.ReLU(inplace=True),
        nn.Linear(84, num_classes),
    )


# --------------------------------------------------------------------------------------------
# ResNet-20 (He et al. 2016, CIFAR variant)


class _PadShortcut(nn.Module):
    """Parameter-free "option A" shortcut: subsample spatially and zero-pad the new channels."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = extra_channels, stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = _PadShortcut(out_channels - in_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20: a 3x3 stem, three stages (16/32/64 channels) of three basic blocks."""

    def __init__(self, in_channels: int, num_classes: int, blocks_per_stage: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        stages: list[nn.Module] = []
        channels = 16
        for i, width in enumerate((16, 32, 64)):
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                stages.append(BasicBlock(channels, width, stride))
                channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(F.relu(self.bn(self.conv(x))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet20(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """CIFAR-style ResNet-20 for any input channel count and size."""
    return ResNet20(input_shape[0], num_classes)


# --------------------------------------------------------------------------------------------
# Mini ViT

VIT_SIZES: dict[str, dict[str, int]] = {
    "small": {"dim": 192, "depth": 4, "heads": 3},  # CPU-friendly default
    "paper": {"dim": 768, "depth": 6, "heads": 6},  # the OIALR paper's CIFAR-10 ViT
}


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: attention then a GELU MLP, each with a residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class MiniViT(nn.Module):
    """Vision transformer: conv patch embedding, cls token, learnable positions, encoder blocks."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        channels, height, width = input_shape
        num_patches = (height // patch) * (width // patch)
        self.patch_embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        cls = self.cls_token.expand(len(tokens), -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def minivit(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    size: str = "small",
    patch: int | None = None,
    dim: int | None = None,
    depth: int | None = None,
    heads: int | None = None,
    mlp_ratio: float = 4.0,
) -> nn.Module:
    """A ViT. ``size`` picks dim/depth/heads ("small" or "paper"); explicit values override it.

    ``patch`` defaults to 8 for inputs of 32 pixels or more, 7 for 28 pixels, else 4; the input
    height and width must be divisible by it.
    """
    if size not in VIT_SIZES:
        raise ConfigError(f"minivit: unknown size {size!r}; choose one of {', '.join(VIT_SIZES)}")
    preset = VIT_SIZES[size]
    dim = preset["dim"] if dim is None else dim
    depth = preset["depth"] if depth is None else depth
    heads = preset["heads"] if heads is None else heads
    _, height, width = input_shape
    if patch is None:
        side = min(height, width)
        patch = 8 if side >= 32 else 7 if side == 28 else 4
    if patch < 1 or height % patch or width % patch:
        raise ConfigError(
            f"minivit: input {height}x{width} is not divisible by patch {patch}; pass patch=P "
            "with P dividing both (or pad the input, e.g. pad_to=32)"
        )
    if dim < 1 or depth < 1 or heads < 1 or dim % heads:
        raise ConfigError(
            f"minivit: dim ({dim}) must be a positive multiple of heads ({heads}), depth >= 1"
        )
    return MiniViT(
        input_shape,
        num_classes,
        patch=patch,
        dim=dim,
        depth=depth,
        heads=heads,
        mlp_ratio=mlp_ratio,
    )


# --------------------------------------------------------------------------------------------
# torchvision and timm


class RepeatChannels(nn.Module):
    """Repeat a single-channel input to ``channels`` channels before the wrapped model."""

    def __init__(self, model: nn.Module, channels: int = 3) -> None:
        super().__init__()
        self.model, self.channels = model, channels

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.expand(-1, self.channels, -1, -1))


def _torchvision(
    name: str, input_shape: tuple[int, ...], num_classes: int, **options: Any
) -> nn.Module:
    import torchvision

    choices = torchvision.models.list_models(module=torchvision.models)
    if name not in choices:
        raise ConfigError(
            f"unknown torchvision model {name!r}; classification models: {', '.join(choices)}"
        )
    channels = input_shape[0]
    if channels not in (1, 3):
        raise ConfigError(f"tv:{name}: needs 1- or 3-channel input (got {channels} channels)")
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
    except TypeError as err:
        raise ConfigError(f"tv:{name}: bad option ({err})") from err
    return RepeatChannels(model) if channels == 1 else model


def _timm(name: str, input_shape: tuple[int, ...], num_classes: int, **options: Any) -> nn.Module:
    try:
        import timm
    except ImportError as err:
        raise ConfigError(f"timm:{name} needs timm: pip install timm") from err
    if not timm.is_model(name):
        raise ConfigError(f"unknown timm model {name!r}; see timm.list_models()")
    kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": input_shape[0]}
    kwargs |= options
    height, width = input_shape[1:]
    img_size: int | tuple[int, int] = height if height == width else (height, width)
    try:
        # Transformers need the image size; models without the argument reject it.
        return timm.create_model(name, img_size=img_size, **kwargs)
    except TypeError as err:
        if "img_size" not in str(err) or "img_size" in options:
            raise ConfigError(f"timm:{name}: bad option ({err})") from err
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as err:
        raise ConfigError(f"timm:{name}: bad option ({err})") from err


# --------------------------------------------------------------------------------------------
# Registry


def _imported(name: str, input_shape: tuple, num_classes: int, options: dict) -> nn.Module:
    builder = resolve(name, "run.model")
    try:
        model = call_with(builder, options, input_shape=input_shape, num_classes=num_classes)
    except Exception as err:  # your builder's own error, or an option it does not take
        raise ConfigError(
            f"`run.model`: {name} raised {type(err).__name__}: {err}".split("\n")[0], field="model"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"`run.model`: {name} returned a {type(model).__name__}, not a torch.nn.Module",
            field="model",
        )
    return model


# The builders of the names oialr.run_config declares (torch-free, for validation).
MODELS: dict[str, Callable[..., nn.Module]] = dict(
    zip(BUILTIN_MODELS, (mlp, lenet5, resnet20, minivit), strict=True)
)
PREFIXES: dict[str, Callable[..., nn.Module]] = dict(
    zip(MODEL_PREFIXES, (_torchvision, _timm), strict=True)
)


def model_options(name: str) -> list[str]:
    """Keyword options a built-in model accepts."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")
    params = inspect.signature(MODELS[name]).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, **options: Any
) -> nn.Module:
    """Build an untrained model producing ``num_classes`` logits for inputs of ``input_shape``.

    Args:
        name: A key of :data:`MODELS`, ``tv:<torchvision name>``, ``timm:<timm name>``, or your
            builder as ``package.module:function``, called with ``options`` as keyword arguments
            plus ``input_shape`` and ``num_classes`` where it declares them.
        input_shape: One example's shape, (C, H, W) for the built-in models.
        num_classes: Number of output logits.
        **options: Model options (see :func:`model_options`); for tv/timm, passed through.

    Raises:
        ConfigError: Unknown model or option, or a shape the model cannot take.
    """
    if is_import_string(name) and name.partition(":")[0] not in PREFIXES:
        if mistyped_prefix(name):
            raise ConfigError(mistyped_prefix(name))
        return _imported(name, tuple(input_shape), num_classes, options)
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ConfigError(f"input_shape must be (C, H, W) (got {input_shape})")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1 (got {num_classes})")
    prefix, sep, rest = name.partition(":")
    if sep:
        if prefix not in PREFIXES or not rest:
            raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")
        model = PREFIXES[prefix](rest, input_shape, num_classes, **options)
    else:
        allowed = model_options(name)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(
                f"model {name!r} has no option {unknown[0]!r}; "
                f"its options: {', '.join(allowed) or '(none)'}"
            )
        try:
            model = MODELS[name](input_shape, num_classes, **options)
        except (TypeError, ValueError) as err:  # an option of the wrong type: widths="a"
            given = ", ".join(f"{k}={v!r}" for k, v in options.items())
            raise ConfigError(f"model {name!r}: bad option value in {given} ({err})") from None
    logger.debug("built %s: %d parameters", name, sum(p.numel() for p in model.parameters()))
    return model
