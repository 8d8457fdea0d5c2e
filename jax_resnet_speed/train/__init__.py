"""A run in JAX: the dataset on the device, the programs of steps.py bound to a recipe and compiled
ahead of time, and a timed run (loop.py).

A library: `python -m jax_resnet_speed.train` (train/__main__.py) runs the command line of cli.py.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jax_resnet_speed import augment, compilation, interrupt, loop, optim, parallel
from jax_resnet_speed.data import Dataset
from jax_resnet_speed.presets import Recipe
from jax_resnet_speed.settings import EVAL_BATCH, IMAGE_SIZE, RunConfig  # noqa: F401 (IMAGE_SIZE: the package's)
from jax_resnet_speed.train import filtering, steps
# The package's names for the state and what is evaluated (steps.py defines them beside the programs).
from jax_resnet_speed.train.steps import PRECISIONS, TrainState, eval_variables, logits_with_tta  # noqa: F401


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
class Bound:
    """A program of steps.py with its Setup given: called, lowered and vmapped on the arrays alone."""

    program: Any  # jitted, with the Setup as its first (static) argument
    setup: steps.Setup

    def __call__(self, *arrays: Any) -> Any:
        return self.program(self.setup, *arrays)

    def lower(self, *arrays: Any) -> jax.stages.Lowered:
        return self.program.lower(self.setup, *arrays)


@dataclasses.dataclass(frozen=True)
class ProxyPrograms:
    """With data filtering, the proxy's programs of filtering.py, bound to the run's Setup (proxy_picks runs them)."""

    init: Callable[[jax.Array, jax.Array, optim.Hyper], TrainState]  # (data key, images, hyper) -> proxy state
    batches: Callable[[jax.Array], jax.Array]  # (data key) -> every step's training images
    # (proxy state, images, labels, every step's images) -> (proxy state, kept positions), the proxy's
    # step reading its row: with its optimiser's step (every `backward_every` steps from step 0), or
    # its forward pass alone.
    learn: Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, jax.Array]]
    score: Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, jax.Array]]
    backward_every: int


@dataclasses.dataclass(frozen=True)
class Programs:
    """The programs of a run: steps.py's, bound to its Setup (build_programs); after compile_programs,
    compiled ahead of time; vmapped over a group in group.py."""

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
    proxy: ProxyPrograms | None = None  # with data filtering


def build_programs(config: RunConfig, data: DeviceData) -> Programs:
    """The programs of steps.py for this recipe and data shape; nothing is traced yet."""
    # Selective TTA's count is of the real test images: a host read of the labels, once.
    num_test = int(np.sum(np.asarray(data.test_labels) >= 0)) if config.recipe.evaluation.tta_selective_fraction else 0
    setup = steps.Setup(config.recipe, config.width_mult, config.precision, data.num_train, data.mesh, num_test)
    return Programs(init=Bound(steps.init, setup), epoch_batches=Bound(steps.epoch_batches, setup),
                    train_step=Bound(steps.train_step, setup), train_steps=Bound(steps.train_steps, setup),
                    evaluate=Bound(steps.evaluate, setup), schedule=setup.schedule,
                    steps_per_epoch=setup.steps_per_epoch, hyper=optim.Hyper.of(config.recipe), loop=config.loop,
                    run_steps=setup.run_steps,
                    proxy=proxy_programs(setup) if config.recipe.data.filtering else None)


def proxy_programs(setup: steps.Setup) -> ProxyPrograms:
    """filtering.py's programs with the run's Setup bound."""
    return ProxyPrograms(*(Bound(program, setup) for program in (filtering.proxy_init, filtering.run_batches,
                                                                  filtering.proxy_learn, filtering.proxy_score)),
                         backward_every=setup.recipe.data.filtering.backward_every)


def compile_init(programs: Programs, key: jax.Array, train_padded: jax.Array, hyper: optim.Hyper) -> Callable:
    """The init program compiled for these arguments. It runs once per run, so on XLA:CPU it compiles
    without LLVM's optimisations, several times faster, to the same values (compilation.RUN_ONCE_OPTIONS)."""
    return programs.init.lower(key, train_padded, hyper).compile(compilation.run_once_options(jax.default_backend()))


