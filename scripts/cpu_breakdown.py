"""Where a CPU train step's time goes, JAX beside PyTorch, piece by piece, in one process.

Each piece of the step (forward, forward+backward of the network alone, augmentation,
optimiser+EMA, the whole step) runs in both frameworks, and the rounds alternate between them,
so a busy shared CPU slows both alike: read the ratios, not the seconds.

    XLA_FLAGS=... python scripts/cpu_breakdown.py --width-mult 0.25 --batch-size 512 --rounds 3

Pieces: `fwd` the network in training mode without gradients; `fwd+bwd` the gradient of the
summed loss with respect to the parameters; `augment` crop, flip and cutout of one batch;
`opt+ema` the optimiser update and the EMA of the weights; `step` the trainer's whole step
(train.steps.train_step / torch_reference.Trainer.train_step plus its augmentation).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

from jax_resnet_speed import augment, flags, model, optim, presets, torch_reference, train
from jax_resnet_speed.data import in_memory

PIECES = ("fwd", "fwd+bwd", "augment", "opt+ema", "step")


def jax_pieces(recipe: presets.Recipe, width_mult: float, images: np.ndarray, labels: np.ndarray
               ) -> dict[str, Callable[[], None]]:
    """Each piece as a function that runs it once and waits for the result."""
    config = train.RunConfig(recipe, "fp32", width_mult)
    data = train.put_on_device(in_memory(images, labels, images[:100], labels[:100],
                                         np.full(3, 0.5), np.full(3, 0.25)),
                               recipe, jnp.float32)
    programs = train.build_programs(config, data)
    net = model.for_recipe(recipe, width_mult, jnp.float32)
    aug, opt = recipe.data, recipe.optimiser
    steps = data.num_train // aug.batch_size
    state = programs.init(jax.random.key(0), data.train_padded, programs.hyper)
    batches = programs.epoch_batches(state.rng, jnp.int32(0))
    key = jax.random.key(1)

    @jax.jit
    def augment_batch(key, padded, idx):
        return augment.augment(key, padded[idx], train.IMAGE_SIZE, aug.flip, aug.cutout)

    x = augment_batch(key, data.train_padded, batches[0])
    y = data.train_labels[batches[0]]

    def loss(params, batch_stats, constants, x, y):
        variables = {"params": params, "batch_stats": batch_stats, "constants": constants}
        logits, _ = net.apply(variables, x, train=True, mutable=["batch_stats"])
        return optim.smoothed_cross_entropy(logits, y, opt.label_smoothing).sum()

    forward = jax.jit(lambda p, b, c, x: net.apply({"params": p, "batch_stats": b, "constants": c}, x,
                                                   train=True, mutable=["batch_stats"]))
    gradient = jax.jit(jax.grad(loss))
    optimizer = optim.make_optimizer(recipe, programs.schedule, aug.batch_size, state.hyper)
    ema_momentum = opt.ema.momentum_per_step(steps * opt.epochs)

    @jax.jit
    def opt_ema(params, opt_state, ema, batch_stats, grads, step):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        live = {"params": params, "batch_stats": batch_stats}
        return params, opt_state, optim.ema_update(ema, live, step, ema_momentum, opt.ema.every)

    grads = gradient(state.params, state.batch_stats, state.constants, x, y)
    train_step = jax.jit(programs.train_step, donate_argnums=0)
    holder = {"state": jax.tree_util.tree_map(jnp.copy, state)}

    def step():
        holder["state"] = jax.block_until_ready(
            train_step(holder["state"], data.train_padded, data.train_labels, batches))

    return {
        "fwd": lambda: jax.block_until_ready(forward(state.params, state.batch_stats, state.constants, x)),
        "fwd+bwd": lambda: jax.block_until_ready(gradient(state.params, state.batch_stats, state.constants, x, y)),
        "augment": lambda: jax.block_until_ready(augment_batch(key, data.train_padded, batches[0])),
        "opt+ema": lambda: jax.block_until_ready(opt_ema(state.params, state.opt_state, state.ema,
                                                         state.batch_stats, grads, state.step)),
        "step": step,
    }


def torch_pieces(recipe: presets.Recipe, width_mult: float, images: np.ndarray, labels: np.ndarray
                 ) -> dict[str, Callable[[], None]]:
    config = train.RunConfig(recipe, "fp32", width_mult)
    fmt = torch.channels_last
    normalised = (images.astype(np.float32) / 255.0 - 0.5) / 0.25
    whitening = (torch_reference.patch_whitening_filters(normalised, recipe.network.stem.whitening_eps)
                 if recipe.network.stem.kind == "whitening" else None)
    pad = recipe.data.crop_padding
    padded = torch.from_numpy(normalised).permute(0, 3, 1, 2)
    padded = F.pad(padded, (pad,) * 4, mode="reflect").contiguous(memory_format=fmt)
    targets = torch.as_tensor(labels, dtype=torch.int64)
    steps = len(images) // recipe.data.batch_size
    trainer = torch_reference.Trainer(config, torch.device("cpu"), whitening, steps, memory_format=fmt)
    idx = torch.randperm(len(images))[:recipe.data.batch_size]
    x = torch_reference.augment(padded, idx, recipe.data, trainer.generator, fmt)
    y = targets[idx]
    o = recipe.optimiser

    def forward():
        with torch.no_grad():
            trainer.net(x)

    def forward_backward():
        loss = F.cross_entropy(trainer.net(x), y, reduction="sum", label_smoothing=o.label_smoothing)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def opt_ema():
        trainer.optimizer.step()
        torch_reference.ema_update(torch_reference.averaged_tensors(trainer.ema_model),
                                   torch_reference.averaged_tensors(trainer.model), trainer.step,
                                   trainer.ema_momentum, o.ema.every)

    def step():
        batch = torch_reference.augment(padded, idx, recipe.data, trainer.generator, fmt)
        trainer.train_step(batch, y)

    forward_backward()  # gradients exist for opt+ema
    return {"fwd": forward, "fwd+bwd": forward_backward,
            "augment": lambda: torch_reference.augment(padded, idx, recipe.data, trainer.generator, fmt),
            "opt+ema": opt_ema, "step": step}


def time_piece(run: Callable[[], None], repeats: int) -> float:
    """Median seconds of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    flags.add_preset(parser, list_presets=False)
    flags.add_width_mult(parser, default=0.25, help="scale every channel width")
    flags.add_batch_size(parser, default=512, help="batch size")
    parser.add_argument("--rounds", type=int, default=3, help="alternating JAX/PyTorch rounds")
    parser.add_argument("--repeats", type=int, default=3, help="calls per piece per round (median)")
    parser.add_argument("--pieces", default=",".join(PIECES), help="comma-separated subset of " + ",".join(PIECES))
    args = parser.parse_args()
    recipe = presets.get_preset(args.preset).replace(**{"data.batch_size": args.batch_size})
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2 * args.batch_size, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images)).astype(np.int32)
    frameworks = {"jax": jax_pieces(recipe, args.width_mult, images, labels),
                  "torch": torch_pieces(recipe, args.width_mult, images, labels)}
    pieces = args.pieces.split(",")
    for runs in frameworks.values():  # warm-up: first calls compile and allocate
        for piece in pieces:
            runs[piece]()
    times = {(fw, p): [] for fw in frameworks for p in pieces}
    for _ in range(args.rounds):
        for piece in pieces:
            for fw, runs in frameworks.items():
                times[fw, piece].append(time_piece(runs[piece], args.repeats))
    print(f"{args.preset}, width x{args.width_mult}, batch {args.batch_size}, fp32, "
          f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"median over {args.rounds} rounds of the median of {args.repeats} calls; ratio = jax / torch "
          f"(per round, then the median)")
    print(f"{'piece':<9} {'jax s':>8} {'torch s':>8} {'ratio':>6}   rounds (jax/torch)")
    for piece in pieces:
        jax_t, torch_t = times["jax", piece], times["torch", piece]
        ratios = [j / t for j, t in zip(jax_t, torch_t)]
        print(f"{piece:<9} {statistics.median(jax_t):>8.4f} {statistics.median(torch_t):>8.4f} "
              f"{statistics.median(ratios):>6.2f}   " + " ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()
