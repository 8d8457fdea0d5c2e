"""Folders and archives: listing and reading their files in memory, refusing archive members that could escape."""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import lzma
import os
import pathlib
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from jax_resnet_speed.data import _batches, _images
from jax_resnet_speed.data._canonical import SPLITS, DataError, Dataset, one_line

_MAX_MEMBER_BYTES = 1 << 28  # the biggest CIFAR-10 file is a 31 MB batch; a bigger member is a memory bomb
_TAR_TYPES = {tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hard link", tarfile.CHRTYPE: "character device",
              tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo"}


def folder_files(root: pathlib.Path) -> list[str]:
    """The data files of a folder, relative and sorted: the official batches or an image tree."""
    for base in ("", "cifar-10-batches-py"):
        if (root / base / _batches.BATCH_FILES[0]).is_file():
            return [f"{base}/{name}".lstrip("/") for name in _batches.ALL_FILES if (root / base / name).is_file()]
    if not (root / "train").is_dir():
        raise DataError(f"{root} holds no CIFAR-10 data: expected data_batch_1..5 and test_batch (the extracted "
                        "official tarball) or image folders train/<class>/ and test/<class>/")
    files = []
    for split in SPLITS:
        for folder, subfolders, names in os.walk(root / split):
            subfolders.sort()
            prefix = pathlib.Path(folder).relative_to(root).as_posix()
            files += [f"{prefix}/{name}" for name in sorted(names)]
    return files


def folder_stream(root: pathlib.Path, files: Iterable[str]) -> Iterator[tuple[str, bytes]]:
    base = f"{root}{os.sep}"  # plain strings: pathlib objects cost more than the reads of 60,000 small files
    for name in files:
        try:
            with open(base + name, "rb") as file:
                data = file.read()
        except OSError as error:
            raise DataError(f"cannot read {base + name} ({error.strerror}); check its permissions") from None
        yield name, data


def read_folder(root: pathlib.Path) -> Dataset:
    dataset = _read_tree(folder_stream(root, folder_files(root)), str(root), where=f"{root}{os.sep}")
    return dataclasses.replace(dataset, source_kind=f"{dataset.source_kind}-folder")


def read_archive(path: pathlib.Path) -> Dataset:
    stream = _zip_stream(path) if zipfile.is_zipfile(path) else _tar_stream(path)
    dataset = _read_tree(stream, str(path), where=f"{path}: ")
    kinds = {"batches": "python-tarball", "image": "image-archive"}
    return dataclasses.replace(dataset, source_kind=kinds[dataset.source_kind])


def _read_tree(files: Iterable[tuple[str, bytes]], origin: str, where: str) -> Dataset:
    """The dataset in the files of a folder or archive: either the official batches or an image tree.

    Images are decoded while the rest is still being read; errors name them as where + name.
    The result's source_kind is "batches" or "image".
    """
    batches: dict[str, bytes] = {}
    image_paths: list[tuple[str, ...]] = []

    def images() -> Iterator[tuple[str, bytes]]:
        for name, data in files:
            parts = tuple(part for part in name.split("/") if part not in ("", "."))
            if not parts or any(part.startswith(".") or part == "__MACOSX" for part in parts):
                continue  # hidden files and macOS resource forks
            if parts[-1] in _batches.ALL_FILES:
                batches[parts[-1]] = data
            elif len(parts) >= 3 and parts[-3] in SPLITS:
                image_paths.append(parts)
                yield name, data

    pixels = _images.decode_images(images(), where, f"decoding {pathlib.Path(origin).name} (once: then cached)")
    if batches and image_paths:
        raise DataError(f"{origin} holds both CIFAR-10 batch files and an image tree; keep only one of them")
    if batches:
        return _batches.batches_dataset(batches, origin)
    if image_paths:
        return _images.image_tree_dataset(image_paths, pixels, origin)
    raise DataError(f"{origin} holds no CIFAR-10 data: expected data_batch_1..5 and test_batch (the official "
                    "tarball) or images under train/<class>/ and test/<class>/")


def _check_member_name(name: str, archive: pathlib.Path) -> None:
    """Refuse names that would land outside an extraction folder: we never extract, but such an archive is hostile."""
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name) or ".." in re.split(r"[\\/]", name):
        raise DataError(f"refusing {archive}: member {name!r} points outside the archive (absolute path or '..'); "
                        "nothing was extracted")


def _refuse_member_type(name: str, what: str, archive: pathlib.Path) -> DataError:
    return DataError(f"refusing {archive}: member {name!r} is a {what}; only regular files and folders are "
                     "allowed (nothing was extracted)")


def _check_member_size(name: str, size: int, archive: pathlib.Path) -> None:
    if size > _MAX_MEMBER_BYTES:
        raise DataError(f"refusing {archive}: member {name!r} would unpack to {size:,} bytes, more than any "
                        f"CIFAR-10 file ({_MAX_MEMBER_BYTES:,} at most)")


def _tar_stream(path: pathlib.Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular file, read in memory in one sequential pass.

    The compressed stream is read to its very end before the listing is trusted: tarfile's own decompression
    stops quietly where a cut-short .tar.gz ends, so a truncated archive would look like one with fewer files,
    while gzip, bz2 and lzma check the stream's end marker (and gzip its length and CRC).
    """
    try:
        with _decompressed(path) as raw, tarfile.open(fileobj=raw, mode="r|") as archive:
            for member in archive:
                _check_member_name(member.name, path)
                if member.isdir():
                    continue
                if not member.isfile():
                    raise _refuse_member_type(member.name, _TAR_TYPES.get(member.type, "special file"), path)
                _check_member_size(member.name, member.size, path)
                yield member.name, archive.extractfile(member).read()
            while raw.read(1 << 20):  # past the tar's end-of-archive blocks, to the compression's end marker
                pass
    except EOFError as error:
        raise DataError(f"cannot read {path}: it is truncated ({one_line(error)}); get it again") from None
    except (tarfile.TarError, OSError, zlib.error, lzma.LZMAError) as error:
        raise DataError(f"cannot read {path} as a tar or zip archive ({one_line(error)}); it may be truncated or "
                        "corrupt (get it again), or it is not CIFAR-10 data: expected the official tarball, "
                        "an image-folder archive (.tar, .tar.gz, .tgz, .zip), a folder or a .npz") from None


_MAGIC = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ\x00": lzma.open}


def _decompressed(path: pathlib.Path) -> BinaryIO:
    """The file as a stream of its uncompressed bytes (gzip, bz2, xz or none, by its first bytes)."""
    with open(path, "rb") as file:
        head = file.read(6)
    for magic, opener in _MAGIC.items():
        if head.startswith(magic):
            return opener(path, "rb")
    return open(path, "rb")


def _zip_stream(path: pathlib.Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular file, after checking every member before reading any."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            for info in members:
                _check_member_name(info.filename, path)
                kind = stat.S_IFMT(info.external_attr >> 16)
                if not info.is_dir() and kind not in (0, stat.S_IFREG):
                    what = "symlink" if kind == stat.S_IFLNK else "special file"
                    raise _refuse_member_type(info.filename, what, path)
                _check_member_size(info.filename, info.file_size, path)
            for info in members:
                if not info.is_dir():
                    yield info.filename, archive.read(info)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError) as error:
        raise DataError(f"cannot read {path} as a zip archive ({one_line(error)}); "
                        "it may be truncated, corrupt or encrypted: get it again") from None
