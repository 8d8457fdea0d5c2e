import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import run_jitted
from jax_resnet_speed import optim, presets


def test_schedule_values_at_the_knots():
    final = presets.get_preset("myrtle-final")
    schedule = optim.lr_schedule(final, steps_per_epoch=97)
    for epoch, lr in [(0, 0.0), (1, 0.5), (2, 1.0), (5, 0.55), (8, 0.1), (10, 0.1)]:
        assert float(schedule(epoch * 97)) == pytest.approx(lr, abs=1e-6)


def test_schedule_stretches_with_the_run_length():
    post4 = presets.get_preset("myrtle-resnet9").with_epochs(2)
    assert np.allclose(post4.optimiser.lr_knots, ((0, 0.0), (5 / 12, 0.4), (2, 0.0)))
    schedule = optim.lr_schedule(post4, steps_per_epoch=12)
    assert float(schedule(5)) == pytest.approx(0.4)  # still warms up ...
    assert float(schedule(24)) == pytest.approx(0.0)  # ... and anneals to zero
    final = presets.get_preset("myrtle-final").with_epochs(2)
    assert np.allclose(final.optimiser.lr_knots, ((0, 0.0), (0.4, 1.0), (1.6, 0.1), (2, 0.1)))


def test_torch_form_two_steps_by_hand():
    recipe = presets.get_preset("myrtle-final").replace(**{"optimiser.update": "torch"})
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


@pytest.mark.parametrize("form", ["page", "torch"])
def test_two_steps_with_a_changing_lr_by_hand(form):
    """Page's form keeps lr inside the momentum buffer and reads lr(t + 1); torch's applies lr(t) at the end."""
    recipe = presets.get_preset("myrtle-resnet9").replace(**{"optimiser.update": form})
    assert presets.get_preset("myrtle-resnet9").optimiser.update == "page"
    lrs = [0.2, 0.5, 0.3]  # Myrtle units at steps 0, 1, 2 (before the / batch)
    batch, m = 4, 0.9
    wd = 5e-4 * batch
    optimizer = optim.make_optimizer(recipe, lambda step: jnp.asarray(lrs)[step], batch_size=batch)
    w0 = np.array([1.0, -2.0])
    g = [np.array([0.3, 0.1]), np.array([-0.4, 0.2])]
    params = {"conv": {"kernel": jnp.asarray(w0)}}
    state = optimizer.init(params)
    weights = [w0]
    for step in range(2):
        updates, state = optimizer.update({"conv": {"kernel": jnp.asarray(g[step])}}, state, params)
        params = optax.apply_updates(params, updates)
        weights.append(np.asarray(params["conv"]["kernel"], np.float64))
    if form == "page":
        # d = -lr(t + 1) (g + wd w); v = m v + d; w += d + m v.
        d1 = -lrs[1] / batch * (g[0] + wd * w0)
        v1 = d1
        w1 = w0 + d1 + m * v1
        d2 = -lrs[2] / batch * (g[1] + wd * w1)
        v2 = m * v1 + d2
        w2 = w1 + d2 + m * v2
    else:
        # d = g + wd w; v = m v + d; w -= lr(t) (d + m v).
        d1 = g[0] + wd * w0
        v1 = d1
        w1 = w0 - lrs[0] / batch * (d1 + m * v1)
        d2 = g[1] + wd * w1
        v2 = m * v1 + d2
        w2 = w1 - lrs[1] / batch * (d2 + m * v2)
    np.testing.assert_allclose(weights[1], w1, rtol=1e-6)
    np.testing.assert_allclose(weights[2], w2, rtol=1e-6)


def test_the_two_forms_differ_only_when_the_lr_changes():
    def run(form, lrs):
        recipe = presets.get_preset("myrtle-resnet9").replace(**{"optimiser.update": form})
        schedule = (lambda step: jnp.asarray(lrs)[jnp.minimum(step, len(lrs) - 1)])
        optimizer = optim.make_optimizer(recipe, schedule, batch_size=2)
        params = {"w": {"kernel": jnp.array([1.0])}}
        state = optimizer.init(params)
        for step in range(3):
            updates, state = optimizer.update({"w": {"kernel": jnp.array([0.5 + step])}}, state, params)
            params = optax.apply_updates(params, updates)
        return float(params["w"]["kernel"][0])

    assert run("page", [0.3] * 4) == pytest.approx(run("torch", [0.3] * 4), rel=1e-6)
    assert run("page", [0.1, 0.2, 0.4, 0.8]) != pytest.approx(run("torch", [0.1, 0.2, 0.4, 0.8]), rel=1e-3)


