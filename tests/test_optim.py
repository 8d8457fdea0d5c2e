import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax_resnet_speed import optim, presets


def test_schedule_values_at_the_knots():
    final = presets.get_preset("myrtle-final")
    schedule = optim.lr_schedule(final, steps_per_epoch=97)
    for epoch, lr in [(0, 0.0), (1, 0.5), (2, 1.0), (5, 0.55), (8, 0.1), (10, 0.1)]:
        assert float(schedule(epoch * 97)) == pytest.approx(lr, abs=1e-6)


def test_schedule_stretches_with_the_run_length():
    post4 = presets.get_preset("myrtle-resnet9").with_epochs(2)
    assert np.allclose(post4.lr_knots, ((0, 0.0), (5 / 12, 0.4), (2, 0.0)))
    schedule = optim.lr_schedule(post4, steps_per_epoch=12)
    assert float(schedule(5)) == pytest.approx(0.4)  # still warms up ...
    assert float(schedule(24)) == pytest.approx(0.0)  # ... and anneals to zero
    final = presets.get_preset("myrtle-final").with_epochs(2)
    assert np.allclose(final.lr_knots, ((0, 0.0), (0.4, 1.0), (1.6, 0.1), (2, 0.1)))


def test_one_sgd_step_by_hand():
    recipe = presets.get_preset("myrtle-final")
    params = {"conv": {"kernel": jnp.array([1.0, -2.0])}, "bn": {"bias": jnp.array([0.5])}}
    grads = {"conv": {"kernel": jnp.array([0.3, 0.1])}, "bn": {"bias": jnp.array([-0.2])}}
    optimizer = optim.make_optimizer(recipe, lambda step: 0.4, batch_size=512)
    state = optimizer.init(params)
    updates, state = optimizer.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    # PyTorch SGD, first step: d = g + wd * w; buf = d; w -= lr * (d + momentum * buf).
    lr, wd = 0.4 / 512, 5e-4 * 512
    d = np.array([0.3, 0.1]) + wd * np.array([1.0, -2.0])
    np.testing.assert_allclose(new["conv"]["kernel"], np.array([1.0, -2.0]) - lr * 1.9 * d, rtol=1e-6)
    d_bias = -0.2 + wd / 64 * 0.5
    np.testing.assert_allclose(new["bn"]["bias"], [0.5 - 64 * lr * 1.9 * d_bias], rtol=1e-6)
    # Second step with the same gradient: buf = 0.9 * buf + d2.
    updates, _ = optimizer.update(grads, state, new)
    d2 = np.array([0.3, 0.1]) + wd * np.asarray(new["conv"]["kernel"])
    buf = 0.9 * d + d2
    np.testing.assert_allclose(optax.apply_updates(new, updates)["conv"]["kernel"],
                               np.asarray(new["conv"]["kernel"]) - lr * (d2 + 0.9 * buf), rtol=1e-6)


def test_param_groups_label_bn_biases():
    params = {"layer1": {"Conv_0": {"kernel": 0}, "GhostBatchNorm_0": {"bias": 0, "scale": 0}}}
    labels = optim.param_groups(params)
    assert labels["layer1"]["GhostBatchNorm_0"] == {"bias": "bn_bias", "scale": "weights"}
    assert labels["layer1"]["Conv_0"]["kernel"] == "weights"


def test_ema_update():
    live = {"w": jnp.array([10.0])}
    ema = {"w": jnp.array([0.0])}
    rho = 0.99 ** 5
    first = optim.ema_update(ema, live, jnp.int32(0), 0.99, 5)
    np.testing.assert_allclose(first["w"], [10.0], rtol=1e-6)  # bias-corrected: no trace of the start
    skipped = optim.ema_update(first, {"w": jnp.array([20.0])}, jnp.int32(3), 0.99, 5)
    np.testing.assert_array_equal(skipped["w"], first["w"])
    second = optim.ema_update(first, {"w": jnp.array([20.0])}, jnp.int32(5), 0.99, 5)
    # Normalised average of 10 and 20 with weights rho and 1.
    np.testing.assert_allclose(second["w"], [(rho * 10 + 20) / (rho + 1)], rtol=1e-5)
    late = optim.ema_update(first, {"w": jnp.array([20.0])}, jnp.int32(5 * 1000), 0.99, 5)
    np.testing.assert_allclose(late["w"], [rho * 10 + (1 - rho) * 20], rtol=1e-5)  # Myrtle's form


def test_label_smoothing_loss_by_hand():
    logits = jnp.array([[2.0, 0.0, -1.0]])
    log_p = np.log(np.exp([2.0, 0.0, -1.0]) / np.exp([2.0, 0.0, -1.0]).sum())
    targets = np.array([0.8 + 0.2 / 3, 0.2 / 3, 0.2 / 3])
    loss = optim.smoothed_cross_entropy(logits, jnp.array([0]), 0.2)
    np.testing.assert_allclose(loss, [-(targets * log_p).sum()], rtol=1e-6)
    np.testing.assert_allclose(optim.smoothed_cross_entropy(logits, jnp.array([0]), 0.0), [-log_p[0]], rtol=1e-6)


def test_loss_scale_halves_on_overflow_and_grows_after_good_steps():
    scale = optim.LossScale.create(1024.0)
    assert float(scale.adjust(jnp.array(False)).scale) == 512.0
    for _ in range(3):
        scale = scale.adjust(jnp.array(True), period=3)
    assert float(scale.scale) == 2048.0 and int(scale.good_steps) == 0
    assert not bool(optim.all_finite({"a": jnp.array([1.0, jnp.inf])}))
    assert bool(optim.all_finite({"a": jnp.array([1.0]), "b": jnp.zeros(2)}))
