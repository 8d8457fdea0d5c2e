"""Post 7: what batch norm does for an 8-layer unbranched net (ResNet-9 without its shortcuts).

BN scales and biases are frozen (scale 1, bias 0), so the nets with and without BN have the
same parameters and differ only by the normalisation. Three parts:

(a) a learning-rate stress test: lr 0.005 x 2^(epoch/2), with and without BN; where does each
    fail? Both nets start from He et al.'s init (see he_initialised);
(b) at initialisation, without BN a deep ReLU net maps every image to nearly the same
    activations: each channel is close to a constant, and different images look alike;
(c) the top of the Hessian spectrum (Lanczos), with and without BN, and how much of its top
    eigenvectors lies in the span of the gradients of the batch-mean logits.

    python -m jax_resnet_speed.experiments.batch_norm --out DIR [--scale smoke|full]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from jax_resnet_speed import flags, interrupt, presets, train
from jax_resnet_speed.report import files
from jax_resnet_speed.experiments import common

NAME = "batch_norm"
PRESET = "myrtle-resnet9"
STRESS_LR0 = 0.005  # Myrtle units; the lr doubles every 2 epochs
DIVERGED_LOSS = 2 * math.log(10)  # twice the loss of guessing uniformly over 10 classes
LEARNT_ACCURACY, COLLAPSED_ACCURACY = 0.2, 0.15  # train accuracy: twice chance, and back near chance
NETS = {"with_bn": True, "without_bn": False}
DEEPER_BLOCKS = (2, 2, 2)  # residual blocks per stage of the deeper variant in (b): 16 convs unbranched
SCALES = {
    "smoke": {"width_mult": 0.125, "train_subset": 2048, "test_subset": 1000, "batch_size": 128, "epochs": 25,
              "hessian_images": 256, "lanczos_iterations": 20, "hessian_epochs": 2, "collapse_images": 256},
    "full": {"width_mult": 1.0, "batch_size": 512, "epochs": 25,
             "hessian_images": 1024, "lanczos_iterations": 40, "hessian_epochs": 2, "collapse_images": 1024},
}


def stress_recipe(batch_norm: bool, epochs: int = 25, batch_size: int = 512) -> presets.Recipe:
    """Post 4's ResNet-9 without shortcuts, BN (if any) frozen, lr 0.005 x 2^(e/2) at every epoch e."""
    return presets.get_preset(PRESET).replace(**{
        "name": f"post7-stress-{'bn' if batch_norm else 'no-bn'}",
        "description": f"Myrtle post 7: 8-conv unbranched net "
                       f"{'with BN (scale and bias frozen)' if batch_norm else 'without BN'}, "
                       f"lr {STRESS_LR0} x 2^(epoch/2)",
        "change": "",
        "network.stages.shortcut": False, "network.batch_norm.enabled": batch_norm,
        "network.batch_norm.scale_frozen": True,
        "optimiser.bn_bias_lr_mult": 0.0, "optimiser.bn_bias_wd_mult": 0.0,
        "optimiser.epochs": epochs,
        "optimiser.lr_knots": tuple((e, STRESS_LR0 * 2 ** (e / 2)) for e in range(epochs + 1)),
        "data.batch_size": batch_size})


class _Failed(Exception):
    """Raised from the epoch callback to stop a run once it has failed (`failure`)."""


def failure(epochs: Sequence[dict]) -> dict:
    """The first epoch at which a run failed, how, and its lr (the lr at the end of that epoch).

    "diverged": the mean train loss is not finite or above 2 ln 10, worse than guessing;
    "collapsed": train accuracy fell back below COLLAPSED_ACCURACY after the run had reached
    LEARNT_ACCURACY. Without BN a too-large step kills the ReLUs: the net outputs a constant,
    its loss returns to ln 10 and stays there instead of growing.
    """
    learnt = False
    for metrics in epochs:
        loss = metrics["train_loss"]
        kind = ("diverged" if not math.isfinite(loss) or loss > DIVERGED_LOSS else
                "collapsed" if learnt and metrics["train_accuracy"] < COLLAPSED_ACCURACY else None)
        if kind:
            return {"failure": kind, "divergence_epoch": metrics["epoch"], "divergence_lr": metrics["lr"],
                    "learnt": learnt}
        learnt = learnt or metrics["train_accuracy"] >= LEARNT_ACCURACY
    return {"failure": None, "divergence_epoch": None, "divergence_lr": None, "learnt": learnt}


