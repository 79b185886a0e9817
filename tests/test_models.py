"""Tests of the oialr.models registry: every model builds, runs forward and backward."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from oialr.errors import ConfigError
from oialr.models import MODELS, build_model, model_options
from oialr.run_config import model_names


def forward_backward(model: nn.Module, shape: tuple[int, ...], num_classes: int) -> None:
    torch.manual_seed(0)
    logits = model(torch.randn(4, *shape))
    assert logits.shape == (4, num_classes)
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"


@pytest.mark.parametrize(
    ("name", "shape", "options"),
    [
        ("mlp", (1, 28, 28), {}),
        ("mlp", (1, 28, 28), {"widths": (32,)}),
        ("lenet5", (1, 28, 28), {}),
        ("lenet5", (3, 32, 32), {}),
        ("resnet20", (3, 32, 32), {}),
        ("resnet20", (1, 28, 28), {}),
        ("minivit", (3, 32, 32), {}),
        ("minivit", (1, 32, 32), {}),
        ("minivit", (1, 28, 28), {"dim": 48, "depth": 2, "heads": 4}),
    ],
)
def test_models_run_forward_and_backward(name: str, shape: tuple[int, ...], options: dict) -> None:
    forward_backward(build_model(name, shape, 10, **options), shape, 10)


def test_classic_shapes_and_sizes() -> None:
    lenet = build_model("lenet5", (1, 28, 28), 10)
    assert sum(p.numel() for p in lenet.parameters()) == 61706  # the classic LeNet-5 count
    resnet = build_model("resnet20", (3, 32, 32), 10)
    assert sum(p.numel() for p in resnet.parameters()) == 269722  # ResNet-20 with option A
    mlp = build_model("mlp", (1, 28, 28), 7)
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [512, 256, 7]


def test_minivit_sizes_and_patches() -> None:
    small = build_model("minivit", (3, 32, 32), 10)
    assert small.patch_embed.out_channels == 192 and small.patch_embed.kernel_size == (8, 8)
    assert len(small.blocks) == 4 and small.blocks[0].attn.num_heads == 3
    assert small.blocks[0].mlp[0].out_features == 4 * 192
    assert small.pos_embed.shape == (1, 16 + 1, 192)
    paper = build_model("minivit", (3, 32, 32), 10, size="paper")
    assert paper.patch_embed.out_channels == 768
    assert len(paper.blocks) == 6 and paper.blocks[0].attn.num_heads == 6
    mnist = build_model("minivit", (1, 28, 28), 10, depth=1)
    assert mnist.patch_embed.kernel_size == (7, 7) and mnist.pos_embed.shape[1] == 16 + 1


def test_torchvision_model_on_one_channel_input() -> None:
    forward_backward(build_model("tv:resnet18", (1, 32, 32), 10), (1, 32, 32), 10)


def test_timm_model() -> None:
    pytest.importorskip("timm")
    forward_backward(build_model("timm:resnet18", (1, 32, 32), 5), (1, 32, 32), 5)


def test_timm_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(ConfigError, match="pip install timm"):
        build_model("timm:resnet18", (3, 32, 32), 10)


def test_model_names() -> None:
    names = model_names()
    assert set(MODELS) <= set(names)
    assert {"mlp", "lenet5", "resnet20", "minivit"} <= set(names)
    assert "tv:<name>" in names and "timm:<name>" in names
    assert model_options("minivit") == ["size", "patch", "dim", "depth", "heads", "mlp_ratio"]


@pytest.mark.parametrize(
    ("name", "shape", "options", "match"),
    [
        ("resnet50", (3, 32, 32), {}, "lenet5"),  # lists the choices
        ("nope:resnet18", (3, 32, 32), {}, "unknown model"),
        ("tv:", (3, 32, 32), {}, "unknown model"),
        ("tv:not_a_model", (3, 32, 32), {}, "resnet18"),
        ("tv:resnet18", (3, 32, 32), {"bogus": 1}, "bogus"),
        ("tv:resnet18", (2, 32, 32), {}, "channel"),
        ("mlp", (1, 28, 28), {"width": 3}, "'width'.*widths"),
        ("lenet5", (1, 28, 28), {"dropout": 0.1}, "dropout.*none"),
        ("minivit", (3, 30, 30), {}, "divisible"),
        ("minivit", (3, 32, 32), {"size": "huge"}, "small, paper"),
        ("minivit", (3, 32, 32), {"dim": 100, "heads": 3}, "multiple"),
        ("lenet5", (1, 8, 8), {}, "too small"),
        ("mlp", (28, 28), {}, "input_shape"),
    ],
)
def test_bad_names_and_options_are_config_errors(
    name: str, shape: tuple[int, ...], options: dict, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(name, shape, 10, **options)
