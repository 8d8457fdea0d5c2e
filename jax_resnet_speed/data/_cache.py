"""The cache: keys from the source's content, atomic writes, and checked reads of canonical .npz files."""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import tempfile
import warnings
import zipfile

import numpy as np

from jax_resnet_speed.data import _files
from jax_resnet_speed.data._canonical import DataError, Dataset, DataWarning, finish, one_line

_FORMAT = b"jax_resnet_speed cifar10 cache v1\n"  # change it when the canonical form changes
NPZ_KEYS = ("train_images", "train_labels", "test_images", "test_labels", "class_names")


def cache_file(cache_dir: pathlib.Path, source: pathlib.Path) -> pathlib.Path:
    """Where the canonical form of a folder or archive is cached: named by a digest of its content."""
    digest = _folder_digest(source, cache_dir) if source.is_dir() else _file_digest(source)
    return cache_dir / f"cifar10-{digest[:16]}.npz"


def _file_digest(path: pathlib.Path) -> str:
    digest = hashlib.sha256(_FORMAT)
    try:
        with open(path, "rb") as file:
            while block := file.read(1 << 20):
                digest.update(block)
    except OSError as error:
        raise DataError(f"cannot read {path} ({error.strerror}); check its permissions") from None
    return digest.hexdigest()


def _folder_digest(root: pathlib.Path, cache_dir: pathlib.Path) -> str:
    """sha256 of the names and bytes of a folder's data files.

    Reading 60,000 small files takes most of a second, so the digest is remembered under a fingerprint of
    every file's name, size, inode, mtime and ctime (any write changes ctime); a changed fingerprint re-reads.
    """
    files = _files.folder_files(root)
    memo = cache_dir / "folder-digests" / f"{_folder_fingerprint(root, files)}.sha256"
    try:
        if re.fullmatch(r"[0-9a-f]{64}", known := memo.read_text()):
            return known
    except OSError:
        pass  # no memo yet
    digest = hashlib.sha256(_FORMAT)
    for name, data in _files.folder_stream(root, files):
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(digest.hexdigest())  # a torn write fails the check above and is redone
    except OSError:
        pass  # the memo only saves time
    return digest.hexdigest()


def _folder_fingerprint(root: pathlib.Path, files: list[str]) -> str:
    fingerprint = hashlib.sha256(f"{root.resolve()}\n".encode())
    base = f"{root}{os.sep}"
    for name in files:
        try:
            info = os.stat(base + name)
        except OSError as error:
            raise DataError(f"cannot read {base + name} ({error.strerror}); check its permissions") from None
        fingerprint.update(f"{name} {info.st_size} {info.st_ino} {info.st_mtime_ns} {info.st_ctime_ns}\n".encode())
    return fingerprint.hexdigest()[:32]


def read_cache(path: pathlib.Path) -> Dataset | None:
    """The cached dataset, or None when there is none or it is damaged (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        return read_npz(path, require_checksum=True)
    except DataError as error:
        warnings.warn(f"rebuilding the damaged cache: {error}", DataWarning, stacklevel=5)
        return None


def write_cache(path: pathlib.Path, dataset: Dataset) -> None:
    """Write atomically (temp file, then rename), so an interrupted write never leaves a cache that loads."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        warnings.warn(f"cannot write the cache in {path.parent} ({error.strerror}); the source will be decoded "
                      "again next time (use --cache-dir to choose another folder)", DataWarning, stacklevel=5)
        return
    try:
        with os.fdopen(fd, "wb") as file:
            np.savez(file, **_npz_fields(dataset))  # uncompressed: loads in a fraction of a second
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the cache is shared like any other output
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _npz_fields(dataset: Dataset) -> dict[str, np.ndarray]:
    return {"train_images": dataset.train_images, "train_labels": dataset.train_labels,
            "test_images": dataset.test_images, "test_labels": dataset.test_labels,
            "class_names": np.array(dataset.class_names, dtype=str),
            "source_kind": np.array(dataset.source_kind), "checksum": np.array(dataset.checksum)}


def read_npz(path: pathlib.Path, require_checksum: bool = False) -> Dataset:
    """A .npz holding NPZ_KEYS; a cache file also holds source_kind and a checksum, which is verified."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a .npz file (a .npz is a zip of .npy arrays, as numpy.savez writes "
                        "them); pass a CIFAR-10 .npz, archive or folder")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in NPZ_KEYS if key not in npz.files]
            arrays = {key: npz[key] for key in npz.files if key in NPZ_KEYS + ("source_kind", "checksum")}
    except ValueError as error:
        if "pickle" not in str(error):
            raise DataError(f"cannot read {path} ({one_line(error)}); it is damaged: write it again") from None
        raise DataError(f"{path} holds Python objects (object arrays), which are never unpickled; save its "
                        "arrays as numbers and strings (numpy.savez of uint8 images, int labels, str names)") \
            from None
    except Exception as error:  # a damaged zip fails in many ways inside zipfile and numpy
        raise DataError(f"cannot read {path} ({one_line(error)}); it is damaged: write it again") from None
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; a CIFAR-10 .npz holds {', '.join(NPZ_KEYS)}")
    if require_checksum and "checksum" not in arrays:
        raise DataError(f"{path} has no checksum")
    dataset = finish(arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"],
                     tuple(str(name) for name in arrays["class_names"]), str(arrays.get("source_kind", "npz")),
                     str(path))
    if "checksum" in arrays and str(arrays["checksum"]) != dataset.checksum:
        raise DataError(f"{path} is damaged: its content does not match its stored checksum")
    return dataset
