"""The series' networks in Flax (Linen), built from their shape as data: ResNet-9 with every
switch of Myrtle's final recipe, the pre-activation ResNet-18 and post 4's search between them.

Parameters are float32; convolutions and the linear head compute in `dtype` (bf16, fp16
or fp32); batch-norm statistics and normalisation are float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_resnet_speed.presets import Network as NetworkSpec, Recipe
from jax_resnet_speed.settings import scaled_widths

# PyTorch's default conv/linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which the
# reference recipes were tuned with (Flax's default is LeCun normal).
torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


class GhostBatchNorm(nn.Module):
    """BatchNorm whose training statistics come from `num_splits` separate slices of the batch.

    Each slice of batch/num_splits consecutive images is normalised with its own mean and
    variance (small "ghost" batches regularise). Running statistics follow PyTorch: the
    unbiased variance, averaged over the slices, with momentum `momentum`. Statistics and
    normalisation run in `dtype` (float32 unless a recipe asks for the compute precision).
    """

    num_splits: int = 1
    momentum: float = 0.1
    epsilon: float = 1e-5
    scale_frozen: bool = False
    scale_init: str = "ones"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        channels = x.shape[-1]
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(channels, jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones(channels, jnp.float32))
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        x = x.astype(self.dtype)
        if train:
            splits = x.reshape(self.num_splits, -1, *x.shape[1:])
            mean = splits.mean(axis=(1, 2, 3), keepdims=True)
            var = jnp.square(splits - mean).mean(axis=(1, 2, 3), keepdims=True)
            y = ((splits - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
            if not self.is_initializing():
                count = splits[0].size // channels
                m = self.momentum
                batch_mean = mean.mean(axis=0).reshape(channels).astype(jnp.float32)
                unbiased = var.mean(axis=0).reshape(channels).astype(jnp.float32) * count / max(count - 1, 1)
                running_mean.value = (1 - m) * running_mean.value + m * batch_mean
                running_var.value = (1 - m) * running_var.value + m * unbiased
        else:
            y = (x - running_mean.value.astype(self.dtype)) * jax.lax.rsqrt(
                running_var.value.astype(self.dtype) + self.epsilon)
        if not self.scale_frozen:
            # PyTorch before 1.2 drew BN scales from U(0, 1); the early posts ran with that.
            init = nn.initializers.uniform(1.0) if self.scale_init == "uniform" else nn.initializers.ones
            y = y * self.param("scale", init, (channels,), jnp.float32).astype(self.dtype)
        return y + bias.astype(self.dtype)


def batch_norm(spec: NetworkSpec, train: bool, dtype: Any, name: str | None = None) -> GhostBatchNorm:
    """The recipe's batch norm; ghost splits apply only to training batches."""
    bn = spec.batch_norm
    return GhostBatchNorm(bn.ghost_splits if train else 1, bn.momentum, bn.eps, bn.scale_frozen, bn.scale_init,
                          jnp.float32 if bn.fp32 else dtype, name=name)


def activation(spec: NetworkSpec, x: jax.Array, kind: str | None = None) -> jax.Array:
    """The recipe's activation of x, or the one named `kind`."""
    kind = kind or spec.activation
    if kind == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if kind == "silu":
        return jax.nn.silu(x)
    return jax.nn.celu(x, spec.celu_alpha) if kind == "celu" else jax.nn.relu(x)


