import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_resnet_speed import group, optim, presets, train

MEAN, STD = np.array([0.5, 0.5, 0.5]), np.array([0.25, 0.25, 0.25])


def setup(recipe, learnable_data):
    config = train.RunConfig(recipe, precision="fp32", width_mult=0.125)
    train_images, train_labels, test_images, test_labels = learnable_data
    data = train.put_on_device(train_images[:512], train_labels[:512], test_images, test_labels, MEAN, STD,
                               recipe, np.float32)
    return config, data


POINTS = [(0, 1.0, 5e-4, 0.9), (1, 0.5, 1e-3, 0.8), (0, 2.0, 2.5e-4, 0.95)]  # seed, lr scale, wd, momentum


def alone(recipe, lr_scale, weight_decay, momentum):
    """The recipe with a point's hyperparameters written into it, for a single run."""
    knots = tuple((e, lr * lr_scale) for e, lr in recipe.optimiser.lr_knots)
    return recipe.replace(**{"optimiser.lr_knots": knots, "optimiser.weight_decay": weight_decay,
                             "optimiser.momentum": momentum})


def tiny_recipe():
    return presets.get_preset("myrtle-resnet9").with_epochs(2).replace(**{"data.batch_size": 128})


def first_steps(programs, key, hyper, data, steps):
    state = programs.init(key, data.train_padded, hyper)
    batches = programs.epoch_batches(state.rng, jnp.int32(1))
    for _ in range(steps):
        state = programs.train_step(state, data.train_padded, data.train_labels, batches)
    return state.params


def test_the_first_step_of_a_group_equals_each_member_alone(learnable_data):
    recipe = tiny_recipe()
    config, data = setup(recipe, learnable_data)
    seeds, hypers = [p[0] for p in POINTS], [optim.Hyper.of(recipe, *p[1:]) for p in POINTS]
    grouped = first_steps(group.vmapped(train.build_programs(config, data)), group.keys(seeds),
                          group.stack(hypers), data, steps=1)
    for member, (seed, *values) in enumerate(POINTS):
        single = train.build_programs(setup(alone(recipe, *values), learnable_data)[0], data)
        expected = first_steps(single, jax.random.key(seed), single.hyper, data, steps=1)
        for got, want in zip(jax.tree_util.tree_leaves(grouped), jax.tree_util.tree_leaves(expected)):
            # vmapped convolutions sum in another order: 1e-6 of the largest weight.
            np.testing.assert_allclose(got[member], want, atol=1e-5 * float(jnp.abs(want).max()))
        first_kernel = jax.tree_util.tree_leaves(expected)[0]
        for other in set(range(len(POINTS))) - {member}:
            assert not np.allclose(jax.tree_util.tree_leaves(grouped)[0][other], first_kernel, rtol=1e-3)


def test_members_of_a_group_do_not_interact(learnable_data):
    """A member trains bit for bit the same whatever its neighbours are."""
    recipe = tiny_recipe()
    config, data = setup(recipe, learnable_data)
    programs = group.vmapped(train.build_programs(config, data))
    point, neighbour = optim.Hyper.of(recipe), optim.Hyper.of(recipe, *POINTS[1][1:])
    together = first_steps(programs, group.keys([0, 1, 0]), group.stack([point, neighbour, point]), data, steps=3)
    same = first_steps(programs, group.keys([0, 0, 0]), group.stack([point] * 3), data, steps=3)
    for got, want in zip(jax.tree_util.tree_leaves(together), jax.tree_util.tree_leaves(same)):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[2], want[0])
        assert not np.array_equal(got[1], want[1])


def test_a_trained_group_matches_its_members_trained_alone(learnable_data):
    """Whole runs: members with their own seed and hyperparameters against single runs with those values."""
    recipe = tiny_recipe()
    config, data = setup(recipe, learnable_data)
    seeds, hypers = [p[0] for p in POINTS], [optim.Hyper.of(recipe, *p[1:]) for p in POINTS]
    programs, _ = group.compile_group(train.build_programs(config, data), data, seeds, hypers)
    records, seen = [{} for _ in POINTS], []
    group.run(programs, data, config, seeds, hypers, lambda k, m: seen.append(k), records)
    assert sorted(seen) == [0, 0, 1, 1, 2, 2]
    for (seed, *values), record in zip(POINTS, records):
        single_config, _ = setup(alone(recipe, *values), learnable_data)
        single, _ = train.compile_programs(train.build_programs(single_config, data), data, seed)
        expected = train.run(single, data, single_config, seed, lambda m: None, {})
        assert record["status"] == expected["status"] == "completed"
        # Training amplifies the summation-order differences of the vmapped convolutions
        # (previous test) to about 1% in the losses of these 8-step runs.
        for got, want in zip(record["epochs"], expected["epochs"], strict=True):
            assert got["lr"] == pytest.approx(want["lr"], rel=1e-6)
            assert got["train_loss"] == pytest.approx(want["train_loss"], rel=2e-2)
            assert got["test_accuracy"] == pytest.approx(want["test_accuracy"], abs=0.05)


def test_a_diverging_member_is_marked_while_the_others_finish(learnable_data):
    recipe = tiny_recipe()
    config, data = setup(recipe, learnable_data)
    hypers = [optim.Hyper.of(recipe), optim.Hyper.of(recipe, lr_scale=1e6)]
    programs, _ = group.compile_group(train.build_programs(config, data), data, [0, 0], hypers)
    records = [{}, {}]
    group.run(programs, data, config, [0, 0], hypers, lambda k, m: None, records)
    assert records[0]["status"] == "completed" and len(records[0]["epochs"]) == 2
    assert records[1]["status"] == "diverged" and len(records[1]["epochs"]) == 1


def test_memory_estimate_grows_with_the_network_and_bounds_the_group(learnable_data):
    recipe = presets.get_preset("myrtle-resnet9").replace(**{"data.batch_size": 128})
    _, data = setup(recipe, learnable_data)
    small = group.member_bytes(train.build_programs(train.RunConfig(recipe, "fp32", 0.125), data), data)
    large = group.member_bytes(train.build_programs(train.RunConfig(recipe, "fp32", 0.25), data), data)
    assert 0 < small < large
    assert group.members_that_fit(small, 10 * small, headroom=1.0) == 10
    assert group.members_that_fit(small, small // 2) == 1
    assert group.available_bytes() > 0
    assert group.padded([1, 2], 4) == [1, 2, 2, 2]
