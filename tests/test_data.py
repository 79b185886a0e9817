"""Tests of oialr.data on tiny IDX files written to tmp_path and the synthetic dataset."""

from __future__ import annotations

import dataclasses
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from oialr import data, sources
from oialr.data import Dataset, load_dataset, random_crop, split_indices
from oialr.errors import ConfigError, DataError
from oialr.run_config import DATASETS
from oialr.sources import read_idx

N_TRAIN, N_TEST = 60, 20
MEAN, STD = data.NORMALISATION["fashion-mnist"][0][0], data.NORMALISATION["fashion-mnist"][1][0]


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_arrays() -> dict[str, np.ndarray]:
    """Random images whose pixel (0, 0) holds the example's index, so it can be recovered."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8)
    train[:, 0, 0] = np.arange(N_TRAIN)
    test[:, 0, 0] = np.arange(N_TEST)
    return {
        "train-images-idx3-ubyte": train,
        "train-labels-idx1-ubyte": np.arange(N_TRAIN, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": test,
        "t10k-labels-idx1-ubyte": (np.arange(N_TEST, dtype=np.uint8) * 3) % 10,
    }


def write_idx_dir(directory: Path, *, gz: bool) -> dict[str, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    arrays = make_arrays()
    for stem, array in arrays.items():
        raw = idx_bytes(array)
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / stem).write_bytes(raw)
    return arrays


def normalised(images: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(images.astype(np.float32))[:, None] / 255 - MEAN) / STD


def indices(x: torch.Tensor) -> list[int]:
    """Recover example indices from pixel (0, 0) of unaugmented, normalised images."""
    return torch.round((x[:, 0, 0, 0] * STD + MEAN) * 255).long().tolist()


@pytest.fixture
def no_debian(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")


@pytest.fixture
def idx_dir(tmp_path: Path, no_debian: None) -> Path:
    write_idx_dir(tmp_path / "fm", gz=True)
    return tmp_path / "fm"


@pytest.mark.parametrize(
    ("layout", "gz"),
    [("flat", True), ("flat", False), ("torchvision", True), ("torchvision", False)],
)
def test_loads_idx_layouts(tmp_path: Path, no_debian: None, layout: str, gz: bool) -> None:
    root = tmp_path / "data"
    folder = root if layout == "flat" else root / "FashionMNIST" / "raw"
    arrays = write_idx_dir(folder, gz=gz)
    ds = load_dataset("fashion-mnist", data_dir=root, val_fraction=0.1, seed=3)

    assert isinstance(ds, Dataset)
    assert ds.name == "fashion-mnist" and ds.num_classes == 10
    assert ds.input_shape == (1, 28, 28)
    assert ds.train_x.shape == (54, 1, 28, 28) and ds.val_x.shape == (6, 1, 28, 28)
    assert ds.test_x.shape == (N_TEST, 1, 28, 28)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.augment == "crop"  # no flips for garments and digits

    # The test set keeps its order; train/val are the seeded split of the training set.
    torch.testing.assert_close(ds.test_x, normalised(arrays["t10k-images-idx3-ubyte"]))
    assert ds.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    train_idx, val_idx = split_indices(N_TRAIN, val_fraction=0.1, subset=None, seed=3)
    expected = normalised(arrays["train-images-idx3-ubyte"])
    torch.testing.assert_close(ds.train_x, expected[train_idx])
    torch.testing.assert_close(ds.val_x, expected[val_idx])
    assert ds.train_y.tolist() == (train_idx % 10).tolist()
    assert sorted(indices(ds.train_x) + indices(ds.val_x)) == list(range(N_TRAIN))


def test_val_split_is_deterministic(idx_dir: Path) -> None:
    a = load_dataset("fashion-mnist", data_dir=idx_dir, seed=1)
    b = load_dataset("fashion-mnist", data_dir=idx_dir, seed=1)
    c = load_dataset("fashion-mnist", data_dir=idx_dir, seed=2)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_x, b.train_x)
    assert indices(a.val_x) != indices(c.val_x)


def test_zero_val_fraction_gives_empty_val(idx_dir: Path) -> None:
    ds = load_dataset("fashion-mnist", data_dir=idx_dir, val_fraction=0.0)
    assert ds.val_x.shape == (0, 1, 28, 28) and ds.val_y.shape == (0,)
    assert len(ds.train_y) == N_TRAIN
    assert list(ds.batches("val", 8, shuffle=True)) == []


def test_subset_keeps_a_seeded_part_of_the_training_set(idx_dir: Path) -> None:
    ds = load_dataset("fashion-mnist", data_dir=idx_dir, subset=20, val_fraction=0.1, seed=5)
    assert len(ds.train_y) == 18 and len(ds.val_y) == 2
    assert len(ds.test_y) == N_TEST  # the test set is never cut
    kept = indices(ds.train_x) + indices(ds.val_x)
    assert len(set(kept)) == 20 and kept != list(range(20))


def test_pad_to_pads_with_black(idx_dir: Path) -> None:
    plain = load_dataset("fashion-mnist", data_dir=idx_dir)
    padded = load_dataset("fashion-mnist", data_dir=idx_dir, pad_to=32)
    assert padded.input_shape == (1, 32, 32)
    torch.testing.assert_close(padded.train_x[:, :, 2:30, 2:30], plain.train_x)
    black = torch.full((1,), -MEAN / STD)
    assert torch.allclose(padded.train_x[:, :, :2], black)
    assert torch.allclose(padded.train_x[:, :, :, 30:], black)
    with pytest.raises(ConfigError, match="pad_to"):
        load_dataset("fashion-mnist", data_dir=idx_dir, pad_to=20)


def test_corrupt_magic_number_names_the_file(idx_dir: Path) -> None:
    bad = idx_dir / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(bad.read_bytes()))
    raw[2] = 0x42
    bad.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte") as info:
        load_dataset("fashion-mnist", data_dir=idx_dir)
    assert "magic" in str(info.value)


def test_truncated_file_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((3, 4, 4), np.uint8))[:-5])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        read_idx(path)


def test_read_idx_handles_wider_types(tmp_path: Path) -> None:
    values = np.array([[1, -2], [300000, 4]], dtype=">i4")
    path = tmp_path / "ints"
    path.write_bytes(struct.pack(">BBBBII", 0, 0, 0x0C, 2, 2, 2) + values.tobytes())
    out = read_idx(path)
    assert out.tolist() == values.tolist()
    torch.from_numpy(out)  # native byte order: torch accepts it


def test_missing_dataset_says_where_it_looked_and_how_to_fix(
    tmp_path: Path, no_debian: None
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", data_dir=empty)
    message = str(info.value)
    assert "\n" not in message
    for needle in (str(empty), "no-debian", "apt-get install dataset-fashion-mnist"):
        assert needle in message
    assert "--data-dir" in message and "--download" in message


def test_mnist_reads_torchvision_layout(tmp_path: Path) -> None:
    write_idx_dir(tmp_path / "MNIST" / "raw", gz=False)
    ds = load_dataset("mnist", data_dir=tmp_path, val_fraction=0.0)
    assert ds.name == "mnist" and len(ds.train_y) == N_TRAIN
    mean, std = data.NORMALISATION["mnist"]
    expected = torch.from_numpy(make_arrays()["t10k-images-idx3-ubyte"]).float() / 255 - mean[0]
    torch.testing.assert_close(ds.test_x[:, 0], expected / std[0])


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagenet"])
def test_missing_folder_datasets_are_data_errors(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match=name):
        load_dataset(name, data_dir=tmp_path)


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="fashion-mnist") as info:
        load_dataset("svhn")
    assert all(name in str(info.value) for name in DATASETS)
    for fraction in (-0.1, 0.6):
        with pytest.raises(ConfigError, match="val_fraction"):
            load_dataset("synthetic", val_fraction=fraction)
    with pytest.raises(ConfigError, match="subset"):
        load_dataset("synthetic", subset=0)
    ds = load_dataset("synthetic")
    with pytest.raises(ConfigError, match="split"):
        next(ds.batches("holdout", 8, shuffle=False))
    with pytest.raises(ConfigError, match="batch_size"):
        next(ds.batches("train", 0, shuffle=False))
    with pytest.raises(ConfigError, match="augment"):
        dataclasses.replace(ds, augment="mixup")


def test_shuffled_batches_cover_every_example_once(idx_dir: Path) -> None:
    ds = dataclasses.replace(load_dataset("fashion-mnist", data_dir=idx_dir), augment="none")
    g = torch.Generator().manual_seed(0)
    for split, size in (("train", 54), ("test", N_TEST)):
        batches = list(ds.batches(split, 16, shuffle=True, generator=g))
        assert [len(y) for _, y in batches] == [16] * (size // 16) + [size % 16]
        seen = [i for x, _ in batches for i in indices(x)]
        assert sorted(seen) == sorted(indices(ds.split(split)[0]))
        assert seen != sorted(seen)
        # Labels travel with their images.
        for x, y in batches:
            expected = [i % 10 if split == "train" else (i * 3) % 10 for i in indices(x)]
            assert y.tolist() == expected
    assert ds.steps_per_epoch(16) == 4 and ds.steps_per_epoch(16, drop_last=True) == 3
    assert len(list(ds.batches("train", 16, shuffle=True, drop_last=True))) == 3


def test_augmentation_keeps_shapes_and_is_reproducible(idx_dir: Path) -> None:
    ds = load_dataset("fashion-mnist", data_dir=idx_dir)

    def epoch(seed: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return [x for x, _ in ds.batches("train", 16, shuffle=False, generator=g)]

    first, again, other = epoch(0), epoch(0), epoch(1)
    assert [x.shape[0] for x in first] == [16, 16, 16, 6]
    assert all(x.shape[1:] == (1, 28, 28) for x in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert not torch.equal(torch.cat(first), ds.train_x)  # it did crop
    # Evaluation splits are never augmented.
    assert torch.equal(torch.cat([x for x, _ in ds.batches("test", 16, shuffle=False)]), ds.test_x)


def windows(padded: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Every size x size window of one padded (C, H, W) image."""
    span = padded.shape[-1] - size + 1
    return [padded[:, r : r + size, c : c + size] for r in range(span) for c in range(span)]


