"""Per-op CPU time of the network's forward+backward, JAX (per XLA thunk) beside PyTorch (per aten op).

JAX: a jax.profiler trace of the jitted gradient with XLA:CPU's per-thunk trace events on
(--xla_cpu_enable_xprof_traceme, added to XLA_FLAGS here), summed by thunk and grouped by the
kind of HLO instruction it runs (convolution, select-and-scatter, fusion, ...). PyTorch:
torch.profiler over the same forward+backward, self CPU time by aten op.

    python scripts/cpu_profile.py --width-mult 0.25 --batch-size 512 --calls 3
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import glob  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from jax._src.profiler import ProfileData  # noqa: E402

from jax_resnet_speed import augment, flags, model, optim, presets, torch_reference, train  # noqa: E402
from jax_resnet_speed.data import in_memory  # noqa: E402


def instruction_kinds(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> what it does: its opcode, or for a fusion the ops inside that cost."""
    kinds, computations, current = {}, {}, None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) ", line)
        if header and line.rstrip().endswith("{"):
            current = computations.setdefault(header.group(1), [])
            continue
        m = re.match(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+(?: \S+)*? ([a-z\-]+)\(", line)
        if m and current is not None:
            name, opcode = m.groups()
            current.append(opcode)
            calls = re.search(r"calls=%?([\w.\-]+)", line)
            kinds[name] = opcode + (f":{calls.group(1)}" if calls else "")
    heavy = ("convolution", "dot", "select-and-scatter", "reduce-window", "reduce", "scatter", "gather", "sort")
    for name, kind in kinds.items():
        if ":" in kind:
            opcode, callee = kind.split(":", 1)
            inner = [op for op in computations.get(callee, []) if op in heavy]
            kinds[name] = f"{opcode}({'+'.join(sorted(set(inner))) or 'elementwise'})"
    return kinds


def jax_profile(recipe: presets.Recipe, width_mult: float, images: np.ndarray, labels: np.ndarray,
                calls: int) -> None:
    config = train.RunConfig(recipe, "fp32", width_mult)
    data = train.put_on_device(in_memory(images, labels, images[:100], labels[:100],
                                         np.full(3, 0.5), np.full(3, 0.25)),
                               recipe, jnp.float32)
    programs = train.build_programs(config, data)
    net = model.for_recipe(recipe, width_mult, jnp.float32)
    state = programs.init(jax.random.key(0), data.train_padded, programs.hyper)
    idx = jnp.arange(recipe.data.batch_size)
    x = augment.augment(jax.random.key(1), data.train_padded[idx], train.IMAGE_SIZE, True, 0)
    y = data.train_labels[idx]

    def loss(params, batch_stats, constants, x, y):
        variables = {"params": params, "batch_stats": batch_stats, "constants": constants}
        logits, _ = net.apply(variables, x, train=True, mutable=["batch_stats"])
        return optim.smoothed_cross_entropy(logits, y, recipe.optimiser.label_smoothing).sum()

    args = (state.params, state.batch_stats, state.constants, x, y)
    compiled = jax.jit(jax.grad(loss)).lower(*args).compile()
    kinds = instruction_kinds(compiled.as_text())
    jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(calls):
                jax.block_until_ready(compiled(*args))
        (path,) = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
        profile = ProfileData.from_file(path)
    by_thunk = collections.Counter()
    for plane in profile.planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in kinds:
                    by_thunk[event.name] += event.duration_ns / 1e9 / calls
    by_kind = collections.Counter()
    for name, seconds in by_thunk.items():
        by_kind[kinds[name]] += seconds
    total = sum(by_kind.values())
    print(f"JAX forward+backward: {total:.3f} s per call in thunks ({len(by_thunk)} thunks seen)")
    for kind, seconds in by_kind.most_common(12):
        print(f"  {kind:<52} {seconds:>8.3f} s {seconds / total:>6.1%}")
    print("  slowest thunks:")
    for name, seconds in by_thunk.most_common(12):
        print(f"    {name:<40} {kinds[name]:<40} {seconds:>8.3f} s")


def torch_profile(recipe: presets.Recipe, width_mult: float, images: np.ndarray, labels: np.ndarray,
                  calls: int) -> None:
    config = train.RunConfig(recipe, "fp32", width_mult)
    fmt = torch.channels_last
    normalised = (images.astype(np.float32) / 255.0 - 0.5) / 0.25
    whitening = (torch_reference.patch_whitening_filters(normalised, recipe.network.stem.whitening_eps)
                 if recipe.network.stem.kind == "whitening" else None)
    trainer = torch_reference.Trainer(config, torch.device("cpu"), whitening, 1, memory_format=fmt)
    batch = recipe.data.batch_size
    x = torch.from_numpy(normalised[:batch]).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
    y = torch.as_tensor(labels[:batch], dtype=torch.int64)

    def forward_backward():
        loss = F.cross_entropy(trainer.net(x), y, reduction="sum",
                               label_smoothing=recipe.optimiser.label_smoothing)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    forward_backward()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            forward_backward()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6 / calls
    print(f"PyTorch forward+backward: {total:.3f} s per call (self CPU time, main thread)")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:14]:
        seconds = e.self_cpu_time_total / 1e6 / calls
        print(f"  {e.key:<52} {seconds:>8.3f} s {seconds / total:>6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    flags.add_preset(parser, list_presets=False)
    flags.add_width_mult(parser, default=0.25, help="scale every channel width")
    flags.add_batch_size(parser, default=512, help="batch size")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--frameworks", default="jax,torch")
    args = parser.parse_args()
    recipe = presets.get_preset(args.preset).replace(**{"data.batch_size": args.batch_size})
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch_size, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images)).astype(np.int32)
    print(f"{args.preset}, width x{args.width_mult}, batch {args.batch_size}, fp32, jax {jax.__version__}, "
          f"torch {torch.__version__}, XLA_FLAGS={os.environ['XLA_FLAGS']!r}")
    if "jax" in args.frameworks:
        jax_profile(recipe, args.width_mult, images, labels, args.calls)
    if "torch" in args.frameworks:
        torch_profile(recipe, args.width_mult, images, labels, args.calls)


if __name__ == "__main__":
    main()
