"""Post 6: weight decay and the norms of the weights that feed into batch norm.

A conv followed by batch norm gives the same loss when its weights are scaled, so its gradient
is orthogonal to w: gradient steps only grow |w|, and weight decay shrinks it. The two balance
when the relative update |dw| / |w| is set by lr x weight decay alone, the same in every
layer (as LARS enforces by hand). This trains post 4's ResNet-9 with the trainer's own train
step and records each conv layer's |w| and |dw| / |w| at every step, beside the equilibrium.

    python -m jax_resnet_speed.experiments.weight_decay --out DIR [--scale smoke|full]
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_resnet_speed import flags, interrupt, loop, model, optim, presets, train
from jax_resnet_speed.report import files
from jax_resnet_speed.experiments import common

NAME = "weight_decay"
PRESET = "myrtle-resnet9"
SCALES = {
    "smoke": {"width_mult": 0.125, "train_subset": 2048, "test_subset": 1000, "epochs": 12, "batch_size": 64},
    "full": {"width_mult": 1.0, "epochs": 24, "batch_size": 512},
}
SCALE_FACTORS = (0.5, 2.0)  # the scalings of one layer's weights in the invariance check


def equilibrium_ratio(lr_times_wd: float | np.ndarray, momentum: float, nesterov: bool) -> float | np.ndarray:
    """|dw| / |w| per step at the equilibrium of SGD on scale-invariant weights with random gradients.

    lr_times_wd: the per-step shrink (Myrtle units: the batch size cancels). Without momentum it
    is sqrt(2 lr wd). With momentum every gradient moves w by the same total 1 / (1 - m) times
    its first step, but spread over later steps, so the per-step ratio is
    sqrt(2 lr wd (1 - m) sum_k c_k^2) for the weights c_k of the gradient of k steps ago:
    m^k (heavy ball: sqrt(2 lr wd / (1 + m))), or 1 + m then m^(k+1) (Nesterov).
    """
    if nesterov:
        spread = (1 + momentum) ** 2 + momentum ** 4 / (1 - momentum ** 2)
    else:
        spread = 1 / (1 - momentum ** 2)
    return np.sqrt(2 * np.asarray(lr_times_wd) * (1 - momentum) * spread)


def layer_name(path: tuple) -> str | None:
    """A kernel's short layer name (`prep`, `layer1`, `res1.1`, `classifier`); None for other leaves."""
    keys = [p.key for p in path]
    if keys[-1] != "kernel":
        return None
    block = re.match(r"ConvBlock_(\d+)", keys[1]) if len(keys) > 3 else None
    return keys[0] + (f".{int(block.group(1)) + 1}" if block else "")


def conv_kernels(params: Any) -> dict[str, jax.Array]:
    """Every conv kernel by its layer name, in network order."""
    kernels = {layer_name(path): leaf for path, leaf in jax.tree.leaves_with_path(params)}
    kernels = {name: leaf for name, leaf in kernels.items() if name not in (None, "classifier")}
    return dict(sorted(kernels.items(), key=lambda item: layer_order(item[0])))


def layer_order(name: str) -> tuple:
    stage = 0 if name == "prep" else int(re.search(r"\d+", name).group())
    return stage, name.startswith("res"), name


def step_statistics(before: Any, after: Any) -> jax.Array:
    """(layers, 2): each conv layer's |w| after the step and |dw| / |w| of the step."""
    old, new = conv_kernels(before), conv_kernels(after)
    rows = []
    for name in new:
        norm = jnp.linalg.norm(new[name].astype(jnp.float32))
        rows.append(jnp.stack([norm, jnp.linalg.norm((new[name] - old[name]).astype(jnp.float32)) /
                               jnp.linalg.norm(old[name].astype(jnp.float32))]))
    return jnp.stack(rows)


def scale_invariance(net, state: train.TrainState, images: jax.Array, labels: jax.Array) -> dict[str, list[float]]:
    """Relative change of the training loss (batch statistics) when one layer's weights are scaled.

    Every conv layer feeds a batch norm, so for them the loss should not move (up to BN's eps);
    the linear head feeds the softmax and should.
    """
    def loss(params):
        variables = {"params": params, "batch_stats": state.batch_stats, "constants": state.constants}
        logits, _ = net.apply(variables, images, train=True, mutable=["batch_stats"])
        return optim.smoothed_cross_entropy(logits, labels, 0.0).mean()

    loss = jax.jit(loss)
    base = float(loss(state.params))
    names = [*conv_kernels(state.params), "classifier"]
    changes = {}
    for name in names:
        changes[name] = []
        for factor in SCALE_FACTORS:
            scaled = scale_layer(state.params, name, factor)
            changes[name].append(abs(float(loss(scaled)) - base) / abs(base))
    return changes


