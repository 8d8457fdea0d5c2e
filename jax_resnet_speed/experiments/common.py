"""What every experiment shares: its command line, its data on the device, and its outputs
(a PNG, a JSON with every number behind it, and a markdown summary), written atomically."""

from __future__ import annotations

import argparse
import importlib.util
import io
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jax_resnet_speed import cli, flags, install_hint, settings as settings_lib
from jax_resnet_speed.report import files

PROGRESS_PREFIX = "  "


def build_parser(name: str, description: str, scales: Mapping[str, Mapping[str, Any]]) -> argparse.ArgumentParser:
    """--out, --scale and the trainer's data, width, precision, seed and epoch flags.

    A scale is plain data: the defaults of every flag it sets (and the experiment's own sizes).
    """
    parser = argparse.ArgumentParser(prog=f"python -m jax_resnet_speed.experiments.{name}", description=description)
    parser.add_argument("--out", required=True, metavar="DIR", help=f"folder for {name}.png, .json and .md")
    parser.add_argument("--scale", choices=sorted(scales), default="smoke",
                        help="smoke: minutes on a CPU; full: the post's setting, for a GPU")
    flags.add_data_arguments(parser)
    flags.add_width_mult(parser, default=None, help="scale every channel width (default: the scale's)")
    flags.add_epochs(parser, fractional=False, help="training epochs (default: the scale's)")
    flags.add_precision(parser)
    flags.add_seed(parser, help="seed of the runs")
    return parser


def settings(args: argparse.Namespace, scales: Mapping[str, Mapping[str, Any]], backend: str) -> dict:
    """The scale's values, with every flag the user gave in their place."""
    chosen = dict(scales[args.scale])
    for key in ("train_subset", "test_subset", "width_mult", "epochs", "precision"):
        if getattr(args, key, None) is not None:
            chosen[key] = getattr(args, key)
    chosen.setdefault("precision", settings_lib.default_precision(backend))
    chosen["seed"] = args.seed
    args.train_subset, args.test_subset = chosen.get("train_subset"), chosen.get("test_subset")
    return chosen


def load_dataset(args: argparse.Namespace, batch_size: int):
    """The dataset with the subsets of `settings`; data.DataError when it is smaller than one batch."""
    from jax_resnet_speed import data

    dataset = cli.load_data(args)
    if len(dataset.train_images) < batch_size:
        raise data.DataError(f"{len(dataset.train_images)} training images are fewer than one batch of "
                             f"{batch_size}; lower --batch-size or raise --train-subset")
    return dataset


def upload(dataset, recipe, precision: str):
    """The dataset on the device, normalised and padded for `recipe` (train.put_on_device)."""
    from jax_resnet_speed import train

    return train.put_on_device(dataset, recipe, train.PRECISIONS[precision])


def post4_setup(args: argparse.Namespace, chosen: dict, preset: str):
    """`preset` at the scale's epochs and batch size, its RunConfig, the dataset, its copy on the
    device, and the line that titles the figure: what posts 5 and 6 train."""
    from jax_resnet_speed import presets, train

    recipe = presets.get_preset(preset).with_epochs(chosen["epochs"]).replace(
        **{"data.batch_size": chosen["batch_size"]})
    config = train.RunConfig(recipe, chosen["precision"], chosen["width_mult"])
    dataset = load_dataset(args, recipe.batch_size)
    data = upload(dataset, recipe, chosen["precision"])
    title = (f"{recipe.name}, {recipe.epochs} epochs, batch {recipe.batch_size}, width x{chosen['width_mult']}, "
             f"{len(dataset.train_images)} train / {len(dataset.test_images)} test images; "
             f"{environment_line(chosen)}")
    return recipe, config, dataset, data, title


def settings_record(chosen: dict, preset: str, args: argparse.Namespace, dataset, **extra: Any) -> dict:
    """The JSON's `settings`: the scale's values as run, the preset, and which data."""
    return {**chosen, "preset": preset, "data": args.data, "data_checksum": dataset.checksum,
            "train_images": len(dataset.train_images), "test_images": len(dataset.test_images), **extra}


def progress(text: str) -> None:
    print(f"{PROGRESS_PREFIX}{text}", flush=True)


def write_outputs(out: str, name: str, figure, payload: dict, summary: str) -> list[str]:
    """NAME.png (the matplotlib figure), NAME.json and NAME.md in `out`; returns their paths."""
    import os

    import matplotlib.pyplot as plt

    paths = [os.path.join(out, f"{name}.{ext}") for ext in ("png", "json", "md")]
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    files.write_atomically(paths[0], lambda handle: handle.write(buffer.getvalue()), mode="wb")
    files.write_json(paths[1], payload)
    files.write_atomically(paths[2], lambda handle: handle.write(summary))
    return paths


def environment_line(settings: dict) -> str:
    """The device, jax version and precision (the title before it already names the width)."""
    env = files.environment()
    return f"{env['device_kind']} ({env['backend']}), jax {env['jax']}, {settings['precision']}"


def main(run: Callable[[argparse.Namespace], list[str]], parser: argparse.ArgumentParser,
         argv: Sequence[str] | None = None) -> int:
    """Parse, run, print the outputs' paths. Data errors exit 1 with one line.

    An experiment draws its figure from all its runs, so it writes its files only at the end: run through
    interrupt.main, a Ctrl-C before then exits 130 at once, with one line, writing nothing."""
    from jax_resnet_speed import data

    args = parser.parse_args(argv)
    # Checked before a long run, not after it.
    if importlib.util.find_spec("matplotlib") is None:
        print(f"error: the experiments draw with matplotlib; install it with {install_hint('plot')}",
              file=sys.stderr)
        return flags.EXIT_DATA_ERROR
    flags.validate_positive(args, parser)
    flags.validate_outputs(args, parser)
    try:
        paths = run(args)
    except data.DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return flags.EXIT_DATA_ERROR
    for path in paths:
        print(f"wrote {path}")
    return 0
