"""ResNet-9 in Flax (Linen), with every switch of Myrtle's final recipe.

Parameters are float32; convolutions and the linear head compute in `dtype` (bf16, fp16
or fp32); batch-norm statistics and normalisation are float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_resnet_speed.presets import Recipe

# PyTorch's default conv/linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which the
# reference recipes were tuned with (Flax's default is LeCun normal).
torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


class GhostBatchNorm(nn.Module):
    """BatchNorm whose training statistics come from `num_splits` separate slices of the batch.

    Each slice of batch/num_splits consecutive images is normalised with its own mean and
    variance (small "ghost" batches regularise). Running statistics follow PyTorch: the
    unbiased variance, averaged over the slices, with momentum `momentum`.
    """

    num_splits: int = 1
    momentum: float = 0.1
    epsilon: float = 1e-5
    scale_frozen: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        channels = x.shape[-1]
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(channels, jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones(channels, jnp.float32))
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        x = x.astype(jnp.float32)
        if train:
            splits = x.reshape(self.num_splits, -1, *x.shape[1:])
            mean = splits.mean(axis=(1, 2, 3), keepdims=True)
            var = jnp.square(splits - mean).mean(axis=(1, 2, 3), keepdims=True)
            y = ((splits - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
            if not self.is_initializing():
                count = splits[0].size // channels
                m = self.momentum
                running_mean.value = (1 - m) * running_mean.value + m * mean.mean(axis=0).reshape(channels)
                unbiased = var.mean(axis=0).reshape(channels) * count / max(count - 1, 1)
                running_var.value = (1 - m) * running_var.value + m * unbiased
        else:
            y = (x - running_mean.value) * jax.lax.rsqrt(running_var.value + self.epsilon)
        if not self.scale_frozen:
            y = y * self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        return y + bias


class ConvBlock(nn.Module):
    """conv3x3 -> BN -> act, with an optional 2x2 max-pool after the conv or at the end."""

    features: int
    recipe: Recipe
    dtype: Any
    pool: bool = False
    kernel: int = 3

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        r = self.recipe
        x = nn.Conv(self.features, (self.kernel, self.kernel), padding="SAME", use_bias=False,
                    dtype=self.dtype, kernel_init=torch_default_init)(x)
        # Pooling before BN (Myrtle post 8) normalises 4x fewer activations.
        if self.pool and r.pool_before_bn:
            x = nn.max_pool(x, (2, 2), (2, 2))
        x = GhostBatchNorm(r.ghost_bn_splits if train else 1, r.bn_momentum, r.bn_eps, r.bn_scale_frozen)(x, train)
        x = jax.nn.celu(x, r.celu_alpha) if r.activation == "celu" else jax.nn.relu(x)
        x = x.astype(self.dtype)
        if self.pool and not r.pool_before_bn:
            x = nn.max_pool(x, (2, 2), (2, 2))
        return x


class Residual(nn.Module):
    features: int
    recipe: Recipe
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        branch = ConvBlock(self.features, self.recipe, self.dtype)(x, train)
        branch = ConvBlock(self.features, self.recipe, self.dtype)(branch, train)
        return x + branch


class ResNet9(nn.Module):
    recipe: Recipe
    widths: tuple[int, int, int, int]
    dtype: Any = jnp.float32
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        r, (w0, w1, w2, w3) = self.recipe, self.widths
        x = x.astype(self.dtype)
        if r.whitening:
            # Frozen PCA-whitening filters live in their own collection: never trained.
            filters = self.variable("constants", "whitening", jnp.zeros, (3, 3, 3, 27), jnp.float32)
            x = jax.lax.conv_general_dilated(
                x, filters.value.astype(self.dtype), (1, 1), "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = ConvBlock(w0, r, self.dtype, kernel=1, name="prep")(x, train)
        else:
            x = ConvBlock(w0, r, self.dtype, name="prep")(x, train)
        x = ConvBlock(w1, r, self.dtype, pool=True, name="layer1")(x, train)
        x = Residual(w1, r, self.dtype, name="res1")(x, train)
        x = ConvBlock(w2, r, self.dtype, pool=True, name="layer2")(x, train)
        x = ConvBlock(w3, r, self.dtype, pool=True, name="layer3")(x, train)
        x = Residual(w3, r, self.dtype, name="res3")(x, train)
        x = jnp.max(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype, kernel_init=torch_default_init,
                     name="classifier")(x)
        return x.astype(jnp.float32) * r.logit_scale


def scaled_widths(recipe: Recipe, width_mult: float) -> tuple[int, int, int, int]:
    return tuple(max(1, round(w * width_mult)) for w in recipe.widths)  # type: ignore[return-value]


def patch_whitening_filters(images: jax.Array, eps: float) -> jax.Array:
    """3x3x3 -> 27 conv filters that whiten 3x3 image patches (HWIO, float32).

    Rows of the filter bank are the eigenvectors of the patch covariance, each scaled by
    1/sqrt(eigenvalue + eps), so the covariance of the outputs is diag(l / (l + eps)):
    about the identity for every direction with variance well above eps.
    """
    patches = extract_patches(images.astype(jnp.float32))
    centred = patches - patches.mean(axis=0)
    covariance = centred.T @ centred / (patches.shape[0] - 1)
    eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]  # largest first
    bank = eigenvectors.T / jnp.sqrt(eigenvalues + eps)[:, None]  # (27 out, 27 patch)
    return bank.reshape(27, 3, 3, 3).transpose(1, 2, 3, 0)


def extract_patches(images: jax.Array) -> jax.Array:
    """Every valid 3x3 patch of NHWC images, flattened in (kh, kw, c) order: (P, 27)."""
    n, h, w, c = images.shape
    rows = [images[:, dy:h - 2 + dy, dx:w - 2 + dx, :] for dy in range(3) for dx in range(3)]
    return jnp.stack(rows, axis=3).reshape(-1, 9 * c)


def count_params(params: Any) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
