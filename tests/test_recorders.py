"""Recorders: several as one, and the store's recorder writing a run as fit reports it."""

from helpers import LAYER_RECORD, read

from oialr.metrics_store import MetricsStore
from oialr.recorders import Recorder, Recorders, StoreRecorder
from oialr.records import LayerRecord
from oialr.run_config import RunConfig, RunResult


class Log(Recorder):
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def step(self, step, loss, lr, step_time):
        self.calls.append((self.name, step))


def test_recorders_call_each_in_order_and_skip_none():
    calls = []
    both = Recorders(Log("a", calls), None, Log("b", calls))
    both.step(3, 1.0, 0.1, 0.01)
    assert calls == [("a", 3), ("b", 3)] and both.run_id is None


def layer(event, step, name="fc", stability=None):
    return LayerRecord(
        **{**LAYER_RECORD, "event": event, "step": step, "layer": name, "stability": stability}
    )


def test_store_recorder_writes_what_fit_reports(tmp_path):
    with MetricsStore(f"sqlite:///{tmp_path / 'r.db'}") as store:
        recorder = StoreRecorder(store, study_name="s", trial_number=2, trial_id=7)
        recorder.start(RunConfig(dataset="synthetic"))
        recorder.layers([layer("stability", 3, "fc", 0.9), layer("stability", 3, "out", 0.8)])
        recorder.layers([layer("convert", 5), layer("convert", 5, "out")])
        recorder.layers([layer("update", 9)])
        recorder.step(9, 0.5, 0.1, 0.02)
        recorder.epoch({"epoch": 1, "step": 9, "val_acc": 0.5, "phase": "low-rank"})
        result = RunResult(recorder.run_id, "oialr", 0.5, 0.5, 0.4, 1.0, 0.3, 0.6, 1.0, 9, 1, 5)
        recorder.finish("complete", result, None)
        reader = read(store)
        run = reader.run(recorder.run_id)
        assert (run["status"], run["conversion_step"], run["trial_number"], run["trial_id"]) == (
            "complete",
            5,
            2,
            7,
        )
        assert run["config"]["dataset"] == "synthetic" and run["result"]["test_acc"] == 0.4
        assert reader.metrics("layers", recorder.run_id)["event"].tolist() == [
            "convert",
            "convert",
            "update",
        ]
        assert reader.metrics("stability", recorder.run_id)["layer"].tolist() == ["fc", "out"]
