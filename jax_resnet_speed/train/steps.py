"""The pure functions of a run, each jitted here: init, the epoch shuffle, the train step, a whole
epoch of train steps, and evaluation.

Each takes a `Setup` first, as a static argument: the recipe and the data's shape, which decide
what is traced. The arrays (state, images, labels, batch indices) are the traced arguments.
train.build_programs binds a Setup to each (`Programs`), so the rest of the package calls
`programs.train_step(state, images, labels, batches)`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jax_resnet_speed import augment, model as model_lib, optim, parallel
from jax_resnet_speed import tta as tta_lib
from jax_resnet_speed.presets import Recipe
from jax_resnet_speed.settings import IMAGE_SIZE

PRECISIONS = {"bf16": jnp.bfloat16, "fp16": jnp.float16, "fp32": jnp.float32}  # settings.PRECISIONS' dtypes


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any
    batch_stats: Any
    constants: Any  # frozen: the whitening filters
    opt_state: Any
    hyper: optim.Hyper  # traced: a group of runs can vmap over them (group.py)
    ema: Any  # {"params", "batch_stats"}, or None without EMA
    loss_scale: optim.LossScale | None  # fp16 only
    totals: jax.Array  # running [loss sum, correct, examples] over the whole run
    rng: jax.Array
    slow: Any = None  # lookahead's slow copy {"params", "batch_stats"}, or None without lookahead
    # Data filtering: (run steps, trained batch) positions in each step's batch that the step trains on,
    # picked by the proxy's run (filtering.py); None without filtering.
    kept: Any = None


@dataclasses.dataclass(frozen=True)
class Setup:
    """What the programs are traced for beside their arrays. Hashable: every program takes it as a
    static argument, so an equal Setup reuses the traced programs and a different one traces anew."""

    recipe: Recipe
    width_mult: float
    precision: str  # a key of PRECISIONS
    num_train: int  # training images on the device
    mesh: Mesh | None = None  # batches are split over it, everything else replicated (parallel.py)
    num_test: int = 0  # real test images (not padding), for selective TTA's count; 0 when it is off

    @functools.cached_property
    def net(self) -> model_lib.Network:
        return model_lib.for_recipe(self.recipe, self.width_mult, PRECISIONS[self.precision])

    @property
    def steps_per_epoch(self) -> int:
        return self.num_train // self.recipe.data.batch_size

    @property
    def run_steps(self) -> int:
        """The run's length; a fractional run ends with a partial epoch."""
        return self.recipe.run_steps(self.steps_per_epoch)

    @functools.cached_property
    def schedule(self) -> optax.Schedule:
        return optim.lr_schedule(self.recipe, self.steps_per_epoch)

    def optimizer(self, hyper: optim.Hyper) -> optax.GradientTransformation:
        return optim.make_optimizer(self.recipe, self.schedule, self.recipe.data.trained_batch, hyper,
                                    self.steps_per_epoch)


@functools.partial(jax.jit, static_argnames="setup")
def init(setup: Setup, key: jax.Array, train_padded: jax.Array, hyper: optim.Hyper) -> TrainState:
    """A new run's state: the weights from `key`, the whitening filters from the first images."""
    spec, opt, pad = setup.recipe.network, setup.recipe.optimiser, setup.recipe.data.crop_padding
    init_key, rng = jax.random.split(key)
    train_images = train_padded[:, pad:pad + IMAGE_SIZE, pad:pad + IMAGE_SIZE]
    variables = setup.net.init(init_key, train_images[:1], train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})  # {}: a net without BN
    constants = {}
    if spec.stem.kind in ("whitening", "whitening-bias"):
        constants = {"whitening": model_lib.whitening_filters(spec, train_images[:spec.stem.whitening_images])}
    weights = {"params": params, "batch_stats": batch_stats}
    # Until the proxy's run replaces them (train.initial_state), each step keeps the first examples of its
    # batch: a random part of it, as the batch is shuffled.
    kept = None
    if setup.recipe.data.filtering:
        trained = setup.recipe.data.trained_batch
        kept = jnp.broadcast_to(jnp.arange(trained), (setup.run_steps, trained))
    return parallel.replicate(setup.mesh, TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, constants=constants,
        opt_state=setup.optimizer(hyper).init(params), hyper=hyper,
        ema=weights if opt.ema else None,
        loss_scale=optim.LossScale.create() if setup.precision == "fp16" else None,
        totals=jnp.zeros(3, jnp.float32), rng=rng, slow=weights if opt.lookahead else None, kept=kept))


@functools.partial(jax.jit, static_argnames="setup")
def epoch_batches(setup: Setup, rng: jax.Array, epoch: jax.Array) -> jax.Array:
    """The epoch's shuffle: (steps_per_epoch, batch_size) indices into the training images."""
    batches = augment.epoch_batches(jax.random.fold_in(rng, epoch), setup.num_train, setup.recipe.data.batch_size)
    return parallel.replicate(setup.mesh, batches)


