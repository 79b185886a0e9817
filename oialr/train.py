"""One training run: ``fit(run_config, recorder) -> RunResult``.

Reads top to bottom like nanoGPT's ``train.py``: config, device and seeds, data, model,
optimizer and schedule, controller, resume, then the loop (forward, backward, clip, step,
``controller.step()``, log), evaluation and a checkpoint every epoch, the final report.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .config import OIALRConfig
from .controller import OIALR
from .data import DATASETS, load_dataset
from .errors import ConfigError, OIALRError, TrainingDiverged, describe_validation_error
from .models import MODELS, build_model, model_names
from .recorders import Recorder

_logger = logging.getLogger(__name__)

__all__ = ["RunConfig", "RunResult", "fit"]

Mode = Literal["oialr", "dense", "fixed-rank"]
StepUnit = Literal["steps", "epochs", "fraction"]


class RunConfig(BaseModel):
    """Everything that defines one run. Units: steps are optimizer steps."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str | None = Field(None, description="run name (default: model-dataset-mode-seed)")
    model: str = Field("mlp", description="model name: mlp, lenet5, resnet20, minivit, tv:<name>")
    model_options: dict[str, Any] = Field(default_factory=dict)
    dataset: str = Field("fashion-mnist", description="dataset name")
    data_dir: str | None = None
    download: bool = False
    val_fraction: float = Field(0.1, ge=0.0, le=0.5)
    subset: int | None = Field(None, ge=1, description="keep this many training examples")
    pad_to: int | None = Field(None, ge=1, description="zero-pad images to this size")
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum (Nesterov)")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up, then cosine")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    grad_clip: float | None = Field(1.0, gt=0.0, description="max gradient norm (None: off)")
    mode: Mode = "oialr"
    delay: float = Field(1000, ge=0, description="OIALR warm-up, in delay_unit")
    delay_unit: StepUnit = "steps"
    update_freq: float = Field(
        100, gt=0, description="time between OIALR updates, in update_freq_unit"
    )
    update_freq_unit: StepUnit = "steps"
    sigma_cutoff: float = Field(0.1, ge=0.0, lt=1.0)
    rank_fraction: float = Field(0.25, gt=0.0, le=1.0, description="fixed-rank mode's rank")
    oialr_options: dict[str, Any] = Field(default_factory=dict, description="other OIALR options")
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    amp: bool = Field(True, description="bf16 autocast on CUDA")
    log_every: int = Field(10, ge=1, description="steps between logged loss/lr/step-time rows")
    checkpoint_dir: str | None = Field(None, description="checkpoint every epoch here")

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        if name not in MODELS and not name.startswith(("tv:", "timm:")):
            raise ValueError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")
        return name

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
        return name

    @field_validator("oialr_options")
    @classmethod
    def _valid_oialr_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        OIALRConfig.build(**options)  # a typo fails here, before any run is recorded
        return options

    @classmethod
    def build(cls, **values: Any) -> RunConfig:
        try:
            return cls(**values)
        except ValidationError as err:
            raise ConfigError(describe_validation_error(err, prefix="run option ")) from None

    @property
    def run_name(self) -> str:
        return self.name or f"{self.model}-{self.dataset}-{self.mode}-s{self.seed}"


@dataclass
class RunResult:
    """What a finished run reports."""

    run_id: int | None
    mode: str
    best_val_acc: float
    final_val_acc: float
    test_acc: float
    test_loss: float
    trainable_fraction: float
    stored_fraction: float
    wall_time: float
    steps: int
    epochs: int
    conversion_step: int | None
    ranks: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_command(cfg: RunConfig) -> str:
    """The ``oialr train …`` command line that reproduces ``cfg`` (non-default fields only).

    Every RunConfig field ``foo_bar`` is the flag ``--foo-bar``; dict fields take ``KEY=VALUE``.
    """
    parts = ["oialr train"]
    defaults = RunConfig()
    for name, value in cfg.model_dump().items():
        essential = name in ("model", "dataset", "mode")  # always shown, for the reader
        if (value == getattr(defaults, name) and not essential) or name == "checkpoint_dir":
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, dict):
            parts += [f"{flag} {shlex.quote(f'{k}={_toml_value(v)}')}" for k, v in value.items()]
        elif isinstance(value, bool):
            parts.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            parts.append(f"{flag} {shlex.quote(str(value) if value is not None else 'none')}")
    return " ".join(parts)


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def resolve_steps(value: float, unit: str, steps_per_epoch: int, total_steps: int) -> int:
    """A step count from a value in ``steps``, ``epochs`` or ``fraction`` of the whole run."""
    scale = {"steps": 1, "epochs": steps_per_epoch, "fraction": total_steps}[unit]
    return int(math.floor(value * scale + 0.5))


