"""Muon as airbench94_muon runs it: an optax GradientTransformation for conv filters.

optax.contrib.muon differs from this (bias-corrected momentum, 5 Newton-Schulz steps, a shape
scaling, no weight renormalisation), so the transformation is written here from the recipe:

    buf <- m buf + g;  d = g + m buf (Nesterov) or buf
    w   <- w sqrt(C_out) / |w|  -  lr(t) NS(d)

where NS is the quintic Newton-Schulz iteration that pushes every singular value of the filter
bank, as a C_out x (k k C_in) matrix, towards 1, and |w| is the Frobenius norm.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

# The quintic's coefficients: a steep slope at 0 (3.4445) lifts small singular values fast; the
# iteration does not converge to 1 but keeps them in a band around it.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
# hiverge's cifar10_speedrun (the 94% record) retuned them.
RECORD_NS_COEFFICIENTS = (3.4576, -4.7391, 2.0843)
NS_DTYPES = {"bf16": jnp.bfloat16, "fp16": jnp.float16, "fp32": jnp.float32}


def newton_schulz(matrix: jax.Array, steps: int, dtype: Any = jnp.bfloat16,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS) -> jax.Array:
    """The orthogonalised matrix, about U V^T of matrix = U S V^T, after `steps` quintic iterations in `dtype`."""
    a, b, c = coefficients
    x = matrix.astype(dtype)
    x = x / (jnp.linalg.norm(x) + 1e-7)  # every singular value <= 1
    tall = matrix.shape[0] > matrix.shape[1]
    if tall:  # iterate on the short side's Gram matrix
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).astype(matrix.dtype)


def orthogonalise_filters(kernel: jax.Array, steps: int, dtype: Any,
                          coefficients: tuple[float, float, float] = NS_COEFFICIENTS) -> jax.Array:
    """newton_schulz of an HWIO filter bank seen as C_out x (k k C_in) (the column order does not matter)."""
    out = kernel.shape[-1]
    return newton_schulz(kernel.reshape(-1, out).T, steps, dtype, coefficients).T.reshape(kernel.shape)


def batched_newton_schulz(matrices: Sequence[jax.Array], steps: int, dtype: Any = jnp.bfloat16,
                          coefficients: tuple[float, float, float] = NS_COEFFICIENTS) -> list[jax.Array]:
    """newton_schulz of each matrix, as one batched iteration over the matrices zero-padded to a common shape.

    Zero-padding is exact in exact arithmetic: with X = [[M, 0], [0, 0]], X X^T = [[M M^T, 0], [0, 0]],
    so every iterate keeps M's block and zeros elsewhere, and the Frobenius norm ignores the zeros.
    Iterating on X or on X^T is the same too ((X X^T) X = X (X^T X)), so the stack takes the cheaper
    side for all. Only the rounding of the products can differ from the per-matrix form.
    """
    a, b, c = coefficients
    rows = max(m.shape[0] for m in matrices)
    cols = max(m.shape[1] for m in matrices)
    x = jnp.stack([jnp.pad(m.astype(dtype), ((0, rows - m.shape[0]), (0, cols - m.shape[1]))) for m in matrices])
    x = x / (jnp.linalg.norm(x, axis=(1, 2), keepdims=True) + 1e-7)  # each matrix on its own
    tall = rows > cols
    if tall:
        x = x.swapaxes(1, 2)
    for _ in range(steps):
        gram = x @ x.swapaxes(1, 2)
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.swapaxes(1, 2)
    return [x[i, :m.shape[0], :m.shape[1]].astype(m.dtype) for i, m in enumerate(matrices)]


def orthogonalise_filter_stack(kernels: Sequence[jax.Array], steps: int, dtype: Any,
                               coefficients: tuple[float, float, float] = NS_COEFFICIENTS) -> list[jax.Array]:
    """orthogonalise_filters of every HWIO filter bank, by one batched_newton_schulz over all of them."""
    matrices = [k.reshape(-1, k.shape[-1]).T for k in kernels]
    return [m.T.reshape(k.shape) for m, k in zip(batched_newton_schulz(matrices, steps, dtype, coefficients), kernels)]


class MuonState(NamedTuple):
    count: jax.Array
    momentum: Any


def muon(learning_rate: optax.Schedule, momentum: float, nesterov: bool = True, ns_steps: int = 3,
         ns_dtype: str = "bf16", coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
         stacked: bool = False, renormalise_every: int = 1, weight_decay: float = 0.0,
         buffer_dtype: str = "fp32") -> optax.GradientTransformation:
    """airbench's Muon for 4-D (HWIO) conv filters; the updates it returns need the params.

    The record's form (`stacked`): one batched Newton-Schulz over every filter bank
    (orthogonalise_filter_stack), the renormalisation w sqrt(C_out) / (|w| + 1e-7) only at steps
    (from 1) that are multiples of `renormalise_every`, and after the update the decoupled weight
    decay w <- w (1 - lr(t) weight_decay). A momentum buffer in fp16 (`buffer_dtype`, the record's)
    rounds m buf from float32 to fp16, then adds g in fp16, as PyTorch's half ops do.
    """
    dtype = NS_DTYPES[ns_dtype]
    low_buffer = NS_DTYPES[buffer_dtype] if buffer_dtype != "fp32" else None

    def init(params):
        return MuonState(jnp.zeros((), jnp.int32), jax.tree.map(lambda p: jnp.zeros_like(p, low_buffer), params))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("muon renormalises the weights: pass params to update()")
        lr = learning_rate(state.count)
        if low_buffer is None:
            buffers = jax.tree.map(lambda b, g: momentum * b + g, state.momentum, grads)
            directions = (jax.tree.map(lambda g, b: g + momentum * b, grads, buffers) if nesterov
                          else buffers)
        else:
            buffers = jax.tree.map(lambda b, g: (b.astype(jnp.float32) * momentum).astype(low_buffer)
                                   + g.astype(low_buffer), state.momentum, grads)
            directions = jax.tree.map(lambda g, b: g + momentum * b.astype(jnp.float32) if nesterov
                                      else b.astype(jnp.float32), grads, buffers)

        if not stacked:
            def step(w, d):
                renormalised = w * (jnp.sqrt(w.shape[-1]) / jnp.linalg.norm(w))
                return renormalised - lr * orthogonalise_filters(d, ns_steps, dtype, coefficients) - w

            return jax.tree.map(step, params, directions), MuonState(state.count + 1, buffers)
        leaves, tree = jax.tree.flatten(directions)
        orthogonal = jax.tree.unflatten(tree, orthogonalise_filter_stack(leaves, ns_steps, dtype, coefficients))
        renormalise = (state.count + 1) % renormalise_every == 0

        def stacked_step(w, o):
            scale = jnp.where(renormalise, jnp.sqrt(w.shape[-1]) / (jnp.linalg.norm(w) + 1e-7), 1.0)
            return (w * scale - lr * o) * (1 - lr * weight_decay) - w

        return jax.tree.map(stacked_step, params, orthogonal), MuonState(state.count + 1, buffers)

    return optax.GradientTransformation(init, update)
