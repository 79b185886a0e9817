"""Factorised layers ``W = U Σ Vᵀ`` for Linear, Conv1d/2d and MultiheadAttention projections.

Every weight is seen as a tall matrix ``A (m × n)``, ``n = min`` (spec §1): a Linear's ``W`` or
``Wᵀ``, a conv's ``W`` flattened over (in/groups, *kernel) and made tall. ``A = U Σ Vᵀ`` with frozen
orthonormal ``U (m × n)``, ``V (n × n)`` (buffers) and a trainable dense ``Σ (n × n)``.

Storage keeps the conversion-time capacity ``n`` and a python-int ``rank``: only the leading
``rank`` columns of U, V and the leading ``rank × rank`` block of Σ are live, the rest is zero. A
truncation therefore never changes a tensor's shape, so the optimizer keeps its references and a
DistributedDataParallel reducer built at conversion stays valid through every update. Compute
scales with ``rank``: the forward works on views of the live blocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LowRankLayer",
    "LowRankLinear",
    "LowRankConv",
    "LowRankMHA",
    "factor_modules",
]


def thin_svd(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``a = U diag(s) Vᵀ`` in float32 with autocast off, whatever the input dtype (spec §5)."""
    with torch.autocast(a.device.type, enabled=False):
        u, s, vh = torch.linalg.svd(a.float(), full_matrices=False)
    return u, s, vh.mT


