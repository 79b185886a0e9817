"""Tests of the metrics store on SQLite files (PostgreSQL is covered by the postgres fixture)."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import optuna
import pandas as pd
import pytest
import sqlalchemy as sa
from helpers import LAYER_RECORD, REPO, open_stores_at_once, read

from oialr.errors import ConfigError, StorageError
from oialr.metrics_schema import SCHEMA_VERSION, make_engine
from oialr.metrics_store import MetricsStore
from oialr.vocab import mask_url

STEP_COLUMNS = ["id", "run_id", "step", "loss", "lr", "step_time"]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'oialr.db'}"


@pytest.fixture
def store(url: str):
    with MetricsStore(url) as s:
        yield s


def new_run(store: MetricsStore, **overrides) -> int:
    kwargs = dict(name="r", mode="oialr", model="mlp", dataset="mnist", config={"lr": 0.1})
    kwargs.update(overrides)
    return store.create_run(**kwargs)


# -- round trips -------------------------------------------------------------------------------


def test_run_round_trip(store: MetricsStore) -> None:
    config = {"lr": 0.1, "nested": {"a": [1, 2]}}
    run_id = new_run(store, config=config, study_name="s", trial_number=3, trial_id=7)
    run = read(store).run(run_id)
    assert run["config"] == config
    assert (run["status"], run["study_name"], run["trial_number"], run["trial_id"]) == (
        "running",
        "s",
        3,
        7,
    )
    assert run["result"] is None and run["finished_at"] is None
    assert run["started_at"].tzinfo is not None
    assert abs((datetime.now(timezone.utc) - run["started_at"]).total_seconds()) < 60

    store.set_conversion_step(run_id, 120)
    store.finish_run(run_id, "complete", result={"val_acc": 0.91})
    run = read(store).run(run_id)
    assert run["conversion_step"] == 120
    assert run["status"] == "complete" and run["result"] == {"val_acc": 0.91}
    assert run["finished_at"] >= run["started_at"]

    failed = new_run(store)
    store.finish_run(failed, "failed", error="TrainingDiverged: loss is nan")
    frame = read(store).runs()
    assert list(frame["id"]) == [run_id, failed]
    assert frame.loc[1, "error"].startswith("TrainingDiverged")
    assert frame.loc[0, "config"] == config
    assert str(frame["started_at"].dtype).startswith("datetime64") and frame["started_at"].dt.tz


def test_metrics_round_trip(store: MetricsStore) -> None:
    run_id = new_run(store)
    store.log_step(run_id, 0, 2.3, 0.1, 0.01)
    store.log_step(run_id, 1, 2.1, 0.1, 0.02)
    store.log_epoch(
        run_id,
        epoch=0,
        step=2,
        train_loss=2.2,
        train_acc=0.3,
        val_loss=2.0,
        val_acc=0.35,
        trainable_fraction=1.0,
        stored_fraction=1.0,
        mean_rank=None,
        phase="warm-up",
        time=1.5,
    )
    store.log_layers(run_id, [LAYER_RECORD, {**LAYER_RECORD, "layer": "fc2", "event": "update"}])
    store.log_stability(run_id, 2, {"fc1": 0.99, "fc2": 0.95})
    store.flush()

    steps = read(store).metrics("steps", run_id)
    assert list(steps.columns) == STEP_COLUMNS
    assert steps[["step", "loss", "lr", "step_time"]].values.tolist() == [
        [0, 2.3, 0.1, 0.01],
        [1, 2.1, 0.1, 0.02],
    ]
    epoch = read(store).metrics("epochs", run_id).iloc[0]
    assert (epoch["epoch"], epoch["phase"], epoch["val_acc"], epoch["time"]) == (
        0,
        "warm-up",
        0.35,
        1.5,
    )
    assert epoch["mean_rank"] is None or math.isnan(epoch["mean_rank"])
    layers = read(store).metrics("layers", run_id)
    assert list(layers["layer"]) == ["fc1", "fc2"]
    first = layers.iloc[0]
    for key, value in LAYER_RECORD.items():
        assert first[key] == value, key
    assert read(store).metrics("stability", run_id)[
        ["step", "layer", "stability"]
    ].values.tolist() == [
        [2, "fc1", 0.99],
        [2, "fc2", 0.95],
    ]


def test_empty_frames_keep_columns(store: MetricsStore) -> None:
    assert list(read(store).metrics("steps", 999).columns) == STEP_COLUMNS
    assert (
        "sigma" in read(store).metrics("layers", 999).columns
        and read(store).metrics("layers", 999).empty
    )
    assert {"phase", "val_acc"} <= set(read(store).metrics("epochs", 999).columns)
    assert list(read(store).metrics("stability", 999).columns) == [
        "id",
        "run_id",
        "step",
        "layer",
        "stability",
    ]
    runs = read(store).runs(study_name="nope")
    assert runs.empty and {"config", "status", "started_at"} <= set(runs.columns)


def test_numpy_scalars_and_nan_are_accepted(store: MetricsStore) -> None:
    np = pytest.importorskip("numpy")
    run_id = new_run(store)
    store.log_step(run_id, np.int64(0), np.float32(float("nan")), np.float32(0.1), 0.01)
    store.log_epoch(run_id, epoch=np.int64(0), val_acc=np.float32(0.5))
    store.log_layers(run_id, [{**LAYER_RECORD, "sigma": np.array([2.0, 1.0], dtype="float32")}])
    store.flush()
    assert pd.isna(read(store).metrics("steps", run_id).loc[0, "loss"])
    assert read(store).metrics("epochs", run_id).loc[0, "val_acc"] == 0.5
    assert read(store).metrics("layers", run_id).loc[0, "sigma"] == [2.0, 1.0]


def test_unknown_values_are_refused(store: MetricsStore) -> None:
    run_id = new_run(store)
    with pytest.raises(ConfigError, match="val_accuracy"):
        store.log_epoch(run_id, val_accuracy=0.5)
    with pytest.raises(ConfigError, match="phase"):
        store.log_epoch(run_id, phase="warmup")
    with pytest.raises(ConfigError, match="event"):
        store.log_layers(run_id, [{**LAYER_RECORD, "event": "shrink"}])
    with pytest.raises(ConfigError, match="mode"):
        new_run(store, mode="lowrank")
    with pytest.raises(ConfigError, match="status"):
        store.finish_run(run_id, "done")
    with pytest.raises(StorageError, match="no run 999"):
        read(store).run(999)
    with pytest.raises(StorageError, match="no run 999"):
        store.set_conversion_step(999, 1)


# -- incremental reads and buffering -----------------------------------------------------------


def test_incremental_reads(store: MetricsStore) -> None:
    run_id, other = new_run(store), new_run(store)
    for step in range(5):
        store.log_step(run_id, step, 1.0, 0.1, 0.01)
        store.log_step(other, step, 9.0, 0.1, 0.01)
    store.flush()
    first = read(store).metrics("steps", run_id)
    assert list(first["step"]) == list(range(5)) and set(first["run_id"]) == {run_id}
    last_id = int(first["id"].iloc[-1])
    assert read(store).metrics("steps", run_id, last_id).empty

    store.log_step(run_id, 5, 1.0, 0.1, 0.01)
    store.log_layers(run_id, [LAYER_RECORD])
    store.flush()
    new = read(store).metrics("steps", run_id, last_id)
    assert list(new["step"]) == [5]
    layers = read(store).metrics("layers", run_id)
    assert read(store).metrics("layers", run_id, int(layers["id"].iloc[-1])).empty


def test_steps_are_buffered_until_flush_rows(url: str) -> None:
    writer = MetricsStore(url, flush_rows=10, flush_seconds=3600)
    reader = MetricsStore(url)
    run_id = new_run(writer)
    for step in range(9):
        writer.log_step(run_id, step, 1.0, 0.1, 0.01)
    assert read(reader).metrics("steps", run_id).empty
    writer.log_step(run_id, 9, 1.0, 0.1, 0.01)
    assert len(read(reader).metrics("steps", run_id)) == 10

    before = read(reader).run(run_id)["updated_at"]
    writer.log_stability(run_id, 10, {"fc1": 0.9})
    assert read(reader).metrics("stability", run_id).empty
    writer.log_epoch(run_id, epoch=0, step=10)  # epochs flush at once, with what is pending
    assert (
        len(read(reader).metrics("epochs", run_id)) == 1
        and len(read(reader).metrics("stability", run_id)) == 1
    )
    assert read(reader).run(run_id)["updated_at"] > before

    writer.log_step(run_id, 10, 1.0, 0.1, 0.01)
    writer.finish_run(run_id, "pruned")
    assert len(read(reader).metrics("steps", run_id)) == 11
    writer.log_step(run_id, 11, 1.0, 0.1, 0.01)
    writer.close()
    assert len(read(reader).metrics("steps", run_id)) == 12
    reader.close()


def test_steps_flush_after_flush_seconds(url: str) -> None:
    writer = MetricsStore(url, flush_rows=10_000, flush_seconds=0.05)
    run_id = new_run(writer)
    writer.log_step(run_id, 0, 1.0, 0.1, 0.01)
    time.sleep(0.1)
    writer.log_step(run_id, 1, 1.0, 0.1, 0.01)  # the time check happens on append
    assert len(read(MetricsStore(url)).metrics("steps", run_id)) == 2


def test_logging_steps_writes_one_transaction_per_flush(url: str) -> None:
    """A training step costs a buffer append: 20,000 steps at flush_rows=500 are 40 writes."""
    store = MetricsStore(url, flush_rows=500, flush_seconds=3600)
    run_id = new_run(store)
    commits = []
    sa.event.listen(store.engine, "commit", lambda conn: commits.append(1))
    for step in range(20_000):
        store.log_step(run_id, step, 1.0, 0.1, 0.01)
    assert len(commits) == 40
    store.close()
    assert len(commits) == 40  # nothing was left to flush
    assert len(read(store).metrics("steps", run_id)) == 20_000


# -- studies -----------------------------------------------------------------------------------


def test_runs_for_trials_and_delete(store: MetricsStore) -> None:
    retried_old = new_run(store, study_name="a", trial_number=0)
    retried_new = new_run(store, study_name="a", trial_number=0)
    single = new_run(store, study_name="a", trial_number=1)
    new_run(store, study_name="a")  # a run outside any trial
    kept = new_run(store, study_name="b", trial_number=0)
    for run_id in (retried_old, retried_new, kept):
        store.log_step(run_id, 0, 1.0, 0.1, 0.01)
        store.log_layers(run_id, [LAYER_RECORD])
        store.log_stability(run_id, 0, {"fc1": 1.0})
        store.log_epoch(run_id, epoch=0)

    latest = read(store).latest_runs("a")
    assert list(latest["trial_number"]) == [0, 1]
    assert list(latest["id"]) == [retried_new, single]
    assert read(store).latest_runs("missing").empty

    assert store.delete_study_runs("a") == 4
    assert list(read(store).runs()["id"]) == [kept]
    for table in ("steps", "epochs", "layers", "stability"):
        rows = read(store).metrics
        assert rows(table, retried_old).empty and rows(table, retried_new).empty
        assert len(rows(table, kept)) == 1
    assert store.delete_study_runs("a") == 0


@pytest.mark.parametrize("optuna_first", [True, False])
def test_coexists_with_optuna(url: str, optuna_first: bool) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if optuna_first:
        study = optuna.create_study(storage=url, study_name="s")
        store = MetricsStore(url)
    else:
        store = MetricsStore(url)
        study = optuna.create_study(storage=url, study_name="s")

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1, 1)
        run_id = new_run(store, study_name="s", trial_number=trial.number)
        store.log_step(run_id, 0, x * x, 0.1, 0.01)
        store.finish_run(run_id, "complete", result={"value": x * x})
        return x * x

    study.optimize(objective, n_trials=3)
    loaded = optuna.load_study(study_name="s", storage=url)
    assert len(loaded.trials) == 3
    assert list(read(store).latest_runs("s")["trial_number"]) == [0, 1, 2]
    tables = set(sa.inspect(store.engine).get_table_names())
    assert {"studies", "trials", "oialr_runs", "oialr_steps"} <= tables
    store.close()


# -- schema and URLs ---------------------------------------------------------------------------


def test_reopening_keeps_data_and_one_schema_row(url: str) -> None:
    with MetricsStore(url) as store:
        run_id = new_run(store)
    with MetricsStore(url) as store:
        assert read(store).run(run_id)["name"] == "r"
        with store.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT version FROM oialr_schema")).all()
        assert rows == [(SCHEMA_VERSION,)]
        with store.engine.connect() as conn:
            mode = conn.execute(sa.text("PRAGMA journal_mode")).scalar()
            timeout = conn.execute(sa.text("PRAGMA busy_timeout")).scalar()
        assert (mode, timeout) == ("wal", 30000)


def test_newer_schema_is_refused(url: str) -> None:
    MetricsStore(url).close()
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE oialr_schema SET version = :v"), {"v": SCHEMA_VERSION + 1})
    engine.dispose()
    newer = rf"newer oialr \(schema {SCHEMA_VERSION + 1} > {SCHEMA_VERSION}\): upgrade oialr"
    with pytest.raises(StorageError, match=newer) as err:
        MetricsStore(url)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad", ["sqlte:///x.db", "notaurl", "", "sqlite://user:pw@host/x.db"])
def test_malformed_urls(bad: str) -> None:
    with pytest.raises(StorageError) as err:
        MetricsStore(bad)
    message = str(err.value)
    assert "\n" not in message
    assert "malformed storage URL" in message and "sqlite:///oialr.db" in message
    assert "pw" not in message


def test_missing_sqlite_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "x.db"
    with pytest.raises(StorageError, match="does not exist") as err:
        MetricsStore(f"sqlite:///{missing}")
    assert "\n" not in str(err.value) and str(missing.parent) in str(err.value)
    assert not missing.parent.exists()


def test_unwritable_database_is_a_storage_error(tmp_path: Path) -> None:
    # A directory where the file should be: sqlite3 cannot open it.
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StorageError, match="metrics database") as err:
        MetricsStore(f"sqlite:///{tmp_path / 'dir.db'}")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "postgresql+psycopg://user:s3cret@127.0.0.1:5432/db",
            "postgresql+psycopg://user:***@127.0.0.1:5432/db",
        ),
        ("postgresql+psycopg://user:p%40ss%2Fw@db/x", "postgresql+psycopg://user:***@db/x"),
        ("postgresql+psycopg://user@db/x", "postgresql+psycopg://user@db/x"),
        ("sqlite:///oialr.db", "sqlite:///oialr.db"),
        ("not a url://user:p@ss@host/db", "not a url://user:***@host/db"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


# -- processes ---------------------------------------------------------------------------------


def test_pickled_store_works_after_unpickling(url: str) -> None:
    store = MetricsStore(url, flush_rows=7, flush_seconds=3600)
    run_id = new_run(store)
    store.log_step(
        run_id, 0, 1.0, 0.1, 0.01
    )  # pending: must not travel, or it would be written twice
    state = store.__getstate__()
    assert set(state) == {"url", "flush_rows", "flush_seconds"}

    copy = pickle.loads(pickle.dumps(store))
    assert (copy.url, copy.flush_rows, copy.flush_seconds) == (url, 7, 3600)
    assert copy.engine is not store.engine
    copy.log_step(run_id, 1, 1.0, 0.1, 0.01)
    copy.close()
    store.close()
    assert sorted(read(store).metrics("steps", run_id)["step"]) == [0, 1]


WRITER = """
import json, sys, time
from oialr.metrics_store import MetricsStore

