"""Data parallelism with jax.sharding: a 1-D device mesh, and the shardings the trainer uses on it.

The train step stays one program over the whole batch. Each batch is sharded along the mesh
and the train state replicated; XLA's partitioner splits the work and inserts the gradient
all-reduce itself (no pmap, no hand-written collectives). Because the program's meaning is
the global one, ghost batch norm still normalises slices of the *global* batch, 32 images
each, whatever the number of devices. Across hosts, jax.distributed makes every process see
the same global mesh (docs/scaling.md).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(count: int) -> Mesh | None:
    """A 1-D mesh over the first `count` devices (every process's, across hosts); None for one device,
    which keeps the single-device programs exactly as they are without a mesh."""
    devices = jax.devices()
    if count > len(devices):
        raise ValueError(f"{count} devices asked for and {len(devices)} are visible")
    if count == 1 and jax.process_count() == 1:
        return None
    return Mesh(np.asarray(devices[:count]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Split the leading (batch) axis across the mesh."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def shard_batch(mesh: Mesh | None, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """Inside a jitted program: ask for `arrays` split along their batch axis (no-op without a mesh)."""
    if mesh is None:
        return arrays
    return tuple(jax.lax.with_sharding_constraint(a, batch_sharded(mesh)) for a in arrays)


def put_replicated(mesh: Mesh | None, host: np.ndarray) -> jax.Array:
    """A host array (every process holds the same one) on every device of the mesh.

    make_array_from_callback builds a global array from each process's own copy, which also
    works across hosts, where plain device_put of host data cannot place it on another
    process's devices.
    """
    if mesh is None:
        return jax.numpy.asarray(host)
    return jax.make_array_from_callback(host.shape, replicated(mesh), lambda index: host[index])



def replicate(mesh: Mesh | None, tree: Any) -> Any:
    """Inside a jitted program: ask for every array of `tree` replicated on the mesh, as the
    program's outputs are (no-op without a mesh)."""
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, replicated(mesh))