def stress_test(name: str, config: train.RunConfig, programs: train.Programs, data: train.DeviceData,
                seed: int) -> dict:
    """(a): one run of the stress schedule, stopped at the first failed epoch."""
    record: dict = {}

    def on_epoch(metrics: dict) -> None:
        common.progress(f"stress {name}: epoch {metrics['epoch']:2d}, lr {metrics['lr']:8.4f}, train loss "
                        f"{metrics['train_loss']:.4f}, train accuracy {metrics['train_accuracy']:.4f}")
        if failure(record["epochs"])["failure"]:
            raise _Failed

    try:
        train.run(programs, data, config, seed, on_epoch, record)
    except _Failed:  # also catches a non-finite loss, before train.run's own Diverged
        record["status"] = "failed"
    keep = ("epoch", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "epoch_seconds")
    epochs = [{k: m[k] for k in keep} for m in record["epochs"]]
    best = max(epochs, key=lambda m: m["train_accuracy"])
    return {"status": record["status"], "epochs": epochs, **failure(epochs), "last_lr": epochs[-1]["lr"],
            "best_train_accuracy": best["train_accuracy"], "best_lr": best["lr"]}


def he_initialised(programs: train.Programs) -> train.Programs:
    """`programs` whose init multiplies every conv kernel by sqrt(6): He et al.'s variance 2 / fan_in.

    The model's init is PyTorch's, U(+-1/sqrt(fan_in)) with variance 1 / (3 fan_in), which
    keeps 1/6 of the signal's second moment per ReLU conv: without BN eight of them leave
    logits ~1e-4 and gradients that vanish, and the net never trains. With BN a conv's scale
    changes no output, only its effective lr (post 6) and its curvature (1 / scale^2), so
    both nets get this init: they start from the same weights and differ only by BN.
    """
    import jax

    @jax.jit
    def rescale(state: train.TrainState) -> train.TrainState:
        def scaled(path, weight):
            is_conv = path[-1].key == "kernel" and path[0].key != "classifier"
            return weight * math.sqrt(6) if is_conv else weight

        return state.replace(params=jax.tree.map_with_path(scaled, state.params))

    init = programs.init
    return dataclasses.replace(programs, init=lambda key, images, hyper: rescale(init(key, images, hyper)))


# ------------------------------------------------------------------------------ (b) collapse

def conv_unit_outputs(net, variables: dict, images) -> list[tuple[str, Any]]:
    """Every conv unit's (ConvBlock's) output in call order, with BN on batch statistics."""
    from flax import traverse_util

    from jax_resnet_speed import model

    _, state = net.apply(variables, images, train=True, mutable=["intermediates", "batch_stats"],
                         capture_intermediates=lambda module, method: (isinstance(module, model.ConvBlock)
                                                                       and method == "__call__"))
    outputs = traverse_util.flatten_dict(state["intermediates"])
    return [("/".join(path[:-1]), value[0]) for path, value in outputs.items()]


