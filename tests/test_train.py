import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import OPTIMISED, QUICK_COMPILE

from jax_resnet_speed import compilation, model, optim, presets, report, settings, train
from jax_resnet_speed.data import in_memory

MEAN, STD = np.array([0.5, 0.5, 0.5]), np.array([0.25, 0.25, 0.25])


def tiny(preset, epochs=3, precision="fp32", loop="step", **changes):
    recipe = presets.get_preset(preset).with_epochs(epochs).replace(**{"data.batch_size": 128, **changes})
    return train.RunConfig(recipe, precision=precision, width_mult=0.125, loop=loop)


def compiled(config, learnable_data, options=None):
    """The config's programs compiled, as the suite compiles (conftest.QUICK_COMPILE) or with `options`."""
    train_images, train_labels, test_images, test_labels = learnable_data
    data = train.put_on_device(in_memory(train_images, train_labels, test_images, test_labels, MEAN, STD),
                               config.recipe, train.PRECISIONS[config.precision])
    programs, seconds = train.compile_programs(train.build_programs(config, data), data, seed=0, options=options)
    assert seconds > 0
    return programs, data


def test_tta_is_the_mean_of_the_logits_of_the_image_and_its_mirror():
    recipe = presets.get_preset("myrtle-resnet9")
    net = model.Network(recipe.network, (8, 8, 8, 8))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 32, 32, 3)), jnp.float32)
    variables = net.init(jax.random.key(0), x, train=False)

    def apply(v):
        return net.apply(variables, v, train=False)

    logits, tta = train.logits_with_tta(apply, x)
    np.testing.assert_allclose(logits, apply(x), rtol=1e-6)
    np.testing.assert_allclose(tta, (apply(x) + apply(jnp.flip(x, axis=2))) / 2, rtol=1e-5, atol=1e-6)
    _, tta_of_mirror = train.logits_with_tta(apply, jnp.flip(x, axis=2))
    np.testing.assert_allclose(tta, tta_of_mirror, rtol=1e-5, atol=1e-6)


def test_test_set_is_padded_into_whole_batches_with_masked_labels():
    images = np.zeros((1300, 32, 32, 3), np.uint8)
    labels = np.arange(1300, dtype=np.int32) % 10
    data = train.put_on_device(in_memory(images[:600], labels[:600], images, labels, MEAN, STD),
                               presets.get_preset("myrtle-final"), jnp.float32)
    assert data.test_images.shape == (2, 1000, 32, 32, 3)
    assert int((data.test_labels >= 0).sum()) == 1300
    assert data.train_padded.shape == (600, 40, 40, 3)


# The tiny myrtle-final most tests here share, compiled once for the module: the "it learns" run, the
# same-seed steps and divergence (its lr scaled through a Hyper, which steps as the recipe with the value
# written in: test_optim.py) run the same programs. Batch 64: at 128 its 8 steps an epoch leave the EMA
# and the batch-norm statistics that evaluation reads behind the live weights (seed 0: 0.38 test accuracy
# at 0.95 train accuracy); at 64 seeds 0-2 reach 0.88-1.0.
FINAL = tiny("myrtle-final", epochs=8, **{"data.batch_size": 64})


# Session-scoped, as the other files' compiled fixtures: xdist runs a file's tests on either worker,
# between other files' tests, and a module-scoped fixture would be built again each time.
@pytest.fixture(scope="session")
def final(learnable_data):
    return compiled(FINAL, learnable_data, OPTIMISED)  # 128 steps: compiled as XLA ships, they run 3x faster


def test_tiny_run_learns_far_above_chance(final):
    programs, data = final
    epochs = []
    record = train.run(programs, data, FINAL, seed=0, on_epoch=epochs.append, record={})
    assert record["status"] == "completed"
    assert len(record["epochs"]) == 8 and epochs == record["epochs"]
    assert record["final_accuracy"] >= 0.6, record["epochs"]  # chance is 0.1
    assert record["epochs"][-1]["train_loss"] < record["epochs"][0]["train_loss"]
    seconds = [m["train_seconds"] for m in record["epochs"]]
    assert seconds == sorted(seconds) and all(m["eval_seconds"] > 0 for m in record["epochs"])
    assert record["final_accuracy"] == record["epochs"][-1]["tta_accuracy"]


def test_the_init_compiled_as_run_once_gives_the_values_of_the_optimised_one(final):
    """compile_programs compiles the init with compilation.run_once_options (on XLA:CPU without LLVM's
    optimisations): the initial state of the program compiled as XLA ships, to float32 rounding (LLVM
    fuses some multiply-adds of the initialisers' scaling: measured, 1 ulp in a few elements)."""
    programs, data = final
    key = jax.random.key(0)
    lowered = train.build_programs(FINAL, data).init.lower(key, data.train_padded, programs.hyper)
    run_once = compilation.run_once_options(jax.default_backend())
    assert run_once or jax.default_backend() != "cpu"
    quick = lowered.compile({**OPTIMISED, **run_once})(key, data.train_padded, programs.hyper)
    optimised = lowered.compile(OPTIMISED)(key, data.train_padded, programs.hyper)
    for got, want in zip(jax.tree.leaves(quick), jax.tree.leaves(optimised), strict=True):
        if jax.dtypes.issubdtype(got.dtype, jax.dtypes.prng_key):
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        np.testing.assert_allclose(got, want, rtol=3e-7, atol=1e-9)


