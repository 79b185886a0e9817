"""OIALR in Lightning::

    from oialr.integrations.lightning import OIALRCallback

    trainer = lightning.Trainer(callbacks=[OIALRCallback(delay=500, update_freq=100, sigma_cutoff=0.1)])
    trainer.fit(module, loader)                  # or fit(module, loader, ckpt_path=...)

The callback builds the controller from the module and its optimizer when training starts, steps
it once per optimizer step (``accumulate_grad_batches`` respected: it follows
``trainer.global_step``), logs its figures with ``self.log``, and keeps its state in Lightning's
checkpoints (``Callback.state_dict``). Lightning loads a checkpoint's weights before the
callbacks' state, so at ``setup`` the callback teaches the module to rebuild its factorised
layers from them; ``Trainer.fit(ckpt_path=...)`` then continues with the same ranks. It raises
if it never steps, or if ``delay`` is past the end of training. One optimizer per module.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback

from ..conversion import rebuild_on_load
from ..errors import ConfigError
from ._session import Session

__all__ = ["OIALRCallback"]


class OIALRCallback(Callback):
    """OIALR for ``lightning.Trainer``; the arguments are :class:`oialr.OIALR`'s, plus
    ``storage`` (a URL to record the run to) and ``name`` (its name there)."""

    def __init__(
        self,
        delay: float = 1000,
        update_freq: float = 100,
        sigma_cutoff: float = 0.1,
        *,
        storage: str | None = None,
        name: str | None = None,
        **options: Any,
    ):
        options = dict(delay=delay, update_freq=update_freq, sigma_cutoff=sigma_cutoff, **options)
        self.session = Session(options, storage, name, "Lightning")
        self._saved: dict | None = None
        self._last_step = 0

    @property
    def controller(self):
        return self.session.controller

    def setup(self, trainer, pl_module, stage: str) -> None:
        rebuild_on_load(pl_module)  # a checkpoint's factorised weights find their layers

    def on_train_start(self, trainer, pl_module) -> None:
        if len(trainer.optimizers) != 1:
            raise ConfigError(
                f"OIALRCallback needs one optimizer; configure_optimizers gave {len(trainer.optimizers)}"
            )
        total = trainer.estimated_stepping_batches
        per_epoch = max(1, total // max(1, trainer.max_epochs or 1))
        labels = {"model": type(pl_module).__name__, "dataset": "lightning"}
        self.session.start(
            pl_module, trainer.optimizers[0], step=trainer.global_step, total_steps=int(total),
            steps_per_epoch=int(per_epoch), saved=self._saved, labels=labels,
        )  # fmt: skip
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # an optimizer step happened in this batch exactly when the global step moved
        while self._last_step < trainer.global_step:
            self._last_step += 1
            self.session.step(self._last_step)
        figures = self.session.figures()
        if figures:
            pl_module.log_dict(figures, on_step=True, on_epoch=False, prog_bar=False)
        run = self.session.run
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if run is not None and loss is not None:
            run.log(trainer.global_step, loss=float(loss))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        run = self.session.run
        if run is not None:
            accuracy = trainer.callback_metrics.get("val_acc", float("nan"))
            run.epoch(val_acc=float(accuracy), step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return self.session.controller.state_dict() if self.session.controller else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved = state_dict or None  # used when training starts, once optimizers exist

    def on_train_end(self, trainer, pl_module) -> None:
        self.session.finish()
