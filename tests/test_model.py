import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_resnet_speed import model, presets


@pytest.mark.parametrize("preset", sorted(presets.PRESETS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_output_shape_and_dtypes(preset, dtype):
    recipe = presets.get_preset(preset)
    net = model.ResNet9(recipe, model.scaled_widths(recipe, 0.125), dtype)
    x = jnp.zeros((4, 32, 32, 3))
    variables = net.init(jax.random.key(0), x, train=False)
    logits = net.apply(variables, x, train=False)
    assert logits.shape == (4, 10) and logits.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables["params"]))
    train_logits, updates = net.apply(variables, jnp.ones((16, 32, 32, 3)), train=True, mutable=["batch_stats"])
    assert train_logits.shape == (16, 10)
    assert set(updates) == {"batch_stats"}


@pytest.mark.parametrize("preset, expected", [
    # convs 3*64*9 + 64*128*9 + 2*128*128*9 + 128*256*9 + 256*512*9 + 2*512*512*9, linear 512*10,
    # BN scale and bias over 64+128+128+128+256+512+512+512 = 2240 channels.
    ("myrtle-resnet9", 1728 + 73728 + 294912 + 294912 + 1179648 + 4718592 + 5120 + 2 * 2240),
    # 1x1 conv 27*64 after the frozen whitening; BN biases only.
    ("myrtle-final", 1728 + 73728 + 294912 + 294912 + 1179648 + 4718592 + 5120 + 2240),
])
def test_parameter_count_at_full_width(preset, expected):
    recipe = presets.get_preset(preset)
    net = model.ResNet9(recipe, recipe.widths)
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    assert model.count_params(shapes["params"]) == expected


def test_ghost_batch_norm_normalises_each_split_on_its_own():
    x = np.random.default_rng(0).normal(3.0, 2.0, (8, 4, 4, 5)).astype(np.float32)
    x[4:] *= 10  # the two halves have very different statistics
    bn = model.GhostBatchNorm(num_splits=2, momentum=0.1, scale_frozen=True)
    variables = bn.init(jax.random.key(0), x, train=False)
    y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    expected_means, expected_vars = [], []
    for split in (x[:4], x[4:]):
        expected_means.append(split.mean(axis=(0, 1, 2)))
        expected_vars.append(split.var(axis=(0, 1, 2), ddof=1))
    expected = np.concatenate([(s - s.mean((0, 1, 2))) / np.sqrt(s.var((0, 1, 2)) + 1e-5) for s in (x[:4], x[4:])])
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    stats = updates["batch_stats"]
    np.testing.assert_allclose(stats["mean"], 0.1 * np.mean(expected_means, axis=0), rtol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * np.mean(expected_vars, axis=0), rtol=1e-5)
    # One split is ordinary batch norm: the result differs.
    plain = model.GhostBatchNorm(num_splits=1, scale_frozen=True).apply(variables, x, train=True, mutable=["batch_stats"])[0]
    assert not np.allclose(plain, y, atol=1e-2)


def correlated_images(n=200, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 32, 32, 1))
    smooth = (base + np.roll(base, 1, axis=1) + np.roll(base, 1, axis=2)) / 3  # neighbouring pixels correlate
    return (smooth + 0.3 * rng.normal(size=(n, 32, 32, 3))).astype(np.float32)


def test_whitening_maps_the_patch_covariance_to_about_the_identity():
    images = correlated_images()
    patches = np.asarray(model.extract_patches(jnp.asarray(images)), np.float64)
    assert patches.shape == (200 * 30 * 30, 27)
    covariance = np.cov(patches, rowvar=False)
    assert np.abs(covariance - np.eye(27)).max() > 0.2  # the input is far from white
    for eps, tolerance in ((1e-2, 0.15), (1e-6, 1e-3)):
        filters = np.asarray(model.patch_whitening_filters(jnp.asarray(images), eps), np.float64)
        bank = filters.transpose(3, 0, 1, 2).reshape(27, 27)
        whitened = bank @ covariance @ bank.T
        np.testing.assert_allclose(whitened, np.eye(27), atol=tolerance)


def test_whitening_filters_as_a_conv_equal_the_patch_projection():
    images = correlated_images(4)
    filters = model.patch_whitening_filters(jnp.asarray(images), 1e-2)
    out = jax.lax.conv_general_dilated(jnp.asarray(images), filters, (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    bank = np.asarray(filters).transpose(3, 0, 1, 2).reshape(27, 27)
    patches = np.asarray(model.extract_patches(jnp.asarray(images))).reshape(4, 30, 30, 27)
    np.testing.assert_allclose(out, patches @ bank.T, rtol=1e-4, atol=1e-4)


def test_switches_of_the_final_recipe_change_the_network():
    final = presets.get_preset("myrtle-final")
    x = jnp.asarray(correlated_images(2))
    variables = model.ResNet9(final, (8, 8, 8, 8)).init(jax.random.key(0), x, train=False)
    variables["constants"]["whitening"] = model.patch_whitening_filters(x, 1e-2)
    assert "scale" not in variables["params"]["prep"]["GhostBatchNorm_0"]  # frozen at 1
    relu = dataclasses.replace(final, activation="relu")
    a = model.ResNet9(final, (8, 8, 8, 8)).apply(variables, x, train=False)
    b = model.ResNet9(relu, (8, 8, 8, 8)).apply(variables, x, train=False)
    assert not np.allclose(a, b)
