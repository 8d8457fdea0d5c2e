"""JAX against PyTorch eager and PyTorch compiled: the same recipe, data and device, runs interleaved.

Run `python -m jax_resnet_speed.compare --help`. Each run is its own process (the JAX trainer
or jax_resnet_speed.torch_reference with --runs 1), so the frameworks never share GPU memory
(JAX preallocates most of it) and each run's compile seconds come from its own JSON file.
Runs are interleaved (jax 1, torch 1, torch-compile 1, jax 2, ...) so that a drift in the
machine's speed falls on every framework alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
from collections.abc import Sequence

from jax_resnet_speed import cli, flags, install_hint, interrupt, report
from jax_resnet_speed.report import console, files

COMMANDS = {
    "jax": ["-m", "jax_resnet_speed.train"],
    "torch": ["-m", "jax_resnet_speed.torch_reference"],
    "torch-compile": ["-m", "jax_resnet_speed.torch_reference", "--compile"],
}
# Trainer flags handed on to every run unchanged.
FORWARDED = ("data", "cache_dir", "preset", "epochs", "batch_size", "precision", "target", "train_subset",
             "test_subset", "width_mult")
# accuracy: mean +- std (95% t interval of the mean); reached: runs (95% Wilson interval of the fraction).
COLUMNS = ("framework", "accuracy", "reached", "median s to target", "median epoch s", "compile s", "ratio")
# How long a Ctrl-C'd run may take to write its JSON. Short: the run it was in is lost anyway, and a
# caller's kill after its Ctrl-C (the GPU battery's `timeout -s INT -k 30`) must find compare's files written.
INTERRUPT_GRACE_SECONDS = 15


def parse_frameworks(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in COMMANDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {','.join(COMMANDS)}, got {text!r}")
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    """The flags of every runner (flags.add_run_arguments) plus --out, --frameworks and --device."""
    parser = argparse.ArgumentParser(
        prog="python -m jax_resnet_speed.compare",
        description="Time the same recipe in JAX, PyTorch eager and PyTorch compiled, runs interleaved, "
                    "and write compare.json, compare.md and compare.png.",
        formatter_class=flags.HelpFormatter)
    flags.add_run_arguments(parser)
    parser.set_defaults(runs=3)  # per framework
    parser.add_argument("--out", default="compare-out", metavar="DIR",
                        help="where compare.json, compare.md, compare.png, and each run's JSON and log go")
    parser.add_argument("--frameworks", type=parse_frameworks, default=",".join(COMMANDS),
                        help=f"comma-separated subset of {','.join(COMMANDS)}")
    parser.add_argument("--device", choices=("cpu", "gpu"),
                        help="run every framework on this device (default: each framework's own default; "
                             "a mismatch is reported)")
    return parser


def run_command(framework: str, args: argparse.Namespace, seed: int, json_path: pathlib.Path) -> list[str]:
    """The command line of one run of one framework."""
    command = [sys.executable, *COMMANDS[framework], "--runs", "1", "--seed", str(seed), "--json", str(json_path)]
    for name in FORWARDED:
        value = getattr(args, name)
        if value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]
    if framework != "jax" and args.device:
        command += ["--device", "cuda" if args.device == "gpu" else "cpu"]
    return command


def run_environment(framework: str, device: str | None) -> dict:
    """The environment of a run: JAX is pointed at the device through JAX_PLATFORMS."""
    env = dict(os.environ)
    if framework == "jax" and device:
        env["JAX_PLATFORMS"] = "cuda" if device == "gpu" else "cpu"
    return env


def run_one(command: list[str], env: dict, log_path: pathlib.Path) -> int:
    """Run to completion with output to the log. On Ctrl-C, pass it on to the child, give it time to
    write the JSON of what it finished, then re-raise.

    The child runs in its own session, so that a Ctrl-C at the terminal reaches it once, through here:
    a second one would stop it without saving (interrupt.py)."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            while True:
                try:
                    return process.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    interrupt.check()
        except KeyboardInterrupt:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=INTERRUPT_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
            raise


def last_error(log_path: pathlib.Path) -> str:
    """The last error line of a run's log (or its last line), without the "error: " prefix."""
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line]
    return (errors or lines or ["(no output)"])[-1].removeprefix("error: ")


def collect(results: dict, framework: str, json_path: pathlib.Path) -> dict | None:
    """Add one run's JSON to the framework's results; its record, or None when no JSON was written."""
    if not json_path.exists():
        return None
    payload = json.loads(json_path.read_text())
    entry = results.setdefault(framework, {"environment": payload["environment"], "config": payload["config"],
                                           "runs": []})
    for record in payload["runs"]:
        entry["runs"].append({**record, "compile_seconds": payload["compile_seconds"]})
    return payload["runs"][0] if payload["runs"] else None


def target_of(config: dict) -> float:
    """The target accuracy of a run's JSON `config`, whose recipe is nested by concern."""
    return config["recipe"]["timing"]["target"]


