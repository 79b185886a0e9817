"""Full spectra and layer identity in the metrics store, and databases of the older schema.

The controller records Σ's whole spectrum with the layer's kind and shape; the store keeps it as
float32 bytes; the reader gives it back as a list. A version-1 database (top 32 values as JSON,
no kind or shape) stays readable by the read-only dashboard and is brought up to date in place
when a store opens it.
"""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
import torch
import torch.nn.functional as F
from helpers import LAYER_RECORD, open_stores_at_once
from torch import nn

import oialr
from oialr.metrics_reader import MetricsReader
from oialr.metrics_schema import ADDED_COLUMNS, SCHEMA_VERSION, make_engine, to_json
from oialr.metrics_store import MetricsStore
from oialr.recorders import StoreRecorder
from oialr.records import spectrum_ranks


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request, tmp_path) -> str:
    """A fresh database: a SQLite file, or a new database on the shared PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'oialr.db'}"
    server = request.getfixturevalue("postgres_server")
    name = f"spectra_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return server.url.rsplit("/", 1)[0] + f"/{name}"


def _trained_records(steps: int = 60) -> list[oialr.LayerRecord]:
    """A 2-layer MLP whose first layer has full rank 64 (> the old cap of 32)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(80, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 5)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctl = oialr.OIALR(model, opt, delay=10, update_freq=10, sigma_cutoff=0.2, keep_last=True)
    xs, ys = torch.randn(256, 80), torch.randint(0, 5, (256,))
    for i in range(steps):
        j = (i * 32) % 256
        F.cross_entropy(model(xs[j : j + 32]), ys[j : j + 32]).backward()
        opt.step()
        opt.zero_grad()
        ctl.step()
    return [r for r in ctl.history if r.event != "stability"]


def test_records_carry_the_whole_spectrum_kind_and_shape():
    records = _trained_records()
    first = next(r for r in records if r.layer == "0" and r.event == "convert")
    assert (first.kind, first.rows, first.cols, first.n) == ("Linear", 64, 80, 64)
    assert len(first.sigma) == first.rank_before == 64  # not capped at 32
    assert first.sigma == sorted(first.sigma, reverse=True)
    cut = next(r for r in records if r.layer == "0" and r.rank_after < r.rank_before)
    assert len(cut.sigma) == cut.rank_before, "the dropped values are recorded too"
    assert cut.rule == "cutoff" and sum(s >= cut.cutoff for s in cut.sigma) == cut.rank_after
    assert (cut.effective_rank, cut.stable_rank) == pytest.approx(spectrum_ranks(cut.sigma))
    assert 1 <= cut.stable_rank <= cut.effective_rank <= cut.rank_before


def test_the_store_keeps_full_spectra_as_float32_bytes(url):
    records = _trained_records()
    with MetricsStore(url) as store:
        recorder = StoreRecorder(store)
        recorder.run_id = store.create_run(
            name="r", mode="oialr", model="mlp", dataset="synthetic", config={}
        )
        recorder.layers(records)
    engine = make_engine(url)
    with engine.connect() as conn:
        sizes = conn.execute(
            sa.text("SELECT octet_length(spectrum), sigma, rank_before FROM oialr_layers")
            if conn.dialect.name == "postgresql"
            else sa.text("SELECT length(spectrum), sigma, rank_before FROM oialr_layers")
        ).all()
    assert all(size == 4 * rank and legacy is None for size, legacy, rank in sizes)
    reader = MetricsReader(engine)
    rows = reader.metrics("layers", recorder.run_id)
    assert len(rows) == len(records) and "spectrum" not in rows
    for record, (_, row) in zip(records, rows.iterrows()):
        assert row["sigma"] == pytest.approx(record.sigma, rel=1e-6)
        assert (row["kind"], row["rows"], row["cols"]) == (record.kind, record.rows, record.cols)
    summary = reader.layer_summary(recorder.run_id)
    assert summary["layer"].tolist() == ["0", "2"]
    assert summary[["rows", "cols", "full_rank"]].values.tolist() == [[64, 80, 64], [48, 64, 48]]
    assert len(summary.loc[0, "sigma"]) > 32
    history = reader.layer_history([recorder.run_id])
    assert "sigma" not in history and len(history) == len(records)
    engine.dispose()


def _make_version_1(url: str) -> int:
    """A database as oialr's schema 1 left it: one run with one layer record (JSON sigma)."""
    with MetricsStore(url) as store:
        run_id = store.create_run(name="old", mode="oialr", model="m", dataset="d", config={})
    engine = make_engine(url)
    with engine.begin() as conn:
        for column in ADDED_COLUMNS[2]:
            conn.exec_driver_sql(f"ALTER TABLE oialr_layers DROP COLUMN {column.name}")
        conn.execute(sa.text("UPDATE oialr_schema SET version = 1"))
        legacy = {k: v for k, v in LAYER_RECORD.items() if k != "sigma"}
        conn.execute(
            sa.insert(
                sa.table("oialr_layers", *(sa.column(k) for k in [*legacy, "run_id", "sigma"]))
            ),
            {**legacy, "run_id": run_id, "sigma": to_json(LAYER_RECORD["sigma"])},
        )
    engine.dispose()
    return run_id


def test_a_version_1_database_is_read_as_it_is_then_upgraded_in_place(url):
    run_id = _make_version_1(url)
    engine = make_engine(url)
    old = MetricsReader(engine)  # what the read-only dashboard does before any worker opens it
    rows = old.metrics("layers", run_id)
    assert rows.loc[0, "sigma"] == LAYER_RECORD["sigma"] and rows.loc[0, "kind"] is None
    assert old.layer_summary(run_id).loc[0, "sigma"] == LAYER_RECORD["sigma"]
    assert old.layer_history([run_id]).loc[0, "rows"] is None

    with MetricsStore(url) as store:  # a worker of the new version opens the file
        store.log_layers(run_id, [{**LAYER_RECORD, "step": 20, "sigma": [4.0, 2.0, 0.5]}])
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM oialr_schema")).all() == [
            (SCHEMA_VERSION,)
        ]
    rows = MetricsReader(engine).metrics("layers", run_id)
    assert rows["sigma"].tolist() == [LAYER_RECORD["sigma"], [4.0, 2.0, 0.5]]
    engine.dispose()


def test_many_stores_upgrading_one_old_database_at_once(url):
    _make_version_1(url)
    assert open_stores_at_once(url, 4) == []
    engine = make_engine(url)
    columns = {c["name"] for c in sa.inspect(engine).get_columns("oialr_layers")}
    assert {c.name for c in ADDED_COLUMNS[2]} <= columns
    engine.dispose()
