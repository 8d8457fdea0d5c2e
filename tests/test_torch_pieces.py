"""The PyTorch twins of the record's pieces (torch_pieces) against their JAX pieces, on the same inputs."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

from jax_resnet_speed import augment, muon, tta  # noqa: E402
from jax_resnet_speed import torch_pieces as tp  # noqa: E402
from jax_resnet_speed import torch_reference as tr  # noqa: E402

# Wide banks of several shapes (the stack is wide: 64 x 576) with one tall 1x1 bank among them, and
# a stack of tall banks only (32 x 8), so both sides of the iteration are exercised.
WIDE_STACK = [(3, 3, 24, 32), (3, 3, 32, 64), (3, 3, 64, 64), (1, 1, 8, 32)]
TALL_STACK = [(1, 1, 8, 32), (1, 1, 4, 16)]


def hwio_filters(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype(np.float32) for shape in shapes]


def to_oihw(kernel: np.ndarray) -> "torch.Tensor":
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def to_hwio(kernel: "torch.Tensor") -> np.ndarray:
    return kernel.float().numpy().transpose(2, 3, 1, 0).astype(np.float64)


def test_importing_the_torch_pieces_starts_no_jax():
    # On a GPU, importing JAX next to PyTorch would let it take most of the GPU's memory.
    probe = ("import sys, jax_resnet_speed.torch_pieces; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax')))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_coefficients_are_muons():
    assert tp.NS_COEFFICIENTS == muon.NS_COEFFICIENTS
    assert tp.RECORD_NS_COEFFICIENTS == muon.RECORD_NS_COEFFICIENTS


# ---------------------------------------------------------------------------- batched Newton-Schulz

@pytest.mark.parametrize("shapes", [WIDE_STACK, TALL_STACK], ids=["wide", "tall"])
@pytest.mark.parametrize("coefficients", [muon.NS_COEFFICIENTS, muon.RECORD_NS_COEFFICIENTS],
                         ids=["airbench", "record"])
def test_batched_newton_schulz_in_fp32_equals_jaxs(shapes, coefficients):
    kernels = hwio_filters(shapes)
    ours = tp.orthogonalise_filter_stack([to_oihw(k) for k in kernels], 3, torch.float32, coefficients)
    theirs = muon.orthogonalise_filter_stack([jnp.asarray(k) for k in kernels], 3, jnp.float32, coefficients)
    for kernel, out, expected in zip(kernels, ours, theirs):
        assert out.shape == to_oihw(kernel).shape and out.dtype == torch.float32
        # To fp32 rounding: the frameworks sum the products in different orders, and PyTorch's rows are
        # C_out x (C_in k k) where JAX's are C_out x (k k C_in), a permutation of the same columns. Measured
        # (2-core CPU, 2026-12-05): at most 3.9e-7 on elements up to 0.48, about 10 float32 ulps after three
        # quintic steps of sums over up to 2,304 terms; 2e-6, as test_muon allows the batched form, still
        # fails a wrong coefficient (they differ by 1e-2 and move the result by 1e-2).
        np.testing.assert_allclose(to_hwio(out), np.asarray(expected), rtol=0, atol=2e-6)


def test_batched_newton_schulz_equals_the_reference_trainers_per_filter_form():
    kernels = [to_oihw(k) for k in hwio_filters(WIDE_STACK, seed=1)]
    stacked = tp.orthogonalise_filter_stack(kernels, 3, torch.float32)
    for kernel, out in zip(kernels, stacked):
        single = tr.newton_schulz(kernel.reshape(len(kernel), -1), 3, torch.float32).view_as(kernel)
        # Zero-padding is exact; only the summation order differs (measured: at most 3.6e-7).
        torch.testing.assert_close(out, single, rtol=0, atol=2e-6)


# ------------------------------------------------------------------------------------------- Muon

def torch_steps(optimizer, params, grads, lrs):
    """The optimiser's steps, with the lr of each step set beforehand; the weights after each, as HWIO."""
    history = []
    for step_grads, lr in zip(grads, lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr
        for p, g in zip(params, step_grads):
            p.grad = to_oihw(g)
        optimizer.step()
        history.append([to_hwio(p.detach()) for p in params])
    return history


def muon_case(steps, seed=3):
    """Tiny filter banks (HWIO), a gradient for each at each step, and a varying lr."""
    shapes = [(3, 3, 4, 8), (3, 3, 8, 8), (3, 3, 8, 16), (1, 1, 16, 4)]
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=s).astype(np.float32) for s in shapes]
    grads = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(steps)]
    lrs = list(np.linspace(0.3, 0.1, steps))
    return weights, grads, lrs


