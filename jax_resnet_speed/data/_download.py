"""Downloading the official tarball, with an MD5 check and a progress bar on stderr."""

from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
import sys
import tempfile
import urllib.error
import urllib.request
from typing import IO

from jax_resnet_speed.data._canonical import ENV_VAR, HOW_TO_PROVIDE, DataError, one_line

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"


def download(url: str, dest: pathlib.Path) -> None:
    """Fetch the official tarball into dest, checking its MD5; a failed or partial download leaves nothing."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as error:
        raise DataError(f"cannot create the cache folder {dest.parent} ({error.strerror}); "
                        f"choose another with --cache-dir, or {HOW_TO_PROVIDE}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            md5 = _fetch(url, out)
        if md5 != OFFICIAL_MD5:
            raise DataError(f"the download from {url} is damaged (MD5 {md5}, expected {OFFICIAL_MD5}); "
                            f"run again, or {HOW_TO_PROVIDE}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fetch(url: str, out: IO[bytes]) -> str:
    """Stream url into out with a progress bar on stderr; returns the MD5 of what was written."""
    md5 = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total, done, shown = int(response.headers.get("Content-Length") or 0), 0, ""
            while chunk := response.read(1 << 20):
                out.write(chunk)
                md5.update(chunk)
                done += len(chunk)
                if (line := _progress_line(url.rsplit("/", 1)[-1], done, total)) != shown:
                    shown = line
                    print(f"\r{line}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise DataError(f"no CIFAR-10 data given (no --data, ${ENV_VAR} unset, no earlier download) and the "
                        f"download from {url} failed ({one_line(reason)}); {HOW_TO_PROVIDE}") from None
    return md5.hexdigest()


def _progress_line(name: str, done: int, total: int) -> str:
    """A progress bar that changes at most every 1% (or MB when the size is unknown), to keep stderr quiet."""
    if not total:
        return f"downloading {name}: {done >> 20} MB"
    percent = min(100, 100 * done // total)
    return f"downloading {name} [{'#' * (percent // 4):<25}] {percent:3d}% of {total / 1e6:.0f} MB"
