"""Data filtering by a proxy model's scores (airbench96_faster): the proxy's programs.

The proxy (presets.Filtering.proxy) trains on exactly the batches the recipe's network will see:
the same shuffles and augmentation, from the same key (the run's `state.rng`). At every step it
runs forward in train mode and records which examples of the batch have the highest loss; one step
in `backward_every` it also steps its optimiser on the loss summed over those. The recipe's network
then trains step t on the examples recorded at step t (steps.train_step reads them from `state.kept`).
train.proxy_picks runs the proxy's steps one dispatch each, as the default step loop runs the train
step: inside one loop program XLA:CPU runs convolutions many times slower (docs/speed.md).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import optax

from jax_resnet_speed import augment, optim
from jax_resnet_speed.train import steps
from jax_resnet_speed.train.steps import Setup, TrainState

PROXY_STREAM = 2**31 - 3  # the fold_in tag of the proxy's initial weights (augment.FLIP_STREAM's neighbour)


def hardest(losses: jax.Array, count: int) -> jax.Array:
    """The positions of the `count` highest losses, highest first."""
    return jax.lax.top_k(losses, count)[1]


def proxy_setup(setup: Setup) -> Setup:
    """The proxy's programs' Setup: its recipe (presets.Filtering.proxy), the run's width and data."""
    return Setup(setup.recipe.data.filtering.proxy(setup.recipe), setup.width_mult, setup.precision,
                 setup.num_train, setup.mesh)


def proxy_optimizer(setup: Setup, hyper: optim.Hyper) -> optax.GradientTransformation:
    """The recipe's optimiser for the proxy, in units of the kept examples (its loss sums those). It steps
    at steps 0, k, 2k, ... (k = backward_every), so its n-th update reads the schedule at step n k."""
    filtering, proxy = setup.recipe.data.filtering, proxy_setup(setup)
    return optim.make_optimizer(proxy.recipe, lambda count: proxy.schedule(count * filtering.backward_every),
                                setup.recipe.data.trained_batch, hyper, proxy.steps_per_epoch)


def proxy_step(setup: Setup, state: TrainState, images: jax.Array, labels: jax.Array, batches: jax.Array,
               backward: bool) -> tuple[TrainState, jax.Array]:
    """One step of the proxy (`state`) on its step's training images, `batches[state.step]` (run_batches):
    its state after a forward pass in train mode (and with `backward`, its optimiser's step on the summed
    loss of the hardest examples), and the positions in the batch of those hardest examples."""
    proxy, count = proxy_setup(setup), setup.recipe.data.trained_batch
    x, y = steps.augmented_batch(proxy, state, images, labels, batches[state.step])
    if backward:
        def kept_loss(losses):
            return jnp.sum(losses[hardest(jax.lax.stop_gradient(losses), count)])

        new, losses, _ = steps.gradient_step(proxy, functools.partial(proxy_optimizer, setup), state, x, y, kept_loss)
    else:
        losses, (_, batch_stats) = steps.train_losses(proxy, state, state.params, x, y)
        new = state.replace(batch_stats=batch_stats)
    return new.replace(step=state.step + 1), hardest(losses, count)


# The two kinds of proxy step, each its own program: the driver (train.proxy_picks) picks one per step,
# steps 0, k, 2k, ... (k = backward_every) with the backward pass. (A lax.cond between them in one
# program would run both branches' convolutions as nested computations, many times slower on XLA:CPU.)
@functools.partial(jax.jit, static_argnames="setup", donate_argnames="state")
def proxy_learn(setup: Setup, state: TrainState, images: jax.Array, labels: jax.Array,
                batches: jax.Array) -> tuple[TrainState, jax.Array]:
    """proxy_step with the optimiser's step."""
    return proxy_step(setup, state, images, labels, batches, backward=True)


@functools.partial(jax.jit, static_argnames="setup", donate_argnames="state")
def proxy_score(setup: Setup, state: TrainState, images: jax.Array, labels: jax.Array,
                batches: jax.Array) -> tuple[TrainState, jax.Array]:
    """proxy_step with the forward pass alone."""
    return proxy_step(setup, state, images, labels, batches, backward=False)


@functools.partial(jax.jit, static_argnames="setup")
def proxy_init(setup: Setup, rng: jax.Array, images: jax.Array, hyper: optim.Hyper) -> TrainState:
    """The proxy's initial state: its own weights, and the run's data key `rng`, so that it draws the
    same batches and augmentation as the recipe's network."""
    proxy = proxy_setup(setup)
    return steps.init.__wrapped__(proxy, jax.random.fold_in(rng, PROXY_STREAM), images, hyper).replace(rng=rng)


@functools.partial(jax.jit, static_argnames="setup")
def run_batches(setup: Setup, rng: jax.Array) -> jax.Array:
    """(run steps, batch size): every step's training images, from each epoch's shuffle as
    steps.epoch_batches draws it for epochs 1, 2, ... (loop.run counts them from 1)."""
    epochs = jnp.arange(1, math.ceil(setup.run_steps / setup.steps_per_epoch) + 1)
    batches = jax.vmap(lambda epoch: augment.epoch_batches(jax.random.fold_in(rng, epoch), setup.num_train,
                                                           setup.recipe.data.batch_size))(epochs)
    return batches.reshape(-1, setup.recipe.data.batch_size)[:setup.run_steps]
