"""Your own dataset, named in a spec or on the command line as ``dataset = "mypkg.data:load"``.

The contract: ``load(**dataset_options)`` (plus ``seed`` and ``data_dir`` where it declares them)
returns the splits, either as a mapping ``{"train": S, "test": S}`` (optionally ``"val": S`` and
``"num_classes": int``) or as a tuple ``(train, test)`` / ``(train, val, test)``. Each split ``S``
is a pair ``(x, y)`` of tensors or numpy arrays with ``y`` integer class labels in
``[0, num_classes)``, or a ``torch.utils.data.Dataset`` of ``(x, y)`` items (stacked once). Without
a ``val`` split, ``val_fraction`` of train is held out with a seeded shuffle, as for the
built-in datasets; ``subset`` keeps that many training examples. Everything is checked when it
is loaded, with one line naming the problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data import Dataset, split_indices
from .errors import ConfigError
from .imports import call_with, resolve

__all__ = ["load_imported"]

FIELD = "run.dataset"


def _fail(name: str, problem: str) -> ConfigError:
    return ConfigError(f"`{FIELD}`: {name} {problem}", field="dataset")


def _split(name: str, which: str, value: Any) -> tuple[Tensor, Tensor]:
    """One split as (float x, int64 y) tensors."""
    if isinstance(value, torch.utils.data.Dataset) and not isinstance(value, (tuple, list)):
        items = [value[i] for i in range(len(value))]
        if not items:
            raise _fail(name, f"returned an empty {which} dataset")
        value = (torch.stack([torch.as_tensor(x) for x, _ in items]), [y for _, y in items])
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise _fail(
            name, f"returned a {type(value).__name__} for {which}; expected (x, y) or a Dataset"
        )
    x, y = (torch.as_tensor(np.asarray(v)) if not torch.is_tensor(v) else v for v in value)
    if len(x) != len(y):
        raise _fail(name, f"{which}: {len(x)} inputs but {len(y)} labels")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dim() != 1:
        raise _fail(
            name,
            f"{which}: labels must be a 1-d tensor of integer classes, got {y.dtype} {tuple(y.shape)}",
        )
    return x.float(), y.long()


def _splits(name: str, returned: Any) -> tuple[dict[str, tuple[Tensor, Tensor]], int | None]:
    if isinstance(returned, Mapping):
        missing = {"train", "test"} - set(returned)
        if missing:
            raise _fail(name, f"returned a mapping without {sorted(missing)}; give train and test")
        splits = {
            k: _split(name, k, returned[k]) for k in ("train", "val", "test") if k in returned
        }
        return splits, returned.get("num_classes")
    if isinstance(returned, tuple) and len(returned) in (2, 3):
        names = ("train", "test") if len(returned) == 2 else ("train", "val", "test")
        return {k: _split(name, k, v) for k, v in zip(names, returned)}, None
    raise _fail(
        name, f"returned a {type(returned).__name__}; expected {{'train': (x, y), 'test': (x, y)}} "
        "or (train, test) / (train, val, test)",
    )  # fmt: skip


def load_imported(
    name: str, options: dict[str, Any], *, data_dir, val_fraction: float, subset, seed: int
) -> Dataset:
    """Call the loader ``name`` and check what it returned (see the module's contract)."""
    loader = resolve(name, FIELD)
    try:
        returned = call_with(loader, options, seed=seed, data_dir=data_dir)
    except Exception as err:  # your loader's own error, or an option it does not take
        raise _fail(name, f"raised {type(err).__name__}: {err}".split("\n")[0]) from None
    splits, num_classes = _splits(name, returned)
    train_x, train_y = splits["train"]
    if "val" in splits:
        keep = torch.arange(len(train_y))[: subset or len(train_y)]
        train_x, train_y, (val_x, val_y) = train_x[keep], train_y[keep], splits["val"]
    else:
        train_idx, val_idx = split_indices(
            len(train_y), val_fraction=val_fraction, subset=subset, seed=seed
        )
        val_x, val_y = train_x[val_idx], train_y[val_idx]
        train_x, train_y = train_x[train_idx], train_y[train_idx]
    test_x, test_y = splits["test"]
    labels = torch.cat([train_y, val_y, test_y])
    classes = int(num_classes) if num_classes is not None else int(labels.max()) + 1
    if len(train_y) == 0 or labels.min() < 0 or labels.max() >= classes:
        raise _fail(name, f"labels must lie in [0, {classes}) with a non-empty train split")
    shapes = {tuple(t.shape[1:]) for t in (train_x, val_x, test_x) if len(t)}
    if len(shapes) != 1:
        raise _fail(name, f"splits have different input shapes {sorted(shapes)}")
    return Dataset(
        name=name, train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y, test_x=test_x,
        test_y=test_y, num_classes=classes,
    )  # fmt: skip
