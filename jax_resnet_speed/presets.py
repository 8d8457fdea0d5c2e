"""Recipes as plain data: every step of Myrtle AI's "How to Train Your ResNet" series.

A recipe is everything that defines a training run except the data and the seed, grouped by
concern: the network's shape, the optimiser, the data pipeline, evaluation and timing. The
network and the optimiser are nested further, by part (stem, stages, batch norm, head) and by
trick (EMA, whitening bias, lookahead, Muon: None when off). Numbers follow David Page's posts
and notebooks (2018); see docs/recipe.md and docs/series.md.

Learning rates and weight decay are quoted the way Myrtle quotes them: the loss is summed
over the batch, the learning rate is divided by the batch size and the weight decay
multiplied by it, so `lr * weight_decay` (the per-step shrink of the weights) does not
depend on the batch size.

Each preset after the first of its post is written as its predecessor plus one declared
change (`Step.changes`, dotted field names), so a table row and its recipe cannot drift apart.
Recipes written before the nesting (result JSONs, checkpoints) used flat names such as
`optimiser.ema_momentum`; `FLAT_NAMES` maps them to today's paths, for `Recipe.replace` and
`upgrade_recipe_dict`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import typing
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Stem:
    """The layer before the stages."""

    # "conv": 3x3 conv; "whitening": frozen 3x3 PCA-whitening conv, then a learnable 1x1;
    # "whitening-bias" (airbench): frozen `whitening_kernel`-square whitening filters and their
    # negations, unpadded, with a learnable bias, then the activation (widths[0] is theirs: 2 k k 3).
    kind: str = "conv"
    bn: bool = True  # BN and activation after the stem (a pre-activation net's first block has its own)
    whitening_eps: float = 1e-2
    whitening_images: int = 10_000
    whitening_kernel: int = 3
    # The "whitening-bias" stem's bias at init: "zeros" (airbench's own Conv class zeroes it), or
    # "torch": PyTorch's default draw U(-1/sqrt(3 k k), 1/sqrt(3 k k)) (airbench94_muon's plain
    # nn.Conv2d, whose reset re-draws the bias while the whitening init writes only the weight).
    bias_init: str = "zeros"
    activation: str | None = None  # the "whitening-bias" stem's; None: the network's (the record keeps GELU here)


@dataclasses.dataclass(frozen=True)
class Stages:
    """How each stage is built; their widths are `Network.widths[1:]`."""

    # "post-act": conv -> BN -> act units (Myrtle); "pre-act": BN -> act -> conv basic blocks
    # with 1x1 projection shortcuts (the DAWNBench ResNet-18).
    block: str = "post-act"
    downsamples: tuple[bool, ...] = (True, True, True)  # which stages halve the resolution
    # How a stage halves it: "maxpool" (3x3 conv, then 2x2 max-pool), "conv3x3" or "conv1x1"
    # (a stride-2 conv).
    downsample: str = "maxpool"
    # Residual blocks per stage. Post-act: blocks of two conv units after the stage's conv;
    # pre-act: the stage's basic blocks, the first of which downsamples.
    residual_blocks: tuple[int, ...] = (1, 0, 1)
    convs: int = 1  # post-act conv units per stage before its residual blocks; the first one pools
    shortcut: bool = True  # post-act residual blocks add their input back; False chains them (post 7)
    pool_before_bn: bool = False  # conv -> pool -> BN -> act instead of conv -> BN -> act -> pool
    # airbench96: the stage's first conv unit's output is added back after its last conv's BN, before
    # that unit's activation (a residual over the last `convs - 1` conv units).
    residual_over_last: bool = False


@dataclasses.dataclass(frozen=True)
class BatchNorm:
    enabled: bool = True  # False: post-act units are conv -> act, with no normalisation (post 7)
    ghost_splits: int = 1  # statistics over this many splits of each training batch (ghost batch norm)
    scale_frozen: bool = False
    scale_init: str = "ones"  # "ones", or "uniform": PyTorch 0.4's U(0, 1), which the early posts ran with
    fp32: bool = True  # BN in float32; False runs it in the compute precision (posts 1-2)
    momentum: float = 0.1  # PyTorch convention: new = (1 - m) * old + m * batch
    eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class Head:
    init: str = "torch"  # "torch", or "unit-std": PyTorch's draw divided by its own std (airbench94_muon)
    pool: str = "max"  # global pooling: "max", or "avg+max" (both, concatenated)
    bias: bool = False
    logit_scale: float = 0.125


@dataclasses.dataclass(frozen=True)
class Network:
    """A network's shape: model.Network builds every net of the series from these fields.

    The defaults are post 4's ResNet-9: a conv-BN-ReLU stem, then three stages that each
    double the width with a 3x3 conv and halve the resolution with a 2x2 max-pool, residual
    blocks (two conv-BN-ReLU, added back) after stages 1 and 3, global max-pool, linear head.
    """

    widths: tuple[int, ...] = (64, 128, 256, 512)  # widths[0] is the stem's, then one width per stage
    activation: str = "relu"  # "relu", "celu", "gelu" (exact, erf-based, as torch.nn.GELU) or "silu"
    celu_alpha: float = 0.3
    # Every conv's init. "torch": PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)); "dirac": the
    # same, then the first C_in filters set to the identity (airbench), so each conv starts by passing
    # its input on.
    conv_init: str = "torch"
    stem: Stem = Stem()
    stages: Stages = Stages()
    batch_norm: BatchNorm = BatchNorm()
    head: Head = Head()


@dataclasses.dataclass(frozen=True)
class Ema:
    """Exponential moving average of the weights (and BN statistics), evaluated in place of the live weights.

    `momentum` is per step in a run of `run_steps` steps (the recipe's own run on the full
    dataset); a shorter or longer run stretches the EMA's horizon with it, as it stretches the lr
    schedule. The update runs every `every` steps with (per-step momentum) ** every.
    """

    momentum: float = 0.99
    run_steps: int = 970
    every: int = 5

    def momentum_per_step(self, run_steps: int) -> float:
        """The per-step momentum for a run of `run_steps` steps: the same horizon as a fraction of the run."""
        return self.momentum ** (self.run_steps / run_steps)


@dataclasses.dataclass(frozen=True)
class WhiteningBias:
    """The "whitening-bias" stem's bias trains for its first `epochs` epochs only, with its own multipliers.

    "cut": the run's lr until then, 0 after; "linear": the run's initial lr decaying linearly to 0
    over those epochs (airbench94_muon). Without this sub-recipe the bias keeps its init.
    """

    epochs: float = 3.0
    decay: str = "cut"
    lr_mult: float = 1.0
    wd_mult: float = 1.0


# How a "whitening-bias" stem's bias trains without `optimiser.whitening_bias`: for no epoch (it keeps its init).
UNTRAINED_WHITENING_BIAS = WhiteningBias(epochs=0.0)


@dataclasses.dataclass(frozen=True)
class Lookahead:
    """airbench94's lookahead: every `every` steps the slow copy of the weights and BN statistics
    moves towards the live ones by 1 - alpha, alpha = decay ** every x (t / T) ** 3, and the live
    ones restart from it; after the last step the live ones become the slow ones."""

    every: int = 5
    decay: float = 0.95


@dataclasses.dataclass(frozen=True)
class Muon:
    """Muon (airbench94_muon) on the conv filters: Nesterov momentum on raw gradients, the update
    orthogonalised by `ns_steps` quintic Newton-Schulz iterations in `ns_dtype`, each filter
    renormalised to norm sqrt(out channels) before its step; its lr follows the shape of the run's
    schedule (lr_knots / their peak), from `lr` at the peak. No weight decay."""

    lr: float = 0.24
    momentum: float = 0.6
    nesterov: bool = True
    ns_steps: int = 3
    ns_dtype: str = "bf16"
    coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)  # the quintic's (muon.NS_COEFFICIENTS)
    # The record's form (hiverge): one batched Newton-Schulz over every filter bank zero-padded and
    # stacked, the renormalisation only every `renormalise_every` steps, and decoupled weight decay
    # after the update, w (1 - Muon lr(t) x weight_decay). Off (False, 1, 0.0): airbench94_muon's.
    stacked: bool = False
    renormalise_every: int = 1
    weight_decay: float = 0.0
    buffer_dtype: str = "fp32"  # the momentum buffer's: "fp16" rounds it as the record's half-precision buffer


@dataclasses.dataclass(frozen=True)
class Optimiser:
    """SGD with Nesterov momentum over a piecewise-linear one-cycle schedule, and the tricks around it."""

    epochs: float  # the run is ceil(epochs x steps per epoch) steps: 9.9 epochs end inside the tenth
    # Piecewise-linear learning rate: (epoch, lr) knots for a run of `epochs` epochs. A run
    # of another length stretches the knots in proportion, so warm-up and annealing keep
    # their shape.
    lr_knots: tuple[tuple[float, float], ...]
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    # "page": the lr goes into the momentum buffer and step t reads lr(t + 1), as in Page's
    # code: d = -lr (g + wd w); v = m v + d; w += d + m v. "torch": torch.optim.SGD, whose
    # buffer holds raw gradients and which applies the current lr(t) at the end.
    update: str = "torch"
    # BatchNorm biases get their own learning-rate and weight-decay multipliers.
    bn_bias_lr_mult: float = 1.0
    bn_bias_wd_mult: float = 1.0
    label_smoothing: float = 0.0
    # The tricks, each None when off.
    ema: Ema | None = None
    whitening_bias: WhiteningBias | None = None
    lookahead: Lookahead | None = None
    muon: Muon | None = None


TRICKS = tuple(field.name for field in dataclasses.fields(Optimiser) if field.default is None)


@dataclasses.dataclass(frozen=True)
class Filtering:
    """airbench96_faster's data filtering: a small proxy network trains first, on the clock, on the same
    augmented batches as the recipe's network; at every step it keeps the `kept_fraction` of the batch
    with the highest loss under it, and each step of the recipe's network trains on those alone.

    The proxy is the recipe's network with `proxy_widths` and `proxy_convs` conv units per stage (no
    residual), its whitening bias frozen, no lookahead or EMA. It runs forward (train mode: its BN
    statistics move) on every batch and steps its optimiser, on the loss summed over the kept
    examples, only every `backward_every` steps (from step 0), at the schedule's lr of that step.
    """

    kept_fraction: float = 0.5
    proxy_widths: tuple[int, ...] = (24, 32, 64, 64)
    proxy_convs: int = 2
    backward_every: int = 4

    def kept(self, batch_size: int) -> int:
        return max(1, int(batch_size * self.kept_fraction))

    def proxy(self, recipe: "Recipe") -> "Recipe":
        """The proxy's recipe: `recipe`'s, with the proxy's network and none of the tricks it leaves out."""
        return recipe.replace(**{
            "network.widths": self.proxy_widths, "network.stages.convs": self.proxy_convs,
            "network.stages.residual_over_last": False, "optimiser.whitening_bias": None,
            "optimiser.lookahead": None, "optimiser.ema": None, "data.filtering": None})