def test_stacked_muon_with_airbenchs_settings_equals_jaxs_muon_and_the_reference_trainers():
    weights, grads, lrs = muon_case(steps=3)
    lr_at = jnp.asarray(lrs, jnp.float32)
    optimizer = muon.muon(lambda step: lr_at[step], momentum=0.6, nesterov=True, ns_steps=3, ns_dtype="fp32")
    params = [jnp.asarray(w) for w in weights]
    state, expected = optimizer.init(params), []

    @jax.jit
    def step(params, state, grads):
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for step_grads in grads:
        params, state = step(params, state, [jnp.asarray(g) for g in step_grads])
        expected.append([np.asarray(p, np.float64) for p in params])

    stacked = [torch.nn.Parameter(to_oihw(w)) for w in weights]
    ours = torch_steps(tp.StackedMuon(stacked, lr=0.0, momentum=0.6, ns_dtype=torch.float32), stacked, grads, lrs)
    per_filter = [torch.nn.Parameter(to_oihw(w)) for w in weights]
    reference = torch_steps(tr.Muon(per_filter, lr=0.0, momentum=0.6, nesterov=True, ns_steps=3,
                                    ns_dtype=torch.float32), per_filter, grads, lrs)
    for step in range(3):
        for ours_w, reference_w, expected_w in zip(ours[step], reference[step], expected[step]):
            # fp32 rounding of the Newton-Schulz and of weights below 0.8 (measured, 2-core CPU,
            # 2026-12-05: at most 2.7e-7 from JAX's after three steps; bitwise equal to the reference
            # trainer's per-filter Muon).
            np.testing.assert_allclose(ours_w, expected_w, rtol=0, atol=3e-6)
            np.testing.assert_allclose(ours_w, reference_w, rtol=0, atol=3e-6)


def record_muon_by_jax(weights, grads, lrs, momentum, weight_decay, every):
    """The record's Muon step written with muon.py's pieces, in JAX: an fp16 buffer (m buf rounded
    from float32, as PyTorch's half ops compute, then + g in fp16), d = g + m buf, one batched
    Newton-Schulz with the record's coefficients, renormalisation at steps every, 2 every, ...,
    then w - lr NS(d), then the decoupled weight decay w (1 - lr wd)."""

    @jax.jit
    def step(params, buffers, g, lr, renormalise):
        buffers = [(b.astype(jnp.float32) * momentum).astype(jnp.float16) + x.astype(jnp.float16)
                   for b, x in zip(buffers, g)]
        directions = [x + momentum * b.astype(jnp.float32) for x, b in zip(g, buffers)]
        updates = muon.orthogonalise_filter_stack(directions, 3, jnp.float32, muon.RECORD_NS_COEFFICIENTS)
        params = [jnp.where(renormalise, w * (np.sqrt(w.shape[-1]) / (jnp.linalg.norm(w) + 1e-7)), w)
                  for w in params]
        return [(w - lr * u) * (1 - lr * weight_decay) for w, u in zip(params, updates)], buffers

    params = [jnp.asarray(w) for w in weights]
    buffers = [jnp.zeros(w.shape, jnp.float16) for w in weights]
    history = []
    for count, (step_grads, lr) in enumerate(zip(grads, lrs), 1):
        params, buffers = step(params, buffers, [jnp.asarray(x) for x in step_grads], jnp.float32(lr),
                               count % every == 0)
        history.append([np.asarray(w, np.float64) for w in params])
    return history


