"""Study specs: every bad spec or argument is one line naming the field, exit 2, nothing written."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oialr.cli import main
from oialr.errors import ConfigError
from oialr.spec import load_spec, parse_spec

TINY = (Path(__file__).parent / "specs" / "tiny.toml").read_text()


def edit(old: str, new: str) -> str:
    assert old in TINY, old
    return TINY.replace(old, new, 1)


BAD_SPECS = [
    ('nmae = "x"\n' + TINY, "`nmae`: unknown option"),
    (edit('name = "tiny"', ""), "`name`: Field required"),
    (edit('name = "tiny"', 'name = "my study!"'), "`name`"),
    (edit("low = 5\nhigh = 20", "low = 20\nhigh = 5"), "low (20) must be below high (5)"),
    (edit("low = 0.05\nhigh = 0.5\nlog = true", "low = 0\nhigh = 0.5\nlog = true"), "log=true needs low > 0"),
    (TINY + "\n[search.dropout]\nlow = 0.1\nhigh = 0.5\n", "`search.dropout`: cannot be tuned"),
    (edit("high = 0.5\nlog = true", 'high = 0.5\nlog = true\nunit = "steps"'), "`search.sigma_cutoff.unit`"),
    (edit("high = 0.5\nunit = \"fraction\"", 'high = 1.5\nunit = "fraction"'), "`search.delay.high`"),
    (edit('unit = "fraction"', 'unit = "hours"'), "`search.delay.unit`"),
    (edit("low = 0.1\nhigh = 0.5", 'low = "ten"\nhigh = 0.5'), "`search.delay.low`"),
    (TINY + '\n[search.switch]\nchoices = ["delay"]\nlow = 1\nhigh = 2\n', "either choices or low/high"),
    (TINY + "\n[search.switch]\nchoices = []\n", "`search.switch.choices`"),
    (TINY + '\n[objective]\nkind = "speed"\n', "`objective.kind`"),
    (TINY + '\n[objective]\nkind = "accuracy"\nthird = "wall_time"\n', "`third`"),
    (TINY + '\n[pruner]\nname = "median"\n', "`pruner.name`: pruning needs objective.kind"),
    (edit('name = "random"', 'name = "cmaes"'), "`sampler.name`"),
    (edit("n_trials = 6", "n_trials = 0"), "`budget.n_trials`"),
    (edit("n_trials = 6", "n_trials = 6\ntimeout = -5"), "`budget.timeout`"),
    (edit('model = "mlp"', 'model = "gpt9"'), "`run.model`: unknown model 'gpt9'"),
    (edit('dataset = "synthetic"', 'dataset = "mnist-3d"'), "`run.dataset`: unknown dataset"),
    (edit("epochs = 3", 'epochs = "many"'), "`run.epochs`"),
    (edit("epochs = 3", 'epochs = 3\nmode = "dense"'), "`run.mode`: is set by the study itself"),
    (edit("epochs = 3", 'epochs = 3\nlr_schedule = "step"'), "lr_schedule"),
    (edit("fixed_rank = [0.25]", "fixed_rank = [1.5]"), "fixed_rank fractions must lie in (0, 1]"),
    ("seeds = 0\n" + TINY, "`seeds`"),
    (TINY + "\n[search.max_cut_per_update]\nlow = 0.2\nhigh = 1.5\n", "`search.max_cut_per_update.high`"),
    (TINY + '\n[search.switch]\nchoices = ["delay"]\n[search.lr]\nlow = 1e-4\nhigh = 1e-2\nlog = true\nstep = 1e-4\n', "log and step"),
    (TINY + '\n[objective]\nkind = "accuracy"\nmax_trainable_fraction = 0.2\n', "`sampler.name`: max_trainable_fraction needs"),
    ("name = \n", "not valid TOML"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), BAD_SPECS, ids=[m[:40] for _, m in BAD_SPECS])
def test_bad_spec_is_one_line_exit_2_and_writes_nothing(
    text, message, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    db = tmp_path / "study.db"
    assert main(["study", "run", str(spec), "--storage", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err, err
    assert str(spec) in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not db.exists() and not (tmp_path / "oialr.db").exists()


BAD_ARGS = [
    (["study", "run", "/nonexistent/spec.toml"], "no such spec file"),
    (["study", "run", "{tiny}", "--storage", "notaurl"], "notaurl"),
    (["study", "run", "{tiny}", "--storage", "sqlte:///x.db"], "sqlte"),
    (["study", "run", "{tiny}", "--storage", "sqlite:////nonexistent/dir/x.db"], "/nonexistent/dir"),
    (["study", "run", "{tiny}", "--storage", "postgresql+psycopg://u:secret@127.0.0.1:1/x"], "***"),
    (["study", "show", "tiny", "--storage", "sqlite:///{tmp}/missing.db"], "no such database file"),
    (["study", "best", "nosuch", "--storage", "sqlite:///{tmp}/empty.db"], "holds no studies"),
    (["study", "delete", "nosuch", "--storage", "sqlite:///{tmp}/empty.db"], "holds no studies"),
    (["study", "run", "{tiny}", "--set", "run.epochs"], "expected KEY=VALUE"),
    (["study", "run", "{tiny}", "--set", "run.epochs=-1"], "`run.epochs`"),
    (["study", "run", "{tiny}", "--set", "name.x=1"], "'name' is not a table"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), BAD_ARGS, ids=[m for _, m in BAD_ARGS])
def test_bad_arguments_are_one_line_and_exit_2(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    if any("empty.db" in a for a in argv):
        from oialr.metrics_store import MetricsStore

        MetricsStore(f"sqlite:///{tmp_path}/empty.db").close()
    argv = [a.format(tiny=tmp_path / "tiny.toml", tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert "secret" not in err
    assert not (tmp_path / "oialr.db").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["study", "export", "x", "--format", "xml"],
        ["study", "run", "s.toml", "--workers", "two"],
        ["train", "--mode", "sparse"],
    ],
)
def test_malformed_command_lines_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "invalid" in capsys.readouterr().err


def test_overrides_change_the_spec(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    spec = load_spec(path, ["run.epochs=7", "budget.n_trials=3", 'objective.kind="accuracy"'])
    assert (
        spec.run["epochs"] == 7 and spec.budget.n_trials == 3 and spec.objective.kind == "accuracy"
    )


def test_shipped_specs_are_valid():
    studies = sorted(Path(__file__).parent.parent.glob("studies/*.toml"))
    assert studies
    for path in studies:
        spec = load_spec(path)
        assert spec.name == path.stem and spec.search


ranges = st.tuples(st.floats(-10, 10, allow_nan=False), st.floats(-10, 10, allow_nan=False))


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(
        ["delay", "update_freq", "sigma_cutoff", "lr", "max_cut_per_update", "dropout"]
    ),
    bounds=ranges,
    log=st.booleans(),
    unit=st.sampled_from([None, "steps", "epochs", "fraction", "hours"]),
)
def test_spec_parser_accepts_only_sound_ranges(name, bounds, log, unit):
    """Property: the parser either returns a spec whose range is usable by Optuna, or raises a
    ConfigError naming the parameter; never anything else."""
    param = {"low": bounds[0], "high": bounds[1], "log": log}
    if unit:
        param["unit"] = unit
    data = {"name": "p", "run": {"dataset": "synthetic"}, "search": {name: param}}
    try:
        spec = parse_spec(data)
    except ConfigError as err:
        assert f"search.{name}" in str(err) or "`search`" in str(err), str(err)
        return
    p = spec.search[name]
    assert p.low < p.high and (not p.log or p.low > 0) and name != "dropout"
    assert p.unit is None or (name in ("delay", "update_freq") and p.unit != "hours")