def channel_statistics(features) -> dict:
    """How far one conv unit's output is from a per-channel constant, and how alike images are.

    features: (N, H, W, C). Medians are over live channels (dead ones are 0 everywhere).
    median_cv: std / |mean| of a channel over images and positions, as a whole;
    median_cv_across_images: the std across images at each position over |mean| across images,
    both averaged over positions. The second leaves out a spatial pattern that every image
    shares, so it measures how much a channel still tells images apart;
    cosine: the mean cosine similarity between different images' flattened activations.
    """
    x = np.asarray(features, np.float64)
    mean, std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))
    live = np.abs(mean) > 0
    across_std, across_mean = x.std(axis=0).mean(axis=(0, 1)), np.abs(x.mean(axis=0)).mean(axis=(0, 1))
    flat = x.reshape(len(x), -1)
    norms = np.linalg.norm(flat, axis=1)
    unit = flat[norms > 0] / norms[norms > 0, None]
    gram = unit @ unit.T
    pairs = len(unit) * (len(unit) - 1)

    def median(values: np.ndarray) -> float | None:
        return float(np.median(values)) if len(values) else None

    return {"channels": int(x.shape[-1]), "dead_channels": int((~live).sum()),
            "median_cv": median(std[live] / np.abs(mean[live])),
            "median_cv_across_images": median(across_std[live] / across_mean[live]),
            "mean_abs_channel_mean": float(np.abs(mean).mean()), "mean_channel_std": float(std.mean()),
            "cosine": float((gram.sum() - np.trace(gram)) / pairs) if pairs else None}


def collapse(recipe: presets.Recipe, width_mult: float, images, seed: int) -> list[dict]:
    """(b): per conv unit of `recipe`'s net at initialisation, the statistics of its output on `images`.

    The ratios std / |mean| and the cosine similarity do not depend on the init's scale (PyTorch's
    here, He's in (a) and (c)): without BN the net (bias-free convs, ReLU, max-pool) is
    positively homogeneous in each layer's weights, so rescaling a layer rescales every later
    activation by one constant; with BN the normalisation removes the scale.
    """
    import jax

    from jax_resnet_speed import model

    net = model.for_recipe(recipe, width_mult)
    variables = net.init(jax.random.key(seed), images[:1], train=False)
    return [{"layer": name, **channel_statistics(out)} for name, out in conv_unit_outputs(net, variables, images)]


# ------------------------------------------------------------------------------ (c) Hessian

def curvature(recipe: presets.Recipe, width_mult: float, state: train.TrainState, images, labels,
              iterations: int, seed: int) -> dict:
    """(c): top Hessian eigenvalues of the mean cross-entropy on one fixed batch, and their span fractions.

    The loss is the batch mean (not Myrtle's sum), BN uses the batch's statistics (train mode),
    there is no augmentation, and it runs in float32. The Hessian is over the trained
    parameters (conv and head kernels); BN biases are frozen at 0, so both nets have the same
    parameters. Each top eigenvector's fraction inside the span of the 10 gradients of the
    batch-mean logits is compared with a random direction's expectation, 10 / P.
    """
    import jax
    from flax import traverse_util
    from jax.flatten_util import ravel_pytree

    from jax_resnet_speed import model, optim
    from jax_resnet_speed.experiments import lanczos

    net = model.for_recipe(recipe, width_mult)
    groups = traverse_util.flatten_dict(optim.param_groups(state.params))
    everything = traverse_util.flatten_dict(state.params)
    trained = {path: value for path, value in everything.items() if groups[path] == "weights"}
    frozen = {path: value for path, value in everything.items() if groups[path] != "weights"}
    point, unravel = ravel_pytree(trained)
    # Everything reaches the jitted functions as arguments: closed-over arrays would be
    # constants that XLA tries to fold through the whole network.
    batch = (frozen, state.batch_stats, images, labels)

    def logits_at(flat, frozen, batch_stats, images):
        params = traverse_util.unflatten_dict({**unravel(flat), **frozen})
        logits, _ = net.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                              mutable=["batch_stats"])
        return logits

    def loss(flat, frozen, batch_stats, images, labels):
        return optim.smoothed_cross_entropy(logits_at(flat, frozen, batch_stats, images), labels, 0.0).mean()

    hessian_times = jax.jit(lambda vector, flat, *batch: lanczos.hvp(lambda p: loss(p, *batch), flat, vector))
    values, vectors = lanczos.lanczos(lambda vector: hessian_times(vector, point, *batch), point.size, iterations,
                                      jax.random.key(seed))
    # Row c: the gradient of the batch mean of logit c.
    logit_mean_gradients = jax.jit(jax.jacrev(lambda flat, *rest: logits_at(flat, *rest).mean(axis=0)))(
        point, frozen, state.batch_stats, images)
    fractions = lanczos.span_fraction(vectors, logit_mean_gradients)
    return {"parameters": int(point.size), "eigenvalues": [float(v) for v in values],
            "span_fractions": [float(f) for f in fractions], "random_span_fraction": 10 / point.size}