class LowRankLayer(nn.Module):
    """Shared state and arithmetic of every factorised weight.

    Args:
        weight2d: the dense weight as ``(out, in_flat)``.
        bias: the dense bias Parameter, reused as is so its optimizer state carries on.
        factored: ``"auto"`` picks per forward the cheaper of the factored chain and the
            materialised weight (cost model of spec §5, with the actual row count); ``True`` /
            ``False`` force one.
        init: take the SVD of ``weight2d``; ``False`` builds zero factors of the right shapes
            (for loading a checkpoint, where values come from a state dict).
    """

    trainable = ("sigma", "bias")
    frozen = ("u", "v")

    def __init__(
        self,
        weight2d: Tensor,
        bias: nn.Parameter | None,
        factored: bool | str = "auto",
        init: bool = True,
    ):
        super().__init__()
        out_f, in_f = weight2d.shape
        self.out_features, self.in_features = out_f, in_f
        # A = W if W is tall, else Wᵀ (spec §1); SVDs always run on the tall orientation.
        self.transposed = out_f < in_f
        m, n = max(out_f, in_f), min(out_f, in_f)
        dtype, device = weight2d.dtype, weight2d.device
        if init:
            a = weight2d.detach().mT if self.transposed else weight2d.detach()
            u, s, v = thin_svd(a)
            u, sigma, v = u.to(dtype), torch.diag(s).to(dtype), v.to(dtype)
        else:
            u = torch.zeros(m, n, dtype=dtype, device=device)
            v = torch.zeros(n, n, dtype=dtype, device=device)
            sigma = torch.zeros(n, n, dtype=dtype, device=device)
        self.register_buffer("u", u)  # (m, n) frozen, orthonormal live columns
        self.register_buffer("v", v)  # (n, n) frozen
        self.sigma = nn.Parameter(sigma)  # (n, n) trainable, live block [:rank, :rank]
        self.bias = bias
        self.rank = n
        self.factored = factored

    # -- shapes and counts -------------------------------------------------------------------
    @property
    def full_rank(self) -> int:
        return self.v.shape[0]

    @property
    def m(self) -> int:
        return self.u.shape[0]

    def _bias_params(self) -> int:
        return 0 if self.bias is None else self.bias.numel()

    def factor_params(self) -> int:
        """Stored weight parameters: ``m r + r² + n r`` (spec §5), bias excluded."""
        r = self.rank
        return self.m * r + r * r + self.full_rank * r

    def trainable_params(self) -> int:
        """Σ's live block plus the bias."""
        return self.rank**2 + self._bias_params()

    def stored_params(self) -> int:
        return self.factor_params() + self._bias_params()

    # -- live blocks ---------------------------------------------------------------------------
    def live(self) -> tuple[Tensor, Tensor, Tensor]:
        """Views ``U[:, :r]``, ``Σ[:r, :r]``, ``V[:, :r]`` (no copies)."""
        r = self.rank
        return self.u[:, :r], self.sigma[:r, :r], self.v[:, :r]

    def chain(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(B_in (in × r), core (r × r), B_out (out × r))`` with ``W = B_out · core · B_inᵀ``.

        The forward runs ``x → x B_in → · coreᵀ → · B_outᵀ`` (spec §5): folding Σ into a basis
        first would cost ``m r²`` more forward and an ``R m r`` weight gradient backward.
        """
        u, s, v = self.live()
        if self.transposed:  # W = Aᵀ = V Σᵀ Uᵀ
            return u, s.mT, v
        return v, s, u  # W = U Σ Vᵀ

    def weight2d(self) -> Tensor:
        """The dense ``(out, in_flat)`` weight this layer represents."""
        b_in, core, b_out = self.chain()
        return b_out @ core @ b_in.mT

    @property
    def capacity(self) -> int:
        """The rank the tensors are stored at (≥ ``rank``)."""
        return self.sigma.shape[0]

    def compact(self) -> tuple[nn.Parameter, nn.Parameter]:
        """Store only the live rank: new, smaller U, V buffers and a new Σ Parameter.

        Returns ``(old Σ, new Σ)``: the caller moves the optimizer's reference and state across
        (and, under DDP, would have to re-wrap the model, which is why the controller does not
        compact there by default).
        """
        r, old = self.rank, self.sigma
        self.u = self.u[:, :r].contiguous()
        self.v = self.v[:, :r].contiguous()
        self.sigma = nn.Parameter(old.detach()[:r, :r].clone(), requires_grad=old.requires_grad)
        return old, self.sigma

    def factored_is_cheaper(self, rows: int) -> bool:
        """Spec §5: factored ``R (r (m + n) + r²)`` vs materialised ``m r (r + n) + R m n``."""
        if isinstance(self.factored, bool):
            return self.factored
        r, m, n = self.rank, self.m, self.full_rank
        return rows * (r * (m + n) + r * r) < m * r * (r + n) + rows * m * n

    def get_extra_state(self) -> dict:
        return {"rank": self.rank, "factored": self.factored}

    def set_extra_state(self, state: dict) -> None:
        self.rank = int(state["rank"])
        self.factored = state["factored"]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}/{self.full_rank}"


class LowRankLinear(LowRankLayer):
    """``nn.Linear`` as ``x → x B_in → · C_outᵀ`` with ``B_in C_outᵀ = Wᵀ``."""

    @classmethod
    def from_dense(cls, linear: nn.Linear, factored: bool | str = "auto", init: bool = True):
        return cls(linear.weight, linear.bias, factored, init)

    def forward(self, x: Tensor) -> Tensor:
        if self.factored_is_cheaper(x.numel() // self.in_features):
            b_in, core, b_out = self.chain()
            return F.linear((x @ b_in) @ core.mT, b_out, self.bias)  # (…, in) → (…, r) → (…, out)
        return F.linear(x, self.weight2d(), self.bias)

    def to_dense(self) -> nn.Linear:
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        dense = dense.to(device=self.sigma.device, dtype=self.sigma.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.weight2d())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense


class LowRankConv(LowRankLayer):
    """``nn.Conv1d``/``nn.Conv2d`` (groups = 1, zero padding) as a conv with ``r`` filters over
    the input followed by a 1×1 conv with ``C_out = U Σ`` (spec §5)."""

    def __init__(
        self, conv: nn.Conv1d | nn.Conv2d, factored: bool | str = "auto", init: bool = True
    ):
        super().__init__(conv.weight.flatten(1), conv.bias, factored, init)
        self.kernel_size = conv.kernel_size
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.dims = len(conv.kernel_size)
        self.conv = F.conv1d if self.dims == 1 else F.conv2d
        self.out_channels, self.in_channels = conv.out_channels, conv.in_channels

    @classmethod
    def from_dense(
        cls, conv: nn.Conv1d | nn.Conv2d, factored: bool | str = "auto", init: bool = True
    ):
        return cls(conv, factored, init)

    def _output_rows(self, x: Tensor) -> int:
        """Batch × output positions: the ``R`` of the cost model."""
        rows = x.shape[0]
        for i, size in enumerate(x.shape[2:]):
            if isinstance(self.padding, str):  # "same" keeps the size (stride 1); "valid" pads 0
                pad = 0 if self.padding == "valid" else None
            else:
                pad = self.padding[i]
            if pad is None:
                rows *= size
                continue
            span = self.dilation[i] * (self.kernel_size[i] - 1) + 1
            rows *= max(1, (size + 2 * pad - span) // self.stride[i] + 1)
        return rows

    def forward(self, x: Tensor) -> Tensor:
        conv_args = dict(stride=self.stride, padding=self.padding, dilation=self.dilation)
        if self.factored_is_cheaper(self._output_rows(x)):
            b_in, core, b_out = self.chain()
            ones = [1] * self.dims
            filters = b_in.mT.reshape(self.rank, self.in_channels, *self.kernel_size)  # (r, C, *k)
            h = self.conv(x, filters, **conv_args)  # (B, r, *spatial)
            h = self.conv(h, core.reshape(self.rank, self.rank, *ones))  # 1×1: (B, r, *spatial)
            return self.conv(h, b_out.reshape(self.out_channels, self.rank, *ones), self.bias)
        weight = self.weight2d().reshape(self.out_channels, self.in_channels, *self.kernel_size)
        return self.conv(x, weight, self.bias, **conv_args)

    def to_dense(self) -> nn.Module:
        cls = nn.Conv1d if self.dims == 1 else nn.Conv2d
        dense = cls(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=self.bias is not None,
        ).to(device=self.sigma.device, dtype=self.sigma.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.weight2d().reshape_as(dense.weight))
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense


class LowRankMHA(nn.Module):
    """``nn.MultiheadAttention`` with its packed in-projection ``(3E × E)`` and its out-projection
    each either factorised or dense.

    ``nn.MultiheadAttention.forward`` reads ``in_proj_weight`` and ``out_proj.weight`` as dense
    tensors, so replacing the projections alone would force a materialised weight every step (and
    is where the reference code crashes). This module re-implements the attention around the
    projections instead, with ``F.scaled_dot_product_attention`` when no weights are requested, and
    keeps ``nn.MultiheadAttention``'s call signature, masks and ``batch_first`` semantics.
    Supported: ``kdim == vdim == embed_dim``, no ``add_bias_kv``, no ``add_zero_attn``.
    """

    def __init__(self, in_proj: nn.Module, out_proj: nn.Module, mha: nn.MultiheadAttention):
        super().__init__()
        self.in_proj, self.out_proj = in_proj, out_proj
        self.embed_dim, self.num_heads = mha.embed_dim, mha.num_heads
        self.head_dim = mha.head_dim
        self.dropout, self.batch_first = mha.dropout, mha.batch_first

    @staticmethod
    def dense_in_proj(mha: nn.MultiheadAttention) -> nn.Linear:
        """An ``nn.Linear`` that shares (not copies) the MHA's packed in-projection parameters."""
        lin = nn.Linear(mha.embed_dim, 3 * mha.embed_dim, bias=mha.in_proj_bias is not None)
        lin.weight = mha.in_proj_weight
        lin.bias = mha.in_proj_bias
        return lin

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
        in_proj = (
            self.in_proj.to_dense() if isinstance(self.in_proj, LowRankLayer) else self.in_proj
        )
        out_proj = (
            self.out_proj.to_dense() if isinstance(self.out_proj, LowRankLayer) else self.out_proj
        )
        mha = nn.MultiheadAttention(
            self.embed_dim,
            self.num_heads,
            dropout=self.dropout,
            bias=in_proj.bias is not None,
            batch_first=self.batch_first,
        ).to(device=in_proj.weight.device, dtype=in_proj.weight.dtype)
        with torch.no_grad():
            mha.in_proj_weight.copy_(in_proj.weight)
            mha.out_proj.weight.copy_(out_proj.weight)
            if in_proj.bias is not None:
                mha.in_proj_bias.copy_(in_proj.bias)
            if out_proj.bias is not None and mha.out_proj.bias is not None:
                mha.out_proj.bias.copy_(out_proj.bias)
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


def factor_modules(model: nn.Module) -> dict[str, LowRankLayer]:
    """Every factorised weight in ``model`` by module name (MHA projections appear as
    ``<mha>.in_proj`` / ``<mha>.out_proj``)."""
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, LowRankLayer)}