# -- helpers -----------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: no CUDA device is available here; use --device cpu")
    return device


def make_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """Weight decay on matrices only (biases and norms are not decayed), as in nanoGPT."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def evaluate(model, data, split: str, amp: bool, batch_size: int = 1024) -> tuple[float, float]:
    """(mean loss, accuracy) over a split; (nan, nan) when the split is empty."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, y in data.batches(split, batch_size, shuffle=False):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    model.train()
    if count == 0:
        return float("nan"), float("nan")
    return total_loss / count, correct / count


def _controller(cfg, model, optimizer, recorder, steps_per_epoch, total_steps) -> OIALR | None:
    """The OIALR controller of an ``oialr`` or ``fixed-rank`` run (None when dense)."""
    if cfg.mode == "dense":
        return None
    options = dict(cfg.oialr_options)
    if cfg.mode == "fixed-rank":
        options["fixed_rank"] = cfg.rank_fraction
    update_freq = resolve_steps(cfg.update_freq, cfg.update_freq_unit, steps_per_epoch, total_steps)
    return OIALR(
        model,
        optimizer,
        resolve_steps(cfg.delay, cfg.delay_unit, steps_per_epoch, total_steps),
        max(1, update_freq),
        cfg.sigma_cutoff,
        on_update=lambda _, records: recorder.layers(records),
        **options,
    )


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write then rename, so a crash mid-write never leaves a truncated checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        raise ConfigError(
            f"checkpoint {path} cannot be read ({type(err).__name__}): it is damaged or not an "
            "oialr checkpoint; delete it to start over, or drop --resume"
        ) from None


