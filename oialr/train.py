"""One training run: ``fit(run_config, recorder) -> RunResult``.

Reads in the order of nanoGPT's ``train.py``, one phase a function: :func:`setup` (device and
seeds, data, model, optimizer and schedule), :func:`restore` (resume from a checkpoint), then per
epoch :func:`train_epoch` (forward, backward, clip, step, ``controller.step()``, log),
:func:`evaluate` and :func:`save`, and the final :class:`RunResult`. A dense run goes through the
same loop with :class:`DenseRun`, a controller that does nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .controller import OIALR
from .conversion import plan_conversion
from .data import load_dataset
from .errors import ConfigError, OIALRError, RunPruned, TrainingDiverged
from .imports import is_import_string
from .loaders import load_imported
from .models import build_model
from .recorders import Recorder
from .run_config import RunConfig, RunResult
from .vocab import COMPLETE, DENSE, FAILED, LOW_RANK, PRUNED
from .warmup import PER_EPOCH, WarmupCache, trajectory_key

_logger = logging.getLogger(__name__)

__all__ = ["fit", "preflight", "load_data", "DenseRun", "evaluate", "resolve_device"]


class DenseRun:
    """The controller of a dense run: the same interface as :class:`oialr.OIALR`, no effect."""

    phase = DENSE
    conversion_step = None

    def step(self) -> None:
        return None

    def ranks(self) -> dict[str, int]:
        return {}

    def trainable_fraction(self) -> float:
        return 1.0

    def stored_fraction(self) -> float:
        return 1.0

    def state_dict(self) -> None:
        return None

    def load_state_dict(self, state: Any) -> None:
        pass


@dataclass
class _Run:
    """What a run holds while it trains."""

    cfg: RunConfig
    device: torch.device
    amp: bool
    data: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    steps_per_epoch: int
    layout: torch.memory_format | None  # channels_last for convnets where it is faster
    controller: OIALR | DenseRun | None = None
    epoch: int = 0  # the next epoch to train
    step: int = 0
    best_val: float = 0.0
    started: float = 0.0  # perf_counter origin, moved back by the elapsed time of a resume
    # the epoch in progress: its order, batches done, (loss sum, correct, seen) so far
    order: torch.Tensor | None = None
    batch: int = 0
    sums: list = field(default_factory=list)
    # the shared warm-up: where snapshots go, their key, what was recorded before them
    warmup: WarmupCache | None = None
    key: dict | None = None
    logged: list = field(default_factory=list)
    epoch_rows: list = field(default_factory=list)
    warm_step: int = 0  # the snapshot's step this run started from

    @property
    def checkpoint(self) -> Path | None:
        return Path(self.cfg.checkpoint_dir) / "checkpoint.pt" if self.cfg.checkpoint_dir else None


# -- setup -------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: no CUDA device is available here; use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            "numbered from 0"
        )
    return device


def memory_layout(cfg: RunConfig, model: torch.nn.Module, device: torch.device):
    """``torch.channels_last`` for a model with 2-d convolutions when asked, or by default on
    the CPU, where it measured 1.7-3x faster for LeNet-5 and ResNet-20 here; else None."""
    convnet = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    wanted = cfg.memory_format == "channels_last" or (
        cfg.memory_format == "auto" and device.type == "cpu"
    )
    return torch.channels_last if convnet and wanted else None


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


_DATA_FIELDS = ("dataset", "dataset_options", "data_dir", "download", "val_fraction", "subset",
                "seed", "pad_to")  # fmt: skip


def load_data(cfg: RunConfig):
    """The run's dataset: a built-in one, or yours (``package.module:function``), loaded once
    per process for a given set of data options (a study's trials share it: loading
    Fashion-MNIST took 769 of the 828 ms a quickstart trial spent outside training)."""
    key = json.dumps({f: getattr(cfg, f) for f in _DATA_FIELDS}, sort_keys=True, default=str)
    if key not in _LOADED:
        if len(_LOADED) >= 2:  # two datasets at most: seeds of one study, not every study
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = _load_data(cfg)
    return _LOADED[key]


_LOADED: dict[str, Any] = {}


def _load_data(cfg: RunConfig):
    if is_import_string(cfg.dataset):
        return load_imported(
            cfg.dataset, cfg.dataset_options, data_dir=cfg.data_dir,
            val_fraction=cfg.val_fraction, subset=cfg.subset, seed=cfg.seed,
        )  # fmt: skip
    return load_dataset(
        cfg.dataset, data_dir=cfg.data_dir, download=cfg.download, val_fraction=cfg.val_fraction,
        subset=cfg.subset, seed=cfg.seed, pad_to=cfg.pad_to,
    )  # fmt: skip


def setup(cfg: RunConfig) -> _Run:
    """Device, seeds, data, model, optimizer and schedule; nothing recorded yet."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg).to(device)
    model = build_model(cfg.model, data.input_shape, data.num_classes, **cfg.model_options)
    layout = memory_layout(cfg, model, device)
    model = model.to(device, memory_format=layout or torch.preserve_format)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = data.steps_per_epoch(cfg.batch_size, drop_last=True)
    total = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total)
    )
    return _Run(
        cfg, device, cfg.amp and device.type == "cuda", data, model, optimizer, scheduler,
        torch.Generator().manual_seed(cfg.seed), steps_per_epoch, layout,
    )  # fmt: skip


