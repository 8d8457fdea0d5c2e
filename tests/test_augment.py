import jax
import jax.numpy as jnp
import numpy as np

from jax_resnet_speed import augment


def images(n=16, size=32, channels=3):
    return jnp.asarray(np.random.default_rng(0).normal(size=(n, size, size, channels)), jnp.float32)


def test_reflect_pad_mirrors_without_repeating_the_edge():
    x = images(2)
    padded = augment.reflect_pad(x, 4)
    assert padded.shape == (2, 40, 40, 3)
    np.testing.assert_array_equal(padded[:, 4:36, 4:36], x)
    np.testing.assert_array_equal(padded[:, 3, 4:36], x[:, 1])  # reflect, not edge
    np.testing.assert_array_equal(padded, np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect"))


def test_random_crop_returns_windows_of_the_padded_image_at_varied_offsets():
    x = images(32)
    padded = augment.reflect_pad(x, 4)
    crops = np.asarray(augment.random_crop(jax.random.key(1), padded, 32))
    assert crops.shape == (32, 32, 32, 3)
    offsets = set()
    for i in range(32):
        found = [(y, x0) for y in range(9) for x0 in range(9)
                 if np.array_equal(crops[i], np.asarray(padded[i, y:y + 32, x0:x0 + 32]))]
        assert found, f"crop {i} is not a window of its padded image"
        offsets.add(found[0])
    assert len(offsets) > 10


def test_random_flip_mirrors_about_half_of_the_images():
    x = images(400)
    flipped = np.asarray(augment.random_flip(jax.random.key(2), x))
    same = np.all(flipped == np.asarray(x), axis=(1, 2, 3))
    mirrored = np.all(flipped == np.asarray(x)[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same ^ mirrored)
    assert 150 < mirrored.sum() < 250


def test_cutout_zeroes_one_square_inside_each_image():
    ones = jnp.ones((64, 32, 32, 3))
    out = np.asarray(augment.cutout(jax.random.key(3), ones, 8))
    for image in out:
        zero = np.all(image == 0, axis=-1)
        assert zero.sum() == 64
        ys, xs = np.nonzero(zero)
        assert ys.max() - ys.min() == 7 and xs.max() - xs.min() == 7
        assert np.all(image[~zero] == 1)


def test_epoch_batches_are_a_permutation_without_the_last_partial_batch():
    batches = np.asarray(augment.epoch_batches(jax.random.key(4), 1000, 128))
    assert batches.shape == (7, 128)
    assert len(np.unique(batches)) == 7 * 128
    assert batches.min() >= 0 and batches.max() < 1000
    other = np.asarray(augment.epoch_batches(jax.random.key(5), 1000, 128))
    assert not np.array_equal(batches, other)


def test_same_key_same_augmentation():
    padded = augment.reflect_pad(images(8), 4)
    a = augment.augment(jax.random.key(7), padded, 32, flip=True, cutout_size=8)
    b = augment.augment(jax.random.key(7), padded, 32, flip=True, cutout_size=8)
    c = augment.augment(jax.random.key(8), padded, 32, flip=True, cutout_size=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_alternating_flip_mirrors_exactly_the_complement_on_odd_epochs():
    x, key = images(64), jax.random.key(3)
    idx = jnp.arange(64)
    mirrored = x[:, :, ::-1]
    flipped = [np.asarray(jnp.all(augment.alternating_flip(key, x, idx, jnp.int32(epoch)) == mirrored, axis=(1, 2, 3)))
               for epoch in range(4)]
    kept = [np.asarray(jnp.all(augment.alternating_flip(key, x, idx, jnp.int32(epoch)) == x, axis=(1, 2, 3)))
            for epoch in range(4)]
    assert np.all(flipped[0] ^ kept[0])  # every image is either mirrored or kept whole
    assert 16 < flipped[0].sum() < 48  # a coin per image
    np.testing.assert_array_equal(flipped[1], ~flipped[0])  # odd epochs: exactly the complement
    np.testing.assert_array_equal(flipped[2], flipped[0])  # even epochs: the first epoch's choice
    np.testing.assert_array_equal(flipped[3], flipped[1])
    # The coin belongs to the image, not to its place in the batch.
    order = jnp.arange(64)[::-1]
    reordered = augment.alternating_flip(key, x[order], order, jnp.int32(0))
    np.testing.assert_array_equal(reordered, augment.alternating_flip(key, x, idx, jnp.int32(0))[order])


def test_shift_and_scale_by_hand():
    x = jnp.asarray([[[[1.0, -2.0]]], [[[0.5, 0.0]]]])  # two 1 x 1 images of 2 channels
    out = augment.shift_and_scale(x, jnp.asarray([0.1, -0.5]), jnp.asarray([0.9, 1.2]))
    np.testing.assert_allclose(out, [[[[0.99, -1.71]]], [[[0.0, -0.6]]]], rtol=1e-6, atol=1e-7)


def test_colour_jitter_is_the_identity_at_zero_strength():
    x = images(8)
    np.testing.assert_array_equal(augment.colour_jitter(jax.random.key(0), x, 0.0, 0.0), x)


def test_colour_jitter_draws_one_shift_and_one_scale_per_image_within_the_ranges():
    brightness, contrast = 0.1399, 0.1308  # the record's ranges
    n = 2000
    # Two constant pixels per image, 0 and 1, recover the draws: out(0) = shift x scale, out(1) = (1 + shift) x scale.
    x = jnp.broadcast_to(jnp.asarray([0.0, 1.0])[None, None, :, None], (n, 1, 2, 3))
    out = np.asarray(augment.colour_jitter(jax.random.key(1), x, brightness, contrast), np.float64)
    scale = out[:, 0, 1, :] - out[:, 0, 0, :]
    shift = out[:, 0, 0, :] / scale
    assert np.allclose(scale, scale[:, :1], atol=1e-6) and np.allclose(shift, shift[:, :1], atol=1e-6)  # per image
    scale, shift = scale[:, 0], shift[:, 0]
    assert np.all(np.abs(shift) <= brightness + 1e-6) and np.all(np.abs(scale - 1) <= contrast + 1e-6)
    # Uniform: the draws fill their ranges, centred, with the variance of a uniform (range^2 / 3).
    assert shift.min() < -0.95 * brightness and shift.max() > 0.95 * brightness
    assert abs(shift.mean()) < 0.01 and abs(scale.mean() - 1) < 0.01
    np.testing.assert_allclose(shift.var(), brightness ** 2 / 3, rtol=0.1)
    np.testing.assert_allclose(scale.var(), contrast ** 2 / 3, rtol=0.1)
    assert abs(np.corrcoef(shift, scale)[0, 1]) < 0.1  # independent draws
    other = augment.colour_jitter(jax.random.key(2), x, brightness, contrast)
    assert not np.array_equal(out, np.asarray(other, np.float64))