def test_the_suites_quick_compile_steps_as_xla_ships(final):
    """Most tests compile with conftest.QUICK_COMPILE: three train steps so compiled give the weights of
    the train step compiled as users compile it (the fixture's, OPTIMISED), each update to 1e-3 of its
    largest element."""
    programs, data = final
    key = jax.random.key(0)
    state = programs.init(key, data.train_padded, programs.hyper)
    initial = jax.device_get(state.params)
    batches = programs.epoch_batches(state.rng, jnp.int32(1))
    quick = train.build_programs(FINAL, data).train_step.lower(state, data.train_padded, data.train_labels,
                                                               batches).compile(QUICK_COMPILE)
    params = []
    for step in (quick, programs.train_step):
        stepped = programs.init(key, data.train_padded, programs.hyper)
        for _ in range(3):
            stepped = step(stepped, data.train_padded, data.train_labels, batches)
        params.append(jax.device_get(stepped.params))
    for start, quick, optimised in zip(*map(jax.tree.leaves, (initial, *params)), strict=True):
        update = optimised - start
        assert np.abs(update).max() > 0
        np.testing.assert_allclose(quick - start, update, atol=1e-3 * float(np.abs(update).max()))


def steps_then_evaluation(programs, data, seed: int, steps: int = 3) -> list[np.ndarray]:
    """Every array of the state after `steps` steps of epoch 1 from `seed`, and the evaluation's sums."""
    state = programs.init(jax.random.key(seed), data.train_padded, programs.hyper)
    batches = programs.epoch_batches(state.rng, jnp.int32(1))
    for _ in range(steps):
        state = programs.train_step(state, data.train_padded, data.train_labels, batches)
    sums = programs.evaluate(train.eval_variables(state), data.test_images, data.test_labels)
    return [np.asarray(leaf) for leaf in jax.tree.leaves((state.params, state.batch_stats, state.ema, state.totals,
                                                          jax.random.key_data(state.rng), sums))]


def test_same_seed_gives_the_same_steps_and_evaluation(final):
    """Init, shuffle, augmentation, three steps (EMA and BN statistics included) and evaluation, bit for bit."""
    programs, data = final
    first = steps_then_evaluation(programs, data, seed=5)
    for got, want in zip(steps_then_evaluation(programs, data, seed=5), first, strict=True):
        np.testing.assert_array_equal(got, want)
    other = steps_then_evaluation(programs, data, seed=6)
    assert not np.allclose(other[0], first[0]) and not np.allclose(other[-1], first[-1])  # a kernel, the evaluation


def first_images(learnable_data, n):
    """The first `n` training images and every test image: few steps for the epoch loop, whose
    programs run many times slower than the step's on XLA:CPU (docs/speed.md)."""
    train_images, train_labels, test_images, test_labels = learnable_data
    return train_images[:n], train_labels[:n], test_images, test_labels


# Two epochs of three steps: the epoch loop's programs run many times slower than the step's on XLA:CPU
# (docs/speed.md). The two loops' init and evaluation are the same programs, compiled once.
SMALL = tiny("myrtle-final", epochs=2, **{"data.batch_size": 64})


@pytest.fixture(scope="session")
def small_by_loop(learnable_data):
    data = first_images(learnable_data, 192)
    # Compiled as XLA ships: XLA:CPU runs the epoch loop's program many times slower without its optimisations.
    return {loop: compiled(dataclasses.replace(SMALL, loop=loop), data, OPTIMISED) for loop in compilation.LOOPS}


def test_step_and_epoch_loops_give_the_same_metrics(small_by_loop):
    def metrics(loop):
        programs, data = small_by_loop[loop]
        params = []
        record = train.run(programs, data, dataclasses.replace(SMALL, loop=loop), seed=3, on_epoch=lambda m: None,
                           record={}, after_epoch=lambda state: params.append(jax.device_get(state.params)))
        return [{k: v for k, v in m.items() if "seconds" not in k} for m in record["epochs"]], params

    (by_step, step_params), (by_epoch, epoch_params) = metrics("step"), metrics("epoch")
    assert len(by_epoch) == 2
    # The same computation, but XLA compiles the loop body with other fusions and convolution kernels,
    # so the last bits differ; 6 steps amplify that most in the test loss of so young a net.
    tolerances = {"train_loss": 1e-3, "train_accuracy": 1e-2, "test_loss": 0.1}
    for step_row, epoch_row in zip(by_step, by_epoch, strict=True):
        assert step_row.keys() == epoch_row.keys()
        assert epoch_row["epoch"] == step_row["epoch"] and epoch_row["lr"] == step_row["lr"]
        for key, tolerance in tolerances.items():
            assert epoch_row[key] == pytest.approx(step_row[key], rel=tolerance), key
        for key in ("test_accuracy", "tta_accuracy", "accuracy"):
            assert epoch_row[key] == pytest.approx(step_row[key], abs=6 / 300), key
    # And the weights after the first epoch's three steps, each update to 1e-2 of its largest element.
    programs, data = small_by_loop["step"]
    initial = jax.device_get(programs.init(jax.random.key(3), data.train_padded, programs.hyper).params)
    for start, got, want in zip(*map(jax.tree.leaves, (initial, epoch_params[0], step_params[0]))):
        update = want - start
        np.testing.assert_allclose(got - start, update, atol=1e-2 * float(np.abs(update).max()))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_trains_with_finite_loss(precision, learnable_data):
    config = tiny("myrtle-final", epochs=1, precision=precision, **{"data.batch_size": 64})
    programs, data = compiled(config, first_images(learnable_data, 128))
    record = train.run(programs, data, config, seed=0, on_epoch=lambda m: None, record={})
    assert np.isfinite(record["epochs"][0]["train_loss"])
    assert data.train_padded.dtype == train.PRECISIONS[precision]


