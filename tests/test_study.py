"""Studies end to end through the real CLI: SQLite, PostgreSQL with workers, pruning."""

import json
from pathlib import Path

import optuna
import pytest
from helpers import cli as oialr
from helpers import read
from optuna.trial import TrialState

from oialr.metrics_store import MetricsStore

ROOT = Path(__file__).parent.parent
TINY = Path(__file__).parent / "specs" / "tiny.toml"


def write_spec(tmp_path, text, name="spec.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.slow
def test_quickstart_study_on_sqlite(tmp_path):
    db = f"sqlite:///{tmp_path / 'oialr.db'}"
    done = oialr("study", "run", "studies/quickstart.toml", "--storage", db, "--n-trials", "5")
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="quickstart", storage=db)
    trials = study.get_trials()
    modes = [t.user_attrs["mode"] for t in trials]
    assert modes[:3] == ["dense", "fixed-rank", "fixed-rank"] and modes.count("oialr") == 2
    assert all(t.state == TrialState.COMPLETE for t in trials)
    dense = trials[0]
    assert dense.values[1] == 1.0 and dense.user_attrs["test_acc"] > 0.75  # real Fashion-MNIST
    fixed = [t for t in trials if t.user_attrs["mode"] == "fixed-rank"]
    assert all(t.values[1] < 0.3 for t in fixed), "fixed-rank baselines really converted"
    assert study.best_trials
    runs = read(MetricsStore(db)).runs(study_name="quickstart")
    assert sorted(runs["trial_number"]) == [t.number for t in trials]
    for t in trials:
        run_id = t.user_attrs["run_id"]
        assert not read(MetricsStore(db)).metrics("epochs", run_id).empty

    show = oialr("study", "show", "quickstart", "--storage", db)
    assert show.returncode == 0 and "dense" in show.stdout and "★" in show.stdout
    best = oialr("study", "best", "quickstart", "--storage", db)
    assert best.returncode == 0 and "oialr train --model mlp" in best.stdout
    assert best.stdout.count("oialr train") == len(study.best_trials)
    exported = oialr("study", "export", "quickstart", "--storage", db, "--format", "json")
    rows = json.loads(exported.stdout)
    assert len(rows) == 5 and {"values_0", "values_1", "user_attrs_mode"} <= rows[0].keys()
    out = tmp_path / "trials.csv"
    csv = oialr("study", "export", "quickstart", "--storage", db, "--output", str(out))
    assert csv.returncode == 0 and out.read_text().count("\n") == 6
    listed = oialr("study", "list", "--storage", db)
    assert "quickstart" in listed.stdout and "val_acc, trainable_fraction" in listed.stdout
    # running the command again continues the study instead of starting over
    again = oialr("study", "run", "studies/quickstart.toml", "--storage", db, "--n-trials", "5")
    assert (
        again.returncode == 0
        and len(optuna.load_study(study_name="quickstart", storage=db).trials) == 5
    )


@pytest.mark.slow
def test_single_objective_study_prunes(tmp_path):
    spec = TINY.read_text().replace('name = "tiny"', 'name = "pruned"\n')
    spec = spec.replace("epochs = 3", "epochs = 6").replace("n_trials = 6", "n_trials = 10")
    spec += '\n[objective]\nkind = "accuracy"\n\n[pruner]\nname = "median"\n'
    spec = spec.replace(
        "[search.sigma_cutoff]",
        "[search.lr]\nlow = 1e-6\nhigh = 0.3\nlog = true\n\n[search.sigma_cutoff]",
    )
    spec = spec.replace('name = "random"', 'name = "tpe"')
    db = f"sqlite:///{tmp_path / 'p.db'}"
    done = oialr("study", "run", str(write_spec(tmp_path, spec)), "--storage", db)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = optuna.load_study(study_name="pruned", storage=db).get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.state, t.params) for t in trials]
    runs = read(MetricsStore(db)).runs(study_name="pruned").set_index("trial_number")
    for t in pruned:
        assert runs.loc[t.number, "status"] == "pruned"
        assert len(read(MetricsStore(db)).metrics("epochs", int(runs.loc[t.number, "id"]))) < 6