def preflight(cfg: RunConfig, resume: bool = False) -> None:
    """What a run would fail on before its first step, checked without recording anything: the
    device, the checkpoint folder (and with ``resume``, its checkpoint), the data and the batch
    size, the model (built, and called on two examples), the conversion plan. ``oialr train``
    and ``oialr study run`` call it before they write a byte.

    Raises:
        ConfigError, DataError: one line naming the option and the fix.
    """
    resolve_device(cfg.device)
    folder = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    if folder is not None and folder.exists() and not folder.is_dir():
        raise ConfigError(
            f"--checkpoint-dir {folder} is a file; give a folder", field="checkpoint_dir"
        )
    if resume:
        if folder is None or not (folder / "checkpoint.pt").is_file():
            raise ConfigError(
                f"--resume: no checkpoint in {folder}; leave --resume out to start the run"
            )
        checked_checkpoint(folder / "checkpoint.pt", cfg)
    data = load_data(cfg)
    if data.steps_per_epoch(cfg.batch_size, drop_last=True) == 0:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is larger than the training set "
            f"({data.steps_per_epoch(1)} examples): lower it, or train on more data",
            field="batch_size",
        )
    model = build_model(cfg.model, data.input_shape, data.num_classes, **cfg.model_options)
    x, _ = next(iter(data.batches("train", min(2, cfg.batch_size), shuffle=False)))
    try:
        with torch.no_grad():
            out = model.eval()(x.cpu())
    except Exception as err:  # the model cannot take the data: say so, not where it broke
        raise ConfigError(
            f"`run.model`: {cfg.model} fails on the data's inputs of shape "
            f"{tuple(data.input_shape)} ({type(err).__name__}: {err})".split("\n")[0],
            field="model",
        ) from None
    if not torch.is_tensor(out) or out.shape != (len(x), data.num_classes):
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ConfigError(
            f"`run.model`: {cfg.model} gives {shape} for {len(x)} examples; the dataset needs "
            f"({len(x)}, {data.num_classes}) logits",
            field="model",
        )
    if cfg.mode != DENSE:
        plan_conversion(model, cfg.oialr, {id(p) for p in model.parameters() if p.requires_grad})


def make_controller(run: _Run, recorder: Recorder) -> OIALR | DenseRun:
    """OIALR for ``oialr`` and ``fixed-rank`` runs, :class:`DenseRun` for dense ones."""
    if run.cfg.mode == DENSE:
        return DenseRun()
    return OIALR(
        run.model,
        run.optimizer,
        **run.cfg.oialr.model_dump(),
        on_update=lambda _, records: recorder.layers(records),
        steps_per_epoch=run.steps_per_epoch,
        total_steps=run.cfg.epochs * run.steps_per_epoch,
    )