@pytest.mark.parametrize("loop", compilation.LOOPS)
def test_diverging_loss_stops_the_run(loop, request):
    """An lr 1e20 times the recipe's: the loss is not finite after the first epoch, and the run stops."""
    if loop == "step":
        (programs, data), config = request.getfixturevalue("final"), FINAL
    else:
        (programs, data), config = request.getfixturevalue("small_by_loop")["epoch"], SMALL
    config = dataclasses.replace(config, loop=loop)
    programs = dataclasses.replace(programs, hyper=optim.Hyper.of(config.recipe, lr_scale=1e20))
    record = {}
    with pytest.raises(report.Diverged):
        train.run(programs, data, config, seed=0, on_epoch=lambda m: None, record=record)
    assert record["status"] == "diverged" and len(record["epochs"]) == 1


def test_six_view_tta_is_the_weighted_mean_of_the_six_views():
    recipe = presets.get_preset("airbench94")
    net = model.Network(recipe.network, (24, 8, 8, 8))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 32, 32, 3)), jnp.float32)
    variables = net.init(jax.random.key(0), x, train=False)
    variables["constants"]["whitening"] = model.whitening_filters(recipe.network, x)

    def apply(v):
        return net.apply(variables, v, train=False)

    padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    views = [np.asarray(x), padded[:, :32, :32], padded[:, 2:, 2:]]
    views = [v for view in views for v in (view, view[:, :, ::-1])]  # each view and its mirror
    expected = sum(w * apply(jnp.asarray(v)) for w, v in zip((1 / 4, 1 / 4, 1 / 8, 1 / 8, 1 / 8, 1 / 8), views))
    logits, tta = train.logits_with_tta(apply, x, shift=1)
    np.testing.assert_allclose(logits, apply(x), rtol=1e-6)
    np.testing.assert_allclose(tta, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(tta, train.logits_with_tta(apply, x)[1], atol=1e-4)  # the shifted views count


def test_fractional_epochs_end_inside_the_last_epoch():
    recipe = presets.get_preset("airbench94")
    assert settings.epoch_steps(recipe, 48) == [48] * 9 + [44]  # ceil(9.9 x 48) = 476 steps
    assert settings.epoch_steps(recipe.with_epochs(2), 10) == [10, 10]


@pytest.fixture(scope="session", params=["airbench94", "airbench94-muon"])
def airbench_run(request, learnable_data):
    """One tiny run of each airbench preset (compiled once for the module).

    On these synthetic images a width-1/8 net is unstable at the recipes' own learning rates (its
    x64 BN-bias steps blow the activations up in the second epoch); at a quarter of them it
    learns. On CIFAR-10 the recipes learn at their own rates (docs/results.md, CPU smoke runs).
    """
    recipe = presets.get_preset(request.param).with_epochs(3.5)
    o = recipe.optimiser
    muon_lr = {"optimiser.muon.lr": o.muon.lr / 4} if o.muon else {}
    recipe = recipe.replace(**{"data.batch_size": 128, **muon_lr,
                               "optimiser.lr_knots": tuple((epoch, lr / 4) for epoch, lr in o.lr_knots)})
    config = train.RunConfig(recipe, precision="fp32", width_mult=0.125)
    train_images, train_labels, test_images, test_labels = learnable_data
    programs, data = compiled(config, (train_images, train_labels, test_images[:200], test_labels[:200]), OPTIMISED)
    epochs = []
    return train.run(programs, data, config, seed=0, on_epoch=epochs.append, record={}), epochs


def test_tiny_airbench_run_learns_far_above_chance(airbench_run):
    record, epochs = airbench_run
    assert record["status"] == "completed" and record["timing_rule"] == "airbench"
    assert len(epochs) == 4  # 3.5 epochs of 8 steps: 28 steps, the last epoch half long
    assert record["final_accuracy"] == epochs[-1]["tta_accuracy"] >= 0.6, epochs  # chance is 0.1
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    # airbench's clock runs on from the init program and through the final evaluation.
    assert epochs[-1]["train_seconds"] > sum(m["epoch_seconds"] for m in epochs)
