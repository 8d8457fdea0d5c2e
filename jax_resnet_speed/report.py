"""Timing results: time to target, the per-epoch table, run summaries and the JSON file."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from jax_resnet_speed import install_hint, paths, settings

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


# The timing rules a recipe can be clocked under (presets.Timing.rule), as the summary states them.
TIMING_RULES = {
    "myrtle": "training epochs timed; seconds to the first epoch that reaches the target",
    "airbench": "whitening init, training and final TTA timed; the claim is the mean final accuracy over runs",
}


def complete_run(record: dict, target: float, rule: str = "myrtle") -> None:
    """Mark a run record completed, with its final accuracy, seconds to target and timing rule."""
    record["status"] = "completed"
    record["final_accuracy"] = record["epochs"][-1]["accuracy"]
    record["seconds_to_target"] = seconds_to_target(record["epochs"], target, rule)
    record["timing_rule"] = rule


def seconds_to_target(epochs: Sequence[dict], target: float, rule: str = "myrtle") -> float | None:
    """Training seconds at the end of the first epoch whose reported accuracy reaches `target`.

    Under airbench's rule a run is timed whole, so it is the run's clock if its final accuracy
    reaches the target.
    """
    if rule == "airbench":
        return epochs[-1]["train_seconds"] if epochs and epochs[-1]["accuracy"] >= target else None
    for metrics in epochs:
        if metrics["accuracy"] >= target:
            return metrics["train_seconds"]
    return None


def seconds_to_targets(runs: Sequence[dict], targets: Sequence[float], rule: str = "myrtle") -> dict[float, dict]:
    """Seconds to each of `targets`, after the fact, from the completed runs' per-epoch records.

    Each target is judged under the recipe's timing `rule` (seconds_to_target); a target the runs
    were not aimed at compares presets and frameworks all the same. Per target: `reached`, the runs
    reaching it, of `finished` (completed or diverged), and the `median_seconds` of those that did.
    """
    finished = sum(r["status"] in ("completed", "diverged") for r in runs)
    done = [r for r in runs if r["status"] == "completed"]
    result = {}
    for target in targets:
        seconds = [s for s in (seconds_to_target(r["epochs"], target, rule) for r in done) if s is not None]
        result[target] = {"reached": len(seconds), "finished": finished,
                          "median_seconds": statistics.median(seconds) if seconds else None}
    return result


def parse_targets(text: str) -> list[float]:
    """--targets 0.93,0.935,0.94: accuracy fractions in (0, 1]."""
    try:
        targets = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        targets = []
    if not targets or not all(0 < target <= 1 for target in targets):
        raise argparse.ArgumentTypeError(f"takes accuracy fractions such as 0.93,0.935,0.94, got {text!r}")
    return targets


def target_cell(row: dict) -> str:
    """One target of seconds_to_targets as '12.34 (5/5)': median seconds (runs reaching it/finished)."""
    seconds = "-" if row["median_seconds"] is None else f"{row['median_seconds']:.2f}"
    return f"{seconds} ({row['reached']}/{row['finished']})"


def targets_line(runs: Sequence[dict], targets: Sequence[float], rule: str = "myrtle") -> str:
    """The median seconds to each target, with how many runs reached it, under the recipe's timing rule."""
    cells = [f"{target:.2%} {target_cell(row)}" for target, row in seconds_to_targets(runs, targets, rule).items()]
    return f"seconds to {', '.join(cells)}: median s (runs reaching it/finished), {rule} rule"


