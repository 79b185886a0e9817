"""The shared dense warm-up: snapshots of a run's dense phase that later runs start from.

Every OIALR trial of a study first trains the same dense network for ``delay`` steps: same run
options, seed, data order and learning-rate schedule, whatever its OIALR knobs. So runs save a
snapshot of their dense phase every eighth of an epoch and at their last dense step (model,
optimizer, schedule, data order and every random state, the rows logged so far), and a run
whose conversion comes at step ``d`` starts from the latest snapshot before ``d``: bit for bit
the state it would have reached itself.

The key of a snapshot is everything that determines the dense trajectory: every run option
outside ``oialr`` (and the run's name, mode, checkpoint folder and logging cadence, which do
not), the device type, the torch version and the hardware, the source of oialr's own training
loop, data pipeline and model builders (so a new oialr starts new snapshots), and the source of
your own model builder or loader. Changing any of these makes a new key; data files changed in place under the
same path are not noticed: delete the cache then. Writes go to a temporary file renamed into
place, so concurrent workers never read a torn snapshot, and a cache on a shared path serves
several machines of the same hardware.

Not shared: ``switch="stability"`` runs (when their layers convert depends on the warm-up
stability readings, which a snapshot does not carry) and custom training loops (their state is
theirs). Warm-up stability readings before a run's snapshot are not recorded for that run.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import platform
import tempfile
from importlib import import_module
from pathlib import Path
from typing import Any

import torch

from .imports import is_import_string
from .run_config import RunConfig

_logger = logging.getLogger(__name__)

__all__ = ["WarmupCache", "trajectory_key", "cpu_model"]

PER_EPOCH = 8  # snapshots per epoch of dense training
# Options that do not change the dense trajectory (OIALR's own only act at and after conversion).
_NOT_TRAJECTORY = ("name", "mode", "oialr", "checkpoint_dir", "log_every")
# oialr's code that trains the dense phase: any edit to it may change the trajectory
_DENSE_CODE = ("oialr.train", "oialr.data", "oialr.models")


def trajectory_key(cfg: RunConfig, device: torch.device) -> dict[str, Any]:
    """Everything that determines a run's dense trajectory, as plain JSON values."""
    options = {k: v for k, v in cfg.model_dump().items() if k not in _NOT_TRAJECTORY}
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    sources = {
        field: _source_hash(getattr(cfg, field))
        for field in ("model", "dataset")
        if is_import_string(getattr(cfg, field))
    }
    return {
        "options": options, "device": device.type, "torch": torch.__version__,
        "hardware": hardware, "threads": torch.get_num_threads(), "sources": sources,
        "code": {module: _source_hash(module) for module in _DENSE_CODE},
    }  # fmt: skip


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (falls back to ``platform``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _source_hash(text: str) -> str:
    """A short hash of the source of the module behind ``text`` (an import string)."""
    module = import_module(text.partition(":")[0])
    try:
        return hashlib.sha256(inspect.getsource(module).encode()).hexdigest()[:16]
    except (OSError, TypeError):
        return "unknown"


class WarmupCache:
    """Snapshots of dense phases under ``root``, one folder per trajectory key.

    Args:
        root: the cache folder (created when the first snapshot is written).
        until: save snapshots only before this step (a study passes the end of its delay range,
            as ``(value, unit)``; None: through the whole dense phase).
    """

    def __init__(self, root: str | Path, until: tuple[float, str] | None = None):
        self.root, self.until = Path(root).expanduser(), until

    def folder(self, key: dict[str, Any]) -> Path:
        text = json.dumps(key, sort_keys=True, default=str)
        return self.root / hashlib.sha256(text.encode()).hexdigest()[:24]

    def latest(self, key: dict[str, Any], before: int) -> Path | None:
        """The snapshot of ``key`` with the largest step below ``before``, if any."""
        steps = [(int(p.stem.removeprefix("step-")), p) for p in self.folder(key).glob("step-*.pt")]
        usable = [(s, p) for s, p in steps if s < before]
        return max(usable)[1] if usable else None

    def wanted(self, key: dict[str, Any], step: int, limit: int | None) -> bool:
        """Whether a snapshot at ``step`` (one that is due) is before ``limit`` and not on disk."""
        if limit is not None and step >= limit:
            return False
        return not (self.folder(key) / f"step-{step:08d}.pt").exists()

    def save(self, key: dict[str, Any], step: int, payload: dict[str, Any]) -> None:
        """Write ``payload`` atomically (temporary file, then rename)."""
        folder = self.folder(key)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "key.json").write_text(json.dumps(key, indent=1, sort_keys=True, default=str))
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=".step-", suffix=".tmp")
        os.close(handle)
        try:
            torch.save(payload, tmp)
            os.replace(tmp, folder / f"step-{step:08d}.pt")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load(self, path: Path) -> dict[str, Any] | None:
        """A snapshot, or None when it cannot be read (then the run trains from step 0)."""
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a damaged file is not worth failing a trial over
            _logger.warning(
                "warm-up snapshot %s unreadable (%s): training from the start", path, err
            )
            return None
