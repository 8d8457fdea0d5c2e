"""Run records and their statistics: the epoch rows, a run's completion or divergence under the
recipe's timing rule, seconds to target, the summary over runs with its intervals, and merging
the result JSONs of one config.

Plain Python, no JAX (loop.py and the PyTorch reference use it). How records print is
console.py; writing them (and the environment they record) is files.py;
`python -m jax_resnet_speed.report` (__main__.py) merges result files.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence

from jax_resnet_speed import settings


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


def mark_interrupted(runs: Sequence[dict]) -> None:
    """Runs still running (or not yet started) when Ctrl-C came are marked interrupted."""
    for record in runs:
        if record.get("status", "running") == "running":
            record["status"] = "interrupted"


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