@functools.partial(jax.jit, static_argnames="setup", donate_argnames="state")
def train_step(setup: Setup, state: TrainState, images: jax.Array, labels: jax.Array,
               batches: jax.Array) -> TrainState:
    """One optimiser step on the batch `batches[state.step % steps_per_epoch]`, augmented on the device
    (with data filtering, on the part of it the proxy kept at this step)."""
    opt = setup.recipe.optimiser
    x, y = augmented_batch(setup, state, images, labels, batches[state.step % setup.steps_per_epoch])
    if setup.recipe.data.filtering:
        x, y = x[state.kept[state.step]], y[state.kept[state.step]]
    x, y = parallel.shard_batch(setup.mesh, x, y)
    new, losses, logits = gradient_step(setup, setup.optimizer, state, x, y)
    if opt.ema:
        live = {"params": new.params, "batch_stats": new.batch_stats}
        ema_momentum = opt.ema.momentum_per_step(setup.run_steps)
        new = new.replace(ema=optim.ema_update(state.ema, live, state.step, ema_momentum, opt.ema.every))
    if opt.lookahead:
        slow, live = optim.lookahead_update(state.slow, {"params": new.params, "batch_stats": new.batch_stats},
                                            state.step + 1, setup.run_steps, opt.lookahead.decay, opt.lookahead.every)
        new = new.replace(slow=slow, params=live["params"], batch_stats=live["batch_stats"])
    correct = jnp.sum(jnp.argmax(logits, -1) == y)
    totals = state.totals + jnp.stack([losses.sum(), correct, y.size]).astype(jnp.float32)
    return parallel.replicate(setup.mesh, new.replace(step=state.step + 1, totals=totals))


