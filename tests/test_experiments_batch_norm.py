import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jax_resnet_speed import model, optim, train
from jax_resnet_speed.experiments import batch_norm
from conftest import run_experiment


def test_stress_recipe_doubles_the_lr_every_two_epochs():
    recipe = batch_norm.stress_recipe(batch_norm=True, epochs=25, batch_size=128)
    assert recipe.epochs == 25 and recipe.batch_size == 128
    schedule = optim.lr_schedule(recipe, steps_per_epoch=10)
    for epoch in range(26):
        assert float(schedule(epoch * 10)) == pytest.approx(0.005 * 2 ** (epoch / 2), rel=1e-5)
    assert float(schedule(250)) == pytest.approx(28.96, rel=1e-3)  # the post's ~29


def shapes(recipe):
    net = model.for_recipe(recipe, 0.125)
    return jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))


def test_unbranched_nets_have_eight_convs_and_frozen_or_no_batch_norm():
    without = shapes(batch_norm.stress_recipe(batch_norm=False))
    assert set(without) == {"params"}  # no batch_stats
    paths = traverse_util.flatten_dict(without["params"])
    convs = [p for p in paths if p[-1] == "kernel" and p[0] != "classifier"]
    assert len(convs) == 8
    assert not any("GhostBatchNorm" in "/".join(p) for p in paths)

    with_bn = traverse_util.flatten_dict(shapes(batch_norm.stress_recipe(batch_norm=True))["params"])
    bn = [p for p in with_bn if "GhostBatchNorm" in "/".join(p)]
    assert len(bn) == 8 and all(p[-1] == "bias" for p in bn)  # scales frozen: biases only, one per conv unit
    recipe = batch_norm.stress_recipe(batch_norm=True)
    assert recipe.optimiser.bn_bias_lr_mult == 0 and recipe.optimiser.bn_bias_wd_mult == 0
    assert not recipe.network.stages.shortcut


def test_he_initialised_scales_the_conv_kernels_only():
    params = {"prep": {"Conv_0": {"kernel": jnp.ones((3, 3, 3, 4))}},
              "res1": {"ConvBlock_0": {"Conv_0": {"kernel": jnp.ones((3, 3, 4, 4))}}},
              "classifier": {"kernel": jnp.ones((4, 10))}}
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={}, constants={},
                             opt_state=None, hyper=None, ema=None, loss_scale=None, totals=jnp.zeros(3),
                             rng=jax.random.key(0))
    programs = train.Programs(init=lambda key, images, hyper: state, epoch_batches=None, train_step=None, train_steps=None,
                              evaluate=None, schedule=None, steps_per_epoch=1, hyper=None)
    scaled = batch_norm.he_initialised(programs).init(jax.random.key(0), None, None).params
    assert float(scaled["prep"]["Conv_0"]["kernel"][0, 0, 0, 0]) == pytest.approx(math.sqrt(6))
    assert float(scaled["res1"]["ConvBlock_0"]["Conv_0"]["kernel"][0, 0, 0, 0]) == pytest.approx(math.sqrt(6))
    assert float(scaled["classifier"]["kernel"][0, 0]) == 1.0


def epochs(*rows):
    return [{"epoch": i + 1, "lr": 0.01 * 2 ** i, "train_loss": loss, "train_accuracy": accuracy}
            for i, (loss, accuracy) in enumerate(rows)]


def test_failure_is_divergence_or_a_collapse_after_learning():
    assert batch_norm.failure(epochs((2.3, 0.1), (2.0, 0.3), (1.8, 0.4)))["failure"] is None
    diverged = batch_norm.failure(epochs((2.3, 0.1), (2.0, 0.3), (5.0, 0.1)))
    assert diverged["failure"] == "diverged" and diverged["divergence_epoch"] == 3
    assert diverged["divergence_lr"] == pytest.approx(0.04)
    assert batch_norm.failure(epochs((2.3, 0.1), (math.nan, 0.0)))["failure"] == "diverged"
    collapsed = batch_norm.failure(epochs((2.3, 0.1), (2.0, 0.25), (2.2, 0.18), (2.3026, 0.1)))
    assert collapsed["failure"] == "collapsed" and collapsed["divergence_epoch"] == 4
    # At chance from the start is not a collapse: the run never learnt.
    never = batch_norm.failure(epochs((2.3026, 0.1), (2.3026, 0.1)))
    assert never["failure"] is None and not never["learnt"]


def test_channel_statistics():
    rng = np.random.default_rng(0)
    features = np.ones((6, 2, 2, 3))
    features[..., 1] = rng.uniform(1, 3, (6, 2, 2))  # varies
    features[..., 2] = 0.0  # dead
    stats = batch_norm.channel_statistics(features)
    assert stats["dead_channels"] == 1 and stats["channels"] == 3
    varying = features[..., 1]
    cv = varying.std() / varying.mean()
    assert stats["median_cv"] == pytest.approx(np.median([0.0, cv]))
    identical = batch_norm.channel_statistics(np.tile(rng.uniform(size=(1, 2, 2, 3)), (5, 1, 1, 1)))
    assert identical["cosine"] == pytest.approx(1.0)


@pytest.mark.slow
def test_smoke_run_writes_the_figure_json_and_summary(tiny_npz, tmp_path):
    out = tmp_path / "out"
    result = run_experiment(
        "batch_norm", "--out", str(out), "--data", tiny_npz, "--cache-dir", str(tmp_path / "cache"), "--width-mult",
        "0.0625", "--epochs", "2", "--batch-size", "32", "--train-subset", "64", "--test-subset", "50",
        "--hessian-images", "32", "--lanczos-iterations", "4")
    assert result.returncode == 0, result.stderr
    assert "stress without_bn: epoch  2" in result.stdout
    assert (out / "batch_norm.png").stat().st_size > 10_000
    payload = json.loads((out / "batch_norm.json").read_text())
    assert {"settings", "environment", "stress", "collapse", "hessian", "summary"} <= set(payload)
    for net in ("with_bn", "without_bn"):
        stress = payload["stress"][net]
        assert [m["epoch"] for m in stress["epochs"]] == [1, 2] and "divergence_lr" in stress
        assert all({"lr", "train_loss", "train_accuracy"} <= set(m) for m in stress["epochs"])
        assert [len(layers) for layers in payload["collapse"][net].values()] == [8, 16]
        hessian = payload["hessian"][net]
        assert len(hessian["eigenvalues"]) == len(hessian["span_fractions"]) == 4
        assert all(0 <= f <= 1 + 1e-5 for f in hessian["span_fractions"])
    assert payload["hessian"]["with_bn"]["parameters"] == payload["hessian"]["without_bn"]["parameters"]
    assert payload["settings"]["lanczos_iterations"] == 4
    assert "## (c) Hessian" in (out / "batch_norm.md").read_text()


def test_hessian_batch_larger_than_the_data_is_a_one_line_error(tiny_npz, tmp_path, capsys):
    code = batch_norm.main(["--out", str(tmp_path / "out"), "--data", tiny_npz, "--cache-dir", str(tmp_path / "c"),
                            "--train-subset", "128", "--hessian-images", "256"])
    assert code == 1
    assert "--hessian-images" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