@dataclasses.dataclass(frozen=True)
class Data:
    """Batching and augmentation, all on the device.

    With `filtering`, each step draws `batch_size` examples and trains on `trained_batch` of them
    (the loss is summed over those, so the recipe's lr and weight decay are in units of that).
    """

    batch_size: int
    crop_padding: int = 4  # reflect-pad, then a random 32x32 crop
    flip: bool = True
    # airbench's alternating flip: each image gets one random flip before the first epoch, and
    # every odd epoch mirrors the whole set, so every image is seen both ways every two epochs.
    alternating_flip: bool = False
    cutout: int = 0  # side of the zeroed square; 0 turns cutout off
    # The record's colour jitter, last, on normalised images: per image, add a shift uniform in
    # [-brightness, brightness], then multiply by a factor uniform in [1 - contrast, 1 + contrast]. 0: off.
    brightness_jitter: float = 0.0
    contrast_jitter: float = 0.0
    filtering: Filtering | None = None  # None: every step trains on its whole batch

    @property
    def trained_batch(self) -> int:
        """The examples each step's summed loss covers: the batch, or the part of it data filtering keeps."""
        return self.filtering.kept(self.batch_size) if self.filtering else self.batch_size


@dataclasses.dataclass(frozen=True)
class Evaluation:
    tta: bool = False  # evaluate on the mean of the logits of the image and its mirror
    # With tta_shift s > 0, airbench's 6 views: that pair weighted 1/2, and the same pair of the
    # image shifted s pixels up-left and down-right (reflect-padded) weighted 1/4 each.
    tta_shift: int = 0
    # The record's views (tta.equal_weight_views): the same 6, weighted alike.
    tta_equal_weights: bool = False
    # Selective TTA (the record's): > 0 evaluates every test image plainly, then replaces the logits
    # of the int(fraction x n) least confident with their TTA logits; the "tta" accuracy is that.
    tta_selective_fraction: float = 0.0


