"""OIALR on real third-party models (transformers, timm, torchvision, torch), built from configs.

One table (tests/third_party.py), every property a user relies on: converted or left dense with a
reason, the function kept at conversion, the loss falling through truncating updates, safetensors
checkpoints, exact resume, export back to dense. Run with ``OIALR_SUPPORT_MATRIX=path`` to write
the README's support matrix from what these tests find.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, load_model, save_model
from third_party import FAMILIES, Family
from torch import nn

import oialr
from oialr.attention import LowRankMHA
from oialr.errors import NoEligibleLayersError
from oialr.lowrank import LowRankLayer

# Families OIALR refuses as a whole, and classes it must leave dense wherever they appear.
REFUSED = {"timm-bit": "StdConv2d"}
LEFT_DENSE = {"timm-nfnet": "ScaledStdConv2d", "timm-tf_efficientnet": "Conv2dSame"}
OPTIONS = dict(delay=3, update_freq=4, sigma_cutoff=0.3)


def params(families):
    return [
        pytest.param(f, id=f.name, marks=pytest.mark.skipif(
            not f.available(), reason=f"{f.package} is not installed (pip install -e '.[dev]')"))
        for f in families
    ]  # fmt: skip


CONVERTING = params([f for f in FAMILIES if f.name not in REFUSED])
MATRIX: dict[str, dict] = {}


@pytest.fixture(scope="module", autouse=True)
def support_matrix():
    """Writes what the tests found, family by family, when asked to (README's matrix)."""
    yield
    path = os.environ.get("OIALR_SUPPORT_MATRIX")
    if path and MATRIX:
        rows = [
            {"family": f.name, "package": f.package, **MATRIX[f.name]}
            for f in FAMILIES
            if f.name in MATRIX
        ]
        with open(path, "w") as out:
            json.dump({"families": rows}, out, indent=1)


def setup(family: Family, **options):
    torch.manual_seed(0)
    model = family.build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    return model, optimizer, oialr.OIALR(model, optimizer, **(OPTIONS | options))


def train(family, model, optimizer, ctl, batch, steps):
    losses = []
    model.train()
    for _ in range(steps):
        loss = family.loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        ctl.step()
        losses.append(loss.item())
    return losses


def output(family, model, batch):
    model.eval()
    with torch.no_grad():
        return family.output(model, batch)


def assert_round_off(got, want):
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


@pytest.mark.parametrize("family", CONVERTING)
def test_conversion_keeps_the_function_and_reports_every_layer(family):
    batch = family.batch()
    model, optimizer, ctl = setup(family, delay=0)
    torch.manual_seed(0)
    dense = family.build()
    assert_round_off(output(family, model, batch), output(family, dense, batch))
    report, layers = ctl.report, ctl.layers()
    assert report.converted and set(layers) == set(report.converted)
    for name, layer in layers.items():  # drop-in: the weight outside code reads, same shape
        original = dense.get_submodule(name) if not name.endswith("in_proj") else None
        if original is not None:
            assert layer.weight.shape == original.weight.shape, name
            assert layer.weight.dtype == original.weight.dtype, name
    assert all(reason for reason in report.skipped.values())
    kept = LEFT_DENSE.get(family.name)
    if kept:
        mods = [n for n, m in model.named_modules() if type(m).__name__ == kept]
        assert mods and all(
            kept in report.skipped[n] and "overrides" in report.skipped[n] for n in mods
        )
    MATRIX[family.name] = {
        "status": "converted",
        "converted": len(report.converted),
        "kinds": sorted(set(report.kinds.values())),
        "left_dense": len(report.skipped),
        "reasons": _reason_counts(report.skipped),
    }


def _reason_counts(skipped: dict[str, str]) -> dict[str, int]:
    """Reasons without their per-layer numbers (groups=…, the aspect ratio), counted."""
    counts: dict[str, int] = {}
    for reason in skipped.values():
        short = reason.split(": left dense")[0].split(" (groups")[0]
        short = "aspect ratio ≥ min_aspect" if short.startswith("aspect ratio") else short
        counts[short] = counts.get(short, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


@pytest.mark.parametrize("family", params([f for f in FAMILIES if f.name in REFUSED]))
def test_models_oialr_cannot_factorise_are_refused_with_the_reason(family):
    torch.manual_seed(0)
    model = family.build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NoEligibleLayersError) as err:
        oialr.OIALR(model, torch.optim.AdamW(model.parameters()), **OPTIONS)
    message = str(err.value)
    assert REFUSED[family.name] in message and "overrides forward()" in message
    assert "\n" not in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "untouched"
    MATRIX[family.name] = {"status": "refused", "converted": 0, "kinds": [], "reason": message}


@pytest.mark.parametrize("family", CONVERTING)
def test_loss_falls_through_truncating_updates(family):
    batch = family.batch()
    model, optimizer, ctl = setup(family, sigma_cutoff=0.5)
    losses = train(family, model, optimizer, ctl, batch, 15)
    cuts = [r for r in ctl.history if r.event == "update" and r.rank_after < r.rank_before]
    assert cuts, "updates cut ranks"
    assert ctl.trainable_fraction() < 1.0
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("family", CONVERTING)
def test_safetensors_checkpoint_rebuilds_a_fresh_model(family, tmp_path):
    batch = family.batch()
    model, optimizer, ctl = setup(family)
    train(family, model, optimizer, ctl, batch, 9)  # converted at 3, updated at 7
    save_model(model, tmp_path / "model.safetensors")
    torch.manual_seed(0)
    fresh = family.build()
    oialr.load_factorised(fresh, load_file(tmp_path / "model.safetensors"))
    assert {n: m.rank for n, m in oialr.lowrank.factor_modules(fresh).items()} == ctl.ranks()
    torch.testing.assert_close(
        output(family, fresh, batch), output(family, model, batch), atol=0, rtol=0
    )


@pytest.mark.parametrize("family", CONVERTING)
def test_resume_from_a_safetensors_checkpoint_is_exact(family, tmp_path):
    batch = family.batch()
    model, optimizer, ctl = setup(family)
    train(family, model, optimizer, ctl, batch, 9)
    save_model(model, tmp_path / "model.safetensors")
    checkpoint = {
        "optimizer": optimizer.state_dict(),
        "oialr": ctl.state_dict(),
        "rng": torch.get_rng_state(),
    }
    torch.save(checkpoint, tmp_path / "state.pt")
    strides = {
        (n, a): getattr(m, a).stride() for n, m in ctl.layers().items() for a in ("u", "v", "sigma")
    }
    expected = train(family, model, optimizer, ctl, batch, 8)  # updates at 11 and 15

    model2, optimizer2, ctl2 = setup(family)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    ctl2.load_state_dict(state["oialr"])  # rebuilds the factorised layers first
    load_model(model2, tmp_path / "model.safetensors")  # tied weights: not load_state_dict
    optimizer2.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    rebuilt = {
        (n, a): getattr(m, a).stride()
        for n, m in ctl2.layers().items()
        for a in ("u", "v", "sigma")
    }
    assert rebuilt == strides, "the same memory layout as the original factors, so the same kernels"
    assert train(family, model2, optimizer2, ctl2, batch, 8) == expected
    assert ctl2.ranks() == ctl.ranks()


@pytest.mark.parametrize("family", CONVERTING)
def test_to_dense_gives_back_the_original_module_types(family):
    batch = family.batch()
    model, optimizer, ctl = setup(family)
    train(family, model, optimizer, ctl, batch, 8)
    torch.manual_seed(0)
    types = {n: type(m) for n, m in family.build().named_modules()}
    after = output(family, model, batch)
    names = ctl.report.converted
    oialr.to_dense(model)
    assert not any(isinstance(m, (LowRankLayer, LowRankMHA)) for m in model.modules())
    for name in names:
        owner = name.removesuffix(".in_proj")
        dense = model.get_submodule(owner)
        assert issubclass(types[owner], type(dense)) or type(dense) is nn.MultiheadAttention, name
    assert_round_off(output(family, model, batch), after)


def test_transformer_encoder_fast_path_before_and_after_conversion():
    """nn.TransformerEncoder reads its attention's tensors in eval mode (the fast path): it must
    work right after OIALR(...), during warm-up, and after conversion on the materialised
    weights, with and without a padding mask (nested tensors)."""
    family = next(f for f in FAMILIES if f.name == "torch-TransformerEncoder")
    batch = family.batch()
    mask = torch.zeros(8, 6, dtype=torch.bool)
    mask[:, -2:] = True
    torch.manual_seed(0)
    reference = family.build().eval()
    model, optimizer, ctl = setup(family, delay=2)
    with torch.no_grad():
        for kpm in (None, mask):
            want = reference(batch["x"], kpm)
            assert torch.equal(model.eval()(batch["x"], kpm), want), "warm-up: untouched"
    train(family, model, optimizer, ctl, batch, 2)
    assert isinstance(model.encoder.layers[0].self_attn, LowRankMHA)
    model.eval()
    tokens = model.embed(batch["x"]).detach()
    with torch.no_grad():
        for kpm, valid in ((None, 6), (mask, 4)):
            fast = model.encoder(tokens, src_key_padding_mask=kpm)
            with torch.enable_grad():  # grad mode turns the fast path off: ours runs
                slow = model.encoder(tokens, src_key_padding_mask=kpm).detach()
            assert_round_off(fast[:, :valid], slow[:, :valid])
    losses = train(family, model, optimizer, ctl, batch, 6)
    assert losses[-1] < losses[0]
