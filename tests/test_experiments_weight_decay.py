import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax_resnet_speed import model, optim, presets, train
from jax_resnet_speed.experiments import weight_decay
from conftest import run_experiment, sigint_when


@pytest.mark.parametrize("nesterov", [True, False])
def test_equilibrium_ratio_matches_the_optimiser_on_random_scale_invariant_gradients(nesterov):
    """Our SGD (Page's form) on gradients orthogonal to w with |g| ~ 1/|w| settles at the predicted |dw|/|w|."""
    lr, wd, momentum, dim = 0.02, 0.05, 0.9, 500
    optimizer = optim.nesterov_sgd(lambda count: lr, wd, momentum, nesterov, "page")

    def step(carry, key):
        w, opt_state = carry
        g = jax.random.normal(key, w.shape)
        g = (g - (g @ w) / (w @ w) * w) / jnp.linalg.norm(w)
        updates, opt_state = optimizer.update(g, opt_state, w)
        return (optax.apply_updates(w, updates), opt_state), jnp.linalg.norm(updates) / jnp.linalg.norm(w)

    w = jax.random.normal(jax.random.key(0), (dim,))
    _, ratios = jax.lax.scan(step, (w, optimizer.init(w)), jax.random.split(jax.random.key(1), 6000))
    measured = float(ratios[3000:].mean())
    predicted = float(weight_decay.equilibrium_ratio(lr * wd, momentum, nesterov))
    assert measured == pytest.approx(predicted, rel=0.03)
    assert measured != pytest.approx(np.sqrt(2 * lr * wd), rel=0.1)  # momentum matters
    assert float(weight_decay.equilibrium_ratio(lr * wd, 0.0, nesterov)) == pytest.approx(np.sqrt(2 * lr * wd))


def tiny_state():
    recipe = presets.get_preset("myrtle-resnet9")
    net = model.Network(recipe.network, (8, 8, 8, 8))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 32, 32, 3)), jnp.float32)
    labels = jnp.arange(16) % 10
    variables = net.init(jax.random.key(0), x, train=False)
    state = train.TrainState(step=0, params=variables["params"], batch_stats=variables["batch_stats"], constants={},
                             opt_state=None, hyper=None, ema=None, loss_scale=None, totals=None, rng=None)
    return net, state, x, labels


def test_conv_layers_in_network_order_and_scaling_one_layer():
    _, state, _, _ = tiny_state()
    kernels = weight_decay.conv_kernels(state.params)
    assert list(kernels) == ["prep", "layer1", "res1.1", "res1.2", "layer2", "layer3", "res3.1", "res3.2"]
    scaled = weight_decay.scale_layer(state.params, "res1.2", 2.0)
    np.testing.assert_array_equal(weight_decay.conv_kernels(scaled)["res1.2"], 2 * kernels["res1.2"])
    np.testing.assert_array_equal(weight_decay.conv_kernels(scaled)["res1.1"], kernels["res1.1"])


def test_scale_invariance_holds_for_bn_fed_weights_and_fails_for_the_head():
    net, state, x, labels = tiny_state()
    changes = weight_decay.scale_invariance(net, state, x, labels)
    assert set(changes) == {*weight_decay.conv_kernels(state.params), "classifier"}
    for name, relative in changes.items():
        if name == "classifier":
            assert min(relative) > 1e-3, relative
        else:
            assert max(relative) < 1e-4, (name, relative)


def test_smoothed_is_a_trailing_mean():
    np.testing.assert_allclose(weight_decay.smoothed(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])


@pytest.mark.slow
def test_smoke_run_writes_the_figure_json_and_summary(tiny_npz, tmp_path):
    # A subprocess compiled with QUICK_COMPILE (conftest): compiling is most of the run.
    result = run_experiment("weight_decay", "--out", str(tmp_path), "--data", tiny_npz, "--width-mult",
                                    "0.0625", "--epochs", "2", "--batch-size", "32", "--train-subset", "64",
                                    "--test-subset", "50")
    assert result.returncode == 0, result.stderr
    png, payload, summary = (tmp_path / f"weight_decay.{ext}" for ext in ("png", "json", "md"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads(payload.read_text())
    assert {"settings", "environment", "recipe", "layers", "lr", "norms", "relative_updates",
            "scale_invariance", "measured_over_predicted", "epochs"} <= set(result)
    steps = len(result["lr"])
    assert steps == 2 * (64 // 32)
    assert len(result["norms"]) == len(result["layers"]) == 8 and all(len(n) == steps for n in result["norms"])
    assert "Scale invariance" in summary.read_text()
    table = [line for line in summary.read_text().splitlines() if line.startswith("| ")]
    cells = [len(re.split(r"(?<!\\)\|", line)) for line in table]  # Markdown splits cells at unescaped pipes
    assert len(table) == 2 + 8 and len(set(cells)) == 1, table[:2]
    assert summary.read_text().count("width x0.0625") == 1


@pytest.mark.slow
def test_a_real_ctrl_c_exits_130_with_one_line_and_writes_nothing(tiny_npz, tmp_path):
    """Every experiment runs through common.main and interrupt.main: it writes its files only at the end, so a
    Ctrl-C while it compiles or trains exits at once. (One experiment stands for the three.)"""
    result = sigint_when("experiments.weight_decay", ["--out", str(tmp_path / "out"), "--data", tiny_npz,
                                                      "--width-mult", "0.0625", "--epochs", "200", "--batch-size",
                                                      "32", "--train-subset", "64", "--test-subset", "50"],
                         "weight_decay: ", delay=0.5)  # its title, printed before it compiles
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == "interrupted before anything finished: nothing was written"
    assert not list((tmp_path / "out").glob("weight_decay.*"))
