"""``nn.MultiheadAttention`` with factorisable projections.

``nn.MultiheadAttention.forward`` reads ``in_proj_weight`` and ``out_proj.weight`` as dense
tensors, so factorising the projections alone would materialise them every step (and is where
the reference code crashes). :class:`LowRankMHA` re-implements the attention around two
projection modules instead, with ``F.scaled_dot_product_attention`` when no weights are asked
for, and keeps ``nn.MultiheadAttention``'s call signature, masks and ``batch_first`` semantics.

It also answers what code written against ``nn.MultiheadAttention`` reads from it
(``in_proj_weight``, ``in_proj_bias``, ``_qkv_same_embed_dim``, ``out_proj``, ``merge_masks``…):
``nn.TransformerEncoderLayer``'s inference fast path then runs on the materialised weights.

Supported: ``kdim == vdim == embed_dim``, no ``add_bias_kv``, no ``add_zero_attn``. A model's
attention is wrapped only when one of its projections is converted, never before.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lowrank import LowRankLayer

__all__ = ["LowRankMHA", "mha_unsupported"]


def mha_unsupported(mha: nn.MultiheadAttention) -> str | None:
    """Why ``mha`` cannot be wrapped, or None."""
    if not mha._qkv_same_embed_dim:
        return "attention with kdim/vdim different from embed_dim is not supported"
    if mha.bias_k is not None or mha.add_zero_attn:
        return "attention with add_bias_kv/add_zero_attn is not supported"
    return None


class LowRankMHA(nn.Module):
    """Multi-head attention over an ``in_proj`` (packed q, k, v rows: ``3E × E``) and an
    ``out_proj``, each an ``nn.Linear`` or a factorised layer."""

    _qkv_same_embed_dim = True
    bias_k = bias_v = q_proj_weight = k_proj_weight = v_proj_weight = None
    add_zero_attn = False
    merge_masks = nn.MultiheadAttention.merge_masks

    def __init__(self, mha: nn.MultiheadAttention):
        """Wrap ``mha`` with dense projections that share (not copy) its Parameters: same
        function, same optimizer slots."""
        super().__init__()
        in_proj = nn.Linear(mha.embed_dim, 3 * mha.embed_dim, bias=mha.in_proj_bias is not None)
        in_proj.weight, in_proj.bias = mha.in_proj_weight, mha.in_proj_bias
        self.in_proj, self.out_proj = in_proj, mha.out_proj
        self.embed_dim, self.num_heads = mha.embed_dim, mha.num_heads
        self.kdim = self.vdim = mha.embed_dim
        self.head_dim = mha.head_dim
        self.dropout, self.batch_first = mha.dropout, mha.batch_first

    @property
    def in_proj_weight(self) -> Tensor:
        return self.in_proj.weight

    @property
    def in_proj_bias(self) -> Tensor | None:
        return self.in_proj.bias

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        e = self.embed_dim
        if query is key and key is value:  # self-attention: one projection for q, k and v
            return self.in_proj(query).split(e, dim=-1)
        # cross-attention: each input takes its third of the packed projection's rows
        return tuple(
            self._project_rows(x, slice(i * e, (i + 1) * e))
            for i, x in enumerate((query, key, value))
        )

    def _project_rows(self, x: Tensor, rows: slice) -> Tensor:
        bias = None if self.in_proj.bias is None else self.in_proj.bias[rows]
        if isinstance(self.in_proj, LowRankLayer):
            b_in, core, b_out = self.in_proj.chain()
            return F.linear((x @ b_in) @ core.mT, b_out[rows], bias)
        return F.linear(x, self.in_proj.weight[rows], bias)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        self_attention = query is key and key is value  # decided before reshapes break identity
        if not batched:  # (L, E) → (1, L, E)
            dim = 0 if self.batch_first else 1
            query, key, value = (t.unsqueeze(dim) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first:  # (L, B, E) → (B, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if self_attention:
            key = value = query
        q, k, v = self._project(query, key, value)
        bsz, tgt_len, src_len = q.shape[0], q.shape[1], k.shape[1]
        h, d = self.num_heads, self.head_dim
        q = q.view(bsz, tgt_len, h, d).transpose(1, 2)  # (B, h, L, d)
        k = k.view(bsz, src_len, h, d).transpose(1, 2)  # (B, h, S, d)
        v = v.view(bsz, src_len, h, d).transpose(1, 2)  # (B, h, S, d)
        mask = _merge_masks(attn_mask, key_padding_mask, is_causal, tgt_len, src_len, q)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q @ k.mT) / math.sqrt(d)  # (B, h, L, S)
            if mask is not None:
                scores = scores + mask
            attn = scores.softmax(dim=-1)
            weights = attn.mean(dim=1) if average_attn_weights else attn
            out = F.dropout(attn, dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = self.out_proj(out.transpose(1, 2).reshape(bsz, tgt_len, h * d))  # (B, L, E)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(0 if self.batch_first else 1)
            weights = weights.squeeze(0) if weights is not None else None
        return out, weights

    def to_dense(self) -> nn.MultiheadAttention:
        """An ``nn.MultiheadAttention`` holding the (merged) projections."""
        in_w, out_w = self.in_proj.weight, self.out_proj.weight
        mha = nn.MultiheadAttention(
            self.embed_dim,
            self.num_heads,
            dropout=self.dropout,
            bias=self.in_proj.bias is not None,
            batch_first=self.batch_first,
        ).to(device=in_w.device, dtype=in_w.dtype)
        with torch.no_grad():
            mha.in_proj_weight.copy_(in_w)
            mha.out_proj.weight.copy_(out_w)
            if self.in_proj.bias is not None:
                mha.in_proj_bias.copy_(self.in_proj.bias)
            if self.out_proj.bias is not None and mha.out_proj.bias is not None:
                mha.out_proj.bias.copy_(self.out_proj.bias)
        return mha


def _merge_masks(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    is_causal: bool,
    tgt_len: int,
    src_len: int,
    like: Tensor,
) -> Tensor | None:
    """One additive float mask (B or 1, h or 1, L, S) from MHA's masks, where ``True`` in a boolean
    mask means *not allowed* (MHA's convention, the opposite of SDPA's)."""

    def additive(mask: Tensor) -> Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros_like(mask, dtype=like.dtype).masked_fill(mask, float("-inf"))
        return mask.to(like.dtype)

    merged = None
    if is_causal and attn_mask is None:
        attn_mask = torch.ones(tgt_len, src_len, dtype=torch.bool, device=like.device).triu(1)
    if attn_mask is not None:
        m = additive(attn_mask)
        # (L, S) → (1, 1, L, S); (B·h, L, S) → (B, h, L, S)
        merged = (
            m.view(1, 1, tgt_len, src_len)
            if m.dim() == 2
            else m.view(-1, like.shape[1], tgt_len, src_len)
        )
    if key_padding_mask is not None:
        kpm = additive(key_padding_mask).view(-1, 1, 1, src_len)  # (B, 1, 1, S)
        merged = kpm if merged is None else merged + kpm
    return merged