url, run_id, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
store = MetricsStore(url, flush_rows=20, flush_seconds=0.05)
step, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    store.log_step(run_id, step, 1.0 / (step + 1), 0.1, 0.001)
    if step % 100 == 99:
        store.log_layers(run_id, [{"step": step, "layer": "fc1", "event": "update", "sigma": [1.0]}])
        store.log_epoch(run_id, epoch=step // 100, step=step, phase="low-rank")
    step += 1
    time.sleep(0.0005)
store.finish_run(run_id, "complete", result={"steps": step})
store.close()
print(json.dumps({"steps": step}))
"""


def test_concurrent_writer_processes_and_reader(url: str) -> None:
    """Two writer processes flush small batches while this process polls: nothing may fail
    with 'database is locked', and the reader must end up with every row, in order."""
    store = MetricsStore(url)
    run_ids = [new_run(store, name=f"w{i}") for i in range(2)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, str(run_id), "3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for run_id in run_ids
    ]
    seen = {run_id: [] for run_id in run_ids}
    last = dict.fromkeys(run_ids, 0)
    polls = 0

    def poll() -> None:
        for run_id in run_ids:
            new = read(store).metrics("steps", run_id, last[run_id])
            if not new.empty:
                assert new["id"].is_monotonic_increasing
                seen[run_id].extend(new["step"])
                last[run_id] = int(new["id"].iloc[-1])
            read(store).metrics("epochs", run_id)
        read(store).runs()

    deadline = time.monotonic() + 60
    while any(w.poll() is None for w in writers) and time.monotonic() < deadline:
        poll()
        polls += 1
        time.sleep(0.01)
    poll()

    totals = []
    for writer in writers:
        out, err = writer.communicate(timeout=30)
        assert writer.returncode == 0, err
        assert "locked" not in err
        totals.append(json.loads(out)["steps"])
    for run_id, total in zip(run_ids, totals):
        assert seen[run_id] == list(range(total)), "reader missed or repeated rows"
        assert total > 500  # the writers really ran concurrently for a while
        assert read(store).run(run_id)["status"] == "complete"
    assert polls > 20
    store.close()


def test_many_stores_opening_a_fresh_database_at_once(url: str) -> None:
    """Workers of a new study all create the tables at the same moment: the losers retry."""
    assert open_stores_at_once(url, 6) == []
    with MetricsStore(url).engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM oialr_schema")).all() == [
            (SCHEMA_VERSION,)
        ]


def test_processes_connecting_to_a_fresh_file_at_once_never_find_it_locked(tmp_path) -> None:
    """Switching a fresh file to WAL can fail at once with 'database is locked' when another
    process switches it at the same moment, busy_timeout or not: a study's second worker
    exiting on start (10 to 50 times in these 1,200 connections before the switch was retried)."""
    n, files, start = 4, 300, time.time() + 3  # after every process has imported
    script = str(Path(__file__).parent / "fresh_files_worker.py")
    args = (str(tmp_path), str(files), str(start), "0.02")
    workers = [
        subprocess.Popen([sys.executable, script, *args], stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    failed = [int(worker.communicate(timeout=300)[0]) for worker in workers]
    assert failed == [0] * n


def test_a_dead_workers_trial_fails_every_run_of_it(store: MetricsStore) -> None:
    done = new_run(store, study_name="a", trial_number=0, trial_id=7)  # seed 0 finished
    store.finish_run(done, "complete", result={"val_acc": 0.9})
    running = new_run(store, study_name="a", trial_number=0, trial_id=7)  # seed 1 was training
    other = new_run(store, study_name="a", trial_number=1, trial_id=8)
    finished_at = read(store).runs().set_index("id").loc[done, "finished_at"]

    assert store.fail_runs_of_trial(7, "its worker (h:1) is gone") == 2
    runs = read(store).runs().set_index("id")
    assert list(runs.loc[[done, running], "status"]) == ["failed", "failed"]
    assert set(runs.loc[[done, running], "error"]) == {"its worker (h:1) is gone"}
    assert runs.loc[done, "finished_at"] == finished_at, "when it finished is kept"
    assert runs.loc[other, "status"] == "running"
    assert store.fail_runs_of_trial(7, "again") == 0, "failed runs keep their first reason"
