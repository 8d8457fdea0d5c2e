"""Downloading the official tarball, with an MD5 check and progress on a terminal."""

from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
import tempfile
import urllib.error
import urllib.request
from typing import IO

from jax_resnet_speed import progress
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
    """Stream url into out (with progress on a terminal); returns the MD5 of what was written."""
    md5 = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress.task(f"downloading {url.rsplit('/', 1)[-1]}", total, unit="bytes") as shown:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    md5.update(chunk)
                    shown.advance(len(chunk))
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise DataError(f"no CIFAR-10 data given (no --data, ${ENV_VAR} unset, no earlier download) and the "
                        f"download from {url} failed ({one_line(reason)}); {HOW_TO_PROVIDE}") from None
    return md5.hexdigest()
