"""Output paths checked before any work: a file flag must name a file that can be written, a folder flag a folder.

Each check raises PathError with one line naming the flag, the path and what to do; the runners turn it
into exit code 2 before data is loaded or anything compiles. Plain Python (no JAX).
"""

from __future__ import annotations

import os
import pathlib


class PathError(ValueError):
    """An output path that cannot be used; its message is one line for the user."""


def check_output_file(path: str | os.PathLike | None, flag: str) -> None:
    """`path` can be created or replaced as a file: not a folder, not ending in a separator, and its
    nearest existing parent is a folder we may write in (missing folders are created later)."""
    if path is None:
        return
    text = os.fspath(path)
    if text.endswith((os.sep, "/")) or pathlib.Path(text).is_dir():
        raise PathError(f"{flag} {text} names a folder; give a file path (e.g. {text.rstrip('/' + os.sep)}/out.json)")
    _check_parent(pathlib.Path(text), flag)


def check_output_folder(path: str | os.PathLike | None, flag: str) -> None:
    """`path` is a folder, or can be created as one: nothing on the way is a file."""
    if path is None:
        return
    folder = pathlib.Path(path)
    if folder.exists() and not folder.is_dir():
        raise PathError(f"{flag} {os.fspath(path)} is a file; give a folder path (it is created if missing)")
    if not folder.exists():
        _check_parent(folder, flag)
    elif not os.access(folder, os.W_OK | os.X_OK):
        raise PathError(f"{flag} {os.fspath(path)} is not writable; choose another folder")


def _check_parent(path: pathlib.Path, flag: str) -> None:
    """The nearest existing ancestor of `path` is a writable folder."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise PathError(f"{flag} {path}: {parent} is a file, so nothing can be written under it; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PathError(f"{flag} {path}: {parent} is not writable; choose another path")
