"""The command-line flags the runners share, each defined once (choices, default, validation), and the exit codes.

The trainer (cli.py), the series, compare, bench, the PyTorch reference and the experiments build
their parsers from these. Plain Python: importing it starts no JAX (the PyTorch reference uses it).
"""

from __future__ import annotations

import argparse
import math
import os

from jax_resnet_speed import compilation, paths, presets, settings

# Exit codes of every runner. 2 is argparse's own for a usage error.
EXIT_DATA_ERROR, EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 1, 2, 3, 130
PLOT_BESIDE_JSON = "<beside --json>"  # --plot without a path
# Flags that must be positive when given (validate_positive).
POSITIVE = ("epochs", "batch_size", "runs", "train_subset", "test_subset", "parallel", "devices", "width_mult",
            "steps", "repeats")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with "(default: X)" only where X says something: not for None or False, nor where the help
    already names the default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def epochs_type(text: str) -> int | float:
    """A run length in epochs: an int when whole (as the Myrtle presets write it), else a float (9.9)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of epochs, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"a finite number of epochs, got {text!r}")
    return int(value) if value.is_integer() else value


def seed_type(text: str) -> int:
    """A seed: a whole number >= 0 (jax.random.key takes any, but run i uses seed + i and JSONs key on it)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a whole number >= 0, got {value}")
    return value


def devices_type(text: str) -> int | str:
    """--devices: a positive count, or 'all'."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a count or 'all', got {text!r}") from None


def add_preset(parser: argparse.ArgumentParser, list_presets: bool = True) -> None:
    """--preset (and --list-presets, which lists the recipes and exits)."""
    where = "--list-presets" if list_presets else "python -m jax_resnet_speed.train --list-presets"
    parser.add_argument("--preset", default=presets.DEFAULT_PRESET, choices=sorted(presets.PRESETS),
                        help=f"recipe to train (see {where})")
    if list_presets:
        parser.add_argument("--list-presets", action="store_true", help="list the recipes and exit")


def add_epochs(parser: argparse.ArgumentParser, fractional: bool = True,
               help: str = "training epochs, may be fractional (default: the preset's); the lr schedule stretches "
                           "to fit") -> None:
    parser.add_argument("--epochs", type=epochs_type if fractional else int, help=help)


def add_batch_size(parser: argparse.ArgumentParser, default: int | None = None,
                   help: str = "batch size (default: the preset's)") -> None:
    parser.add_argument("--batch-size", type=int, default=default, help=help)


def add_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=settings.PRECISIONS,
                        help="compute precision; parameters and BN statistics stay fp32 "
                             "(default: bf16 on GPU, fp32 on CPU)")


def add_width_mult(parser: argparse.ArgumentParser, default: float | None = 1.0,
                   help: str = "scale every channel width (smoke tests)") -> None:
    parser.add_argument("--width-mult", type=float, default=default, help=help)


def add_seed(parser: argparse.ArgumentParser, help: str = "seed of the first run; run i uses seed + i") -> None:
    parser.add_argument("--seed", type=seed_type, default=0, help=help)


def add_json(parser: argparse.ArgumentParser, help: str = "write the machine-readable result here") -> None:
    parser.add_argument("--json", metavar="PATH", help=help)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the data comes from and how much of it: shared by the trainer and the experiments."""
    parser.add_argument("--data", metavar="PATH",
                        help="CIFAR-10 source: official tarball or batches folder, image-folder tree or archive, "
                             ".npz, or 'tfds'; default $JAX_RESNET_SPEED_DATA, then the cache, then download")
    parser.add_argument("--cache-dir", metavar="DIR", help="where decoded datasets are cached "
                        "(default $XDG_CACHE_HOME/jax_resnet_speed or ~/.cache/jax_resnet_speed)")
    parser.add_argument("--train-subset", type=int, metavar="N", help="train on the first N training images")
    parser.add_argument("--test-subset", type=int, metavar="N", help="evaluate on the first N test images")


def add_run_arguments(parser: argparse.ArgumentParser, preset: bool = True) -> None:
    """The flags every runner of a recipe shares: the trainer, the PyTorch reference and compare.

    preset=False leaves out --preset and --list-presets, for runners that choose recipes otherwise
    (the series).
    """
    if preset:
        add_preset(parser)
    add_data_arguments(parser)
    add_epochs(parser)
    add_batch_size(parser)
    add_precision(parser)
    add_seed(parser)
    parser.add_argument("--runs", type=int, default=1, help="independent runs, compiled once")
    parser.add_argument("--target", type=float, help="target test accuracy as a fraction (default: the preset's)")
    add_width_mult(parser)