# -- the run -------------------------------------------------------------------------------------
def fit(cfg: RunConfig, recorder: Recorder | None = None, *, resume: bool = False) -> RunResult:
    """Train one model as ``cfg`` says and report the result.

    Args:
        cfg: the run's configuration.
        recorder: receives steps, epochs, layer records; ``None`` records nothing.
        resume: continue from ``cfg.checkpoint_dir/checkpoint.pt`` if it exists (bit for bit on
            CPU: model, optimizer, schedule, controller, data order and RNG all come back).

    Raises:
        TrainingDiverged: the loss became NaN/Inf (recorded as a failed run first).
        ConfigError, DataError: bad options or missing data, before anything is recorded.
    """
    recorder = recorder or Recorder()
    device = resolve_device(cfg.device)
    amp = cfg.amp and device.type == "cuda"
    torch.manual_seed(cfg.seed)
    data = load_dataset(
        cfg.dataset,
        data_dir=cfg.data_dir,
        download=cfg.download,
        val_fraction=cfg.val_fraction,
        subset=cfg.subset,
        seed=cfg.seed,
        pad_to=cfg.pad_to,
    ).to(device)
    model = build_model(cfg.model, data.input_shape, data.num_classes, **cfg.model_options)
    model = model.to(device)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = data.steps_per_epoch(cfg.batch_size, drop_last=True)
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total_steps)
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    ckpt_path = Path(cfg.checkpoint_dir) / "checkpoint.pt" if cfg.checkpoint_dir else None
    start_epoch, step, best_val, elapsed = 0, 0, 0.0, 0.0
    recorder.start(cfg)  # before the controller: a delay of 0 converts, and records, at once
    try:
        controller = _controller(cfg, model, optimizer, recorder, steps_per_epoch, total_steps)
        if resume and ckpt_path is not None and ckpt_path.exists():
            ckpt = load_checkpoint(ckpt_path)
            if controller is not None:
                controller.load_state_dict(ckpt["oialr"])
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            generator.set_state(ckpt["generator"])
            torch.set_rng_state(ckpt["torch_rng"])
            start_epoch, step = ckpt["epoch"] + 1, ckpt["step"]
            best_val, elapsed = ckpt["best_val"], ckpt["elapsed"]
            _logger.info("resumed %s at epoch %d (step %d)", cfg.run_name, start_epoch, step)
        started = time.perf_counter() - elapsed
        if start_epoch >= cfg.epochs:  # resumed a finished run: just report it
            val_loss, val_acc = evaluate(model, data, "val", amp)
        for epoch in range(start_epoch, cfg.epochs):
            # running sums stay on the device: no sync per step
            train_loss, train_correct, seen = (
                torch.zeros((), device=device),
                torch.zeros((), device=device),
                0,
            )
            tick = time.perf_counter()
            batches = data.batches(
                "train", cfg.batch_size, shuffle=True, generator=generator, drop_last=True
            )
            for x, y in batches:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                loss.backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                if controller is not None:
                    controller.step()
                train_loss += loss.detach() * len(y)
                train_correct += (logits.argmax(1) == y).sum()
                seen += len(y)
                if step % cfg.log_every == 0:
                    value = loss.item()  # a CPU-GPU sync point, once every log_every steps
                    if not math.isfinite(value):
                        raise TrainingDiverged(
                            f"loss became {value} at step {step} (epoch {epoch + 1}): "
                            f"lower --lr (now {cfg.lr:g}) or keep --grad-clip on"
                        )
                    now = time.perf_counter()
                    recorder.step(
                        step, value, scheduler.get_last_lr()[0], (now - tick) / cfg.log_every
                    )
                    tick = now
            val_loss, val_acc = evaluate(model, data, "val", amp)
            mean_train_loss = train_loss.item() / max(1, seen)
            if not math.isfinite(mean_train_loss):
                raise TrainingDiverged(
                    f"loss became {mean_train_loss} in epoch {epoch + 1}: lower --lr (now {cfg.lr:g})"
                )
            best_val = max(best_val, val_acc) if math.isfinite(val_acc) else best_val
            ranks = controller.ranks() if controller else {}
            recorder.epoch(
                {
                    "epoch": epoch + 1,
                    "step": step,
                    "train_loss": mean_train_loss,
                    "train_acc": train_correct.item() / max(1, seen),
                    "val_loss": val_loss,
                    "val_acc": val_acc,
                    "trainable_fraction": controller.trainable_fraction() if controller else 1.0,
                    "stored_fraction": controller.stored_fraction() if controller else 1.0,
                    "mean_rank": sum(ranks.values()) / len(ranks) if ranks else None,
                    "phase": controller.phase if controller else "dense",
                    "time": time.perf_counter() - started,
                }
            )
            if ckpt_path is not None:
                save_checkpoint(
                    ckpt_path,
                    {
                        "config": cfg.model_dump(),
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "oialr": controller.state_dict() if controller else None,
                        "generator": generator.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "epoch": epoch,
                        "step": step,
                        "best_val": best_val,
                        "elapsed": time.perf_counter() - started,
                    },
                )
        test_loss, test_acc = evaluate(model, data, "test", amp)
    except (OIALRError, ValueError) as err:
        if isinstance(err, ValueError) and "not finite" in str(err):
            err = TrainingDiverged(f"training diverged at step {step}: {err}; lower --lr")
        recorder.finish("failed", None, str(err))
        raise err from None
    except BaseException as err:  # pruned, interrupted, out of memory: never left "running"
        status = "pruned" if type(err).__name__ == "TrialPruned" else "failed"
        recorder.finish(status, None, f"{type(err).__name__}: {err}".strip(": "))
        raise

    result = RunResult(
        run_id=recorder.run_id,
        mode=cfg.mode,
        best_val_acc=best_val,
        final_val_acc=val_acc,
        test_acc=test_acc,
        test_loss=test_loss,
        trainable_fraction=controller.trainable_fraction() if controller else 1.0,
        stored_fraction=controller.stored_fraction() if controller else 1.0,
        wall_time=time.perf_counter() - started,
        steps=step,
        epochs=cfg.epochs,
        conversion_step=controller.conversion_step if controller else None,
        ranks=controller.ranks() if controller else {},
    )
    recorder.finish("complete", result, None)
    return result
