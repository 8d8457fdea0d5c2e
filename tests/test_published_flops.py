"""The airbench family's FLOPs by hand, against the PFLOPs each script publishes per run.

Counting as flops.py does (2 x multiply-adds of convolutions and products), with a training image
costing 3 forward passes (forward, input gradient, weight gradient) and a 6-view TTA image 6.
"""

from math import ceil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_resnet_speed import data as data_lib, flops, presets, train

TRAIN, TEST = 50_000, 10_000


def airbench_forward_flops(widths, convs_per_group, whitening_width=24, whitening_kernel=2) -> int:
    """One image's forward pass: the unpadded whitening conv (32 -> 31), then per group a 3x3 conv
    at the incoming size, a 2x2 max-pool, and convs_per_group - 1 more 3x3 convs at the pooled
    size (31 -> 15 -> 7 -> 3), then the linear head."""
    size = 32 - whitening_kernel + 1
    macs = size * size * whitening_width * 3 * whitening_kernel ** 2
    channels = whitening_width
    for width in widths:
        macs += size * size * 9 * channels * width
        size //= 2
        macs += (convs_per_group - 1) * size * size * 9 * width * width
        channels = width
    return 2 * (macs + widths[-1] * 10)


AIRBENCH94 = airbench_forward_flops((64, 256, 256), 2)
AIRBENCH95 = airbench_forward_flops((128, 384, 384), 2)
AIRBENCH96 = airbench_forward_flops((128, 384, 512), 3)
PROXY = airbench_forward_flops((32, 64, 64), 2)  # airbench96_faster's proxy


def run_pflops(forward, steps, batch, tta_views=6, tta_images=TEST):
    return (3 * forward * steps * batch + tta_views * forward * tta_images) / 1e15


def airbench96_faster_pflops():
    """45 epochs of 48 steps. The proxy runs forward on every batch of 1024 and, one step in 4, backward
    over the whole batch (its loss is masked, not its batch); the big net trains on the 512 examples
    the proxy finds hardest in each batch."""
    steps = ceil(45 * 48)
    proxy = PROXY * steps * 1024 + 2 * PROXY * len(range(0, steps, 4)) * 1024
    return run_pflops(AIRBENCH96, steps, 512) + proxy / 1e15


# (published PFLOPs per run, ours), the published figures from each script's header or README.
PUBLISHED = {
    "airbench94": (0.36, run_pflops(AIRBENCH94, ceil(9.9 * 48), 1024)),
    "airbench94_muon": (0.29, run_pflops(AIRBENCH94, ceil(8 * 25), 2000)),
    "airbench95": (1.39, run_pflops(AIRBENCH95, ceil(15 * 48), 1024)),
    "airbench96": (4.91, run_pflops(AIRBENCH96, ceil(37 * 48), 1024)),
    "airbench96_faster": (3.1, airbench96_faster_pflops()),
}


@pytest.mark.parametrize("script", sorted(PUBLISHED))
def test_the_count_by_hand_agrees_with_the_published_pflops_within_3_percent(script):
    published, ours = PUBLISHED[script]
    assert abs(ours / published - 1) < 0.03, (script, ours, published)


def test_per_image_forward_flops_by_hand():
    assert AIRBENCH94 == 236_294_720  # 0.236 GFLOP, as ../shared/docs/recipes.md section 5 says
    assert AIRBENCH95 == 603_121_728
    assert AIRBENCH96 == 903_934_528


@pytest.mark.parametrize("preset, changes, widths, convs", [
    ("airbench94", {}, (64, 256, 256), 2),
    ("airbench95", {}, (128, 384, 384), 2),
    ("airbench96", {}, (128, 384, 512), 3)])
