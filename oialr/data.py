"""Datasets as device-resident tensors.

Small image datasets fit in device memory, so they are decoded once (from the files
:mod:`oialr.sources` reads) into normalised float32 tensors and batched by indexing: no
DataLoader, no PIL, no per-sample work. Training-set augmentation (random crop, horizontal flip)
runs batched on the device, with all randomness drawn from a CPU ``torch.Generator`` so that runs
are reproducible on CPU and GPU alike. ImageNet is the exception: it is streamed from
ImageFolders (:mod:`oialr.imagenet`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from oialr.errors import ConfigError
from oialr.run_config import DATASETS
from oialr.sources import load_cifar, load_idx_dataset

logger = logging.getLogger(__name__)

AUGMENTATIONS: tuple[str, ...] = ("none", "crop", "crop-flip")
SPLITS: tuple[str, ...] = ("train", "val", "test")


# Per-channel (mean, std) of the [0, 1]-scaled training images.
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# Flipping a digit or a garment's asymmetric detail changes what it is; natural photos survive it.
_DEFAULT_AUGMENT = {
    "fashion-mnist": "crop",
    "mnist": "crop",
    "cifar10": "crop-flip",
    "cifar100": "crop-flip",
    "imagenet": "crop-flip",
    "synthetic": "none",
}


@dataclass
class Dataset:
    """A classification dataset held as tensors, ready to batch on its device.

    Attributes:
        name: Dataset name (one of :data:`DATASETS` for the built-in ones).
        train_x: Normalised float32 training images, shape (N, C, H, W).
        train_y: int64 training labels, shape (N,).
        val_x: Validation images, a deterministic split carved from the training set (may be
            empty).
        val_y: Validation labels.
        test_x: The official test set; meant only for the final report.
        test_y: Test labels.
        num_classes: Number of classes.
        augment: What ``batches("train", ...)`` applies: "none", "crop" or "crop-flip".
        pad_fill: Per-channel value that the random crop pads with. It is what a black pixel
            becomes after normalisation, so padding matches torchvision's pad-then-normalise
            pipeline; empty means zeros.
    """

    name: str
    train_x: Tensor = field(repr=False)
    train_y: Tensor = field(repr=False)
    val_x: Tensor = field(repr=False)
    val_y: Tensor = field(repr=False)
    test_x: Tensor = field(repr=False)
    test_y: Tensor = field(repr=False)
    num_classes: int
    augment: str = "none"
    pad_fill: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(
                f"dataset {self.name!r}: unknown augment {self.augment!r}; "
                f"choose one of {', '.join(AUGMENTATIONS)}"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, (C, H, W)."""
        return tuple(self.train_x.shape[1:])

    @property
    def device(self) -> torch.device:
        """The device the tensors live on."""
        return self.train_x.device

    def to(self, device: str | torch.device) -> Dataset:
        """Return a copy with every tensor moved to ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **moved)

    def split(self, split: str) -> tuple[Tensor, Tensor]:
        """Return the (images, labels) of ``split`` ("train", "val" or "test")."""
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, f"{split}_x"), getattr(self, f"{split}_y")

    def steps_per_epoch(self, batch_size: int, drop_last: bool = False) -> int:
        """Number of training batches in one epoch."""
        return steps_per_epoch(len(self.train_y), batch_size, drop_last)

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        order: Tensor | None = None,
        start: int = 0,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (images, labels) batches of one pass over ``split``.

        Args:
            split: "train", "val" or "test". Only "train" is augmented (per ``self.augment``).
            batch_size: Examples per batch; the last batch may be smaller unless ``drop_last``.
            shuffle: Visit the examples in a random order.
            generator: A CPU generator, the only source of randomness (order and augmentation);
                None uses torch's global generator.
            drop_last: Skip a final, incomplete batch.
            order, start: continue a pass: its order (from :meth:`epoch_order`) from batch
                ``start`` on, with ``generator`` in the state it had there.

        Yields:
            Batches on the dataset's device.
        """
        check_batch_size(batch_size)
        if generator is not None and generator.device.type != "cpu":
            raise ConfigError("batches() needs a CPU torch.Generator (indices are moved over)")
        x, y = self.split(split)
        n = len(y)
        if order is None:
            order = self.epoch_order(split, shuffle=shuffle, generator=generator)
        order = order.to(x.device)
        augment = self.augment if split == "train" else "none"
        stop = n - n % batch_size if drop_last else n
        for first in range(start * batch_size, stop, batch_size):
            idx = order[first : first + batch_size]
            xb, yb = x[idx], y[idx]
            if augment != "none":
                xb = self._augment(xb, flip=augment == "crop-flip", generator=generator)
            yield xb, yb

    def epoch_order(self, split: str, *, shuffle: bool, generator=None) -> Tensor:
        """The order one pass visits ``split`` in; drawn on the CPU, so the same seed gives the
        same order on any device."""
        n = len(self.split(split)[1])
        return torch.randperm(n, generator=generator) if shuffle else torch.arange(n)

    def _augment(self, x: Tensor, *, flip: bool, generator: torch.Generator | None) -> Tensor:
        """Random crop after padding (and optionally a random horizontal flip) of a batch."""
        x = random_crop(x, crop_padding(x.shape[-2:]), fill=self.pad_fill, generator=generator)
        if flip:
            mask = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
            x = torch.where(mask[:, None, None, None], x.flip(-1), x)
        return x