def scale_layer(params: Any, name: str, factor: float) -> Any:
    """params with the kernel of layer `name` (conv_kernels' names, or `classifier`) times `factor`."""
    return jax.tree.map_with_path(lambda path, leaf: leaf * factor if layer_name(path) == name else leaf, params)


class MeasuringEngine(train.Engine):
    """train.Engine stepping with the trainer's step followed by the measurement of the weights it moved."""

    def __init__(self, programs: train.Programs, data: train.DeviceData, seed: int):
        super().__init__(programs, data, seed)

        def measured_step(state, images, labels, batches):
            new = programs.train_step(state, images, labels, batches)
            return new, step_statistics(state.params, new.params)

        self.measured_step = jax.jit(measured_step, donate_argnums=0)
        self.statistics: list[jax.Array] = []  # (layers, 2) per step
        self.layers: list[str] = []
        self.initial_norms: list[float] = []
        self.started = 0.0  # when the init and the initial norms were done

    def init(self) -> None:
        super().init()
        kernels = conv_kernels(self.state.params)
        self.layers, self.initial_norms = list(kernels), [float(jnp.linalg.norm(k)) for k in kernels.values()]
        self.started = time.perf_counter()

    def train_epoch(self, epoch: int, steps: int) -> None:
        batches = self.programs.epoch_batches(self.state.rng, jnp.int32(epoch))
        for _ in range(steps):
            self.state, stats = self.measured_step(self.state, self.data.train_padded, self.data.train_labels,
                                                   batches)
            self.statistics.append(stats)


def train_and_measure(config: train.RunConfig, data: train.DeviceData, seed: int) -> dict:
    """One run of the recipe with the trainer's train step (loop.run), measuring every conv layer at every step."""
    recipe = config.recipe
    programs = train.build_programs(config, data)
    engine = MeasuringEngine(programs, data, seed)
    epochs = []

    def on_epoch(member: int, metrics: dict) -> None:
        epochs.append({"epoch": metrics["epoch"], "test_accuracy": metrics["test_accuracy"],
                       "seconds": time.perf_counter() - engine.started})
        common.progress(f"epoch {metrics['epoch']}/{recipe.epochs}: test accuracy {metrics['test_accuracy']:.4f} "
                        f"({epochs[-1]['seconds']:.0f} s)")

    loop.run(engine, recipe, [seed], [{}], on_epoch)
    state = engine.state
    statistics = np.asarray(jax.device_get(jnp.stack(engine.statistics)))  # (steps, layers, 2)
    # Page's form reads lr(t + 1) at step t (optim.nesterov_sgd); torch's reads lr(t).
    steps = jnp.arange(len(statistics)) + (recipe.optimiser.update == "page")
    lrs = np.asarray(programs.schedule(steps)).tolist()
    images, labels = batch_for_check(data, programs, state)
    net = model.for_recipe(recipe, config.width_mult, train.PRECISIONS[config.precision])
    return {"layers": engine.layers, "initial_norms": engine.initial_norms, "lr": lrs,
            "norms": statistics[:, :, 0].T.tolist(), "relative_updates": statistics[:, :, 1].T.tolist(),
            "epochs": epochs, "steps_per_epoch": programs.steps_per_epoch,
            "scale_invariance": scale_invariance(net, state, images, labels)}


def batch_for_check(data: train.DeviceData, programs: train.Programs, state: train.TrainState):
    """One training batch, centre-cropped and unaugmented, for the scale-invariance check."""
    pad = (data.train_padded.shape[1] - train.IMAGE_SIZE) // 2
    idx = programs.epoch_batches(state.rng, jnp.int32(0))[0]
    return (data.train_padded[idx, pad:pad + train.IMAGE_SIZE, pad:pad + train.IMAGE_SIZE],
            data.train_labels[idx])


