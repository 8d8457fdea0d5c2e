"""FLOP counts of a program and the peak rates of the devices it runs on.

Two counts of a train step's work:
- XLA's cost analysis of the compiled program: every operation XLA emits, elementwise ones
  included (the "hardware" FLOPs);
- model FLOPs: 2 x the multiply-adds of the convolutions and matrix products in the program's
  jaxpr, forward and backward. This is the count behind model FLOP utilisation, and the one
  torch.utils.flop_counter makes for PyTorch, so the two frameworks compare.

A whole run's model FLOPs (run_flops) are its train steps' and its final evaluation's forward
passes, the way the airbench scripts count the PFLOPs they publish: a trained image costs its
forward and backward passes (about 3 forward), a test image one forward pass per TTA view.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from jax_resnet_speed import presets

TEST_IMAGES = 10_000  # CIFAR-10's test set, which a run evaluates in full at its end


def _conv_flops(eqn: Any) -> int:
    """2 x output elements x the multiply-adds per output: the kernel's size over its output features."""
    out = eqn.outvars[0].aval.shape
    kernel = eqn.invars[1].aval.shape
    out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
    return 2 * math.prod(out) * math.prod(kernel) // kernel[out_feature_dim]


def _dot_flops(eqn: Any) -> int:
    """2 x output elements x the length of the contracted dimensions."""
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)


_COUNTED = {"conv_general_dilated": _conv_flops, "dot_general": _dot_flops}


def _sub_jaxprs(params: dict) -> list[Any]:
    found = []
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                found.append(item.jaxpr)
            elif isinstance(item, jax.extend.core.Jaxpr):
                found.append(item)
    return found


def jaxpr_model_flops(jaxpr: Any) -> int:
    """Model FLOPs of a jaxpr, nested calls included; a scan's body counts once per iteration.

    A stride-2 convolution's input gradient is a convolution over the dilated gradient; it is
    counted at its dilated size (the zeros included), as XLA counts it.
    """
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in _COUNTED:
            total += _COUNTED[name](eqn)
        times = eqn.params["length"] if name == "scan" else 1
        total += times * sum(jaxpr_model_flops(sub) for sub in _sub_jaxprs(eqn.params))
    return total


def model_flops(fn: Any, *args: Any) -> int:
    """Model FLOPs of one call of `fn` on arguments of these shapes (traced, never run)."""
    return jaxpr_model_flops(jax.make_jaxpr(fn)(*args))


def evaluation_forward_passes(evaluation: presets.Evaluation, test_images: int = TEST_IMAGES) -> int:
    """Forward passes of a run's final evaluation, as the scripts count them: one per TTA view of
    each test image (1 without TTA, 2 with flip TTA, 6 with airbench's shifts too); selective TTA
    (the record's) is a plain pass over every image, then the views of the int(fraction x n)
    least confident."""
    views = (6 if evaluation.tta_shift else 2) if evaluation.tta else 1
    if evaluation.tta_selective_fraction:
        return test_images + views * int(evaluation.tta_selective_fraction * test_images)
    return views * test_images


def run_flops(recipe: presets.Recipe, width_mult: float, step_flops: float,
              forward_flops_per_image: float) -> dict:
    """Model FLOPs of the recipe's whole run on CIFAR-10: `step_flops` (one train step's) x its
    steps, plus its final evaluation's forward passes, beside the figure its script publishes.

    The ratio to the published figure is given at full width only: a narrowed network (width_mult
    != 1) is not the script's, so its run is counted but not compared."""
    run_steps = recipe.run_steps(presets.steps_per_epoch(recipe.batch_size))
    passes = evaluation_forward_passes(recipe.evaluation)
    pflops = (step_flops * run_steps + forward_flops_per_image * passes) / 1e15
    published = recipe.timing.published_pflops
    # The images the steps train on: with data filtering, the kept part of each batch drawn.
    return {"run_steps": run_steps, "train_images": run_steps * recipe.data.trained_batch,
            "evaluation_forward_passes": passes, "forward_flops_per_image": forward_flops_per_image,
            "pflops": pflops, "width_mult": width_mult, "published_pflops": published,
            "ratio_to_published": pflops / published if published and width_mult == 1 else None}


def xla_cost(compiled: Any) -> tuple[float | None, float | None]:
    """(FLOPs, bytes accessed) of a compiled program from XLA's cost analysis, None where it has no count."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per device program
        analysis = analysis[0] if analysis else None
    if not analysis:
        return None, None
    return analysis.get("flops"), analysis.get("bytes accessed")


@dataclasses.dataclass(frozen=True)
class DevicePeak:
    """Dense peak rates of one device (no structured sparsity), TFLOP/s per precision, and memory TB/s."""

    name: str
    tflops: dict[str, float]
    memory_tb_per_s: float
    source: str


# Matched by substring of jax.Device.device_kind (torch.cuda.get_device_name), first match wins.
# The datasheets quote bf16/fp16 tensor-core rates with 2:4 sparsity; these are half of that.
PEAKS = (
    DevicePeak("H100 PCIe", {"bf16": 756.0, "fp16": 756.0}, 2.0,
               "NVIDIA H100 Tensor Core GPU datasheet, PCIe column"),
    DevicePeak("H100", {"bf16": 989.4, "fp16": 989.4}, 3.35,
               "NVIDIA H100 Tensor Core GPU datasheet, SXM column"),
    DevicePeak("H200", {"bf16": 989.4, "fp16": 989.4}, 4.8,
               "NVIDIA H200 Tensor Core GPU datasheet, SXM column"),
    DevicePeak("A100", {"bf16": 312.0, "fp16": 312.0}, 2.039,
               "NVIDIA A100 Tensor Core GPU datasheet, 80GB SXM column (40GB: 1.555 TB/s)"),
    DevicePeak("V100", {"fp16": 125.0}, 0.9,
               "NVIDIA V100 Tensor Core GPU datasheet, SXM2 column"),
    DevicePeak("L4", {"bf16": 121.0, "fp16": 121.0}, 0.3,
               "NVIDIA L4 Tensor Core GPU datasheet"),
)


def device_peak(device_kind: str) -> DevicePeak | None:
    """The table's entry for a device, or None (every CPU, and GPUs not in the table)."""
    for peak in PEAKS:
        if peak.name.lower() in device_kind.lower():
            return peak
    return None


def measured_matmul_tflops(dtype: Any, size: int, repeats: int = 5) -> float:
    """TFLOP/s of a size x size matrix product in `dtype` on the default device: the median of
    `repeats` timed products, after one untimed one."""
    import time

    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(0))
    a, b = (jax.random.normal(k, (size, size), jnp.float32).astype(dtype) for k in keys)
    product = jax.jit(lambda x, y: x @ y).lower(a, b).compile()
    product(a, b).block_until_ready()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, b).block_until_ready()
        seconds.append(time.perf_counter() - start)
    return 2 * size ** 3 / float(np.median(seconds)) / 1e12
