"""The GPU battery's JSON files as the markdown tables of docs/results.md.

    python -m jax_resnet_speed.results OUT_DIR_OR_JSON... [--targets 0.93,0.935,0.94] [--out tables.md]

Reads every *.json given or found under the folders given: bench results (`bench --json`), trainer
results (`train --json`) and compare summaries (compare.json). Prints one table per kind, each
row naming its file, so that a device session's minutes go into measuring, not editing. With
--targets the training and compare tables also give the seconds to each of those accuracies, from the
per-epoch records under each recipe's timing rule (report.seconds_to_targets).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Iterable, Sequence

from jax_resnet_speed import compare, flags, report
from jax_resnet_speed.report import console, files


def _number(value: float | None, fmt: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, fmt)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


BENCH_HEADER = ("file", "device", "framework", "preset", "precision", "width", "batch", "loop", "XLA options",
                "step ms (IQR)", "images/s", "model TFLOP/s", "MFU of peak", "MFU of matmul", "GB/s",
                "compile s (cache)")


def bench_rows(name: str, payload: dict) -> list[list[str]]:
    """One row per loop mode of a `bench --json` result."""
    result, env = payload["result"], payload["environment"]
    config = result["config"]
    options = payload["compilation"]["xla_preset"] if payload.get("compilation") else "-"
    rows = []
    for loop, row in payload["rows"].items():
        compiles = ", ".join(f"{c['seconds']:.1f} ({c['cache']})" for c in result["compile"].get(loop, []))
        rows.append([name, env["device_kind"], payload["framework"], config["recipe"]["name"], config["precision"],
                     f"x{config['width_mult']:g}", str(config["recipe"]["data"]["batch_size"]), loop, options,
                     f"{row['median_step_seconds'] * 1e3:.2f} ({row['iqr_step_seconds'] * 1e3:.2f})",
                     _number(row["images_per_second"], ".0f"), _number(row["model_tflops"], ".1f"),
                     _number(row["mfu_peak"], ".1%"), _number(row["mfu_matmul"], ".1%"),
                     _number(row["bandwidth_gb_per_s"], ".0f"), compiles])
    return rows


TRAIN_HEADER = ("file", "device", "preset", "precision", "loop", "n", "accuracy mean +- std (95% CI)",
                "reached target", "median s to target", "training s (mean)", "compile s (cache)")


def train_row(name: str, payload: dict, targets: Sequence[float] = ()) -> list[str]:
    """One row for a `train --json` result; n is the completed runs (of those started, when fewer);
    then a cell per extra target: median seconds (runs reaching it/finished)."""
    config, summary, env = payload["config"], payload["summary"], payload["environment"]
    target = config["recipe"]["timing"]["target"]
    accuracy = "-"
    if summary["completed_runs"]:
        accuracy = f"{summary['mean_accuracy']:.4f} +- {summary['std_accuracy']:.4f}"
        if summary.get("ci95_accuracy"):
            accuracy += f" {console.interval_text(summary['ci95_accuracy'], 4)}"
    reached = f"{summary['runs_reaching_target']}/{summary.get('finished_runs', summary['runs'])} at {target:.2%}"
    cache = (payload.get("compilation") or {}).get("cache") or "-"
    n = str(summary["completed_runs"])
    if summary["completed_runs"] != summary["runs"]:
        n += f" of {summary['runs']}"
    rule = config["recipe"]["timing"].get("rule", "myrtle")
    to_targets = report.seconds_to_targets(payload["runs"], targets, rule)
    return [name, env["device_kind"], config["recipe"]["name"], config["precision"], config.get("loop", "step"),
            n, accuracy, reached, _number(summary["median_seconds_to_target"], ".2f"),
            _number(summary["mean_train_seconds"], ".2f"), f"{_number(payload['compile_seconds'], '.1f')} ({cache})",
            *(console.target_cell(row) for row in to_targets.values())]


def compare_target_cells(payload: dict, framework: str, targets: Sequence[float]) -> list[str]:
    """A compare row's cells for the extra targets, from that framework's runs under its recipe's rule."""
    entry = payload["frameworks"].get(framework)
    if entry is None:
        return ["-"] * len(targets)
    rule = entry["config"]["recipe"]["timing"].get("rule", "myrtle")
    return [console.target_cell(row) for row in report.seconds_to_targets(entry["runs"], targets, rule).values()]


def kind_of(payload: dict) -> str | None:
    """'bench', 'train' or 'compare', by the keys each writer puts in its JSON."""
    if {"rows", "result", "framework"} <= payload.keys():
        return "bench"
    if {"table", "frameworks", "ratio_basis"} <= payload.keys():
        return "compare"
    if {"config", "runs", "summary"} <= payload.keys():
        return "train"
    return None


def json_files(paths: Iterable[str]) -> list[pathlib.Path]:
    """The files given, and every *.json under the folders given, except compare's per-run files."""
    found: list[pathlib.Path] = []
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*.json") if p.parent.name != "runs")
        else:
            found.append(path)
    return found


def render(paths: Iterable[str], targets: Sequence[float] = ()) -> str:
    """The markdown tables of every readable result under `paths`, the training table with a column
    per extra target; raises ValueError if there is none."""
    bench, trained, compared = [], [], []
    for path in json_files(paths):
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read {path}: {error}") from error
        kind = kind_of(payload) if isinstance(payload, dict) else None
        if kind == "bench":
            bench += bench_rows(path.name, payload)
        elif kind == "train":
            trained.append(train_row(path.name, payload, targets))
        elif kind == "compare":
            compared.append((path, payload))
    if not (bench or trained or compared):
        raise ValueError("no bench, train or compare JSON found; pass the battery's output folder or its files")
    lines: list[str] = []
    target_headers = [f"s to {target:.2%} (reached)" for target in targets]
    if bench:
        lines += ["### Train step (bench)", "", *_table(BENCH_HEADER, bench), ""]
    if trained:
        lines += ["### Training runs", "", *_table((*TRAIN_HEADER, *target_headers), trained), ""]
    for path, payload in compared:
        lines += [f"### JAX against PyTorch ({path.parent.name}/{path.name}, preset {payload['config']['preset']}, "
                  f"{payload['config']['runs']} runs each)", "",
                  *_table((*compare.COLUMNS, *target_headers),
                          [compare.table_cells(row) + compare_target_cells(payload, row["framework"], targets)
                           for row in payload["table"]]), "",
                  f"ratio: {payload['ratio_basis']}.", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jax_resnet_speed.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="JSON files, or folders searched for *.json")
    parser.add_argument("--out", metavar="FILE", help="also write the tables here")
    parser.add_argument("--targets", type=flags.parse_targets, default=[], metavar="LIST",
                        help="also the median seconds to each of these accuracies (e.g. 0.93,0.935,0.94)")
    args = parser.parse_args(argv)
    try:
        text = render(args.paths, args.targets)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(text, end="")
    if args.out:
        files.write_atomically(args.out, lambda handle: handle.write(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
