"""The JAX programs of a run: the train state, one jitted train step, evaluation, and a timed run (loop.py).

A library: `python -m jax_resnet_speed.train` (train/__main__.py) runs the command line of cli.py.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jax_resnet_speed import augment, compilation, interrupt, loop, model as model_lib, optim, parallel
from jax_resnet_speed import tta as tta_lib
from jax_resnet_speed.data import Dataset
from jax_resnet_speed.presets import Recipe
from jax_resnet_speed.settings import EVAL_BATCH, IMAGE_SIZE, RunConfig

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


@dataclasses.dataclass(frozen=True)
class DeviceData:
    """The whole dataset on the accelerator, normalised once."""

    train_padded: jax.Array  # (N, 32 + 2p, 32 + 2p, 3), reflect-padded for random crops
    train_labels: jax.Array
    test_images: jax.Array  # (batches, EVAL_BATCH, 32, 32, 3)
    test_labels: jax.Array  # (batches, EVAL_BATCH); -1 marks padding
    mesh: Mesh | None = None  # the devices it is replicated on, and the batches split over (parallel.py)

    @property
    def num_train(self) -> int:
        return self.train_padded.shape[0]


def put_on_device(dataset: Dataset, recipe: Recipe, dtype: Any, mesh: Mesh | None = None) -> DeviceData:
    """Upload the uint8 images once, then normalise (with the dataset's statistics) and pad them on the device.

    With a mesh, every device holds the whole dataset: CIFAR-10 is 0.2 GB in bf16, and a
    replicated set lets each device gather its share of a batch locally, with no traffic.
    """
    mean, std = jnp.asarray(dataset.mean, jnp.float32), jnp.asarray(dataset.std, jnp.float32)
    train_images, train_labels = dataset.train_images, dataset.train_labels
    test_images, test_labels = dataset.test_images, dataset.test_labels

    @jax.jit
    def normalise(images):
        return ((images.astype(jnp.float32) / 255.0 - mean) / std).astype(dtype)

    train = augment.reflect_pad(normalise(parallel.put_replicated(mesh, train_images)), recipe.data.crop_padding)
    eval_batch = min(EVAL_BATCH, len(test_images))
    if mesh is not None:  # whole slices of every evaluation batch for each device; padding fills the rest
        eval_batch = math.ceil(eval_batch / mesh.size) * mesh.size
    batches = math.ceil(len(test_images) / eval_batch)
    padding = batches * eval_batch - len(test_images)
    test = np.concatenate([test_images, np.zeros((padding, *test_images.shape[1:]), np.uint8)])
    labels = np.concatenate([test_labels, -np.ones(padding, test_labels.dtype)]).astype(np.int32)
    return DeviceData(
        train_padded=train,
        train_labels=parallel.put_replicated(mesh, np.asarray(train_labels, np.int32)),
        test_images=normalise(parallel.put_replicated(mesh, test.reshape(batches, eval_batch, *test.shape[1:]))),
        test_labels=parallel.put_replicated(mesh, labels.reshape(batches, eval_batch)),
        mesh=mesh,
    )


@dataclasses.dataclass(frozen=True)
class Programs:
    """The pure functions of a run, jitted (and, after `compile`, compiled ahead of time)."""

    init: Callable[[jax.Array, jax.Array, optim.Hyper], TrainState]
    epoch_batches: Callable[[jax.Array, jax.Array], jax.Array]
    train_step: Callable[[TrainState, jax.Array, jax.Array, jax.Array], TrainState]
    train_steps: Callable[[TrainState, jax.Array, jax.Array, jax.Array], TrainState]  # a whole epoch of train_step
    evaluate: Callable[[Any, jax.Array, jax.Array], jax.Array]
    schedule: optax.Schedule
    steps_per_epoch: int
    hyper: optim.Hyper  # the recipe's own
    loop: str = "step"  # which of train_step and train_steps train_epoch calls
    run_steps: int | None = None  # the run's length; a fractional run ends with a partial epoch


def build_programs(config: RunConfig, data: DeviceData) -> Programs:
    """The pure functions of a run for this recipe and data shape; nothing is traced yet."""
    recipe = config.recipe
    spec, opt, aug = recipe.network, recipe.optimiser, recipe.data
    net = model_lib.for_recipe(recipe, config.width_mult, PRECISIONS[config.precision])
    steps_per_epoch = data.num_train // aug.batch_size
    run_steps = recipe.run_steps(steps_per_epoch)
    schedule = optim.lr_schedule(recipe, steps_per_epoch)
    ema_momentum = opt.ema.momentum_per_step(run_steps) if opt.ema else None
    pad = aug.crop_padding

    def make_optimizer(hyper):
        return optim.make_optimizer(recipe, schedule, aug.batch_size, hyper, steps_per_epoch)

    def init(key, train_padded, hyper):
        init_key, rng = jax.random.split(key)
        train_images = train_padded[:, pad:pad + IMAGE_SIZE, pad:pad + IMAGE_SIZE]
        variables = net.init(init_key, train_images[:1], train=False)
        params, batch_stats = variables["params"], variables.get("batch_stats", {})  # {}: a net without BN
        constants = {}
        if spec.stem.kind in ("whitening", "whitening-bias"):
            constants = {"whitening": model_lib.whitening_filters(spec, train_images[:spec.stem.whitening_images])}
        weights = {"params": params, "batch_stats": batch_stats}
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, constants=constants,
            opt_state=make_optimizer(hyper).init(params), hyper=hyper,
            ema=weights if opt.ema else None,
            loss_scale=optim.LossScale.create() if config.precision == "fp16" else None,
            totals=jnp.zeros(3, jnp.float32), rng=rng, slow=weights if opt.lookahead else None)

    def epoch_batches(rng, epoch):
        return augment.epoch_batches(jax.random.fold_in(rng, epoch), data.num_train, aug.batch_size)

    def train_step(state: TrainState, images, labels, batches) -> TrainState:
        idx = batches[state.step % steps_per_epoch]
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
        y = labels[idx]
        x, y = parallel.shard_batch(data.mesh, x, y)
        scale = state.loss_scale.scale if state.loss_scale is not None else 1.0

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats, "constants": state.constants}
            logits, updates = net.apply(variables, x, train=True, mutable=["batch_stats"])
            losses = optim.smoothed_cross_entropy(logits, y, opt.label_smoothing)
            return losses.sum() * scale, (losses, logits, updates.get("batch_stats", {}))

        grads, (losses, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
        grads = jax.tree.map(lambda g: g / scale, grads)
        optimizer = make_optimizer(state.hyper)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new = state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state,
                            batch_stats=batch_stats)
        if state.loss_scale is not None:
            # fp16: an overflowing step is skipped and the loss scale halved.
            finite = optim.all_finite(grads)
            new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
            new = new.replace(loss_scale=state.loss_scale.adjust(finite))
        if opt.ema:
            live = {"params": new.params, "batch_stats": new.batch_stats}
            new = new.replace(ema=optim.ema_update(state.ema, live, state.step, ema_momentum, opt.ema.every))
        if opt.lookahead:
            slow, live = optim.lookahead_update(state.slow, {"params": new.params, "batch_stats": new.batch_stats},
                                                state.step + 1, run_steps, opt.lookahead.decay, opt.lookahead.every)
            new = new.replace(slow=slow, params=live["params"], batch_stats=live["batch_stats"])
        correct = jnp.sum(jnp.argmax(logits, -1) == y)
        totals = state.totals + jnp.stack([losses.sum(), correct, y.size]).astype(jnp.float32)
        return new.replace(step=state.step + 1, totals=totals)

    def train_steps(state: TrainState, images, labels, batches) -> TrainState:
        return jax.lax.fori_loop(0, steps_per_epoch, lambda _, s: train_step(s, images, labels, batches), state)

    evaluation = recipe.evaluation
    # Selective TTA's count is of the real test images (a host read of the labels, once).
    num_test = int(np.sum(np.asarray(data.test_labels) >= 0)) if evaluation.tta_selective_fraction else 0

    def recipe_tta(apply, x):
        if evaluation.tta_equal_weights:
            return tta_lib.equal_weight_views(apply, x, evaluation.tta_shift)
        return logits_with_tta(apply, x, evaluation.tta_shift)[1]

    def evaluate_selective(variables, images, labels):
        """evaluate's sums, the TTA ones from selective TTA over the whole test set."""
        apply = lambda v: net.apply(variables, v, train=False)  # noqa: E731
        plain = jax.lax.map(lambda batch: apply(parallel.shard_batch(data.mesh, *batch)[0]), (images, labels))
        logits, y = plain.reshape(-1, plain.shape[-1]), labels.reshape(-1)
        valid = y >= 0
        selective = tta_lib.replace_least_confident(
            logits, lambda x: recipe_tta(apply, x), images.reshape(-1, *images.shape[2:]),
            int(evaluation.tta_selective_fraction * num_test), valid, images.shape[1])
        loss = optim.smoothed_cross_entropy(logits, jnp.maximum(y, 0), opt.label_smoothing)
        return jnp.stack([jnp.sum((jnp.argmax(logits, -1) == y) & valid),
                          jnp.sum((jnp.argmax(selective, -1) == y) & valid),
                          jnp.sum(loss * valid), jnp.sum(valid)]).astype(jnp.float32)

    def evaluate(variables, images, labels):
        """[correct, correct with flip TTA, loss sum, examples] over the padded test set."""
        if evaluation.tta_selective_fraction:
            return evaluate_selective(variables, images, labels)

        def one_batch(batch):
            x, y = parallel.shard_batch(data.mesh, *batch)
            if evaluation.tta_equal_weights:
                apply = lambda v: net.apply(variables, v, train=False)  # noqa: E731
                logits, tta = apply(x), tta_lib.equal_weight_views(apply, x, evaluation.tta_shift)
            else:
                logits, tta = logits_with_tta(lambda v: net.apply(variables, v, train=False), x,
                                              recipe.evaluation.tta_shift)
            valid = y >= 0
            loss = optim.smoothed_cross_entropy(logits, jnp.maximum(y, 0), opt.label_smoothing)
            return jnp.stack([jnp.sum((jnp.argmax(logits, -1) == y) & valid),
                              jnp.sum((jnp.argmax(tta, -1) == y) & valid),
                              jnp.sum(loss * valid), jnp.sum(valid)]).astype(jnp.float32)

        return jax.lax.map(one_batch, (images, labels)).sum(axis=0)

    # On a mesh the state (and every other output) stays replicated; only batches are split.
    placed = {} if data.mesh is None else {"out_shardings": parallel.replicated(data.mesh)}
    return Programs(init=jax.jit(init, **placed), epoch_batches=jax.jit(epoch_batches, **placed),
                    train_step=jax.jit(train_step, donate_argnums=0, **placed),
                    train_steps=jax.jit(train_steps, donate_argnums=0, **placed), evaluate=jax.jit(evaluate, **placed),
                    schedule=schedule, steps_per_epoch=steps_per_epoch, hyper=optim.Hyper.of(recipe),
                    loop=config.loop, run_steps=run_steps)


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


def compile_init(programs: Programs, key: jax.Array, train_padded: jax.Array, hyper: optim.Hyper) -> Callable:
    """The init program compiled for these arguments. It runs once per run, so on XLA:CPU it compiles
    without LLVM's optimisations, several times faster, to the same values (compilation.RUN_ONCE_OPTIONS)."""
    return programs.init.lower(key, train_padded, hyper).compile(compilation.run_once_options(jax.default_backend()))


def compile_programs(programs: Programs, data: DeviceData, seed: int,
                     key: jax.Array | None = None, hyper: optim.Hyper | None = None,
                     on_stage: Callable[[str], None] = lambda stage: None) -> tuple[Programs, float]:
    """Compile (and autotune) every program the loop needs ahead of time, then warm each up once.

    Returns the compiled programs and the seconds spent, which stay off the training clock.
    `key` and `hyper` (default: the key of `seed`, the recipe's hyperparameters) are the init's
    arguments; a group of runs (group.py) passes them stacked. `on_stage` hears what starts next
    (for progress on a terminal).
    """
    start = time.perf_counter()
    key = jax.random.key(seed) if key is None else key
    hyper = programs.hyper if hyper is None else hyper
    on_stage("compiling and running the initialisation")
    init = compile_init(programs, key, data.train_padded, hyper)
    state = init(key, data.train_padded, hyper)
    on_stage("compiling the epoch shuffle")
    epoch_batches = programs.epoch_batches.lower(state.rng, jnp.int32(0)).compile()
    batches = epoch_batches(state.rng, jnp.int32(0))
    names = ("train_step",) if programs.loop == "step" else ("train_steps",)
    if programs.loop == "epoch" and (programs.run_steps or 0) % programs.steps_per_epoch:
        names += ("train_step",)  # the last, partial epoch of a fractional run goes step by step
    train = {}
    for name in names:
        on_stage(f"compiling {name} (on a GPU XLA also autotunes its convolutions)")
        train[name] = getattr(programs, name).lower(state, data.train_padded, data.train_labels, batches).compile()
    on_stage("compiling the evaluation (plain and flip TTA)")
    evaluate = programs.evaluate.lower(eval_variables(state), data.test_images, data.test_labels).compile()
    # A throw-away step (or epoch) and evaluation: first executions allocate and load kernels.
    on_stage("warming up: one throw-away step (or epoch) and evaluation")
    state = train[names[0]](state, data.train_padded, data.train_labels, batches)
    jax.block_until_ready(evaluate(eval_variables(state), data.test_images, data.test_labels))
    compiled = dataclasses.replace(programs, init=init, epoch_batches=epoch_batches, evaluate=evaluate, **train)
    return compiled, time.perf_counter() - start


def train_epoch(programs: Programs, data: DeviceData, state: TrainState, epoch: int,
                steps: int | None = None) -> TrainState:
    """One epoch's steps (`steps` of them: fewer in the last, partial epoch of a fractional run),
    dispatched as programs.loop says. Returns without waiting for the device."""
    batches = programs.epoch_batches(state.rng, jnp.int32(epoch))
    steps = programs.steps_per_epoch if steps is None else steps
    if programs.loop == "epoch" and steps == programs.steps_per_epoch:
        return programs.train_steps(state, data.train_padded, data.train_labels, batches)
    for _ in range(steps):
        interrupt.check()  # Ctrl-C stops after the step in flight (a flag read on the host: no sync)
        state = programs.train_step(state, data.train_padded, data.train_labels, batches)
    return state


class Engine:
    """loop.Engine over compiled programs: one run from `seed` with the recipe's hyperparameters.

    `state`: a train state to go on from (a resumed run); otherwise `init` makes it.
    """

    def __init__(self, programs: Programs, data: DeviceData, seed: int, state: TrainState | None = None):
        self.programs, self.data, self.seed, self.state = programs, data, seed, state
        self.steps_per_epoch = programs.steps_per_epoch

    def init_arguments(self) -> tuple[jax.Array, optim.Hyper]:
        """The init program's key and hyperparameters."""
        return jax.random.key(self.seed), self.programs.hyper

    def init(self) -> None:
        key, hyper = self.init_arguments()
        self.state = jax.block_until_ready(self.programs.init(key, self.data.train_padded, hyper))

    def train_epoch(self, epoch: int, steps: int) -> None:
        self.state = train_epoch(self.programs, self.data, self.state, epoch, steps)

    def totals(self) -> np.ndarray:
        return np.atleast_2d(np.asarray(jax.device_get(self.state.totals)))

    def evaluate(self) -> np.ndarray:
        sums = self.programs.evaluate(eval_variables(self.state), self.data.test_images, self.data.test_labels)
        return np.atleast_2d(np.asarray(jax.device_get(sums)))

    def learning_rates(self, done: int) -> np.ndarray:
        """The schedule's lr after `done` steps times each run's lr scale (optim.Hyper: a group's members differ)."""
        return float(self.programs.schedule(done)) * np.atleast_1d(np.asarray(self.state.hyper.lr_scale))


def run(programs: Programs, data: DeviceData, config: RunConfig, seed: int,
        on_epoch: Callable[[dict], None], record: dict, resume_from: TrainState | None = None,
        after_epoch: Callable[[TrainState], None] = lambda state: None) -> dict:
    """One timed training run (loop.run). Fills `record` (seed, status, epochs, ...) as it goes.

    Raises Diverged when the loss stops being finite.

    resume_from: the state saved after the last epoch in `record` (checkpoint.py); the run goes
    on from the next epoch, its clock from the recorded seconds. after_epoch: called with the
    state after each epoch's row is recorded, off the clock (to save a checkpoint).
    """
    engine = Engine(programs, data, seed, resume_from)

    def saved(epoch: int) -> None:
        if record["status"] == "running":
            after_epoch(engine.state)

    diverged = loop.run(engine, config.recipe, [seed], [record], lambda member, metrics: on_epoch(metrics), saved,
                        resumed=resume_from is not None)
    if diverged:
        raise diverged[0]
    return record


def profile_epoch(programs: Programs, data: DeviceData, seed: int, trace_dir: str) -> None:
    """Trace one full epoch of a throw-away run with jax.profiler (after compilation)."""
    state = jax.block_until_ready(programs.init(jax.random.key(seed), data.train_padded, programs.hyper))
    with jax.profiler.trace(trace_dir):
        jax.block_until_ready(train_epoch(programs, data, state, epoch=1))
