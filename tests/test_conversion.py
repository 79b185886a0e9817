"""Planning and swapping layers: the dispatch table, the report, nothing touched before
conversion, state dicts that rebuild the factorised structure."""

import pytest
import torch
import torch.nn.functional as F
from tiny_models import make
from torch import nn

import oialr
from oialr.attention import LowRankMHA
from oialr.config import OIALRConfig
from oialr.conversion import KINDS, plan_conversion
from oialr.lowrank import LowRankConv, LowRankLinear


def plan(model, **options):
    return plan_conversion(model, OIALRConfig.build(**options), {id(p) for p in model.parameters()})


class QuietLinear(nn.Linear):
    """A subclass that adds nothing to the computation (like MHA's NonDynamicallyQuantizableLinear)."""


class ScaledLinear(nn.Linear):
    """A subclass with a forward of its own: factorising it would drop the scaling."""

    def forward(self, x):
        return 2.0 * F.linear(x, self.weight, self.bias)


class PaddedConv(nn.Conv2d):
    def _conv_forward(self, x, weight, bias):
        return F.conv2d(F.pad(x, (1, 1, 1, 1)), weight, bias, self.stride, 0)


def test_dispatch_by_exact_type_leaves_subclasses_with_their_own_forward_dense():
    model = nn.Sequential(
        nn.Linear(16, 32), QuietLinear(32, 32), ScaledLinear(32, 32), PaddedConv(2, 8, 3),
        nn.Embedding(10, 32), nn.Conv3d(2, 4, 3), nn.Linear(32, 5),
    )  # fmt: skip
    report = plan(model)
    assert report.converted == ["0", "1"] and report.kinds == {"0": "Linear", "1": "Linear"}
    assert (
        "ScaledLinear" in report.skipped["2"]
        and "overrides forward() of Linear" in report.skipped["2"]
    )
    assert "overrides _conv_forward() of Conv2d" in report.skipped["3"]
    assert report.skipped["4"].startswith("Embedding") and "not supported" in report.skipped["5"]
    assert report.skipped["6"] == "output head kept dense (keep_last=True)"


def test_planning_changes_nothing_not_even_attention():
    model, x = make("mha")
    before = [type(m) for m in model.modules()]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ctl = oialr.OIALR(model, opt, delay=5)
    assert [type(m) for m in model.modules()] == before, "wrapped only at conversion"
    assert {"attn.in_proj", "attn.out_proj"} <= set(ctl.report.converted)
    assert ctl.report.kinds["attn.in_proj"] == "MHA in-proj" and ctl.report.shapes[
        "attn.in_proj"
    ] == (96, 32)
    for _ in range(5):
        model(x).mean().backward()
        opt.step()
        opt.zero_grad()
        ctl.step()
    assert isinstance(model.attn, LowRankMHA) and isinstance(model.attn.in_proj, LowRankLinear)


def test_an_attention_converted_in_parts_keeps_its_function():
    """Rolled out deepest first, out_proj converts before in_proj: the attention is wrapped then,
    with its dense in-projection shared, and keeps computing the same thing."""
    model, x = make("mha")
    model.eval()
    want = model(x)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctl = oialr.OIALR(model, opt, delay=1, update_freq=1, include=["attn.out_proj"])
    ctl.step()
    assert isinstance(model.attn, LowRankMHA) and type(model.attn.in_proj) is nn.Linear
    assert model.attn.in_proj_weight is model.attn.in_proj.weight
    torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-4)


def test_drop_in_attributes_match_the_replaced_modules():
    conv = nn.Conv2d(3, 12, 3, stride=2, padding=1)
    linear = nn.Linear(16, 8)
    lc, ll = LowRankConv.from_dense(conv), LowRankLinear.from_dense(linear)
    for attr in (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
    ):
        assert getattr(lc, attr) == getattr(conv, attr), attr
    assert (ll.in_features, ll.out_features) == (16, 8)
    torch.testing.assert_close(lc.weight, conv.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ll.weight, linear.weight, atol=1e-6, rtol=1e-5)
    # outside code that calls the functional on .weight trains Σ
    F.conv2d(torch.randn(2, 3, 8, 8), lc.weight, lc.bias, stride=2, padding=1).sum().backward()
    assert lc.sigma.grad is not None and lc.sigma.grad.abs().sum() > 0


def test_state_dicts_hold_tensors_only():
    model, _ = make("cnn")
    oialr.OIALR(model, torch.optim.SGD(model.parameters(), lr=0.1), delay=0)
    state = model.state_dict()
    assert all(torch.is_tensor(v) for v in state.values())
    assert int(state["conv1._extra_state"]) == model.conv1.rank


def test_load_factorised_refuses_a_state_dict_from_another_model():
    model, _ = make("cnn")
    oialr.OIALR(model, torch.optim.SGD(model.parameters(), lr=0.1), delay=0)
    other, _ = make("mlp")
    with pytest.raises(oialr.ConfigError, match="saved from another model"):
        oialr.load_factorised(other, model.state_dict())


def test_every_kind_in_the_table_is_a_dense_module_type():
    for kind in KINDS:
        assert isinstance(kind.dense, str) or issubclass(kind.dense, nn.Module)
