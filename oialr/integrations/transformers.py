"""OIALR in Hugging Face's ``Trainer``::

    from oialr.integrations.transformers import OIALRCallback

    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[OIALRCallback(delay=500, update_freq=100, sigma_cutoff=0.1)])
    trainer.train()                               # or train(resume_from_checkpoint=True)

The callback builds the controller from the Trainer's model and optimizer when training begins,
steps it after every optimizer step (so gradient accumulation is respected), adds its figures to
the Trainer's logs, and saves its state as ``oialr.pt`` in every checkpoint. The Trainer loads a
checkpoint's weights before any callback runs, so the callback teaches the model, at
construction, to rebuild its factorised layers from them; the resumed run then continues with
the same ranks and the same losses. With ``storage=URL`` the run is recorded for the dashboard.
It raises if it never steps, or if ``delay`` is past the end of training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ..conversion import rebuild_on_load
from ._session import Session

__all__ = ["OIALRCallback", "STATE_FILE"]

STATE_FILE = "oialr.pt"  # the controller's state, in each checkpoint-<step> folder


class OIALRCallback(TrainerCallback):
    """OIALR for ``transformers.Trainer``; the arguments are :class:`oialr.OIALR`'s, plus
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
        self.session = Session(options, storage, name, "the Trainer")

    @property
    def controller(self):
        return self.session.controller

    def on_init_end(self, args, state, control, model=None, **kwargs):
        rebuild_on_load(model)  # a resumed checkpoint's factorised weights find their layers

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        loader = kwargs.get("train_dataloader")  # optimizer steps per epoch, for epoch units
        per_epoch = len(loader) // args.gradient_accumulation_steps if loader else state.max_steps
        saved = _saved_state(args, state.global_step)
        labels = {
            "model": type(model).__name__,
            "dataset": "trainer",
            "epochs": int(args.num_train_epochs),
        }
        self.session.start(
            model, optimizer, step=state.global_step, total_steps=state.max_steps,
            steps_per_epoch=max(1, per_epoch), saved=saved, labels=labels,
        )  # fmt: skip

    def on_step_end(self, args, state, control, **kwargs):
        self.session.step(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        figures = self.session.figures()
        if logs is not None:
            logs.update(figures)  # the callbacks after this one (the printer) see them
        if state.log_history:
            state.log_history[-1].update(figures)  # and trainer_state.json keeps them
        run = self.session.run
        if run is not None and logs and "loss" in logs:
            run.log(
                state.global_step, loss=logs["loss"], lr=logs.get("learning_rate", float("nan"))
            )

    def on_epoch_end(self, args, state, control, **kwargs):
        run = self.session.run
        if run is not None:
            evaluated = [h for h in state.log_history if "eval_accuracy" in h]
            accuracy = evaluated[-1]["eval_accuracy"] if evaluated else float("nan")
            run.epoch(val_acc=accuracy, step=state.global_step)

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and self.session.controller is not None:
            torch.save(self.session.controller.state_dict(), folder / STATE_FILE)

    def on_train_end(self, args, state, control, **kwargs):
        self.session.finish()


def _saved_state(args, step: int) -> dict | None:
    """The controller state saved with the checkpoint the Trainer resumed at ``step``."""
    if step == 0:
        return None
    path = Path(args.output_dir) / f"checkpoint-{step}" / STATE_FILE
    return torch.load(path, weights_only=True) if path.is_file() else None