def test_muon_in_the_records_form_equals_the_same_steps_written_out():
    """muon.muon with the recipe's record fields (stacked, every 8, decoupled weight decay, fp16 buffer)
    is record_muon_by_jax, the form StackedMuon is checked against below."""
    weights, grads, lrs = muon_case(steps=8, seed=4)
    expected = record_muon_by_jax(weights, grads, lrs, 0.655, 1.6002e-3, 8)
    transform = muon.muon(lambda count: jnp.asarray(lrs, jnp.float32)[count], 0.655, True, 3, "fp32",
                          muon.RECORD_NS_COEFFICIENTS, stacked=True, renormalise_every=8, weight_decay=1.6002e-3,
                          buffer_dtype="fp16")
    params = [jnp.asarray(w) for w in weights]
    state = transform.init(params)
    assert all(b.dtype == jnp.float16 for b in state.momentum)
    step = jax.jit(transform.update)
    for count, step_grads in enumerate(grads):
        updates, state = step([jnp.asarray(g) for g in step_grads], state, params)
        params = optax.apply_updates(params, updates)
        for ours, theirs in zip(params, expected[count]):
            np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0, atol=2e-6)


def test_stacked_muon_with_the_records_settings_equals_the_same_step_in_jax():
    # Eight steps, so that the renormalisation (only at step 8) and the fp16 buffer's rounding both show.
    weights, grads, lrs = muon_case(steps=8, seed=4)
    momentum, weight_decay, every = 0.655, 1.6002e-3, 8
    expected = record_muon_by_jax(weights, grads, lrs, momentum, weight_decay, every)
    params = [torch.nn.Parameter(to_oihw(w)) for w in weights]
    optimizer = tp.StackedMuon(params, lr=0.0, momentum=momentum, weight_decay=weight_decay,
                               ns_dtype=torch.float32, coefficients=tp.RECORD_NS_COEFFICIENTS,
                               renormalise_every=every, buffer_dtype=torch.float16)
    ours = torch_steps(optimizer, params, grads, lrs)
    assert all(optimizer.state[p]["momentum_buffer"].dtype == torch.float16 for p in params)
    for step in range(8):
        for ours_w, expected_w in zip(ours[step], expected[step]):
            # Measured (2-core CPU, 2026-12-05): at most 6.0e-7 on weights up to about 4; the same steps
            # with a float32 buffer are 2e-5 to 1.2e-4 away, without the weight decay 2e-3 to 1e-2, and
            # renormalising every step 3.6 (the N(0, 1) draws have norms of 4 to 9 sqrt(C_out)).
            np.testing.assert_allclose(ours_w, expected_w, rtol=0, atol=3e-6)
    # The renormalisation happened at step 8 and only there: until then the norms stay the draws' own.
    norms = [[np.linalg.norm(w) / np.sqrt(w.shape[-1]) for w in step] for step in ours]
    assert all(n > 4 for n in norms[6])
    # After it: sqrt(C_out) (1 - lr wd), moved by the update, so near 1 (measured 1.000 to 1.008).
    assert all(abs(n - 1) < 0.05 for n in norms[7])


# ---------------------------------------------------------------------------------- colour jitter

def jax_draws(key, batch, brightness, contrast):
    """augment.colour_jitter's own draws: the split of its key, one uniform each."""
    key_shift, key_scale = jax.random.split(key)
    shift = jax.random.uniform(key_shift, (batch,), minval=-brightness, maxval=brightness)
    scale = jax.random.uniform(key_scale, (batch,), minval=1 - contrast, maxval=1 + contrast)
    return np.array(shift), np.array(scale)  # writable copies, for torch.from_numpy


def test_colour_jitter_equals_jaxs_on_the_same_draws():
    brightness, contrast = 0.1399, 0.1308  # the record's ranges
    x = np.random.default_rng(5).normal(size=(16, 8, 8, 3)).astype(np.float32)
    key = jax.random.key(6)
    expected = np.asarray(augment.colour_jitter(key, jnp.asarray(x), brightness, contrast))
    shift, scale = jax_draws(key, 16, brightness, contrast)
    np.testing.assert_array_equal(augment.shift_and_scale(jnp.asarray(x), shift, scale), expected)  # its draws
    ours = tp.shift_and_scale(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(shift),
                              torch.from_numpy(scale))
    # One add and one multiply per element, each rounded once in float32 in both: bitwise equal.
    np.testing.assert_array_equal(ours.numpy().transpose(0, 2, 3, 1), expected)


