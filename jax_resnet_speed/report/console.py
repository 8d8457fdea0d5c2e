"""Runs as text: the per-epoch table, one line per run, the summary line, and the cells that
results.py and compare.py put in their tables."""

from __future__ import annotations

from collections.abc import Sequence

from jax_resnet_speed.report import TIMING_RULES, seconds_to_targets


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


def time_left_line(metrics: dict, epochs: float) -> str | None:
    """After the first epoch of a run whose remaining epochs look longer than a minute, how long they
    should take (epoch 1's training and evaluation seconds times the epochs left); else None."""
    if metrics["epoch"] != 1:
        return None
    left = (metrics["epoch_seconds"] + metrics["eval_seconds"]) * (epochs - 1)
    if left <= 60:
        return None
    minutes, seconds = divmod(round(left), 60)
    return f"about {minutes} min {seconds:02d} s left in this run, at epoch 1's pace"


def interval_text(interval: Sequence[float], digits: int) -> str:
    """[low, high]: brackets and a comma, since a hyphen between two numbers reads as a minus."""
    return f"[{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def target_cell(row: dict) -> str:
    """One target of seconds_to_targets as '12.34 (5/5)': median seconds (runs reaching it/finished)."""
    seconds = "-" if row["median_seconds"] is None else f"{row['median_seconds']:.2f}"
    return f"{seconds} ({row['reached']}/{row['finished']})"


def targets_line(runs: Sequence[dict], targets: Sequence[float], rule: str = "myrtle") -> str:
    """The median seconds to each target, with how many runs reached it, under the recipe's timing rule."""
    cells = [f"{target:.2%} {target_cell(row)}" for target, row in seconds_to_targets(runs, targets, rule).items()]
    return f"seconds to {', '.join(cells)}: median s (runs reaching it/finished), {rule} rule"


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
    if summary.get("timing_rule") == "airbench":
        return airbench_summary_line(summary, target)
    median, iqr = summary["median_seconds_to_target"], summary.get("iqr_seconds_to_target")
    median_text = f"median {median:.2f} s to target" if median is not None else "target not reached"
    if iqr:
        median_text += f" (IQR {interval_text(iqr, 2)})"
    interval, wilson = summary.get("ci95_accuracy"), summary.get("wilson95_reaching_target")
    mean_text = f", 95% CI of the mean {interval_text(interval, 4)}" if interval else ""
    wilson_text = f" (95% {interval_text(wilson, 2)})" if wilson else ""
    return (f"{summary['completed_runs']} runs: accuracy {summary['mean_accuracy']:.4f} "
            f"+- {summary['std_accuracy']:.4f}{mean_text} (min {summary['min_accuracy']:.4f}, "
            f"max {summary['max_accuracy']:.4f}), {summary['runs_reaching_target']}/"
            f"{summary.get('finished_runs', summary['completed_runs'])} "
            f"reached {target:.2%}{wilson_text}, {median_text}, "
            f"training {summary['mean_train_seconds']:.2f} +- {summary['std_train_seconds']:.2f} s")


def airbench_summary_line(summary: dict, target: float) -> str:
    """airbench's claim: the mean final accuracy over n runs against the target, and the mean clock."""
    n, mean = summary["completed_runs"], summary["mean_accuracy"]
    interval = summary.get("ci95_accuracy")
    mean_text = f" (95% CI {interval_text(interval, 4)})" if interval else ""
    verdict = f"meets {target:.2%}" if mean >= target else f"misses {target:.2%} by {target - mean:.4f}"
    return (f"airbench rule: mean accuracy {mean:.4f} +- {summary['std_accuracy']:.4f} over n={n} runs"
            f"{mean_text}, {verdict}; {summary['mean_train_seconds']:.2f} "
            f"+- {summary['std_train_seconds']:.2f} s per run ({TIMING_RULES['airbench'].split(';')[0]}); "
            f"{summary['runs_reaching_target']}/{summary.get('finished_runs', n)} runs reached it alone")
