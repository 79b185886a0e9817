"""Tiny models covering every layer kind OIALR handles (peft-style test table)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    def __init__(self, d_in=16, width=48, classes=5):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, width), nn.ReLU(), nn.Linear(width, classes),
        )  # fmt: skip

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    """Conv2d (one grouped, which must stay dense), Conv1d and a head."""

    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.conv2 = nn.Conv2d(12, 24, 3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.conv1d = nn.Conv1d(24, 24, 3, padding=1)
        self.head = nn.Linear(24, classes)

    def forward(self, x):  # (B, 3, 8, 8)
        h = F.relu(self.conv2(F.relu(self.conv1(x))))  # (B, 24, 4, 4)
        h = F.relu(self.depthwise(h)).flatten(2)  # (B, 24, 16)
        h = F.relu(self.conv1d(h)).mean(-1)  # (B, 24)
        return self.head(h)


class AttentionNet(nn.Module):
    """A transformer block on ``nn.MultiheadAttention`` (packed in-proj, out-proj)."""

    def __init__(self, dim=32, heads=4, classes=5, batch_first=True):
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Linear(8, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=batch_first)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):  # (B, T, 8)
        h = self.embed(x)
        if not self.batch_first:
            h = h.transpose(0, 1)
        a = self.norm(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        h = h + self.mlp(h)
        if not self.batch_first:
            h = h.transpose(0, 1)
        return self.head(h.mean(1))


class TimmAttention(nn.Module):
    """timm's ViT attention: a ``qkv`` Linear and a ``proj`` Linear around SDPA."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, h, N, d)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class TimmBlock(nn.Module):
    def __init__(self, dim=32, heads=4, classes=5):
        super().__init__()
        self.patch = nn.Linear(8, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TimmAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):  # (B, T, 8)
        h = self.patch(x)
        h = h + self.attn(self.norm1(h))
        h = h + self.mlp(self.norm2(h))
        return self.head(h.mean(1))


def make(kind: str) -> tuple[nn.Module, torch.Tensor]:
    """A model and an input batch for it."""
    g = torch.Generator().manual_seed(0)
    if kind == "mlp":
        return MLP(), torch.randn(32, 16, generator=g)
    if kind == "cnn":
        return CNN(), torch.randn(8, 3, 8, 8, generator=g)
    if kind == "mha":
        return AttentionNet(), torch.randn(8, 6, 8, generator=g)
    if kind == "mha-seq-first":
        return AttentionNet(batch_first=False), torch.randn(8, 6, 8, generator=g)
    if kind == "timm":
        return TimmBlock(), torch.randn(8, 6, 8, generator=g)
    raise KeyError(kind)


KINDS = ["mlp", "cnn", "mha", "mha-seq-first", "timm"]


def task(kind: str, n: int = 256, seed: int = 0):
    """A small learnable classification task for ``make(kind)``: labels from a fixed random
    teacher, so training can lower the loss."""
    model, x = make(kind)
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, *x.shape[1:], generator=g)
    # pooled features the architecture can see: channel means (cnn), token means (attention)
    feats = {"mlp": xs}.get(kind, xs.mean((2, 3)) if kind == "cnn" else xs.mean(1))
    teacher = torch.randn(feats.shape[1], 5, generator=g)
    ys = (feats @ teacher).argmax(1)
    return model, xs, ys
