"""The trainer's command line (`python -m jax_resnet_speed.train`) and the orchestration of runs that the
series, compare and the PyTorch reference share: load the data, prepare (upload and compile), run every
seed or group, resume from a checkpoint. The flags themselves are in flags.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from jax_resnet_speed import compilation, flags, install_hint, interrupt, presets, settings
# EXIT_INTERRUPTED is re-exported: callers and tests read every exit code from here or from flags.
from jax_resnet_speed.flags import EXIT_DATA_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_USAGE  # noqa: F401

if TYPE_CHECKING:
    from jax_resnet_speed.tensorboard_log import EpochLog

def configure_compilation(args: argparse.Namespace) -> None:
    """Apply --xla-preset, --xla-dump and the compilation cache; call before the first JAX computation."""
    compilation.apply_xla_preset(args.xla_preset)
    if getattr(args, "xla_dump", None):
        # Read when XLA initialises, so it must be set before the first JAX computation.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_dump_to={args.xla_dump} --xla_dump_hlo_as_text").strip()
        args.no_compile_cache = True  # a program loaded from the cache is not compiled, so it would not be dumped
    compilation.enable_cache(None if args.no_compile_cache else args.compile_cache)


def compilation_section(args: argparse.Namespace) -> dict:
    """The `compilation` section of the JSON; prepare_runs adds whether the compile was cold or warm."""
    return {"cache": None, "cache_dir": None if args.no_compile_cache else args.compile_cache,
            "xla_preset": args.xla_preset, "xla_flags": os.environ.get("XLA_FLAGS", "")}


def initialize_distributed(args: argparse.Namespace) -> None:
    """Join a multi-host run when asked; before anything initialises the JAX backend.

    Every process then sees the global device list; on a CPU, collectives between processes go
    through gloo (JAX's default there).
    """
    explicit = {"coordinator_address": args.coordinator, "num_processes": args.num_processes,
                "process_id": args.process_id}
    if args.distributed or any(v is not None for v in explicit.values()):
        import jax

        try:
            jax.distributed.initialize(**{k: v for k, v in explicit.items() if v is not None})
        except ValueError as error:  # e.g. no cluster environment to read the coordinator from
            raise UsageError(f"--distributed could not join a cluster ({' '.join(str(error).split())}); run it "
                             "under SLURM or Open MPI, or give --coordinator, --num-processes and --process-id") \
                from None


def resolve_devices(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """--devices as a count of the devices JAX sees (it initialises the backend); exit 2 when too many."""
    import jax

    available = len(jax.devices())
    count = available if args.devices == "all" or jax.process_count() > 1 and args.devices == 1 else args.devices
    if jax.process_count() > 1 and getattr(args, "checkpoint_dir", None):
        parser.error("--checkpoint-dir is not supported across processes yet; run it in one process")
    if jax.process_count() > 1 and count != available:
        parser.error(f"--devices {count}: a run over {jax.process_count()} processes uses every device of each "
                     f"({available}); use --devices all")
    if count > available:
        parser.error(f"--devices {count}: only {available} {jax.default_backend().upper()} device(s) are visible; "
                     "on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N")
    batch_size = args.batch_size or presets.get_preset(args.preset).batch_size
    if batch_size % count:
        parser.error(f"--batch-size {batch_size} does not split evenly over {count} devices; "
                     f"use a multiple of {count}")
    data = dataclasses.replace(presets.get_preset(args.preset).data, batch_size=batch_size)
    if data.trained_batch % count:
        parser.error(f"preset {args.preset} trains on {data.trained_batch} of each batch of {batch_size} (data "
                     f"filtering), which does not split evenly over {count} devices; change --batch-size")
    return count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jax_resnet_speed.train",
        description="Train a ResNet-9 on CIFAR-10 with a Myrtle AI recipe and time it to the target accuracy.",
        formatter_class=flags.HelpFormatter)
    flags.add_run_arguments(parser)
    flags.add_compile_arguments(parser)
    parser.add_argument("--parallel", type=int, default=1, metavar="K",
                        help="train K of the --runs together in one vmapped program (group.py); seeds as without")
    parser.add_argument("--devices", type=flags.devices_type, default=1, metavar="N",
                        help="data parallel: split each batch over N devices ('all': every device of every "
                             "process), the train state replicated (parallel.py)")
    parser.add_argument("--distributed", action="store_true",
                        help="one process of a multi-host run: jax.distributed.initialize from the cluster's "
                             "environment (SLURM, Open MPI, or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                             "JAX_PROCESS_ID); the flags below override it (docs/scaling.md)")
    parser.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 (implies --distributed)")
    parser.add_argument("--num-processes", type=int, metavar="N", help="processes in the run (implies --distributed)")
    parser.add_argument("--process-id", type=int, metavar="I", help="this process's index (implies --distributed)")
    parser.add_argument("--checkpoint-dir", metavar="DIR",
                        help="save the whole train state and the metrics so far after every epoch (off the clock) "
                             "into DIR with Orbax, keeping the latest two")
    parser.add_argument("--resume", action="store_true",
                        help="go on from the latest checkpoint in --checkpoint-dir: finished runs are kept, the "
                             "interrupted one continues after its last saved epoch; the config must match")
    flags.add_json(parser)
    flags.add_output_arguments(parser)
    parser.add_argument("--xla-dump", metavar="DIR",
                        help="dump the HLO of every program, before and after optimisation, into DIR "
                             "(read it with python -m jax_resnet_speed.xla_report DIR)")
    parser.add_argument("--profile", metavar="DIR",
                        help="write a jax.profiler trace of one epoch (after warm-up, not timed) into DIR")
    return parser


def resolve_config(args: argparse.Namespace, backend: str, preset: str | None = None) -> settings.RunConfig:
    """The preset (`preset`, default --preset) with the command-line overrides applied (already validated)."""
    recipe = presets.get_preset(preset or args.preset)
    if args.epochs is not None:
        recipe = recipe.with_epochs(args.epochs)
    overrides = {k: v for k, v in (("data.batch_size", args.batch_size), ("timing.target", args.target))
                 if v is not None}
    recipe = recipe.replace(**overrides)
    precision = args.precision or settings.default_precision(backend)
    loop = getattr(args, "loop", None) or compilation.DEFAULT_LOOPS.get(backend, "step")
    return settings.RunConfig(recipe=recipe, precision=precision, width_mult=args.width_mult, loop=loop,
                     devices=getattr(args, "devices", 1))


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser, preset: str | None = None) -> None:
    """Exit 2 with a usage message on flags that make no sense for `preset` (default --preset)."""
    flags.validate_positive(args, parser)
    flags.validate_outputs(args, parser)
    flags.validate_batch_size(parser, presets.get_preset(preset or args.preset), args.batch_size)
    if getattr(args, "resume", False) and not args.checkpoint_dir:
        parser.error("--resume continues from --checkpoint-dir DIR; add it")
    if getattr(args, "checkpoint_dir", None) and getattr(args, "parallel", 1) > 1:
        parser.error("--checkpoint-dir saves runs one at a time; use it without --parallel")
    if getattr(args, "devices", 1) != 1 and getattr(args, "parallel", 1) > 1:
        parser.error("--parallel groups runs on one device; use it without --devices, or --devices without it")
    if args.target is not None and not 0 < args.target <= 1:
        parser.error(f"--target is a fraction in (0, 1], got {args.target}")
    if getattr(args, "plot", None) == flags.PLOT_BESIDE_JSON and not getattr(args, "json", None):
        parser.error("--plot without a path draws beside --json; add --json PATH or give --plot PNG")
    for flag, module, extra in (("tensorboard", "tensorboard", "tensorboard"), ("plot", "matplotlib", "plot")):
        if getattr(args, flag, None) and importlib.util.find_spec(module) is None:
            parser.error(f"--{flag} needs {module}: {install_hint(extra)}")


def refuse_data_filtering(parser: argparse.ArgumentParser, preset: str, instead: str) -> None:
    """Exit 2 on a preset that filters its data by a proxy (presets.Filtering), which the PyTorch reference lacks."""
    if presets.get_preset(preset).data.filtering:
        parser.error(f"preset {preset} filters its data by a proxy network (data.filtering), which the PyTorch "
                     f"reference does not implement; run it with {instead}")


def load_data(args: argparse.Namespace):
    """The dataset, cut to the requested subsets."""
    from jax_resnet_speed import data

    with data.warnings_printed():
        dataset = data.load_cifar10(args.data, args.cache_dir)
    for flag, asked, available in (("--train-subset", args.train_subset, len(dataset.train_images)),
                                   ("--test-subset", args.test_subset, len(dataset.test_images))):
        if asked and asked > available:
            print(f"warning: {flag} {asked} is more than the {available:,} images there are: using all of them",
                  file=sys.stderr)
    if args.train_subset or args.test_subset:
        dataset = dataclasses.replace(
            dataset,
            train_images=dataset.train_images[:args.train_subset], train_labels=dataset.train_labels[:args.train_subset],
            test_images=dataset.test_images[:args.test_subset], test_labels=dataset.test_labels[:args.test_subset])
    return dataset


def load_run_data(args: argparse.Namespace, config) -> tuple:
    """The dataset and the `config` section of the JSON. Raises data.DataError."""
    dataset = load_data(args)
    return dataset, config_section(args, config, dataset)


def config_section(args: argparse.Namespace, config, dataset) -> dict:
    """The `config` section of the JSON for a run of `config` on an already loaded dataset.

    Raises TooFewImages when the dataset is smaller than one batch.
    """
    if len(dataset.train_images) < config.recipe.batch_size:
        raise TooFewImages(f"{len(dataset.train_images)} training images are fewer than one batch of "
                           f"{config.recipe.batch_size}; lower --batch-size or raise --train-subset")
    return {**config.to_dict(), "seed": args.seed, "runs": args.runs, "data": args.data,
            "data_kind": dataset.source_kind, "data_checksum": dataset.checksum,
            "train_images": len(dataset.train_images), "test_images": len(dataset.test_images)}


class UsageError(ValueError):
    """A flag that cannot be met; its message is one line, and the exit code 2."""


class TooFewImages(UsageError):
    """Fewer training images than one batch: a flag problem (--train-subset, --batch-size), exit 2."""


RunOne = Callable[[int, Callable[[dict], None], dict], dict]


def run_all(args: argparse.Namespace, payload: dict, target: float, prepare: Callable[[], RunOne],
            seeds: Sequence[int] | None = None, on_checkpoint: Callable[[], None] | None = None,
            leave_on_interrupt: bool = True) -> int:
    """Upload and compile (`prepare`, which returns the run function), then --runs timed runs.

    Prints the epoch table of each run and the summary, and writes the JSON at the end, or with
    what finished on Ctrl-C. Returns the exit code.

    seeds: the seeds to run (default --seed + i for each of the --runs); runs already in
    payload["runs"] are kept and summarised with the new ones. on_checkpoint: called with
    payload["summary"] up to date after every finished run, on Ctrl-C and at the end.
    leave_on_interrupt=False (a runner of several run_all, the series): on Ctrl-C, save what finished
    and let KeyboardInterrupt go on, for the caller to save the rest and say what it kept.
    """
    from jax_resnet_speed import report
    from jax_resnet_speed.report import console, files

    log = None
    if getattr(args, "tensorboard", None):
        from jax_resnet_speed import tensorboard_log
        log = tensorboard_log.EpochLog(args.tensorboard)

    def checkpoint() -> None:
        payload["summary"] = report.summarize(payload["runs"], target)
        if on_checkpoint is not None:
            on_checkpoint()

    def save() -> None:
        checkpoint()
        if getattr(args, "json", None):
            files.write_json(args.json, payload)
            print(f"wrote {args.json}")
        if plot := flags.plot_path(args):
            from jax_resnet_speed import curves
            curves.write(payload, target, plot)
            print(f"wrote {plot}")

    if seeds is None:
        seeds = [args.seed + index for index in range(args.runs)]
    exit_code = 0
    try:
        run_one = prepare()  # until it returns, Ctrl-C exits at once: nothing has finished (interrupt.py)
        with interrupt.saving():
            exit_code = run_seeds(args, payload, target, run_one, seeds, checkpoint if on_checkpoint else None, log)
    except KeyboardInterrupt:
        report.mark_interrupted(payload["runs"])
        finished = any(record.get("epochs") for record in payload["runs"])
        if finished:
            save()
        if not leave_on_interrupt:
            raise
        if not finished:
            kept = f" ({args.json} left as it was)" if getattr(args, "json", None) else ""
            return interrupt.leave(f"interrupted before any epoch finished: nothing was written{kept}")
        hint = (f"; the checkpoint of the last finished epoch is in {args.checkpoint_dir}: the same command with "
                "--resume goes on from it" if getattr(args, "checkpoint_dir", None) else "")
        return interrupt.leave(f"interrupted: kept what finished{hint}")
    finally:
        if log is not None:
            log.close()
    save()
    print(console.summary_line(payload["summary"], target))
    return exit_code


def run_seeds(args: argparse.Namespace, payload: dict, target: float, run_one: RunOne, seeds: Sequence[int],
              checkpoint: Callable[[], None] | None, log: EpochLog | None) -> int:
    """The timed runs of run_all, one after the other or in --parallel groups, each printing its table.

    checkpoint: called after every finished run. Returns the exit code (EXIT_DIVERGED when a run diverged).
    """
    from jax_resnet_speed import report
    from jax_resnet_speed.report import console

    if getattr(args, "parallel", 1) > 1:
        return run_groups(args, payload, target, run_one, seeds, checkpoint, log)
    exit_code = 0
    for seed in seeds:
        print(f"\nrun {seed - args.seed + 1}/{args.runs}, seed {seed}")
        print(console.table_header())
        record: dict = {}
        payload["runs"].append(record)

        def on_epoch(metrics: dict, run: int = seed - args.seed + 1, seed: int = seed) -> None:
            print(console.table_row(metrics), flush=True)
            if left := console.time_left_line(metrics, payload["config"]["recipe"]["optimiser"]["epochs"]):
                print(left, flush=True)
            if log is not None:
                log.write(run, seed, metrics)

        try:
            run_one(seed, on_epoch, record)
        except report.Diverged as error:
            print(f"error: {error}; stopping this run", file=sys.stderr)
            exit_code = EXIT_DIVERGED
        print(console.run_line(record, target))
        if checkpoint is not None:
            checkpoint()
    return exit_code


RunGroup = Callable[[Sequence[int], Sequence[dict], Callable[[int], None]], None]


def run_groups(args: argparse.Namespace, payload: dict, target: float, run_group: RunGroup, seeds: Sequence[int],
               checkpoint: Callable[[], None] | None, log: EpochLog | None = None) -> int:
    """The seeds in groups of --parallel, each trained together (group.run); tables printed (and written to
    the TensorBoard `log`) per run after its group. Returns the exit code: EXIT_DIVERGED when a member diverged."""
    from jax_resnet_speed import group
    from jax_resnet_speed.report import console

    size, exit_code = args.parallel, 0
    chunks = [list(seeds[i:i + size]) for i in range(0, len(seeds), size)]
    for index, chunk in enumerate(chunks, 1):
        records = [{} for _ in chunk]
        payload["runs"].extend(records)
        print(f"\ngroup {index}/{len(chunks)}: seeds {', '.join(map(str, chunk))} together")
        # A short last group is padded with copies of its last seed, to reuse the compiled program.
        padding = [{} for _ in range(size - len(chunk))]
        run_group(group.padded(chunk, size), records + padding,
                  lambda epoch: print(f"  epoch {epoch} done", flush=True))
        for record in records:
            record["group_size"] = size
            print(f"\nrun {record['seed'] - args.seed + 1}/{args.runs}, seed {record['seed']} "
                  f"(in a group of {size}: the seconds are the group's)")
            print(console.table_header())
            for metrics in record["epochs"]:
                print(console.table_row(metrics))
                if log is not None:
                    log.write(record["seed"] - args.seed + 1, record["seed"], metrics)
            if record["status"] == "diverged":
                print(f"error: run with seed {record['seed']} diverged; the rest of its group went on",
                      file=sys.stderr)
                exit_code = EXIT_DIVERGED
            print(console.run_line(record, target))
        if checkpoint is not None:
            checkpoint()
    return exit_code


def timing_line(recipe) -> str:
    """Which timing rule the recipe's runs are clocked under (report.TIMING_RULES)."""
    from jax_resnet_speed import report

    proxy = "; the proxy's run for data filtering timed too" if recipe.data.filtering else ""
    return f"timing: {recipe.timing.rule} rule ({report.TIMING_RULES[recipe.timing.rule]}{proxy})"


def train_from_args(args: argparse.Namespace) -> int:
    """Load, compile once, run --runs times, print the table and write the JSON."""
    import jax

    from jax_resnet_speed import data, parallel
    from jax_resnet_speed.report import files

    if jax.process_index() != 0:
        # One table and one JSON for the whole multi-host run: process 0's. Errors still reach stderr.
        sys.stdout = open(os.devnull, "w")
        args.json = args.plot = args.tensorboard = None
    config = resolve_config(args, jax.default_backend())
    recipe = config.recipe
    payload: dict = {"config": None, "environment": files.environment(), "compile_seconds": None,
                     "compilation": compilation_section(args), "runs": [], "summary": None}
    try:
        dataset, payload["config"] = load_run_data(args, config)
    except data.DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_DATA_ERROR
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    env = payload["environment"]
    print(f"{recipe.name}: {recipe.description}")
    print(f"{env['device_kind']} ({env['backend']}), jax {env['jax']}, {config.precision}, width x{config.width_mult}, "
          f"{len(dataset.train_images)} train / {len(dataset.test_images)} test images ({dataset.source_kind})"
          + (f", data parallel over {config.devices} devices" if config.devices > 1 else ""))
    print(timing_line(recipe))

    args.parallel = min(args.parallel, args.runs)
    seeds, resume = [args.seed + index for index in range(args.runs)], None
    if args.checkpoint_dir:
        try:
            epochs = len(settings.epoch_steps(recipe, len(dataset.train_images) // recipe.batch_size))
            resume = resume_point(args, payload, epochs)
        except ResumeRefused as error:
            print(f"error: {error}", file=sys.stderr)
            return error.exit_code
        finished = {record["seed"] for record in payload["runs"]}
        seeds = [seed for seed in seeds if seed not in finished]

    def prepare():
        if args.parallel > 1:
            return prepare_group(config, dataset, args.parallel, args.seed, payload)
        return prepare_runs(config, dataset, args.seed, payload, args.profile, parallel.make_mesh(config.devices),
                            args.checkpoint_dir, resume)

    try:
        code = run_all(args, payload, recipe.timing.target, prepare, seeds)
    except GroupTooLarge as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE  # a flag that cannot be met
    return code


class ResumeRefused(Exception):
    """--checkpoint-dir/--resume cannot go on: exit_code 2 for a config mismatch or a used folder, 1 otherwise."""

    def __init__(self, message: str, exit_code: int = EXIT_DATA_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


def resume_point(args: argparse.Namespace, payload: dict, epochs: int) -> dict | None:
    """With --resume: the finished runs of the latest checkpoint put into payload["runs"], and the
    record of the run it interrupted (None if it holds none). Without: checks that the folder
    holds no checkpoint to overwrite. `epochs`: a run's length, to tell a run saved after its last
    epoch (finished, though not yet marked so) from one cut short. Raises ResumeRefused."""
    import json

    from jax_resnet_speed import checkpoint, report

    checkpoints = checkpoint.Checkpoints(args.checkpoint_dir)
    try:
        if not args.resume:
            if checkpoints.latest() is not None:
                raise ResumeRefused(f"{args.checkpoint_dir} already holds checkpoints; add --resume to go on from "
                                    "them, or give another --checkpoint-dir", EXIT_USAGE)
            return None
        progress = checkpoints.progress()
    except checkpoint.CheckpointError as error:
        raise ResumeRefused(str(error)) from None
    finally:
        checkpoints.close()
    current = json.loads(json.dumps(payload["config"]))  # as the checkpoint stored it (tuples become lists)
    saved = settings.upgrade_config_dict(progress["config"])  # a checkpoint written with flat recipes too
    differences = [name for name in report.config_differences(saved, current) if name != "data"]
    differences += [name for name in ("seed",) if saved.get(name) != current.get(name)]
    if differences:
        shown = ", ".join(f"{name} ({lookup(saved, name)!r} there, {lookup(current, name)!r} here)"
                          for name in differences[:4])
        more = f" and {len(differences) - 4} more" if len(differences) > 4 else ""
        raise ResumeRefused(f"--resume: the checkpoint in {args.checkpoint_dir} was made with another config: "
                            f"{shown}{more}; resume with the flags it was made with, or give another "
                            "--checkpoint-dir", EXIT_USAGE)
    payload["runs"] = [record for record in progress["runs"] if record["status"] != "running"]
    partial = next((record for record in progress["runs"] if record["status"] == "running"), None)
    trained = partial is not None and len(partial["epochs"]) >= epochs  # it only awaits its final summary
    if not partial:
        going_on = ""
    elif trained:
        going_on = f", and the run with seed {partial['seed']}, which had trained all {epochs} epochs"
    else:
        going_on = f", run with seed {partial['seed']} goes on after epoch {len(partial['epochs'])}"
    print(f"resuming from {args.checkpoint_dir}: {len(payload['runs']) + trained} finished run(s) kept{going_on}")
    return partial


def lookup(config: dict, dotted: str):
    """The value at a dotted name of a config (None where it is missing)."""
    for part in dotted.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def prepare_runs(config, dataset, seed: int, payload: dict, profile: str | None = None, mesh=None,
                 checkpoint_dir: str | None = None, resume: dict | None = None) -> RunOne:
    """Put the dataset on the device, build and compile the programs of `config` once.

    Sets payload["compile_seconds"] and payload["compilation"]["cache"] (cold, warm or off) and
    returns the function that makes one timed run (train.run). `seed` is the warm-up's;
    `profile`: a folder for a trace of one epoch; `mesh`: the devices of a data-parallel run (parallel.py).
    `checkpoint_dir`: save each run's state and payload["runs"] there after every epoch (checkpoint.py);
    `resume`: the record of the run to go on from the latest checkpoint there.
    """
    import jax

    from jax_resnet_speed import progress, train

    device_data = train.put_on_device(dataset, config.recipe, train.PRECISIONS[config.precision], mesh)
    with progress.task("compiling") as shown, compilation.CacheCounter() as cache:
        programs, payload["compile_seconds"] = train.compile_programs(
            train.build_programs(config, device_data), device_data, seed,
            # A series with a run on disk is saving (interrupt.py): its Ctrl-C stops between the stages.
            on_stage=lambda stage: (interrupt.check(), shown.update(description=stage)))
    payload.setdefault("compilation", {})["cache"] = cache.state
    print(f"compiled ({config.loop} loop, {cache.state} cache) and warmed up in {payload['compile_seconds']:.1f} s "
          "(not timed)")
    if profile:
        train.profile_epoch(programs, device_data, seed, profile)
        print(f"wrote a profile of one epoch to {profile}")
    if checkpoint_dir is None:
        return lambda seed, on_epoch, record: train.run(programs, device_data, config, seed, on_epoch, record)
    from jax_resnet_speed import checkpoint
    from jax_resnet_speed.report import console

    checkpoints = checkpoint.Checkpoints(checkpoint_dir)
    pending = dict(resume or {})

    def save(state) -> None:
        # One index per saved epoch over all runs, so the latest is always the newest state.
        index = sum(len(record["epochs"]) for record in payload["runs"])
        checkpoints.save(index, state, {"config": payload["config"], "runs": payload["runs"]})

    def run_one(seed: int, on_epoch, record: dict) -> dict:
        resume_from = None
        if pending.get("seed") == seed:
            record.update(pending)
            pending.clear()
            like = programs.init(jax.random.key(seed), device_data.train_padded, programs.hyper)
            resume_from, _ = checkpoints.restore(like)
            for metrics in record["epochs"]:
                print(console.table_row(metrics) + "  (from the checkpoint)")
        return train.run(programs, device_data, config, seed, on_epoch, record, resume_from, save)

    return run_one


class GroupTooLarge(Exception):
    """--parallel asks for more runs at once than the device's memory holds."""


def prepare_group(config, dataset, size: int, seed: int, payload: dict) -> RunGroup:
    """Put the dataset on the device, check that `size` runs fit together, compile the vmapped programs.

    Raises GroupTooLarge, naming the largest group that fits, before compiling the group.
    """
    from jax_resnet_speed import group, progress, train

    device_data = train.put_on_device(dataset, config.recipe, train.PRECISIONS[config.precision])
    programs = train.build_programs(config, device_data)
    per_run, available, fits = group.room(programs, device_data)
    if size > fits:
        raise GroupTooLarge(f"{size} runs at once (--parallel) need about {size * per_run / 2**30:.1f} GiB on top "
                            f"of the dataset and {available / 2**30:.1f} GiB are free; the largest group that fits "
                            f"is --parallel {fits}")
    seeds = list(range(seed, seed + size))
    with (progress.task(f"compiling and warming up the vmapped programs of a group of {size} runs"),
          compilation.CacheCounter() as cache):
        compiled, payload["compile_seconds"] = group.compile_group(programs, device_data, seeds,
                                                                   [programs.hyper] * size)
    payload.setdefault("compilation", {})["cache"] = cache.state
    print(f"compiled a group of {size} ({cache.state} cache) and warmed it up in {payload['compile_seconds']:.1f} s "
          "(not timed; "
          f"about {per_run / 2**20:.0f} MiB per run, {fits} would fit)")

    def run_group(seeds, records, after_epoch):
        group.run(compiled, device_data, config, seeds, [programs.hyper] * len(seeds), lambda member, m: None,
                  records, after_epoch)

    return run_group


def list_presets() -> None:
    """The presets grouped by post, in the order of the series."""
    for post, recipes in presets.BY_POST.items():
        print(f"{post[0].upper()}{post[1:]}")
        for recipe in recipes:
            default = " (default)" if recipe.name == presets.DEFAULT_PRESET else ""
            print(f"  {recipe.name}{default}: {recipe.description}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_presets:
        list_presets()
        return 0
    validate(args, parser)
    configure_compilation(args)
    try:
        initialize_distributed(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    args.devices = resolve_devices(args, parser)
    return train_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
