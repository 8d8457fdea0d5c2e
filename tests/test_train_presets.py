"""train.py's programs for every recipe of the series (apart from test_train.py, so that the test
runners' two workers share the load)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_resnet_speed import presets, train
from jax_resnet_speed.data import in_memory

MEAN, STD = np.array([0.5, 0.5, 0.5]), np.array([0.25, 0.25, 0.25])


def distinct_presets() -> list[str]:
    """Every preset, less those that train exactly as an earlier one (post8-01 is myrtle-resnet9, ...)
    and the airbench ones, which test_tiny_airbench_run_learns_far_above_chance builds, steps and evaluates."""
    seen, names = [], []
    for name, recipe in presets.PRESETS.items():
        if recipe.training_fields() not in seen and recipe.timing.rule != "airbench":
            seen.append(recipe.training_fields())
            names.append(name)
    return names


@pytest.mark.parametrize("preset", distinct_presets())
def test_every_preset_builds_takes_a_step_and_evaluates(preset):
    recipe = presets.get_preset(preset).replace(**{"data.batch_size": 32})
    recipe = recipe.replace(**{"network.batch_norm.ghost_splits": min(recipe.network.batch_norm.ghost_splits, 2)})
    config = train.RunConfig(recipe, precision="fp32", width_mult=0.0625)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 64).astype(np.int32)
    data = train.put_on_device(in_memory(images, labels, images[:20], labels[:20], MEAN, STD), recipe, jnp.float32)
    programs = train.build_programs(config, data)
    state = programs.init(jax.random.key(0), data.train_padded, programs.hyper)
    before = jax.tree_util.tree_map(np.array, state.params)
    state = programs.train_step(state, data.train_padded, data.train_labels,
                                programs.epoch_batches(state.rng, jnp.int32(1)))
    assert int(state.step) == 1 and np.isfinite(float(state.totals[0]))
    moved = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != np.asarray(b))), before, state.params)
    assert all(jax.tree_util.tree_leaves(moved)), "every parameter takes a step"
    correct, correct_tta, loss_sum, count = np.asarray(
        programs.evaluate(train.eval_variables(state), data.test_images, data.test_labels))
    assert count == 20 and 0 <= correct <= 20 and 0 <= correct_tta <= 20 and np.isfinite(loss_sum)
