import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_jitted

from jax_resnet_speed import model, presets


def build(preset, width_mult=0.125, dtype=jnp.float32):
    recipe = presets.get_preset(preset)
    return model.for_recipe(recipe, width_mult, dtype)


@pytest.mark.parametrize("preset", ["myrtle-final", "myrtle-resnet9", "post1-baseline", "post4-arch-1-shortcuts"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_output_shape_and_dtypes(preset, dtype):
    net = build(preset, dtype=dtype)
    x = jnp.zeros((4, 32, 32, 3))
    variables = run_jitted(lambda key, x: net.init(key, x, train=False), jax.random.key(0), x)
    logits = run_jitted(lambda v, x: net.apply(v, x, train=False), variables, x)
    assert logits.shape == (4, 10) and logits.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables["params"]))
    train_logits, updates = run_jitted(lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"]),
                                        variables, jnp.ones((16, 32, 32, 3)))
    assert train_logits.shape == (16, 10)
    assert set(updates) == {"batch_stats"}


def conv(c_in, c_out, k=3):
    return c_in * c_out * k * k


def bn(channels, scale=True):
    return (2 if scale else 1) * channels


# ResNet-9: convs 3->64, 64->128, two 128->128, 128->256, 256->512, two 512->512; linear 512->10
# without bias; BN over 64+128+128+128+256+512+512+512 = 2240 channels.
RESNET9_CONVS = conv(3, 64) + conv(64, 128) + 2 * conv(128, 128) + conv(128, 256) + conv(256, 512) + 2 * conv(512, 512)


def preact_block(c_in, c_out, downsamples=False):
    """bn1 over the input, two 3x3 convs, bn2, and a 1x1 projection where the shape changes."""
    shortcut = conv(c_in, c_out, 1) if c_in != c_out or downsamples else 0
    return bn(c_in) + conv(c_in, c_out) + bn(c_out) + conv(c_out, c_out) + shortcut


@pytest.mark.parametrize("preset, expected", [
    ("myrtle-resnet9", RESNET9_CONVS + 512 * 10 + bn(2240)),
    # The 3x3 stem conv becomes a 1x1 conv 27->64 after the frozen whitening; BN biases only.
    ("myrtle-final", RESNET9_CONVS - conv(3, 64) + conv(27, 64, 1) + 512 * 10 + bn(2240, scale=False)),
    # Pre-activation ResNet-18: a bare 3x3 stem conv, four stages of two blocks (64, 128, 256,
    # 256 wide; the last three downsample with a 1x1 shortcut on their first block), and a
    # linear head with bias over the average- and max-pooled features (256 + 256).
    ("post1-baseline", conv(3, 64) + 2 * preact_block(64, 64) + preact_block(64, 128, True) + preact_block(128, 128)
     + preact_block(128, 256, True) + preact_block(256, 256) + preact_block(256, 256, True) + preact_block(256, 256)
     + 2 * 256 * 10 + 10),
    # The search's first row: stem conv-BN-ReLU, three stride-2 1x1 conv-BN-ReLU units.
    ("post4-arch-1-shortcuts", conv(3, 64) + bn(64) + conv(64, 128, 1) + bn(128) + conv(128, 256, 1) + bn(256)
     + conv(256, 256, 1) + bn(256) + 2 * 256 * 10 + 10),
    ("post4-arch-2-conv3x3", conv(3, 64) + conv(64, 128) + conv(128, 256) + conv(256, 256) + bn(64 + 128 + 256 + 256)
     + 2 * 256 * 10 + 10),
    ("post4-arch-5-bn-scale", conv(3, 64) + conv(64, 128) + conv(128, 256) + conv(256, 512) + bn(64 + 128 + 256 + 512)
     + 512 * 10),
])
def test_parameter_count_at_full_width(preset, expected):
    net = build(preset, width_mult=1.0)
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    assert model.count_params(shapes["params"]) == expected


def test_resnet9_keeps_its_parameter_names():
    shapes = jax.eval_shape(lambda: build("myrtle-resnet9").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                                                  train=False))
    params = shapes["params"]
    assert set(params) == {"prep", "layer1", "res1", "layer2", "layer3", "res3", "classifier"}
    assert set(params["layer1"]) == {"Conv_0", "GhostBatchNorm_0"}
    assert set(params["res3"]) == {"ConvBlock_0", "ConvBlock_1"}
    assert set(params["res3"]["ConvBlock_1"]["GhostBatchNorm_0"]) == {"scale", "bias"}
    assert set(params["classifier"]) == {"kernel"}


def stage_outputs(net, x):
    """Each top-level module's output shape, from Flax's captured intermediates."""
    variables = run_jitted(lambda key, x: net.init(key, x, train=False), jax.random.key(0), x)
    _, state = run_jitted(lambda v, x: net.apply(v, x, train=False, capture_intermediates=True,
                                                  mutable=["intermediates"]), variables, x)
    return {name: value["__call__"][0].shape for name, value in state["intermediates"].items() if name != "__call__"}