def smoothed(values: np.ndarray, window: int) -> np.ndarray:
    """Moving average over `window` steps (same length; shorter windows at the start)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    starts = np.maximum(np.arange(1, len(values) + 1) - window, 0)
    return (sums[1:] - sums[starts]) / (np.arange(1, len(values) + 1) - starts)


def predictions(result: dict, recipe: presets.Recipe) -> dict[str, np.ndarray]:
    lr_times_wd = np.asarray(result["lr"]) * recipe.optimiser.weight_decay
    o = recipe.optimiser
    return {"sqrt(2 lr wd)": np.sqrt(2 * lr_times_wd),
            f"with {'Nesterov ' if o.nesterov else ''}momentum {o.momentum:g}":
                equilibrium_ratio(lr_times_wd, o.momentum, o.nesterov)}


def measured_against_predicted(result: dict, recipe: presets.Recipe) -> dict:
    """Per layer, the mean of measured / predicted |dw| / |w| over the steps from 50% to 90% of the run.

    The weights need a few epochs after the warm-up to settle, and in the last steps the lr
    falls to zero faster than |w| can follow, so the comparison leaves out both ends.
    """
    steps = len(result["lr"])
    window = slice(steps // 2, max(steps // 2 + 1, int(0.9 * steps)))
    out = {}
    for label, predicted in predictions(result, recipe).items():
        out[label] = {name: float(np.mean(np.asarray(measured)[window] / predicted[window]))
                      for name, measured in zip(result["layers"], result["relative_updates"])}
    return out


def figure(result: dict, recipe: presets.Recipe, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(result["lr"]) + 1)
    epochs = steps / result["steps_per_epoch"]
    window = max(1, result["steps_per_epoch"] // 4)
    fig, (norms, updates) = plt.subplots(1, 2, figsize=(13, 4.8))
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(result["layers"])))
    for name, colour, norm, update in zip(result["layers"], colours, result["norms"], result["relative_updates"]):
        norms.plot(epochs, norm, color=colour, label=name)
        updates.plot(epochs, smoothed(np.asarray(update), window), color=colour, linewidth=1, label=name)
    for (label, predicted), style in zip(predictions(result, recipe).items(), ("k:", "k--")):
        updates.plot(epochs, predicted, style, linewidth=2, label=f"equilibrium: {label}")
    norms.set(xlabel="epoch", ylabel="|w|", title="weight norm of each conv layer", yscale="log")
    updates.set(xlabel="epoch", ylabel="|dw| / |w| per step",
                title=f"relative update (moving mean over {window} steps)", yscale="log")
    ratio = updates.get_ylim()
    updates.set_ylim(max(ratio[0], 1e-4), ratio[1])
    norms.legend(fontsize=7, ncol=2)
    updates.legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def summary(result: dict, recipe: presets.Recipe, title: str, scale: str) -> str:
    ratios = measured_against_predicted(result, recipe)
    invariance = result["scale_invariance"]
    convs = [c for name, changes in invariance.items() if name != "classifier" for c in changes]
    lines = [f"# Post 6: weight decay ({scale} scale)", "", title, "",
             f"Final test accuracy {result['epochs'][-1]['test_accuracy']:.4f}. Per conv layer: |w| at the start "
             "and the end, and the measured |dw| / |w| divided by each equilibrium prediction (1 = on the "
             "prediction), averaged over the steps from 50% to 90% of the run (after the weights settle, before "
             "the lr falls to zero).", "",
             "| layer | \\|w\\| at the start | \\|w\\| at the end | "  # escaped: a bare | splits the cell
             + " | ".join(f"measured / {label}" for label in ratios) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in ratios) + " |"]
    for index, name in enumerate(result["layers"]):
        cells = " | ".join(f"{ratios[label][name]:.2f}" for label in ratios)
        lines.append(f"| {name} | {result['initial_norms'][index]:.3f} | {result['norms'][index][-1]:.3f} | "
                     f"{cells} |")
    spread = {label: (min(v.values()), max(v.values())) for label, v in ratios.items()}
    lines += ["", "Across layers the measured/predicted ratio spans " +
              "; ".join(f"{lo:.2f}-{hi:.2f} ({label})" for label, (lo, hi) in spread.items()) + ".", "",
              f"Scale invariance (loss with one layer's kernel x{' and x'.join(f'{f:g}' for f in SCALE_FACTORS)}, "
              "batch statistics): the largest relative change of the loss is "
              f"{max(convs):.2e} over the conv layers, against "
              f"{min(invariance['classifier']):.2e}-{max(invariance['classifier']):.2e} for the linear head."]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = common.build_parser(NAME, __doc__.splitlines()[0], SCALES)
    flags.add_batch_size(parser, help="batch size (default: the scale's)")
    return parser


def run(args: argparse.Namespace) -> list[str]:
    chosen = common.settings(args, SCALES, jax.default_backend())
    if args.batch_size is not None:
        chosen["batch_size"] = args.batch_size
    chosen["scale"] = args.scale
    recipe, config, dataset, data, title = common.post4_setup(args, chosen, PRESET)
    print(f"{NAME}: {title}")
    result = train_and_measure(config, data, args.seed)
    result["measured_over_predicted"] = measured_against_predicted(result, recipe)
    payload = {"settings": common.settings_record(chosen, PRESET, args, dataset),
               "environment": files.environment(), "recipe": recipe.to_dict(), **result}
    text = summary(result, recipe, title, args.scale)
    print(text)
    return common.write_outputs(args.out, NAME, figure(result, recipe, title), payload, text)


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(run, build_parser(), argv)


if __name__ == "__main__":
    interrupt.main(main)
