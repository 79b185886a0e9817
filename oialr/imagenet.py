"""ImageNet: far too big for tensors, so streamed from ImageFolders through a DataLoader, behind
the same ``batches``/``steps_per_epoch``/``input_shape``/``to`` interface as
:class:`oialr.data.Dataset`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from oialr.data import NORMALISATION, SPLITS, check_batch_size, split_indices, steps_per_epoch
from oialr.errors import ConfigError, DataError


class _Transformed(torch.utils.data.Dataset):
    """Some indices of a shared ImageFolder, with their own transform (train vs eval)."""

    def __init__(self, base, indices: list[int], transform) -> None:
        self.base, self.indices, self.transform = base, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        path, label = self.base.samples[self.indices[i]]
        return self.transform(self.base.loader(path)), label


@dataclass
class ImageFolderData:
    """A Dataset-like view of ImageFolders too big for tensors, batched by a DataLoader.

    It offers the same ``batches``/``steps_per_epoch``/``input_shape``/``to`` interface as
    :class:`Dataset`, but has no ``*_x``/``*_y`` tensors.
    """

    name: str
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    num_classes: int
    augment: str = "crop-flip"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    num_workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3, 224, 224)

    def to(self, device: str | torch.device) -> ImageFolderData:
        return dataclasses.replace(self, device=torch.device(device))

    def steps_per_epoch(self, batch_size: int, drop_last: bool = False) -> int:
        return steps_per_epoch(len(self.train), batch_size, drop_last)  # type: ignore[arg-type]

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (images, labels) batches of ``split`` on ``self.device``."""
        check_batch_size(batch_size)
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        loader = torch.utils.data.DataLoader(
            getattr(self, split),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def load_imagenet(
    root: Path | None, val_fraction: float, subset: int | None, seed: int, device
) -> ImageFolderData:
    if root is None or not (root / "train").is_dir() or not (root / "val").is_dir():
        raise DataError(
            f"imagenet: no train/ and val/ ImageFolders under {root or '(no --data-dir)'}; "
            "imagenet needs a GPU machine and --data-dir with train/ and val/ ImageFolders"
        )
    from torchvision import datasets, transforms

    mean, std = NORMALISATION["imagenet"]
    norm = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), *norm]
    )
    eval_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), *norm])
    train_folder = datasets.ImageFolder(str(root / "train"))
    test_folder = datasets.ImageFolder(str(root / "val"), transform=eval_tf)
    train_idx, val_idx = split_indices(
        len(train_folder), val_fraction=val_fraction, subset=subset, seed=seed
    )
    return ImageFolderData(
        name="imagenet",
        train=_Transformed(train_folder, train_idx.tolist(), train_tf),
        val=_Transformed(train_folder, val_idx.tolist(), eval_tf),
        test=test_folder,
        num_classes=len(train_folder.classes),
        device=torch.device(device),
    )