def augmented_batch(setup: Setup, state: TrainState, images: jax.Array, labels: jax.Array,
                    idx: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The training images `idx` augmented for step `state.step` (its streams of `state.rng`), and their labels."""
    aug, steps_per_epoch = setup.recipe.data, setup.steps_per_epoch
    x = augment.augment(jax.random.fold_in(state.rng, state.step), images[idx], IMAGE_SIZE,
                        aug.flip and not aug.alternating_flip, aug.cutout)
    if aug.alternating_flip:
        # One draw per image for the whole run (its own stream of the run's key), mirrored
        # as a whole on odd epochs.
        x = augment.alternating_flip(jax.random.fold_in(state.rng, augment.FLIP_STREAM), x, idx,
                                     state.step // steps_per_epoch)
    if aug.brightness_jitter or aug.contrast_jitter:
        key = jax.random.fold_in(jax.random.fold_in(state.rng, augment.JITTER_STREAM), state.step)
        x = augment.colour_jitter(key, x, aug.brightness_jitter, aug.contrast_jitter)
    return x, labels[idx]


def train_losses(setup: Setup, state: TrainState, params: Any, x: jax.Array,
                 y: jax.Array) -> tuple[jax.Array, tuple[jax.Array, Any]]:
    """Per-example losses of a forward pass in train mode, and (logits, the BN statistics it moved)."""
    variables = {"params": params, "batch_stats": state.batch_stats, "constants": state.constants}
    logits, updates = setup.net.apply(variables, x, train=True, mutable=["batch_stats"])
    losses = optim.smoothed_cross_entropy(logits, y, setup.recipe.optimiser.label_smoothing)
    return losses, (logits, updates.get("batch_stats", {}))


def gradient_step(setup: Setup, optimizer: Callable[[optim.Hyper], optax.GradientTransformation],
                  state: TrainState, x: jax.Array, y: jax.Array,
                  reduce: Callable[[jax.Array], jax.Array] = jnp.sum) -> tuple[TrainState, jax.Array, jax.Array]:
    """A step of `optimizer(state.hyper)` on the loss `reduce(per-example losses)` (their sum), and the new
    BN statistics.

    Returns the new state (its step not advanced), the per-example losses and the logits. In fp16
    an overflowing step is skipped and the loss scale halved."""
    scale = state.loss_scale.scale if state.loss_scale is not None else 1.0

    def loss_fn(params):
        losses, (logits, batch_stats) = train_losses(setup, state, params, x, y)
        return reduce(losses) * scale, (losses, logits, batch_stats)

    grads, (losses, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    grads = jax.tree.map(lambda g: g / scale, grads)
    updates, opt_state = optimizer(state.hyper).update(grads, state.opt_state, state.params)
    new = state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state,
                        batch_stats=batch_stats)
    if state.loss_scale is not None:
        finite = optim.all_finite(grads)
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        new = new.replace(loss_scale=state.loss_scale.adjust(finite))
    return new, losses, logits


@functools.partial(jax.jit, static_argnames="setup", donate_argnames="state")
def train_steps(setup: Setup, state: TrainState, images: jax.Array, labels: jax.Array,
                batches: jax.Array) -> TrainState:
    """A whole epoch of train_step in one program: the step's Python function is the loop's body
    (a call of the jitted step would pass the loop its arrays in another order: another StableHLO)."""
    step = train_step.__wrapped__
    return jax.lax.fori_loop(0, setup.steps_per_epoch, lambda _, s: step(setup, s, images, labels, batches), state)


@functools.partial(jax.jit, static_argnames="setup")
def evaluate(setup: Setup, variables: dict, images: jax.Array, labels: jax.Array) -> jax.Array:
    """[correct, correct with flip TTA, loss sum, examples] over the padded test set."""
    evaluation = setup.recipe.evaluation
    if evaluation.tta_selective_fraction:
        return evaluate_selective(setup, variables, images, labels)

    def one_batch(batch):
        x, y = parallel.shard_batch(setup.mesh, *batch)
        logits, tta = recipe_views(evaluation, lambda v: setup.net.apply(variables, v, train=False), x)
        return evaluation_sums(logits, tta, y, setup.recipe.optimiser.label_smoothing)

    return parallel.replicate(setup.mesh, jax.lax.map(one_batch, (images, labels)).sum(axis=0))


def evaluate_selective(setup: Setup, variables: dict, images: jax.Array, labels: jax.Array) -> jax.Array:
    """evaluate's sums, the TTA ones from selective TTA over the whole test set (the record's): a
    plain pass over every image, then the TTA views for the least confident fraction of them."""
    evaluation = setup.recipe.evaluation
    apply = lambda v: setup.net.apply(variables, v, train=False)  # noqa: E731
    plain = jax.lax.map(lambda batch: apply(parallel.shard_batch(setup.mesh, *batch)[0]), (images, labels))
    logits, y = plain.reshape(-1, plain.shape[-1]), labels.reshape(-1)
    selective = tta_lib.replace_least_confident(
        logits, lambda x: recipe_views(evaluation, apply, x)[1], images.reshape(-1, *images.shape[2:]),
        int(evaluation.tta_selective_fraction * setup.num_test), y >= 0, images.shape[1])
    return parallel.replicate(setup.mesh, evaluation_sums(logits, selective, y, setup.recipe.optimiser.label_smoothing))


def evaluation_sums(logits: jax.Array, tta: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
    """[correct, correct with TTA, loss sum, examples] of the images whose label is not -1 (padding)."""
    valid = labels >= 0
    loss = optim.smoothed_cross_entropy(logits, jnp.maximum(labels, 0), smoothing)
    return jnp.stack([jnp.sum((jnp.argmax(logits, -1) == labels) & valid),
                      jnp.sum((jnp.argmax(tta, -1) == labels) & valid),
                      jnp.sum(loss * valid), jnp.sum(valid)]).astype(jnp.float32)


def recipe_views(evaluation: Any, apply: Callable[[jax.Array], jax.Array],
                 images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Plain logits and the recipe's TTA logits: its views weighted alike (the record's), or as airbench
    and Myrtle weigh them (logits_with_tta). XLA drops the plain logits where only the TTA is used."""
    if evaluation.tta_equal_weights:
        return apply(images), tta_lib.equal_weight_views(apply, images, evaluation.tta_shift)
    return logits_with_tta(apply, images, evaluation.tta_shift)


def logits_with_tta(apply: Callable[[jax.Array], jax.Array], images: jax.Array,
                    shift: int = 0) -> tuple[jax.Array, jax.Array]:
    """Plain logits, and the mean of the logits of each image and of its left-right mirror.

    With `shift` > 0 (airbench's 6 views), that mean weighs 1/2, and the same mean for the image
    shifted `shift` pixels up-left and down-right (a crop of its reflect-padding) 1/4 each.
    """
    logits = apply(images)
    mirrored = (logits + apply(images[:, :, ::-1])) / 2
    if not shift:
        return logits, mirrored
    size = images.shape[1]
    padded = augment.reflect_pad(images, shift)
    shifted = [padded[:, :size, :size], padded[:, 2 * shift:2 * shift + size, 2 * shift:2 * shift + size]]
    pairs = [(apply(x) + apply(x[:, :, ::-1])) / 2 for x in shifted]
    return logits, mirrored / 2 + (pairs[0] + pairs[1]) / 4


def eval_variables(state: TrainState) -> dict:
    """The weights that are evaluated: the EMA copy when the recipe keeps one."""
    weights = state.ema or {"params": state.params, "batch_stats": state.batch_stats}
    return {**weights, "constants": state.constants}
