import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax_resnet_speed import muon


def random_matrix(rows, cols, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(rows, cols)), jnp.float32)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("rows, cols", [(64, 576), (576, 64)])
def test_newton_schulz_singular_values_lie_in_a_band_around_one(rows, cols, dtype):
    g = random_matrix(rows, cols)
    singular = np.linalg.svd(np.asarray(g), compute_uv=False)
    assert singular.max() / singular.min() > 1.8  # the input's spread
    out = muon.newton_schulz(g, steps=3, dtype=muon.NS_DTYPES[dtype])
    assert out.shape == g.shape and out.dtype == g.dtype
    s = np.linalg.svd(np.asarray(out, np.float64), compute_uv=False)
    # Three quintic steps from a Frobenius-normalised start: every singular value in [0.6, 1.25].
    assert 0.6 < s.min() and s.max() < 1.25, (s.min(), s.max())
    # The direction is the orthogonal factor U V^T of the input.
    u, _, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
    polar = u @ vt
    cosine = np.sum(polar * np.asarray(out, np.float64)) / (np.linalg.norm(polar) * np.linalg.norm(out))
    assert cosine > 0.98


def numpy_newton_schulz(matrix, steps=3):
    """By hand, in float64: X / |X|, then X <- a X + (b A + c A^2) X with A = X X^T, on the wide side."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = matrix / (np.linalg.norm(matrix) + 1e-7)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def test_muon_two_steps_by_hand():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)  # HWIO: 4 filters of 3 x 3 x 2
    grads = [rng.normal(size=w.shape).astype(np.float32) for _ in range(2)]
    lrs = [0.24, 0.12]
    optimizer = muon.muon(lambda step: jnp.asarray(lrs)[step], momentum=0.6, nesterov=True, ns_steps=3, ns_dtype="fp32")
    params = {"conv": jnp.asarray(w)}
    state = optimizer.init(params)
    expected, buf = w.astype(np.float64), np.zeros(w.shape)
    for g, lr in zip(grads, lrs):
        updates, state = optimizer.update({"conv": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
        buf = 0.6 * buf + g
        direction = (g + 0.6 * buf).reshape(-1, 4).T  # C_out x (k k C_in)
        expected = expected * (2.0 / np.linalg.norm(expected))  # renormalised to sqrt(C_out)
        expected = expected - lr * numpy_newton_schulz(direction).T.reshape(w.shape)
        np.testing.assert_allclose(params["conv"], expected, rtol=2e-5, atol=2e-5)
    assert int(state.count) == 2


def test_muon_needs_the_params():
    optimizer = muon.muon(lambda step: 0.1, momentum=0.6)
    params = {"conv": jnp.ones((3, 3, 2, 4))}
    with pytest.raises(ValueError, match="pass params"):
        optimizer.update(params, optimizer.init(params))


# airbench94's filter banks (HWIO) and a tall 1x1 bank (32 x 8 as a matrix), so the stack mixes
# shapes and orientations.
FILTER_SHAPES = [(3, 3, 24, 64), (3, 3, 64, 64), (3, 3, 64, 256), (3, 3, 256, 256), (1, 1, 8, 32)]


def random_filters(seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in FILTER_SHAPES]


@pytest.mark.parametrize("coefficients", [muon.NS_COEFFICIENTS, muon.RECORD_NS_COEFFICIENTS])
def test_batched_newton_schulz_over_padded_filters_equals_the_per_filter_form_in_fp32(coefficients):
    kernels = random_filters()
    batched = muon.orthogonalise_filter_stack(kernels, 3, jnp.float32, coefficients)
    for kernel, out in zip(kernels, batched):
        single = muon.orthogonalise_filters(kernel, 3, jnp.float32, coefficients)
        assert out.shape == kernel.shape and out.dtype == kernel.dtype
        # Zero-padding is exact; only the order of the products' sums differs (elements are O(0.1)).
        np.testing.assert_allclose(out, single, rtol=0, atol=2e-6)


def test_batched_newton_schulz_in_bf16_agrees_with_the_per_filter_form_to_bf16_rounding():
    kernels = random_filters(1)
    batched = muon.orthogonalise_filter_stack(kernels, 3, jnp.bfloat16, muon.RECORD_NS_COEFFICIENTS)
    for kernel, out in zip(kernels, batched):
        single = np.asarray(muon.orthogonalise_filters(kernel, 3, jnp.bfloat16, muon.RECORD_NS_COEFFICIENTS))
        exact = np.asarray(muon.orthogonalise_filters(kernel, 3, jnp.float32, muon.RECORD_NS_COEFFICIENTS))
        # The two bf16 forms differ by rounding only: no more than each differs from the fp32 result.
        scale = np.abs(exact).max()
        assert np.abs(np.asarray(out) - single).max() <= 2 * np.abs(single - exact).max() + 1e-3 * scale


def test_batched_newton_schulz_by_hand_on_two_small_matrices():
    # A 1 x 2 and a 2 x 1 matrix: each is a rank-one matrix with singular value 1 after normalising,
    # and the quintic maps a singular value s to a s + b s^3 + c s^5, three times.
    a, b, c = muon.NS_COEFFICIENTS
    s = 1.0
    for _ in range(3):
        s = a * s + b * s ** 3 + c * s ** 5
    row, column = jnp.asarray([[3.0, 4.0]]), jnp.asarray([[0.0], [2.0]])
    out_row, out_column = muon.batched_newton_schulz([row, column], 3, jnp.float32)
    np.testing.assert_allclose(out_row, s * np.array([[0.6, 0.8]]), rtol=1e-5)
    np.testing.assert_allclose(out_column, s * np.array([[0.0], [1.0]]), rtol=1e-5)
