"""The settings of a run that are not the recipe's, and the arithmetic every framework shares.

Plain Python: the PyTorch reference imports this and must not import JAX (on a GPU machine that
would make JAX grab most of the GPU memory).
"""

from __future__ import annotations

import dataclasses

from jax_resnet_speed.presets import Network, Recipe, upgrade_recipe_dict

PRECISIONS = ("bf16", "fp16", "fp32")  # compute precisions; parameters and BN statistics stay fp32
IMAGE_SIZE = 32
EVAL_BATCH = 1000


def default_precision(backend: str) -> str:
    """bf16 on an accelerator; fp32 on a CPU, whose XLA backend computes bf16 slowly."""
    return "fp32" if backend == "cpu" else "bf16"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A recipe plus the choices that are not part of it."""

    recipe: Recipe
    precision: str = "bf16"  # one of PRECISIONS
    width_mult: float = 1.0
    loop: str = "step"  # one of compilation.LOOPS
    devices: int = 1  # data parallel over this many devices (parallel.py)

    def to_dict(self) -> dict:
        return {"recipe": self.recipe.to_dict(), "precision": self.precision, "width_mult": self.width_mult,
                "loop": self.loop, "devices": self.devices}


def upgrade_config_dict(config: dict) -> dict:
    """A run's config as a result JSON or checkpoint stored it, its recipe in today's shape (a flat one nested)."""
    recipe = config.get("recipe")
    return {**config, "recipe": upgrade_recipe_dict(recipe)} if isinstance(recipe, dict) else config


def epoch_steps(recipe: Recipe, steps_per_epoch: int) -> list[int]:
    """The steps of each epoch of a run: whole epochs, then what is left of a fractional one."""
    total = recipe.run_steps(steps_per_epoch)
    return [min(steps_per_epoch, total - start) for start in range(0, total, steps_per_epoch)]


def scaled_widths(spec: Network, width_mult: float) -> tuple[int, ...]:
    """Every width x width_mult; airbench's whitening stem keeps its width, set by its patch size."""
    widths = tuple(max(1, round(w * width_mult)) for w in spec.widths)
    return (spec.widths[0], *widths[1:]) if spec.stem.kind == "whitening-bias" else widths
