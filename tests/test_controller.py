"""The OIALR schedule: training through conversion and updates, optimizer state, resume."""

import copy

import pytest
import torch
import torch.nn.functional as F
from tiny_models import KINDS, task

import oialr

OPTIMIZERS = {
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=3e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.05),
}


def train(model, opt, ctl, xs, ys, steps, batch=64, sched=None):
    """Minibatch training in a fixed order; returns the per-step losses."""
    losses = []
    for i in range(steps):
        j = (i * batch) % len(xs)
        loss = F.cross_entropy(model(xs[j : j + batch]), ys[j : j + batch])
        loss.backward()
        opt.step()
        opt.zero_grad()
        if sched is not None:
            sched.step()
        if ctl is not None:
            ctl.step()
        losses.append(loss.item())
    return losses


def full_loss(model, xs, ys):
    with torch.no_grad():
        return F.cross_entropy(model(xs), ys).item()


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("kind", ["mlp", "cnn", "mha"])
def test_training_through_conversion_and_truncating_updates(name, kind):
    torch.manual_seed(0)
    model, xs, ys = task(kind)
    opt = OPTIMIZERS[name](model.parameters())
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200)
    ctl = oialr.OIALR(model, opt, delay=40, update_freq=20, sigma_cutoff=0.3)
    start = full_loss(model, xs, ys)
    train(model, opt, ctl, xs, ys, 160, sched=sched)
    assert ctl.converted
    updates = [r for r in ctl.history if r.event == "update"]
    cuts = [r for r in updates if r.rank_after < r.rank_before]
    assert len({r.step for r in updates}) == 6 and cuts, "several updates, some truncating"
    assert full_loss(model, xs, ys) < 0.9 * start
    assert ctl.trainable_fraction() < 1.0
    # every Σ sits in the optimizer with state of its own shape; truncated entries stay zero
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    for layer in ctl.layers().values():
        assert id(layer.sigma) in params
        for value in opt.state[layer.sigma].values():
            if torch.is_tensor(value) and value.dim() == 2:
                assert value.shape == layer.sigma.shape
                assert value[layer.rank :].abs().sum() == 0
        assert layer.sigma[layer.rank :].abs().sum() == 0
    assert opt.param_groups[0]["lr"] == pytest.approx(sched.get_last_lr()[0])


def losses_after_conversion(name, kept_counter=False):
    """Full-batch loss at the conversion step, then every 5 minibatch steps for 30 steps."""
    torch.manual_seed(0)
    model, xs, ys = task("mlp", n=2048)
    opt = {"adam": lambda p: torch.optim.Adam(p, lr=1e-2)}.get(name, OPTIMIZERS[name])(
        model.parameters()
    )
    ctl = oialr.OIALR(model, opt, delay=200, update_freq=1000, sigma_cutoff=0.0)
    train(model, opt, ctl, xs, ys, 200)
    assert ctl.converted
    if kept_counter:  # the reference's behaviour: fresh moments, the counter of a long warm-up
        for layer in ctl.layers().values():
            opt.state[layer.sigma] = {
                "step": torch.tensor(200.0),
                "exp_avg": torch.zeros_like(layer.sigma),
                "exp_avg_sq": torch.zeros_like(layer.sigma),
            }
    at_conversion, after = full_loss(model, xs, ys), []
    for _ in range(6):
        train(model, opt, ctl, xs, ys, 5)
        after.append(full_loss(model, xs, ys))
    return at_conversion, after


@pytest.mark.parametrize("name", ["adam", "sgd-momentum"])
def test_no_loss_jump_after_conversion(name):
    """Bound: over the 30 minibatch steps after conversion, the mean full-batch loss stays within
    5 % of the loss at conversion (it is a function-preserving change of variables)."""
    at_conversion, after = losses_after_conversion(name)
    assert sum(after) / len(after) <= 1.05 * at_conversion, (at_conversion, after)


def test_a_kept_adam_counter_would_break_the_bound():
    """Control for the bound above: the reference's kept step counter makes the loss climb."""
    at_conversion, after = losses_after_conversion("adam", kept_counter=True)
    assert sum(after) / len(after) > 1.2 * at_conversion, (at_conversion, after)


