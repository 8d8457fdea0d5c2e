"""Checkpoints of a training run: its TrainState and a JSON progress record, saved and resumed with Orbax.

A checkpoint is a folder DIR/<index>. Orbax writes it as DIR/<index>.orbax-checkpoint-tmp and
renames it to DIR/<index> once every item is written (on a local filesystem; object stores mark
a finished folder with commit_success.txt instead). A run killed mid-save leaves only the
temporary folder, which no listing counts and the next save of that index replaces, so
`latest` and `restore` only ever see whole checkpoints.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

STATE, PROGRESS = "state", "progress"
MISMATCHES_SHOWN = 3
ERROR_CHARS = 400


class CheckpointError(Exception):
    """No checkpoint to resume from, or one that cannot be read or does not fit the run."""


def is_key(leaf: Any) -> bool:
    """A typed PRNG key array (jax.random.key): stored as its key data, which Orbax can write."""
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def to_host(leaf: Any) -> np.ndarray:
    """A numpy copy of a leaf, so a donating step may reuse the device buffer while it is written."""
    if is_key(leaf):
        leaf = jax.random.key_data(leaf)
    return np.array(leaf, copy=True)  # on a CPU, np.asarray may alias the device buffer


def restore_target(leaf: Any) -> Any:
    """What Orbax restores a leaf as: a jax.Array on the leaf's sharding, or a numpy array."""
    if is_key(leaf):
        leaf = jax.random.key_data(leaf)
    if isinstance(leaf, jax.Array):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    return np.asarray(leaf)


def leaf_name(path: tuple) -> str:
    """Orbax's name for a leaf (opt_state.inner_states.weights...), whatever kinds of nodes lead to it."""
    parts = []
    for entry in path:
        for attribute in ("name", "key", "idx"):
            if hasattr(entry, attribute):
                parts.append(str(getattr(entry, attribute)))
                break
        else:
            parts.append(str(entry))
    return ".".join(parts)


