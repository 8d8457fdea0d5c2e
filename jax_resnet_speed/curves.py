"""Training curves (--plot): test and TTA accuracy and train loss per epoch against training seconds.

All runs of an invocation on one figure, one colour per run, the target accuracy marked. Drawn from
the run records of the result (report/), after the runs, never inside the timed loop.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

_MAX_RUNS_IN_LEGEND = 12


def figure(runs: Sequence[dict], target: float, title: str):
    """A matplotlib Figure with two axes sharing the x axis (training seconds at the end of each epoch):
    accuracy (test solid, TTA dashed, the target dotted) above, train loss below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, (accuracy_axes, loss_axes) = plt.subplots(2, 1, sharex=True, figsize=(7, 6.5))
    for index, record in enumerate(runs):
        epochs = record.get("epochs") or []
        if not epochs:
            continue
        seconds = [m["train_seconds"] for m in epochs]
        colour = f"C{index % 10}"
        accuracy_axes.plot(seconds, [m["test_accuracy"] for m in epochs], color=colour, marker="o", markersize=3)
        accuracy_axes.plot(seconds, [m["tta_accuracy"] for m in epochs], color=colour, linestyle="--", marker="s",
                           markersize=3)
        loss_axes.plot(seconds, [m["train_loss"] for m in epochs], color=colour, marker="o", markersize=3,
                       label=f"seed {record['seed']}")
    accuracy_axes.axhline(target, color="black", linestyle=":", linewidth=1)
    accuracy_axes.legend(handles=[Line2D([], [], color="grey", marker="o", markersize=3, label="test"),
                                  Line2D([], [], color="grey", linestyle="--", marker="s", markersize=3, label="TTA"),
                                  Line2D([], [], color="black", linestyle=":", label=f"target {target:.2%}")],
                         fontsize=8, loc="best")
    accuracy_axes.set(ylabel="test accuracy", title=title)
    loss_axes.set(xlabel="training seconds (end of each epoch)", ylabel="train loss", xlim=(0, None))
    if 1 < len(runs) <= _MAX_RUNS_IN_LEGEND:
        loss_axes.legend(fontsize=8, loc="upper right")
    for axes in (accuracy_axes, loss_axes):
        axes.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def title(payload: dict) -> str:
    """Recipe, device, run count and training images of a result JSON."""
    config, environment, runs = payload.get("config") or {}, payload.get("environment") or {}, payload["runs"]
    return (f"{config.get('recipe', {}).get('name', '?')} on {environment.get('device_kind', '?')}: "
            f"{len(runs)} run{'s' * (len(runs) != 1)}, {config.get('train_images', '?')} training images")


def write(payload: dict, target: float, path: str | os.PathLike) -> None:
    """The `figure` of a result's runs into a PNG at `path`, atomically (report.files.write_atomically)."""
    import matplotlib.pyplot as plt

    from jax_resnet_speed.report import files

    fig = figure(payload["runs"], target, title(payload))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    files.write_atomically(path, lambda handle: handle.write(buffer.getvalue()), mode="wb")
