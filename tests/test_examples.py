"""The examples run as the README says, and every snippet of its "Your own model" section is
what the example files contain (so the README cannot drift from code that is tested)."""

from __future__ import annotations

import re
import runpy
import textwrap

import optuna
import pytest
import torch
from helpers import REPO, cli, env_with_repo, read
from optuna.trial import TrialState

from oialr.metrics_store import MetricsStore

EXAMPLES = REPO / "examples"


def section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"## {title}")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_every_snippet_of_the_readme_section_is_in_an_example():
    sources = "\n".join(p.read_text() for p in EXAMPLES.rglob("*") if p.suffix in (".py", ".toml"))
    blocks = re.findall(r"```(?:python|toml)\n(.*?)```", section("Your own model"), re.S)
    assert len(blocks) >= 7
    for block in blocks:
        assert (
            textwrap.dedent(block).strip() in textwrap.dedent(sources) or block.strip() in sources
        ), block


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("spec, kind", [("study.toml", "pareto"), ("own_loop.toml", "accuracy")])
def test_the_own_model_studies_run(spec, kind, tmp_path):
    url = f"sqlite:///{tmp_path / 'own.db'}"
    env = env_with_repo(PYTHONPATH=f"{EXAMPLES / 'own_model'}")
    done = cli(
        "study", "run", str(EXAMPLES / "own_model" / spec), "--storage", url, "--quiet", env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    name = "own-model" if spec == "study.toml" else "own-loop"
    trials = optuna.load_study(study_name=name, storage=url).trials
    assert trials[0].user_attrs["mode"] == "dense"
    done_trials = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done_trials) >= 3
    assert min(t.user_attrs["trainable_fraction"] for t in done_trials) < 0.5, "ranks fell"
    with MetricsStore(url) as store:
        runs = read(store).latest_runs(name)
        assert (runs["status"] != "running").all()


@pytest.mark.parametrize(
    "script, expect",
    [
        ("hf_trainer.py", "transformer.h.0.attn.c_attn"),
        ("lightning_cnn.py", "net.0"),
        ("record_script.py", None),
    ],
)
def test_the_script_examples_train_and_record(script, expect, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'ex.db'}"
    argv = ["--storage", url] + (["--output", str(tmp_path / "out")] if expect else [])
    module = runpy.run_path(str(EXAMPLES / script))
    module["main"](argv)
    printed = capsys.readouterr().out
    assert "trainable" in printed and (expect is None or expect in printed)
    with MetricsStore(url) as store:
        run = read(store).runs().iloc[-1]
        assert run["status"] == "complete" and run["conversion_step"] > 0
        layers = read(store).metrics("layers", int(run["id"]))
        assert (layers["rank_after"] < layers["rank_before"]).any(), "ranks fell"
