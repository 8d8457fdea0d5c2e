"""Throughput of K runs trained together in one vmapped program (group.py) against one run alone.

For each K: images per second per run and in total, against the single run's, in one process.
Compilation and a warm-up step stay off the clock; each figure is the median of --repeats
timings of --steps steps. CPU timings are noisy: read the ratios.

    python scripts/bench_parallel.py --preset myrtle-final --width-mult 0.125 --batch-size 128 --groups 1,2,4
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jax_resnet_speed import flags, group, presets, settings, train
from jax_resnet_speed.report import files
from jax_resnet_speed.data import in_memory


def seconds_per_step(programs: train.Programs, data: train.DeviceData, members: int | None, steps: int,
                     repeats: int) -> float:
    """Median seconds of one step: of a single run (members None), or of a vmapped group."""
    if members is None:
        state = programs.init(jax.random.key(0), data.train_padded, programs.hyper)
    else:
        state = programs.init(group.keys(list(range(members))), data.train_padded,
                              group.stack([programs.hyper] * members))
    batches = programs.epoch_batches(state.rng, jnp.int32(1))
    state = jax.block_until_ready(programs.train_step(state, data.train_padded, data.train_labels, batches))
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            state = programs.train_step(state, data.train_padded, data.train_labels, batches)
        jax.block_until_ready(state)
        timings.append((time.perf_counter() - start) / steps)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    flags.add_preset(parser, list_presets=False)
    flags.add_width_mult(parser, default=0.125, help="scale every channel width")
    flags.add_batch_size(parser, default=128, help="batch size")
    flags.add_precision(parser)
    parser.add_argument("--groups", default="1,2,4,8", help="comma-separated group sizes K")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    flags.validate_positive(args, parser)

    recipe = presets.get_preset(args.preset).replace(**{"data.batch_size": args.batch_size})
    precision = args.precision or settings.default_precision(jax.default_backend())
    config = train.RunConfig(recipe, precision, args.width_mult)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4 * args.batch_size, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images)).astype(np.int32)
    data = train.put_on_device(in_memory(images, labels, images[:1000], labels[:1000],
                                         np.full(3, 0.5), np.full(3, 0.25)),
                               recipe, train.PRECISIONS[precision])
    programs = train.build_programs(config, data)
    env = files.environment()
    print(f"{recipe.name}, batch {args.batch_size}, width x{args.width_mult}, {precision}; "
          f"{env['device_kind']} ({env['backend']}), jax {env['jax']}")

    alone = args.batch_size / seconds_per_step(programs, data, None, args.steps, args.repeats)
    print(f"{'runs':>6}  {'images/s per run':>16}  {'images/s in all':>15}  {'in all / alone':>14}")
    print(f"{'alone':>6}  {alone:>16.0f}  {alone:>15.0f}  {1.0:>14.2f}")
    grouped = group.vmapped(programs)
    for members in (int(k) for k in args.groups.split(",")):
        total = members * args.batch_size / seconds_per_step(grouped, data, members, args.steps, args.repeats)
        print(f"{members:>6}  {total / members:>16.0f}  {total:>15.0f}  {total / alone:>14.2f}", flush=True)


if __name__ == "__main__":
    main()
