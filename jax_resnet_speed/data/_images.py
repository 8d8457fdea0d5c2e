"""Image trees: decoding on every core, and labels from the class folders."""

from __future__ import annotations

import concurrent.futures
import io
import itertools
import os
import pathlib
import pickle
import queue
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator

import numpy as np

from jax_resnet_speed import progress
from jax_resnet_speed.data._canonical import SPLITS, DataError, Dataset, finish, one_line

_FORMATS = ("JPEG", "PNG", "BMP", "PPM", "TIFF", "WEBP")  # naming them skips probing every Pillow plugin
_DECODE_CHUNK = 512  # images per worker task: big enough to amortise pickling, small enough to overlap reading


def decode_images(files: Iterable[tuple[str, bytes]], where: str, label: str = "decoding images") -> np.ndarray:
    """Decode (name, bytes) pairs into uint8 (N, 32, 32, 3), in order, on every core, while `files` is still read.

    A terminal shows `label` and the images decoded so far (out of all of them, once all are read).
    """
    chunks = _chunked(files, _DECODE_CHUNK)
    head = list(itertools.islice(chunks, 2))
    if len(head) < 2:  # too few images to repay starting worker processes
        return _decode_chunk(head[0] if head else [], where)
    workers = [_DecodeWorker() for _ in range(_cpu_count())]
    idle: queue.Queue[_DecodeWorker] = queue.Queue()
    for worker in workers:
        idle.put(worker)

    def decode(chunk: list[tuple[str, bytes]]) -> np.ndarray:
        worker = idle.get()
        try:
            return worker.decode(chunk, where)
        finally:
            idle.put(worker)

    threads = concurrent.futures.ThreadPoolExecutor(len(workers))  # they only wait on pipes
    try:
        with progress.task(label, unit="images") as shown:
            futures, read = [], 0
            for chunk in itertools.chain(head, chunks):
                futures.append(threads.submit(decode, chunk))
                futures[-1].add_done_callback(lambda _, size=len(chunk): shown.advance(size))
                read += len(chunk)
            shown.update(total=read)  # known once the whole source is read
            return np.concatenate([future.result() for future in futures])
    finally:
        threads.shutdown(cancel_futures=True)
        for worker in workers:
            worker.close()


def _chunked(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _DecodeWorker:
    """A fresh interpreter that decodes the chunks sent over a pipe.

    Not multiprocessing: it would fork a process that may already run JAX's threads (which can deadlock), or
    re-import the caller's __main__ in every worker (seconds when that imports JAX; a crash for scripts
    without a main guard).
    """

    def __init__(self) -> None:
        package_parent = str(pathlib.Path(__file__).resolve().parents[2])
        code = f"import sys; sys.path.insert(0, {package_parent!r}); from jax_resnet_speed.data import _images; " \
               "_images.serve()"
        self.process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def decode(self, chunk: list[tuple[str, bytes]], where: str) -> np.ndarray:
        pickle.dump((chunk, where), self.process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self.process.stdin.flush()
        try:
            decoded, result = pickle.load(self.process.stdout)  # from our own child: trusted
        except EOFError:
            raise RuntimeError(f"an image decoding worker exited with code {self.process.wait()}") from None
        if not decoded:
            raise DataError(result)
        return result

    def close(self) -> None:
        self.process.stdin.close()  # the worker exits at the end of its input
        self.process.stdout.close()  # a reply nobody will read (after an error or Ctrl-C) must not block it
        self.process.wait()


def serve() -> None:
    """Worker loop: (chunk, where) in on stdin, (True, pixels) or (False, error) out on stdout, until stdin ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then closes our stdin
    requests, replies = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print must not corrupt the replies
    while True:
        try:
            chunk, where = pickle.load(requests)
        except EOFError:
            return
        try:
            reply = (True, _decode_chunk(chunk, where))
        except DataError as error:
            reply = (False, str(error))
        try:
            pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
            replies.flush()
        except BrokenPipeError:  # the parent stopped listening (an error elsewhere, or Ctrl-C): nothing to say
            os._exit(0)


def _decode_chunk(files: list[tuple[str, bytes]], where: str) -> np.ndarray:
    """Decode images that must each be 32x32 RGB."""
    from PIL import Image, UnidentifiedImageError  # imported here so that loading a cache never pays for Pillow

    out = np.empty((len(files), 32, 32, 3), np.uint8)
    for index, (name, data) in enumerate(files):
        try:
            image = Image.open(io.BytesIO(data), formats=_FORMATS)
        except UnidentifiedImageError:
            raise DataError(f"{where}{name} is not a readable image (not {', '.join(_FORMATS)}); replace or "
                            "remove it") from None
        except Exception as error:  # Pillow raises many types for damaged files
            raise DataError(f"{where}{name} is not a readable image ({one_line(error)}); replace or remove it") \
                from None
        with image:
            if image.size != (32, 32) or image.mode != "RGB":
                raise DataError(f"{where}{name} is a {image.size[0]}x{image.size[1]} {image.mode} image; "
                                "every image must be 32x32 RGB (convert or remove it)")
            try:
                out[index] = np.asarray(image)
            except Exception as error:  # truncated data shows only when decoding
                raise DataError(f"{where}{name} is a damaged image ({one_line(error)}); replace or remove it") \
                    from None
    return out


def image_tree_dataset(paths: list[tuple[str, ...]], pixels: np.ndarray, origin: str) -> Dataset:
    """Label images by their class folder (sorted names); train/ and test/ must have the same classes.

    `paths` are the split parts of each image's name, ending in split/class/file, in the order of `pixels`.
    """
    roots = sorted({"/".join(parts[:-3]) or "." for parts in paths})
    if len(roots) > 1:
        raise DataError(f"{origin} has train/ and test/ folders in several places ({', '.join(roots[:3])}); "
                        "keep one image tree")
    classes = sorted({parts[-2] for parts in paths if parts[-3] == "train"})
    if not classes:
        raise DataError(f"{origin} has no images under train/<class>/; expected train/<class>/*.png|jpg "
                        "and test/<class>/*")
    for split in SPLITS:
        found = {parts[-2] for parts in paths if parts[-3] == split}
        if missing := sorted(set(classes) - found):
            raise DataError(f"{origin} lacks the folder {split}/{missing[0]}/ (or it holds no images); "
                            f"train/ and test/ need the same class folders: {', '.join(classes)}")
        if extra := sorted(found - set(classes)):
            raise DataError(f"{origin} has {split}/{extra[0]}/ but no train/{extra[0]}/; "
                            "train/ and test/ need the same class folders")
    arrays, label_of = {}, {name: label for label, name in enumerate(classes)}
    for split in SPLITS:
        index = sorted((i for i, parts in enumerate(paths) if parts[-3] == split), key=lambda i: paths[i][-2:])
        labels = np.array([label_of[paths[i][-2]] for i in index], np.int32)
        order = _interleave_classes(labels)
        arrays[split] = pixels[np.array(index)[order]], labels[order]
    return finish(*arrays["train"], *arrays["test"], tuple(classes), "image", origin)


def _interleave_classes(labels: np.ndarray) -> np.ndarray:
    """Order taking one image of each class in turn, so that any prefix (--train-subset) stays balanced.

    `labels` must be sorted; within a class the order is kept.
    """
    rank = np.arange(len(labels)) - np.searchsorted(labels, labels)
    return np.lexsort((labels, rank))