# -- checkpoints ---------------------------------------------------------------------------------
def save(run: _Run) -> None:
    """Write then rename, so a crash mid-write never leaves a truncated checkpoint."""
    path = run.checkpoint
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": run.cfg.model_dump(),
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "oialr": run.controller.state_dict(),
        "generator": run.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "epoch": run.epoch - 1,
        "step": run.step,
        "best_val": run.best_val,
        "elapsed": time.perf_counter() - run.started,
    }
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


def checked_checkpoint(path: Path, cfg: RunConfig) -> dict[str, Any]:
    """The checkpoint at ``path``, if it is an oialr checkpoint of this run."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or not ckpt.keys() >= _CHECKPOINT_KEYS:
        raise ConfigError(
            f"checkpoint {path} is not an oialr checkpoint: use another --checkpoint-dir, or "
            "drop --resume"
        )
    saved = ckpt["config"] if isinstance(ckpt["config"], dict) else {}
    for key in ("model", "model_options", "dataset", "mode"):
        if saved.get(key) != getattr(cfg, key):
            raise ConfigError(
                f"checkpoint {path} is of another run ({key} {saved.get(key)!r}, not "
                f"{getattr(cfg, key)!r}): use another --checkpoint-dir, or drop --resume"
            )
    return ckpt


_CHECKPOINT_KEYS = {"config", "model", "optimizer", "scheduler", "oialr", "generator", "epoch"}


def restore(run: _Run) -> None:
    """Continue from the run's checkpoint, bit for bit on the CPU: model, optimizer, schedule,
    controller, data order and RNG all come back."""
    ckpt = checked_checkpoint(run.checkpoint, run.cfg)
    run.controller.load_state_dict(ckpt["oialr"])  # first: it rebuilds the factorised layers
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.generator.set_state(ckpt["generator"])
    torch.set_rng_state(ckpt["torch_rng"])
    run.epoch, run.step, run.best_val = ckpt["epoch"] + 1, ckpt["step"], ckpt["best_val"]
    run.started -= ckpt["elapsed"]
    _logger.info("resumed %s at epoch %d (step %d)", run.cfg.run_name, run.epoch, run.step)


# -- one epoch -----------------------------------------------------------------------------------
def train_epoch(run: _Run, recorder: Recorder) -> tuple[float, float]:
    """One pass over the training set (or the rest of one, after a snapshot); returns (mean
    loss, accuracy)."""
    cfg, device = run.cfg, run.device
    if run.order is None:  # a new epoch; running sums stay on the device: no sync per step
        run.order = run.data.epoch_order("train", shuffle=True, generator=run.generator)
        run.batch, run.sums = 0, [torch.zeros((), device=device), torch.zeros((), device=device), 0]
    tick = time.perf_counter()
    batches = run.data.batches(
        "train", cfg.batch_size, shuffle=True, generator=run.generator, drop_last=True,
        order=run.order, start=run.batch,
    )  # fmt: skip
    for x, y in batches:
        if run.layout is not None:
            x = x.contiguous(memory_format=run.layout)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.amp):
            logits = run.model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.scheduler.step()
        run.step += 1
        run.controller.step()
        run.batch += 1
        run.sums[0] += loss.detach() * len(y)
        run.sums[1] += (logits.argmax(1) == y).sum()
        run.sums[2] += len(y)
        if run.step % cfg.log_every == 0:
            value = loss.item()  # a CPU-GPU sync point, once every log_every steps
            _check_finite(value, run)
            now = time.perf_counter()
            row = [run.step, value, run.scheduler.get_last_lr()[0], (now - tick) / cfg.log_every]
            recorder.step(*row)
            run.logged.append(row)
            tick = now
        if run.warmup is not None:
            share_warmup(run)
    (loss_sum, correct, seen), run.order = run.sums, None
    mean_loss = loss_sum.item() / max(1, seen)
    _check_finite(mean_loss, run)
    return mean_loss, correct.item() / max(1, seen)


def _check_finite(loss: float, run: _Run) -> None:
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"loss became {loss} at step {run.step} (epoch {run.epoch + 1}): lower --lr (now "
            f"{run.cfg.lr:g}) or keep --grad-clip on"
        )


@torch.no_grad()
def evaluate(
    model, data, split: str, amp: bool, batch_size: int = 1024, layout=None
) -> tuple[float, float]:
    """(mean loss, accuracy) over a split; (nan, nan) when the split is empty."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, y in data.batches(split, batch_size, shuffle=False):
        if layout is not None:
            x = x.contiguous(memory_format=layout)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    model.train()
    if count == 0:
        return float("nan"), float("nan")
    return total_loss / count, correct / count