def _stats(values: Sequence[float]) -> dict:
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Student-t confidence interval of the mean (None with fewer than two values)."""
    from scipy import stats

    if len(values) < 2:
        return None
    mean, sem = statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1)) * sem
    return mean - half, mean + half


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of a binomial proportion (None without trials): unlike the normal
    approximation it stays inside [0, 1] and is honest at 0/n and n/n."""
    if trials == 0:
        return None
    z = statistics.NormalDist().inv_cdf((1 + confidence) / 2)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(runs: Sequence[dict], target: float | None = None) -> dict:
    """Accuracy (mean, std, standard error, 95% t interval, min, max) and training time over the
    completed runs; the runs reaching the target, as a fraction of the finished runs (completed or
    diverged) with its 95% Wilson interval; the median and interquartile range of seconds to target.

    `timing_rule` is the runs' (presets.Timing.rule). Under airbench's, whose claim is a mean,
    `mean_accuracy_meets_target` says whether the mean final accuracy reaches `target`, and
    `mean_train_seconds` is the mean of the whole runs' clocks.
    """
    done = [r for r in runs if r["status"] == "completed"]
    rules = {r["timing_rule"] for r in done if "timing_rule" in r}
    accuracies = [r["final_accuracy"] for r in done]
    accuracy = _stats(accuracies)
    seconds = _stats([r["epochs"][-1]["train_seconds"] for r in done])
    reached = [r["seconds_to_target"] for r in done if r["seconds_to_target"] is not None]
    # A diverged run did not reach the target either; interrupted ones are left out.
    finished = sum(r["status"] in ("completed", "diverged") for r in runs)
    interval = mean_interval(accuracies)
    if interval:  # an accuracy lies in [0, 1]: a few spread-out runs must not put its interval outside
        interval = (max(0.0, interval[0]), min(1.0, interval[1]))
    wilson = wilson_interval(len(reached), finished)
    return {
        "runs": len(runs),
        "completed_runs": len(done),
        "mean_accuracy": accuracy["mean"],
        "std_accuracy": accuracy["std"],
        "sem_accuracy": accuracy["std"] / math.sqrt(len(done)) if len(done) > 1 else None,
        "ci95_accuracy": list(interval) if interval else None,
        "min_accuracy": accuracy["min"],
        "max_accuracy": accuracy["max"],
        "runs_reaching_target": len(reached),
        "finished_runs": finished,
        "fraction_reaching_target": len(reached) / finished if finished else None,
        "wilson95_reaching_target": list(wilson) if wilson else None,
        "median_seconds_to_target": statistics.median(reached) if reached else None,
        "iqr_seconds_to_target": (statistics.quantiles(reached, n=4, method="inclusive")[::2]
                                  if len(reached) > 1 else None),
        "mean_train_seconds": seconds["mean"],
        "std_train_seconds": seconds["std"],
        "min_train_seconds": seconds["min"],
        "max_train_seconds": seconds["max"],
        "timing_rule": rules.pop() if len(rules) == 1 else ("mixed" if rules else "myrtle"),
        "mean_accuracy_meets_target": (accuracy["mean"] >= target
                                       if target is not None and accuracy["mean"] is not None else None),
    }


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


def config_key(config: dict) -> str:
    """What must match for runs to be merged: the config without its seed and run count."""
    return json.dumps({k: v for k, v in config.items() if k not in ("seed", "runs")}, sort_keys=True)


def config_differences(first: dict, other: dict, prefix: str = "") -> list[str]:
    """Dotted names of the config fields where `other` differs from `first` (seed and runs aside)."""
    names = []
    for key in sorted(set(first) | set(other)):
        if not prefix and key in ("seed", "runs"):
            continue
        a, b = first.get(key), other.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            names.append(f"{prefix}{key}")
    return names


class MergeError(Exception):
    """Result files that cannot be merged: unreadable, another config, or a seed twice."""