def test_update_without_truncation_preserves_outputs_and_only_rotates_bases():
    torch.manual_seed(0)
    model, xs, ys = task("mha")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ctl = oialr.OIALR(model, opt, delay=10, update_freq=15, sigma_cutoff=0.0)
    train(model, opt, ctl, xs, ys, 23)
    layers = ctl.layers()
    frozen = {n: (m.u.clone(), m.v.clone()) for n, m in layers.items()}
    train(model, opt, ctl, xs, ys, 1)  # an optimizer step leaves U and V alone
    for n, m in layers.items():
        assert torch.equal(m.u, frozen[n][0]) and torch.equal(m.v, frozen[n][1])
    model.eval()
    before = model(xs[:16])
    weights = {n: m.weight2d().clone() for n, m in layers.items()}
    ctl.step()  # step 25: the update
    assert ctl.history[-1].event == "update"
    torch.testing.assert_close(model(xs[:16]), before, atol=1e-5, rtol=1e-4)
    for n, m in layers.items():
        torch.testing.assert_close(m.weight2d(), weights[n], atol=1e-5, rtol=1e-4)
        u = m.u[:, : m.rank]  # rotated, still orthonormal, and Σ is diagonal again
        torch.testing.assert_close(u.mT @ u, torch.eye(m.rank), atol=1e-5, rtol=0)
        sigma = m.sigma[: m.rank, : m.rank]
        torch.testing.assert_close(sigma, torch.diag(sigma.diagonal()))
        assert not torch.equal(m.u, frozen[n][0])


def test_records_describe_each_update():
    torch.manual_seed(0)
    model, xs, ys = task("mlp")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    seen = []
    ctl = oialr.OIALR(
        model, opt, 10, 10, 0.4, stability_every=3, on_update=lambda c, r: seen.extend(r)
    )
    train(model, opt, ctl, xs, ys, 40)
    assert seen == ctl.history
    converts = [r for r in seen if r.event == "convert"]
    assert {r.layer for r in converts} == set(ctl.report.converted) and converts[0].step == 10
    update = next(r for r in seen if r.event == "update" and r.rank_after < r.rank_before)
    assert update.rule in {"cutoff", "cap", "floor"}
    assert 0 < update.dropped_mass < 1 and 0 <= update.offdiag_energy < 1
    assert update.sigma == sorted(update.sigma, reverse=True)
    assert update.cutoff == pytest.approx(0.4 * update.sigma[0])
    assert update.trainable == update.rank_after**2 + 48
    assert 0 < update.stability <= 1.0 + 1e-6
    stability = [r for r in seen if r.event == "stability"]
    assert stability and all(r.step < 10 for r in stability)


def test_cap_and_floor_hold_the_rank():
    torch.manual_seed(0)
    model, xs, ys = task("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctl = oialr.OIALR(
        model, opt, delay=5, update_freq=5, sigma_cutoff=0.99, max_cut_per_update=0.25, min_rank=6
    )
    train(model, opt, ctl, xs, ys, 60)
    history = [r for r in ctl.history if r.event == "update"]
    for r in history:
        assert r.rank_after >= r.rank_before - r.rank_before // 4
        assert r.rank_after >= min(6, r.rank_before)
    assert {r.rule for r in history} >= {"cap", "floor"}
    assert min(ctl.ranks().values()) == 6


def test_fixed_rank_baseline_truncates_once():
    torch.manual_seed(0)
    model, xs, ys = task("mlp")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ctl = oialr.OIALR(model, opt, delay=10, update_freq=5, fixed_rank=0.25)
    train(model, opt, ctl, xs, ys, 40)
    assert all(r.event != "update" for r in ctl.history)
    assert ctl.ranks() == {"net.0": 4, "net.2": 12, "net.4": 12}


def test_stability_switch_converts_layers_at_different_steps():
    torch.manual_seed(0)
    model, xs, ys = task("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctl = oialr.OIALR(
        model, opt, delay=400, update_freq=50, stability_every=5,
        switch="stability", stability_threshold=0.995,
    )  # fmt: skip
    train(model, opt, ctl, xs, ys, 400)
    steps = {r.layer: r.step for r in ctl.history if r.event == "convert"}
    assert set(steps) == set(ctl.report.converted)
    assert len(set(steps.values())) > 1, steps
    for layer, step in steps.items():
        if step < 400:  # converted by stability, not by the delay
            last = [r for r in ctl.history if r.layer == layer and r.event == "stability"][-1]
            assert last.stability >= 0.995 and last.step == step


def test_rollout_converts_deepest_layers_first():
    torch.manual_seed(0)
    model, xs, ys = task("mlp")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ctl = oialr.OIALR(model, opt, delay=10, update_freq=10, rollout_fraction=0.3)
    train(model, opt, ctl, xs, ys, 30)
    steps = {r.layer: r.step for r in ctl.history if r.event == "convert"}
    assert steps == {"net.4": 10, "net.2": 20, "net.0": 30}


