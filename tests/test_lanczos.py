import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_resnet_speed.experiments import lanczos


def nonlinear_loss(params):
    """A small non-quadratic function of a pytree: its Hessian couples every leaf."""
    w, b = params["w"], params["inner"]["b"]
    return jnp.sum(jnp.tanh(w @ b) ** 2) + jnp.sum(jnp.sin(w) * w) + jnp.sum(jnp.cos(b)) * jnp.sum(w ** 2)


def test_hvp_matches_finite_differences_of_the_gradient():
    keys = jax.random.split(jax.random.key(0), 4)
    params = {"w": jax.random.normal(keys[0], (3, 4)), "inner": {"b": jax.random.normal(keys[1], (4,))}}
    vector = {"w": jax.random.normal(keys[2], (3, 4)), "inner": {"b": jax.random.normal(keys[3], (4,))}}
    exact = lanczos.hvp(nonlinear_loss, params, vector)
    grad = jax.grad(nonlinear_loss)
    # Central differences: truncation O(h^2) and float32 rounding O(1e-7 / h) balance near h = 1e-3,
    # where both are ~1e-3 against entries of size ~20.
    h = 1e-3
    shifted = [jax.tree_util.tree_map(lambda p, v: p + sign * h * v, params, vector) for sign in (1, -1)]
    numeric = jax.tree_util.tree_map(lambda plus, minus: (plus - minus) / (2 * h), grad(shifted[0]), grad(shifted[1]))
    assert jax.tree_util.tree_structure(exact) == jax.tree_util.tree_structure(params)
    for e, n in zip(jax.tree_util.tree_leaves(exact), jax.tree_util.tree_leaves(numeric)):
        np.testing.assert_allclose(e, n, rtol=1e-3, atol=1e-2)


def symmetric_matrix(spectrum: np.ndarray, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(spectrum), len(spectrum))))
    return (q * spectrum) @ q.T


def test_lanczos_finds_the_top_eigenvalues_and_eigenvectors():
    dim = 50
    spectrum = np.concatenate([[40.0, 25.0, 12.0, 6.0], np.random.default_rng(1).uniform(-1, 1, dim - 4)])
    matrix = symmetric_matrix(spectrum, seed=2)
    matvec = jax.jit(lambda v: jnp.asarray(matrix, jnp.float32) @ v)
    values, vectors = lanczos.lanczos(matvec, dim, 30, jax.random.key(3))
    assert values.shape == (30,) and vectors.shape == (30, dim)
    assert np.all(np.diff(values) <= 0)
    np.testing.assert_allclose(values[:4], [40.0, 25.0, 12.0, 6.0], rtol=1e-4)
    # Each top Ritz vector is a unit eigenvector: A v = lambda v.
    np.testing.assert_allclose(np.linalg.norm(vectors[:4], axis=1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(vectors[:4] @ matrix, values[:4, None] * vectors[:4], atol=1e-3)


def test_lanczos_stops_cleanly_on_an_invariant_subspace():
    """A rank-3 matrix: after 3 steps the Krylov space is invariant; the rest are zeros, not noise."""
    matrix = symmetric_matrix(np.array([5.0, 3.0, 2.0] + [0.0] * 17), seed=4)
    values, _ = lanczos.lanczos(lambda v: jnp.asarray(matrix, jnp.float32) @ v, 20, 10, jax.random.key(5))
    np.testing.assert_allclose(values[:3], [5.0, 3.0, 2.0], rtol=1e-4)
    np.testing.assert_allclose(values[3:], 0.0, atol=1e-4)


def test_lanczos_rejects_more_iterations_than_dimensions():
    with pytest.raises(ValueError, match="iterations"):
        lanczos.lanczos(lambda v: v, 5, 6, jax.random.key(0))


def test_span_fraction():
    basis = jnp.array([[1.0, 1.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]])  # spans e1, e2; not orthonormal
    vectors = jnp.array([
        [3.0, -1.0, 0.0, 0.0],  # inside
        [0.0, 0.0, 0.0, 2.0],  # orthogonal
        [1.0, 0.0, 2.0, 0.0],  # 1 of its 5 squared units inside
    ])
    np.testing.assert_allclose(lanczos.span_fraction(vectors, basis), [1.0, 0.0, 0.2], atol=1e-6)
