"""One convolution's forward, input gradient and weight gradient on the CPU: XLA against oneDNN (PyTorch).

For each 3x3 (or 1x1) convolution of the quarter-width ResNet-9 at batch 512, times in one
process, alternating: JAX's forward, its input gradient (vjp with respect to x), its weight
gradient (vjp with respect to the kernel), the same three in PyTorch (aten.convolution_backward),
and the weight gradient written as one matmul of im2col patches (`dw im2col`) or as one
matmul per kernel tap (`dw taps`).

    XLA_FLAGS=... python scripts/cpu_conv_bench.py --rounds 3
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
from cpu_breakdown import time_piece  # this folder is on sys.path when a script here runs

from jax_resnet_speed import flags

# (name, spatial size, input channels, output channels, kernel) at width x1; the ResNet-9 of myrtle-final.
LAYERS = (("prep 1x1", 32, 27, 64, 1), ("layer1", 32, 64, 128, 3), ("res1", 16, 128, 128, 3),
          ("layer2", 16, 128, 256, 3), ("layer3", 8, 256, 512, 3), ("res3", 4, 512, 512, 3))


WIDTHS = (8, 8, 8, 9, 8, 9, 8, 8)  # of the printed columns


def jax_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    k = w.shape[0]
    return jax.lax.conv_general_dilated(x, w, (1, 1), [(k // 2, k // 2)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def weight_grad_im2col(x: jax.Array, g: jax.Array, k: int) -> jax.Array:
    """dL/dw of a stride-1 k//2-padded conv: im2col patches of x (N*H*W, k*k*Cin), transposed, times g."""
    n, h, w, c_in = x.shape
    xp = jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    patches = jnp.concatenate([xp[:, dy:dy + h, dx:dx + w] for dy in range(k) for dx in range(k)], axis=-1)
    dw = patches.reshape(-1, k * k * c_in).T @ g.reshape(-1, g.shape[-1])
    return dw.reshape(k, k, c_in, g.shape[-1])


def weight_grad_shifted(x: jax.Array, g: jax.Array, k: int) -> jax.Array:
    """The same as k*k matmuls, one per kernel tap, of the shifted input with g."""
    n, h, w, c_in = x.shape
    xp = jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    g2 = g.reshape(-1, g.shape[-1])
    taps = [xp[:, dy:dy + h, dx:dx + w].reshape(-1, c_in).T @ g2 for dy in range(k) for dx in range(k)]
    return jnp.stack(taps).reshape(k, k, c_in, g.shape[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    flags.add_width_mult(parser, default=0.25, help="scale every channel width")
    flags.add_batch_size(parser, default=512, help="batch size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"width x{args.width_mult}, batch {args.batch_size}, fp32, jax {jax.__version__}, torch {torch.__version__}"
          f" ({torch.get_num_threads()} threads), XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print("median over rounds of the median of repeats, milliseconds")
    print(f"{'layer':<9} {'shape':<17} {'jax fwd':>8} {'jax dx':>8} {'jax dw':>8} {'dw im2col':>9} {'dw taps':>8} "
          f"{'torch fwd':>9} {'torch dx':>8} {'torch dw':>8} {'dw/torch':>8}")
    totals = np.zeros(8)
    for name, size, c_in, c_out, k in LAYERS:
        c_in = c_in if name == "prep 1x1" else max(1, round(c_in * args.width_mult))
        c_out = max(1, round(c_out * args.width_mult))
        x = rng.standard_normal((args.batch_size, size, size, c_in), np.float32)
        w = (rng.standard_normal((k, k, c_in, c_out)) / np.sqrt(k * k * c_in)).astype(np.float32)
        g = rng.standard_normal((args.batch_size, size, size, c_out), np.float32)
        xj, wj, gj = jnp.asarray(x), jnp.asarray(w), jnp.asarray(g)
        fwd = jax.jit(jax_conv)
        dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: jax_conv(x, w), x)[1](g)[0])
        dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: jax_conv(x, w), w)[1](g)[0])
        dw_dot = jax.jit(lambda x, w, g: weight_grad_im2col(x, g, w.shape[0]))
        dw_taps = jax.jit(lambda x, w, g: weight_grad_shifted(x, g, w.shape[0]))
        for alternative in (dw_dot, dw_taps):
            np.testing.assert_allclose(np.asarray(alternative(xj, wj, gj)), np.asarray(dw(xj, wj, gj)),
                                       rtol=2e-3, atol=2e-2)
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
        gt = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)

        def torch_backward(mask):
            return torch.ops.aten.convolution_backward(gt, xt, wt, None, [1, 1], [k // 2] * 2, [1, 1], False,
                                                       [0, 0], 1, mask)

        runs = [lambda: fwd(xj, wj).block_until_ready(), lambda: dx(xj, wj, gj).block_until_ready(),
                lambda: dw(xj, wj, gj).block_until_ready(), lambda: dw_dot(xj, wj, gj).block_until_ready(),
                lambda: dw_taps(xj, wj, gj).block_until_ready(),
                lambda: torch.nn.functional.conv2d(xt, wt, padding=k // 2),
                lambda: torch_backward([True, False, False]), lambda: torch_backward([False, True, False])]
        for run in runs:
            run()
        times = np.array([[time_piece(run, args.repeats) for run in runs] for _ in range(args.rounds)])
        medians = np.median(times, axis=0) * 1e3
        totals += medians
        ratio = np.median(times[:, 2] / times[:, 7])
        print(f"{name:<9} {f'{size}x{size} {c_in}->{c_out}':<17} " + " ".join(
            f"{m:>{w_}.1f}" for m, w_ in zip(medians, WIDTHS)) + f" {ratio:>8.2f}")
    print(f"{'sum':<27} " + " ".join(f"{m:>{w_}.1f}" for m, w_ in zip(totals, WIDTHS)))


if __name__ == "__main__":
    main()