def dirac_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """PyTorch's default draw, then the first min(C_in, C_out) filters made the identity (HWIO)."""
    kh, kw, c_in, c_out = shape
    kernel = torch_default_init(key, shape, dtype)
    n = min(c_in, c_out)
    identity = jnp.zeros((kh, kw, c_in, n), dtype).at[kh // 2, kw // 2, jnp.arange(n), jnp.arange(n)].set(1)
    return kernel.at[..., :n].set(identity)


CONV_INITS = {"torch": torch_default_init, "dirac": dirac_init}


def conv(features: int, kernel: int, stride: int, dtype: Any, name: str | None = None,
         init: str = "torch") -> nn.Conv:
    # Symmetric padding k // 2, as PyTorch pads: "SAME" would pad a stride-2 conv on one side only.
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=[(kernel // 2, kernel // 2)] * 2,
                   use_bias=False, dtype=dtype, kernel_init=CONV_INITS[init], name=name)


class ConvBlock(nn.Module):
    """conv -> BN -> act (post-activation), with an optional 2x2 max-pool after the conv or at the end.

    Without `activate` it ends at the BN, in the BN's dtype (a residual adds to it, then activates).
    """

    features: int
    spec: NetworkSpec
    dtype: Any
    pool: bool = False
    kernel: int = 3
    stride: int = 1
    activate: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        s = self.spec
        x = conv(self.features, self.kernel, self.stride, self.dtype, init=s.conv_init)(x)
        # Pooling before BN (Myrtle post 8) normalises 4x fewer activations.
        if self.pool and s.stages.pool_before_bn:
            x = nn.max_pool(x, (2, 2), (2, 2))
        if s.batch_norm.enabled:
            x = batch_norm(s, train, self.dtype)(x, train)
        if not self.activate:
            return x
        x = activation(s, x).astype(self.dtype)
        if self.pool and not s.stages.pool_before_bn:
            x = nn.max_pool(x, (2, 2), (2, 2))
        return x


class Residual(nn.Module):
    """x + two post-activation conv blocks of x (without the x when the spec has no shortcut)."""

    features: int
    spec: NetworkSpec
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        branch = ConvBlock(self.features, self.spec, self.dtype)(x, train)
        branch = ConvBlock(self.features, self.spec, self.dtype)(branch, train)
        return x + branch if self.spec.stages.shortcut else branch


class PreActBlock(nn.Module):
    """The pre-activation basic block: o = act(bn1(x)); conv2(act(bn2(conv1(o)))) + shortcut.

    The shortcut is x itself, or a strided 1x1 conv of o where the shape changes.
    """

    features: int
    spec: NetworkSpec
    dtype: Any
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        s = self.spec
        o = activation(s, batch_norm(s, train, self.dtype, "bn1")(x, train)).astype(self.dtype)
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = conv(self.features, 1, self.stride, self.dtype, "shortcut")(o)
        else:
            shortcut = x
        y = conv(self.features, 3, self.stride, self.dtype, "conv1")(o)
        y = activation(s, batch_norm(s, train, self.dtype, "bn2")(y, train)).astype(self.dtype)
        return conv(self.features, 3, 1, self.dtype, "conv2")(y) + shortcut


class Network(nn.Module):
    """Every network of the series, built from its shape (presets.Network); the default is ResNet-9.

    Names: the stem is `prep` (airbench's whitening stem: the constant `whitening` and the
    parameter `whitening_bias`); stage i's post-activation conv is `layer{i}`, its further conv
    units `layer{i}_conv2`, ..., and its residual blocks `res{i}`, `res{i}_2`, ...; its pre-activation blocks are `layer{i}_1`, `layer{i}_2`,
    ...; the head is `classifier`.
    """

    spec: NetworkSpec
    widths: tuple[int, ...]
    dtype: Any = jnp.float32
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        s, dtype = self.spec, self.dtype
        stem_width, *stage_widths = self.widths
        x = x.astype(dtype)
        if s.stem.kind == "whitening":
            # Frozen PCA-whitening filters live in their own collection: never trained.
            filters = self.variable("constants", "whitening", jnp.zeros, (3, 3, 3, 27), jnp.float32)
            x = jax.lax.conv_general_dilated(
                x, filters.value.astype(dtype), (1, 1), "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = ConvBlock(stem_width, s, dtype, kernel=1, name="prep")(x, train)
        elif s.stem.kind == "whitening-bias":
            # airbench: frozen whitening filters and their negations (so the activation after them
            # loses no direction), unpadded, plus a bias that trains for the first epochs only.
            filters = self.variable("constants", "whitening", jnp.zeros, whitening_shape(s), jnp.float32)
            x = jax.lax.conv_general_dilated(
                x, filters.value.astype(dtype), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            bias = self.param("whitening_bias", whitening_bias_init(s), (x.shape[-1],), jnp.float32)
            x = activation(s, x + bias.astype(dtype), s.stem.activation).astype(dtype)
        elif s.stem.bn:
            x = ConvBlock(stem_width, s, dtype, name="prep")(x, train)
        else:
            x = conv(stem_width, 3, 1, dtype, "prep")(x)
        stages = s.stages
        layout = zip(stage_widths, stages.downsamples, stages.residual_blocks)
        for i, (width, downsamples, blocks) in enumerate(layout, 1):
            if stages.block == "pre-act":
                for j in range(blocks):
                    stride = 2 if downsamples and j == 0 else 1
                    x = PreActBlock(width, s, dtype, stride, name=f"layer{i}_{j + 1}")(x, train)
                continue
            pool = downsamples and stages.downsample == "maxpool"
            stride = 2 if downsamples and not pool else 1
            kernel = 1 if stages.downsample == "conv1x1" else 3
            x = ConvBlock(width, s, dtype, pool=pool, kernel=kernel, stride=stride, name=f"layer{i}")(x, train)
            first = x
            for j in range(2, stages.convs + 1):
                last = j == stages.convs and stages.residual_over_last
                x = ConvBlock(width, s, dtype, activate=not last, name=f"layer{i}_conv{j}")(x, train)
            if stages.residual_over_last:
                x = activation(s, x + first).astype(dtype)
            for j in range(blocks):
                x = Residual(width, s, dtype, name=f"res{i}" if j == 0 else f"res{i}_{j + 1}")(x, train)
        features = jnp.max(x, axis=(1, 2))
        if s.head.pool == "avg+max":
            features = jnp.concatenate([jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(dtype), features], -1)
        bound = 1 / np.sqrt(features.shape[-1])  # PyTorch's bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        head_init = unit_std(torch_default_init) if s.head.init == "unit-std" else torch_default_init
        x = nn.Dense(self.num_classes, use_bias=s.head.bias, dtype=dtype, kernel_init=head_init,
                     bias_init=uniform_init(bound), name="classifier")(features)
        return x.astype(jnp.float32) * s.head.logit_scale


def for_recipe(recipe: Recipe, width_mult: float = 1.0, dtype: Any = jnp.float32) -> Network:
    """The recipe's network, every width scaled by `width_mult`."""
    return Network(recipe.network, scaled_widths(recipe.network, width_mult), dtype)


def uniform_init(bound: float) -> Callable:
    """U(-bound, bound), float32."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def unit_std(init: Callable) -> Callable:
    """`init`'s draw divided by its own standard deviation."""
    def scaled(key, shape, dtype=jnp.float32):
        value = init(key, shape, dtype)
        return value / jnp.std(value)

    return scaled


def whitening_bias_init(spec: NetworkSpec) -> Callable:
    """The whitening stem's bias init: zeros, or PyTorch's conv default over its 3 k k inputs."""
    if spec.stem.bias_init == "torch":
        return uniform_init(1 / np.sqrt(3 * spec.stem.whitening_kernel ** 2))
    return nn.initializers.zeros


def whitening_shape(spec: NetworkSpec) -> tuple[int, int, int, int]:
    """HWIO shape of the frozen whitening filters: one per patch dimension, and their negations for airbench's."""
    k = spec.stem.whitening_kernel
    return (k, k, 3, (2 if spec.stem.kind == "whitening-bias" else 1) * k * k * 3)


def whitening_filters(spec: NetworkSpec, images: jax.Array) -> jax.Array:
    """The stem's frozen filters from normalised NHWC training images (the recipe's first few thousand)."""
    filters = patch_whitening_filters(images, spec.stem.whitening_eps, spec.stem.whitening_kernel)
    return jnp.concatenate([filters, -filters], axis=-1) if spec.stem.kind == "whitening-bias" else filters


def patch_whitening_filters(images: jax.Array, eps: float, kernel: int = 3) -> jax.Array:
    """k x k x 3 -> 3 k k conv filters that whiten k x k image patches (HWIO, float32).

    Rows of the filter bank are the eigenvectors of the patch covariance, each scaled by
    1/sqrt(eigenvalue + eps), so the covariance of the outputs is diag(l / (l + eps)):
    about the identity for every direction with variance well above eps. As in Page's code
    (and airbench's) the covariance is of the raw patches, not re-centred: the images are
    already normalised to zero mean per channel. It is X^T X / (n - 1); airbench divides by n,
    a relative difference of 1/n (2e-7 for its 4.8 million patches).
    """
    patches = extract_patches(images.astype(jnp.float32), kernel)
    dims = patches.shape[1]
    covariance = patches.T @ patches / (patches.shape[0] - 1)
    eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]  # largest first
    bank = eigenvectors.T / jnp.sqrt(eigenvalues + eps)[:, None]  # (dims out, dims patch)
    return bank.reshape(dims, kernel, kernel, 3).transpose(1, 2, 3, 0)


def extract_patches(images: jax.Array, kernel: int = 3) -> jax.Array:
    """Every valid k x k patch of NHWC images, flattened in (kh, kw, c) order: (P, k k c)."""
    n, h, w, c = images.shape
    k = kernel
    rows = [images[:, dy:h - k + 1 + dy, dx:w - k + 1 + dx, :] for dy in range(k) for dx in range(k)]
    return jnp.stack(rows, axis=3).reshape(-1, k * k * c)


def count_params(params: Any) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