def factor_strides(ctl):
    return {
        (name, attr): getattr(layer, attr).stride()
        for name, layer in ctl.layers().items()
        for attr in ("u", "v", "sigma")
    }


@pytest.mark.parametrize(
    "kind, options",
    [(k, {}) for k in KINDS]
    + [
        ("mlp", {"compact": False}),
        ("mlp", {"delay": 0}),
        ("cnn", {"delay": 0, "fixed_rank": 0.5}),
    ],
)
def test_resume_from_checkpoint_is_exact(kind, options, tmp_path):
    def build():
        torch.manual_seed(0)
        model, xs, ys = task(kind)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        ctl = oialr.OIALR(
            model, opt, **({"delay": 8, "update_freq": 6, "sigma_cutoff": 0.3} | options)
        )
        return model, opt, ctl, xs, ys

    model, opt, ctl, xs, ys = build()
    train(model, opt, ctl, xs, ys, 21)
    path = tmp_path / "ckpt.pt"
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "oialr": ctl.state_dict()}, path
    )
    strides = factor_strides(ctl)
    reference = copy.deepcopy((model, opt, ctl))

    model2, opt2, ctl2, _, _ = build()
    ckpt = torch.load(path, weights_only=True)
    ctl2.load_state_dict(ckpt["oialr"])
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    assert ctl2.ranks() == ctl.ranks() and ctl2.step_count == 21
    # rebuilt factors lie in memory as the originals do, so matmuls take the same kernels
    assert factor_strides(ctl2) == strides
    torch.testing.assert_close(model2(xs[:16]), model(xs[:16]), atol=0, rtol=0)
    # the next steps, including an update at step 26, are identical
    losses = train(model, opt, ctl, xs, ys, 7)
    losses2 = train(model2, opt2, ctl2, xs, ys, 7)
    assert losses == losses2
    torch.testing.assert_close(model2(xs), model(xs), atol=0, rtol=0)
    assert ctl2.history == ctl.history
    del reference


