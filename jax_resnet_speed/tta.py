"""Test-time augmentation forms that take the logits function, so evaluation can use them under jit.

`train.logits_with_tta` keeps airbench's weighted 6 views; here are the record's (hiverge's
cifar10_speedrun) equal-weight 6 views and its selective TTA: one plain pass over every image,
then the 6 views only for the least confident fraction, whose logits they replace.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jax_resnet_speed import augment

LogitsFn = Callable[[jax.Array], jax.Array]


def equal_weight_views(apply: LogitsFn, images: jax.Array, shift: int = 1) -> jax.Array:
    """The mean of the logits of 6 views, weighted alike: the image and its crops `shift` pixels
    up-left and down-right of its reflect-padding, each as is and mirrored."""
    size = images.shape[1]
    padded = augment.reflect_pad(images, shift)
    views = [images, padded[:, :size, :size], padded[:, 2 * shift:2 * shift + size, 2 * shift:2 * shift + size]]
    views += [v[:, :, ::-1] for v in views]
    return jnp.mean(jnp.stack([apply(v) for v in views]), axis=0)


def least_confident(logits: jax.Array, count: int, eligible: jax.Array | None = None) -> jax.Array:
    """Indices of the `count` rows whose largest softmax probability is smallest, among the `eligible` ones."""
    confidence = jnp.max(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=-1)
    if eligible is not None:
        confidence = jnp.where(eligible, confidence, jnp.inf)
    return jax.lax.top_k(-confidence, count)[1]


def replace_least_confident(plain: jax.Array, tta: LogitsFn, images: jax.Array, count: int,
                            eligible: jax.Array | None = None, chunk: int | None = None) -> jax.Array:
    """`plain` with the rows of the `count` least confident (`eligible`) images replaced by `tta`'s logits,
    which run `chunk` images at a time (the last chunk filled with repeats of the first image chosen)."""
    if count == 0:
        return plain
    chosen = least_confident(plain, count, eligible)
    chunk = min(chunk or count, count)
    chunks = -(-count // chunk)
    chosen = jnp.concatenate([chosen, jnp.repeat(chosen[:1], chunks * chunk - count)]).reshape(chunks, chunk)
    logits = jax.lax.map(lambda rows: tta(images[rows]).astype(plain.dtype), chosen)
    return plain.at[chosen.reshape(-1)].set(logits.reshape(-1, plain.shape[-1]))


def selective_tta(apply: LogitsFn, tta: LogitsFn, images: jax.Array, fraction: float) -> tuple[jax.Array, jax.Array]:
    """(plain logits, selective-TTA logits) of `images`: `tta`'s logits replace the plain ones for the
    int(fraction x n) least confident images, as the record does; n and the fraction fix the shapes."""
    plain = apply(images)
    return plain, replace_least_confident(plain, tta, images, int(fraction * images.shape[0]))
