"""Factorised weights ``W = U Σ Vᵀ`` that stand in for ``nn.Linear``, ``nn.Conv1d/2d`` and
transformers' ``Conv1D``.

Every weight is seen as a tall matrix ``A (m × n)``, ``n = min`` (spec §1): a Linear's ``W`` or
``Wᵀ``, a conv's ``W`` flattened over (in/groups, *kernel) and made tall. ``A = U Σ Vᵀ`` with frozen
orthonormal ``U (m × c)``, ``V (n × c)`` (buffers) and a trainable dense ``Σ (c × c)``.

Storage keeps a capacity ``c`` (``n`` at conversion) and a python-int ``rank``: only the leading
``rank`` columns of U, V and the leading ``rank × rank`` block of Σ are live, the rest is zero. A
rank cut therefore changes no shape, so the optimizer keeps its references and a
DistributedDataParallel reducer built at conversion stays valid; :meth:`LowRankLayer.compact`
shrinks the storage when the caller allows it. The layer owns its factors: :meth:`rotate`,
:meth:`truncate` and :meth:`compact` are the only code that writes them.

A layer answers what outside code asks of the module it replaced (``weight``, ``bias``,
``in_features``, conv geometry…): ``weight`` is materialised on demand, and gradients through it
reach Σ. Its state dict holds tensors only (the rank is a 0-d tensor), so safetensors can save it.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import TrainingDiverged

# What one extra pass over a layer's output rows costs, in multiply-adds per row, by device
# type: memory traffic plus the slow paths of convs only a few channels wide. On the CPU 1,250
# (2 threads; `python benchmarks/conv_paths.py`): LeNet-5's low-rank convs ran their factored
# chain at 1.2-12x dense and materialised at 1.2-1.4x, while convs of 32+ channels gain from
# factoring. Not yet measured on CUDA: there the multiply-add count alone decides.
PASS_COST = {"cpu": 1250}

__all__ = [
    "LowRankLayer",
    "LowRankLinear",
    "LowRankConv",
    "LowRankConv1D",
    "factor_modules",
    "thin_svd",
]


def thin_svd(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``a = U diag(s) Vᵀ`` in float32 with autocast off, whatever the input dtype (spec §5).

    The factors come back row-major: LAPACK's are column-major, and a factor rebuilt from a
    checkpoint is row-major, so without this a resumed run would take other matmul kernels and
    drift from the original on some CPUs.
    """
    if not bool(torch.isfinite(a).all()):
        raise TrainingDiverged(
            "a weight holds NaN or Inf, so it cannot be factorised: training diverged; "
            "lower the learning rate or clip gradients"
        )
    with torch.autocast(a.device.type, enabled=False):
        u, s, vh = torch.linalg.svd(a.float(), full_matrices=False)
    return u.contiguous(), s, vh.mT.contiguous()


