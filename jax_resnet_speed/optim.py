"""Optimiser pieces: lr schedule, SGD with per-group multipliers, loss, EMA, loss scaling."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_resnet_speed.presets import Recipe


def lr_schedule(recipe: Recipe, steps_per_epoch: int) -> optax.Schedule:
    """Myrtle-unit learning rate (before the /batch_size) at a step, piecewise linear in epochs."""
    epoch_points = np.array([e for e, _ in recipe.optimiser.lr_knots], np.float32)
    lr_points = np.array([lr for _, lr in recipe.optimiser.lr_knots], np.float32)

    def schedule(step):
        return jnp.interp(step / steps_per_epoch, epoch_points, lr_points)

    return schedule


def param_groups(params: Any) -> Any:
    """'bn_bias' for BatchNorm biases, 'weights' for the rest: kernels, BN scales and the head's bias.

    Convolutions have no biases, so every bias outside the `classifier` head is a BN bias.
    """
    def label(path, _):
        return "bn_bias" if path[-1].key == "bias" and path[-2].key != "classifier" else "weights"

    return jax.tree_util.tree_map_with_path(label, params)


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
                   hyper: Hyper | None = None) -> optax.GradientTransformation:
    """SGD with Nesterov momentum and coupled weight decay, on a loss summed over the batch.

    BN biases get lr x bn_bias_lr_mult and wd x bn_bias_wd_mult. `hyper` (default: the
    recipe's) may hold traced values; the optimiser state does not depend on them.
    """
    o = recipe.optimiser
    if hyper is None:
        hyper = Hyper.of(recipe)

    def sgd(lr_mult: float, wd_mult: float) -> optax.GradientTransformation:
        return nesterov_sgd(lambda step: schedule(step) * hyper.lr_scale * lr_mult / batch_size,
                            hyper.weight_decay * batch_size * wd_mult, hyper.momentum, o.nesterov, o.update)

    return optax.multi_transform(
        {"weights": sgd(1.0, 1.0), "bn_bias": sgd(o.bn_bias_lr_mult, o.bn_bias_wd_mult)},
        param_groups,
    )


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
    return jax.tree_util.tree_map(lambda e, p: e + mix * (p - e), ema, live)


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
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))