def leaf_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """{leaf name: (shape, dtype)} of a tree of arrays or of Orbax's array metadata."""
    return {leaf_name(path): (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
            for path, leaf in jax.tree.flatten_with_path(tree)[0]}


def first_line(error: Exception) -> str:
    """An exception as one line: its type and the first line of its message, less tensorstore's spec."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    line = lines[0].split(" [tensorstore_spec=")[0]
    return f"{type(error).__name__}: {line[:ERROR_CHARS]}{'...' if len(line) > ERROR_CHARS else ''}"


class Checkpoints:
    """Orbax CheckpointManager over DIR: item 'state' (the TrainState as a pytree of host arrays)
    and item 'progress' (a JSON dict)."""

    def __init__(self, directory: str, keep: int = 2):
        """Keeps the newest `keep` checkpoints. Creates DIR (Orbax needs an absolute path)."""
        self.directory = os.path.abspath(os.path.expanduser(directory))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False)
        # Handlers named up front, so a fresh manager can read a checkpoint's metadata before any restore.
        handlers = ocp.handlers.create_default_handler_registry(
            **{STATE: ocp.StandardCheckpointHandler(), PROGRESS: ocp.JsonCheckpointHandler()})
        self.manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=handlers)

    def save(self, index: int, state: Any, progress: dict) -> None:
        """Write checkpoint `index` and return once it is finalised (renamed into place).

        The state is copied to host first: the train step donates its state, so the device
        buffers may be reused as soon as this returns control to the trainer. Typed PRNG keys
        are stored as their key data. Call it off the training clock.
        """
        json.dumps(progress)  # a TypeError now, not after Orbax has begun a folder it then leaves half-written
        host = jax.tree.map(to_host, state)
        if index in self.manager.all_steps():
            raise CheckpointError(f"checkpoint {index} already exists in {self.directory}; resume from the "
                                  f"latest one ({self.latest()}) instead of starting over, or use another folder")
        self.manager.save(index, args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(host),
                                                            PROGRESS: ocp.args.JsonSave(progress)}))
        self.manager.wait_until_finished()

    def latest(self) -> int | None:
        """The newest finalised checkpoint's index, or None when DIR holds none."""
        self.manager.reload()  # another process (a killed run) may have written DIR since
        return self.manager.latest_step()

    def existing(self, index: int | None) -> int:
        """`index`, or the latest when None, checked to be a finalised checkpoint; raises CheckpointError."""
        self.manager.reload()  # another process (a killed run) may have written DIR since
        available = self.manager.all_steps()
        if not available:
            raise CheckpointError(f"no checkpoint to resume from in {self.directory}; "
                                  f"check the folder, or start the run afresh without resuming")
        index = max(available) if index is None else index
        if index not in available:
            raise CheckpointError(f"no checkpoint {index} in {self.directory}; it holds {sorted(available)}")
        return index

    def progress(self, index: int | None = None) -> dict:
        """Only the progress record of checkpoint `index` (default: the latest): what a resume checks
        and continues before it builds a state to restore into."""
        index = self.existing(index)
        try:
            return self.manager.restore(index, args=ocp.args.Composite(**{PROGRESS: ocp.args.JsonRestore()}))[PROGRESS]
        except Exception as error:  # Orbax raises many kinds (ValueError, FileNotFoundError, tensorstore's)
            raise CheckpointError(f"cannot read checkpoint {index} in {self.directory}: {first_line(error)}") from error

    def restore(self, like: Any, index: int | None = None) -> tuple[Any, dict]:
        """Checkpoint `index` (default: the latest) as (state, progress).

        `like` is a state of the run's structure, e.g. a freshly initialised TrainState: the
        restored state has its structure and dtypes, its typed PRNG keys, and each leaf placed
        as `like`'s is (the same sharding and devices).
        """
        index = self.existing(index)
        saved = self.check_matches(like, index)
        # Restored in the checkpoint's own tree, its leaves matched to `like`'s by name: a field that is
        # None (no leaves) may be missing from a checkpoint written before the field existed.
        wanted = {leaf_name(path): restore_target(leaf) for path, leaf in jax.tree.flatten_with_path(like)[0]}
        targets = jax.tree.map_with_path(lambda path, _: wanted[leaf_name(path)], saved)
        try:
            restored = self.manager.restore(index, args=ocp.args.Composite(**{
                STATE: ocp.args.StandardRestore(targets), PROGRESS: ocp.args.JsonRestore()}))
        except Exception as error:  # Orbax raises many kinds (ValueError, FileNotFoundError, tensorstore's)
            raise CheckpointError(f"cannot read checkpoint {index} in {self.directory}: {first_line(error)}") from error
        values = {leaf_name(path): value for path, value in jax.tree.flatten_with_path(restored[STATE])[0]}
        state = jax.tree.map_with_path(
            lambda path, leaf: jax.random.wrap_key_data(values[leaf_name(path)], impl=jax.random.key_impl(leaf))
            if is_key(leaf) else values[leaf_name(path)], like)
        return state, restored[PROGRESS]

    def check_matches(self, like: Any, index: int) -> Any:
        """Raise CheckpointError unless checkpoint `index` holds exactly `like`'s leaves, shapes and dtypes;
        return its tree of array metadata."""
        try:
            tree = self.manager.item_metadata(index)[STATE].tree
        except Exception as error:
            raise CheckpointError(f"cannot read checkpoint {index} in {self.directory}: {first_line(error)}") from error
        saved = leaf_specs(tree)
        wanted = leaf_specs(jax.tree.map(restore_target, like))
        problems = [f"{name} missing from the checkpoint" for name in wanted if name not in saved]
        problems += [f"{name} in the checkpoint but not in this run" for name in saved if name not in wanted]
        problems += [f"{name} is {saved[name][1]}{list(saved[name][0])} there, {spec[1]}{list(spec[0])} here"
                     for name, spec in wanted.items() if name in saved and saved[name] != spec]
        if problems:
            shown = "; ".join(problems[:MISMATCHES_SHOWN])
            more = f" (and {len(problems) - MISMATCHES_SHOWN} more)" if len(problems) > MISMATCHES_SHOWN else ""
            raise CheckpointError(f"checkpoint {index} in {self.directory} does not match this run's state "
                                  f"(another recipe, width or precision?): {shown}{more}")
        return tree

    def close(self) -> None:
        """Wait for Orbax's background work (deleting old checkpoints) and release it."""
        self.manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
