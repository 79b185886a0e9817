"""Factorised layers: conversion preserves the function, attention semantics, export."""

import copy

import pytest
import torch
from tiny_models import KINDS, make
from torch import nn

import oialr
from oialr.attention import LowRankMHA
from oialr.lowrank import LowRankConv, LowRankLayer, LowRankLinear

ATOL = 1e-5


def convert_now(model, **options):
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctl = oialr.OIALR(model, opt, delay=0, update_freq=1, **options)
    return ctl, opt


@pytest.mark.parametrize("kind", KINDS)
def test_conversion_preserves_outputs(kind):
    model, x = make(kind)
    model.eval()
    before = model(x)
    ctl, _ = convert_now(model)
    assert ctl.ranks(), "something must have been converted"
    torch.testing.assert_close(model(x), before, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("factored", [True, False, "auto"])
def test_factored_and_materialised_paths_agree(factored):
    model, x = make("cnn")
    before = model(x)
    convert_now(model, factored=factored)
    torch.testing.assert_close(model(x), before, atol=ATOL, rtol=1e-4)


def _at_rank(layer: LowRankLayer, rank: int) -> LowRankLayer:
    layer.truncate(rank)
    return layer


@pytest.mark.parametrize("batch", [32, 128, 1024])
def test_auto_runs_narrow_convs_materialised_and_wide_ones_factored_on_the_cpu(batch):
    """The multiply-add count alone sent LeNet-5's convs down a factored chain that trained at
    3x dense on the CPU; the passes the chain adds over the output positions now count too."""
    lenet_first = _at_rank(LowRankConv.from_dense(nn.Conv2d(1, 6, 5)), 2)
    lenet_second = _at_rank(LowRankConv.from_dense(nn.Conv2d(6, 16, 5)), 8)
    wide = _at_rank(LowRankConv.from_dense(nn.Conv2d(64, 64, 3, padding=1)), 6)
    linear = _at_rank(LowRankLinear.from_dense(nn.Linear(1024, 1024)), 102)
    assert not lenet_first.factored_is_cheaper(batch * 24 * 24)
    assert not lenet_second.factored_is_cheaper(batch * 8 * 8)
    assert wide.factored_is_cheaper(batch * 8 * 8)
    assert linear.factored_is_cheaper(batch)  # a Linear's chain makes no extra pass
    # where the pass cost is unmeasured, the multiply-add count alone decides, as before
    elsewhere = LowRankConv.from_dense(nn.Conv2d(1, 6, 5, device="meta"), capacity=2)
    assert elsewhere.factored_is_cheaper(batch * 24 * 24)


@pytest.mark.parametrize("kind", KINDS)
def test_to_dense_restores_ordinary_modules(kind):
    model, x = make(kind)
    model.eval()
    ctl, opt = convert_now(model, sigma_cutoff=0.5)
    # a truncating update first, so to_dense must merge a real low-rank product
    model(x).sum().backward()
    opt.step()
    ctl.step()
    after = model(x)
    oialr.to_dense(model)
    assert not any(isinstance(m, (LowRankLayer, LowRankMHA)) for m in model.modules())
    kinds = {type(m) for m in model.modules()}
    assert kinds & {nn.Linear, nn.Conv2d, nn.MultiheadAttention}
    torch.testing.assert_close(model(x), after, atol=ATOL, rtol=1e-4)
    torch.save(model.state_dict(), "/dev/null")  # an ordinary, saveable model


def test_attention_wrapper_matches_torch_in_every_mode():
    torch.manual_seed(0)
    for batch_first in (True, False):
        mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
        ours = copy.deepcopy(mha)
        model = nn.Sequential(ours)
        convert_now(model, min_aspect=100, keep_last=False)
        wrapped = model[0]
        assert isinstance(wrapped, LowRankMHA) and isinstance(wrapped.in_proj, LowRankLinear)
        shape = (3, 5, 16) if batch_first else (5, 3, 16)
        q, k, v = torch.randn(*shape), torch.randn(*shape), torch.randn(*shape)
        kpm = torch.zeros(3, 5, dtype=torch.bool)
        kpm[:, -1] = True
        causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
        float_mask = torch.randn(5, 5)
        cases = [
            dict(query=q, key=q, value=q),
            dict(query=q, key=k, value=v),
            dict(query=q, key=k, value=v, key_padding_mask=kpm),
            dict(query=q, key=q, value=q, attn_mask=causal),
            dict(query=q, key=q, value=q, attn_mask=float_mask, key_padding_mask=kpm),
        ]
        for case in cases:
            for need_weights in (True, False):
                want, want_w = mha(**case, need_weights=need_weights)
                got, got_w = wrapped(**case, need_weights=need_weights)
                torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)
                if need_weights:
                    torch.testing.assert_close(got_w, want_w, atol=ATOL, rtol=1e-4)
        unbatched = torch.randn(5, 16)
        torch.testing.assert_close(
            wrapped(unbatched, unbatched, unbatched)[0],
            mha(unbatched, unbatched, unbatched)[0],
            atol=ATOL,
            rtol=1e-4,
        )


