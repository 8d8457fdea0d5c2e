"""Recipes as plain data.

A recipe is everything that defines a training run except the data and the seed. Numbers
follow Myrtle AI's "How to Train Your ResNet" (David Page, 2018); see docs/recipe.md.

Learning rates and weight decay are quoted the way Myrtle quotes them: the loss is summed
over the batch, the learning rate is divided by the batch size and the weight decay
multiplied by it, so `lr * weight_decay` (the per-step shrink of the weights) does not
depend on the batch size.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    # Run length and batch.
    epochs: int
    batch_size: int
    # Piecewise-linear learning rate: (epoch, lr) knots for a run of `epochs` epochs. A run
    # of another length stretches the knots in proportion, so warm-up and annealing keep
    # their shape.
    lr_knots: tuple[tuple[float, float], ...]
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    # BatchNorm biases get their own learning-rate and weight-decay multipliers.
    bn_bias_lr_mult: float = 1.0
    bn_bias_wd_mult: float = 1.0
    label_smoothing: float = 0.0
    # Exponential moving average of the weights (and BN statistics), evaluated in place of
    # the live weights. `ema_momentum` is per step in a run of `ema_run_steps` steps (the
    # recipe's own run on the full dataset); a shorter or longer run stretches the EMA's
    # horizon with it, as it stretches the lr schedule. The update runs every `ema_every`
    # steps with (per-step momentum) ** ema_every.
    ema_momentum: float | None = None
    ema_run_steps: int = 970
    ema_every: int = 5
    tta: bool = False  # evaluate on the mean of the logits of the image and its mirror
    # Augmentation.
    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0  # side of the zeroed square; 0 turns cutout off
    # Network.
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    activation: str = "relu"  # "relu" or "celu"
    celu_alpha: float = 0.3
    pool_before_bn: bool = False  # conv -> pool -> BN -> act instead of conv -> BN -> act -> pool
    ghost_bn_splits: int = 1
    bn_scale_frozen: bool = False
    bn_momentum: float = 0.1  # PyTorch convention: new = (1 - m) * old + m * batch
    bn_eps: float = 1e-5
    whitening: bool = False  # frozen 3x3 PCA-whitening stem, then a learnable 1x1 conv
    whitening_eps: float = 1e-2
    whitening_images: int = 10_000
    logit_scale: float = 0.125
    target: float = 0.94

    def with_epochs(self, epochs: int) -> "Recipe":
        """The same recipe over `epochs` epochs, its lr knots stretched in proportion."""
        stretch = epochs / self.epochs
        knots = tuple((epoch * stretch, lr) for epoch, lr in self.lr_knots)
        return dataclasses.replace(self, epochs=epochs, lr_knots=knots)

    def ema_momentum_per_step(self, run_steps: int) -> float:
        """The per-step EMA momentum for a run of `run_steps` steps: the same horizon as a fraction of the run."""
        return self.ema_momentum ** (self.ema_run_steps / run_steps)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


MYRTLE_RESNET9 = Recipe(
    name="myrtle-resnet9",
    description="Myrtle post 4: ResNet-9, 24 epochs, cutout 8x8 (79 s on a V100)",
    epochs=24,
    batch_size=512,
    lr_knots=((0, 0.0), (5, 0.4), (24, 0.0)),
    cutout=8,
)

MYRTLE_FINAL = Recipe(
    name="myrtle-final",
    description="Myrtle post 8 'bag of tricks': whitening, ghost BN, CELU, EMA, TTA, 10 epochs (26 s on a V100)",
    epochs=10,
    batch_size=512,
    lr_knots=((0, 0.0), (2, 1.0), (8, 0.1), (10, 0.1)),
    bn_bias_lr_mult=64.0,
    bn_bias_wd_mult=1 / 64,
    label_smoothing=0.2,
    ema_momentum=0.99,
    ema_run_steps=10 * (50_000 // 512),
    ema_every=5,
    tta=True,
    cutout=0,
    activation="celu",
    celu_alpha=0.3,
    pool_before_bn=True,
    ghost_bn_splits=16,
    bn_scale_frozen=True,
    whitening=True,
    logit_scale=1 / 16,
)

PRESETS: dict[str, Recipe] = {r.name: r for r in (MYRTLE_FINAL, MYRTLE_RESNET9)}
DEFAULT_PRESET = MYRTLE_FINAL.name


def get_preset(name: str) -> Recipe:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
