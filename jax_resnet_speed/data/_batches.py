"""The official python batches: pickles read by an unpickler that builds data and refuses anything else."""

from __future__ import annotations

import io
import pickle

import numpy as np

from jax_resnet_speed.data._canonical import CIFAR10_CLASSES, DataError, Dataset, finish, one_line

BATCH_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
META_FILE = "batches.meta"
ALL_FILES = BATCH_FILES + (META_FILE,)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What protocol-2 pickles written by Python 3 call to rebuild bytes; only that use is allowed."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed")
    return text.encode("latin1")


# The functions numpy's pickles of arrays and scalars call, as numpy's own __reduce__ names them: not
# looked up in their module, which is private (numpy._core; numpy.core before numpy 2).
_RECONSTRUCT, _SCALAR = np.zeros(0).__reduce__()[0], np.float64(0).__reduce__()[0]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _BatchUnpickler(pickle.Unpickler):
    """Builds only dicts, lists, strings, bytes, numbers and numpy arrays; anything else is refused, never run."""

    def __init__(self, data: bytes, what: str):
        super().__init__(io.BytesIO(data), encoding="bytes")  # the official batches are Python 2 pickles
        self.what = what

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED:
            raise DataError(f"refusing to unpickle {self.what}: it calls {module}.{name}, which CIFAR-10 data "
                            "never needs (the file may be malicious); get the data from the official site")
        return _ALLOWED[module, name]


def _unpickle(data: bytes, what: str) -> object:
    try:
        return _BatchUnpickler(data, what).load()
    except DataError:
        raise
    except Exception as error:  # damaged pickles fail in many ways (EOFError, UnpicklingError, ValueError, ...)
        raise DataError(f"{what} is not a readable pickle ({one_line(error)}); "
                        "the file is damaged or truncated: get it again") from None


def _field(batch: object, key: str, what: str) -> object:
    """batch[key] for Python 2 pickles (bytes keys) and Python 3 ones (str keys)."""
    if isinstance(batch, dict):
        for candidate in (key.encode(), key):
            if candidate in batch:
                return batch[candidate]
    raise DataError(f"{what} has no {key!r} entry; it is not a CIFAR-10 batch file")


def _read_batch(data: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(data, what)
    rows, labels = _field(batch, "data", what), np.asarray(_field(batch, "labels", what))
    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3072:
        raise DataError(f"{what}: 'data' is not a uint8 (N, 3072) array; it is not a CIFAR-10 batch file")
    if labels.shape != (len(rows),):
        raise DataError(f"{what} has {len(rows)} images but {labels.size} labels")
    # each row holds the 1024 red, then green, then blue values of one image
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def batches_dataset(batches: dict[str, bytes], origin: str) -> Dataset:
    """The dataset from the contents of the batch files, by file name; source_kind "batches"."""
    if missing := [name for name in BATCH_FILES if name not in batches]:
        raise DataError(f"{origin} lacks {', '.join(missing)}; the official CIFAR-10 python version has "
                        "data_batch_1..5 and test_batch: get it again")
    train = [_read_batch(batches[name], f"{origin}: {name}") for name in BATCH_FILES[:-1]]
    test_images, test_labels = _read_batch(batches["test_batch"], f"{origin}: test_batch")
    class_names = CIFAR10_CLASSES
    if META_FILE in batches:
        what = f"{origin}: {META_FILE}"
        names = _field(_unpickle(batches[META_FILE], what), "label_names", what)
        if not isinstance(names, list):
            raise DataError(f"{what}: 'label_names' is not a list; it is not a CIFAR-10 meta file")
        class_names = tuple(name.decode() if isinstance(name, bytes) else str(name) for name in names)
    return finish(np.concatenate([images for images, _ in train]), np.concatenate([labels for _, labels in train]),
                  test_images, test_labels, class_names, "batches", origin)