def median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(results: dict) -> tuple[list[dict], str]:
    """One row per framework, and what `ratio` compares.

    The ratio uses the median seconds to target when every completed run of every framework
    reached it, and otherwise the median total training seconds for all, so that no row is
    compared on a different basis from another.
    """
    completed = {name: [r for r in entry["runs"] if r["status"] == "completed"] for name, entry in results.items()}
    rules = {r.get("timing_rule", "myrtle") for runs in completed.values() for r in runs}
    all_reached = all(runs and all(r["seconds_to_target"] is not None for r in runs) for runs in completed.values())
    if rules == {"airbench"}:
        # airbench's claim is a mean accuracy: every run is timed whole, whether or not it reached the target.
        all_reached = False
        basis = f"training seconds of whole runs (airbench rule: {report.TIMING_RULES['airbench']})"
    else:
        basis = "seconds to target" if all_reached else "training seconds (not every run reached the target)"

    def basis_seconds(runs: list[dict]) -> float | None:
        return median_or_none([r["seconds_to_target"] if all_reached else r["epochs"][-1]["train_seconds"]
                               for r in runs])

    reference = "jax" if "jax" in results else next(iter(results), None)
    reference_seconds = basis_seconds(completed[reference]) if reference else None
    rows = []
    for name, entry in results.items():
        runs = completed[name]
        summary = report.summarize(entry["runs"], target_of(entry["config"]))
        seconds = basis_seconds(runs)
        rows.append({
            "framework": name,
            "runs": summary["runs"],
            "completed_runs": summary["completed_runs"],
            "mean_accuracy": summary["mean_accuracy"],
            "std_accuracy": summary["std_accuracy"],
            "ci95_accuracy": summary["ci95_accuracy"],
            "runs_reaching_target": summary["runs_reaching_target"],
            "wilson95_reaching_target": summary["wilson95_reaching_target"],
            "median_seconds_to_target": summary["median_seconds_to_target"],
            "iqr_seconds_to_target": summary["iqr_seconds_to_target"],
            "median_train_seconds": median_or_none([r["epochs"][-1]["train_seconds"] for r in runs]),
            "median_epoch_seconds": median_or_none([m["epoch_seconds"] for r in runs for m in r["epochs"]]),
            "median_compile_seconds": median_or_none([r["compile_seconds"] for r in entry["runs"]
                                                      if r["compile_seconds"] is not None]),
            "ratio": seconds / reference_seconds if seconds and reference_seconds else None,
            "timing_rule": summary["timing_rule"],
            "mean_accuracy_meets_target": summary["mean_accuracy_meets_target"],
        })
    return rows, f"median {basis}, relative to {reference}"


def table_cells(row: dict) -> list[str]:
    def number(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    accuracy = ("-" if row["mean_accuracy"] is None
                else f"{row['mean_accuracy']:.4f} +- {row['std_accuracy']:.4f}")
    if row.get("ci95_accuracy"):
        accuracy += f" {console.interval_text(row['ci95_accuracy'], 4)}"
    reached = f"{row['runs_reaching_target']}/{row['runs']}"
    if row.get("wilson95_reaching_target"):
        reached += f" {console.interval_text(row['wilson95_reaching_target'], 2)}"
    return [row["framework"], accuracy, reached,
            number(row["median_seconds_to_target"], ".2f"), number(row["median_epoch_seconds"], ".3f"),
            number(row["median_compile_seconds"], ".1f"), number(row["ratio"], ".2f")]


def text_table(rows: list[dict]) -> str:
    cells = [list(COLUMNS)] + [table_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in cells)


def markdown(rows: list[dict], basis: str, args: argparse.Namespace, results: dict) -> str:
    lines = ["# JAX vs PyTorch", "",
             f"Preset {args.preset}, {args.runs} runs per framework (interleaved), seeds from {args.seed}.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|"]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in rows]
    lines += ["", "accuracy: mean +- std over the completed runs (95% Student-t interval of the mean); reached: "
              "runs reaching the target (95% Wilson interval of the fraction).", "", f"ratio: {basis}.", "", "Seconds are training seconds (evaluation and compilation excluded); "
              "compile s is each run's compile and warm-up.", "", "## Environment", ""]
    for name, entry in results.items():
        config, env = entry["config"], entry["environment"]
        recipe = config["recipe"]
        versions = ", ".join(f"{k} {env[k]}" for k in ("jax", "jaxlib", "torch", "cuda") if env.get(k))
        lines.append(f"- {name}: {env['device_kind']} ({env['backend']}), {versions}, {config['precision']}, "
                     f"width x{config['width_mult']}, batch {recipe['data']['batch_size']}, "
                     f"{recipe['optimiser']['epochs']} epochs, "
                     f"{config['train_images']} train / {config['test_images']} test images")
    return "\n".join(lines) + "\n"