class LowRankLayer(nn.Module):
    """Shared state and arithmetic of every factorised weight.

    Build one with a subclass's ``from_dense`` (SVD of the dense weight) or ``placeholder``
    (zero factors of a given capacity, for loading a checkpoint).

    Args:
        out_features, in_flat: the dense weight's shape as ``(out, in_flat)``.
        bias: the dense bias Parameter, reused as is so its optimizer state carries on.
        capacity: the rank the tensors are stored at.
        factored: ``"auto"`` picks per forward the cheaper of the factored chain and the
            materialised weight (cost model of spec §5, with the actual row count); ``True`` /
            ``False`` force one.
    """

    def __init__(
        self,
        out_features: int,
        in_flat: int,
        bias: nn.Parameter | None,
        *,
        capacity: int,
        factored: bool | str = "auto",
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ):
        super().__init__()
        self.out_features, self.in_features = out_features, in_flat
        # A = W if W is tall, else Wᵀ (spec §1); SVDs always run on the tall orientation.
        self.a_transposed = out_features < in_flat
        m, n = max(out_features, in_flat), min(out_features, in_flat)
        zeros = dict(dtype=dtype, device=device)
        self.register_buffer("u", torch.zeros(m, capacity, **zeros))  # frozen, orthonormal live
        self.register_buffer("v", torch.zeros(n, capacity, **zeros))  # frozen, orthonormal live
        self.sigma = nn.Parameter(torch.zeros(capacity, capacity, **zeros))  # live [:rank, :rank]
        self.bias = bias
        self.full_rank = n
        self.rank = capacity
        self.factored = factored

    # -- shapes and counts -------------------------------------------------------------------
    @property
    def m(self) -> int:
        return self.u.shape[0]

    @property
    def capacity(self) -> int:
        """The rank the tensors are stored at (≥ ``rank``)."""
        return self.sigma.shape[0]

    def factor_params(self) -> int:
        """Stored weight parameters: ``m r + r² + n r`` (spec §5), bias excluded."""
        r = self.rank
        return self.m * r + r * r + self.full_rank * r

    def trainable_params(self) -> int:
        """Σ's live block plus the bias."""
        return self.rank**2 + (0 if self.bias is None else self.bias.numel())

    def stored_params(self) -> int:
        return self.factor_params() + (0 if self.bias is None else self.bias.numel())

    # -- the factors -------------------------------------------------------------------------
    def live(self) -> tuple[Tensor, Tensor, Tensor]:
        """Views ``U[:, :r]``, ``Σ[:r, :r]``, ``V[:, :r]`` (no copies).

        Under ``torch.compile`` the whole storage is used instead (the columns past ``rank`` are
        zero, so the function is the same): a rank cut then changes no guard, and only a
        compaction, which changes shapes, can recompile.
        """
        if torch.compiler.is_compiling():
            return self.u, self.sigma, self.v
        r = self.rank
        return self.u[:, :r], self.sigma[:r, :r], self.v[:, :r]

    def chain(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(B_in (in × r), core (r × r), B_out (out × r))`` with ``W = B_out · core · B_inᵀ``.

        The forward runs ``x → x B_in → · coreᵀ → · B_outᵀ`` (spec §5): folding Σ into a basis
        first would cost ``m r²`` more forward and an ``R m r`` weight gradient backward.
        """
        u, s, v = self.live()
        if self.a_transposed:  # W = Aᵀ = V Σᵀ Uᵀ
            return u, s.mT, v
        return v, s, u  # W = U Σ Vᵀ

    def weight2d(self) -> Tensor:
        """The dense ``(out, in_flat)`` weight this layer represents (gradients reach Σ)."""
        b_in, core, b_out = self.chain()
        return b_out @ core @ b_in.mT

    # Passes over the output rows the factored chain makes beyond the materialised forward's one
    # (a conv's r-channel conv and 1×1 convs; a Linear's chain is matmuls either way).
    extra_passes = 0

    def factored_is_cheaper(self, rows: int) -> bool:
        """Spec §5: factored ``R (r (m + n) + r²)`` vs materialised ``m r (r + n) + R m n``
        multiply-adds, plus what the chain's extra passes cost on this device (:data:`PASS_COST`)."""
        if isinstance(self.factored, bool):
            return self.factored
        r = self.capacity if torch.compiler.is_compiling() else self.rank  # what live() uses
        m, n = self.m, self.full_rank
        passes = self.extra_passes * PASS_COST.get(self.u.device.type, 0)
        return rows * (r * (m + n) + r * r + passes) < m * r * (r + n) + rows * m * n

    @torch.no_grad()
    def set_from_weight(self, weight2d: Tensor) -> Tensor:
        """Factorise a dense ``(out, in_flat)`` weight at full rank; returns its singular values."""
        a = weight2d.detach().mT if self.a_transposed else weight2d.detach()
        u, s, v = thin_svd(a)
        self.u.copy_(u)
        self.v.copy_(v)
        self.sigma.copy_(torch.diag(s))
        self.rank = s.numel()
        return s

    @torch.no_grad()
    def rotate(self, p: Tensor, q: Tensor, s: Tensor, rank: int) -> None:
        """Turn the bases onto Σ's singular vectors and keep ``rank`` of them (spec §2.3).

        With ``Σ = P diag(s) Qᵀ``: ``U ← U P``, ``V ← V Q``, ``Σ ← diag(s)``, which leaves the
        function unchanged, then drop the columns past ``rank``. Σ's gradient is cleared: it was
        taken in the old coordinates.
        """
        u, _, v = self.live()
        new_u = (u.float() @ p[:, :rank]).to(self.u.dtype)
        new_v = (v.float() @ q[:, :rank]).to(self.v.dtype)
        self._write(new_u, torch.diag(s[:rank]).to(self.sigma.dtype), new_v)
        if self.sigma.grad is not None:
            self.sigma.grad.zero_()

    @torch.no_grad()
    def truncate(self, rank: int) -> None:
        """Keep the leading ``rank`` columns as they are (the fixed-rank baseline's cut)."""
        u, sigma, v = self.live()
        self._write(u[:, :rank].clone(), sigma[:rank, :rank].clone(), v[:, :rank].clone())

    def _write(self, u: Tensor, sigma: Tensor, v: Tensor) -> None:
        """Store live factors of rank ``sigma.shape[0]`` in place, zeros past it."""
        r = sigma.shape[0]
        for target, value in ((self.u, u), (self.v, v)):
            target.zero_()
            target[:, :r] = value
        self.sigma.zero_()
        self.sigma[:r, :r] = sigma
        self.rank = r

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

    # -- state: tensors only ------------------------------------------------------------------
    def get_extra_state(self) -> Tensor:
        return torch.tensor(self.rank)

    def set_extra_state(self, state: Tensor) -> None:
        rank = int(state)
        if not 1 <= rank <= self.capacity:
            raise ValueError(f"rank {rank} does not fit a layer stored at rank {self.capacity}")
        self.rank = rank

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}/{self.full_rank}"


