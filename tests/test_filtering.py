"""Data filtering by a proxy (airbench96-faster): the selection, the proxy's steps, and a tiny run.

Everything here is compiled as the whole suite is (conftest.QUICK_COMPILE: the numbers are checked for
their shape and finiteness, not their values) and shares one module fixture: the tiny preset's proxy run, then the
recipe's network trained on what it kept.
"""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_learnable

from jax_resnet_speed import presets, train
from jax_resnet_speed.data import in_memory
from jax_resnet_speed.train import filtering, steps

# 96 images in batches of 16, 8 kept: 6 steps in the one epoch, so the proxy's backward steps are 0 and 4.
# One conv per group in both nets, to halve the compile (tests/test_model.py and test_published_flops.py
# check airbench96's residual groups and the proxy's shape); the filtering itself is the preset's.
TINY = presets.get_preset("airbench96-faster").with_epochs(1).replace(**{
    "data.batch_size": 16, "network.stages.convs": 1, "network.stages.residual_over_last": False,
    "data.filtering.proxy_convs": 1})


def compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile()


def test_hardest_are_the_positions_of_the_highest_losses():
    losses = jnp.array([0.1, 2.0, 0.5, 3.0, 1.0, 0.2])
    assert filtering.hardest(losses, 2).tolist() == [3, 1]
    assert sorted(filtering.hardest(losses, 4).tolist()) == [1, 2, 3, 4]


def test_the_proxy_draws_the_batches_the_train_step_reads():
    """run_batches' step t is what train_epoch hands step t: epoch_batches of epoch t // steps + 1, row t % steps;
    a fractional run ends inside its last epoch."""
    setup = steps.Setup(TINY.with_epochs(1.5), 1.0, "fp32", 96)
    rng = jax.random.key(3)
    expected = np.concatenate([steps.epoch_batches(setup, rng, jnp.int32(epoch)) for epoch in (1, 2)])[:9]
    np.testing.assert_array_equal(filtering.run_batches(setup, rng), expected)


@pytest.fixture(scope="module")
def tiny_run():
    """The tiny preset's proxy run (train.proxy_picks, each step's proxy state recorded), then its network
    trained on what the proxy kept."""
    train_images, train_labels = make_learnable(96, seed=0)
    test_images, test_labels = make_learnable(10, seed=1)
    data = train.put_on_device(in_memory(train_images, train_labels, test_images, test_labels,
                                         np.full(3, 0.5), np.full(3, 0.25)), TINY, jnp.float32)
    setup = steps.Setup(TINY, 1 / 16, "fp32", data.num_train)
    hyper, key = train.optim.Hyper.of(TINY), jax.random.key(0)

    def both_inits(key, images, hyper):
        state = steps.init(setup, key, images, hyper)
        return state, filtering.proxy_init(setup, state.rng, images, hyper)

    state, proxy = compiled(both_inits, key, data.train_padded, hyper)(key, data.train_padded, hyper)
    batches = functools.partial(filtering.run_batches, setup)
    learn, score = (compiled(functools.partial(program, setup), proxy, data.train_padded, data.train_labels,
                                     batches(state.rng)) for program in (filtering.proxy_learn, filtering.proxy_score))
    proxies = [proxy]

    def recorded(program):
        def step(proxy, *arrays):
            proxy, picked = program(proxy, *arrays)
            proxies.append(proxy)
            return proxy, picked
        return step

    programs = train.ProxyPrograms(lambda *arrays: proxies[0], batches, recorded(learn), recorded(score),
                                   TINY.data.filtering.backward_every)
    state = state.replace(kept=train.proxy_picks(programs, data, state.rng, hyper, setup.run_steps))
    epoch = steps.epoch_batches(setup, state.rng, jnp.int32(1))
    train_step = compiled(functools.partial(steps.train_step.__wrapped__, setup), state, data.train_padded,
                                  data.train_labels, epoch)
    for _ in range(setup.run_steps):
        state = train_step(state, data.train_padded, data.train_labels, epoch)
    return {"proxies": proxies, "kept": state.kept, "state": state}


def changed(before, after) -> bool:
    return any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))


def test_the_proxy_steps_its_optimiser_every_fourth_step_and_its_bn_statistics_every_step(tiny_run):
    proxies = tiny_run["proxies"]
    pairs = list(zip(proxies, proxies[1:]))
    assert [changed(a.params, b.params) for a, b in pairs] == [True, False, False, False, True, False]
    assert all(changed(a.batch_stats, b.batch_stats) for a, b in pairs)
    # Its whitening bias is frozen at its init, zeros.
    assert not np.any(np.asarray(proxies[-1].params["whitening_bias"]))


def test_a_tiny_airbench96_faster_run_trains_on_the_kept_half_of_each_batch(tiny_run):
    kept, state = np.asarray(tiny_run["kept"]), tiny_run["state"]
    assert kept.shape == (6, 8)
    assert all(len(set(row)) == 8 and row.min() >= 0 and row.max() < 16 for row in kept)
    loss_sum, _, examples = np.asarray(state.totals)
    assert examples == 6 * 8 and np.isfinite(loss_sum) and int(state.step) == 6


@pytest.mark.parametrize("module, flags", [("torch_reference", []), ("compare", []), ("bench", ["--framework", "torch"])])
def test_the_pytorch_paths_refuse_a_filtering_preset_in_one_line(module, flags, capsys):
    main = importlib.import_module(f"jax_resnet_speed.{module}").main
    with pytest.raises(SystemExit) as exit:
        main(["--preset", "airbench96-faster", *flags])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "the PyTorch reference does not implement" in err and "Traceback" not in err
