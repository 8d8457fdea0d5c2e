"""Cost of one train step against a plain hand-written Flax step, in one process.

The trainer's step does more work (augmentation, ghost BN, EMA, metrics); this checks that it
adds no Python or dispatch overhead beyond that. CPU timings are noisy: compare the ratio.

    python scripts/bench_step.py --width-mult 0.25 --batch-size 512 --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_resnet_speed import flags, presets, train
from jax_resnet_speed.data import in_memory


class PlainResNet9(nn.Module):
    """The post-4 ResNet-9 with stock Flax layers: the baseline a user would write by hand."""

    widths: tuple[int, int, int, int]

    @nn.compact
    def __call__(self, x, train: bool):
        def block(x, features, pool=False):
            x = nn.Conv(features, (3, 3), use_bias=False)(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
            return nn.max_pool(x, (2, 2), (2, 2)) if pool else x

        w0, w1, w2, w3 = self.widths
        x = block(x, w0)
        x = block(x, w1, pool=True)
        x = x + block(block(x, w1), w1)
        x = block(x, w2, pool=True)
        x = block(x, w3, pool=True)
        x = x + block(block(x, w3), w3)
        return nn.Dense(10, use_bias=False)(jnp.max(x, axis=(1, 2))) * 0.125


def time_steps(step, state, args, steps: int) -> list[float]:
    state = jax.block_until_ready(step(state, *args))  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state = jax.block_until_ready(step(state, *args))
        times.append(time.perf_counter() - start)
    return times


def plain_step_seconds(widths, images, labels, steps):
    net = PlainResNet9(widths)
    variables = net.init(jax.random.key(0), images[:1], train=False)
    optimizer = optax.sgd(0.01, momentum=0.9, nesterov=True)
    state = (variables["params"], variables["batch_stats"], optimizer.init(variables["params"]))

    @jax.jit
    def step(state, x, y):
        params, batch_stats, opt_state = state

        def loss_fn(p):
            logits, updates = net.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                        mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum(), updates["batch_stats"]

        grads, new_stats = jax.grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state

    return time_steps(step, state, (images, labels), steps)


def trainer_step_seconds(preset, width_mult, batch_size, images, labels, steps):
    recipe = presets.get_preset(preset)
    recipe = recipe.replace(**{"data.batch_size": batch_size})
    config = train.RunConfig(recipe, "fp32", width_mult)
    raw = np.asarray(images)
    data = train.put_on_device(in_memory(raw, np.asarray(labels), raw[:100], np.asarray(labels)[:100],
                                         np.full(3, 0.5), np.full(3, 0.25)),
                               recipe, jnp.float32)
    programs, _ = train.compile_programs(train.build_programs(config, data), data, seed=0)
    state = programs.init(jax.random.key(0), data.train_padded, programs.hyper)
    batches = programs.epoch_batches(state.rng, jnp.int32(0))
    return time_steps(programs.train_step, state, (data.train_padded, data.train_labels, batches), steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    flags.add_width_mult(parser, default=0.25, help="scale every channel width")
    flags.add_batch_size(parser, default=512, help="batch size")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch_size, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.batch_size).astype(np.int32)
    widths = tuple(max(1, round(w * args.width_mult)) for w in presets.MYRTLE_RESNET9.network.widths)
    plain = plain_step_seconds(widths, jnp.asarray(images, jnp.float32) / 255, jnp.asarray(labels), args.steps)
    rows = [("plain Flax step (post-4 net)", plain)]
    for preset in ("myrtle-resnet9", "myrtle-final"):
        rows.append((f"trainer step, {preset}",
                     trainer_step_seconds(preset, args.width_mult, args.batch_size, images, labels, args.steps)))
    base = statistics.median(plain)
    print(f"{jax.devices()[0].device_kind}, width x{args.width_mult}, batch {args.batch_size}, "
          f"median of {args.steps} steps")
    print(f"{'step':<34} {'median s':>9} {'ratio':>6}")
    for name, times in rows:
        print(f"{name:<34} {statistics.median(times):>9.3f} {statistics.median(times) / base:>6.2f}")


if __name__ == "__main__":
    main()