def plot(results: dict, title: str, target: float | None, path: pathlib.Path) -> bool:
    """Test accuracy against training seconds, all runs thin and each framework's median run thick."""
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed ({install_hint('plot')}): skipping compare.png")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for index, (name, entry) in enumerate(results.items()):
        colour = f"C{index}"
        runs = [r for r in entry["runs"] if r["epochs"]]
        for record in runs:
            axes.plot(*curve(record), color=colour, alpha=0.3, linewidth=0.8)
        if runs:
            median_run = sorted(runs, key=lambda r: r["epochs"][-1]["train_seconds"])[len(runs) // 2]
            axes.plot(*curve(median_run), color=colour, linewidth=2, marker="o", markersize=3, label=name)
    if target:
        axes.axhline(target, color="grey", linestyle="--", linewidth=0.8, label=f"target {target:.0%}")
    axes.set_title(title)
    axes.set_xlabel("training seconds (evaluation and compilation excluded)")
    axes.set_ylabel("test accuracy (as reported: TTA when the recipe uses it)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def curve(record: dict) -> tuple[list[float], list[float]]:
    return [m["train_seconds"] for m in record["epochs"]], [m["accuracy"] for m in record["epochs"]]


def device_mismatch(results: dict) -> str | None:
    """A warning when the frameworks did not all run on the same kind of device."""
    kinds = {name: "gpu" if entry["environment"]["backend"] in ("gpu", "cuda") else entry["environment"]["backend"]
             for name, entry in results.items()}
    if len(set(kinds.values())) > 1:
        return "warning: the frameworks ran on different devices: " + ", ".join(f"{k} on {v}" for k, v in kinds.items())
    return None


def write_outputs(out: pathlib.Path, args: argparse.Namespace, results: dict) -> list[dict]:
    rows, basis = summarize(results)
    target = next((target_of(entry["config"]) for entry in results.values()), args.target)
    devices = sorted({entry["environment"]["device_kind"] for entry in results.values()})
    title = f"{args.preset}, {' / '.join(devices)}, {args.runs} runs each"
    payload = {"config": {**{name: getattr(args, name) for name in FORWARDED}, "runs": args.runs, "seed": args.seed,
                          "frameworks": args.frameworks, "device": args.device},
               "ratio_basis": basis, "table": rows, "frameworks": results}
    files.write_json(out / "compare.json", payload)
    (out / "compare.md").write_text(markdown(rows, basis, args, results))
    written = ["compare.json", "compare.md"]
    if results and plot(results, title, target, out / "compare.png"):
        written.append("compare.png")
    print()
    print(text_table(rows))
    print(f"ratio: {basis}")
    warning = device_mismatch(results)
    if warning:
        print(warning)
    print(f"wrote {', '.join(str(out / name) for name in written)}")
    return rows


def compare(args: argparse.Namespace) -> int:
    """Every run of every framework, interleaved; then the table and the three files.

    Ctrl-C reaches the run in flight through run_one, so compare is saving throughout (interrupt.py):
    exiting at once would leave that run going on its own."""
    with interrupt.saving():
        return compare_runs(args)


def compare_runs(args: argparse.Namespace) -> int:
    out = pathlib.Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    results: dict = {}
    exit_code = 0
    for index in range(args.runs):
        seed = args.seed + index
        for framework in args.frameworks:
            stem = f"{framework}-{index + 1}"
            json_path, log_path = out / "runs" / f"{stem}.json", out / "runs" / f"{stem}.log"
            json_path.unlink(missing_ok=True)
            print(f"{framework} run {index + 1}/{args.runs}: ", end="", flush=True)
            try:
                code = run_one(run_command(framework, args, seed, json_path), run_environment(framework, args.device),
                               log_path)
            except KeyboardInterrupt:
                code = flags.EXIT_INTERRUPTED
            record = collect(results, framework, json_path)
            if code == flags.EXIT_INTERRUPTED:
                print("interrupted")
                if not results:
                    return interrupt.leave("interrupted before any run finished: nothing was written")
                write_outputs(out, args, results)
                return interrupt.leave(kept_line(out, results))
            if record is None or code not in (0, flags.EXIT_DIVERGED):
                print(f"failed (exit {code})")
                print(f"error: {framework} run {index + 1} failed: {last_error(log_path)} (log: {log_path})",
                      file=sys.stderr)
                if results:
                    write_outputs(out, args, results)
                return flags.EXIT_DATA_ERROR
            if code == flags.EXIT_DIVERGED:
                exit_code = flags.EXIT_DIVERGED
            print(console.run_line(record, target_of(results[framework]["config"])), flush=True)
    write_outputs(out, args, results)
    if interrupt.requested():  # Ctrl-C while the files were written: they were written whole
        return interrupt.leave(kept_line(out, results))
    return exit_code


def kept_line(out: pathlib.Path, results: dict) -> str:
    """The line that ends an interrupted comparison."""
    return f"interrupted: kept the table of {sum(len(e['runs']) for e in results.values())} run(s) in {out}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_presets:
        cli.list_presets()
        return 0
    cli.validate(args, parser)
    if any(name.startswith("torch") for name in args.frameworks):
        cli.refuse_data_filtering(parser, args.preset, "--frameworks jax")
        if importlib.util.find_spec("torch") is None:
            print(f"error: PyTorch is not installed; {install_hint('torch')} "
                  "(or --frameworks jax)", file=sys.stderr)
            return flags.EXIT_DATA_ERROR
    return compare(args)


if __name__ == "__main__":
    interrupt.main(main)