def test_preact_resnet18_stage_shapes_and_shortcuts():
    net = build("post1-baseline", width_mult=0.25)  # widths 16; 16, 32, 64, 64
    shapes = stage_outputs(net, jnp.zeros((2, 32, 32, 3)))
    assert shapes["prep"] == (2, 32, 32, 16)
    assert shapes["layer1_2"] == (2, 32, 32, 16)  # stage 1 keeps the resolution
    assert shapes["layer2_2"] == (2, 16, 16, 32)
    assert shapes["layer3_2"] == (2, 8, 8, 64)
    assert shapes["layer4_2"] == (2, 4, 4, 64)
    assert shapes["classifier"] == (2, 10)
    params = run_jitted(lambda key, x: net.init(key, x, train=False), jax.random.key(0),
                         jnp.zeros((1, 32, 32, 3)))["params"]
    assert "shortcut" not in params["layer1_1"] and "shortcut" in params["layer2_1"]
    assert "shortcut" not in params["layer2_2"]
    assert set(params["classifier"]) == {"kernel", "bias"}
    assert set(params["prep"]) == {"kernel"}  # a bare conv: the first block applies BN-ReLU
    # PyTorch 0.4's BN init: scales drawn from U(0, 1), biases zero.
    scales = np.asarray(params["layer3_1"]["bn1"]["scale"])
    assert ((0 <= scales) & (scales < 1)).all() and scales.std() > 0.1


@pytest.mark.parametrize("preset, layer1", [
    ("post4-arch-1-shortcuts", (2, 16, 16, 32)),  # stride-2 1x1 conv
    ("post4-arch-2-conv3x3", (2, 16, 16, 32)),  # stride-2 3x3 conv
    ("post4-arch-3-maxpool", (2, 16, 16, 32)),  # 3x3 conv, then max-pool
])
def test_search_rows_downsample_their_own_way(preset, layer1):
    net = build(preset, width_mult=0.25)
    shapes = stage_outputs(net, jnp.zeros((2, 32, 32, 3)))
    assert shapes["layer1"] == layer1 and shapes["layer3"] == (2, 4, 4, 64)
    kernel = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
                            )["params"]["layer1"]["Conv_0"]["kernel"]
    assert kernel.shape[:2] == ((1, 1) if preset.endswith("shortcuts") else (3, 3))


def test_avg_max_head_concatenates_both_pools():
    spec = presets.get_preset("post4-arch-1-shortcuts").network
    net = model.Network(spec, (4, 4, 4, 4))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    variables = net.init(jax.random.key(0), x, train=False)
    _, state = net.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
    last = state["intermediates"]["layer3"]["__call__"][0]
    features = np.concatenate([last.mean(axis=(1, 2)), last.max(axis=(1, 2))], -1)
    head = variables["params"]["classifier"]
    expected = features @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
    np.testing.assert_allclose(net.apply(variables, x, train=False), expected * spec.head.logit_scale,
                               rtol=1e-5, atol=1e-6)


def test_bn_in_the_compute_precision_when_asked():
    spec = presets.get_preset("post1-baseline").network
    assert not spec.batch_norm.fp32
    x = jnp.ones((4, 4, 4, 3), jnp.bfloat16)
    for fp32, expected in ((False, jnp.bfloat16), (True, jnp.float32)):
        bn_spec = dataclasses.replace(spec, batch_norm=dataclasses.replace(spec.batch_norm, fp32=fp32))
        bn_module = model.batch_norm(bn_spec, True, jnp.bfloat16)
        variables = bn_module.init(jax.random.key(0), x, train=False)
        y, updates = bn_module.apply(variables, x, train=True, mutable=["batch_stats"])
        assert y.dtype == expected and updates["batch_stats"]["mean"].dtype == jnp.float32


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
    # Page's covariance: the raw patches' second moments, not re-centred.
    covariance = patches.T @ patches / (len(patches) - 1)
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
    final = presets.get_preset("myrtle-final").network
    x = jnp.asarray(correlated_images(2))
    variables = model.Network(final, (8, 8, 8, 8)).init(jax.random.key(0), x, train=False)
    variables["constants"]["whitening"] = model.patch_whitening_filters(x, 1e-2)
    assert "scale" not in variables["params"]["prep"]["GhostBatchNorm_0"]  # frozen at 1
    relu = dataclasses.replace(final, activation="relu")
    a = model.Network(final, (8, 8, 8, 8)).apply(variables, x, train=False)
    b = model.Network(relu, (8, 8, 8, 8)).apply(variables, x, train=False)
    assert not np.allclose(a, b)


AIRBENCH = presets.get_preset("airbench94").network


