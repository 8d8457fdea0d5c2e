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


def least_confident(logits: jax.Array, count: int) -> jax.Array:
    """Indices of the `count` rows whose largest softmax probability is smallest."""
    confidence = jnp.max(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=-1)
    return jax.lax.top_k(-confidence, count)[1]


def selective_tta(apply: LogitsFn, tta: LogitsFn, images: jax.Array, fraction: float) -> tuple[jax.Array, jax.Array]:
    """(plain logits, selective-TTA logits) of `images`: `tta`'s logits replace the plain ones for the
    int(fraction x n) least confident images, as the record does; n and the fraction fix the shapes."""
    plain = apply(images)
    count = int(fraction * images.shape[0])
    if count == 0:
        return plain, plain
    chosen = least_confident(plain, count)
    return plain, plain.at[chosen].set(tta(images[chosen]).astype(plain.dtype))