def test_param_groups_label_bn_biases():
    params = {"layer1": {"Conv_0": {"kernel": 0}, "GhostBatchNorm_0": {"bias": 0, "scale": 0}},
              "layer1_1": {"bn1": {"bias": 0}}, "classifier": {"kernel": 0, "bias": 0}}
    labels = optim.param_groups(params)
    assert labels["layer1"]["GhostBatchNorm_0"] == {"bias": "bn_bias", "scale": "weights"}
    assert labels["layer1"]["Conv_0"]["kernel"] == "weights"
    assert labels["layer1_1"]["bn1"]["bias"] == "bn_bias"
    assert labels["classifier"] == {"kernel": "weights", "bias": "weights"}  # the head's bias is no BN bias


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


def test_param_groups_for_airbench():
    params = {"whitening_bias": jnp.zeros(24), "layer1": {"Conv_0": {"kernel": jnp.zeros((3, 3, 24, 8))},
                                                          "GhostBatchNorm_0": {"bias": jnp.zeros(8)}},
              "classifier": {"kernel": jnp.zeros((8, 10))}}
    sgd = optim.param_groups(params)
    assert sgd["whitening_bias"] == "whitening_bias" and sgd["layer1"]["Conv_0"]["kernel"] == "weights"
    muon = optim.param_groups(params, muon=True)
    assert muon["layer1"]["Conv_0"]["kernel"] == "filters" and muon["classifier"]["kernel"] == "weights"
    assert muon["layer1"]["GhostBatchNorm_0"]["bias"] == "bn_bias"


def test_lookahead_schedule_values():
    # airbench94: alpha = 0.95 ** 5 x (t / T) ** 3, T = 476.
    for done, expected in ((5, 0.95 ** 5 * (5 / 476) ** 3), (238, 0.95 ** 5 / 8), (476, 0.95 ** 5)):
        assert float(optim.lookahead_alpha(jnp.int32(done), 476, 0.95, 5)) == pytest.approx(expected, rel=1e-6)
    assert float(optim.lookahead_alpha(jnp.int32(5), 476, 0.95, 5)) < 1e-5  # the slow copy follows at first


def test_lookahead_update_by_hand():
    slow, live = {"w": jnp.array([0.0])}, {"w": jnp.array([10.0])}
    off_step = optim.lookahead_update(slow, live, jnp.int32(7), 20, 0.95, 5)
    assert float(off_step[0]["w"][0]) == 0.0 and float(off_step[1]["w"][0]) == 10.0  # nothing between updates
    alpha = 0.95 ** 5 * (10 / 20) ** 3
    new_slow, new_live = optim.lookahead_update(slow, live, jnp.int32(10), 20, 0.95, 5)
    assert float(new_slow["w"][0]) == pytest.approx((1 - alpha) * 10, rel=1e-6)
    assert float(new_live["w"][0]) == float(new_slow["w"][0])  # the live weights restart from the slow ones
    # The last step (not a multiple of 5): the live weights become the slow ones, unchanged.
    final_slow, final_live = optim.lookahead_update(slow, live, jnp.int32(21), 21, 0.95, 5)
    assert float(final_slow["w"][0]) == 0.0 and float(final_live["w"][0]) == 0.0


@pytest.mark.parametrize("preset, expected", [
    # airbench94: the run's lr until the end of epoch 3 (steps 0..143 at 48 steps an epoch), then 0.
    ("airbench94", lambda schedule, step: float(schedule(step)) if step < 144 else 0.0),
    # airbench94_muon: lr 0.053 x B decaying linearly to 0 at step 75 (25 steps an epoch).
    ("airbench94-muon", lambda schedule, step: 0.053 * 2000 * max(0.0, 1 - step / 75)),
])
def test_whitening_bias_schedule(preset, expected):
    recipe = presets.get_preset(preset)
    steps_per_epoch = 50_000 // recipe.batch_size
    schedule = optim.lr_schedule(recipe, steps_per_epoch)
    bias_lr = optim.whitening_bias_schedule(recipe.optimiser.whitening_bias, schedule, steps_per_epoch)
    for step in (0, 10, 74, 75, 143, 144, 300):
        # The multiplier is part of the group (whitening_bias.lr_mult); compare at the schedule's scale.
        got = float(bias_lr(step)) * (recipe.optimiser.whitening_bias.lr_mult if preset.endswith("muon") else 1.0)
        assert got == pytest.approx(expected(schedule, step), rel=1e-5, abs=1e-6), step


