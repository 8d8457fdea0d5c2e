"""Run a group of the series' presets and set them beside Myrtle's published numbers.

    python -m jax_resnet_speed.series --group post8 --runs 5 --out results/post8

One data load for the whole series; each preset is put on the device and compiled once, then
timed --runs times exactly as `python -m jax_resnet_speed.train` does (cli.prepare_runs and
cli.run_all). Writes DIR/series.json after every finished run, so a second call with the same
--out and settings continues where the first stopped; DIR/series.md and DIR/series.png at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import shlex
import statistics
import sys
import textwrap
from collections.abc import Sequence

from jax_resnet_speed import cli, flags, install_hint, interrupt, presets, report
from jax_resnet_speed.report import files

FORMAT = 1  # series.json's layout version
JSON_NAME, MD_NAME, PNG_NAME = "series.json", "series.md", "series.png"
FINISHED = ("completed", "diverged")  # a run in one of these states is not run again
# Flags that must match the series.json being continued (--runs and the preset selection may change).
SETTING_FLAGS = ("seed", "epochs", "batch_size", "precision", "target", "train_subset", "test_subset", "width_mult")
FULL_TRAIN, FULL_TEST = 50_000, 10_000  # CIFAR-10's sizes: fewer images make a smoke run


# ------------------------------------------------------------------------------ selections

def _post(post: str) -> tuple[presets.Recipe, ...]:
    """The presets of presets.BY_POST's entry for `post` ("post 4")."""
    for key, recipes in presets.BY_POST.items():
        if key.partition(":")[0].strip() == post:
            return recipes
    raise KeyError(f"no {post!r} in presets.BY_POST")


def chain_from(first: str) -> list[str]:
    """`first`, then each preset whose predecessor is the one before it (presets.PREDECESSORS)."""
    successors = {earlier: later for later, earlier in presets.PREDECESSORS.items()}
    names = [first]
    while names[-1] in successors:
        names.append(successors[names[-1]])
    return names


def selections() -> dict[str, list[str]]:
    """The --group choices, derived from presets.BY_POST and presets.PREDECESSORS."""
    posts_1_to_3 = chain_from(_post("post 1")[0].name)  # posts 1 to 3 are one chain of changes
    post4 = chain_from(_post("post 4")[0].name)  # the architecture search, ending at ResNet-9
    post8 = chain_from(_post("post 8")[0].name)  # the ten steps (not myrtle-final, a copy of the last)
    return {"post1-4": [*posts_1_to_3, post4[-1]], "post4-arch": post4, "post8": post8,
            "all": list(presets.PRESETS)}


# The named selections of presets --group chooses from ("group" alone means runs trained together: group.py).
SELECTIONS = selections()
SELECTION_HELP = {
    "post1-4": "post 1's baseline to post 3, then post 4's ResNet-9",
    "post4-arch": "post 4's architecture search (20-epoch trials), then ResNet-9",
    "post8": "post 8's ten steps",
    "all": "every preset once",
}


# ------------------------------------------------------------------------------ command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jax_resnet_speed.series",
        description="Train a group of the series' presets, --runs times each, and tabulate them beside "
                    "Myrtle's published V100 times. Continues an earlier call with the same --out.",
        formatter_class=flags.HelpFormatter)
    choose = parser.add_mutually_exclusive_group(required=True)
    choose.add_argument("--group", choices=list(SELECTIONS),
                        help="; ".join(f"{name}: {SELECTION_HELP.get(name, '')} ({len(names)} presets)"
                                       for name, names in SELECTIONS.items()))
    choose.add_argument("--presets", metavar="A,B,...",
                        help="comma-separated preset names, in the order of the table "
                             "(python -m jax_resnet_speed.train --list-presets lists them)")
    parser.add_argument("--out", metavar="DIR", required=True,
                        help="folder for series.json, series.md and series.png; a series.json there "
                             "written with the same settings is continued")
    flags.add_run_arguments(parser, preset=False)
    flags.add_compile_arguments(parser)
    return parser


