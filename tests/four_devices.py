"""Run by test_parallel.py in a fresh process: XLA_FLAGS gives this CPU four devices before JAX
starts. One train step and one evaluation on one device and on a mesh of four, and ghost batch
norm on a sharded batch; the measurements go to the JSON file named by argv[1]."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from conftest import make_learnable  # noqa: E402

from jax_resnet_speed import model, parallel, presets, train  # noqa: E402
from jax_resnet_speed.data import in_memory  # noqa: E402

MEAN, STD = np.array([0.5, 0.5, 0.5]), np.array([0.25, 0.25, 0.25])


def one_step(devices: int) -> dict:
    """Init, one train step and one evaluation of myrtle-final at batch 256 (8 ghost splits of 32)."""
    recipe = presets.get_preset("myrtle-final").with_epochs(1).replace(**{"data.batch_size": 256})
    config = train.RunConfig(recipe, precision="fp32", width_mult=0.125, devices=devices)
    images, labels = make_learnable(512, seed=0)
    test_images, test_labels = make_learnable(100, seed=1)
    data = train.put_on_device(in_memory(images, labels, test_images, test_labels, MEAN, STD),
                               recipe, jnp.float32, parallel.make_mesh(devices))
    programs = train.build_programs(config, data)
    key = jax.random.key(0)
    state = train.compile_init(programs, key, data.train_padded, programs.hyper)(key, data.train_padded, programs.hyper)
    initial = jax.device_get(state.params)
    batches = programs.epoch_batches(state.rng, jnp.int32(1))
    state = programs.train_step(state, data.train_padded, data.train_labels, batches)
    evaluation = programs.evaluate(train.eval_variables(state), data.test_images, data.test_labels)
    return {"initial": initial, "params": jax.device_get(state.params),
            "batch_stats": jax.device_get(state.batch_stats), "totals": np.asarray(state.totals),
            "evaluation": np.asarray(evaluation),
            "param_sharding": str(jax.tree_util.tree_leaves(state.params)[0].sharding),
            "eval_batch": int(data.test_images.shape[1])}


def ghost_batch_norm_on_four_devices() -> float:
    """Largest difference between GhostBatchNorm on a batch split over four devices and a numpy
    normalisation of each slice of 32 consecutive images with its own statistics."""
    x = np.random.default_rng(0).normal(2.0, 3.0, (256, 4, 4, 8)).astype(np.float32)
    x[::32] += 5.0  # slices with different statistics, so normalising over any other grouping differs
    bn = model.GhostBatchNorm(num_splits=8)
    variables = bn.init(jax.random.key(0), x, train=False)
    mesh = parallel.make_mesh(4)
    sharded = jax.device_put(x, parallel.batch_sharded(mesh))
    y, _ = jax.jit(lambda v, x: bn.apply(v, x, train=True, mutable=["batch_stats"]))(variables, sharded)
    slices = x.reshape(8, 32, 4, 4, 8)
    mean, var = slices.mean(axis=(1, 2, 3), keepdims=True), slices.var(axis=(1, 2, 3), keepdims=True)
    expected = ((slices - mean) / np.sqrt(var + 1e-5)).reshape(x.shape)
    return float(np.max(np.abs(np.asarray(y) - expected)))


def main() -> None:
    one, four = one_step(1), one_step(4)
    initial, after_one, after_four = (jax.tree_util.tree_leaves(tree)
                                      for tree in (one["initial"], one["params"], four["params"]))
    updates = [(b - a, c - a) for a, b, c in zip(initial, after_one, after_four)]
    largest_update = max(float(np.max(np.abs(u1))) for u1, _ in updates)
    stats = zip(jax.tree_util.tree_leaves(one["batch_stats"]), jax.tree_util.tree_leaves(four["batch_stats"]))
    result = {
        "devices": len(jax.devices()),
        "initial_params_equal": all(np.array_equal(a, b)
                                    for a, b in zip(initial, jax.tree_util.tree_leaves(four["initial"]))),
        "update_difference": max(float(np.max(np.abs(u1 - u4))) for u1, u4 in updates) / largest_update,
        "batch_stats_difference": max(float(np.max(np.abs(a - b))) for a, b in stats),
        "totals": [one["totals"].tolist(), four["totals"].tolist()],
        "evaluation": [one["evaluation"].tolist(), four["evaluation"].tolist()],
        "param_sharding": four["param_sharding"], "eval_batch": four["eval_batch"],
        "ghost_batch_norm_difference": ghost_batch_norm_on_four_devices(),
    }
    with open(sys.argv[1], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