def test_torch_colour_jitter_draws_one_shift_and_one_scale_per_image_within_the_ranges():
    brightness, contrast, n = 0.1399, 0.1308, 1000
    x = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).expand(n, 3, 1, 2)  # pixels 0 and 1 recover the draws
    out = tp.colour_jitter(x, brightness, contrast, torch.Generator().manual_seed(0)).double()
    scale = out[..., 1] - out[..., 0]
    shift = out[..., 0] / scale
    assert torch.allclose(scale, scale[:, :1]) and torch.allclose(shift, shift[:, :1])  # per image
    assert shift.abs().max() <= brightness + 1e-6 and (scale - 1).abs().max() <= contrast + 1e-6
    assert shift.min() < -0.9 * brightness and shift.max() > 0.9 * brightness
    assert (scale - 1).min() < -0.9 * contrast and (scale - 1).max() > 0.9 * contrast
    same = tp.colour_jitter(x, brightness, contrast, torch.Generator().manual_seed(0))
    assert torch.equal(same.double(), out)
    assert torch.equal(tp.colour_jitter(x, 0.0, 0.0), x)


# ------------------------------------------------------------------------------------ selective TTA

class TinyNet:
    """conv 3x3 (3 -> 8 channels, zero-padded) -> GELU -> spatial mean -> dense (8 -> 10), the same
    weights in both frameworks: a model whose logits change with the crop and the mirror."""

    def __init__(self, seed=7):
        rng = np.random.default_rng(seed)
        self.kernel = rng.normal(size=(3, 3, 3, 8)).astype(np.float32) / 3  # HWIO
        self.dense = rng.normal(size=(8, 10)).astype(np.float32)

    def jax(self, images):
        y = jax.lax.conv_general_dilated(images, jnp.asarray(self.kernel), (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.gelu(y, approximate=False).mean(axis=(1, 2)) @ jnp.asarray(self.dense)

    def torch(self, images):
        y = torch.nn.functional.conv2d(images, to_oihw(self.kernel), padding=1)
        return torch.nn.functional.gelu(y).mean(dim=(2, 3)) @ torch.from_numpy(self.dense)


@pytest.mark.parametrize("fraction", [0.2, 1.0, 0.01])
def test_selective_tta_equals_jaxs_on_the_same_model(fraction):
    net, n = TinyNet(), 40
    x = np.random.default_rng(8).normal(size=(n, 8, 8, 3)).astype(np.float32)
    jax_views = lambda v: tta.equal_weight_views(net.jax, v)  # noqa: E731
    plain, selective = tta.selective_tta(net.jax, jax_views, jnp.asarray(x), fraction)
    torch_views = lambda v: tp.equal_weight_views(net.torch, v)  # noqa: E731
    ours_plain, ours = tp.selective_tta(net.torch, torch_views, torch.from_numpy(x.transpose(0, 3, 1, 2)), fraction)
    count = int(fraction * n)
    if 0 < count < n:
        # The same images chosen: the confidences around the cut are further apart than rounding moves them.
        confidence = np.sort(np.asarray(jax.nn.softmax(plain)).max(-1))
        assert confidence[count] - confidence[count - 1] > 1e-4
        chosen = set(tta.least_confident(plain, count).tolist())
        assert set(tp.least_confident(ours_plain, count).tolist()) == chosen
    # float32 rounding of a conv summed in different orders: logits of O(1) agree to 1e-5.
    np.testing.assert_allclose(ours_plain.numpy(), plain, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours.numpy(), selective, rtol=0, atol=1e-5)
    replaced = np.abs(np.asarray(selective) - np.asarray(plain)).max(-1) > 0
    assert replaced.sum() == count  # the views changed exactly the chosen rows (none at int(0.01 x 40) = 0)