def test_airbench_whitening_filters_whiten_2x2_patches_and_come_with_their_negations():
    images = correlated_images(100)
    filters = np.asarray(model.whitening_filters(AIRBENCH, jnp.asarray(images)), np.float64)
    assert filters.shape == (2, 2, 3, 24) == model.whitening_shape(AIRBENCH)
    np.testing.assert_array_equal(filters[..., 12:], -filters[..., :12])
    patches = np.asarray(model.extract_patches(jnp.asarray(images), 2), np.float64)
    assert patches.shape == (100 * 31 * 31, 12)
    covariance = patches.T @ patches / (len(patches) - 1)
    assert np.abs(covariance - np.eye(12)).max() > 0.2  # the input is far from white
    bank = filters[..., :12].transpose(3, 0, 1, 2).reshape(12, 12)
    eigenvalues = np.linalg.eigvalsh(covariance)[::-1]
    # Output covariance diag(l / (l + eps)): white to within eps / l in every direction.
    np.testing.assert_allclose(bank @ covariance @ bank.T, np.diag(eigenvalues / (eigenvalues + 5e-4)), atol=1e-4)
    assert eigenvalues.min() > 100 * 5e-4  # so every direction is white to 1%


def test_dirac_init_passes_the_first_channels_through():
    kernel = model.dirac_init(jax.random.key(0), (3, 3, 4, 6))
    x = jnp.asarray(correlated_images(2)[..., :1].repeat(4, axis=-1) * np.arange(1, 5))
    out = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(out[..., :4], x, rtol=1e-6)  # the first C_in filters are the identity
    assert np.abs(np.asarray(kernel[..., 4:])).max() > 0  # the others keep PyTorch's draw
    narrow = model.dirac_init(jax.random.key(0), (3, 3, 6, 4))  # fewer out than in: all four are identities
    np.testing.assert_array_equal(np.asarray(narrow).sum(axis=(0, 1)), np.eye(6, 4))


@pytest.mark.parametrize("preset, drawn", [("airbench94", False), ("airbench94-muon", True)])
def test_whitening_bias_starts_at_zero_or_at_pytorchs_default_draw(preset, drawn):
    """airbench94_muon's whitening conv is a plain nn.Conv2d: its bias starts at U(+-1/sqrt(3 x 2 x 2))."""
    net = model.for_recipe(presets.get_preset(preset), width_mult=0.0625)
    bias = np.asarray(run_jitted(lambda key, x: net.init(key, x, train=False), jax.random.key(0),
                                  jnp.zeros((2, 32, 32, 3)))["params"]["whitening_bias"])
    assert bias.shape == (24,)
    if drawn:
        assert np.all(np.abs(bias) < 1 / np.sqrt(12)) and np.ptp(bias) > 0.25  # spread over the range, not zero
    else:
        assert np.all(bias == 0)


def test_airbench96_groups_have_three_convs_and_the_same_parameters_as_without_the_residual():
    recipe = presets.get_preset("airbench96")
    shapes = jax.eval_shape(lambda: model.for_recipe(recipe).init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)),
                                                                  train=False))
    params = shapes["params"]
    assert [name for name in params if name.startswith("layer")] == [
        f"layer{i}{suffix}" for i in (1, 2, 3) for suffix in ("", "_conv2", "_conv3")]
    assert params["layer3_conv3"]["Conv_0"]["kernel"].shape == (3, 3, 512, 512)
    # legacy/airbench96.py's net: the whitening bias, 3 convs per group of (128, 384, 512), their BN
    # biases (weights frozen), and the 512 x 10 head; the residual's add has no parameters.
    convs = 24 * 128 * 9 + 2 * 128 * 128 * 9 + 128 * 384 * 9 + 2 * 384 * 384 * 9 + 384 * 512 * 9 + 2 * 512 * 512 * 9
    assert model.count_params(params) == 24 + convs + 3 * (128 + 384 + 512) + 512 * 10 == 9_915_416
    plain = recipe.replace(**{"network.stages.residual_over_last": False})
    assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, jax.eval_shape(
        lambda: model.for_recipe(plain).init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False)))


def test_airbench_network_shape():
    net = model.for_recipe(presets.get_preset("airbench94"))
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(lambda: net.init(jax.random.key(0), x, train=False))
    # The paper's "about 2M parameters": 24 + 13,824 + 36,864 + 147,456 + 3 x 589,824 + 2,560 weights + 1,152 BN biases.
    assert model.count_params(variables["params"]) == 1_971_352
    assert variables["constants"]["whitening"].shape == (2, 2, 3, 24)
    assert "scale" not in variables["params"]["layer1"]["GhostBatchNorm_0"]  # BN weights frozen at 1
    assert model.scaled_widths(AIRBENCH, 0.25) == (24, 16, 64, 64)  # the whitening stem's width stays
    muon_net = model.for_recipe(presets.get_preset("airbench94-muon"), width_mult=0.25)
    head = run_jitted(lambda key, x: muon_net.init(key, x, train=False), jax.random.key(0), x
                       )["params"]["classifier"]["kernel"]
    assert float(jnp.std(head)) == pytest.approx(1.0, rel=1e-5)  # airbench94_muon's head: unit std