def epoch_metrics(run: _Run, train: tuple[float, float], val: tuple[float, float]) -> dict:
    """The epoch row a recorder receives (the columns of the store's epochs table)."""
    ctl, ranks = run.controller, run.controller.ranks()
    return {
        "epoch": run.epoch + 1,
        "step": run.step,
        "train_loss": train[0],
        "train_acc": train[1],
        "val_loss": val[0],
        "val_acc": val[1],
        "trainable_fraction": ctl.trainable_fraction(),
        "stored_fraction": ctl.stored_fraction(),
        "mean_rank": sum(ranks.values()) / len(ranks) if ranks else None,
        "phase": ctl.phase,
        "time": time.perf_counter() - run.started,
    }


# -- the shared warm-up ------------------------------------------------------------------------------
def _warmup_limit(run: _Run) -> int | None:
    """The first step this run's trajectory may differ from a dense one's (None: any step may,
    when a stability switch decides)."""
    config = getattr(run.controller, "config", None)
    total = run.cfg.epochs * run.steps_per_epoch
    if config is None:  # a dense run
        return total
    if config.switch == "stability":
        return None
    return int(config.delay)


def share_warmup(run: _Run) -> None:
    """Save a snapshot of the dense phase when one is due (every eighth of an epoch, and at this
    run's last dense step, before the cache's limit) and not on disk yet."""
    departs = limit = _warmup_limit(run)
    if run.controller.phase == LOW_RANK or (limit is not None and run.step >= limit):
        return
    until = run.warmup.until
    if until is not None:
        total = run.cfg.epochs * run.steps_per_epoch
        end = math.ceil(
            until[0] * {"steps": 1, "epochs": run.steps_per_epoch, "fraction": total}[until[1]]
        )
        limit = end if limit is None else min(limit, end)
    # the last dense step too: a sampler draws delays near good ones, and a run converting a
    # few steps after an earlier one starts there, not up to an eighth of an epoch back
    grid = run.step % max(1, run.steps_per_epoch // PER_EPOCH) == 0
    due = grid or (departs is not None and run.step == departs - 1)
    if due and run.warmup.wanted(run.key, run.step, limit):
        payload = {
            "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "generator": run.generator.get_state(),
            "torch_rng": torch.get_rng_state(), "step": run.step, "epoch": run.epoch,
            "batch": run.batch, "order": run.order, "sums": run.sums, "best_val": run.best_val,
            "logged": run.logged, "epoch_rows": run.epoch_rows,
        }  # fmt: skip
        run.warmup.save(run.key, run.step, payload)


def start_warm(run: _Run, warmup: WarmupCache, recorder: Recorder) -> None:
    """Continue from the latest snapshot before this run's conversion, as if it had trained
    there itself; the rows recorded before it are recorded for this run too."""
    if not hasattr(run.data, "epoch_order"):  # streamed data (ImageNet) cannot replay an order
        return
    run.warmup, run.key = warmup, trajectory_key(run.cfg, run.device)
    limit = _warmup_limit(run)
    path = warmup.latest(run.key, limit) if limit is not None else None
    snapshot = warmup.load(path) if path is not None else None
    if snapshot is None:
        return
    run.model.load_state_dict(snapshot["model"])
    run.optimizer.load_state_dict(snapshot["optimizer"])
    run.scheduler.load_state_dict(snapshot["scheduler"])
    run.generator.set_state(snapshot["generator"])
    torch.set_rng_state(snapshot["torch_rng"])
    run.step, run.epoch, run.batch = snapshot["step"], snapshot["epoch"], snapshot["batch"]
    run.warm_step = run.step
    run.order, run.best_val = snapshot["order"], snapshot["best_val"]
    loss_sum, correct, seen = snapshot["sums"]
    run.sums = [loss_sum.to(run.device), correct.to(run.device), seen]
    run.logged, run.epoch_rows = list(snapshot["logged"]), list(snapshot["epoch_rows"])
    if isinstance(run.controller, OIALR):
        run.controller.step_count = run.step  # nothing happens to a model before its delay
    for row in run.logged:
        recorder.step(*row)
    for row in run.epoch_rows:
        recorder.epoch({**row, "phase": run.controller.phase})
    _logger.info("%s: warm start from %s (step %d)", run.cfg.run_name, path, run.step)


# -- the run ---------------------------------------------------------------------------------------
def fit(
    cfg: RunConfig,
    recorder: Recorder | None = None,
    *,
    resume: bool = False,
    warmup: WarmupCache | None = None,
) -> RunResult:
    """Train one model as ``cfg`` says and report the result.

    Args:
        cfg: the run's configuration.
        recorder: receives steps, epochs, layer records; ``None`` records nothing.
        resume: continue from ``cfg.checkpoint_dir/checkpoint.pt`` if it exists.
        warmup: share the dense phase through this cache: start from its latest snapshot
            before the conversion, and save snapshots of this run's own dense phase
            (:mod:`oialr.warmup`); the result is the same as without it, bit for bit on the CPU.

    Raises:
        ConfigError, DataError: bad options or missing data, before anything is recorded.
        TrainingDiverged: the loss became NaN/Inf (recorded as a failed run first).
        RunPruned: a recorder stopped the run (recorded as pruned).
    """
    recorder = recorder or Recorder()
    run = setup(cfg)
    recorder.start(cfg)  # before the controller: a delay of 0 converts, and records, at once
    run.started = time.perf_counter()
    try:
        run.controller = make_controller(run, recorder)
        if resume and run.checkpoint is not None and run.checkpoint.exists():
            restore(run)
        elif warmup is not None:
            start_warm(run, warmup, recorder)
        val = (
            evaluate(run.model, run.data, "val", run.amp, layout=run.layout)
            if run.epoch >= cfg.epochs
            else None
        )
        while run.epoch < cfg.epochs:
            train = train_epoch(run, recorder)
            val = evaluate(run.model, run.data, "val", run.amp, layout=run.layout)
            if math.isfinite(val[1]):
                run.best_val = max(run.best_val, val[1])
            row = epoch_metrics(run, train, val)
            recorder.epoch(row)
            run.epoch_rows.append(row)
            run.epoch += 1
            save(run)
        test_loss, test_acc = evaluate(run.model, run.data, "test", run.amp, layout=run.layout)
    except BaseException as err:  # pruned, diverged, interrupted, out of memory: never "running"
        status = PRUNED if isinstance(err, RunPruned) else FAILED
        reason = str(err) if isinstance(err, OIALRError) else f"{type(err).__name__}: {err}"
        recorder.finish(status, None, reason.strip(": "))
        raise
    ctl = run.controller
    result = RunResult(
        run_id=recorder.run_id, mode=cfg.mode, best_val_acc=run.best_val, final_val_acc=val[1],
        test_acc=test_acc, test_loss=test_loss, trainable_fraction=ctl.trainable_fraction(),
        stored_fraction=ctl.stored_fraction(), wall_time=time.perf_counter() - run.started,
        steps=run.step, epochs=cfg.epochs, conversion_step=ctl.conversion_step, ranks=ctl.ranks(),
        warm_start_step=run.warm_step,
    )  # fmt: skip
    recorder.finish(COMPLETE, result, None)
    return result