def test_a_whitening_bias_stem_without_its_sub_recipe_keeps_its_bias_at_init():
    recipe = presets.get_preset("airbench94")
    bias = presets.UNTRAINED_WHITENING_BIAS
    schedule = optim.lr_schedule(recipe, 48)
    assert bias.lr_mult == bias.wd_mult == 1.0
    assert [float(optim.whitening_bias_schedule(bias, schedule, 48)(step)) for step in (0, 1, 100)] == [0.0] * 3


def test_airbench94_lr_and_weight_decay_in_torch_terms():
    """airbench94's published numbers: SGD lr 11.5 / K and weight_decay 0.0153 x 1024 / 11.5 at batch 1024."""
    recipe = presets.get_preset("airbench94")
    kilostep = 1024 * (1 + 1 / (1 - 0.85))
    peak = max(lr for _, lr in recipe.optimiser.lr_knots)
    assert peak / 1024 == pytest.approx(11.5 / kilostep)
    assert recipe.optimiser.weight_decay * 1024 == pytest.approx(0.0153 * 1024 / 11.5)
    schedule = optim.lr_schedule(recipe, 48)
    assert float(schedule(0)) / peak == pytest.approx(0.2) and float(schedule(475.2)) / peak == pytest.approx(0.07)
    assert recipe.run_steps(48) == 476 and presets.get_preset("airbench94-muon").run_steps(25) == 200


@pytest.mark.parametrize("preset", ["myrtle-resnet9", "airbench94"])
def test_hyper_steps_as_the_recipe_with_its_values_written_in(preset):
    """A Hyper's lr scale, weight decay and momentum act as those values written into the recipe (lr knots
    scaled, weight decay and momentum replaced): test_group trains its single runs through a Hyper."""
    import jax

    from jax_resnet_speed import model

    recipe = presets.get_preset(preset).with_epochs(2)
    lr_scale, weight_decay, momentum = 0.5, 1e-3, 0.8
    written = recipe.replace(**{"optimiser.lr_knots": tuple((e, lr * lr_scale) for e, lr in recipe.optimiser.lr_knots),
                                "optimiser.weight_decay": weight_decay, "optimiser.momentum": momentum})
    net = model.for_recipe(recipe, 0.125, jnp.float32)
    params = run_jitted(lambda key: net.init(key, jnp.zeros((1, 32, 32, 3)), train=False)["params"], jax.random.key(0))
    leaves, tree = jax.tree.flatten(params)
    grads = [jax.tree.unflatten(tree, [jnp.asarray(np.random.default_rng(step + 10 * i).normal(size=leaf.shape),
                                                   jnp.float32) for i, leaf in enumerate(leaves)])
             for step in range(3)]

    def three_steps(optimizer):
        def steps(trained, grads):
            state = optimizer.init(trained)
            for grad in grads:
                updates, state = optimizer.update(grad, state, trained)
                trained = optax.apply_updates(trained, updates)
            return trained

        return run_jitted(steps, params, grads)

    steps_per_epoch = 10
    by_hyper = three_steps(optim.make_optimizer(recipe, optim.lr_schedule(recipe, steps_per_epoch), 128,
                                                optim.Hyper.of(recipe, lr_scale, weight_decay, momentum), steps_per_epoch))
    by_recipe = three_steps(optim.make_optimizer(written, optim.lr_schedule(written, steps_per_epoch), 128,
                                                 None, steps_per_epoch))
    moved = 0
    for got, want, start in zip(*map(jax.tree.leaves, (by_hyper, by_recipe, params))):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        moved += not np.array_equal(want, start)
    assert moved == len(leaves)
