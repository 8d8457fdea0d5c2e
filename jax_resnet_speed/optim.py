"""Optimiser pieces: lr schedule, SGD with per-group multipliers (and Muon), loss, EMA, lookahead, loss scaling."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_resnet_speed import muon as muon_lib
from jax_resnet_speed.presets import UNTRAINED_WHITENING_BIAS, Recipe, WhiteningBias


def lr_schedule(recipe: Recipe, steps_per_epoch: int) -> optax.Schedule:
    """Myrtle-unit learning rate (before the /batch_size) at a step, piecewise linear in epochs."""
    epoch_points = np.array([e for e, _ in recipe.optimiser.lr_knots], np.float32)
    lr_points = np.array([lr for _, lr in recipe.optimiser.lr_knots], np.float32)

    def schedule(step):
        return jnp.interp(step / steps_per_epoch, epoch_points, lr_points)

    return schedule


def param_groups(params: Any, muon: bool = False) -> Any:
    """'bn_bias' for BatchNorm biases, 'weights' for the rest: kernels, BN scales and the head's bias.

    Convolutions have no biases, so every bias outside the `classifier` head is a BN bias.
    airbench's whitening stem has its own group, 'whitening_bias'; with `muon` the conv
    filters (the 4-D kernels) are 'filters'.
    """
    def label(path, leaf):
        if path[-1].key == "whitening_bias":
            return "whitening_bias"
        if path[-1].key == "bias" and path[-2].key != "classifier":
            return "bn_bias"
        return "filters" if muon and leaf.ndim == 4 else "weights"

    return jax.tree.map_with_path(label, params)


def nesterov_sgd(lr: optax.Schedule, weight_decay: float | jax.Array, momentum: float | jax.Array, nesterov: bool,
                 update: str) -> optax.GradientTransformation:
    """SGD with coupled weight decay in one of two forms (presets.Optimiser.update).

    "torch" (torch.optim.SGD): d = g + wd w; v = m v + d; w -= lr(t) (d + m v).
    "page" (Page's cifar10-fast): d = -lr(t + 1) (g + wd w); v = m v + d; w += d + m v. The
    buffer remembers the lr each gradient was taken with, and step t reads lr(t + 1).
    """
    decay = optax.add_decayed_weights(weight_decay)
    if update == "torch":
        return optax.chain(decay, optax.sgd(lr, momentum=momentum, nesterov=nesterov))
    if update == "page":
        return optax.chain(decay, optax.scale_by_schedule(lambda count: -lr(count + 1)),
                           optax.trace(decay=momentum, nesterov=nesterov))
    raise ValueError(f"unknown update form {update!r}; use 'torch' or 'page'")


class Hyper(NamedTuple):
    """The hyperparameters the optimiser takes as traced values, so one program can vmap over them.

    lr_scale multiplies the recipe's schedule; weight_decay and momentum replace the recipe's
    (Myrtle units, as in presets.Optimiser).
    """

    lr_scale: jax.Array
    weight_decay: jax.Array
    momentum: jax.Array

    @classmethod
    def of(cls, recipe: Recipe, lr_scale: float = 1.0, weight_decay: float | None = None,
           momentum: float | None = None) -> "Hyper":
        """The recipe's own values (lr_scale 1), or the given ones, as float32 scalars."""
        o = recipe.optimiser
        values = (lr_scale, o.weight_decay if weight_decay is None else weight_decay,
                  o.momentum if momentum is None else momentum)
        return cls(*(jnp.asarray(v, jnp.float32) for v in values))


def make_optimizer(recipe: Recipe, schedule: optax.Schedule, batch_size: int,
                   hyper: Hyper | None = None, steps_per_epoch: int | None = None) -> optax.GradientTransformation:
    """SGD with Nesterov momentum and coupled weight decay, on a loss summed over the batch.

    BN biases get lr x bn_bias_lr_mult and wd x bn_bias_wd_mult. `hyper` (default: the
    recipe's) may hold traced values; the optimiser state does not depend on them.
    airbench's whitening bias is a group of its own (its schedule needs `steps_per_epoch`), and
    a recipe with `optimiser.muon` trains the conv filters with Muon (muon.py).
    """
    o = recipe.optimiser
    if hyper is None:
        hyper = Hyper.of(recipe)

    def sgd(lr_mult: float, wd_mult: float, lr: optax.Schedule = schedule) -> optax.GradientTransformation:
        return nesterov_sgd(lambda step: lr(step) * hyper.lr_scale * lr_mult / batch_size,
                            hyper.weight_decay * batch_size * wd_mult, hyper.momentum, o.nesterov, o.update)

    groups = {"weights": sgd(1.0, 1.0), "bn_bias": sgd(o.bn_bias_lr_mult, o.bn_bias_wd_mult)}
    if recipe.network.stem.kind == "whitening-bias":
        bias = o.whitening_bias or UNTRAINED_WHITENING_BIAS
        groups["whitening_bias"] = sgd(bias.lr_mult, bias.wd_mult,
                                       whitening_bias_schedule(bias, schedule, steps_per_epoch))
    if muon := o.muon:
        # Muon's lr follows the shape of the run's schedule, from muon.lr at its peak.
        peak = max(lr for _, lr in o.lr_knots)
        groups["filters"] = muon_lib.muon(lambda step: muon.lr * hyper.lr_scale * schedule(step) / peak,
                                          muon.momentum, muon.nesterov, muon.ns_steps, muon.ns_dtype,
                                          muon.coefficients, muon.stacked, muon.renormalise_every,
                                          muon.weight_decay, muon.buffer_dtype)
    return optax.multi_transform(groups, lambda params: param_groups(params, muon=o.muon is not None))


def whitening_bias_schedule(bias: WhiteningBias, schedule: optax.Schedule, steps_per_epoch: int) -> optax.Schedule:
    """The whitening bias's lr: it trains for the first `bias.epochs` only, the run's lr until then
    ("cut", airbench94) or the run's initial lr decaying linearly to 0 ("linear", airbench94_muon).
    Past them the lr is 0, which with coupled decay freezes the bias exactly."""
    steps = math.ceil(bias.epochs * steps_per_epoch)
    if bias.decay == "cut":
        return lambda step: jnp.where(step < steps, schedule(step), 0.0)
    if bias.decay == "linear":
        return lambda step: schedule(0) * jnp.clip(1 - step / steps, 0.0, 1.0)
    raise ValueError(f"unknown whitening bias decay {bias.decay!r}; use 'cut' or 'linear'")


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
    """Per-example cross-entropy against labels smoothed towards the uniform distribution."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def ema_update(ema: Any, live: Any, step: jax.Array, momentum: float, every: int) -> Any:
    """Every `every` steps (from step 0), move the EMA towards the live weights.

    Myrtle's update is ema <- rho * ema + (1 - rho) * live with rho = momentum ** every,
    starting from the initial weights. We use the bias-corrected form instead: the k-th
    update mixes in live weights with weight (1 - rho) / (1 - rho ** k), so the EMA is a
    normalised average of the weights it has seen and holds none of the random initial
    weights. After the first hundred updates (a tenth of a full run) the two agree to
    1e-2 and then converge geometrically; on a smoke run of a few dozen steps only this
    form gives a usable model.
    """
    rho = momentum ** every
    updates = step // every + 1  # k: this is the k-th update when step % every == 0
    mix = jnp.where(step % every == 0, (1 - rho) / (1 - rho ** updates.astype(jnp.float32)), 0.0)
    return jax.tree.map(lambda e, p: e + mix * (p - e), ema, live)


def lookahead_alpha(done: jax.Array, total: int, decay: float, every: int) -> jax.Array:
    """airbench94's lookahead rate after step `done` of `total`: decay ** every x (done / total) ** 3.

    Near 0 early on (the slow copy follows the live weights), rising to decay ** every at the end."""
    return decay ** every * (done / total) ** 3


def lookahead_update(slow: Any, live: Any, done: jax.Array, total: int, decay: float, every: int) -> tuple[Any, Any]:
    """After step `done` (counted from 1): every `every` steps, slow <- alpha slow + (1 - alpha) live
    and the live weights restart from it; after the last step the live weights become the slow ones.
    Returns (slow, live)."""
    due = done % every == 0
    mix = jnp.where(due, 1 - lookahead_alpha(done, total, decay, every), 0.0)
    slow = jax.tree.map(lambda s, p: s + mix * (p - s), slow, live)
    reset = due | (done >= total)
    return slow, jax.tree.map(lambda s, p: jnp.where(reset, s, p), slow, live)


class LossScale(NamedTuple):
    """Dynamic loss scale for fp16: halve on overflow (and skip the step), double after a run of good steps."""

    scale: jax.Array
    good_steps: jax.Array

    @classmethod
    def create(cls, initial: float = 2.0 ** 15) -> "LossScale":
        return cls(jnp.asarray(initial, jnp.float32), jnp.asarray(0, jnp.int32))

    def adjust(self, grads_finite: jax.Array, period: int = 1000) -> "LossScale":
        grown = self.good_steps + 1 >= period
        scale = jnp.where(grads_finite, jnp.where(grown, self.scale * 2, self.scale),
                          jnp.maximum(self.scale / 2, 1.0))
        good = jnp.where(grads_finite & ~grown, self.good_steps + 1, 0)
        return LossScale(scale, good)


def all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))
