"""Real third-party models, built from configs (nothing is downloaded), for the support tests.

Each family is a small instance of the real class: transformers, timm and torchvision code paths
are what they are at full size, only widths and depths shrink so a CPU runs them in seconds.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CLASSES = 5


@dataclass(frozen=True)
class Family:
    """A model family: how to build it, feed it and score it."""

    name: str
    package: str  # what must be installed (transformers, timm, torchvision, torch)
    build: Callable[[], nn.Module]
    inputs: str  # "image", "tokens", "sequence"
    hf: bool = False  # a transformers model: called with keyword inputs, returns .loss/.logits

    def available(self) -> bool:
        return importlib.util.find_spec(self.package) is not None

    def batch(self, n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        if self.inputs == "image":
            x = torch.randn(n, 3, 32, 32, generator=g)
            y = torch.randint(0, CLASSES, (n,), generator=g)
            return {"pixel_values": x, "labels": y} if self.hf else {"x": x, "y": y}
        if self.inputs == "sequence":
            return {
                "x": torch.randn(n, 6, 16, generator=g),
                "y": torch.randint(0, CLASSES, (n,), generator=g),
            }
        ids = torch.randint(0, VOCAB, (n, 8), generator=g)
        if self.name == "transformers-bert":
            return {"input_ids": ids, "labels": torch.randint(0, CLASSES, (n,), generator=g)}
        return {"input_ids": ids, "labels": ids}

    def output(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.hf:
            return model(
                **{k: v for k, v in batch.items() if k != "labels"} | _decoder(self, batch)
            ).logits
        return model(batch["x"])

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.hf:
            return model(**batch).loss
        return F.cross_entropy(model(batch["x"]), batch["y"])


VOCAB = 64


def _decoder(family: Family, batch: dict[str, Any]) -> dict[str, Any]:
    """T5 is an encoder-decoder: its logits need decoder inputs."""
    if family.name == "transformers-t5":
        return {"decoder_input_ids": batch["input_ids"]}
    return {}


def _hf(config: str, model: str, **options) -> nn.Module:
    import transformers

    return getattr(transformers, model)(getattr(transformers, config)(**options))


def _timm(name: str, **options) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=CLASSES, **options)


def _torchvision(name: str, **options) -> nn.Module:
    import torchvision

    return getattr(torchvision.models, name)(num_classes=CLASSES, **options)


class EncoderClassifier(nn.Module):
    """``nn.TransformerEncoder`` between an input projection and a head."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.embed = nn.Linear(16, dim)
        layer = nn.TransformerEncoderLayer(
            dim, 4, dim_feedforward=64, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2)
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x, key_padding_mask=None):
        return self.head(self.encoder(self.embed(x), src_key_padding_mask=key_padding_mask).mean(1))


_TEXT = dict(vocab_size=VOCAB)
FAMILIES: list[Family] = [
    Family("transformers-gpt2", "transformers", lambda: _hf(
        "GPT2Config", "GPT2LMHeadModel", n_layer=2, n_embd=32, n_head=4, n_positions=16,
        bos_token_id=0, eos_token_id=0, **_TEXT), "tokens", hf=True),
    Family("transformers-bert", "transformers", lambda: _hf(
        "BertConfig", "BertForSequenceClassification", num_hidden_layers=2, hidden_size=32,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=16,
        num_labels=CLASSES, **_TEXT), "tokens", hf=True),
    Family("transformers-vit", "transformers", lambda: _hf(
        "ViTConfig", "ViTForImageClassification", image_size=32, patch_size=8, num_hidden_layers=2,
        hidden_size=32, num_attention_heads=4, intermediate_size=64, num_labels=CLASSES),
        "image", hf=True),
    Family("transformers-t5", "transformers", lambda: _hf(
        "T5Config", "T5ForConditionalGeneration", d_model=32, d_kv=8, d_ff=64, num_layers=2,
        num_heads=4, decoder_start_token_id=0, **_TEXT), "tokens", hf=True),
    Family("transformers-llama", "transformers", lambda: _hf(
        "LlamaConfig", "LlamaForCausalLM", hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=32, **_TEXT), "tokens", hf=True),
    Family("timm-vit", "timm", lambda: _timm("test_vit", img_size=32), "image"),
    Family("timm-resnet", "timm", lambda: _timm("test_resnet"), "image"),
    Family("timm-convnext", "timm", lambda: _timm("test_convnext"), "image"),
    Family("timm-mobilenetv3", "timm", lambda: _timm("mobilenetv3_small_050"), "image"),
    Family("timm-bit", "timm", lambda: _bit(), "image"),
    Family("timm-nfnet", "timm", lambda: _timm("test_nfnet"), "image"),
    Family("timm-tf_efficientnet", "timm", lambda: _timm("tf_efficientnet_b0"), "image"),
    Family("torchvision-swin_t", "torchvision", lambda: _swin(), "image"),
    Family("torchvision-vit_b_16", "torchvision", lambda: _vit(), "image"),
    Family("torchvision-mobilenet_v3_small", "torchvision",
           lambda: _torchvision("mobilenet_v3_small"), "image"),
    Family("torch-TransformerEncoder", "torch", EncoderClassifier, "sequence"),
]  # fmt: skip


def _bit() -> nn.Module:
    """resnetv2_50x1_bit's class and layers (StdConv2d, GroupNorm) at one block per stage."""
    from functools import partial

    from timm.layers import GroupNormAct, StdConv2d
    from timm.models.resnetv2 import ResNetV2

    return ResNetV2(
        layers=[1, 1, 1, 1], channels=(32, 64, 128, 256), stem_chs=16, stem_type="fixed",
        conv_layer=partial(StdConv2d, eps=1e-8), norm_layer=partial(GroupNormAct, num_groups=8),
        num_classes=CLASSES,
    )  # fmt: skip


def _swin() -> nn.Module:
    """swin_t's class and blocks at a tenth of its width and depth."""
    from torchvision.models.swin_transformer import SwinTransformer

    return SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=[4, 4],
        num_classes=CLASSES,
    )  # fmt: skip


def _vit() -> nn.Module:
    """vit_b_16's class (nn.MultiheadAttention blocks) at a small width and depth."""
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
        num_classes=CLASSES,
    )  # fmt: skip


BY_NAME = {f.name: f for f in FAMILIES}
