"""CIFAR-10 from wherever the user keeps it, decoded once and cached in canonical form (see docs/data.md).

Sources: the official python tarball or its extracted batches folder, an image-folder tree
(train/<class>/*, test/<class>/*) or an archive of one, a prepared .npz, or tensorflow-datasets.
With no source: $JAX_RESNET_SPEED_DATA, then a copy downloaded earlier, then a download.
This package must not import jax: the PyTorch reference uses it too.

    python -m jax_resnet_speed.data info SOURCE [--cache-dir DIR]
    python -m jax_resnet_speed.data prepare SOURCE [--cache-dir DIR]
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import sys
import warnings
from collections.abc import Iterator

import numpy as np

from jax_resnet_speed.data import _cache, _download, _files, _tfds
from jax_resnet_speed.data._canonical import (CIFAR10_CLASSES, ENV_VAR, HOW_TO_PROVIDE, OFFICIAL_NAME, DataError,
                                              Dataset, DataWarning, warn_unusual_counts)

__all__ = ["CIFAR10_CLASSES", "ENV_VAR", "DataError", "DataWarning", "Dataset", "default_cache_dir", "in_memory",
           "load_cifar10"]


def default_cache_dir() -> pathlib.Path:
    """$XDG_CACHE_HOME/jax_resnet_speed, else ~/.cache/jax_resnet_speed."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "jax_resnet_speed"


def in_memory(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
              mean: np.ndarray, std: np.ndarray) -> Dataset:
    """Arrays already in memory as a Dataset, unvalidated, normalised with the given statistics: the
    synthetic images of benchmarks and tests."""
    return Dataset(train_images, train_labels, test_images, test_labels, CIFAR10_CLASSES, mean, std,
                   source_kind="in-memory", checksum="")


@contextlib.contextmanager
def warnings_printed() -> Iterator[None]:
    """The DataWarnings raised inside, printed as one `warning: ...` line each on stderr once the block ends
    without an error (Python's own format adds a source line); other warnings pass through as usual."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        yield
    for warning in caught:
        if issubclass(warning.category, DataWarning):
            print(f"warning: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def load_cifar10(source: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> Dataset:
    """Load CIFAR-10 from `source` (see the module doc), decoding it only when no valid cache exists.

    Raises DataError for anything the user can fix; warns (DataWarning) when the counts differ from CIFAR-10's.
    """
    return _load(source, cache_dir)[0]


def _load(source: str | os.PathLike | None, cache_dir: str | os.PathLike | None
          ) -> tuple[Dataset, pathlib.Path | None, bool]:
    """The dataset, its cache file (None when the source is read directly) and whether the cache was hit."""
    cache_dir = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    via = ""
    if source is None:
        source, via = _default_source(cache_dir)
    if isinstance(source, str) and (source == "tfds" or source.startswith("tfds:")):
        dataset, cache_file, hit = _tfds.read_tfds(source.partition(":")[2] or "cifar10"), None, False
    else:
        dataset, cache_file, hit = _load_path(pathlib.Path(os.path.expanduser(source)), cache_dir, via)
    warn_unusual_counts(dataset)
    return dataset, cache_file, hit


def _default_source(cache_dir: pathlib.Path) -> tuple[str | pathlib.Path, str]:
    """$JAX_RESNET_SPEED_DATA, else the official tarball in the cache, downloaded if it is not there yet."""
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR], f" (from ${ENV_VAR})"
    official = cache_dir / OFFICIAL_NAME
    if not official.is_file():
        _download.download(_download.OFFICIAL_URL, official)
    return official, ""


def _load_path(path: pathlib.Path, cache_dir: pathlib.Path, via: str
               ) -> tuple[Dataset, pathlib.Path | None, bool]:
    if not path.exists():
        raise DataError(f"{path.absolute()}{via} does not exist; {HOW_TO_PROVIDE}")
    if path.is_file() and path.suffix.lower() == ".npz":
        return dataclasses.replace(_cache.read_npz(path), source_kind="npz"), None, False
    cache_file = _cache.cache_file(cache_dir, path)
    if (cached := _cache.read_cache(cache_file)) is not None:
        return cached, cache_file, True
    dataset = _files.read_folder(path) if path.is_dir() else _files.read_archive(path)
    _cache.write_cache(cache_file, dataset)
    return dataset, cache_file, False