def add_compile_arguments(parser: argparse.ArgumentParser, loop: bool = True) -> None:
    """How the programs are compiled and dispatched: the trainer, bench and series share these.

    loop=False leaves out --loop, for bench, which times several loop modes."""
    if loop:
        defaults = ", ".join(f"{mode} on {backend.upper()}" for backend, mode in compilation.DEFAULT_LOOPS.items())
        parser.add_argument("--loop", choices=compilation.LOOPS,
                            help="step: one dispatch of the compiled train step per step; epoch: each epoch's "
                                 f"steps in one compiled program (default: the faster one measured, {defaults})")
    parser.add_argument("--compile-cache", metavar="DIR", default=str(compilation.default_compile_cache()),
                        help="persistent compilation cache: a second run of the same program loads it instead of "
                             "compiling (and, on a GPU, autotuning)")
    parser.add_argument("--no-compile-cache", action="store_true", help="compile everything afresh")
    parser.add_argument("--xla-preset", choices=sorted(compilation.XLA_PRESETS), default="default",
                        help="XLA options added to XLA_FLAGS (jax_resnet_speed/compilation.py lists them)")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the per-epoch metrics go besides the table and --json: TensorBoard and a figure of the curves."""
    parser.add_argument("--tensorboard", metavar="DIR",
                        help="write per-epoch metrics as TensorBoard event files, a folder per run "
                             "(needs the tensorboard extra)")
    parser.add_argument("--plot", metavar="PNG", nargs="?", const=PLOT_BESIDE_JSON,
                        help="draw test and TTA accuracy and train loss against training seconds, all runs on one "
                             "figure; without PNG, beside --json (X.json: X.png) (needs the plot extra)")


def plot_path(args: argparse.Namespace) -> str | None:
    """Where --plot draws (None when not asked)."""
    plot = getattr(args, "plot", None)
    return os.path.splitext(args.json)[0] + ".png" if plot == PLOT_BESIDE_JSON else plot


def validate_positive(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Exit 2 on a numeric flag of POSITIVE that is given and not positive."""
    for name in POSITIVE:
        value = getattr(args, name, None)
        if isinstance(value, (int, float)) and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")


def validate_outputs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Exit 2 on an output path that cannot be written, before any data is loaded or anything compiles."""
    json_path, plot = getattr(args, "json", None), getattr(args, "plot", None)
    beside_nothing = plot == PLOT_BESIDE_JSON and not json_path  # refused by the runner's own check
    files = {"json": json_path, "plot": None if beside_nothing else plot_path(args)}
    folders = {name: getattr(args, name, None) for name in
               ("tensorboard", "checkpoint_dir", "xla_dump", "profile", "out", "compile_cache")}
    if getattr(args, "no_compile_cache", False):
        if args.compile_cache != str(compilation.default_compile_cache()):
            parser.error("--compile-cache DIR and --no-compile-cache contradict each other; give one of them")
        folders["compile_cache"] = None
    try:
        for name, path in files.items():
            paths.check_output_file(path, f"--{name.replace('_', '-')}")
        for name, path in folders.items():
            paths.check_output_folder(path, f"--{name.replace('_', '-')}")
    except paths.PathError as error:
        parser.error(str(error))


def validate_batch_size(parser: argparse.ArgumentParser, recipe: presets.Recipe, batch_size: int | None) -> None:
    """Exit 2 when --batch-size does not split into the recipe's ghost batch-norm splits."""
    batch_size = batch_size if batch_size is not None else recipe.batch_size
    splits = recipe.network.batch_norm.ghost_splits
    if batch_size % splits:
        parser.error(f"--batch-size {batch_size} is not divisible by the {splits} ghost "
                     f"batch-norm splits of preset {recipe.name}; use a multiple of {splits}")


def parse_targets(text: str) -> list[float]:
    """--targets 0.93,0.935,0.94: accuracy fractions in (0, 1]."""
    try:
        targets = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        targets = []
    if not targets or not all(0 < target <= 1 for target in targets):
        raise argparse.ArgumentTypeError(f"takes accuracy fractions such as 0.93,0.935,0.94, got {text!r}")
    return targets
