"""Hashes of the lowered StableHLO of the single-device programs, to check that a refactor leaves them alone.

    JAX_PLATFORMS=cpu python scripts/stablehlo_hashes.py          # print the hashes as JSON
    JAX_PLATFORMS=cpu python scripts/stablehlo_hashes.py --check  # compare with tests/data/stablehlo_hashes.json

For myrtle-final and airbench94-muon in bf16 at width 0.25 on fixed small shapes (two batches of
zero images, 200 test images), it lowers `train_step`, `train_steps` (the epoch program) and
`evaluate` (lowering traces, it does not compile) and hashes each program's StableHLO text with
the module's name left out, so the check is about what is computed, not what a function is called.
The hashes are only stable on one JAX version (jax 0.10.2 recorded them): a new JAX lowers the same
program to different text, so re-record them with the code before a change, never after it.
tests/test_stablehlo_hashes.py runs the check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jax_resnet_speed import presets, train
from jax_resnet_speed.data import in_memory

PRESETS = ("myrtle-final", "airbench94-muon")
PROGRAMS = ("train_step", "train_steps", "evaluate")
RECORDED = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "stablehlo_hashes.json"


def lowered_texts(preset: str) -> dict[str, str]:
    """The StableHLO text of each program of `preset` (bf16, width 0.25, two batches of training data)."""
    recipe = presets.get_preset(preset)
    config = train.RunConfig(recipe=recipe, precision="bf16", width_mult=0.25, loop="epoch")
    train_images = np.zeros((2 * config.recipe.batch_size, 32, 32, 3), np.uint8)
    test_images = np.zeros((200, 32, 32, 3), np.uint8)
    labels = lambda n: np.arange(n, dtype=np.int32) % 10  # noqa: E731
    data = train.put_on_device(in_memory(train_images, labels(len(train_images)), test_images, labels(len(test_images)),
                                         np.full(3, 0.5), np.full(3, 0.25)),
                               config.recipe, train.PRECISIONS[config.precision])
    programs = train.build_programs(config, data)
    state = jax.eval_shape(programs.init, jax.random.key(0), data.train_padded, programs.hyper)
    batches = jax.eval_shape(programs.epoch_batches, state.rng, jnp.int32(0))
    step_args = (state, data.train_padded, data.train_labels, batches)
    lowered = {"train_step": programs.train_step.lower(*step_args),
               "train_steps": programs.train_steps.lower(*step_args),
               "evaluate": programs.evaluate.lower(train.eval_variables(state), data.test_images, data.test_labels)}
    return {name: program.as_text() for name, program in lowered.items()}


def digest(text: str) -> str:
    """sha256 of a StableHLO text without its module's name (`module @jit_train_step ...`)."""
    return hashlib.sha256(re.sub(r"^module @\S+", "module", text, count=1, flags=re.M).encode()).hexdigest()


def hashes() -> dict[str, dict[str, str]]:
    return {preset: {name: digest(text) for name, text in lowered_texts(preset).items()} for preset in PRESETS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help=f"compare with {RECORDED.name}; exit 1 on a difference")
    parser.add_argument("--record", action="store_true", help=f"write {RECORDED.name} (only from unchanged code)")
    args = parser.parse_args(argv)
    current = {"jax": jax.__version__, "hashes": hashes()}
    if args.record:
        RECORDED.write_text(json.dumps(current, indent=1) + "\n")
    if not args.check:
        print(json.dumps(current, indent=1))
        return 0
    recorded = json.loads(RECORDED.read_text())
    changed = [f"{preset} {name}" for preset in PRESETS for name in PROGRAMS
               if recorded["hashes"][preset][name] != current["hashes"][preset][name]]
    print("StableHLO " + (f"changed: {', '.join(changed)}" if changed else "unchanged") +
          f" (jax {jax.__version__}; recorded on jax {recorded['jax']})")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
