"""What both trainer callbacks share: the controller's life through a training run (start or
resume, one step per optimizer step, checks that it really steps), its figures for the
trainer's logs, and, with a storage URL, the run recorded for the dashboard."""

from __future__ import annotations

import math
from typing import Any

from ..config import OIALRConfig
from ..controller import OIALR
from ..conversion import unwrap
from ..errors import ConfigError
from ..lowrank import factor_modules

__all__ = ["Session"]


class Session:
    """The OIALR side of one training run inside a trainer.

    Args:
        options: OIALR's options (validated at once, so a typo fails at construction).
        storage: a storage URL to record the run to (None: record nothing).
        name: the run's name on the dashboard.
        trainer: which trainer this is, for messages.
    """

    def __init__(
        self, options: dict[str, Any], storage: str | None, name: str | None, trainer: str
    ):
        self.config = OIALRConfig.build(**options)
        self.storage, self.name, self.trainer = storage, name, trainer
        self.controller: OIALR | None = None
        self.run = None  # an oialr.tracking.RunHandle when recording
        self.steps_seen = 0

    def start(self, model, optimizer, *, step: int, total_steps: int, steps_per_epoch: int,
              saved: dict | None, labels: dict[str, Any]) -> OIALR:  # fmt: skip
        """Build the controller at the trainer's first step, or continue ``saved``."""
        if saved:
            self.controller = OIALR.from_state_dict(model, optimizer, saved, on_update=self._layers)
        elif step > 0 and factor_modules(unwrap(model)):
            raise ConfigError(
                f"{self.trainer} resumed at step {step} with factorised layers but without "
                "OIALR's state: resume from a checkpoint that OIALRCallback saved"
            )
        else:
            options = self.config.model_dump()
            self.controller = OIALR(
                model, optimizer, **options, steps_per_epoch=steps_per_epoch,
                total_steps=total_steps, on_update=self._layers,
            )  # fmt: skip
        ctl = self.controller
        if ctl.step_count != step:
            raise ConfigError(
                f"OIALR's state is at step {ctl.step_count} but {self.trainer} at step {step}: "
                "resume from the checkpoint the state was saved with"
            )
        never = ctl.config.fixed_rank is None and ctl.config.switch == "delay" and not ctl.converted
        if never and ctl.config.delay >= total_steps:
            raise ConfigError(
                f"delay={ctl.config.delay:g} steps is not shorter than the {total_steps} steps of "
                "training: OIALR would never convert; lower delay (or give it as a fraction)"
            )
        if self.storage is not None and self.run is None:
            self.run = _record(self.storage, self.name, ctl.config, labels)
            self.run.controller = ctl
        return ctl

    def _layers(self, _controller, records) -> None:
        if self.run is not None:
            self.run.recorder.layers(records)

    def step(self, trainer_step: int) -> None:
        """One optimizer step happened; the trainer is now at ``trainer_step``."""
        if self.controller is None:
            raise ConfigError(f"OIALRCallback stepped before {self.trainer} started training")
        self.controller.step()
        self.steps_seen += 1
        if self.controller.step_count != trainer_step:
            raise ConfigError(
                f"OIALR counted {self.controller.step_count} optimizer steps, {self.trainer} "
                f"{trainer_step}: give the callback to the trainer before training starts"
            )

    def figures(self) -> dict[str, float]:
        """What goes into the trainer's logs."""
        ctl = self.controller
        if ctl is None:
            return {}
        ranks = ctl.ranks()
        return {
            "oialr/trainable_fraction": ctl.trainable_fraction(),
            "oialr/stored_fraction": ctl.stored_fraction(),
            "oialr/mean_rank": sum(ranks.values()) / len(ranks) if ranks else math.nan,
            "oialr/layers_converted": float(len(ranks)),
        }

    def finish(self, error: str | None = None) -> None:
        """Training ended: fail loudly if OIALR never stepped, and close the recorded run."""
        if self.run is not None:
            self.run.finish(*(("failed", error) if error else ()))
        if self.steps_seen == 0 and error is None:
            raise ConfigError(
                f"OIALRCallback never stepped: {self.trainer} ran no optimizer step through it "
                "(is the callback in the trainer's callbacks, and is training not empty?)"
            )


def _record(storage: str, name: str | None, config: OIALRConfig, labels: dict[str, Any]):
    from ..tracking import record

    return record(storage, name=name or "trainer-run", oialr=config, **labels)
