"""Timing results: time to target, the per-epoch table, run summaries and the JSON file."""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

# (header, metrics key, format) for the per-epoch table, in Myrtle's column order.
COLUMNS = (
    ("epoch", "epoch", "{:>5d}"),
    ("lr", "lr", "{:>7.4f}"),
    ("train loss", "train_loss", "{:>10.4f}"),
    ("train acc", "train_accuracy", "{:>9.4f}"),
    ("test acc", "test_accuracy", "{:>8.4f}"),
    ("tta acc", "tta_accuracy", "{:>7.4f}"),
    ("epoch s", "epoch_seconds", "{:>7.2f}"),
    ("total s", "train_seconds", "{:>7.2f}"),
)


def table_header() -> str:
    widths = [len(f.format(0 if key == "epoch" else 0.0)) for _, key, f in COLUMNS]
    return "  ".join(h.rjust(max(w, len(h))) for (h, _, _), w in zip(COLUMNS, widths))


def table_row(metrics: dict) -> str:
    cells = []
    for header, key, fmt in COLUMNS:
        cells.append(fmt.format(metrics[key]).rjust(len(header)))
    return "  ".join(cells)


def epoch_metrics(epoch: int, lr: float, train_sums: Sequence[float], eval_sums: Sequence[float], tta: bool,
                  epoch_seconds: float, train_seconds: float, eval_seconds: float) -> dict:
    """One row of a run's record.

    train_sums: (loss sum, correct, examples) over the epoch's training batches;
    eval_sums: (correct, correct with flip TTA, loss sum, examples) over the test set.
    `accuracy` is the one the recipe reports: TTA when it uses TTA.
    """
    loss_sum, correct, seen = (float(v) for v in train_sums)
    test_correct, tta_correct, test_loss_sum, count = (float(v) for v in eval_sums)
    metrics = {
        "epoch": epoch, "lr": float(lr),
        "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
        "test_loss": test_loss_sum / count, "test_accuracy": test_correct / count, "tta_accuracy": tta_correct / count,
        "epoch_seconds": epoch_seconds, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
    }
    metrics["accuracy"] = metrics["tta_accuracy"] if tta else metrics["test_accuracy"]
    return metrics


class Diverged(Exception):
    """The training loss became NaN or infinite."""


def add_epoch(record: dict, metrics: dict, on_epoch: Callable[[dict], None]) -> None:
    """Append an epoch to a run record and report it; raise Diverged (status kept) if the loss is not finite."""
    record["epochs"].append(metrics)
    on_epoch(metrics)
    if not math.isfinite(metrics["train_loss"]):
        record["status"] = "diverged"
        raise Diverged(f"run with seed {record['seed']} diverged at epoch {metrics['epoch']}: "
                       f"train loss {metrics['train_loss']}")


def complete_run(record: dict, target: float) -> None:
    """Mark a run record completed, with its final accuracy and seconds to target."""
    record["status"] = "completed"
    record["final_accuracy"] = record["epochs"][-1]["accuracy"]
    record["seconds_to_target"] = seconds_to_target(record["epochs"], target)


def seconds_to_target(epochs: Sequence[dict], target: float) -> float | None:
    """Training seconds at the end of the first epoch whose reported accuracy reaches `target`."""
    for metrics in epochs:
        if metrics["accuracy"] >= target:
            return metrics["train_seconds"]
    return None


def _stats(values: Sequence[float]) -> dict:
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def summarize(runs: Sequence[dict]) -> dict:
    """Mean, std (sample), min and max of accuracy and training time over the completed runs."""
    done = [r for r in runs if r["status"] == "completed"]
    accuracy = _stats([r["final_accuracy"] for r in done])
    seconds = _stats([r["epochs"][-1]["train_seconds"] for r in done])
    reached = [r["seconds_to_target"] for r in done if r["seconds_to_target"] is not None]
    return {
        "runs": len(runs),
        "completed_runs": len(done),
        "mean_accuracy": accuracy["mean"],
        "std_accuracy": accuracy["std"],
        "min_accuracy": accuracy["min"],
        "max_accuracy": accuracy["max"],
        "runs_reaching_target": len(reached),
        "median_seconds_to_target": statistics.median(reached) if reached else None,
        "mean_train_seconds": seconds["mean"],
        "std_train_seconds": seconds["std"],
        "min_train_seconds": seconds["min"],
        "max_train_seconds": seconds["max"],
    }


def run_line(record: dict, target: float) -> str:
    if record["status"] != "completed":
        return f"seed {record['seed']}: {record['status']} after {len(record['epochs'])} epochs"
    result = (f"reached {target:.2%} in {record['seconds_to_target']:.2f} s"
              if record["seconds_to_target"] is not None else f"did not reach {target:.2%}")
    return (f"seed {record['seed']}: accuracy {record['final_accuracy']:.4f}, {result} "
            f"(training {record['epochs'][-1]['train_seconds']:.2f} s)")


def summary_line(summary: dict, target: float) -> str:
    if not summary["completed_runs"]:
        return f"no run completed ({summary['runs']} started)"
    median = summary["median_seconds_to_target"]
    median_text = f"median {median:.2f} s to target" if median is not None else "target not reached"
    return (f"{summary['completed_runs']} runs: accuracy {summary['mean_accuracy']:.4f} "
            f"+- {summary['std_accuracy']:.4f} (min {summary['min_accuracy']:.4f}, max {summary['max_accuracy']:.4f}), "
            f"{summary['runs_reaching_target']}/{summary['completed_runs']} reached {target:.2%}, {median_text}, "
            f"training {summary['mean_train_seconds']:.2f} +- {summary['std_train_seconds']:.2f} s")


def environment() -> dict:
    import flax
    import jax
    import jaxlib
    import optax

    device = jax.devices()[0]
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "backend": jax.default_backend(),
            "device_kind": device.device_kind, "device_count": jax.device_count()}


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write_atomically(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write through `write(handle)` into a temp file beside `path`, then rename it over `path`.

    The file gets an ordinary new file's permissions under the umask (a temp file starts 0600).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(mode, dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                         delete=False)
    try:
        with handle:
            write(handle)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(handle.name, 0o666 & ~umask)
        os.replace(handle.name, path)
    except BaseException:
        os.unlink(handle.name)
        raise


def write_json(path: str | os.PathLike, payload: dict) -> None:
    """Write atomically (write_atomically), non-finite numbers as null."""
    def dump(handle) -> None:
        json.dump(_finite_or_none(payload), handle, indent=2)
        handle.write("\n")

    write_atomically(path, dump)


def mark_interrupted(runs: Sequence[dict]) -> None:
    """Runs still running (or not yet started) when Ctrl-C came are marked interrupted."""
    for record in runs:
        if record.get("status", "running") == "running":
            record["status"] = "interrupted"
