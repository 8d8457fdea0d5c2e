"""How fast one train step runs, and how close that is to the device's limit.

    python -m jax_resnet_speed.bench --preset myrtle-final [--framework torch] [--json bench.json]

For each loop mode (a Python loop over the compiled step, or the whole epoch as one program) it
times chunks of --steps steps on synthetic images, synchronising the device at the end of each
chunk, and reports the median and spread of the step time over --repeats chunks, images per
second, FLOPs per step (XLA's cost analysis, and the model FLOPs of the convolutions and matrix
products, which torch.utils.flop_counter also counts), achieved TFLOP/s and utilisation against
the device's datasheet peak and against a matrix product measured in the same run, bytes
accessed per step with the implied bandwidth, and compile seconds with the persistent
cache cold and warm. CPU numbers are labelled as such: they say nothing about a GPU.

It also counts the model FLOPs of the recipe's whole run on CIFAR-10 (its train steps, and its
final evaluation's forward passes, as the airbench scripts count them) and prints them beside
the PFLOPs the recipe's script publishes, where it publishes a figure; at a --width-mult other
than 1 the run is counted for that width and not compared.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np

from jax_resnet_speed import cli, compilation, flags, interrupt, presets
from jax_resnet_speed.report import files

MATMUL_SIZE = {"cpu": 1024, "gpu": 8192}  # large enough to reach the device's matmul rate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jax_resnet_speed.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    flags.add_preset(parser, list_presets=False)
    parser.add_argument("--framework", choices=("jax", "torch"), default="jax",
                        help="jax: this trainer's step; torch: the PyTorch reference's (torch_reference.py)")
    parser.add_argument("--compile", action="store_true", help="with --framework torch: torch.compile the network")
    flags.add_width_mult(parser)
    flags.add_batch_size(parser)
    flags.add_precision(parser)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed chunk (one 'epoch' of the bench)")
    parser.add_argument("--repeats", type=int, default=5, help="timed chunks per loop mode, after one warm-up chunk")
    parser.add_argument("--loops", metavar="MODES",
                        help="loop modes to time, comma-separated (jax only): step, epoch (default: the trainer's "
                             "default for the backend)")
    parser.add_argument("--cold-compile", action="store_true",
                        help="compile into an empty temporary cache, so the first compile is cold for sure")
    flags.add_json(parser, help="write the measurements here")
    flags.add_compile_arguments(parser, loop=False)
    return parser


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str] | None:
    """Exit 2 on flags that make no sense; returns the loop modes (None: the backend's default)."""
    flags.validate_positive(args, parser)
    flags.validate_outputs(args, parser)
    loops = None
    if args.loops is not None:
        loops = [mode.strip() for mode in args.loops.split(",") if mode.strip()]
        if not loops or any(mode not in compilation.LOOPS for mode in loops):
            parser.error(f"--loops takes {' and/or '.join(compilation.LOOPS)}, got {args.loops!r}")
    flags.validate_batch_size(parser, presets.get_preset(args.preset), args.batch_size)
    if args.compile and args.framework != "torch":
        parser.error("--compile is torch.compile: use it with --framework torch")
    if args.framework == "torch":
        cli.refuse_data_filtering(parser, args.preset, "--framework jax")
    return loops


def synthetic_dataset(train_count: int, test_count: int = 100):
    """Random CIFAR-shaped images: a step's cost does not depend on the pixels."""
    from jax_resnet_speed import data

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (train_count + test_count, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, train_count + test_count).astype(np.int32)
    return data.Dataset(train_images=images[:train_count], train_labels=labels[:train_count],
                        test_images=images[train_count:], test_labels=labels[train_count:],
                        class_names=data.CIFAR10_CLASSES, mean=images.mean((0, 1, 2)) / 255,
                        std=images.std((0, 1, 2)) / 255, source_kind="synthetic", checksum="synthetic")


def spread(seconds: Sequence[float], steps: int) -> dict:
    """Per-step statistics of chunks of `steps` steps."""
    per_step = sorted(s / steps for s in seconds)
    quartiles = statistics.quantiles(per_step, n=4) if len(per_step) > 1 else [per_step[0]] * 3
    return {"median_step_seconds": statistics.median(per_step), "min_step_seconds": per_step[0],
            "max_step_seconds": per_step[-1], "iqr_step_seconds": quartiles[2] - quartiles[0],
            "chunk_seconds": list(seconds)}


def rates(timing: dict, batch_size: int, xla_flops: float | None, model_flops: float | None,
          bytes_accessed: float | None, peak_tflops: float | None, matmul_tflops: float | None) -> dict:
    """Throughput and utilisation of the median step."""
    step = timing["median_step_seconds"]

    def ratio(numerator, denominator):
        return numerator / denominator if numerator is not None and denominator else None

    model_tflops = ratio(model_flops, step * 1e12)
    return {"images_per_second": batch_size / step, "model_tflops": model_tflops,
            "xla_tflops": ratio(xla_flops, step * 1e12),
            "mfu_peak": ratio(model_tflops, peak_tflops), "mfu_matmul": ratio(model_tflops, matmul_tflops),
            "bandwidth_gb_per_s": ratio(bytes_accessed, step * 1e9)}


def time_chunks(run_chunk: Callable[[], None], repeats: int) -> list[float]:
    """Seconds of each of `repeats` chunks, after one untimed chunk; run_chunk waits for the device."""
    run_chunk()
    seconds = []
    for _ in range(repeats):
        interrupt.check()  # between chunks, off the clock
        start = time.perf_counter()
        run_chunk()
        seconds.append(time.perf_counter() - start)
    return seconds


def bench_jax(args: argparse.Namespace, loops: Sequence[str] | None, result: dict) -> None:
    """Compile and time the trainer's step in each loop mode; FLOPs and bytes from the single step.

    Fills `result` (see bench) as it goes: after a Ctrl-C (KeyboardInterrupt) it holds the loop modes
    timed so far. Until the first is, Ctrl-C exits at once (interrupt.py)."""
    import jax
    import jax.numpy as jnp

    from jax_resnet_speed import flops, model, train

    backend = jax.default_backend()
    config = cli.resolve_config(args, backend)
    result["config"] = config.to_dict()
    loops = loops or [config.loop]
    dataset = synthetic_dataset(args.steps * config.recipe.batch_size)  # one bench "epoch" is --steps steps
    dtype = train.PRECISIONS[config.precision]
    data = train.put_on_device(dataset, config.recipe, dtype)
    step_compiled = None
    with contextlib.ExitStack() as timed:
        for loop in loops:
            programs = train.build_programs(dataclasses.replace(config, loop=loop), data)
            compiles = []
            for _ in range(2 if jax.config.jax_enable_compilation_cache else 1):
                jax.clear_caches()  # the second compile must come from the persistent cache, not from memory
                with compilation.CacheCounter() as cache:
                    compiled, seconds = train.compile_programs(programs, data, seed=0,
                                                               on_stage=lambda stage: interrupt.check())
                compiles.append({"seconds": seconds, "cache": cache.state})
            state = compiled.init(jax.random.key(0), data.train_padded, compiled.hyper)

            def run_chunk():
                nonlocal state
                state = jax.block_until_ready(train.train_epoch(compiled, data, state, epoch=1))

            result["loops"][loop] = spread(time_chunks(run_chunk, args.repeats), args.steps)
            result["compile"][loop] = compiles
            if len(result["loops"]) == 1:
                timed.enter_context(interrupt.saving())  # a row to keep: Ctrl-C now stops at a check and saves
            print(f"timed the {loop} loop: {result['loops'][loop]['median_step_seconds'] * 1e3:.2f} ms per step",
                  flush=True)
            if loop == "step":
                step_compiled = compiled.train_step
        # Counts per step come from the single step's program, whichever loops were timed.
        programs = train.build_programs(config, data)
        state = jax.eval_shape(programs.init, jax.random.key(0), data.train_padded, programs.hyper)
        batches = jax.ShapeDtypeStruct((args.steps, config.recipe.batch_size), jnp.int32)
        step_args = (state, data.train_padded, data.train_labels, batches)
        interrupt.check()  # a Ctrl-C in what follows (seconds) is reported after it (bench)
        step_compiled = step_compiled or programs.train_step.lower(*step_args).compile()
        result["xla_flops_per_step"], result["bytes_per_step"] = flops.xla_cost(step_compiled)
        result["model_flops_per_step"] = flops.model_flops(programs.train_step, *step_args)
        net = model.for_recipe(config.recipe, config.width_mult, dtype)
        image = jax.ShapeDtypeStruct((1, *data.test_images.shape[2:]), data.test_images.dtype)
        forward = flops.model_flops(lambda variables, x: net.apply(variables, x, train=False),
                                    train.eval_variables(state), image)
        result["run"] = flops.run_flops(config.recipe, config.width_mult, result["model_flops_per_step"], forward)
        size = MATMUL_SIZE.get(backend, 1024)
        result["matmul"] = {"size": size, "dtype": config.precision,
                            "tflops": flops.measured_matmul_tflops(dtype, size)}


def bench_torch(args: argparse.Namespace) -> dict:
    """The PyTorch reference's step (augmentation included, as in JAX), timed in chunks; FLOPs from
    torch.utils.flop_counter over one step."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from jax_resnet_speed import flops, torch_reference

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # autotune in the warm-up, as XLA does at compile
    config = dataclasses.replace(cli.resolve_config(args, "cpu" if device.type == "cpu" else "gpu"), loop="step")
    recipe = config.recipe
    dataset = synthetic_dataset(args.steps * recipe.batch_size)
    device_data = torch_reference.put_on_device(dataset, recipe, torch_reference.DTYPES[config.precision], device,
                                                torch.channels_last)
    trainer = torch_reference.Trainer(config, device, torch_reference.whitening_filters(dataset, recipe),
                                      args.steps, compile_model=args.compile)
    compile_seconds = torch_reference.warm_up(trainer, device_data, seed=0)
    counter, forward = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with counter:
        trainer.train_epoch(device_data, steps=1)
    trainer.model.eval()
    with forward, torch.no_grad():
        trainer.model(device_data.test_images[:1])
    trainer.reset(0)  # the network back in training mode, its first step's work undone

    def run_chunk():
        trainer.train_epoch(device_data)
        trainer.synchronize()

    timing = spread(time_chunks(run_chunk, args.repeats), args.steps)
    size = MATMUL_SIZE[device.type if device.type == "cpu" else "gpu"]
    a, b = (torch.randn(size, size, device=device).to(torch_reference.DTYPES[config.precision]) for _ in range(2))

    def matmul():
        a @ b
        trainer.synchronize()

    matmul_seconds = statistics.median(time_chunks(matmul, 5))
    return {"loops": {"step": timing}, "compile": {"step": [{"seconds": compile_seconds, "cache": "no"}]},
            "xla_flops_per_step": None, "bytes_per_step": None, "model_flops_per_step": counter.get_total_flops(),
            "run": flops.run_flops(recipe, config.width_mult, counter.get_total_flops(), forward.get_total_flops()),
            "matmul": {"size": size, "dtype": config.precision, "tflops": 2 * size ** 3 / matmul_seconds / 1e12},
            "config": config.to_dict()}


def environment(framework: str, compiled: bool) -> dict:
    if framework == "torch":
        import torch

        from jax_resnet_speed import torch_reference

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch_reference.environment(device, compiled)
    return files.environment()


def format_table(payload: dict) -> str:
    """The human-readable result."""
    env, result = payload["environment"], payload["result"]
    config = result["config"]
    peak = payload["peak"]
    lines = [f"{config['recipe']['name']}, {payload['framework']}, {config['precision']}, width x{config['width_mult']}, "
             f"batch {config['recipe']['data']['batch_size']}, {payload['steps']} steps x {payload['repeats']} chunks",
             f"device: {env['device_kind']} ({env['backend']})" +
             ("; CPU numbers: they say nothing about a GPU" if env["backend"] == "cpu" else "")]
    for loop, compiles in result["compile"].items():
        text = ", then ".join(f"{c['seconds']:.1f} s ({c['cache']} cache)" for c in compiles)
        lines.append(f"compile and warm-up, {loop} loop: {text}")
    peak_text = (f"{payload['peak_tflops']:.0f} TFLOP/s {config['precision']} ({peak['source']})"
                 if payload["peak_tflops"] else "none known for this device and precision")
    lines.append(f"peak: {peak_text}")
    if result["matmul"]:
        m = result["matmul"]
        lines.append(f"measured {m['size']}x{m['size']} {m['dtype']} matmul: {m['tflops']:.3f} TFLOP/s")

    def giga(value):
        return "n/a" if value is None else f"{value / 1e9:.2f}"

    lines.append(f"per step: {giga(result['model_flops_per_step'])} GFLOP model (convolutions and matmuls), "
                 f"{giga(result['xla_flops_per_step'])} GFLOP XLA cost analysis, "
                 f"{giga(result['bytes_per_step'])} GB accessed")
    if result.get("run"):
        lines.append(run_line(result["run"]))
    header = ("loop", "step ms", "IQR ms", "min ms", "max ms", "images/s", "TFLOP/s", "MFU peak", "MFU mm", "GB/s")
    lines.append("  ".join(f"{h:>9}" for h in header))

    def cell(value, fmt):
        return f"{'n/a' if value is None else format(value, fmt):>9}"

    for loop, row in payload["rows"].items():
        lines.append("  ".join([f"{loop:>9}", cell(row["median_step_seconds"] * 1e3, ".2f"),
                                cell(row["iqr_step_seconds"] * 1e3, ".2f"), cell(row["min_step_seconds"] * 1e3, ".2f"),
                                cell(row["max_step_seconds"] * 1e3, ".2f"), cell(row["images_per_second"], ".0f"),
                                cell(row["model_tflops"], ".3f"), cell(row["mfu_peak"], ".1%"),
                                cell(row["mfu_matmul"], ".1%"), cell(row["bandwidth_gb_per_s"], ".1f")]))
    return "\n".join(lines)


def run_line(run: dict) -> str:
    """The whole run's model FLOPs (flops.run_flops), and the script's published figure beside them."""
    width = "" if run["width_mult"] == 1 else f" at width x{run['width_mult']:g}"
    text = (f"per run{width}: {run['pflops']:.4g} PFLOP model ({run['run_steps']:,} steps of "
            f"{run['train_images'] // run['run_steps']:,} images, then {run['evaluation_forward_passes']:,} "
            f"forward passes of evaluation)")
    published, ratio = run["published_pflops"], run["ratio_to_published"]
    if published is None:
        return f"{text}; its script publishes no figure"
    if ratio is None:
        return f"{text}; its script publishes {published:g} PFLOP for the full width: not compared"
    return f"{text}; its script publishes {published:g} PFLOP: ours x{ratio:.3f} ({ratio - 1:+.1%})"


def bench(args: argparse.Namespace, loops: Sequence[str] | None) -> dict:
    """Measure, and return the JSON payload; after a Ctrl-C, with the loop modes timed so far and
    "interrupted": true. Raises KeyboardInterrupt when none was."""
    from jax_resnet_speed import flops

    result: dict = {"loops": {}, "compile": {}, "xla_flops_per_step": None, "bytes_per_step": None,
                    "model_flops_per_step": None, "run": None, "matmul": None}
    interrupted = False
    try:
        if args.framework == "torch":
            result.update(bench_torch(args))
        else:
            bench_jax(args, loops, result)
    except KeyboardInterrupt:
        if not result["loops"]:
            raise
        interrupted = True
    env = environment(args.framework, args.compile)
    peak = flops.device_peak(env["device_kind"]) if env["backend"] != "cpu" else None
    precision = result["config"]["precision"]
    peak_tflops = peak.tflops.get(precision) if peak else None
    batch = result["config"]["recipe"]["data"]["batch_size"]
    matmul = result["matmul"]["tflops"] if result["matmul"] else None
    rows = {loop: {**timing, **rates(timing, batch, result["xla_flops_per_step"], result["model_flops_per_step"],
                                     result["bytes_per_step"], peak_tflops, matmul)}
            for loop, timing in result["loops"].items()}
    framework = f"torch{' compiled' if args.compile else ''}" if args.framework == "torch" else "jax"
    return {"framework": framework, "environment": env, "steps": args.steps, "repeats": args.repeats,
            "peak": None if peak is None else {"name": peak.name, "tflops": peak.tflops,
                                               "memory_tb_per_s": peak.memory_tb_per_s, "source": peak.source},
            "peak_tflops": peak_tflops, "compilation": cli.compilation_section(args), "result": result, "rows": rows,
            **({"interrupted": True} if interrupted or interrupt.requested() else {})}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    loops = validate(args, parser)
    args.epochs = args.target = None  # cli.resolve_config reads them; a bench has no run length or target
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as empty_cache:
        if args.cold_compile and not args.no_compile_cache:
            args.compile_cache = empty_cache
        cli.configure_compilation(args)
        try:
            payload = bench(args, loops)
        except KeyboardInterrupt:  # raised in-process (a real Ctrl-C exits at once until a row is timed)
            return interrupt.leave("interrupted before any loop mode was timed: nothing was written")
        finally:
            if args.cold_compile:
                compilation.enable_cache(None)  # the temporary cache folder is about to go
    print(format_table(payload))
    if args.json:
        files.write_json(args.json, payload)
        print(f"wrote {args.json}")
    if payload.get("interrupted"):
        where = f" in {args.json}" if args.json else ""
        return interrupt.leave(f"interrupted: kept what was timed ({', '.join(payload['rows'])} loop){where}")
    return 0


if __name__ == "__main__":
    interrupt.main(main)
