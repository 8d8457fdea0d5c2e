"""python -m jax_resnet_speed.data {info,prepare} [SOURCE] [--cache-dir DIR]"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Sequence

import numpy as np

from jax_resnet_speed.data import ENV_VAR, DataError, Dataset, _load, warnings_printed


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        with warnings_printed():
            dataset, cache_file, hit = _load(args.source, args.cache_dir)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing was cached (the cache is written only when complete)", file=sys.stderr)
        return 130
    seconds = time.perf_counter() - start
    if args.command == "info":
        _print_info(args.source, dataset, _cache_state(cache_file, hit), seconds)
    elif cache_file is None:
        print(f"nothing to prepare: {dataset.source_kind} sources are read directly, without a cache")
    else:
        print(f"{'already cached' if hit else 'cached'} {len(dataset.train_labels):,} train and "
              f"{len(dataset.test_labels):,} test images ({dataset.source_kind}) in {_cache_state(cache_file, hit)}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jax_resnet_speed.data",
                                     description="Inspect a CIFAR-10 source, or decode it into the cache now.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command, text in (("info", "print the counts, statistics, cache path and checksum"),
                          ("prepare", "decode the source into the cache now")):
        sub = commands.add_parser(command, help=text, description=text)
        sub.add_argument("source", nargs="?", help="official tarball or batches folder, image folder or archive, "
                         f".npz, or tfds[:NAME] (default: ${ENV_VAR}, then the cache, then a download)")
        sub.add_argument("--cache-dir", help="cache folder (default: $XDG_CACHE_HOME/jax_resnet_speed "
                         "or ~/.cache/jax_resnet_speed)")
    return parser


def _cache_state(cache_file: pathlib.Path | None, hit: bool) -> str:
    if cache_file is None:
        return "none (this kind of source is read directly)"
    if not cache_file.is_file():
        return f"{cache_file} (could not be written)"
    return f"{cache_file} ({'loaded from it' if hit else 'written now'})"


def _print_info(source: str | None, dataset: Dataset, cache: str, seconds: float) -> None:
    counts = {split: np.bincount(getattr(dataset, f"{split}_labels"), minlength=len(dataset.class_names))
              for split in ("train", "test")}
    print(f"source    {source or f'(default: ${ENV_VAR}, else the cache, else a download)'}")
    print(f"kind      {dataset.source_kind}")
    print(f"images    {len(dataset.train_labels):,} train, {len(dataset.test_labels):,} test")
    print(f"{'class':<16}{'train':>8}{'test':>8}")
    for label, name in enumerate(dataset.class_names):
        print(f"{label:>2} {name:<13}{counts['train'][label]:>8,}{counts['test'][label]:>8,}")
    print(f"mean      {' '.join(f'{value:.4f}' for value in dataset.mean)}  (R G B, [0, 1] units)")
    print(f"std       {' '.join(f'{value:.4f}' for value in dataset.std)}")
    print(f"cache     {cache}")
    print(f"checksum  sha256:{dataset.checksum} (of the decoded arrays, not of the source file)")
    print(f"loaded in {seconds:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