@dataclasses.dataclass(frozen=True)
class Timing:
    """What the clock is run to, and the published result it is compared with."""

    target: float = 0.94
    published_seconds: float | None = None  # Myrtle's time on a V100 for this step
    published_accuracy: float | None = None  # where the step was not timed to the target (post 4's search)
    published_device: str = "V100"
    # The script's own count of a run's work, PFLOP (its header or README): `bench` prints the preset's
    # count beside it (flops.run_flops). None where the script publishes none.
    published_pflops: float | None = None
    # "myrtle": the clock covers the training epochs; seconds to target end at the first epoch
    # whose accuracy reaches it. "airbench": the clock covers the whitening initialisation (the
    # init program), the training epochs and the final evaluation with TTA, and a recipe's claim
    # is the mean final accuracy over many runs. Per-epoch evaluation is outside both clocks.
    rule: str = "myrtle"


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    network: Network
    optimiser: Optimiser
    data: Data
    evaluation: Evaluation = Evaluation()
    timing: Timing = Timing()
    change: str = ""  # what this step changes from the one before it, for the series table

    @property
    def epochs(self) -> float:
        return self.optimiser.epochs

    def run_steps(self, steps_per_epoch: int) -> int:
        """The run's length in steps: ceil(epochs x steps_per_epoch), as airbench counts a fractional epoch."""
        return math.ceil(self.epochs * steps_per_epoch - 1e-9)

    @property
    def batch_size(self) -> int:
        return self.data.batch_size

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with fields replaced by dotted path, of any depth: `replace(**{"optimiser.ema.momentum": 0.99})`.

        Setting a field of a trick that is off (None) turns it on, its other fields at their
        defaults. A flat name of the recipes before the nesting (FLAT_NAMES) names its field today.
        """
        recipe = self
        for name, value in changes.items():
            path, value = current_path(name, value)
            recipe = _replaced(recipe, path.split("."), value)
        return recipe

    def with_epochs(self, epochs: float) -> "Recipe":
        """The same recipe over `epochs` epochs, its lr knots stretched in proportion."""
        stretch = epochs / self.epochs
        knots = tuple((epoch * stretch, lr) for epoch, lr in self.optimiser.lr_knots)
        return self.replace(**{"optimiser.epochs": epochs, "optimiser.lr_knots": knots})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def training_fields(self) -> dict[str, Any]:
        """Every field that changes what is trained, flattened to dotted paths (no names, no published numbers).

        A trick that is off is its path alone, to None (`"optimiser.ema": None`).
        """
        fields = {}
        for group in ("network", "optimiser", "data", "evaluation"):
            fields |= _flattened(getattr(self, group), group)
        return fields | {"timing.target": self.timing.target}


def _flattened(value: Any, path: str) -> dict[str, Any]:
    if not dataclasses.is_dataclass(value):
        return {path: value}
    return {name: item for field in dataclasses.fields(value)
            for name, item in _flattened(getattr(value, field.name), f"{path}.{field.name}").items()}


def _replaced(record: Any, names: list[str], value: Any) -> Any:
    """`record` with the field at the path `names` set to `value`; a trick on the way that is off starts
    from its defaults."""
    name, *rest = names
    if name not in {field.name for field in dataclasses.fields(record)}:
        raise TypeError(f"{type(record).__name__} has no field {name!r}")
    if not rest:
        return dataclasses.replace(record, **{name: value})
    inner = getattr(record, name)
    if inner is None:
        inner = next(kind for kind in typing.get_args(typing.get_type_hints(type(record))[name])
                     if kind is not type(None))()
    return dataclasses.replace(record, **{name: _replaced(inner, rest, value)})


# ------------------------------------------------------------------ recipes written flat
# Before the network and the optimiser were nested, their fields were flat; result JSONs and
# checkpoints written then hold those names. Each flat name, to its path today (network.widths,
# activation, celu_alpha and conv_init kept theirs).
FLAT_NAMES: dict[str, str] = {
    "network.stem": "network.stem.kind",
    "network.stem_bn": "network.stem.bn",
    "network.whitening_eps": "network.stem.whitening_eps",
    "network.whitening_images": "network.stem.whitening_images",
    "network.whitening_kernel": "network.stem.whitening_kernel",
    "network.whitening_bias_init": "network.stem.bias_init",
    "network.block": "network.stages.block",
    "network.downsamples": "network.stages.downsamples",
    "network.downsample": "network.stages.downsample",
    "network.residual_blocks": "network.stages.residual_blocks",
    "network.stage_convs": "network.stages.convs",
    "network.shortcut": "network.stages.shortcut",
    "network.pool_before_bn": "network.stages.pool_before_bn",
    "network.batch_norm": "network.batch_norm.enabled",
    "network.ghost_bn_splits": "network.batch_norm.ghost_splits",
    "network.bn_scale_frozen": "network.batch_norm.scale_frozen",
    "network.bn_scale_init": "network.batch_norm.scale_init",
    "network.bn_fp32": "network.batch_norm.fp32",
    "network.bn_momentum": "network.batch_norm.momentum",
    "network.bn_eps": "network.batch_norm.eps",
    "network.head_init": "network.head.init",
    "network.pool": "network.head.pool",
    "network.head_bias": "network.head.bias",
    "network.logit_scale": "network.head.logit_scale",
    "optimiser.ema_momentum": "optimiser.ema.momentum",
    "optimiser.ema_run_steps": "optimiser.ema.run_steps",
    "optimiser.ema_every": "optimiser.ema.every",
    "optimiser.whitening_bias_epochs": "optimiser.whitening_bias.epochs",
    "optimiser.whitening_bias_decay": "optimiser.whitening_bias.decay",
    "optimiser.whitening_bias_lr_mult": "optimiser.whitening_bias.lr_mult",
    "optimiser.whitening_bias_wd_mult": "optimiser.whitening_bias.wd_mult",
    "optimiser.lookahead_every": "optimiser.lookahead.every",
    "optimiser.lookahead_decay": "optimiser.lookahead.decay",
    "optimiser.muon_lr": "optimiser.muon.lr",
    "optimiser.muon_momentum": "optimiser.muon.momentum",
    "optimiser.muon_nesterov": "optimiser.muon.nesterov",
    "optimiser.muon_ns_steps": "optimiser.muon.ns_steps",
    "optimiser.muon_ns_dtype": "optimiser.muon.ns_dtype",
}
# A flat trick was off at this value of its switch; today it is None.
FLAT_OFF: dict[str, Any] = {"optimiser.ema_momentum": None, "optimiser.whitening_bias_epochs": 0.0,
                            "optimiser.lookahead_every": 0, "optimiser.muon_lr": 0.0}


def current_path(name: str, value: Any) -> tuple[str, Any]:
    """The path and value today of a dotted name as `Recipe.replace` takes it, flat or nested.

    A flat switch at its off value turns its trick off (`"optimiser.lookahead_every": 0` is
    `"optimiser.lookahead": None`). Where a flat name is a group's today ("network.stem",
    "network.batch_norm"), a plain value is the flat field's and a group replaces the group.
    """
    if name not in FLAT_NAMES or dataclasses.is_dataclass(value):
        return name, value
    if name in FLAT_OFF and value == FLAT_OFF[name]:
        return FLAT_NAMES[name].rpartition(".")[0], None
    return FLAT_NAMES[name], value


def upgrade_recipe_dict(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """A recipe's dict (`Recipe.to_dict`, or its JSON) in today's shape; one written flat is moved by FLAT_NAMES.

    A flat trick whose switch is off, or missing (a file older than the trick), becomes None, and
    so does a trick missing from a nested dict. A dict written today comes back equal.
    """
    upgraded = copy.deepcopy({group: dict(section) if isinstance(section, Mapping) else section
                              for group, section in recipe.items()})
    moved = {}
    for name in FLAT_NAMES:
        group, field = name.split(".")
        section = upgraded.get(group)
        if isinstance(section, dict) and field in section and not isinstance(section[field], Mapping):
            moved[name] = section.pop(field)
    for name, value in moved.items():
        *parents, field = FLAT_NAMES[name].split(".")
        section = upgraded
        for parent in parents:
            section = section.setdefault(parent, {})
        section[field] = value
    for switch, off in FLAT_OFF.items():
        group, trick = FLAT_NAMES[switch].split(".")[:2]
        if moved and moved.get(switch, off) == off and isinstance(upgraded.get(group), dict):
            upgraded[group][trick] = None
    if isinstance(optimiser := upgraded.get("optimiser"), dict):
        for trick in TRICKS:
            optimiser.setdefault(trick, None)  # a recipe written before the trick existed ran without it
    _fill_defaults(upgraded, Recipe)  # and with every later field at its default, which changes nothing
    return upgraded


def _fill_defaults(section: dict, kind: type) -> None:
    """Every field of `kind` missing from `section` set to its default (in JSON form), nested sections too."""
    hints = typing.get_type_hints(kind)
    for field in dataclasses.fields(kind):
        if field.name not in section:
            if field.default is not dataclasses.MISSING:
                default = dataclasses.asdict(field.default) if dataclasses.is_dataclass(field.default) else field.default
                section[field.name] = json.loads(json.dumps(default))
        elif isinstance(section[field.name], dict):
            inner = next(k for k in (typing.get_args(hints[field.name]) or (hints[field.name],))
                         if dataclasses.is_dataclass(k))
            _fill_defaults(section[field.name], inner)


def one_cycle(epochs: float, peak_epoch: float, peak: float, *tail: tuple[float, float]) -> tuple:
    """lr knots (0, 0) -> (peak_epoch, peak) -> ... tail, or -> (epochs, 0) without a tail."""
    return ((0, 0.0), (peak_epoch, peak), *(tail or ((epochs, 0.0),)))


def steps_per_epoch(batch_size: int, train_images: int = 50_000) -> int:
    return train_images // batch_size


# ------------------------------------------------------------------------------ the series
# Each post starts from a recipe written in full; every later step of the post is a declared
# change of the step before it. Times are Myrtle's, on a V100, to 94% unless an accuracy is
# given (post 4's architecture search ran fixed 20-epoch trials).


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    change: str  # the series table's "change" column
    description: str
    changes: Mapping[str, Any]  # dotted path (Recipe.replace) -> new value
    published_seconds: float
    published_accuracy: float | None = None
    published_pflops: float | None = None


def chain(start: Recipe, steps: tuple[Step, ...]) -> list[Recipe]:
    """`start`, then each step applied to the recipe before it."""
    recipes = [start]
    for step in steps:
        recipes.append(recipes[-1].replace(
            name=step.name, description=step.description, change=step.change,
            timing=dataclasses.replace(recipes[-1].timing, published_seconds=step.published_seconds,
                                       published_accuracy=step.published_accuracy,
                                       published_pflops=step.published_pflops),
            **step.changes))
    return recipes


# The DAWNBench pre-activation ResNet-18 variant that post 1 starts from.
PREACT_RESNET18 = Network(
    widths=(64, 64, 128, 256, 256),
    stem=Stem(bn=False),  # Myrtle dropped the stem's BN-ReLU: the first block applies its own
    stages=Stages(block="pre-act", downsamples=(False, True, True, True), downsample="conv3x3",
                  residual_blocks=(2, 2, 2, 2)),
    batch_norm=BatchNorm(scale_init="uniform", fp32=False), head=Head(pool="avg+max", bias=True, logit_scale=1.0))

POST1_BASELINE = Recipe(
    name="post1-baseline",
    description="Myrtle post 1: DAWNBench pre-activation ResNet-18, batch 128, 35 epochs, fp16 BN (297 s on a V100); "
                "its host-side fixes are built in: data preprocessed once, augmented on the device",
    change="DAWNBench ResNet-18, host-side fixes",
    network=PREACT_RESNET18,
    optimiser=Optimiser(epochs=35, lr_knots=((0, 0.0), (15, 0.1), (30, 0.005), (35, 0.0)), update="page"),
    data=Data(batch_size=128),
    timing=Timing(published_seconds=297),
)

POST1_TO_3 = (
    Step("post2-batch512", "batch 512, lr x4.4",
         "Myrtle post 2: batch 512, peak lr 0.44 (4 x 0.1 x 1.1), weight decay scaled with the batch (256 s)",
         {"data.batch_size": 512, "optimiser.lr_knots": ((0, 0.0), (15, 0.44), (30, 0.005), (35, 0.0))}, 256),
    Step("post3-fp32-bn", "BN in fp32",
         "Myrtle post 3: batch norm in float32 (the fp16 BN path was slow) (186 s)",
         {"network.batch_norm.fp32": True}, 186),
    Step("post3-cutout", "cutout 8x8, 30 epochs",
         "Myrtle post 3: 8x8 cutout, 30 epochs, lr 0 -> 0.4 at epoch 8 -> 0 (161 s, 94.15%)",
         {"data.cutout": 8, "optimiser.epochs": 30, "optimiser.lr_knots": one_cycle(30, 8, 0.4)}, 161),
    Step("post3-batch768", "batch 768, peak lr 0.6",
         "Myrtle post 3: batch 768 with peak lr 0.6 (154 s)",
         {"data.batch_size": 768, "optimiser.lr_knots": one_cycle(30, 8, 0.6)}, 154),
)

# Post 4's search: 20-epoch trials from the ResNet-18 backbone to ResNet-9. Removing the
# residual branches leaves the chain conv, (BN-ReLU-conv) x 3, pool: a post-activation chain
# conv-BN-ReLU units, as the post draws it.
POST4_ARCH_1 = Recipe(
    name="post4-arch-1-shortcuts",
    description="Myrtle post 4: the ResNet-18 backbone with its residual branches removed, leaving "
                "stride-2 1x1 shortcut convs; 20 epochs (36 s, 55.9%)",
    change="backbone: shortcuts only (1x1 stride-2 convs)",
    network=Network(widths=(64, 128, 256, 256), stages=Stages(downsample="conv1x1", residual_blocks=(0, 0, 0)),
                    batch_norm=BatchNorm(scale_init="uniform"), head=Head(pool="avg+max", bias=True, logit_scale=1.0)),
    optimiser=Optimiser(epochs=20, lr_knots=one_cycle(20, 4, 0.4), update="page"),
    data=Data(batch_size=512, cutout=8),
    timing=Timing(published_seconds=36, published_accuracy=0.559),
)

POST4_ARCH = (
    Step("post4-arch-2-conv3x3", "3x3 downsampling convs",
         "Myrtle post 4: stride-2 3x3 convs instead of 1x1 (36 s, 85.6%)",
         {"network.stages.downsample": "conv3x3"}, 36, 0.856),
    Step("post4-arch-3-maxpool", "3x3 conv + max-pool",
         "Myrtle post 4: stride-1 3x3 conv, then 2x2 max-pool (43 s, 89.7%)",
         {"network.stages.downsample": "maxpool"}, 43, 0.897),
    Step("post4-arch-4-width512", "width 512, global max-pool",
         "Myrtle post 4: last stage 512 wide, global max-pool only, linear head without bias (47 s, 90.7%)",
         {"network.widths": (64, 128, 256, 512), "network.head.pool": "max", "network.head.bias": False}, 47, 0.907),
    Step("post4-arch-5-bn-scale", "BN scale init 1, logits x 0.125",
         "Myrtle post 4: BN scales start at 1 (not PyTorch 0.4's uniform draw), logits scaled by 0.125 (47 s, 91.1%)",
         {"network.batch_norm.scale_init": "ones", "network.head.logit_scale": 0.125}, 47, 0.911),
    Step("post4-arch-6-residual", "residual blocks on layers 1 and 3",
         "Myrtle post 4: residual branches after stages 1 and 3: ResNet-9, 20 epochs (66 s, 93.7%)",
         {"network.stages.residual_blocks": (1, 0, 1)}, 66, 0.937),
    Step("myrtle-resnet9", "24 epochs",
         "Myrtle post 4: ResNet-9, 24 epochs, cutout 8x8 (79 s on a V100)",
         {"optimiser.epochs": 24, "optimiser.lr_knots": one_cycle(24, 5, 0.4)}, 79),
)

# Post 8, as Page's bag_of_tricks notebook ran each step, at the epochs of the post's table.
# From label smoothing on, the lr knots are (0, 0) -> (epochs / 5, peak) -> (epochs, 0).
POST8_BASELINE = Recipe(
    name="post8-01-baseline",
    description="Myrtle post 8, step 1: the post-4 ResNet-9 as submitted, 24 epochs (75 s on a V100)",
    change="post-4 ResNet-9 as submitted",
    network=Network(),
    optimiser=Optimiser(epochs=24, lr_knots=one_cycle(24, 5, 0.4), update="page"),
    data=Data(batch_size=512, cutout=8),
    timing=Timing(published_seconds=75),
)

FULL_EPOCH_STEPS = steps_per_epoch(512)  # 97 batches of 512 in the 50,000 training images
POST8 = (
    Step("post8-02-gpu-preprocessing", "GPU preprocessing",
         "Myrtle post 8, step 2: the dataset on the GPU, normalised and padded once, augmented there. "
         "This design always does so, so the recipe is step 1's (70 s)",
         {}, 70),
    Step("post8-03-pool-before-bn", "move max-pool",
         "Myrtle post 8, step 3: conv -> pool -> BN -> act, 25 epochs (64 s)",
         {"network.stages.pool_before_bn": True, "optimiser.epochs": 25,
          "optimiser.lr_knots": one_cycle(25, 5, 0.4)}, 64),
    Step("post8-04-label-smoothing", "label smoothing 0.2",
         "Myrtle post 8, step 4: label smoothing 0.2, 23 epochs (59 s)",
         {"optimiser.label_smoothing": 0.2, "optimiser.epochs": 23, "optimiser.lr_knots": one_cycle(23, 4.6, 0.4)},
         59),
    Step("post8-05-celu", "CELU",
         "Myrtle post 8, step 5: CELU(alpha 0.075) for ReLU, 20 epochs (52 s)",
         {"network.activation": "celu", "network.celu_alpha": 0.075, "optimiser.epochs": 20,
          "optimiser.lr_knots": one_cycle(20, 4, 0.4)}, 52),
    Step("post8-06-ghost-bn", "ghost batch norm",
         "Myrtle post 8, step 6: BN statistics over 16 splits of 32 images, peak lr 0.6, 18 epochs (46 s)",
         {"network.batch_norm.ghost_splits": 16, "optimiser.epochs": 18,
          "optimiser.lr_knots": one_cycle(18, 3.6, 0.6)}, 46),
    Step("post8-07-frozen-bn-scale", "frozen BN scales",
         "Myrtle post 8, step 7: BN scales fixed at 1, CELU alpha 0.3, logits x 1/16, BN biases lr x64 and "
         "wd /64, 17 epochs (43 s)",
         {"network.batch_norm.scale_frozen": True, "network.celu_alpha": 0.3, "network.head.logit_scale": 1 / 16,
          "optimiser.bn_bias_lr_mult": 64.0, "optimiser.bn_bias_wd_mult": 1 / 64, "optimiser.epochs": 17,
          "optimiser.lr_knots": one_cycle(17, 3.4, 0.6)}, 43),
    Step("post8-08-whitening", "input patch whitening",
         "Myrtle post 8, step 8: frozen 3x3 PCA whitening, then a 1x1 conv; peak lr 1.0, cutout 5x5, "
         "14 epochs (36 s)",
         {"network.stem.kind": "whitening", "data.cutout": 5, "optimiser.epochs": 14,
          "optimiser.lr_knots": one_cycle(14, 2.8, 1.0)}, 36),
    Step("post8-09-ema", "EMA",
         "Myrtle post 8, step 9: EMA of the weights (0.99 every 5 steps), evaluated; lr held at 0.1 for the "
         "last 2 epochs; 13 epochs (33.5 s)",
         {"optimiser.ema": Ema(momentum=0.99, run_steps=13 * FULL_EPOCH_STEPS, every=5), "optimiser.epochs": 13,
          "optimiser.lr_knots": one_cycle(13, 2.6, 1.0, (11, 0.1), (13, 0.1))}, 33.5),
    Step("post8-10-tta", "test-time augmentation",
         "Myrtle post 8, step 10: flip TTA, cutout removed, 10 epochs: the final recipe (26 s)",
         {"evaluation.tta": True, "data.cutout": 0, "optimiser.epochs": 10,
          "optimiser.ema.run_steps": 10 * FULL_EPOCH_STEPS,
          "optimiser.lr_knots": one_cycle(10, 2, 1.0, (8, 0.1), (10, 0.1))}, 26),
)

# The two headline recipes, written in full: the chains above must arrive at them exactly
# (tests/test_presets.py).
MYRTLE_RESNET9 = Recipe(
    name="myrtle-resnet9",
    description="Myrtle post 4: ResNet-9, 24 epochs, cutout 8x8 (79 s on a V100)",
    change="24 epochs",
    network=Network(),
    optimiser=Optimiser(epochs=24, lr_knots=((0, 0.0), (5, 0.4), (24, 0.0)), update="page"),
    data=Data(batch_size=512, cutout=8),
    timing=Timing(published_seconds=79),
)

MYRTLE_FINAL = Recipe(
    name="myrtle-final",
    description="Myrtle post 8 'bag of tricks': whitening, ghost BN, CELU, EMA, TTA, 10 epochs (26 s on a V100)",
    change="test-time augmentation",
    network=Network(activation="celu", celu_alpha=0.3, stem=Stem(kind="whitening"), stages=Stages(pool_before_bn=True),
                    batch_norm=BatchNorm(ghost_splits=16, scale_frozen=True), head=Head(logit_scale=1 / 16)),
    optimiser=Optimiser(epochs=10, lr_knots=((0, 0.0), (2, 1.0), (8, 0.1), (10, 0.1)), update="page",
                        bn_bias_lr_mult=64.0, bn_bias_wd_mult=1 / 64, label_smoothing=0.2,
                        ema=Ema(momentum=0.99, run_steps=10 * FULL_EPOCH_STEPS, every=5)),
    data=Data(batch_size=512, cutout=0),
    evaluation=Evaluation(tta=True),
    timing=Timing(published_seconds=26),
)

# ---------------------------------------------------------------------------- airbench
# Keller Jordan's airbench94 (arXiv 2404.00498) and airbench94_muon, from the settings of their
# published scripts (docs/recipe.md). Their learning rates are converted into this project's
# (Myrtle's) units: the loss is summed, and an SGD group with torch.optim.SGD lr `l` and
# weight_decay `w` at batch B is written as lr l x B and weight decay w / B.

AIRBENCH_NETWORK = Network(
    widths=(24, 64, 256, 256), activation="gelu", conv_init="dirac",
    stem=Stem(kind="whitening-bias", whitening_kernel=2, whitening_eps=5e-4, whitening_images=5_000),
    stages=Stages(residual_blocks=(0, 0, 0), convs=2, pool_before_bn=True),
    batch_norm=BatchNorm(scale_frozen=True, momentum=0.4, eps=1e-12),
    # The whitening conv is unpadded (31 x 31), so the last stage is 3 x 3: airbench's max-pool 3
    # is the global max-pool.
    head=Head(logit_scale=1 / 9))

# airbench94 quotes lr 11.5 and weight decay 0.0153 "per 1024 examples, decoupled": torch.optim.SGD
# gets lr = 11.5 / K and weight_decay = 0.0153 x B / 11.5 with K = 1024 (1 + 1 / (1 - momentum)).
# At B = 1024 that is lr 1.5 and weight decay 0.0153 / 11.5 in this project's units.
AIRBENCH94_MOMENTUM = 0.85
AIRBENCH94_PEAK_LR = 11.5 * 1024 / (1024 * (1 + 1 / (1 - AIRBENCH94_MOMENTUM)))
AIRBENCH94_EPOCHS = 9.9

AIRBENCH94 = Recipe(
    name="airbench94",
    description="airbench94 (Keller Jordan): whitened 2x2 stem, three GELU conv groups, lookahead, alternating "
                "flip, 6-view TTA, 9.9 epochs of batch 1024 (3.83 s on an A100)",
    network=AIRBENCH_NETWORK,
    optimiser=Optimiser(
        epochs=AIRBENCH94_EPOCHS,
        # lr x 0.2 rising linearly to x 1.0 over the first 23% of the run, then falling to x 0.07.
        lr_knots=((0, 0.2 * AIRBENCH94_PEAK_LR), (0.23 * AIRBENCH94_EPOCHS, AIRBENCH94_PEAK_LR),
                  (AIRBENCH94_EPOCHS, 0.07 * AIRBENCH94_PEAK_LR)),
        momentum=AIRBENCH94_MOMENTUM, weight_decay=0.0153 / 11.5, update="torch",
        bn_bias_lr_mult=64.0, bn_bias_wd_mult=1 / 64,  # BN biases: lr x 64, the same absolute decay
        label_smoothing=0.2, whitening_bias=WhiteningBias(epochs=3, decay="cut"),
        lookahead=Lookahead(every=5, decay=0.95)),
    data=Data(batch_size=1024, crop_padding=2, alternating_flip=True),
    evaluation=Evaluation(tta=True, tta_shift=1),
    # 0.36 PFLOP: the cifar10-airbench README's table (commit 00e4a0a3).
    timing=Timing(published_seconds=3.83, published_device="A100", rule="airbench", published_pflops=0.36),
)

# airbench94_muon's SGD groups (Nesterov 0.85): whitening bias lr 0.053 (decaying to 0 over 3
# epochs), BN biases 0.053 and the head 0.67 (decaying to 0 over the run), each with weight_decay
# 2e-6 x B / its lr, so every group shrinks by 2e-6 x B x (its lr / initial lr) per step. The
# run's schedule is the head's, lr 0.67 x B: the others are multiples of it.
AIRBENCH_MUON_BATCH = 2000
AIRBENCH_MUON_HEAD_LR, AIRBENCH_MUON_BIAS_LR = 0.67, 0.053
AIRBENCH_MUON_EPOCHS = 8

AIRBENCH94_MUON = Recipe(
    name="airbench94-muon",
    description="airbench94_muon (Keller Jordan): the airbench94 net, Muon on the conv filters, 8 epochs of "
                "batch 2000, no lookahead (2.59 s on an A100)",
    network=dataclasses.replace(AIRBENCH_NETWORK, stem=dataclasses.replace(AIRBENCH_NETWORK.stem, bias_init="torch"),
                                head=dataclasses.replace(AIRBENCH_NETWORK.head, init="unit-std", logit_scale=1 / 256)),
    optimiser=Optimiser(
        epochs=AIRBENCH_MUON_EPOCHS,
        lr_knots=((0, AIRBENCH_MUON_HEAD_LR * AIRBENCH_MUON_BATCH), (AIRBENCH_MUON_EPOCHS, 0.0)),
        momentum=0.85, update="torch",
        weight_decay=2e-6 * AIRBENCH_MUON_BATCH / AIRBENCH_MUON_HEAD_LR / AIRBENCH_MUON_BATCH,
        bn_bias_lr_mult=AIRBENCH_MUON_BIAS_LR / AIRBENCH_MUON_HEAD_LR,
        bn_bias_wd_mult=AIRBENCH_MUON_HEAD_LR / AIRBENCH_MUON_BIAS_LR,
        label_smoothing=0.2,
        whitening_bias=WhiteningBias(epochs=3, decay="linear", lr_mult=AIRBENCH_MUON_BIAS_LR / AIRBENCH_MUON_HEAD_LR,
                                     wd_mult=AIRBENCH_MUON_HEAD_LR / AIRBENCH_MUON_BIAS_LR),
        # The script orthogonalises one filter bank at a time; one batched Newton-Schulz over the banks
        # zero-padded and stacked (the record's) is the same computation: bitwise in bf16 for this net's
        # banks, all wide, and within 4.2e-7 in fp32 (docs/recipe.md; tests/test_muon.py), in one kernel
        # launch per iteration instead of one per bank.
        muon=Muon(lr=0.24, momentum=0.6, nesterov=True, ns_steps=3, ns_dtype="bf16", stacked=True)),
    data=Data(batch_size=AIRBENCH_MUON_BATCH, crop_padding=2, alternating_flip=True),
    evaluation=Evaluation(tta=True, tta_shift=1),
    # 0.29 PFLOP: the cifar10-airbench README's table (the version that lists airbench94_muon).
    timing=Timing(published_seconds=2.59, published_device="A100", rule="airbench", published_pflops=0.29),
)

# airbench95 (legacy/airbench95.py) is airbench94 widened, with lr 10 per 1024 (the same
# conversion as airbench94's, weight decay 0.0153 per 1024 again) and 15 epochs, timed to 95%.
AIRBENCH95_PEAK_LR = 10.0 * 1024 / (1024 * (1 + 1 / (1 - AIRBENCH94_MOMENTUM)))
AIRBENCH95_EPOCHS = 15
AIRBENCH96_PEAK_LR = 9.0 * 1024 / (1024 * (1 + 1 / (1 - AIRBENCH94_MOMENTUM)))
AIRBENCH96_EPOCHS = 37
AIRBENCH96_FASTER_PEAK_LR = AIRBENCH96_PEAK_LR / 1024 * 512
AIRBENCH96_FASTER_EPOCHS = 45
AIRBENCH_STEPS = (
    Step("airbench95", "widths 128/384/384, lr 10, 15 epochs, target 95%",
         "airbench95 (Keller Jordan, legacy/airbench95.py): airbench94 widened to 128/384/384, lr 10 per 1024, "
         "15 epochs, to 95% (10.4 s on an A100)",
         {"network.widths": (24, 128, 384, 384), "optimiser.epochs": AIRBENCH95_EPOCHS,
          "optimiser.lr_knots": ((0, 0.2 * AIRBENCH95_PEAK_LR), (0.23 * AIRBENCH95_EPOCHS, AIRBENCH95_PEAK_LR),
                                 (AIRBENCH95_EPOCHS, 0.07 * AIRBENCH95_PEAK_LR)),
          "optimiser.weight_decay": 0.0153 / 10.0, "timing.target": 0.95}, 10.4,
         published_pflops=1.39),  # the script's header (line 2); its README rounds to 1.4
    Step("airbench96", "widths 128/384/512, 3 convs + residual, cutout 12, 37 epochs, target 96%",
         "airbench96 (Keller Jordan, legacy/airbench96.py): widths 128/384/512, three convs per group with a "
         "residual over the last two, BN momentum 0.1, translate 4, cutout 12, lr 9 and wd 0.012 per 1024, "
         "37 epochs, to 96% (34.7 s on an A100)",
         {"network.widths": (24, 128, 384, 512), "network.stages.convs": 3, "network.stages.residual_over_last": True,
          "network.batch_norm.momentum": 0.1, "data.crop_padding": 4, "data.cutout": 12,
          "optimiser.epochs": AIRBENCH96_EPOCHS,
          # x 0.2 -> 1 over int(0.1 x 1776) = 177 of the 48-step epochs' steps, then linearly to 0.
          "optimiser.lr_knots": ((0, 0.2 * AIRBENCH96_PEAK_LR), (177 / 48, AIRBENCH96_PEAK_LR),
                                 (AIRBENCH96_EPOCHS, 0.0)),
          "optimiser.weight_decay": 0.012 / 9.0, "timing.target": 0.96}, 34.7,
         published_pflops=4.91),  # the script's header; its README rounds to 4.9
    # airbench96_faster.py (commit 2501e327; docs/recipe.md): each step draws 1024 examples and trains on
    # the 512 a proxy picked, so its lr 9 and weight decay 0.012 per 1024 are written in units of the
    # 512 trained: 9 / K x 512 and (0.012 x 1024 / 9) / 512. The whitening bias trains the whole run
    # (the script's swap to a frozen bias never fires).
    Step("airbench96-faster", "data filtering by a proxy (512 of 1024), 45 epochs",
         "airbench96_faster (Keller Jordan, airbench96_faster.py): the airbench96 net trained on the 512 "
         "highest-loss examples of each batch of 1024 under a small proxy net (32/64/64, two convs per group) "
         "trained first, on the clock, on the same batches; 45 epochs, to 96% (27.3 s on an A100)",
         {"data.filtering": Filtering(), "optimiser.epochs": AIRBENCH96_FASTER_EPOCHS,
          # x 0.2 -> 1 over int(0.1 x 2160) = 216 of the 48-step epochs' steps, then linearly to 0.
          "optimiser.lr_knots": ((0, 0.2 * AIRBENCH96_FASTER_PEAK_LR), (216 / 48, AIRBENCH96_FASTER_PEAK_LR),
                                 (AIRBENCH96_FASTER_EPOCHS, 0.0)),
          "optimiser.weight_decay": 0.012 * 1024 / 9.0 / 512,
          "optimiser.whitening_bias.epochs": AIRBENCH96_FASTER_EPOCHS}, 27.3,
         published_pflops=3.1),  # the script's header
)

# hiverge's cifar10_speedrun.py (commit 001aea4c; docs/recipe.md), the 94% record, from airbench94_muon.
# Its SGD groups as airbench94_muon's: whitening and BN biases lr 0.0573, the head 0.5415, each with
# weight_decay 1.0418e-6 x B / its lr.
RECORD_BATCH, RECORD_EPOCHS = 1536, 7.63
RECORD_HEAD_LR, RECORD_BIAS_LR = 0.5415, 0.0573
RECORD_STEPS = (
    Step("record94", "the 94% record: stacked Muon, SiLU, jitter, selective TTA, batch 1536, 7.63 epochs",
         "the 94% record (hiverge/cifar10-speedrun cifar10_speedrun.py, commit 001aea4c): airbench94_muon with "
         "SiLU, whitening from 960 images, one batched Newton-Schulz (retuned coefficients) with renormalisation "
         "every 8 steps and decoupled weight decay, brightness/contrast jitter, label smoothing 0.09, selective "
         "TTA on the 20% least confident, 7.63 epochs of batch 1536 (2.015 s on an A100)",
         {"network.activation": "silu", "network.stem.activation": "gelu", "network.stem.whitening_images": 960,
          "network.batch_norm.momentum": 0.4434,
          "data.batch_size": RECORD_BATCH, "data.brightness_jitter": 0.1399, "data.contrast_jitter": 0.1308,
          "optimiser.epochs": RECORD_EPOCHS,
          "optimiser.lr_knots": ((0, RECORD_HEAD_LR * RECORD_BATCH), (RECORD_EPOCHS, 0.0)),
          "optimiser.momentum": 0.825,
          "optimiser.weight_decay": 1.0418e-6 * RECORD_BATCH / RECORD_HEAD_LR / RECORD_BATCH,
          "optimiser.bn_bias_lr_mult": RECORD_BIAS_LR / RECORD_HEAD_LR,
          "optimiser.bn_bias_wd_mult": RECORD_HEAD_LR / RECORD_BIAS_LR,
          "optimiser.label_smoothing": 0.09,
          # ceil(0.19 x 32) = 7 steps, lr x (1 - t / 7).
          "optimiser.whitening_bias.epochs": 0.19,
          "optimiser.whitening_bias.lr_mult": RECORD_BIAS_LR / RECORD_HEAD_LR,
          "optimiser.whitening_bias.wd_mult": RECORD_HEAD_LR / RECORD_BIAS_LR,
          "optimiser.muon.lr": 0.205, "optimiser.muon.momentum": 0.655, "optimiser.muon.ns_dtype": "fp16",
          "optimiser.muon.coefficients": (3.4576, -4.7391, 2.0843),
          "optimiser.muon.renormalise_every": 8, "optimiser.muon.weight_decay": 1.6002e-3,
          "optimiser.muon.buffer_dtype": "fp16",
          "evaluation.tta_equal_weights": True, "evaluation.tta_selective_fraction": 0.2}, 2.015),
)

SERIES_STEPS: dict[str, Step] = {s.name: s for s in (*POST1_TO_3, *POST4_ARCH, *POST8, *AIRBENCH_STEPS,
                                                     *RECORD_STEPS)}
_post1_to_3 = chain(POST1_BASELINE, POST1_TO_3)
_post4 = chain(POST4_ARCH_1, POST4_ARCH)
_post8 = chain(POST8_BASELINE, POST8)
_airbench = chain(AIRBENCH94, AIRBENCH_STEPS)
_record = chain(AIRBENCH94_MUON, RECORD_STEPS)

# The presets by post, in the order of the series.
BY_POST: dict[str, tuple[Recipe, ...]] = {
    "post 1: baseline": (_post1_to_3[0],),
    "post 2: mini-batches": (_post1_to_3[1],),
    "post 3: regularisation": tuple(_post1_to_3[2:]),
    "post 4: architecture": (*_post4[:-1], MYRTLE_RESNET9),
    "post 8: bag of tricks": (*_post8, MYRTLE_FINAL),
    "airbench: past Myrtle": (AIRBENCH94, AIRBENCH94_MUON, *_airbench[1:], *_record[1:]),
}
PRESETS: dict[str, Recipe] = {r.name: r for recipes in BY_POST.values() for r in recipes}
DEFAULT_PRESET = MYRTLE_FINAL.name
# Each chained preset's predecessor, for the declared-change check and the series' ratios.
PREDECESSORS: dict[str, str] = {later.name: earlier.name
                                for steps in (_post1_to_3, _post4, _post8, _airbench, _record)
                                for earlier, later in zip(steps, steps[1:])}


def get_preset(name: str) -> Recipe:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