def test_random_crop_takes_the_window_at_each_images_drawn_offset() -> None:
    # Non-square images, so rows and columns cannot be confused, padded with a per-channel fill;
    # the offsets are one (row, column) pair per image drawn from the generator: a seed fixes
    # every crop.
    x = torch.randn(16, 2, 5, 7)
    fill = (0.5, -1.0)
    out = random_crop(x, 2, fill=fill, generator=torch.Generator().manual_seed(3))
    offsets = torch.randint(0, 5, (16, 2), generator=torch.Generator().manual_seed(3))
    padded = torch.empty(16, 2, 9, 11)
    padded[:, 0], padded[:, 1] = fill
    padded[:, :, 2:7, 2:9] = x
    for i, (r, c) in enumerate(offsets.tolist()):
        assert torch.equal(out[i], padded[i, :, r : r + 5, c : c + 7])


def test_flip_only_where_it_makes_sense() -> None:
    assert data._DEFAULT_AUGMENT["cifar10"] == "crop-flip"
    assert data._DEFAULT_AUGMENT["cifar100"] == "crop-flip"
    assert data._DEFAULT_AUGMENT["fashion-mnist"] == "crop"
    assert data._DEFAULT_AUGMENT["mnist"] == "crop"
    # With crop-flip some images come out as crops of the mirrored image, some of the original.
    ds = dataclasses.replace(load_dataset("synthetic", val_fraction=0.0), augment="crop-flip")
    out = next(ds.batches("train", 32, shuffle=False, generator=torch.Generator()))[0]
    assert out.shape == (32, 1, 8, 8)
    padded = torch.nn.functional.pad(ds.train_x[:32], (1, 1, 1, 1))  # 1-pixel crop padding
    kinds = set()
    for i in range(32):
        if any(torch.equal(out[i], w) for w in windows(padded[i], 8)):
            kinds.add("plain")
        if any(torch.equal(out[i], w) for w in windows(padded[i].flip(-1), 8)):
            kinds.add("flipped")
    assert kinds == {"plain", "flipped"}


