"""Image datasets on disk: IDX files (MNIST, Fashion-MNIST, including Debian's
``dataset-fashion-mnist`` package) and CIFAR through torchvision, with downloads only when asked.
Returns numpy arrays; :mod:`oialr.data` turns them into device tensors."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np

from oialr.errors import DataError

logger = logging.getLogger(__name__)

# Where Debian's `dataset-fashion-mnist` package puts the gzipped IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# Where downloads go (and are looked for) when no data_dir is given.
DEFAULT_DATA_DIR = Path.home() / ".cache" / "oialr" / "data"

# IDX element types: code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# --------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or plain) into a numpy array.

    Raises:
        DataError: The file is unreadable, has a bad magic number, or is truncated.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"cannot read IDX file {path}: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(
            f"corrupt IDX file {path}: bad magic number {raw[:4].hex() or '(empty)'} "
            "(expected 0000 08/09/0b/0c/0d/0e then the number of dimensions)"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"corrupt IDX file {path}: truncated header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"corrupt IDX file {path}: {len(raw) - header} data bytes, expected {expected} "
            f"for shape {dims}"
        )
    # A native-endian copy: torch rejects big-endian arrays and warns on read-only buffers.
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def _find_idx_file(directory: Path, stem: str) -> Path | None:
    # Some mirrors spell the files "train-images.idx3-ubyte"; plain beats gz (no decompression).
    for name in (stem, stem.replace("-idx", ".idx")):
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _find_idx_set(directory: Path) -> dict[str, Path] | None:
    """The four IDX files in ``directory``, or None unless all four are there."""
    if not directory.is_dir():
        return None
    found = {key: _find_idx_file(directory, stem) for key, stem in _IDX_FILES.items()}
    missing = [_IDX_FILES[k] for k, p in found.items() if p is None]
    if missing and len(missing) < len(found):
        logger.warning("%s holds only some IDX files; missing %s", directory, ", ".join(missing))
    return None if missing else found  # type: ignore[return-value]


def _load_idx_set(files: dict[str, Path], num_classes: int) -> tuple[np.ndarray, ...]:
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(
                f"{files[f'{split}_images']}: expected images (N, H, W) and labels (N,), "
                f"got {images.shape} and {labels.shape}"
            )
        if len(images) != len(labels):
            raise DataError(
                f"{files[f'{split}_images']} has {len(images)} images but "
                f"{files[f'{split}_labels']} has {len(labels)} labels"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{files[f'{split}_labels']}: labels outside 0..{num_classes - 1}")
    return (
        arrays["train_images"][:, None],
        arrays["train_labels"],
        arrays["test_images"][:, None],
        arrays["test_labels"],
    )


def load_idx_dataset(
    name: str, data_dir: Path | None, download: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Find and read MNIST or Fashion-MNIST: data_dir, then Debian's package, then download."""
    tv_folder = "FashionMNIST" if name == "fashion-mnist" else "MNIST"
    root = data_dir if data_dir is not None else DEFAULT_DATA_DIR
    places = [root, root / tv_folder / "raw"]
    if name == "fashion-mnist":
        places.append(DEBIAN_FASHION_MNIST)
    for place in places:
        files = _find_idx_set(place)
        if files is not None:
            logger.info("%s: reading IDX files from %s", name, place)
            return _load_idx_set(files, num_classes=10)
    if download:
        _torchvision_download(name, root)
        files = _find_idx_set(root / tv_folder / "raw")
        if files is not None:
            return _load_idx_set(files, num_classes=10)
    looked = ", ".join(str(p) for p in places)
    how = "apt-get install dataset-fashion-mnist, " if name == "fashion-mnist" else ""
    raise DataError(
        f"{name}: no IDX files ({_IDX_FILES['train_images']}[.gz] and the other three) found in "
        f"{looked}; get them with {how}--data-dir DIR (a folder holding them, or torchvision's "
        f"{tv_folder}/raw layout), or --download"
    )


def _torchvision_download(name: str, root: Path) -> None:
    import torchvision

    cls = (
        torchvision.datasets.FashionMNIST if name == "fashion-mnist" else torchvision.datasets.MNIST
    )
    logger.info("%s: downloading to %s", name, root)
    try:
        cls(str(root), train=True, download=True)
    except Exception as err:  # network errors come in many types
        raise DataError(f"{name}: download to {root} failed: {err}") from err


# --------------------------------------------------------------------------------------------
# CIFAR


def load_cifar(
    name: str, data_dir: Path | None, download: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    root = data_dir if data_dir is not None else DEFAULT_DATA_DIR
    if root.name == cls.base_folder:  # accept the extracted folder itself
        root = root.parent
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as err:
        raise DataError(
            f"{name}: not found or corrupt under {root} (looked for {cls.base_folder}/); pass --data-dir DIR "
            f"holding it, or --download"
        ) from err
    except Exception as err:  # network errors during download
        raise DataError(f"{name}: download to {root} failed: {err}") from err
    # .data is uint8 (N, H, W, C) for the whole split: convert in one go, not per sample.
    return (
        train.data.transpose(0, 3, 1, 2),
        np.asarray(train.targets),
        test.data.transpose(0, 3, 1, 2),
        np.asarray(test.targets),
    )