def test_the_project_model_counts_the_same_forward_flops(preset, changes, widths, convs):
    """The project's own network, traced: its 6-view evaluation of 10 images is 60 forward passes.
    A preset of a script with a published figure also agrees with it per run, its steps counted by
    the recipe itself (48 batches of 1024 per epoch)."""
    recipe = presets.get_preset(preset).replace(**changes)
    config = train.RunConfig(recipe, "fp32", 1.0)
    images = np.zeros((8, 32, 32, 3), np.uint8)
    labels = np.zeros(8, np.int32)
    dataset = data_lib.in_memory(images, labels, np.zeros((10, 32, 32, 3), np.uint8), np.zeros(10, np.int32),
                                 np.full(3, 0.5), np.full(3, 0.25))
    data = train.put_on_device(dataset, recipe, jnp.float32)
    programs = train.build_programs(config, data)
    state = jax.eval_shape(programs.init, jax.random.key(0), data.train_padded, programs.hyper)
    counted = flops.model_flops(programs.evaluate, train.eval_variables(state), data.test_images, data.test_labels)
    assert counted == 60 * airbench_forward_flops(widths, convs)
    script = preset.replace("-", "_")
    if not changes and script in PUBLISHED:
        forward = counted // 60
        run = flops.run_flops(recipe, 1.0, 3 * forward * recipe.batch_size, forward)
        assert run["published_pflops"] == PUBLISHED[script][0]
        assert abs(run["ratio_to_published"] - 1) < 0.03, (script, run)


# The presets of the scripts that publish a run's PFLOPs: each one's script and forward FLOPs per image.
PRESETS_PUBLISHED = {"airbench94": ("airbench94", AIRBENCH94), "airbench94-muon": ("airbench94_muon", AIRBENCH94),
                     "airbench95": ("airbench95", AIRBENCH95), "airbench96": ("airbench96", AIRBENCH96)}


@pytest.mark.parametrize("preset", sorted(PRESETS_PUBLISHED))
def test_bench_counts_a_run_as_the_hand_count_does_beside_its_scripts_figure(preset):
    """flops.run_flops, which bench prints, from a train step of 3 forward passes per image: the hand
    count's run, and the published figure from the preset itself, within 3% of it (x1.027 at most)."""
    script, forward = PRESETS_PUBLISHED[preset]
    recipe = presets.get_preset(preset)
    run = flops.run_flops(recipe, 1.0, 3 * forward * recipe.batch_size, forward)
    published, ours = PUBLISHED[script]
    assert run["published_pflops"] == published
    assert run["pflops"] == pytest.approx(ours, rel=1e-12)
    assert run["ratio_to_published"] == pytest.approx(ours / published, rel=1e-12)
    assert abs(run["ratio_to_published"] - 1) < 0.03
    narrow = flops.run_flops(recipe, 0.5, 3 * forward * recipe.batch_size, forward)
    assert narrow["published_pflops"] == published and narrow["ratio_to_published"] is None  # not the script's net


@pytest.mark.parametrize("preset, passes", [
    ("myrtle-resnet9", 10_000),  # no TTA: one plain pass
    ("myrtle-final", 20_000),  # flip TTA: 2 views
    ("airbench94", 60_000),  # 6 views
    ("record94", 10_000 + 6 * 2_000)])  # selective: a plain pass, then 6 views of the 20% least confident
def test_a_runs_evaluation_counts_each_view_of_each_test_image(preset, passes):
    recipe = presets.get_preset(preset)
    assert flops.evaluation_forward_passes(recipe.evaluation) == passes
    run = flops.run_flops(recipe, 1.0, step_flops=1e9, forward_flops_per_image=1e6)
    steps = ceil(recipe.epochs * (TRAIN // recipe.batch_size) - 1e-9)
    assert run["run_steps"] == steps and run["train_images"] == steps * recipe.batch_size
    assert run["pflops"] == pytest.approx((steps * 1e9 + passes * 1e6) / 1e15)
    assert run["published_pflops"] == recipe.timing.published_pflops


def test_bench_counts_airbench96_faster_as_its_big_nets_steps_without_the_proxy():
    """airbench96-faster's train step trains the 512 examples the proxy kept of each 1,024 drawn; bench counts
    that step, not the proxy's run (3.6% of the hand count), so the run comes to x0.985 of the published 3.1."""
    recipe = presets.get_preset("airbench96-faster")
    assert recipe.data.trained_batch == 512 and recipe.batch_size == 1024
    run = flops.run_flops(recipe, 1.0, 3 * AIRBENCH96 * recipe.data.trained_batch, AIRBENCH96)
    assert run["run_steps"] == 2160 and run["train_images"] == 2160 * 512 and run["published_pflops"] == 3.1
    assert run["pflops"] == pytest.approx(run_pflops(AIRBENCH96, 2160, 512), rel=1e-12)
    assert run["ratio_to_published"] == pytest.approx(0.985, abs=1e-3)