def merge(payloads: Sequence[tuple[str, dict]]) -> dict:
    """One result from the result JSONs of many invocations of one config (name, payload pairs)."""
    payloads = [(name, {**payload, "config": settings.upgrade_config_dict(payload["config"])})  # flat recipes too
                for name, payload in payloads]
    (first_name, first), seen = payloads[0], {}
    runs = []
    for name, payload in payloads:
        if config_key(payload["config"]) != config_key(first["config"]):
            differs = ", ".join(config_differences(first["config"], payload["config"]))
            raise MergeError(f"{name} was run with another config than {first_name} (differs in {differs}); "
                             "merge only results of one config")
        for record in payload["runs"]:
            if record["seed"] in seen:
                raise MergeError(f"seed {record['seed']} is in both {seen[record['seed']]} and {name}; "
                                 "merge only distinct runs")
            seen[record["seed"]] = name
            runs.append(record)
    return {"config": {**first["config"], "runs": len(runs)}, "sources": [name for name, _ in payloads],
            "runs": runs, "summary": summarize(runs, first["config"].get("recipe", {}).get("timing", {}).get("target"))}


def histogram(merged: dict, target: float, path: str) -> None:
    """Final accuracies of the completed runs, the target marked."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accuracies = [r["final_accuracy"] for r in merged["runs"] if r["status"] == "completed"]
    summary = merged["summary"]
    figure, axes = plt.subplots(figsize=(6.5, 4))
    axes.hist(accuracies, bins=max(5, min(40, len(accuracies) // 3)), color="C0", alpha=0.8)
    axes.axvline(target, color="C3", linestyle="--", label=f"target {target:.2%}")
    if summary["ci95_accuracy"]:
        axes.axvspan(*summary["ci95_accuracy"], color="grey", alpha=0.3, label="95% CI of the mean")
    axes.set(xlabel="final test accuracy", ylabel="runs",
             title=f"{summary['completed_runs']} runs, {summary['runs_reaching_target']}/{summary['finished_runs']} "
                   f"reached the target")
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    write_atomically(path, lambda handle: handle.write(buffer.getvalue()), mode="wb")


def main(argv: Sequence[str] | None = None) -> int:
    """python -m jax_resnet_speed.report FILE...: merge the result JSONs of one config into one summary."""
    import sys

    parser = argparse.ArgumentParser(prog="python -m jax_resnet_speed.report",
                                     description="Merge result JSONs of one config (from --json) into one summary.")
    parser.add_argument("files", nargs="+", metavar="FILE", help="result JSONs of python -m jax_resnet_speed.train")
    parser.add_argument("--json", metavar="PATH", help="write the merged result here")
    parser.add_argument("--plot", metavar="PNG", help="histogram of the final accuracies, the target marked")
    parser.add_argument("--targets", type=parse_targets, metavar="LIST",
                        help="also the seconds to each of these accuracies (e.g. 0.93,0.935,0.94), from the "
                             "per-epoch records, under the recipe's timing rule")
    args = parser.parse_args(argv)
    try:
        paths.check_output_file(args.json, "--json")
        paths.check_output_file(args.plot, "--plot")
    except paths.PathError as error:
        parser.error(str(error))
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print(f"error: --plot draws with matplotlib; install it with {install_hint('plot')}", file=sys.stderr)
        return 1
    try:
        payloads = []
        for name in args.files:
            try:
                with open(name) as handle:
                    payload = json.load(handle)
            except (OSError, ValueError) as error:
                raise MergeError(f"cannot read {name}: {error}") from None
            if not (isinstance(payload, dict) and isinstance(payload.get("config"), dict)
                    and isinstance(payload.get("runs"), list)):
                raise MergeError(f"{name} is not a result JSON (no config and runs); give files written by "
                                 "--json of the trainer")
            payloads.append((name, payload))
        merged = merge(payloads)
    except MergeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    target = merged["config"]["recipe"]["timing"]["target"]
    for record in merged["runs"]:
        print(run_line(record, target))
    print(summary_line(merged["summary"], target))
    if args.targets:
        print(targets_line(merged["runs"], args.targets, merged["config"]["recipe"]["timing"].get("rule", "myrtle")))
    if args.json:
        write_json(args.json, merged)
        print(f"wrote {args.json}")
    if args.plot:
        histogram(merged, target, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
