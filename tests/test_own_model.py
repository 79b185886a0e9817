"""Your own model, dataset and training loop in a study, and a plain script recorded for the
dashboard: import strings, the custom objective, the loader's contract, and every way to get
them wrong (one line, exit 2, nothing written)."""

from __future__ import annotations

import sqlite3
import textwrap

import optuna
import pytest
from helpers import read
from optuna.trial import TrialState

from oialr.cli import main
from oialr.metrics_store import MetricsStore
from oialr.tracking import record

CODE = """
import gc
import math
import weakref
import torch
import torch.nn.functional as F
from torch import nn


def build(width=32, input_shape=None, num_classes=None):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),
                         nn.Linear(width, width), nn.ReLU(), nn.Linear(width, num_classes))


def load(seed=0, n=600, as_dataset=False):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, 12, generator=g)
    y = (x @ torch.randn(12, 3, generator=g)).argmax(1)
    train = (x[:480], y[:480])
    if as_dataset:
        train = torch.utils.data.TensorDataset(*train)
    return {"train": train, "test": (x[480:], y[480:])}


def train(run):
    cfg = run.config
    (x, y), (vx, vy) = load()["train"], load()["test"]
    torch.manual_seed(cfg.seed)
    model = build(**cfg.model_options, input_shape=(12,), num_classes=3)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    per_epoch = len(x) // cfg.batch_size
    ctl = run.oialr(model, opt, steps_per_epoch=per_epoch, total_steps=per_epoch * cfg.epochs)
    step = 0
    for _ in range(cfg.epochs):
        for i in range(per_epoch):
            batch = slice(i * cfg.batch_size, (i + 1) * cfg.batch_size)
            loss = F.cross_entropy(model(x[batch]), y[batch])
            loss.backward(); opt.step(); opt.zero_grad(); ctl.step()
            step += 1
            run.log(step, loss=loss.item())
        with torch.no_grad():
            run.epoch(val_acc=(model(vx).argmax(1) == vy).float().mean().item())
    return {"test_acc": 0.5}


SEEN = []  # per trial: were earlier trials' garbage cycles still alive, objects frozen
CYCLES = []


def cyclic(run):
    SEEN.append(([ref() is not None for ref in CYCLES], gc.get_freeze_count()))
    garbage = {"model": build(input_shape=(12,), num_classes=3)}
    garbage["self"] = garbage  # refcounting alone never frees it
    CYCLES.append(weakref.ref(garbage["model"]))
    return train(run)


def silent(run):
    run.oialr(build(input_shape=(12,), num_classes=3), None, total_steps=10)


def quiet(run):
    pass


def wrong_model(width=3):
    return "not a model"


def wrong_data(seed=0):
    return [1, 2, 3]


def float_labels(seed=0):
    x = torch.randn(40, 4)
    return {"train": (x, x[:, 0]), "test": (x, x[:, 0])}


def boom():
    raise RuntimeError("disk on fire")


not_callable = 42
"""

SPEC = """
name = "{name}"
[run]
model = "yours:build"
model_options = {{ width = 32 }}
dataset = "yours:load"
epochs = 3
batch_size = 32
lr = 3e-3
device = "cpu"
[search.delay]
low = 0.1
high = 0.4
unit = "fraction"
[search.update_freq]
low = 3
high = 8
unit = "steps"
[search.sigma_cutoff]
low = 0.2
high = 0.5
[sampler]
name = "random"
seed = 3
{extra}
[budget]
n_trials = {n_trials}
failures_in_a_row = 2
"""