def test_resume_during_warm_up_keeps_stability_state(tmp_path):
    torch.manual_seed(0)
    model, xs, ys = task("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctl = oialr.OIALR(model, opt, delay=50, update_freq=10, switch="stability")
    train(model, opt, ctl, xs, ys, 15)
    state = ctl.state_dict()
    assert state["polar"] and not any(s["converted_at"] for s in state["layers"].values())
    ctl2 = oialr.OIALR(
        model, torch.optim.SGD(model.parameters(), lr=0.05), 50, 10, 0.1, switch="stability"
    )
    ctl2.load_state_dict(state)
    assert ctl2.phase == "warm-up" and set(ctl2._polar) == set(ctl._polar)


def run_with(compact, steps=40):
    torch.manual_seed(0)
    model, xs, ys = task("mlp")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ctl = oialr.OIALR(model, opt, delay=10, update_freq=10, sigma_cutoff=0.6, compact=compact)
    events = []
    for i in range(steps):
        j = (i * 64) % len(xs)
        F.cross_entropy(model(xs[j : j + 64]), ys[j : j + 64]).backward()
        opt.step()
        opt.zero_grad()
        events.append(ctl.step())
    return model.eval(), opt, ctl, xs, events


def test_compaction_is_a_pure_storage_change():
    """Same run with and without compaction: same ranks, same function; only storage shrinks."""
    padded, _, ctl_padded, xs, _ = run_with(compact=False)
    model, opt, ctl, _, events = run_with(compact=True)
    assert ctl.ranks() == ctl_padded.ranks() and min(ctl.ranks().values()) < 48
    torch.testing.assert_close(model(xs), padded(xs), atol=1e-4, rtol=1e-4)
    assert events.count("convert") >= 2, "conversion, then compaction(s) bring new Parameters"
    assert all(m.capacity == m.full_rank for m in ctl_padded.layers().values())
    compacted = [m for m in ctl.layers().values() if m.capacity < m.full_rank]
    assert compacted
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    for layer in ctl.layers().values():
        assert layer.sigma.shape == (layer.capacity,) * 2 and layer.u.shape[1] == layer.capacity
        assert 2 * layer.rank**2 > layer.capacity**2 or layer.capacity == layer.rank
        assert id(layer.sigma) in params
        state = opt.state[layer.sigma]
        assert state["exp_avg"].shape == layer.sigma.shape and state["step"] > 0


def test_torch_compile_keeps_its_graphs_through_rank_updates():
    """A rank cut changes no guard: only conversion and compactions (new shapes, which dynamo
    then treats as dynamic) compile again, however many updates there are."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    torch.manual_seed(0)
    model, xs, ys = task("mlp", n=512)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ctl = oialr.OIALR(model, opt, delay=10, update_freq=5, sigma_cutoff=0.2)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter)
    losses = train(compiled, opt, ctl, xs, ys, 80)
    updates = {r.step for r in ctl.history if r.event == "update"}
    cuts = {r.step for r in ctl.history if r.event == "update" and r.rank_after < r.rank_before}
    assert len(updates) == 14 and len(cuts) >= 8
    assert counter.frame_count <= 4, counter.frame_count  # dense, converted, ≤ 2 compactions
    with torch.no_grad():
        torch.testing.assert_close(compiled(xs), model(xs), atol=1e-5, rtol=1e-5)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "args, options, message",
    [
        ((None,), {}, "optimizer must be a torch.optim.Optimizer, got NoneType"),
        (("params",), {}, "optimizer must be a torch.optim.Optimizer, got generator"),
        ((), {"delay": "100"}, "`delay`: must be a number, not str"),
        ((), {"delay": True}, "`delay`: must be a number, not bool"),
        ((), {"delay": 1.5}, "delay in steps must be a whole number"),
        (
            (),
            {"delay": 2, "delay_unit": "epochs"},
            "delay_unit='epochs' needs the run's steps_per_epoch",
        ),
        ((), {"cooldown_updates": 1.0}, "`cooldown_updates`: must be a whole number"),
        (
            (),
            {"sigma_cutoff": torch.tensor(0.1)},
            "`sigma_cutoff`: must be a number, not Tensor",
        ),
        ((), {"sigma_cutoff": float("nan")}, "`sigma_cutoff`: must be finite"),
        ((), {"update_freq": 0}, "`update_freq`: Input should be greater than 0"),
        ((), {"keep_last": "yes"}, "`keep_last`: Input should be a valid boolean"),
        ((), {"sigma_cut": 0.1}, "unknown option (a typo?)"),
    ],
)
def test_api_misuse_is_one_clear_error(args, options, message):
    model, _, _ = task("mlp")
    if args == ("params",):
        args = (model.parameters(),)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(oialr.ConfigError) as err:
        oialr.OIALR(model, *(args or (opt,)), **options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_model_is_managed_by_one_controller():
    model, _, _ = task("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    oialr.OIALR(model, opt, delay=0)
    with pytest.raises(oialr.ConfigError, match="already converted"):
        oialr.OIALR(model, opt, delay=0)


@pytest.mark.parametrize(
    "state, message",
    [
        ({}, "not an OIALR controller state (missing config, step"),
        ("model", "not an OIALR controller state"),
    ],
)
def test_load_state_dict_refuses_what_is_not_a_controller_state(state, message):
    model, _, _ = task("mlp")
    ctl = oialr.OIALR(model, torch.optim.SGD(model.parameters(), lr=0.1), delay=5)
    with pytest.raises(oialr.ConfigError) as err:
        ctl.load_state_dict(model.state_dict() if state == "model" else state)
    assert message in str(err.value)


def test_load_state_dict_refuses_a_state_from_another_model():
    model, _, _ = task("mlp")
    ctl = oialr.OIALR(model, torch.optim.SGD(model.parameters(), lr=0.1), delay=0)
    other, _, _ = task("cnn")
    ctl2 = oialr.OIALR(other, torch.optim.SGD(other.parameters(), lr=0.1), delay=5)
    with pytest.raises(oialr.ConfigError, match="other layers than this model's"):
        ctl2.load_state_dict(ctl.state_dict())


def test_from_state_dict_continues_on_a_model_loaded_first():
    """Frameworks load the model's weights before they build the optimizer: the controller then
    attaches to the already factorised model."""
    torch.manual_seed(0)
    model, xs, ys = task("mlp")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ctl = oialr.OIALR(model, opt, delay=5, update_freq=5, sigma_cutoff=0.3)
    train(model, opt, ctl, xs, ys, 12)
    saved = copy.deepcopy(
        {"model": model.state_dict(), "opt": opt.state_dict(), "oialr": ctl.state_dict()}
    )
    expected = train(model, opt, ctl, xs, ys, 6)

    torch.manual_seed(0)
    model2, _, _ = task("mlp")
    oialr.load_factorised(model2, saved["model"])  # the framework's weight load
    opt2 = torch.optim.AdamW(model2.parameters(), lr=3e-3)  # built over the factorised model
    opt2.load_state_dict(saved["opt"])
    ctl2 = oialr.OIALR.from_state_dict(model2, opt2, saved["oialr"])
    assert ctl2.ranks() == {n: m.rank for n, m in oialr.lowrank.factor_modules(model2).items()}
    assert train(model2, opt2, ctl2, xs, ys, 6) == expected
