import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jax_resnet_speed import augment, tta


def toy_logits(images):
    """Two classes: the mean of the image's left half, and of its right half; 2-D logits per image."""
    half = images.shape[2] // 2
    return jnp.stack([images[:, :, :half].mean(axis=(1, 2, 3)), images[:, :, half:].mean(axis=(1, 2, 3))], -1)


def test_equal_weight_views_average_six_views_alike():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8, 8, 2)), jnp.float32)
    padded = np.asarray(augment.reflect_pad(x, 1))
    views = [np.asarray(x), padded[:, :8, :8], padded[:, 2:10, 2:10]]
    views += [v[:, :, ::-1] for v in views]
    expected = np.mean([np.asarray(toy_logits(jnp.asarray(v))) for v in views], axis=0)
    np.testing.assert_allclose(tta.equal_weight_views(toy_logits, x, 1), expected, rtol=1e-5, atol=1e-6)


def test_selective_tta_replaces_only_the_least_confident_rows():
    # Five images whose plain logits are set by hand: margins 4, 0.125, 2, 0.5, 3 between the classes,
    # so the two least confident (fraction 0.4 -> 2 images) are images 1 and 3.
    margins = np.array([4.0, 0.125, 2.0, 0.5, 3.0], np.float32)
    x = jnp.asarray(np.arange(5, dtype=np.float32)[:, None])

    def plain(images):
        m = jnp.asarray(margins)[images[:, 0].astype(jnp.int32)]
        return jnp.stack([m, jnp.zeros_like(m)], -1)

    def views(images):  # a stand-in for the 6 views: marks each row with -(its index)
        return jnp.stack([-images[:, 0], 10 + images[:, 0]], -1)

    logits, selective = jax.jit(lambda x: tta.selective_tta(plain, views, x, 0.4))(x)
    expected = np.stack([margins, np.zeros(5)], -1)
    np.testing.assert_array_equal(logits, expected)
    expected[1], expected[3] = [-1.0, 11.0], [-3.0, 13.0]
    np.testing.assert_array_equal(selective, expected)


def test_selective_tta_at_fraction_one_is_full_tta_and_at_zero_is_plain():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 8, 8, 3)), jnp.float32)
    full = tta.equal_weight_views(toy_logits, x)
    _, all_views = tta.selective_tta(toy_logits, lambda v: tta.equal_weight_views(toy_logits, v), x, 1.0)
    np.testing.assert_allclose(all_views, full, rtol=1e-6, atol=1e-7)
    plain, none = tta.selective_tta(toy_logits, lambda v: tta.equal_weight_views(toy_logits, v), x, 0.1)
    np.testing.assert_array_equal(none, plain)  # int(0.1 x 6) = 0 images get the views


def test_replace_least_confident_skips_ineligible_rows_and_runs_in_chunks():
    plain = jnp.asarray([[4.0, 0], [0.1, 0], [2.0, 0], [0.0, 0], [3.0, 0]])
    images = jnp.arange(5, dtype=jnp.float32)[:, None]
    calls = []

    def views(x):
        calls.append(x.shape[0])
        return jnp.stack([-x[:, 0], jnp.zeros_like(x[:, 0])], -1)

    eligible = jnp.asarray([True, True, True, False, True])  # row 3 (the least confident) is padding
    out = tta.replace_least_confident(plain, views, images, 3, eligible, chunk=2)
    expected = np.array(plain)
    expected[[1, 2, 4], 0] = [-1.0, -2.0, -4.0]
    np.testing.assert_array_equal(out, expected)
    assert calls == [2]  # traced once by lax.map, two chunks of 2 (the second repeats a chosen row)


def test_evaluation_with_selective_tta_at_fraction_one_is_full_tta_and_near_zero_plain():
    """train's evaluate: labels set to the full TTA's predictions, so TTA gets every image right; selective
    TTA over all of them does too, and over none is the plain pass (which misses some)."""
    from conftest import make_learnable
    from jax_resnet_speed import data as data_lib, model, presets, train

    recipe = presets.get_preset("airbench94")
    images, labels = make_learnable(64, seed=3)  # the untrained net's TTA changes 3 of its predictions
    config = train.RunConfig(recipe, "fp32", 0.0625)
    net = model.for_recipe(recipe, 0.0625)
    dataset = data_lib.in_memory(images, labels, images, labels, np.full(3, 0.5), np.full(3, 0.25))
    data = train.put_on_device(dataset, recipe, jnp.float32)
    x = data.test_images[0]
    variables = net.init(jax.random.key(0), x[:1], train=False)
    variables = {**variables, "constants": {"whitening": model.whitening_filters(recipe.network, x)}}
    apply = lambda v: net.apply(variables, v, train=False)  # noqa: E731
    plain, full = train.logits_with_tta(apply, x, 1)
    labels = jnp.argmax(full, -1)[None].astype(jnp.int32)
    plain_correct = int(jnp.sum(jnp.argmax(plain, -1) == labels[0]))
    assert plain_correct < 64

    def sums(fraction):
        config_f = dataclasses.replace(config, recipe=recipe.replace(**{"evaluation.tta_selective_fraction": fraction}))
        evaluate = train.build_programs(config_f, data).evaluate
        return np.asarray(evaluate(variables, data.test_images, labels))

    np.testing.assert_array_equal(sums(1.0)[:2], [plain_correct, 64])
    np.testing.assert_array_equal(sums(0.01)[:2], [plain_correct, plain_correct])  # int(0.01 x 64) = 0 images