def selection(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """The presets to run, in table order (exits 2 on an unknown name)."""
    if args.group:
        return list(SELECTIONS[args.group])
    names: list[str] = []
    for name in (n.strip() for n in args.presets.split(",")):
        if not name:
            continue
        if name not in presets.PRESETS:
            parser.error(f"--presets: unknown preset {name!r}; choose from {', '.join(presets.PRESETS)}")
        if name not in names:
            names.append(name)
    if not names:
        parser.error("--presets: name at least one preset")
    return names


class SeriesError(Exception):
    """An --out whose series.json cannot be continued with these settings."""


# ------------------------------------------------------------------------------ resuming

def _flag(key: str) -> str:
    return f"--{key.replace('_', '-')}"


def _shown(value) -> str:
    return "not given" if value is None else str(value)


def read_series(path: str) -> dict | None:
    """The series.json at `path`, or None when there is none. Raises SeriesError."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as handle:
            payload = json.load(handle)
    except (OSError, ValueError) as error:
        raise SeriesError(f"{path} cannot be read as a series file ({error}); use another --out") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or not isinstance(payload.get("presets"), dict):
        raise SeriesError(f"{path} is not a series file of format {FORMAT}; use another --out")
    return payload


def setting_differences(old: dict, new: dict) -> list[str]:
    """'--flag X there, Y here' for each setting that differs (flags, data content, device)."""
    diffs = []
    settings, new_settings = old.get("settings", {}), new["settings"]
    for key in SETTING_FLAGS:
        if key in new_settings and settings.get(key) != new_settings[key]:
            diffs.append(f"{_flag(key)} {_shown(settings.get(key))} there, {_shown(new_settings[key])} here")
    if "data_checksum" in new_settings and settings.get("data_checksum") != new_settings["data_checksum"]:
        diffs.append(f"--data content differs (checksum {_shown(settings.get('data_checksum'))} there, "
                     f"{new_settings['data_checksum']} here)")
    device = lambda env: f"{env.get('device_kind')} ({env.get('backend')})"  # noqa: E731
    old_env, new_env = old.get("environment", {}), new["environment"]
    if (old_env.get("backend"), old_env.get("device_kind")) != (new_env["backend"], new_env["device_kind"]):
        diffs.append(f"device {device(old_env)} there, {device(new_env)} here")
    return diffs


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def trained_fields(recipe: dict) -> dict:
    """A recipe's JSON form flattened to dotted names, less its names and published numbers."""
    flat = _flatten({k: v for k, v in recipe.items() if k not in ("name", "description", "change")})
    return {k: v for k, v in flat.items() if not k.startswith("timing.published")}


def recipe_differences(stored: dict, current: dict) -> list[str]:
    """Fields (in both) where a stored recipe (flat ones upgraded) and the current one differ.

    A trick switched on or off (its fields on one side, its name to None on the other) is named once.
    """
    old = trained_fields(presets.upgrade_recipe_dict(stored))
    new = trained_fields(json.loads(json.dumps(current)))
    switched = {trick for key in old.keys() ^ new.keys()
                if (trick := key.rpartition(".")[0]) in old.keys() | new.keys()}
    return [key for key in new if key in old and old[key] != new[key]] + sorted(switched)


# ------------------------------------------------------------------------------ the table

def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def myrtle_reference(recipe: presets.Recipe) -> dict:
    timing = recipe.timing
    return {"seconds": timing.published_seconds, "accuracy": timing.published_accuracy,
            "device": timing.published_device, "epochs": recipe.epochs, "target": timing.target}


def table_rows(series: dict, names: Sequence[str]) -> list[dict]:
    """One row per preset: Myrtle's numbers and ours, with both ratios to the previous row."""
    rows: list[dict] = []
    for name in names:
        recipe = presets.get_preset(name)
        entry = series["presets"].get(name) or {}
        finished = [r for r in entry.get("runs", []) if r.get("status") in FINISHED]
        completed = [r for r in finished if r["status"] == "completed"]
        summary = report.summarize(finished)
        config_recipe = (entry.get("config") or {}).get("recipe") or {}
        myrtle = myrtle_reference(recipe)
        row = {
            "preset": name, "change": recipe.change,
            "epochs": config_recipe.get("optimiser", {}).get("epochs", recipe.epochs),
            "recipe_epochs": recipe.epochs,
            "target": config_recipe.get("timing", {}).get("target", recipe.timing.target),
            "myrtle_seconds": myrtle["seconds"], "myrtle_accuracy": myrtle["accuracy"],
            "myrtle_device": myrtle["device"],
            "median_train_seconds": _median([r["epochs"][-1]["train_seconds"] for r in completed]),
            "median_seconds_to_target": summary["median_seconds_to_target"],
            "mean_accuracy": summary["mean_accuracy"], "std_accuracy": summary["std_accuracy"],
            "runs_reaching_target": summary["runs_reaching_target"],
            "finished_runs": len(finished), "completed_runs": len(completed),
            "diverged_runs": len(finished) - len(completed),
            "ratio_to_previous": None, "myrtle_ratio_to_previous": None,
        }
        if rows:
            previous = rows[-1]
            if row["median_train_seconds"] is not None and previous["median_train_seconds"]:
                row["ratio_to_previous"] = row["median_train_seconds"] / previous["median_train_seconds"]
            if row["myrtle_seconds"] is not None and previous["myrtle_seconds"]:
                row["myrtle_ratio_to_previous"] = row["myrtle_seconds"] / previous["myrtle_seconds"]
        rows.append(row)
    return rows


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def table_cells(rows: Sequence[dict], plus_minus: str = "+-") -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the series table; the Myrtle-accuracy column only when a row has one."""
    devices = {row["myrtle_device"] for row in rows}
    targets = {row["target"] for row in rows}
    with_accuracy = any(row["myrtle_accuracy"] is not None for row in rows)
    headers = ["step", "change", "epochs", f"Myrtle s ({devices.pop()})" if len(devices) == 1 else "Myrtle s",
               "ours s", "ours to target s", "accuracy %"]
    headers += ["Myrtle acc %"] if with_accuracy else []
    headers += [f"reached {_percent(targets.pop())}" if len(targets) == 1 else "reached target",
                "ours / prev", "Myrtle / prev"]
    body = []
    for row in rows:
        epochs = str(row["epochs"]) + (f" ({row['recipe_epochs']})" if row["epochs"] != row["recipe_epochs"] else "")
        if row["mean_accuracy"] is None:
            accuracy = "-"
        elif row["completed_runs"] < 2:  # one run has no spread to show
            accuracy = f"{row['mean_accuracy'] * 100:.2f}"
        else:
            accuracy = f"{row['mean_accuracy'] * 100:.2f} {plus_minus} {row['std_accuracy'] * 100:.2f}"
        cells = [row["preset"], row["change"], epochs, _num(row["myrtle_seconds"], "{:g}"),
                 _num(row["median_train_seconds"], "{:.2f}"), _num(row["median_seconds_to_target"], "{:.2f}"),
                 accuracy]
        if with_accuracy:
            cells.append("" if row["myrtle_accuracy"] is None else f"{row['myrtle_accuracy'] * 100:.1f}")
        reached = f"{row['runs_reaching_target']}/{row['finished_runs']}"
        if row["diverged_runs"]:
            reached += f" ({row['diverged_runs']} diverged)"
        cells += [reached, _num(row["ratio_to_previous"], "{:.2f}"), _num(row["myrtle_ratio_to_previous"], "{:.2f}")]
        body.append(cells)
    return headers, body


LEFT_COLUMNS = 2  # step and change are text; the rest are numbers


def text_table(rows: Sequence[dict]) -> str:
    headers, body = table_cells(rows)
    widths = [max(len(line[i]) for line in (headers, *body)) for i in range(len(headers))]

    def line(cells):
        return "  ".join(c.ljust(w) if i < LEFT_COLUMNS else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), *(line(cells) for cells in body)])


def markdown_table(rows: Sequence[dict]) -> str:
    headers, body = table_cells(rows, plus_minus="±")
    rule = ["---" if i < LEFT_COLUMNS else "---:" for i in range(len(headers))]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in (headers, rule, *body))


LEGEND = ("Myrtle s: Myrtle's published time on a V100, to 94% (post 4's search rows: fixed 20-epoch trials, "
          "with Myrtle acc their accuracy). ours s: median training seconds of the completed runs; "
          "ours to target s: median seconds to the target of the runs that reached it; accuracy: mean +- std "
          "of the final accuracy (TTA where the recipe uses it; the mean alone for one run); reached: runs that reached the target of the "
          "runs finished; / prev: this row's time over the previous row's. epochs (N): --epochs overrode the "
          "recipe's N.")


# ------------------------------------------------------------------------------ the files

def smoke_reasons(settings: dict, environment: dict, names: Sequence[str]) -> list[str]:
    """Why this series is not a result: CPU, narrower nets, fewer images or other epochs."""
    reasons = []
    if environment["backend"] == "cpu":
        reasons.append("cpu backend")
    if settings["width_mult"] != 1:
        reasons.append(f"width x{settings['width_mult']:g}")
    if settings["train_images"] < FULL_TRAIN:
        reasons.append(f"{settings['train_images']} training images")
    if settings["test_images"] < FULL_TEST:
        reasons.append(f"{settings['test_images']} test images")
    epochs = settings["epochs"]
    if epochs is not None and any(presets.get_preset(name).epochs != epochs for name in names):
        reasons.append(f"{epochs} epoch{'s' if epochs != 1 else ''} instead of the recipes'")
    return reasons


def smoke_line(series: dict) -> str | None:
    reasons = series["smoke_reasons"]
    if not reasons:
        return None
    kind = "CPU smoke run" if series["environment"]["backend"] == "cpu" else "Smoke run"
    return f"{kind}: these are not results ({', '.join(reasons)})"


def markdown(series: dict, rows: Sequence[dict]) -> str:
    env, s = series["environment"], series["settings"]
    each = "each preset's"
    epochs = each if s["epochs"] is None else f"{s['epochs']} (--epochs)"
    batch_size = each if s["batch_size"] is None else str(s["batch_size"])
    target = each if s["target"] is None else _percent(s["target"])
    lines = [f"# Series: {series['title']}", ""]
    if smoke_line(series):
        lines += [f"**{smoke_line(series)}**", ""]
    lines += [
        f"- Device: {env['device_kind']} ({env['backend']}), {env['device_count']} device(s)",
        f"- Versions: jax {env['jax']}, jaxlib {env['jaxlib']}, flax {env['flax']}, optax {env['optax']}",
        f"- Settings: precision {s['precision']}, width x{s['width_mult']:g}, epochs {epochs}, "
        f"batch size {batch_size}, target {target}, seeds from {s['seed']}, "
        f"{series['runs']} run(s) per preset",
        f"- Data: {s['data'] or 'default source'} ({s['data_kind']}, checksum {s['data_checksum']}), "
        f"{s['train_images']} train / {s['test_images']} test images",
        f"- Command: `{series['command']}`",
        f"- Updated: {series['updated']}",
        "",
        markdown_table(rows),
        "",
        LEGEND.replace("+-", "±"),
        "",
    ]
    return "\n".join(lines)


def write_png(path: str, series: dict, rows: Sequence[dict]) -> str | None:
    """Two panels: time per step (ours, Myrtle's) and accuracy per step. Returns a note if skipped."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return f"matplotlib is not installed: skipped {PNG_NAME} ({install_hint('plot')})"
    nan = float("nan")
    value = lambda v, scale=1.0: nan if v is None else v * scale  # noqa: E731
    x = list(range(len(rows)))
    names = [row["preset"] for row in rows]
    env = series["environment"]
    fig_width = max(8.0, 0.7 * len(rows) + 3.0)
    fig = Figure(figsize=(fig_width, 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    time_ax, acc_ax = fig.subplots(2, 1, sharex=True)

    width = 0.38
    ours = [value(row["median_train_seconds"]) for row in rows]
    myrtle = [value(row["myrtle_seconds"]) for row in rows]
    to_target = [value(row["median_seconds_to_target"]) for row in rows]
    for offset, heights, label, colour in ((-width / 2, ours, f"ours: median training s ({env['device_kind']})",
                                            "tab:blue"),
                                           (width / 2, myrtle, "Myrtle, V100 (published)", "tab:orange")):
        bars = time_ax.bar([i + offset for i in x], heights, width, label=label, color=colour)
        time_ax.bar_label(bars, labels=["" if math.isnan(h) else f"{h:.3g}" for h in heights], fontsize="x-small",
                          padding=1)
    trials = [i for i, row in enumerate(rows) if row["myrtle_accuracy"] is not None]
    if trials:  # post 4's search: Myrtle timed fixed 20-epoch trials, not runs to the target
        time_ax.bar([i + width / 2 for i in trials], [myrtle[i] for i in trials], width, color="tab:orange", hatch="//",
                    edgecolor="white", linewidth=0, label="Myrtle: fixed 20-epoch trial")
    if any(not math.isnan(t) for t in to_target):
        time_ax.plot([i - width / 2 for i in x], to_target, "kD", markersize=5, label="ours: median s to target")
    finite = [v for v in ours + myrtle if not math.isnan(v) and v > 0]
    if finite and max(finite) / min(finite) > 30:
        time_ax.set_yscale("log")
        time_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    time_ax.margins(y=0.12)
    time_ax.set_ylabel("seconds")
    time_ax.set_title("Time per step")
    time_ax.legend(fontsize="small")
    time_ax.grid(axis="y", alpha=0.3)

    mean = [value(row["mean_accuracy"], 100) for row in rows]
    std = [value(row["std_accuracy"], 100) for row in rows]
    acc_ax.errorbar(x, mean, yerr=std, fmt="o-", capsize=4, color="tab:blue", label="ours: mean +- std")
    published = [value(row["myrtle_accuracy"], 100) for row in rows]
    if any(not math.isnan(p) for p in published):
        acc_ax.plot(x, published, "x", color="tab:orange", markersize=8, mew=2,
                    label="Myrtle (20-epoch trials)")
    targets = {row["target"] for row in rows}
    for target in targets:
        acc_ax.axhline(target * 100, color="tab:red", linestyle="--", linewidth=1, label=f"target {_percent(target)}")
    acc_ax.set_ylabel("test accuracy %")
    acc_ax.set_title("Accuracy per step")
    acc_ax.legend(fontsize="small")
    acc_ax.grid(axis="y", alpha=0.3)
    acc_ax.set_xticks(x)
    acc_ax.set_xticklabels(names, rotation=35, ha="right", fontsize="small")

    title = f"Series: {series['title']} ({series['runs']} run(s) per step, {env['device_kind']})"
    if smoke_line(series):
        title += "\n" + textwrap.fill(smoke_line(series), width=int(fig_width * 10))
    fig.suptitle(title)
    files.write_atomically(path, lambda handle: fig.savefig(handle, format="png", dpi=110), mode="wb")
    return None


def write_outputs(series: dict, names: Sequence[str], json_path: str, out: str) -> tuple[list[dict], list[str]]:
    """series.json (with the table), series.md and series.png. Returns the table's rows and the paths written."""
    rows = table_rows(series, names)
    series["table"] = rows
    files.write_json(json_path, series)
    md_path, png_path = os.path.join(out, MD_NAME), os.path.join(out, PNG_NAME)
    files.write_atomically(md_path, lambda handle: handle.write(markdown(series, rows)))
    written = [json_path, md_path]
    note = write_png(png_path, series, rows)
    if note:
        print(note)
    else:
        written.append(png_path)
    return rows, written


# ------------------------------------------------------------------------------ the series

def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def run_series(args: argparse.Namespace, names: list[str], argv: Sequence[str]) -> int:
    import jax

    from jax_resnet_speed import data

    backend = jax.default_backend()
    out = args.out
    json_path = os.path.join(out, JSON_NAME)
    configs = {name: cli.resolve_config(args, backend, name) for name in names}
    settings = {key: getattr(args, key) for key in SETTING_FLAGS}
    settings["precision"] = configs[names[0]].precision
    series = {"format": FORMAT, "title": f"--group {args.group}" if args.group else "--presets " + ",".join(names),
              "command": " ".join(["python -m jax_resnet_speed.series", shlex.join(argv)]), "updated": _now(),
              "settings": settings, "environment": files.environment(), "runs": args.runs,
              "selection": names, "smoke_reasons": [], "presets": {}, "table": []}

    def refuse(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return flags.EXIT_USAGE

    try:
        existing = read_series(json_path)
    except SeriesError as error:
        return refuse(str(error))
    def other_settings() -> int:
        return refuse(f"{json_path} was written with other settings: {'; '.join(diffs)} "
                      "(only --runs and the presets may change; use another --out)")

    if existing and (diffs := setting_differences(existing, series)):
        return other_settings()

    try:
        dataset = cli.load_data(args)
        sections = {name: cli.config_section(args, configs[name], dataset) for name in names}
    except data.DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return flags.EXIT_DATA_ERROR
    except cli.UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return flags.EXIT_USAGE
    settings.update(data=args.data, cache_dir=args.cache_dir, data_kind=dataset.source_kind,
                    data_checksum=dataset.checksum, train_images=len(dataset.train_images),
                    test_images=len(dataset.test_images))
    if existing:
        if diffs := setting_differences(existing, series):
            return other_settings()
        for name in names:
            stored = existing["presets"].get(name)
            if stored and stored.get("runs") and (fields := recipe_differences(
                    stored["config"]["recipe"], sections[name]["recipe"])):
                return refuse(f"the recipe of {name} changed since {json_path} was written "
                              f"({', '.join(fields[:5])}{', ...' if len(fields) > 5 else ''}); use another --out")
        series["presets"] = existing["presets"]
    series["smoke_reasons"] = smoke_reasons(settings, series["environment"], names)

    env = series["environment"]
    print(f"series {series['title']}: {len(names)} presets x {args.runs} run(s), into {out}")
    print(f"{env['device_kind']} ({env['backend']}), jax {env['jax']}, {settings['precision']}, "
          f"width x{args.width_mult}, {settings['train_images']} train / {settings['test_images']} test images "
          f"({dataset.source_kind})")
    if smoke_line(series):
        print(smoke_line(series))
    if existing:
        print(f"continuing {json_path}: {finished_runs(existing)} finished runs kept")

    def save() -> None:
        series["updated"] = _now()
        series["table"] = table_rows(series, names)
        files.write_json(json_path, series)

    seeds = [args.seed + index for index in range(args.runs)]
    on_disk = finished_runs(series)
    interrupted = False
    try:
        for position, name in enumerate(names, 1):
            # Once this call has put a run on disk, Ctrl-C while the next preset compiles no longer exits at
            # once: it stops at the next stage of the compilation (cli.prepare_runs) and saves (interrupt.py).
            with interrupt.saving() if finished_runs(series) > on_disk else contextlib.nullcontext():
                interrupt.check()
                config = configs[name]
                print(f"\n== [{position}/{len(names)}] {name}: {config.recipe.change}")
                print(config.recipe.description)
                entry = series["presets"].get(name)
                kept = [r for r in entry["runs"] if r.get("status") in FINISHED] if entry else []
                done = {r.get("seed") for r in kept}
                missing = [seed for seed in seeds if seed not in done]
                if not missing:
                    print(f"{len(kept)} finished runs in {json_path}: skipped")
                    continue
                entry = {"config": sections[name], "environment": env,
                         "compile_seconds": (entry or {}).get("compile_seconds"), "runs": kept,
                         "summary": report.summarize(kept), "myrtle": myrtle_reference(presets.get_preset(name))}
                series["presets"][name] = entry
                cli.run_all(args, entry, config.recipe.timing.target,
                            lambda: cli.prepare_runs(config, dataset, args.seed, entry),
                            seeds=missing, on_checkpoint=save, leave_on_interrupt=False)
    except KeyboardInterrupt:  # run_all saved the runs of the preset it was in
        for entry in series["presets"].values():
            report.mark_interrupted(entry.get("runs", []))
        interrupted = True
    if interrupted and not any(r.get("epochs") for e in series["presets"].values() for r in e.get("runs", [])):
        return interrupt.leave("interrupted before any epoch finished: nothing was written")

    for name in names:  # refresh the reference numbers (presets.py may have corrected them)
        if name in series["presets"]:
            series["presets"][name]["myrtle"] = myrtle_reference(presets.get_preset(name))
    series["updated"] = _now()
    with interrupt.saving():  # a Ctrl-C now lets the files be written whole, and is reported below
        rows, written = write_outputs(series, names, json_path, out)
    print(f"\nseries {series['title']} ({args.runs} run(s) per preset)")
    print(text_table(rows))
    if smoke_line(series):
        print(smoke_line(series))
    print(f"wrote {', '.join(written)}")
    if interrupted or interrupt.requested():
        return interrupt.leave(f"interrupted: kept {finished_runs(series)} finished run(s) in {out}; the same "
                               "command goes on from them")
    return flags.EXIT_DIVERGED if any(row["diverged_runs"] for row in rows) else 0


def finished_runs(series: dict) -> int:
    """How many runs of a series are finished (completed or diverged): those a rerun does not repeat."""
    return sum(r.get("status") in FINISHED for e in series["presets"].values() for r in e.get("runs", []))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    names = selection(args, parser)
    for name in names:
        cli.validate(args, parser, preset=name)
    cli.configure_compilation(args)
    return run_series(args, names, argv)


if __name__ == "__main__":
    interrupt.main(main)
