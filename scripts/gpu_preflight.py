"""Preflight of the GPU battery: the imports, a GPU among the devices, and one jitted train step of
each of the given presets at a small width on random images, in one process.

    PYTHONPATH=. python3 scripts/gpu_preflight.py myrtle-final airbench94 airbench94-muon

It exists so that a broken machine or a version of JAX that breaks the code costs seconds, not a
device window: on the first failure it prints one line, `preflight failed: WHAT: WHY`, and exits 1.
ALLOW_CPU=1 skips the GPU check, for the CPU rehearsal (tests/test_gpu_battery.py).
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from collections.abc import Sequence

WIDTH_MULT, BATCH_SIZE, TRAIN_IMAGES = 0.0625, 64, 128  # a step of each preset's program, compiled in seconds
MESSAGE_CHARS = 300  # XLA's errors run to pages: the line keeps their start


class PreflightError(Exception):
    """What failed, said in one line."""


def check_imports() -> str:
    """Import everything the headline runs need; the versions line."""
    try:
        import flax
        import jax
        import jaxlib
        import optax

        from jax_resnet_speed import bench, presets, train  # noqa: F401  (the trainer's own imports)
    except Exception as error:  # an ImportError, or an API that moved: either stops the part
        raise PreflightError(f"imports: {type(error).__name__}: {' '.join(str(error).split())[:MESSAGE_CHARS]}") \
            from error
    return f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {flax.__version__}, optax {optax.__version__}"


def check_device(allow_cpu: bool) -> str:
    """The default device, which must be a GPU unless `allow_cpu`."""
    import jax

    try:
        devices = jax.devices()
    except RuntimeError as error:  # e.g. the CUDA plugin found no usable GPU
        raise PreflightError(f"jax.devices(): {error}") from error
    if devices[0].platform != "gpu" and not allow_cpu:
        raise PreflightError(f"jax.devices() shows no GPU, only {devices} (is the CUDA plugin installed?)")
    return f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})"


def check_step(preset: str, precision: str) -> float:
    """Compile and run one train step of `preset` at a small width; its loss must be finite. Returns the seconds."""
    import jax
    import numpy as np

    from jax_resnet_speed import bench, presets, train

    start = time.perf_counter()
    try:
        recipe = presets.get_preset(preset).replace(**{"data.batch_size": BATCH_SIZE})
        config = train.RunConfig(recipe=recipe, precision=precision, width_mult=WIDTH_MULT)
        dataset = bench.synthetic_dataset(TRAIN_IMAGES)
        data = train.put_on_device(dataset, recipe, train.PRECISIONS[precision])
        programs = train.build_programs(config, data)
        state = programs.init(jax.random.key(0), data.train_padded, programs.hyper)
        batches = programs.epoch_batches(state.rng, np.int32(0))
        state = programs.train_step(state, data.train_padded, data.train_labels, batches)
        loss_sum, _, seen = (float(value) for value in jax.device_get(state.totals))
    except Exception as error:
        where = traceback.extract_tb(error.__traceback__)[-1]
        message = " ".join(str(error).split())[:MESSAGE_CHARS]
        raise PreflightError(f"{preset} train step: {type(error).__name__}: {message} "
                             f"({os.path.basename(where.filename)}:{where.lineno})") from error
    if not math.isfinite(loss_sum / seen):
        raise PreflightError(f"{preset} train step: the loss is {loss_sum / seen}, not finite")
    return time.perf_counter() - start


def main(argv: Sequence[str]) -> int:
    start = time.perf_counter()
    try:
        print(f"preflight: {check_imports()}", flush=True)
        print(f"preflight: {check_device(os.environ.get('ALLOW_CPU') == '1')}", flush=True)
        import jax

        precision = "fp32" if jax.default_backend() == "cpu" else "bf16"  # the trainer's default
        for preset in argv:
            seconds = check_step(preset, precision)
            print(f"preflight: {preset}: one {precision} train step at width x{WIDTH_MULT:g} in {seconds:.1f} s",
                  flush=True)
    except PreflightError as error:
        print(f"preflight failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the battery's time limit
        print(f"preflight failed: stopped after {time.perf_counter() - start:.0f} s", file=sys.stderr)
        return 1
    print(f"preflight passed in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