def test_synthetic_is_deterministic_and_learnable() -> None:
    a = load_dataset("synthetic", seed=7)
    b = load_dataset("synthetic", seed=7)
    c = load_dataset("synthetic", seed=8)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.train_y) + len(a.val_y) == 2048 and len(a.test_y) == 512
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)
    # Nearest class mean already beats chance (10%) by far: an MLP can learn it.
    means = torch.stack([a.train_x[a.train_y == k].mean(0) for k in range(10)]).flatten(1)
    pred = torch.cdist(a.test_x.flatten(1), means).argmin(1)
    assert (pred == a.test_y).float().mean() > 0.6


def test_to_moves_every_tensor() -> None:
    ds = load_dataset("synthetic").to("cpu")
    assert ds.device == torch.device("cpu") and ds.test_x.device == torch.device("cpu")


@pytest.mark.skipif(
    not sources.DEBIAN_FASHION_MNIST.is_dir(),
    reason="Debian's Fashion-MNIST (apt-get install dataset-fashion-mnist) is not installed",
)
def test_debian_fashion_mnist(tmp_path: Path) -> None:
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, val_fraction=0.1)
    assert len(ds.train_y) == 54000 and len(ds.val_y) == 6000 and len(ds.test_y) == 10000
    assert ds.num_classes == 10 and set(ds.test_y.tolist()) == set(range(10))
    assert abs(float(ds.train_x.mean())) < 0.05 and abs(float(ds.train_x.std()) - 1) < 0.05