def test_only_sigma_biases_and_dense_layers_train_after_conversion():
    model, _ = make("mha")
    ctl, _ = convert_now(model)
    factored = ctl.layers()
    assert factored
    for name, param in model.named_parameters():
        owner = name.rpartition(".")[0]
        if owner in factored:
            assert name.endswith(("sigma", "bias")), name
        assert param.requires_grad
    for layer in factored.values():
        assert not layer.u.requires_grad and not layer.v.requires_grad
        assert "u" in dict(layer.named_buffers()) and "v" in dict(layer.named_buffers())


def test_conversion_report_gives_reasons():
    model, _ = make("cnn")
    ctl, _ = convert_now(model)
    report = ctl.report
    assert "depthwise" in report.skipped["depthwise"]
    assert "head" in report.skipped["head"]
    assert set(report.converted) == {"conv1", "conv2", "conv1d"}
    assert "conv1d" in str(report)
    assert isinstance(model.conv1d, LowRankConv)


def test_options_select_layers():
    model, _ = make("mlp")
    ctl, _ = convert_now(model, include=["net.2"], keep_first=True)
    assert list(ctl.ranks()) == ["net.2"]
    model, _ = make("mlp")
    ctl, _ = convert_now(model, exclude=["net.[24]"], keep_last=False)
    assert set(ctl.ranks()) == {"net.0", "net.6"}
    model, _ = make("mlp")
    ctl, _ = convert_now(model, min_aspect=2.5)
    assert ctl.report.skipped["net.0"] == "aspect ratio 3.0 >= min_aspect 2.5"


def test_include_that_matches_nothing_names_the_patterns():
    model, _ = make("mlp")
    with pytest.raises(oialr.ConfigError, match=r"include=\['nope'\].*net\.0"):
        convert_now(model, include=["nope"])


def test_tied_and_frozen_weights_stay_dense():
    model, _ = make("mlp")
    model.net[2].weight.requires_grad_(False)
    tied = nn.Linear(48, 48)
    model.extra = tied
    model.net[4].weight = tied.weight
    ctl, _ = convert_now(model)
    assert "frozen" in ctl.report.skipped["net.2"]
    assert "shared" in ctl.report.skipped["net.4"]


def test_bad_options_name_the_option_and_range():
    model, _ = make("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="`sigma_cutoff`.*less than 1"):
        oialr.OIALR(model, opt, sigma_cutoff=1.5)
    with pytest.raises(ValueError, match="`update_freq`.*greater than 0"):
        oialr.OIALR(model, opt, update_freq=0)
    with pytest.raises(ValueError, match="`max_cut_pr_update`.*unknown option.*max_cut_per_update"):
        oialr.OIALR(model, opt, max_cut_pr_update=0.5)
    with pytest.raises(ValueError, match="`factored`"):
        oialr.OIALR(model, opt, factored="sometimes")
    with pytest.raises(ValueError, match="min_rank"):
        oialr.OIALR(model, opt, min_rank=2.5)


def test_bf16_autocast_forward_and_float32_svd():
    model, x = make("timm")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ctl = oialr.OIALR(model, opt, delay=1, update_freq=1, sigma_cutoff=0.2)
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        ctl.step()
    assert ctl.converted and ctl.history[-1].event == "update"
    for layer in ctl.layers().values():
        assert layer.sigma.dtype == torch.float32 and torch.isfinite(layer.sigma).all()
        u = layer.u[:, : layer.rank]
        torch.testing.assert_close(u.mT @ u, torch.eye(layer.rank), atol=1e-4, rtol=0)


def test_converted_model_moves_between_devices_and_dtypes():
    model, x = make("cnn")
    convert_now(model)
    out = model(x)
    model.to(torch.float64)
    torch.testing.assert_close(model(x.double()).float(), out, atol=ATOL, rtol=1e-4)
    if torch.cuda.is_available():
        model.to("cuda")
        assert model(x.double().cuda()).device.type == "cuda"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", KINDS)
def test_conversion_and_bf16_training_on_cuda(kind):
    model, x = make(kind)
    model, x = model.cuda(), x.cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ctl = oialr.OIALR(model, opt, delay=2, update_freq=2, sigma_cutoff=0.3)
    for _ in range(8):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        ctl.step()
    assert ctl.converted and torch.isfinite(loss)
    assert all(layer.u.is_cuda for layer in ctl.layers().values())