def crop_padding(size: tuple[int, ...] | torch.Size) -> int:
    """Padding of the random crop: 4 pixels for 32x32 and larger images, 2 for 28x28."""
    side = min(size)
    if side >= 32:
        return 4
    return 2 if side >= 16 else 1


def random_crop(
    x: Tensor,
    padding: int,
    *,
    fill: tuple[float, ...] = (),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pad a batch by ``padding`` pixels and crop each image back to its size at a random offset.

    Args:
        x: Images (B, C, H, W).
        padding: Pixels of padding on every side.
        fill: Per-channel padding value; empty means zeros.
        generator: CPU generator for the offsets.

    Returns:
        The cropped batch, same shape as ``x``.
    """
    b, c, h, w = x.shape
    if b == 0 or padding == 0:
        return x
    hp, wp = h + 2 * padding, w + 2 * padding
    padded = x.new_zeros(b, c, hp, wp)
    if fill:
        padded[:] = torch.tensor(fill, device=x.device, dtype=x.dtype)[:, None, None]
    padded[:, :, padding : padding + h, padding : padding + w] = x
    offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator).to(x.device)
    # one gather over the flattened padded image: each crop is the same (H, W) grid of flat
    # indices shifted by its offset (1.3-2.6x faster on the CPU than a gather per axis)
    grid = (
        torch.arange(h, device=x.device)[:, None] * wp + torch.arange(w, device=x.device)
    ).flatten()
    index = grid + (offsets[:, 0] * wp + offsets[:, 1])[:, None]  # (B, H*W)
    return padded.flatten(2).gather(2, index[:, None, :].expand(b, c, h * w)).view(b, c, h, w)


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1 (got {batch_size})")


def steps_per_epoch(examples: int, batch_size: int, drop_last: bool) -> int:
    """Training batches in one epoch of ``examples``."""
    check_batch_size(batch_size)
    return examples // batch_size if drop_last else math.ceil(examples / batch_size)


# --------------------------------------------------------------------------------------------
# Synthetic


def make_synthetic(
    seed: int = 0,
    *,
    n_train: int = 2048,
    n_test: int = 512,
    num_classes: int = 10,
    shape: tuple[int, int, int] = (1, 8, 8),
    noise: float = 2.5,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A small learnable task: random class prototypes plus Gaussian noise.

    The images are scaled to unit variance, so they need no further normalisation. With the
    defaults an MLP reaches about 85-90% test accuracy within a couple of epochs (chance is 10%),
    and the noise keeps it below 100%, so better and worse training still differ.

    Returns:
        (train_x, train_y, test_x, test_y); the same for the same arguments.
    """
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(num_classes, *shape, generator=g)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = prototypes[y] + noise * torch.randn(n, *shape, generator=g)
        return x / math.sqrt(1 + noise**2), y

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    return train_x, train_y, test_x, test_y


# --------------------------------------------------------------------------------------------
# Building a Dataset


def _to_tensor(
    images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], pad: int
) -> Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    if pad:
        # Pad before normalising, so the border is black like the images' own background.
        x = F.pad(x, (pad // 2, pad - pad // 2) * 2)
    m = torch.tensor(mean)[:, None, None]
    s = torch.tensor(std)[:, None, None]
    return x.sub_(m).div_(s)


def _pad_amount(name: str, size: tuple[int, int], pad_to: int | None) -> int:
    if pad_to is None:
        return 0
    if size[0] != size[1] or pad_to < size[0]:
        raise ConfigError(
            f"pad_to={pad_to} cannot pad {name}'s {size[0]}x{size[1]} images (must be square "
            "and no larger than pad_to)"
        )
    return pad_to - size[0]


def _validate(name: str, val_fraction: float, subset: int | None) -> str:
    key = name.lower()
    if key not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if not 0.0 <= val_fraction <= 0.5:
        raise ConfigError(f"val_fraction must be in [0, 0.5] (got {val_fraction})")
    if subset is not None and subset < 1:
        raise ConfigError(f"subset must be at least 1 (got {subset})")
    return key


def split_indices(
    n: int, *, val_fraction: float, subset: int | None, seed: int
) -> tuple[Tensor, Tensor]:
    """Deterministic (train, val) indices into a training set of ``n`` examples.

    One seeded shuffle orders the examples; ``subset`` keeps its first ``subset`` (train and val
    together), and the first ``round(val_fraction * kept)`` of those become the validation set.
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if subset is not None:
        order = order[:subset]
    n_val = round(val_fraction * len(order))
    return order[n_val:], order[:n_val]


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    subset: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    pad_to: int | None = None,
) -> Dataset:
    """Load a dataset as normalised tensors on ``device``.

    Args:
        name: One of :data:`DATASETS`.
        data_dir: Where to look for the files (and where downloads go).
        download: Fetch the dataset through torchvision if it is not found.
        val_fraction: Share of the (subset of the) training set held out for validation, in
            [0, 0.5]; 0 gives empty validation tensors.
        subset: Keep only this many training examples (train + val), chosen by a seeded shuffle.
        seed: Seeds the shuffle behind ``subset`` and the validation split (and the synthetic
            data itself).
        device: Where the tensors live.
        pad_to: Zero-pad square images to this size (e.g. 32 for 28x28 images and patch-8 ViTs).

    Returns:
        A :class:`Dataset`; for "imagenet" an :class:`oialr.imagenet.ImageFolderData`
        streaming from disk, with the same interface.

    Raises:
        ConfigError: Unknown name or bad argument.
        DataError: The files are missing or corrupt.
    """
    key = _validate(name, val_fraction, subset)
    root = Path(data_dir).expanduser() if data_dir is not None else None
    if key == "imagenet":
        from oialr.imagenet import load_imagenet  # torchvision's ImageFolders: only here

        return load_imagenet(root, val_fraction, subset, seed, device)

    train_x, train_y, test_x, test_y, fill = _tensors(key, root, download, seed, pad_to)
    train_idx, val_idx = split_indices(
        len(train_y), val_fraction=val_fraction, subset=subset, seed=seed
    )
    dataset = Dataset(
        name=key,
        train_x=train_x[train_idx],
        train_y=train_y[train_idx],
        val_x=train_x[val_idx],
        val_y=train_y[val_idx],
        test_x=test_x,
        test_y=test_y,
        num_classes=100 if key == "cifar100" else 10,
        augment=_DEFAULT_AUGMENT[key],
        pad_fill=fill,
    )
    logger.info(
        "%s: %d train / %d val / %d test, shape %s", key, len(dataset.train_y),
        len(dataset.val_y), len(dataset.test_y), dataset.input_shape,
    )  # fmt: skip
    return dataset.to(device)


def _tensors(key: str, root: Path | None, download: bool, seed: int, pad_to: int | None):
    """(train_x, train_y, test_x, test_y, pad fill) of a built-in dataset, normalised."""
    if key == "synthetic":
        train_x, train_y, test_x, test_y = make_synthetic(seed)
        if pad_to is not None:
            pad = _pad_amount(key, tuple(train_x.shape[-2:]), pad_to)
            train_x, test_x = (F.pad(t, (pad // 2, pad - pad // 2) * 2) for t in (train_x, test_x))
        return train_x, train_y, test_x, test_y, ()
    if key in ("fashion-mnist", "mnist"):
        arrays = load_idx_dataset(key, root, download)
    else:
        arrays = load_cifar(key, root, download)
    train_np, train_lab, test_np, test_lab = arrays
    mean, std = NORMALISATION[key]
    pad = _pad_amount(key, tuple(train_np.shape[-2:]), pad_to)
    return (
        _to_tensor(train_np, mean, std, pad),
        torch.from_numpy(np.asarray(train_lab, dtype=np.int64)),
        _to_tensor(test_np, mean, std, pad),
        torch.from_numpy(np.asarray(test_lab, dtype=np.int64)),
        tuple(-m / s for m, s in zip(mean, std)),
    )