def _factorised(cls, dense: nn.Module, weight2d: Tensor, factored, capacity: int | None):
    """A ``cls`` for ``dense``: its SVD when ``capacity`` is None, else zero factors."""
    out_f, in_f = weight2d.shape
    layer = cls(
        out_f,
        in_f,
        dense.bias,
        capacity=min(out_f, in_f) if capacity is None else capacity,
        factored=factored,
        dtype=weight2d.dtype,
        device=weight2d.device,
    )
    if capacity is None:
        layer.set_from_weight(weight2d)
    return layer


class LowRankLinear(LowRankLayer):
    """``nn.Linear`` as ``x → x B_in → · coreᵀ → · B_outᵀ``."""

    @classmethod
    def from_dense(
        cls, linear: nn.Module, factored: bool | str = "auto", capacity: int | None = None
    ) -> LowRankLinear:
        """The SVD of ``linear`` (a placeholder of ``capacity`` when given)."""
        return _factorised(cls, linear, cls.dense_weight2d(linear), factored, capacity)

    @staticmethod
    def dense_weight2d(linear: nn.Module) -> Tensor:
        return linear.weight

    @property
    def weight(self) -> Tensor:
        return self.weight2d()

    def forward(self, x: Tensor) -> Tensor:
        if self.factored_is_cheaper(x.numel() // self.in_features):
            b_in, core, b_out = self.chain()
            return F.linear((x @ b_in) @ core.mT, b_out, self.bias)  # (…, in) → (…, r) → (…, out)
        return F.linear(x, self.weight2d(), self.bias)

    def to_dense(self) -> nn.Linear:
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        return _filled(dense, self.weight2d(), self.bias)


class LowRankConv1D(LowRankLinear):
    """transformers' ``Conv1D`` (GPT-2's projections): a Linear whose weight is stored
    transposed as ``(in, out)``; ``weight`` keeps that layout for code that reads it."""

    @staticmethod
    def dense_weight2d(conv1d: nn.Module) -> Tensor:
        return conv1d.weight.mT

    @property
    def nf(self) -> int:
        return self.out_features

    @property
    def nx(self) -> int:
        return self.in_features

    @property
    def weight(self) -> Tensor:
        return self.weight2d().mT

    def to_dense(self) -> nn.Module:
        conv1d = sys.modules["transformers.pytorch_utils"].Conv1D(self.nf, self.nx)
        return _filled(conv1d, self.weight2d().mT, self.bias)


class LowRankConv(LowRankLayer):
    """``nn.Conv1d``/``nn.Conv2d`` (groups = 1, zero padding) as a conv with ``r`` filters over
    the input followed by two 1×1 convs, ``core`` then ``B_out`` (spec §5)."""

    extra_passes = 2  # three convs over the output positions, where materialised runs one

    groups = 1
    padding_mode = "zeros"

    @classmethod
    def from_dense(
        cls, conv: nn.Module, factored: bool | str = "auto", capacity: int | None = None
    ) -> LowRankConv:
        """The SVD of ``conv`` (a placeholder of ``capacity`` when given)."""
        layer = _factorised(cls, conv, cls.dense_weight2d(conv), factored, capacity)
        layer.kernel_size, layer.stride = conv.kernel_size, conv.stride
        layer.padding, layer.dilation = conv.padding, conv.dilation
        layer.out_channels, layer.in_channels = conv.out_channels, conv.in_channels
        return layer

    @staticmethod
    def dense_weight2d(conv: nn.Module) -> Tensor:
        return conv.weight.flatten(1)

    @property
    def dims(self) -> int:
        return len(self.kernel_size)

    @property
    def weight(self) -> Tensor:
        return self.weight2d().reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None = None, **kwargs) -> Tensor:
        return (F.conv1d if self.dims == 1 else F.conv2d)(x, weight, bias, **kwargs)

    def _output_rows(self, x: Tensor) -> int:
        """Batch × output positions: the ``R`` of the cost model."""
        rows = x.shape[0]
        for i, size in enumerate(x.shape[2:]):
            if isinstance(self.padding, str):  # "same" keeps the size (stride 1); "valid" pads 0
                if self.padding == "same":
                    rows *= size
                    continue
                pad = 0
            else:
                pad = self.padding[i]
            span = self.dilation[i] * (self.kernel_size[i] - 1) + 1
            rows *= max(1, (size + 2 * pad - span) // self.stride[i] + 1)
        return rows

    def forward(self, x: Tensor) -> Tensor:
        geometry = dict(stride=self.stride, padding=self.padding, dilation=self.dilation)
        if not self.factored_is_cheaper(self._output_rows(x)):
            return self._conv(x, self.weight, self.bias, **geometry)
        b_in, core, b_out = self.chain()
        r, ones = core.shape[0], [1] * self.dims
        filters = b_in.mT.reshape(r, self.in_channels, *self.kernel_size)  # (r, C, *k)
        h = self._conv(x, filters, **geometry)  # (B, r, *spatial)
        h = self._conv(h, core.reshape(r, r, *ones))  # 1×1: (B, r, *spatial)
        return self._conv(h, b_out.reshape(self.out_channels, r, *ones), self.bias)

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
        )
        return _filled(dense, self.weight, self.bias)


@torch.no_grad()
def _filled(dense: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    """``dense`` moved to ``weight``'s device and dtype, holding ``weight`` and ``bias``."""
    dense = dense.to(device=weight.device, dtype=weight.dtype)
    dense.weight.copy_(weight)
    if bias is not None:
        dense.bias.copy_(bias)
    return dense


def factor_modules(model: nn.Module) -> dict[str, LowRankLayer]:
    """Every factorised weight in ``model`` by module name (MHA projections appear as
    ``<mha>.in_proj`` / ``<mha>.out_proj``)."""
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, LowRankLayer)}
