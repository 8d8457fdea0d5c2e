"""Post 5: final test accuracy over 2-D slices of hyperparameter space, for the post-4 ResNet-9.

Page found nearly flat directions: accuracy hardly changes along lr x weight decay = constant
(for weights that feed into batch norm) and along lr / (1 - momentum) = constant. Each slice
here is a grid in log2 steps around the recipe's values, trained as one vmapped program
(group.py): the hyperparameters are traced values of the train state, so every point of the
grid shares one compiled train step. Every point uses the same seed (the same initialisation,
batches and augmentation), so the grid differs only by its hyperparameters.

    python -m jax_resnet_speed.experiments.hyperparameters --out DIR [--scale smoke|full]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from jax_resnet_speed import flags, group, interrupt, optim, presets, train
from jax_resnet_speed.report import files
from jax_resnet_speed.experiments import common

NAME = "hyperparameters"
PRESET = "myrtle-resnet9"  # post 4's ResNet-9, whose slices post 5 draws
SCALES = {
    "smoke": {"width_mult": 0.125, "train_subset": 1024, "test_subset": 500, "epochs": 6, "batch_size": 64,
              "grid": 3},
    "full": {"width_mult": 1.0, "epochs": 24, "batch_size": 512, "grid": 5},
}

# vmap over weights turns each convolution into a grouped one, which XLA:CPU runs slower per
# image than the plain one (scripts/bench_parallel.py, ResNet-9 x0.125, batch 128: 676 images/s
# alone, 194 in all for a group of 4), so on a CPU the points run one at a time.
CPU_POINTS_AT_ONCE = 1


@dataclasses.dataclass(frozen=True)
class Slice:
    """A 2-D slice: the lr scale on x against one other hyperparameter on y, both in log2 steps.

    Point (i, j) has lr scale 2^i and y = y_of(j); it lies on the predicted flat curve
    `curve(i, j)` (points with equal values lie on the same curve).
    """

    name: str
    y_label: str
    y_of: Callable[[float, int], float]  # (recipe's value, grid offset) -> value
    hyper_of: Callable[[presets.Recipe, float, float], optim.Hyper]  # (recipe, lr scale, y)
    curve: Callable[[int, int], int]
    curve_label: str


SLICES = (
    Slice("lr_wd", "weight decay", lambda wd, j: wd * 2.0 ** j,
          lambda recipe, lr, wd: optim.Hyper.of(recipe, lr, weight_decay=wd),
          lambda i, j: i + j, "lr x wd = const"),
    # 1 - momentum doubles with each step up, so lr / (1 - momentum) is constant along i - j.
    Slice("lr_momentum", "momentum", lambda m, j: 1 - (1 - m) * 2.0 ** j,
          lambda recipe, lr, m: optim.Hyper.of(recipe, lr, momentum=m),
          lambda i, j: i - j, "lr / (1 - momentum) = const"),
)


def offsets(size: int) -> list[int]:
    """Grid offsets in log2 steps around the recipe's value: 4 -> [-2, -1, 0, 1]."""
    return list(range(-(size // 2), size - size // 2))


def flatness(accuracy: np.ndarray, keys: np.ndarray, control_keys: np.ndarray) -> dict:
    """Is accuracy flat along the predicted curves?

    along: pooled std of accuracy within each predicted curve (curves with two or more finite
    points); across: std of the curves' mean accuracies; control: the pooled std along the
    perpendicular diagonals, which cross the curves. Flat along the curves means along is
    small against both across and control.
    """
    def pooled_within(by: np.ndarray) -> tuple[float | None, list[float]]:
        squares, dof, means = 0.0, 0, []
        for key in np.unique(by):
            values = accuracy[(by == key) & np.isfinite(accuracy)]
            if len(values) >= 2:
                squares += float(np.sum((values - values.mean()) ** 2))
                dof += len(values) - 1
                means.append(float(values.mean()))
        return (math.sqrt(squares / dof) if dof else None), means

    along, curve_means = pooled_within(keys)
    control, _ = pooled_within(control_keys)
    across = statistics.stdev(curve_means) if len(curve_means) >= 2 else None
    return {"along": along, "across": across, "control": control,
            "along_over_across": along / across if along is not None and across else None,
            "along_over_control": along / control if along is not None and control else None}


def run_slice(slice_: Slice, recipe: presets.Recipe, config: train.RunConfig, data: train.DeviceData,
              grid: int, seed: int, compiled: train.Programs, at_once: int) -> dict:
    """Train every point of the slice through `compiled` (group.compile_group for `at_once` members),
    `at_once` points per chunk."""
    o = recipe.optimiser
    y_default = o.weight_decay if slice_.name == "lr_wd" else o.momentum
    steps = offsets(grid)
    points = [(i, j) for j in steps for i in steps]
    hypers = [slice_.hyper_of(recipe, 2.0 ** i, slice_.y_of(y_default, j)) for i, j in points]
    chunks = math.ceil(len(points) / at_once)
    common.progress(f"{slice_.name}: {len(points)} points, {at_once} at once in {chunks} chunk(s)")
    records: list[dict] = []
    start = time.perf_counter()
    for chunk in range(chunks):
        members = group.padded(hypers[chunk * at_once:(chunk + 1) * at_once], at_once)
        chunk_records = [{} for _ in members]

        def after_epoch(epoch: int, chunk: int = chunk, chunk_records: list = chunk_records) -> None:
            done = [r["epochs"][-1]["test_accuracy"] for r in chunk_records if r["status"] == "running"]
            diverged = sum(r["status"] == "diverged" for r in chunk_records)
            common.progress(f"{slice_.name} chunk {chunk + 1}/{chunks}, epoch {epoch}/{recipe.epochs}: test accuracy "
                            f"{min(done, default=math.nan):.3f}-{max(done, default=math.nan):.3f}, {diverged} diverged")

        group.run(compiled, data, config, [seed] * at_once, members, lambda member, metrics: None,
                  chunk_records, after_epoch)
        records += chunk_records[:len(points) - chunk * at_once]
    seconds = time.perf_counter() - start

    accuracy = np.full((grid, grid), np.nan)  # [y index, lr index]
    for (i, j), record in zip(points, records):
        if record["status"] == "completed":
            accuracy[steps.index(j), steps.index(i)] = record["final_accuracy"]
    index = np.array(steps)
    keys = np.vectorize(slice_.curve)(index[None, :], index[:, None])
    control = np.vectorize(lambda i, j: slice_.curve(i, -j))(index[None, :], index[:, None])
    return {
        "x_label": "peak lr", "y_label": slice_.y_label, "curve": slice_.curve_label,
        "x": [max(lr for _, lr in o.lr_knots) * 2.0 ** i for i in steps],
        "y": [slice_.y_of(y_default, j) for j in steps],
        "offsets": steps, "accuracy": accuracy.tolist(), "curve_keys": keys.tolist(),
        "points": [{"lr_scale": 2.0 ** i, slice_.y_label: slice_.y_of(y_default, j), "status": r["status"],
                    "final_accuracy": r["final_accuracy"],
                    "accuracy_by_epoch": [m["test_accuracy"] for m in r["epochs"]]}
                   for (i, j), r in zip(points, records)],
        "points_at_once": at_once, "chunks": chunks, "train_seconds": seconds,
        "flatness": flatness(accuracy, keys, control),
    }


def figure(slices: dict, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(slices), figsize=(6.2 * len(slices), 5.4))
    for ax, (name, result) in zip(np.atleast_1d(axes), slices.items()):
        accuracy = np.array(result["accuracy"], dtype=float)
        finite = accuracy[np.isfinite(accuracy)]
        image = ax.imshow(accuracy, origin="lower", cmap="viridis",
                          vmin=finite.min() if finite.size else 0, vmax=finite.max() if finite.size else 1)
        fig.colorbar(image, ax=ax, label="final test accuracy")
        size = len(result["offsets"])
        for row in range(size):
            for col in range(size):
                value = accuracy[row, col]
                ax.text(col, row, "diverged" if not np.isfinite(value) else f"{value:.3f}", ha="center",
                        va="center", fontsize=8, color="white" if not np.isfinite(value) or value < finite.mean()
                        else "black")
        # The predicted flat curves are straight lines in log2 coordinates.
        keys = np.array(result["curve_keys"])
        for key in np.unique(keys):
            cells = np.argwhere(keys == key)
            if len(cells) >= 2:
                ax.plot(cells[:, 1], cells[:, 0], "w--", linewidth=1, alpha=0.8)
        ax.set_xticks(range(size), [f"{x:.3g}" for x in result["x"]])
        ax.set_yticks(range(size), [f"{y:.3g}" for y in result["y"]])
        ax.set_xlabel(result["x_label"])
        ax.set_ylabel(result["y_label"])
        flat = result["flatness"]
        ratio = f"{flat['along_over_control']:.2f}" if flat["along_over_control"] is not None else "n/a"
        ax.set_title(f"{result['curve']} (dashed)\nspread along the dashes / along the other diagonals: {ratio}",
                     fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def summary(slices: dict, settings: dict, title: str) -> str:
    lines = [f"# Post 5: hyperparameter slices ({settings['scale']} scale)", "", title, "",
             "Final test accuracy of the post-4 ResNet-9 over two slices, each grid in log2 steps around the "
             "recipe's values, every point with the same seed. Flat means: the spread of accuracy along the "
             "predicted curves is small against the spread along the perpendicular diagonals (control) and "
             "against the spread between the curves' means (across).", "",
             "| slice | predicted flat curve | points | at once | spread along | spread across | control "
             "| along / control | best point |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    for name, result in slices.items():
        flat = result["flatness"]
        done = [p for p in result["points"] if p["status"] == "completed"]
        best = max(done, key=lambda p: p["final_accuracy"], default=None)
        best_text = (f"lr x{best['lr_scale']:g}, {result['y_label']} {best[result['y_label']]:.3g}: "
                     f"{best['final_accuracy']:.4f}") if best else "none"
        lines.append(f"| {name} | {result['curve']} | {len(result['points'])} | {result['points_at_once']} | "
                     f"{fmt(flat['along'])} | {fmt(flat['across'])} | {fmt(flat['control'])} | "
                     f"{fmt(flat['along_over_control'])} | {best_text} |")
    diverged = sum(p["status"] == "diverged" for r in slices.values() for p in r["points"])
    lines += ["", f"{diverged} point(s) diverged (left out of the spreads)."]
    for name, result in slices.items():
        flat = result["flatness"]
        if flat["along_over_control"] is not None:
            verdict = ("flatter" if flat["along_over_control"] < 1 else "not flatter") + \
                " along the predicted curves than along the perpendicular diagonals"
            lines.append(f"- {name}: accuracy is {verdict} (ratio {flat['along_over_control']:.2f}).")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = common.build_parser(NAME, __doc__.splitlines()[0], SCALES)
    parser.add_argument("--grid", type=int, help="points per axis of each slice (default: the scale's)")
    flags.add_batch_size(parser, help="batch size (default: the scale's)")
    parser.add_argument("--points-at-once", type=int, metavar="K",
                        help="train K grid points per compiled group (default: as many as fit in memory; 1 on a CPU)")
    parser.add_argument("--slices", type=slice_names, default=[s.name for s in SLICES],
                        help="comma-separated slices to run: " + ", ".join(s.name for s in SLICES))
    return parser


def run(args: argparse.Namespace) -> list[str]:
    chosen = common.settings(args, SCALES, jax.default_backend())
    for key in ("grid", "batch_size"):
        if getattr(args, key) is not None:
            chosen[key] = getattr(args, key)
    chosen.update(scale=args.scale, points_at_once=args.points_at_once)
    recipe, config, dataset, data, title = common.post4_setup(args, chosen, PRESET)
    print(f"{NAME}: {title}")
    compiled, grouping = compile_group(config, data, chosen, args.seed)
    slices = {s.name: run_slice(s, recipe, config, data, chosen["grid"], args.seed, compiled,
                                grouping["points_at_once"]) for s in SLICES if s.name in args.slices}
    payload = {"settings": common.settings_record(chosen, PRESET, args, dataset),
               "environment": files.environment(), "recipe": recipe.to_dict(), "group": grouping, "slices": slices}
    text = summary(slices, chosen, title)
    print(text)
    return common.write_outputs(args.out, NAME, figure(slices, title), payload, text)


def compile_group(config: train.RunConfig, data: train.DeviceData, chosen: dict,
                  seed: int) -> tuple[train.Programs, dict]:
    """One compiled group for every chunk of every slice (the hyperparameters are traced), of
    --points-at-once members, one on a CPU, else as many as fit in memory; and how it was chosen."""
    programs = train.build_programs(config, data)
    points, member_bytes = chosen["grid"] ** 2, None
    if chosen["points_at_once"] is not None:
        at_once, why = chosen["points_at_once"], "--points-at-once"
    elif jax.default_backend() == "cpu":
        at_once, why = CPU_POINTS_AT_ONCE, "one at a time on a CPU"
    else:
        member_bytes, _, at_once = group.room(programs, data)
        why = f"as many as fit: about {member_bytes / 2**20:.0f} MiB each"
    at_once = min(points, at_once)
    compiled, seconds = group.compile_group(programs, data, [seed] * at_once, [programs.hyper] * at_once)
    common.progress(f"compiled a group of {at_once} ({why}) in {seconds:.1f} s")
    return compiled, {"points_at_once": at_once, "why": why, "member_bytes": member_bytes, "compile_seconds": seconds}


def slice_names(text: str) -> list[str]:
    names = text.split(",")
    unknown = set(names) - {s.name for s in SLICES}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown slice(s) {', '.join(sorted(unknown))}; choose from "
                                         f"{', '.join(s.name for s in SLICES)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(run, build_parser(), argv)


if __name__ == "__main__":
    interrupt.main(main)
