"""Bad input is refused before anything runs or is written: exit 2, one line, no traceback, and
the storage (compared by its logical dump) and the folder exactly as they were."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
import torch

from oialr.cli import main

SPECS = Path(__file__).parent / "specs"
TRAIN = ["train", "--model", "mlp", "--model-options", "widths=[16]", "--dataset", "synthetic",
         "--epochs", "1", "--device", "cpu"]  # fmt: skip
STUDY = ["study", "run", "tiny.toml", "--storage", "sqlite:///s.db", "--quiet"]


def replace(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``value`` after ``flag``."""
    i = argv.index(flag)
    return [*argv[: i + 1], value, *argv[i + 2 :]]


def swap(argv: list[str], old: str, new: str) -> list[str]:
    return [new if a == old else a for a in argv]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Path:
    """A folder holding a spec, a storage with one finished study, a foreign database and the
    odd files the cases point at."""
    folder = tmp_path_factory.mktemp("seeded")
    (folder / "tiny.toml").write_text((SPECS / "tiny.toml").read_text())
    argv = [*STUDY, "--set", "run.epochs=1", "--set", "budget.n_trials=3", "--no-warmup-cache"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        assert main(argv) == 0
    for name, table in (("foreign.db", "users"), ("other.db", "t")):
        with sqlite3.connect(folder / name) as conn:
            conn.execute(f"CREATE TABLE {table} (id INTEGER)")
    (folder / "binary.toml").write_bytes(b"\xff\xfe\x00 not text")
    (folder / "deep.toml").write_text("x = " + "[" * 3000 + "]" * 3000 + "\n")
    (folder / "a-file").write_text("not a folder")
    (folder / "foreign-ckpt").mkdir()
    torch.save({"weights": torch.zeros(2)}, folder / "foreign-ckpt" / "checkpoint.pt")
    (folder / "empty.toml").write_text(
        (SPECS / "tiny.toml").read_text().split("[search.delay]")[0] + "[budget]\nn_trials = 2\n"
    )
    return folder


def state(folder: Path) -> dict:
    """Every file by name, every SQLite database by its logical dump (bytes would differ)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".db":
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                files[str(path.relative_to(folder))] = list(conn.iterdump())
        elif path.is_file() and not path.name.endswith(("-wal", "-shm")):
            files[str(path.relative_to(folder))] = path.stat().st_size
        elif path.is_dir():
            files[str(path.relative_to(folder))] = "dir"
    return files


def work_copy(seeded: Path, tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "work"
    shutil.copytree(seeded, folder)
    monkeypatch.chdir(folder)
    return folder


def assert_refused(folder: Path, argv: list[str], message: str, capsys) -> None:
    before = state(folder)
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err
    assert state(folder) == before, "a refused command changed the storage or the folder"


TRAIN_CASES = [
    (replace(TRAIN, "--device", "mps"), "unknown device 'mps'"),
    (replace(TRAIN, "--device", "garbage"), "unknown device 'garbage'"),
    (replace(TRAIN, "--device", "cuda:x"), "unknown device 'cuda:x'"),
    (replace(TRAIN, "--device", "cuda"), "no CUDA device"),
    (replace(TRAIN, "--device", "cuda:3"), "no CUDA device"),
    ([*TRAIN, "--delay", "inf"], "--delay: must be finite"),
    ([*TRAIN, "--update-freq", "inf"], "--update-freq: must be finite"),
    ([*TRAIN, "--sigma-cutoff", "nan"], "--sigma-cutoff: must be finite"),
    (replace(TRAIN, "--model-options", "widths=a"), "model 'mlp': bad option value"),
    (replace(TRAIN, "--model-options", "depth=3"), "model 'mlp' has no option 'depth'"),
    (replace(TRAIN, "--model-options", "widths"), "expected KEY=VALUE"),
    (replace(TRAIN, "--model", "nope:resnet18"), "unknown model 'nope:resnet18'"),
    ([*TRAIN, "--storage", "sqlite:///x.db?timeout=abc"], "malformed storage URL"),
    ([*TRAIN, "--storage", "notaurl"], "malformed storage URL"),
    ([*TRAIN, "--storage", "sqlite:///foreign.db"], "belongs to another application"),
    ([*TRAIN, "--storage", "sqlite:///binary.toml"], "not a SQLite database"),
    ([*TRAIN, "--config", "."], "--config .: a folder"),
    ([*TRAIN, "--config", "binary.toml"], "not a text file"),
    ([*TRAIN, "--config", "deep.toml"], "not valid TOML"),
    ([*TRAIN, "--config", "missing.toml"], "no such file"),
    ([*TRAIN, "--checkpoint-dir", "a-file"], "is a file; give a folder"),
    ([*TRAIN, "--name", "../../escaped"], "must be a plain name"),
    ([*TRAIN, "--name", "a/b"], "must be a plain name"),
    ([*TRAIN, "--name", ".."], "must be a plain name"),
    ([*TRAIN, "--resume", "--checkpoint-dir", "nowhere"], "--resume: no checkpoint"),
    ([*TRAIN, "--resume", "--checkpoint-dir", "foreign-ckpt"], "not an oialr checkpoint"),
    ([*TRAIN, "--batch-size", "100000"], "larger than the training set"),
    ([*TRAIN, "--pad-to", "2"], "pad_to=2"),
    ([*TRAIN, "--epochs", "0"], "--epochs"),
    ([*TRAIN, "--lr", "-1"], "--lr"),
    ([*TRAIN, "--fixed-rank", "0.5"], "fixed_rank is for mode 'fixed-rank'"),
    (["train", "--dataset", "cifar10", "--data-dir", "nowhere", "--device", "cpu"], "cifar10"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), TRAIN_CASES, ids=[m for _, m in TRAIN_CASES])
def test_train_refuses_before_writing(argv, message, seeded, tmp_path, capsys, monkeypatch):
    assert_refused(work_copy(seeded, tmp_path, monkeypatch), argv, message, capsys)


def test_resume_from_another_runs_checkpoint_is_refused(seeded, tmp_path, capsys, monkeypatch):
    folder = work_copy(seeded, tmp_path, monkeypatch)
    other = replace(TRAIN, "--model-options", "widths=[8]")
    assert main([*other, "--no-store", "--quiet", "--checkpoint-dir", "ck"]) == 0
    capsys.readouterr()
    argv = [*TRAIN, "--resume", "--checkpoint-dir", "ck"]
    assert_refused(folder, argv, "is of another run (model_options", capsys)


STUDY_CASES = [
    ([*STUDY, "--n-trials", "0"], "--n-trials 0"),
    ([*STUDY, "--n-trials", "-3"], "--n-trials -3"),
    ([*STUDY, "--workers", "0"], "--workers 0"),
    ([*STUDY, "--workers", "-1"], "--workers -1"),
    ([*STUDY, "--timeout", "-1"], "--timeout"),
    ([*STUDY, "--timeout", "nan"], "--timeout nan"),
    ([*STUDY, "--timeout", "0"], "--timeout"),
    ([*STUDY, "--heartbeat", "0"], "--heartbeat 0"),
    ([*STUDY, "--gpus", "abc"], "--gpus 'abc'"),
    ([*STUDY, "--gpus", "0,x"], "--gpus '0,x'"),
    ([*STUDY, "--gpus", "0"], "no CUDA GPU"),
    (swap(STUDY, "tiny.toml", "deep.toml"), "nested too deeply"),
    (swap(STUDY, "tiny.toml", "binary.toml"), "not a text file"),
    (swap(STUDY, "tiny.toml", "empty.toml"), "searches nothing"),
    (swap(STUDY, "tiny.toml", "."), "no such spec file"),
    ([*STUDY, "--set", "search.lr={low=-1, high=0.1}"], "`search.lr.low`"),
    ([*STUDY, "--set", "search.batch_size={low=0, high=64}"], "`search.batch_size.low`"),
    ([*STUDY, "--set", "search.batch_size={low=16.5, high=64}"], "batch_size takes whole numbers"),
    ([*STUDY, "--set", "search.update_freq={low=4.5, high=12}"], "update_freq takes steps"),
    ([*STUDY, "--set", "search.optimizer={choices=['adamw', 'lion']}"], "`search.optimizer.choices[1]`"),
    ([*STUDY, "--set", "run.device='cuda'"], "no CUDA device"),
    ([*STUDY, "--set", "run.device='mps'"], "unknown device 'mps'"),
    ([*STUDY, "--set", "run.model_options={widths='a'}"], "bad option value"),
    ([*STUDY, "--set", "run.batch_size=100000"], "larger than the training set"),
    ([*STUDY, "--set", "run.pad_to=2"], "pad_to=2"),
    (swap(STUDY, "sqlite:///s.db", "sqlite:///foreign.db"), "belongs to another application"),
    (swap(STUDY, "sqlite:///s.db", "sqlite:///x.db?timeout=abc"), "malformed storage URL"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), STUDY_CASES, ids=[m for _, m in STUDY_CASES])
def test_study_run_refuses_before_writing(argv, message, seeded, tmp_path, capsys, monkeypatch):
    assert_refused(work_copy(seeded, tmp_path, monkeypatch), argv, message, capsys)


EXPORT = ["study", "export", "tiny", "--storage", "sqlite:///s.db", "--output"]
READ_CASES = [
    ([*EXPORT, "s.db"], "is the storage itself"),
    ([*EXPORT, "./s.db"], "is the storage itself"),
    ([*EXPORT, "other.db"], "is a database; exports never overwrite one"),
    ([*EXPORT, "foreign.db"], "is a database"),
    ([*EXPORT, "."], "is a folder"),
    ([*EXPORT, "foreign-ckpt"], "is a folder"),
    ([*EXPORT, "nowhere/trials.csv"], "no folder nowhere"),
    *[
        (["study", command, *(["tiny"] if command != "list" else []), "--storage", storage], message)
        for command in ("list", "show", "best", "export")
        for storage, message in (
            ("sqlite:///missing.db", "no such database file"),
            ("sqlite:///foreign.db", "holds no studies"),
            ("sqlite:///binary.toml", "not a SQLite database"),
        )
    ],
    (["study", "show", "nosuch", "--storage", "sqlite:///s.db"], "'nosuch' is not in"),
    (["study", "delete", "nosuch", "--storage", "sqlite:///s.db", "--yes"], "'nosuch' is not in"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"), READ_CASES, ids=[f"{a[1]}: {m}" for a, m in READ_CASES]
)
def test_read_only_commands_create_and_overwrite_nothing(
    argv, message, seeded, tmp_path, capsys, monkeypatch
):
    assert_refused(work_copy(seeded, tmp_path, monkeypatch), argv, message, capsys)


def test_export_replaces_its_own_file_whole(seeded, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(seeded)
    target = tmp_path / "trials.csv"
    target.write_text("an older export\n")
    assert main([*EXPORT, str(target)]) == 0
    lines = target.read_text().splitlines()
    assert lines[0].startswith("number,") and len(lines) == 1 + 3
    assert [p.name for p in tmp_path.iterdir()] == ["trials.csv"], "no temporary file left"


def test_foreign_database_is_used_when_asked(seeded, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(seeded / "foreign.db", tmp_path / "app.db")
    argv = [*TRAIN, "--storage", "sqlite:///app.db", "--quiet", "--allow-foreign-database"]
    assert main(argv) == 0
    with sqlite3.connect(tmp_path / "app.db") as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert {"users", "oialr_runs"} <= tables, "their table kept, ours beside it"
