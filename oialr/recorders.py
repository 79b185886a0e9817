"""Where a run's events go: nowhere (:class:`Recorder`), several places (:class:`Recorders`),
or the metrics store (:class:`StoreRecorder`, given an open store, so this module needs no
database library).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from .vocab import CONVERT, STABILITY

if TYPE_CHECKING:
    from .metrics_store import MetricsStore
    from .records import LayerRecord
    from .run_config import RunConfig, RunResult

__all__ = ["Recorder", "Recorders", "StoreRecorder"]


class Recorder:
    """Receives a run's events. Subclass and override what you need; every method is a no-op.

    ``epoch`` may raise :class:`oialr.errors.RunPruned` to stop the run early.
    """

    run_id: int | None = None

    def start(self, config: RunConfig) -> None: ...
    def step(self, step: int, loss: float, lr: float, step_time: float) -> None: ...
    def epoch(self, metrics: dict[str, Any]) -> None: ...
    def layers(self, records: list[LayerRecord]) -> None: ...
    def finish(self, status: str, result: RunResult | None, error: str | None) -> None: ...


class Recorders(Recorder):
    """Several recorders as one, called in order."""

    def __init__(self, *recorders: Recorder | None):
        self.recorders = [r for r in recorders if r is not None]

    @property
    def run_id(self) -> int | None:
        return next((r.run_id for r in self.recorders if r.run_id is not None), None)

    def start(self, config):
        for r in self.recorders:
            r.start(config)

    def step(self, step, loss, lr, step_time):
        for r in self.recorders:
            r.step(step, loss, lr, step_time)

    def epoch(self, metrics):
        for r in self.recorders:
            r.epoch(metrics)

    def layers(self, records):
        for r in self.recorders:
            r.layers(records)

    def finish(self, status, result, error):
        for r in self.recorders:
            r.finish(status, result, error)


class StoreRecorder(Recorder):
    """Writes a run to the metrics store, linked to an Optuna study/trial when given.

    Args:
        store: the open store.
        study_name, trial_number, trial_id: the Optuna trial this run belongs to, if any.
    """

    def __init__(
        self,
        store: MetricsStore,
        *,
        study_name: str | None = None,
        trial_number: int | None = None,
        trial_id: int | None = None,
    ):
        self.store = store
        self.link = dict(study_name=study_name, trial_number=trial_number, trial_id=trial_id)
        self.run_id = None
        self._converted = False

    def start(self, config):
        if self.run_id is not None:  # resumed within the same process: keep the run
            return
        self.run_id = self.store.create_run(
            name=config.run_name,
            mode=config.mode,
            model=config.model,
            dataset=config.dataset,
            config=config.model_dump(),
            **self.link,
        )

    def step(self, step, loss, lr, step_time):
        self.store.log_step(self.run_id, step, loss, lr, step_time)

    def epoch(self, metrics):
        self.store.log_epoch(self.run_id, **metrics)

    def layers(self, records):
        stability = [r for r in records if r.event == STABILITY]
        updates = [dataclasses.asdict(r) for r in records if r.event != STABILITY]
        if stability:
            self.store.log_stability(
                self.run_id, stability[0].step, {r.layer: r.stability for r in stability}
            )
        if updates:
            self.store.log_layers(self.run_id, updates)
        if not self._converted and any(r.event == CONVERT for r in records):
            self._converted = True
            self.store.set_conversion_step(self.run_id, records[0].step)

    def finish(self, status, result, error):
        if self.run_id is None:
            return
        self.store.finish_run(
            self.run_id, status, result=result.to_dict() if result else None, error=error
        )
