"""The canonical dataset: its type, its errors and warnings, validation, statistics and checksum."""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Sequence

import numpy as np

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ENV_VAR = "JAX_RESNET_SPEED_DATA"
OFFICIAL_NAME = "cifar-10-python.tar.gz"
SPLITS = ("train", "test")
HOW_TO_PROVIDE = (f"pass --data PATH (the official {OFFICIAL_NAME} or its extracted cifar-10-batches-py folder, "
                  "an image folder or .tar/.tar.gz/.zip with train/<class>/ and test/<class>/, or a .npz), "
                  f"set ${ENV_VAR}=PATH, or use --data tfds")
_EXPECTED_PER_CLASS = {"train": 5000, "test": 1000}


class DataError(Exception):
    """An expected failure to get the data; the message is one line saying what was wrong and what to do."""


class DataWarning(UserWarning):
    """Data that loads but differs from CIFAR-10 as published (counts, classes), or a damaged cache."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    train_images: np.ndarray  # uint8 (N, 32, 32, 3) NHWC
    train_labels: np.ndarray  # int32 (N,)
    test_images: np.ndarray  # uint8 (M, 32, 32, 3)
    test_labels: np.ndarray  # int32 (M,)
    class_names: tuple[str, ...]
    mean: np.ndarray  # float32 (3,), per-channel mean of train pixels in [0, 1] units
    std: np.ndarray  # float32 (3,), per-channel std of train pixels in [0, 1] units
    source_kind: str  # python-tarball, batches-folder, image-folder, image-archive, npz, tfds
    checksum: str  # sha256 (hex) of the canonical arrays and class names


def finish(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
           class_names: Sequence[str], kind: str, origin: str) -> Dataset:
    """Validate the arrays and add the normalisation statistics and the checksum."""
    if not 1 <= len(class_names) <= 10:
        raise DataError(f"{origin} has {len(class_names)} classes; the model has 10 outputs, so 1 to 10 are allowed")
    _validate_split(train_images, train_labels, "train", len(class_names), origin)
    _validate_split(test_images, test_labels, "test", len(class_names), origin)
    train_images, test_images = np.ascontiguousarray(train_images), np.ascontiguousarray(test_images)
    mean, std = _channel_stats(train_images)
    dataset = Dataset(train_images, np.asarray(train_labels, np.int32), test_images,
                      np.asarray(test_labels, np.int32), tuple(class_names), mean, std, kind, checksum="")
    return dataclasses.replace(dataset, checksum=_checksum(dataset))


def _validate_split(images: np.ndarray, labels: np.ndarray, split: str, num_classes: int, origin: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DataError(f"{origin}: {split} images are {images.dtype} {images.shape}, expected uint8 (N, 32, 32, 3)")
    if len(images) == 0:
        raise DataError(f"{origin} has no {split} images")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{origin}: {split} labels are {labels.dtype} {labels.shape}, "
                        f"expected {len(images)} integers, one per image")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{origin}: {split} labels span {labels.min()}..{labels.max()}, "
                        f"but there are {num_classes} class names (labels 0..{num_classes - 1})")


def _channel_stats(images: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std in [0, 1] units, from exact integer sums (then float64)."""
    sums = np.zeros(32 * 32 * 3, np.uint64)
    squares = np.zeros_like(sums)
    for start in range(0, len(images), chunk):  # chunks bound the uint16 temporary
        rows = images[start:start + chunk].reshape(-1, 32 * 32 * 3)
        sums += rows.sum(axis=0, dtype=np.uint64)
        wide = rows.astype(np.uint16)  # 255**2 still fits
        squares += np.multiply(wide, wide).sum(axis=0, dtype=np.uint64)
    count = len(images) * 32 * 32 * 255.0
    mean = sums.reshape(-1, 3).sum(axis=0).astype(np.float64) / count
    mean_square = squares.reshape(-1, 3).sum(axis=0).astype(np.float64) / (count * 255.0)
    return mean.astype(np.float32), np.sqrt(np.maximum(mean_square - mean ** 2, 0)).astype(np.float32)


def _checksum(dataset: Dataset) -> str:
    digest = hashlib.sha256()
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        array = getattr(dataset, name)
        digest.update(f"{name} {array.dtype.str} {array.shape}\n".encode())
        digest.update(array.data)
    digest.update("\n".join(dataset.class_names).encode())
    return digest.hexdigest()


def warn_unusual_counts(dataset: Dataset) -> None:
    """Small or partial datasets are fine (tests use them), but say so: results are not CIFAR-10 results."""
    counts = {split: np.bincount(getattr(dataset, f"{split}_labels"), minlength=len(dataset.class_names))
              for split in SPLITS}
    if len(dataset.class_names) == 10 and all((counts[s] == n).all() for s, n in _EXPECTED_PER_CLASS.items()):
        return
    found = "; ".join(f"{counts[s].sum():,} {s} ({counts[s].min():,}-{counts[s].max():,} per class)" for s in SPLITS)
    warnings.warn(f"this is not the full CIFAR-10 (50,000 train and 10,000 test images, 10 classes of 5,000 and "
                  f"1,000): {dataset.source_kind} data with {len(dataset.class_names)} classes, {found}",
                  DataWarning, stacklevel=4)


def one_line(error: object) -> str:
    """A foreign error message, made fit for a one-line DataError."""
    return " ".join(str(error).split()) or type(error).__name__
