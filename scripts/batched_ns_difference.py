"""How far the batched Newton-Schulz over zero-padded filters is from the per-filter form.

Prints, for airbench94's filter banks and a tall 1x1 bank, the largest absolute difference between
the two forms in fp32 and bf16, beside the bf16 per-filter form's own distance from fp32.
Run from the repository root: python scripts/batched_ns_difference.py
"""

import jax.numpy as jnp
import numpy as np

from jax_resnet_speed import muon

SHAPES = [(3, 3, 24, 64), (3, 3, 64, 64), (3, 3, 64, 256), (3, 3, 256, 256), (3, 3, 256, 256), (1, 1, 8, 32)]


def main() -> None:
    rng = np.random.default_rng(1)
    kernels = [jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in SHAPES]
    coefficients = muon.RECORD_NS_COEFFICIENTS
    print("dtype  shape             batched-per_filter  bitwise  per_filter-fp32  max|fp32|")
    for name, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
        batched = muon.orthogonalise_filter_stack(kernels, 3, dtype, coefficients)
        for kernel, out in zip(kernels, batched):
            single = np.asarray(muon.orthogonalise_filters(kernel, 3, dtype, coefficients), np.float64)
            exact = np.asarray(muon.orthogonalise_filters(kernel, 3, jnp.float32, coefficients), np.float64)
            out = np.asarray(out, np.float64)
            bitwise = str(np.array_equal(out, single))
            print(f"{name}   {str(kernel.shape):17} {np.abs(out - single).max():18.2e}  {bitwise:7}"
                  f"  {np.abs(single - exact).max():15.2e}  {np.abs(exact).max():9.3f}")


if __name__ == "__main__":
    main()
