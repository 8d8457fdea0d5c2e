"""Augmentation on the device, per batch, inside jit.

Images arrive normalised and already reflect-padded (done once for the whole training set),
so a random crop is a cheap per-image dynamic slice.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def reflect_pad(images: jax.Array, padding: int) -> jax.Array:
    """Pad NHWC images on H and W by mirroring, as Myrtle does once before training."""
    if padding == 0:
        return images
    return jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode="reflect")


def random_crop(key: jax.Array, padded: jax.Array, size: int) -> jax.Array:
    """One random `size` x `size` window from each padded image."""
    batch, height, width, _ = padded.shape
    key_y, key_x = jax.random.split(key)
    ys = jax.random.randint(key_y, (batch,), 0, height - size + 1)
    xs = jax.random.randint(key_x, (batch,), 0, width - size + 1)

    def crop_one(image, y, x):
        return jax.lax.dynamic_slice(image, (y, x, 0), (size, size, image.shape[-1]))

    return jax.vmap(crop_one)(padded, ys, xs)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Mirror each image left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


# The fold_in tag of the alternating flip's stream: far beyond any step number, which tags the
# per-step augmentation streams.
FLIP_STREAM = 2**31 - 1
JITTER_STREAM = 2**31 - 2  # the colour jitter's, folded in before the step number


def alternating_flip(key: jax.Array, images: jax.Array, idx: jax.Array, epoch: jax.Array) -> jax.Array:
    """airbench's flip: image i (of the training set) is mirrored by its own coin (`key`, i),
    negated on odd epochs, so each image is seen both ways in every two epochs."""
    coins = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(key, i)))(idx)
    flip = coins ^ (epoch % 2 == 1)
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def cutout(key: jax.Array, images: jax.Array, size: int) -> jax.Array:
    """Zero one `size` x `size` square per image, placed wholly inside the image."""
    batch, height, width, _ = images.shape
    key_y, key_x = jax.random.split(key)
    ys = jax.random.randint(key_y, (batch, 1, 1, 1), 0, height - size + 1)
    xs = jax.random.randint(key_x, (batch, 1, 1, 1), 0, width - size + 1)
    rows = jnp.arange(height)[None, :, None, None]
    cols = jnp.arange(width)[None, None, :, None]
    inside = (rows >= ys) & (rows < ys + size) & (cols >= xs) & (cols < xs + size)
    return jnp.where(inside, jnp.zeros((), images.dtype), images)


def shift_and_scale(images: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """(images + shift) x scale, with one shift and one scale per image (shapes (batch,))."""
    return (images + shift[:, None, None, None]) * scale[:, None, None, None]


def colour_jitter(key: jax.Array, images: jax.Array, brightness: float, contrast: float) -> jax.Array:
    """hiverge's brightness and contrast jitter on normalised images, one draw per image: add a
    shift uniform in [-brightness, brightness], then multiply by a factor uniform in
    [1 - contrast, 1 + contrast]. The factor scales about 0, the dataset's mean after normalisation,
    not about each image's own mean."""
    key_shift, key_scale = jax.random.split(key)
    batch = images.shape[0]
    shift = jax.random.uniform(key_shift, (batch,), minval=-brightness, maxval=brightness)
    scale = jax.random.uniform(key_scale, (batch,), minval=1 - contrast, maxval=1 + contrast)
    return shift_and_scale(images, shift.astype(images.dtype), scale.astype(images.dtype))


def augment(key: jax.Array, padded: jax.Array, size: int, flip: bool, cutout_size: int) -> jax.Array:
    """Crop, then flip, then cutout: Myrtle's order."""
    key_crop, key_flip, key_cut = jax.random.split(key, 3)
    images = random_crop(key_crop, padded, size)
    if flip:
        images = random_flip(key_flip, images)
    if cutout_size:
        images = cutout(key_cut, images, cutout_size)
    return images


def epoch_batches(key: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """A fresh permutation cut into full batches: (steps, batch_size) indices.

    The last partial batch is dropped, as Myrtle does, so every step has the same shape.
    """
    steps = num_examples // batch_size
    order = jax.random.permutation(key, num_examples)
    return order[: steps * batch_size].reshape(steps, batch_size)
