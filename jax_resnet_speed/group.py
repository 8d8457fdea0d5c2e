"""Many independent runs of one recipe trained together in one compiled program.

The train step is vmapped over a stacked train state. Each member of a group has its own seed
(initialisation, shuffling and augmentation) and its own traced hyperparameters (optim.Hyper);
all members share the dataset on the device and one compiled program. The experiments of
posts 5-7 vmap over hyperparameters with it; a group of seeds is the same machinery.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jax_resnet_speed import loop, optim, train


def stack(trees: Sequence[Any]) -> Any:
    """Pytrees of the same structure stacked along a new leading axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def keys(seeds: Sequence[int]) -> jax.Array:
    """The PRNG key of each seed, as train.run makes it for a single run."""
    return jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))


def vmapped(programs: train.Programs) -> train.Programs:
    """The programs of a run, vmapped over the members of a group (the dataset is shared)."""
    return dataclasses.replace(
        programs,
        init=jax.jit(jax.vmap(programs.init, in_axes=(0, None, 0))),
        epoch_batches=jax.jit(jax.vmap(programs.epoch_batches, in_axes=(0, None))),
        train_step=jax.jit(jax.vmap(programs.train_step, in_axes=(0, None, None, 0)), donate_argnums=0),
        train_steps=jax.jit(jax.vmap(programs.train_steps, in_axes=(0, None, None, 0)), donate_argnums=0),
        evaluate=jax.jit(jax.vmap(programs.evaluate, in_axes=(0, None, None))),
        proxy=programs.proxy and dataclasses.replace(
            programs.proxy, init=jax.jit(jax.vmap(programs.proxy.init, in_axes=(0, None, 0))),
            batches=jax.jit(jax.vmap(programs.proxy.batches)),
            **{name: jax.jit(jax.vmap(getattr(programs.proxy, name), in_axes=(0, None, None, 0)), donate_argnums=0)
               for name in ("learn", "score")}))


def compile_group(programs: train.Programs, data: train.DeviceData, seeds: Sequence[int],
                  hypers: Sequence[optim.Hyper]) -> tuple[train.Programs, float]:
    """vmapped(programs), compiled for a group of len(seeds) members; and the seconds it took."""
    return train.compile_programs(vmapped(programs), data, seeds[0], keys(seeds), stack(hypers))


def member_bytes(programs: train.Programs, data: train.DeviceData) -> int:
    """Estimated device bytes one more member of a group needs: its train state (twice: the
    step's input and output) and the scratch memory of one train step, from XLA's memory
    analysis of the single-run step. The dataset is shared and not counted."""
    state = jax.eval_shape(programs.init, jax.random.key(0), data.train_padded, programs.hyper)
    batches = jax.eval_shape(programs.epoch_batches, state.rng, jnp.int32(0))
    state_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state)
                      if hasattr(leaf.dtype, "itemsize"))
    step = programs.train_step.lower(state, data.train_padded, data.train_labels, batches).compile()
    analysis = step.memory_analysis()
    scratch = analysis.temp_size_in_bytes if analysis is not None else 0
    return 2 * state_bytes + scratch + batches.size * batches.dtype.itemsize


def available_bytes(device: jax.Device | None = None) -> int:
    """Free memory of the device (the allocator's limit less what is in use), or of the host on a
    CPU backend, whose devices do not report memory."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return _host_available_bytes()


def _host_available_bytes(meminfo_path: str = "/proc/meminfo") -> int:
    """The kernel's MemAvailable (free memory plus the page cache it can drop), not MemFree, which
    leaves out the cache and so reads far lower on a machine that has been reading files."""
    try:
        with open(meminfo_path) as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass  # not Linux
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def members_that_fit(per_member: int, available: int, headroom: float = 0.8) -> int:
    """How many members fit in `headroom` of the available memory (at least one)."""
    return max(1, int(available * headroom) // max(per_member, 1))


def room(programs: train.Programs, data: train.DeviceData) -> tuple[int, int, int]:
    """Room on the device for a group: the bytes per member (member_bytes), the free bytes
    (available_bytes) and how many members fit in them (members_that_fit)."""
    per_member, available = member_bytes(programs, data), available_bytes()
    return per_member, available, members_that_fit(per_member, available)


class Engine(train.Engine):
    """loop.Engine over the vmapped programs of a group (compile_group): member k from seeds[k] with hypers[k]."""

    def __init__(self, programs: train.Programs, data: train.DeviceData, seeds: Sequence[int],
                 hypers: Sequence[optim.Hyper]):
        super().__init__(programs, data, seeds[0])
        self.seeds, self.hypers = seeds, hypers

    def init_arguments(self) -> tuple[jax.Array, optim.Hyper]:
        return keys(self.seeds), stack(self.hypers)


def run(programs: train.Programs, data: train.DeviceData, config: train.RunConfig, seeds: Sequence[int],
        hypers: Sequence[optim.Hyper], on_epoch: Callable[[int, dict], None], records: Sequence[dict],
        after_epoch: Callable[[int], None] = lambda epoch: None) -> None:
    """Train a group (programs from compile_group) and fill records[k] as train.run fills one run's (loop.run).

    The members share one clock: every record's seconds are the group's. A member whose loss
    stops being finite is marked diverged and its later epochs are dropped; the others go on.
    on_epoch(member, metrics) is called for each member still training, then after_epoch(epoch).
    """
    loop.run(Engine(programs, data, seeds, hypers), config.recipe, seeds, records, on_epoch, after_epoch)


def padded(items: Sequence[Any], size: int) -> list[Any]:
    """`items` filled up to `size` with copies of the last, so a short last chunk reuses the
    program compiled for full chunks (the copies' results are dropped)."""
    return [*items, *[items[-1]] * (size - len(items))]