@pytest.fixture
def yours(tmp_path, monkeypatch):
    """The user's module, importable as ``yours`` (by this process and by the CLI it runs)."""
    (tmp_path / "yours.py").write_text(textwrap.dedent(CODE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def spec(path, name, n_trials=3, extra="", **replace):
    text = SPEC.format(name=name, n_trials=n_trials, extra=extra)
    for old, new in replace.items():
        text = text.replace(old, new)
    file = path / f"{name}.toml"
    file.write_text(text)
    return str(file)


def study_of(url, name):
    return optuna.load_study(study_name=name, storage=url)


def test_a_study_trains_your_model_on_your_data(yours):
    url = f"sqlite:///{yours / 's.db'}"
    assert main(["study", "run", spec(yours, "imported"), "--storage", url, "--quiet"]) == 0
    trials = study_of(url, "imported").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    with MetricsStore(url) as store:
        runs = read(store).latest_runs("imported")
        assert list(runs["model"]) == ["yours:build"] * 3
        oialr_run = int(runs.loc[runs["mode"] == "oialr", "id"].iloc[0])
        layers = read(store).metrics("layers", oialr_run)
    assert {"convert", "update"} <= set(layers["event"]) and (layers["rank_after"] < 32).any()
    assert trials[1].user_attrs["trainable_fraction"] < 1.0


def test_your_own_loop_prunes_and_a_silent_loop_fails_with_the_reason(yours):
    url = f"sqlite:///{yours / 'loop.db'}"
    extra = '[objective]\nkind = "accuracy"\ntrain = "yours:train"\n[pruner]\nname = "median"\n'
    path = spec(yours, "loop", n_trials=8, extra=extra)
    assert main(["study", "run", path, "--storage", url, "--quiet"]) == 0
    trials = study_of(url, "loop").trials
    states = {t.state for t in trials}
    assert TrialState.COMPLETE in states and TrialState.PRUNED in states, [t.state for t in trials]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert all(t.user_attrs["val_acc"] == t.value and t.user_attrs["test_acc"] == 0.5 for t in done)
    assert "yours:train with delay=" in done[-1].user_attrs["command"]
    with MetricsStore(url) as store:
        runs = read(store).latest_runs("loop")
        pruned = runs[runs["status"] == "pruned"]
        assert len(pruned) and not runs["status"].eq("running").any()
        layers = read(store).metrics("layers", int(runs["id"].iloc[-1]))
    assert "update" in set(layers["event"])

    for loop, reason in (
        ("quiet", "reported no epoch"),
        ("silent", "optimizer must be a torch.optim"),
    ):
        name = f"{loop}-loop"
        path = spec(yours, name, n_trials=5, extra=f'[objective]\ntrain = "yours:{loop}"\n')
        # every trial fails alike: the study stops after two, with the reason, not forever
        assert main(["study", "run", path, "--storage", url, "--quiet"]) == 2
        trials = study_of(url, name).trials
        assert len(trials) < 5 and all(t.state == TrialState.FAIL for t in trials)
        assert all(reason in t.user_attrs["fail_reason"] for t in trials[-2:]), trials[
            -1
        ].user_attrs


def test_a_workers_trials_leave_no_garbage_and_the_worker_leaves_the_collector_as_it_was(yours):
    import gc

    url = f"sqlite:///{yours / 'gc.db'}"
    path = spec(yours, "gc", n_trials=4, extra='[objective]\ntrain = "yours:cyclic"\n')
    assert main(["study", "run", path, "--storage", url, "--quiet"]) == 0
    import yours as module

    # each trial starts with the earlier trials' cyclic garbage collected, while what the worker
    # held before its first trial sits frozen out of those collections
    assert [alive for alive, _ in module.SEEN] == [[], [False], [False] * 2, [False] * 3]
    assert all(frozen > 10_000 for _, frozen in module.SEEN)
    assert gc.get_freeze_count() == 0


def test_the_dashboard_shows_imported_trials_as_built_in_ones(yours, monkeypatch):
    import streamlit as st
    from app_fixtures import open_page

    url = f"sqlite:///{yours / 'app.db'}"
    assert main(["study", "run", spec(yours, "shown"), "--storage", url, "--quiet"]) == 0
    for page in ("pareto", "trial"):
        st.cache_data.clear()
        st.cache_resource.clear()  # another test's figures and engines
        at = open_page(monkeypatch, url, page, trial="1")
        assert not at.exception, (page, at.exception)
        assert at.get("plotly_chart"), (page, [w.value for w in at.warning])
    st.cache_resource.clear()


BAD = [
    ('model = "yours:build"', 'model = "nosuch:build"', "'nosuch' is neither a prefix (tv:, timm:) nor a module"),
    ('model = "yours:build"', 'model = "yours:missing"', "'yours' has no 'missing'"),
    ('model = "yours:build"', 'model = "yours:not_callable"', "is a int, not a function"),
    ('model = "yours:build"', 'model = "yours:boom_import"', "has no 'boom_import'"),
    ('model = "yours:build"', 'model = "yours:wrong_model"', "returned a str, not a torch.nn.Module"),
    ('model = "yours:build"', 'model = "yours."', "unknown model 'yours.'"),
    ('model_options = { width = 32 }', 'model_options = { depth = 3 }', "unexpected keyword argument 'depth'"),
    ('dataset = "yours:load"', 'dataset = "nosuch.data:load"', "cannot import 'nosuch.data'"),
    ('dataset = "yours:load"', 'dataset = "yours:wrong_data"', "returned a list"),
    ('dataset = "yours:load"', 'dataset = "yours:float_labels"', "labels must be a 1-d tensor of integer classes"),
    ('dataset = "yours:load"', 'dataset = "yours:boom"', "disk on fire"),
    ('dataset = "yours:load"', 'dataset = "yours:load"\ndataset_options = { shuffle = true }', "unexpected keyword argument 'shuffle'"),
    ('dataset = "yours:load"', 'dataset = "fashion-mnist"\ndataset_options = { n = 3 }', "dataset_options are for your own loader"),
    ("[budget]", '[objective]\ntrain = "yours:nothing"\n[budget]', "'yours' has no 'nothing'"),
    ("[budget]", '[objective]\ntrain = "not an import"\n[budget]', "is not an import string"),
]  # fmt: skip


def dump(path):
    """A SQLite file's logical content (empty when there is no file)."""
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


@pytest.mark.parametrize(("old", "new", "message"), BAD, ids=[m for _, _, m in BAD])
def test_bad_import_strings_are_one_line_exit_2_and_nothing_written(
    yours, capsys, old, new, message
):
    db, path = yours / "bad.db", spec(yours, "bad", **{old: new})
    before = sorted(p.name for p in yours.iterdir())
    code = main(["study", "run", path, "--storage", f"sqlite:///{db}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not db.exists() and sorted(p.name for p in yours.iterdir()) == before


def test_a_plain_script_records_a_run_the_reader_shows(yours):
    import torch

    url = f"sqlite:///{yours / 'script.db'}"
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 24), torch.nn.ReLU(), torch.nn.Linear(24, 24), torch.nn.Linear(24, 2)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    with record(url, name="mine", model="mlp-24", dataset="noise", epochs=2) as run:
        ctl = run.oialr(model, opt, delay=5, update_freq=5, sigma_cutoff=0.3)
        for step in range(1, 21):
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            ctl.step()
            run.log(step, loss=1.0)
            if step % 10 == 0:
                run.epoch(val_acc=0.5)
    with MetricsStore(url) as store:
        reader = read(store)
        row = reader.run(run.result.run_id)
        assert (row["name"], row["model"], row["status"], row["conversion_step"]) == (
            "mine",
            "mlp-24",
            "complete",
            5,
        )
        assert (
            len(reader.metrics("epochs", row["id"])) == 2
            and len(reader.metrics("steps", row["id"])) == 20
        )
        assert "update" in set(reader.metrics("layers", row["id"])["event"])
