"""Curvature of a loss: Hessian-vector products, the top of the spectrum by Lanczos, and how much
of a vector lies in a given subspace. Pure functions; hvp and span_fraction run under jit, and
lanczos drives a jitted matvec from Python."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def hvp(loss: Callable[[Any], jax.Array], params: Any, vector: Any) -> Any:
    """H v for the Hessian H of `loss` at `params`, as a pytree like `params` (forward-over-reverse)."""
    return jax.jvp(jax.grad(loss), (params,), (vector,))[1]


def lanczos(matvec: Callable[[jax.Array], jax.Array], dim: int, iterations: int,
            key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Ritz values (descending) and unit Ritz vectors (rows, same order) of a symmetric operator.

    Runs `iterations` Lanczos steps from a random unit vector, re-orthogonalising every new
    vector against all earlier ones (twice: once is not enough in float32), so the Krylov
    basis stays orthonormal and no spurious copies of converged eigenvalues appear. The
    extreme Ritz values converge first: the top few are accurate long before `dim` steps.

    The loop runs in Python around `matvec` (jit it): XLA's CPU backend runs a network's
    Hessian-vector product more than ten times slower inside a compiled while loop.
    """
    if not 0 < iterations <= dim:
        raise ValueError(f"iterations must be in [1, dim={dim}], got {iterations}")
    start = jax.random.normal(key, (dim,), jnp.float32)
    basis = jnp.zeros((iterations + 1, dim), jnp.float32).at[0].set(start / jnp.linalg.norm(start))
    alphas, betas = [], []
    for j in range(iterations):
        basis, alpha, beta = _extend(basis, matvec(basis[j]), jnp.int32(j))
        alphas.append(alpha)
        betas.append(beta)
    alphas, betas = jnp.stack(alphas), jnp.stack(betas[:-1])
    values, vectors = jnp.linalg.eigh(jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1))  # ascending
    order = jnp.argsort(-values)
    return values[order], vectors[:, order].T @ basis[:iterations]


@functools.partial(jax.jit, donate_argnums=0)
def _extend(basis: jax.Array, w: jax.Array, j: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One Lanczos step after w = A basis[j]: alpha_j, beta_j, and basis[j + 1] set.

    Rows after j are still zero, so projecting on the whole basis removes the components along
    vectors 0..j only. A remainder at rounding level (against |A v|) means the Krylov space is
    invariant: beta and the next vector are zero, so later steps add zero Ritz values (with
    zero Ritz vectors) instead of noise.
    """
    alpha, scale = jnp.dot(w, basis[j]), jnp.linalg.norm(w)
    w = w - basis.T @ (basis @ w)
    w = w - basis.T @ (basis @ w)
    norm = jnp.linalg.norm(w)
    beta = jnp.where(norm > 1e-5 * scale, norm, 0.0)
    return basis.at[j + 1].set(jnp.where(beta > 0, w / jnp.maximum(beta, 1e-30), 0.0)), alpha, beta


def span_fraction(vectors: jax.Array, basis: jax.Array) -> jax.Array:
    """For each row of `vectors`, the fraction of its squared norm inside the span of the rows of `basis`.

    `basis` must have full row rank (k independent rows of dimension > k); QR makes it orthonormal.
    """
    q, _ = jnp.linalg.qr(basis.T)  # (dim, k), orthonormal columns spanning the rows of basis
    inside = jnp.sum(jnp.square(vectors @ q), axis=-1)
    return inside / jnp.sum(jnp.square(vectors), axis=-1)