def trained_state(programs: train.Programs, data: train.DeviceData, seed: int, epochs: int) -> train.TrainState:
    """The stress run's state after its first `epochs` epochs (same seed: the same weights as train.run's)."""
    import jax

    state = programs.init(jax.random.key(seed), data.train_padded, programs.hyper)
    for epoch in range(1, epochs + 1):
        state = train.train_epoch(programs, data, state, epoch)
    return jax.block_until_ready(state)


# ------------------------------------------------------------------------------ outputs

LABELS = {"with_bn": "with BN", "without_bn": "without BN"}
COLOURS = {"with_bn": "tab:blue", "without_bn": "tab:red"}


def figure(stress: dict, collapsed: dict, hessian: dict, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    (loss_ax, cv_ax, eig_ax), (acc_ax, cos_ax, span_ax) = axes

    for net, result in stress.items():
        lrs = [m["lr"] for m in result["epochs"]]
        style = {"color": COLOURS[net], "label": LABELS[net]}
        loss_ax.plot(lrs, [m["train_loss"] for m in result["epochs"]], "o-", **style)  # inf and nan: not drawn
        acc_ax.plot(lrs, [m["train_accuracy"] for m in result["epochs"]], "o-", **style)
        if result["failure"]:
            for ax in (loss_ax, acc_ax):
                ax.axvline(result["divergence_lr"], color=COLOURS[net], ls=":", lw=1.5)
    loss_ax.axhline(DIVERGED_LOSS, color="grey", ls="--", lw=1, label="2 ln 10: diverged")
    loss_ax.axhline(math.log(10), color="grey", ls=":", lw=1, label="ln 10: guessing")
    loss_ax.set(xscale="log", ylabel="train loss (epoch mean)", ylim=(0, DIVERGED_LOSS * 1.3),
                title="(a) lr 0.005 x 2^(epoch/2); dotted: the run failed")
    acc_ax.axhline(COLLAPSED_ACCURACY, color="grey", ls=":", lw=1, label="collapsed below")
    acc_ax.set(xscale="log", xlabel="learning rate at the end of the epoch (Myrtle units)", ylabel="train accuracy",
               ylim=(0, 1))

    for net, depths in collapsed.items():
        for convs, layers in depths.items():
            style = {"color": COLOURS[net], "label": f"{LABELS[net]}, {convs} convs"}
            shape = "o-" if convs == min(depths, key=int) else "s--"
            depth = range(1, len(layers) + 1)
            cv_ax.plot(depth, [_or_nan(unit["median_cv_across_images"]) for unit in layers], shape, **style)
            cos_ax.plot(depth, [_or_nan(unit["cosine"]) for unit in layers], shape, **style)
    cv_ax.set(yscale="log", ylabel="channel std / |mean| across images (median)",
              title="(b) at initialisation: each conv unit's output on real images")
    cos_ax.set(xlabel="conv unit (depth)", ylabel="mean cosine similarity between images", ylim=(0, 1.02))

    for net, result in hessian.items():
        values = np.array(result["eigenvalues"])
        rank = np.arange(1, len(values) + 1)
        style = {"color": COLOURS[net], "label": LABELS[net]}
        eig_ax.plot(rank[values > 0], values[values > 0], "o-", **style)
        span_ax.plot(rank, result["span_fractions"], "o-", **style)
        span_ax.axhline(result["random_span_fraction"], color="grey", ls=":", lw=1)
    eig_ax.set(yscale="log", ylabel="Hessian eigenvalue (Ritz value > 0)",
               title="(c) top of the Hessian spectrum, mean loss on one batch")
    span_ax.set(xlabel="eigenvalue rank", ylabel="fraction in span of the logit-mean gradients", yscale="log")
    for ax in (eig_ax, span_ax, cv_ax, cos_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    span_ax.text(0.98, 0.02, "dotted: a random direction's, 10 / P", transform=span_ax.transAxes, ha="right",
                 va="bottom", fontsize=8)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _or_nan(value: float | None) -> float:
    return np.nan if value is None else value


def headline(stress: dict, collapsed: dict, hessian: dict) -> dict:
    last = {net: {convs: layers[-1] for convs, layers in depths.items()} for net, depths in collapsed.items()}
    top = {net: result["eigenvalues"][0] for net, result in hessian.items()}
    return {
        "failure": {net: r["failure"] for net, r in stress.items()},
        "divergence_lr": {net: r["divergence_lr"] for net, r in stress.items()},
        "last_lr": {net: r["last_lr"] for net, r in stress.items()},
        "best_train_accuracy": {net: r["best_train_accuracy"] for net, r in stress.items()},
        "last_unit_median_cv": {net: {c: u["median_cv"] for c, u in units.items()} for net, units in last.items()},
        "last_unit_median_cv_across_images": {net: {c: u["median_cv_across_images"] for c, u in units.items()}
                                              for net, units in last.items()},
        "last_unit_cosine": {net: {c: u["cosine"] for c, u in units.items()} for net, units in last.items()},
        "top_eigenvalue": top,
        "top_eigenvalue_ratio_without_over_with_bn": top["without_bn"] / top["with_bn"] if top["with_bn"] > 0 else None,
        "top5_mean_span_fraction": {net: statistics.fmean(r["span_fractions"][:5]) for net, r in hessian.items()},
        "random_span_fraction": hessian["with_bn"]["random_span_fraction"],
    }


def _number(value: float | None, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def stress_sentence(result: dict) -> str:
    best = f"best train accuracy {result['best_train_accuracy']:.3f} at lr {result['best_lr']:.3g}"
    if result["failure"] == "diverged":
        return f"diverged at lr {result['divergence_lr']:.3g} (epoch {result['divergence_epoch']}; {best})"
    if result["failure"] == "collapsed":
        return (f"collapsed at lr {result['divergence_lr']:.3g} (epoch {result['divergence_epoch']}): train accuracy "
                f"back below {COLLAPSED_ACCURACY} after {best}")
    if not result["learnt"]:
        return f"never learnt (to lr {result['last_lr']:.3g}; {best})"
    return f"survived every epoch, to lr {result['last_lr']:.3g} ({best})"


def summary(settings: dict, stress: dict, headlines: dict, hessian: dict, title: str) -> str:
    cv, cos = headlines["last_unit_median_cv"], headlines["last_unit_cosine"]
    across = headlines["last_unit_median_cv_across_images"]
    top, span = headlines["top_eigenvalue"], headlines["top5_mean_span_fraction"]
    lines = [f"# Post 7: batch norm ({settings['scale']} scale)", "", title, "",
             "## (a) Learning-rate stress test", "",
             f"lr {STRESS_LR0} x 2^(epoch/2) for {settings['epochs']} epochs, batch {settings['batch_size']}; the "
             f"lr quoted is the one at the end of the epoch. A run fails at the first epoch whose mean train loss is "
             f"not finite or above 2 ln 10 = {DIVERGED_LOSS:.2f} (diverged), or whose train accuracy is back below "
             f"{COLLAPSED_ACCURACY} after it had reached {LEARNT_ACCURACY} (collapsed: the net outputs a constant). "
             "Both nets start from the same He et al. init (PyTorch's leaves the net without BN untrainable).", "",
             f"- Without BN the net {stress_sentence(stress['without_bn'])}.",
             f"- With BN it {stress_sentence(stress['with_bn'])}.",
             "- The post: without BN training fails near lr 0.3; with BN it survives to about 29 "
             "(the end of its 25 epochs).", "",
             "## (b) Activations at initialisation", "",
             f"Each conv unit's output on {settings['collapse_images']} training images at initialisation, BN on "
             "batch statistics: per channel, std / |mean| across images at a fixed position (averaged over "
             "positions) and over images and positions together (median over channels), and the mean cosine "
             "similarity between different images' activations.", ""]
    for convs in sorted(cv["with_bn"], key=int):
        without, with_ = (_number(cv[net][convs]) for net in ("without_bn", "with_bn"))
        lines.append(f"- {convs} convs, last unit, without BN against with BN: std / |mean| across images "
                     f"{_number(across['without_bn'][convs])} against {_number(across['with_bn'][convs])}; over "
                     f"images and positions {without} against {with_}; cosine similarity "
                     f"{_number(cos['without_bn'][convs], '.3f')} against {_number(cos['with_bn'][convs], '.3f')}.")
    lines += ["- The post: without BN the channels of a deep ReLU net collapse towards constants (and images "
              "towards one another) as depth grows; BN keeps every channel's spread at the scale of its mean.", "",
              "## (c) Hessian", "",
              f"Top {settings['lanczos_iterations']} Ritz values (Lanczos with full re-orthogonalisation) of the mean "
              f"cross-entropy on {settings['hessian_images']} fixed training images, BN on batch statistics, at the "
              f"weights after the first {settings['hessian_epochs']} epoch(s) of the stress run (lr up to "
              f"{STRESS_LR0 * 2 ** (settings['hessian_epochs'] / 2):.3g}), over the "
              f"{hessian['with_bn']['parameters']} trained parameters (BN biases are frozen). Only the top few Ritz "
              "values have converged to eigenvalues; lower ranks are the Krylov space's approximations.", "",
              f"- Top eigenvalue {_number(top['without_bn'])} without BN against {_number(top['with_bn'])} with BN "
              f"(ratio {_number(headlines['top_eigenvalue_ratio_without_over_with_bn'])}).",
              f"- Mean fraction of the top 5 eigenvectors inside the span of the 10 logit-mean gradients: "
              f"{_number(span['without_bn'])} without BN, {_number(span['with_bn'])} with BN; a random direction's "
              f"is 10 / P = {headlines['random_span_fraction']:.2g}.",
              "- The post: with BN the top eigenvalues are one to two orders of magnitude smaller, and without BN "
              "the outlying eigenvalues' eigenvectors lie in the span of the logit-mean gradients.",
              "- With BN the loss does not change when a conv's weights are scaled, so its curvature along them goes "
              "as 1 / scale^2: the comparison of magnitudes holds for these weights (the same init for both nets), "
              "not for every parametrisation.", ""]
    return "\n".join(lines)


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = common.build_parser(NAME, __doc__.splitlines()[0], SCALES)
    flags.add_batch_size(parser, help="batch size of the stress test (default: the scale's)")
    parser.add_argument("--hessian-images", type=positive_int, metavar="N",
                        help="training images in the Hessian's fixed batch (default: the scale's)")
    parser.add_argument("--lanczos-iterations", type=positive_int, metavar="K",
                        help="Lanczos steps: the number of Ritz values (default: the scale's)")
    return parser


def run(args: argparse.Namespace) -> list[str]:
    import jax

    from jax_resnet_speed import data as data_lib

    chosen = common.settings(args, SCALES, jax.default_backend())
    for key in ("batch_size", "hessian_images", "lanczos_iterations"):
        if getattr(args, key) is not None:
            chosen[key] = getattr(args, key)
    chosen.update(scale=args.scale, hessian_epochs=min(chosen["hessian_epochs"], chosen["epochs"]))
    recipes = {net: stress_recipe(bn, chosen["epochs"], chosen["batch_size"]) for net, bn in NETS.items()}
    dataset = common.load_dataset(args, chosen["batch_size"])
    if len(dataset.train_images) < chosen["hessian_images"]:
        raise data_lib.DataError(f"{len(dataset.train_images)} training images are fewer than the Hessian's batch "
                                 f"of {chosen['hessian_images']}; lower --hessian-images or raise --train-subset")
    chosen["collapse_images"] = min(chosen["collapse_images"], len(dataset.train_images))
    data = common.upload(dataset, recipes["with_bn"], chosen["precision"])
    title = (f"unbranched ResNet-9 (8 convs), BN scale and bias frozen, width x{chosen['width_mult']}, "
             f"{len(dataset.train_images)} train / {len(dataset.test_images)} test images; "
             f"{common.environment_line(chosen)}")
    print(f"{NAME}: {title}")
    pad = recipes["with_bn"].data.crop_padding
    images = data.train_padded[:, pad:pad + train.IMAGE_SIZE, pad:pad + train.IMAGE_SIZE]  # no augmentation
    seconds = {}

    start = time.perf_counter()
    collapsed = {}
    for net in NETS:
        collapsed[net] = {}
        for blocks in (recipes[net].network.stages.residual_blocks, DEEPER_BLOCKS):
            recipe = recipes[net].replace(**{"network.stages.residual_blocks": blocks})
            layers = collapse(recipe, chosen["width_mult"], images[:chosen["collapse_images"]], args.seed)
            collapsed[net][str(len(layers))] = layers
            common.progress(f"collapse {net}, {len(layers)} convs, last unit: std/|mean| across images "
                            f"{_number(layers[-1]['median_cv_across_images'])}, over images and positions "
                            f"{_number(layers[-1]['median_cv'])}, cosine {_number(layers[-1]['cosine'])}")
    seconds["collapse"] = time.perf_counter() - start

    stress, hessian = {}, {}
    for net, recipe in recipes.items():
        start = time.perf_counter()
        config = train.RunConfig(recipe, chosen["precision"], chosen["width_mult"])
        programs, compile_seconds = train.compile_programs(train.build_programs(config, data), data, args.seed)
        programs = he_initialised(programs)
        common.progress(f"{net}: compiled in {compile_seconds:.1f} s")
        stress[net] = stress_test(net, config, programs, data, args.seed)
        seconds[f"stress_{net}"] = time.perf_counter() - start

        start = time.perf_counter()
        state = trained_state(programs, data, args.seed, chosen["hessian_epochs"])
        n = chosen["hessian_images"]
        hessian[net] = curvature(recipe, chosen["width_mult"], state, images[:n], data.train_labels[:n],
                                 chosen["lanczos_iterations"], args.seed)
        seconds[f"hessian_{net}"] = time.perf_counter() - start
        common.progress(f"hessian {net}: top eigenvalues "
                        f"{', '.join(f'{v:.3g}' for v in hessian[net]['eigenvalues'][:5])}; span fractions "
                        f"{', '.join(f'{v:.2f}' for v in hessian[net]['span_fractions'][:5])} "
                        f"({seconds[f'hessian_{net}']:.1f} s)")

    headlines = headline(stress, collapsed, hessian)
    payload = {"settings": common.settings_record(chosen, PRESET, args, dataset, diverged_loss=DIVERGED_LOSS,
                                                  learnt_accuracy=LEARNT_ACCURACY,
                                                  collapsed_accuracy=COLLAPSED_ACCURACY,
                                                  init="He: PyTorch's conv init x sqrt(6), both nets"),
               "environment": files.environment(), "recipes": {net: r.to_dict() for net, r in recipes.items()},
               "seconds": seconds, "stress": stress, "collapse": collapsed, "hessian": hessian, "summary": headlines}
    text = summary(chosen, stress, headlines, hessian, title)
    print(text)
    return common.write_outputs(args.out, NAME, figure(stress, collapsed, hessian, title), payload, text)


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(run, build_parser(), argv)


if __name__ == "__main__":
    interrupt.main(main)
