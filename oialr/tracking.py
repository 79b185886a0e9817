"""Your own training loop, recorded like a built-in run: :class:`RunHandle`, and
:func:`record` for a plain script (no study) that the dashboard then shows live.

::

    import oialr.tracking

    with oialr.tracking.record("sqlite:///oialr.db", name="my-run") as run:
        ctl = run.oialr(model, optimizer, delay=500, update_freq=100, sigma_cutoff=0.1)
        for epoch in range(epochs):
            for step, (x, y) in enumerate(batches, start=epoch * len(batches)):
                ...; optimizer.step(); ctl.step()
                run.log(step, loss=loss.item())
            run.epoch(val_acc=evaluate(model))

A study's custom objective receives the same handle, with the trial's hyperparameters in
``run.params`` and ``run.config``; ``run.epoch`` then also feeds the pruner.
"""

from __future__ import annotations

import math
import os
import socket
import time
from typing import Any

from .errors import ConfigError, RunPruned
from .recorders import Recorder, StoreRecorder
from .run_config import RunConfig, RunResult
from .vocab import COMPLETE, DENSE, FAILED, PRUNED, resolve_storage

__all__ = ["RunHandle", "record"]


class RunHandle:
    """One run of your loop, sent to ``recorder`` as ``oialr.train.fit`` sends its own.

    Attributes:
        config: the run's configuration (for a study trial: the spec's ``[run]`` table with the
            trial's parameters applied; read ``config.lr``, ``config.epochs``, ``config.oialr``).
        params: the trial's sampled hyperparameters by name (empty outside a study).
        controller: what :meth:`oialr` returned, once called.
    """

    def __init__(self, recorder: Recorder, config: RunConfig, params: dict[str, Any] | None = None):
        self.recorder, self.config = recorder, config
        self.params = dict(params or {})
        self.controller: Any = None
        self.started = time.perf_counter()
        self.epochs: list[dict[str, Any]] = []
        self.last_step = 0
        self.result: RunResult | None = None
        recorder.start(config)

    # -- what the loop may read ----------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def device(self):
        """The torch device the run's ``device`` option names (``auto``: CUDA if there is one)."""
        from .train import resolve_device

        return resolve_device(self.config.device)

    @property
    def worker(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    # -- what the loop calls ---------------------------------------------------------------------
    def oialr(self, model, optimizer, **overrides: Any):
        """The controller of this run, wired to the recorder (every conversion and update is
        recorded per layer). ``overrides`` replace the run's OIALR options; pass
        ``steps_per_epoch`` / ``total_steps`` when a duration is in epochs or a fraction. A dense
        baseline gets a controller that does nothing, so one loop serves every trial."""
        from .controller import OIALR
        from .train import DenseRun

        if self.mode == DENSE:
            self.controller = DenseRun()
            return self.controller
        lengths = {
            k: overrides.pop(k) for k in ("steps_per_epoch", "total_steps") if k in overrides
        }
        options = {**self.config.oialr.model_dump(), **overrides}
        self.controller = OIALR(
            model, optimizer, **options, **lengths,
            on_update=lambda _, records: self.recorder.layers(records),
        )  # fmt: skip
        return self.controller

    def log(self, step: int, *, loss: float, lr: float = math.nan, step_time: float = math.nan):
        """One logged training step (loss as a float: call ``.item()`` on a tensor)."""
        self.last_step = int(step)
        self.recorder.step(int(step), float(loss), float(lr), float(step_time))

    def epoch(self, *, val_acc: float, **metrics: float) -> None:
        """The end of an epoch: validation accuracy (the objective), and any of ``train_loss``,
        ``train_acc``, ``val_loss``. Raises :class:`oialr.errors.RunPruned` when the study's
        pruner stops the trial: let it propagate."""
        unknown = set(metrics) - {"train_loss", "train_acc", "val_loss", "step"}
        if unknown:
            raise ConfigError(
                f"run.epoch() takes train_loss, train_acc, val_loss, not {sorted(unknown)}"
            )
        ctl = self.controller
        ranks = ctl.ranks() if ctl is not None else {}
        row = {
            "epoch": len(self.epochs) + 1,
            "step": int(metrics.pop("step", self.last_step)),
            "val_acc": float(val_acc),
            **{k: float(v) for k, v in metrics.items()},
            "trainable_fraction": ctl.trainable_fraction() if ctl is not None else 1.0,
            "stored_fraction": ctl.stored_fraction() if ctl is not None else 1.0,
            "mean_rank": sum(ranks.values()) / len(ranks) if ranks else None,
            "phase": ctl.phase if ctl is not None else DENSE,
            "time": time.perf_counter() - self.started,
        }
        self.epochs.append(row)
        self.recorder.epoch(row)

    def finish(self, status: str = COMPLETE, error: str | None = None, **test: float) -> RunResult:
        """Mark the run finished (``with`` does it); ``test_acc``/``test_loss`` if you have them."""
        if self.result is not None:
            return self.result
        ctl, last = self.controller, self.epochs[-1] if self.epochs else {}
        accuracies = [e["val_acc"] for e in self.epochs if math.isfinite(e["val_acc"])]
        self.result = RunResult(
            run_id=self.recorder.run_id, mode=self.mode,
            best_val_acc=max(accuracies, default=math.nan),
            final_val_acc=last.get("val_acc", math.nan),
            test_acc=float(test.get("test_acc", math.nan)),
            test_loss=float(test.get("test_loss", math.nan)),
            trainable_fraction=last.get("trainable_fraction", 1.0),
            stored_fraction=last.get("stored_fraction", 1.0),
            wall_time=time.perf_counter() - self.started, steps=self.last_step,
            epochs=len(self.epochs), conversion_step=getattr(ctl, "conversion_step", None),
            ranks=ctl.ranks() if ctl is not None else {},
        )  # fmt: skip
        self.recorder.finish(status, self.result if status == COMPLETE else None, error)
        return self.result

    def __enter__(self) -> RunHandle:
        return self

    def __exit__(self, kind, error, _traceback) -> None:
        if kind is None:
            self.finish()
        else:
            status = PRUNED if issubclass(kind, RunPruned) else FAILED
            self.finish(status, f"{kind.__name__}: {error}".strip(": "))


def record(
    storage: str | None = None,
    *,
    name: str,
    model: str = "custom",
    dataset: str = "custom",
    mode: str = "oialr",
    **options: Any,
) -> RunHandle:
    """Record a run of your own script to ``storage`` (default ``$OIALR_STORAGE``, then
    ``sqlite:///oialr.db``), so ``streamlit run app`` shows it live beside the studies.

    ``model`` and ``dataset`` are labels for the dashboard; ``options`` are stored with the run
    (any of ``oialr train``'s options, e.g. ``lr``, ``epochs``), unchecked.
    """
    from .metrics_store import MetricsStore

    config = RunConfig.model_construct(
        name=name, model=model, dataset=dataset, mode=mode, **options
    )
    return RunHandle(StoreRecorder(MetricsStore(resolve_storage(storage))), config)