def compile_programs(programs: Programs, data: DeviceData, seed: int,
                     key: jax.Array | None = None, hyper: optim.Hyper | None = None,
                     on_stage: Callable[[str], None] = lambda stage: None,
                     options: dict[str, Any] | None = None) -> tuple[Programs, float]:
    """Compile (and autotune) every program the loop needs ahead of time, then warm each up once.

    Returns the compiled programs and the seconds spent, which stay off the training clock.
    `key` and `hyper` (default: the key of `seed`, the recipe's hyperparameters) are the init's
    arguments; a group of runs (group.py) passes them stacked. `on_stage` hears what starts next
    (for progress on a terminal). `options` are XLA compile options for the train step or epoch and
    the evaluation, over those XLA_FLAGS sets (the tests compile quickly but their long runs as XLA ships).
    """
    start = time.perf_counter()
    key = jax.random.key(seed) if key is None else key
    hyper = programs.hyper if hyper is None else hyper
    on_stage("compiling and running the initialisation")
    init = compile_init(programs, key, data.train_padded, hyper)
    state = init(key, data.train_padded, hyper)
    proxy = programs.proxy
    if proxy is not None:
        on_stage("compiling the proxy's programs (data filtering) and warming them up")
        proxy = compile_proxy(proxy, data, state.rng, hyper)
    on_stage("compiling the epoch shuffle")
    epoch_batches = programs.epoch_batches.lower(state.rng, jnp.int32(0)).compile()
    batches = epoch_batches(state.rng, jnp.int32(0))
    names = ("train_step",) if programs.loop == "step" else ("train_steps",)
    if programs.loop == "epoch" and (programs.run_steps or 0) % programs.steps_per_epoch:
        names += ("train_step",)  # the last, partial epoch of a fractional run goes step by step
    train = {}
    for name in names:
        on_stage(f"compiling {name} (on a GPU XLA also autotunes its convolutions)")
        lowered = getattr(programs, name).lower(state, data.train_padded, data.train_labels, batches)
        train[name] = lowered.compile(options)
    on_stage("compiling the evaluation (plain and flip TTA)")
    evaluate = programs.evaluate.lower(eval_variables(state), data.test_images, data.test_labels).compile(options)
    # A throw-away step (or epoch) and evaluation: first executions allocate and load kernels.
    on_stage("warming up: one throw-away step (or epoch) and evaluation")
    state = train[names[0]](state, data.train_padded, data.train_labels, batches)
    jax.block_until_ready(evaluate(eval_variables(state), data.test_images, data.test_labels))
    compiled = dataclasses.replace(programs, init=init, epoch_batches=epoch_batches, evaluate=evaluate,
                                   proxy=proxy, **train)
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


def initial_state(programs: Programs, data: DeviceData, key: jax.Array, hyper: optim.Hyper) -> TrainState:
    """A new run's state (init); with data filtering, after the proxy's run, which picks what each step trains on."""
    state = programs.init(key, data.train_padded, hyper)
    if programs.proxy is None:
        return state
    return state.replace(kept=proxy_picks(programs.proxy, data, state.rng, hyper, programs.run_steps))


def proxy_picks(proxy: ProxyPrograms, data: DeviceData, rng: jax.Array, hyper: optim.Hyper, steps: int) -> jax.Array:
    """The proxy's run, one dispatch per step: (steps, trained batch) positions in each step's batch of the
    examples that step trains on ((members, steps, trained batch) for a group). Returns without waiting."""
    state, batches, kept = proxy.init(rng, data.train_padded, hyper), proxy.batches(rng), []
    for step in range(steps):
        interrupt.check()
        program = proxy.score if step % proxy.backward_every else proxy.learn
        state, picked = program(state, data.train_padded, data.train_labels, batches)
        kept.append(picked)
    return jnp.stack(kept, axis=-2)


def compile_proxy(proxy: ProxyPrograms, data: DeviceData, rng: jax.Array, hyper: optim.Hyper) -> ProxyPrograms:
    """The proxy's programs compiled for these arguments, each run once (throw-away steps)."""
    init = proxy.init.lower(rng, data.train_padded, hyper).compile()
    state, batches = init(rng, data.train_padded, hyper), proxy.batches.lower(rng).compile()
    every_step = batches(rng)
    steps_compiled = [program.lower(state, data.train_padded, data.train_labels, every_step).compile()
                      for program in (proxy.learn, proxy.score)]
    for step in steps_compiled:
        state, _ = step(state, data.train_padded, data.train_labels, every_step)
    jax.block_until_ready(state)
    return dataclasses.replace(proxy, init=init, batches=batches, learn=steps_compiled[0], score=steps_compiled[1])


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
        self.state = jax.block_until_ready(initial_state(self.programs, self.data, key, hyper))

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
    state = jax.block_until_ready(initial_state(programs, data, jax.random.key(seed), programs.hyper))
    with jax.profiler.trace(trace_dir):
        jax.block_until_ready(train_epoch(programs, data, state, epoch=1))
