import functools
import json
import math
import pathlib

import pytest

from jax_resnet_speed import muon as muon_lib, presets

FLAT_RECIPES = pathlib.Path(__file__).parent / "data" / "flat_recipes"


def changed_fields(before: presets.Recipe, after: presets.Recipe) -> dict:
    """Dotted path -> new value of each field that differs; a trick switched on or off is one change, to its
    whole sub-recipe (or None)."""
    old, new = before.training_fields(), after.training_fields()
    switched = {path for path in old.keys() ^ new.keys() if (old | new)[path] is None}
    inside = tuple(f"{trick}." for trick in switched)
    kept = lambda fields: {p for p in fields if p not in switched and not p.startswith(inside)}  # noqa: E731
    assert kept(old) == kept(new)
    changed = {name: new[name] for name in kept(new) if new[name] != old[name]}
    return changed | {path: functools.reduce(getattr, path.split("."), after) for path in switched}


def test_at_least_twenty_presets_grouped_by_post():
    assert len(presets.PRESETS) >= 20
    assert list(presets.BY_POST) == ["post 1: baseline", "post 2: mini-batches", "post 3: regularisation",
                                    "post 4: architecture", "post 8: bag of tricks", "airbench: past Myrtle"]
    assert sum(len(group) for group in presets.BY_POST.values()) == len(presets.PRESETS)  # each preset once
    post8 = [r.name for r in presets.BY_POST["post 8: bag of tricks"]]
    assert post8[0] == "post8-01-baseline" and post8[9] == "post8-10-tta" and post8[-1] == "myrtle-final"
    # The posts sort in the order of the series, and so do the numbered steps within a post.
    posts = [r.name.split("-")[0] for group in presets.BY_POST.values() for r in group if r.name.startswith("post")]
    assert posts == sorted(posts)
    for group in ("post 4: architecture", "post 8: bag of tricks"):
        steps = [r.name for r in presets.BY_POST[group] if not r.name.startswith("myrtle-")]
        assert steps == sorted(steps)


@pytest.mark.parametrize("name", sorted(presets.PREDECESSORS))
def test_each_step_differs_from_its_predecessor_in_exactly_the_declared_fields(name):
    step = presets.SERIES_STEPS[name]
    before, after = presets.get_preset(presets.PREDECESSORS[name]), presets.get_preset(name)
    assert changed_fields(before, after) == dict(step.changes)
    assert after.change == step.change and after.timing.published_seconds == step.published_seconds
    assert after.timing.published_pflops == step.published_pflops  # the step's own, never its predecessor's


def test_airbench95_is_airbench94_widened_and_timed_to_95_percent():
    assert presets.PREDECESSORS["airbench95"] == "airbench94"
    assert "airbench95" in [r.name for r in presets.BY_POST["airbench: past Myrtle"]]
    recipe = presets.get_preset("airbench95")
    # legacy/airbench95.py: lr 10 per 1024 at momentum 0.85 is 10 / 7.667 in this project's units,
    # its weight decay 0.0153 per 1024 is 0.0153 / 10; ceil(15 x 48) = 720 steps.
    assert recipe.optimiser.lr_knots[1] == pytest.approx((3.45, 10 / (1 + 1 / 0.15)))
    assert recipe.optimiser.lr_knots[1][1] * recipe.optimiser.weight_decay == pytest.approx(0.0153 / (1 + 1 / 0.15))
    assert recipe.run_steps(48) == 720 and recipe.network.widths == (24, 128, 384, 384)
    timing = recipe.timing
    assert (timing.target, timing.published_seconds, timing.published_device, timing.rule) == (
        0.95, 10.4, "A100", "airbench")
    assert "legacy/airbench95.py" in recipe.description and "10.4 s" in recipe.description


def test_airbench96_is_airbench95_deepened_as_its_script_and_docs_recipe_say():
    assert presets.PREDECESSORS["airbench96"] == "airbench95"
    recipe = presets.get_preset("airbench96")
    # docs/recipe.md's airbench96 table: lr 9 and weight decay 0.012 per 1024 (ours 9 / 7.667 and
    # 0.012 / 9), warm-up over int(0.1 x 1776) = 177 steps of 48 per epoch, then linear to 0 at 37 epochs.
    peak = 9 / (1 + 1 / 0.15)
    knots = [value for knot in recipe.optimiser.lr_knots for value in knot]
    assert knots == pytest.approx([0, 0.2 * peak, 177 / 48, peak, 37, 0.0])
    assert recipe.optimiser.weight_decay == pytest.approx(0.012 / 9)
    assert recipe.run_steps(48) == 1776 and recipe.network.widths == (24, 128, 384, 512)
    stages = recipe.network.stages
    assert (stages.convs, stages.residual_over_last) == (3, True)
    assert recipe.network.batch_norm.momentum == 0.1 and recipe.network.batch_norm.eps == 1e-12
    assert (recipe.data.crop_padding, recipe.data.cutout, recipe.data.alternating_flip) == (4, 12, True)
    assert recipe.optimiser.lookahead == presets.Lookahead(every=5, decay=0.95)
    assert recipe.evaluation == presets.Evaluation(tta=True, tta_shift=1)
    timing = recipe.timing
    assert (timing.target, timing.published_seconds, timing.published_device, timing.rule) == (
        0.96, 34.7, "A100", "airbench")


def test_airbench96_faster_is_airbench96_on_the_half_of_each_batch_a_proxy_keeps():
    assert presets.PREDECESSORS["airbench96-faster"] == "airbench96"
    recipe = presets.get_preset("airbench96-faster")
    # docs/recipe.md's airbench96_faster table: 48 steps of 1,024 drawn per epoch, 512 trained; lr 9 and
    # weight decay 0.012 per 1024 in units of the 512 trained (0.5870 and 0.002667); warm-up over
    # int(0.1 x 2160) = 216 steps, then linear to 0 at 45 epochs; the whitening bias trains all of them.
    peak = 9 / (1 + 1 / 0.15) / 2
    assert peak == pytest.approx(0.5870, abs=1e-4)
    assert recipe.optimiser.weight_decay == pytest.approx(0.002667, abs=1e-6)
    knots = [value for knot in recipe.optimiser.lr_knots for value in knot]
    assert knots == pytest.approx([0, 0.2 * peak, 4.5, peak, 45, 0.0])
    assert recipe.run_steps(50_000 // recipe.batch_size) == 2160 and recipe.data.trained_batch == 512
    assert recipe.optimiser.whitening_bias.epochs == 45
    filtering = recipe.data.filtering
    assert (filtering.proxy_widths, filtering.proxy_convs, filtering.backward_every) == ((24, 32, 64, 64), 2, 4)
    proxy = filtering.proxy(recipe)
    assert (proxy.network.widths, proxy.network.stages.convs, proxy.network.stages.residual_over_last) == (
        (24, 32, 64, 64), 2, False)
    assert proxy.optimiser.whitening_bias is proxy.optimiser.lookahead is proxy.data.filtering is None
    assert proxy.optimiser.lr_knots == recipe.optimiser.lr_knots and proxy.network.batch_norm.momentum == 0.1
    timing = recipe.timing
    assert (timing.target, timing.published_seconds, timing.published_device, timing.rule) == (
        0.96, 27.3, "A100", "airbench")


def test_only_airbench96_faster_filters_its_data():
    assert {name for name, r in presets.PRESETS.items() if r.data.filtering} == {"airbench96-faster"}


def test_only_airbench94_muon_and_the_record_draw_their_whitening_bias():
    draws = {name for name, r in presets.PRESETS.items() if r.network.stem.bias_init != "zeros"}
    assert draws == {"airbench94-muon", "record94"}  # both keep nn.Conv2d's default bias draw


def test_record94_is_airbench94_muon_with_the_records_settings():
    assert presets.PREDECESSORS["record94"] == "airbench94-muon"
    recipe = presets.get_preset("record94")
    o, muon = recipe.optimiser, recipe.optimiser.muon
    # docs/recipe.md's table of cifar10_speedrun.py: 32 steps of 1536 per epoch, ceil(7.63 x 32) = 245 steps.
    assert recipe.run_steps(50_000 // 1536) == 245 and recipe.batch_size == 1536
    assert o.lr_knots == ((0, 0.5415 * 1536), (7.63, 0.0)) and o.momentum == 0.825 and o.label_smoothing == 0.09
    # Every SGD group shrinks by 1.0418e-6 x B per step at its initial lr: lr x wd x mult x wd_mult.
    assert o.lr_knots[0][1] * o.weight_decay == pytest.approx(1.0418e-6 * 1536)
    assert o.lr_knots[0][1] * o.bn_bias_lr_mult / 1536 == pytest.approx(0.0573)
    assert o.bn_bias_lr_mult * o.bn_bias_wd_mult == pytest.approx(1.0)
    assert math.ceil(o.whitening_bias.epochs * 32) == 7 and o.whitening_bias.decay == "linear"
    assert (muon.lr, muon.momentum, muon.nesterov, muon.ns_steps) == (0.205, 0.655, True, 3)
    assert muon.coefficients == muon_lib.RECORD_NS_COEFFICIENTS
    assert (muon.stacked, muon.renormalise_every, muon.weight_decay, muon.ns_dtype, muon.buffer_dtype) == (
        True, 8, 1.6002e-3, "fp16", "fp16")
    network = recipe.network
    assert (network.activation, network.stem.activation, network.stem.whitening_images) == ("silu", "gelu", 960)
    assert network.batch_norm.momentum == 0.4434 and network.stem.bias_init == "torch"
    assert (recipe.data.crop_padding, recipe.data.brightness_jitter, recipe.data.contrast_jitter) == (2, 0.1399, 0.1308)
    assert recipe.evaluation == presets.Evaluation(tta=True, tta_shift=1, tta_equal_weights=True,
                                                   tta_selective_fraction=0.2)
    timing = recipe.timing
    assert (timing.target, timing.published_seconds, timing.published_device, timing.rule) == (
        0.94, 2.015, "A100", "airbench")
    assert "hiverge" in recipe.description and "2.015 s" in recipe.description


def test_the_default_muon_coefficients_are_muons():
    assert presets.Muon().coefficients == muon_lib.NS_COEFFICIENTS


def test_the_chains_arrive_at_the_recipes_written_in_full():
    # Post 8 starts from post 4's recipe as submitted and ends at the final recipe.
    assert changed_fields(presets.MYRTLE_RESNET9, presets.get_preset("post8-01-baseline")) == {}
    assert changed_fields(presets.MYRTLE_FINAL, presets.get_preset("post8-10-tta")) == {}
    # GPU preprocessing is how this trainer always runs: the row keeps step 1's recipe.
    assert presets.SERIES_STEPS["post8-02-gpu-preprocessing"].changes == {}


def test_post8_steps_follow_pages_notebook():
    final = presets.get_preset("post8-10-tta")
    assert final.optimiser.update == "page" and final.epochs == 10
    whitening = presets.get_preset("post8-08-whitening")
    assert whitening.network.stem.kind == "whitening" and whitening.data.cutout == 5
    assert whitening.optimiser.lr_knots == ((0, 0.0), (2.8, 1.0), (14, 0.0))  # (epochs / 5, peak)
    ema = presets.get_preset("post8-09-ema")
    assert ema.optimiser.lr_knots[-2:] == ((11, 0.1), (13, 0.1))  # held at 0.1 for the last two epochs
    assert ema.optimiser.ema == presets.Ema(momentum=0.99, run_steps=13 * (50_000 // 512), every=5)


def test_post1_network_is_the_preact_resnet18():
    net = presets.get_preset("post1-baseline").network
    assert net.stages.block == "pre-act" and net.stages.residual_blocks == (2, 2, 2, 2)
    assert net.widths == (64, 64, 128, 256, 256) and net.stages.downsamples == (False, True, True, True)
    assert net.head.pool == "avg+max" and net.head.bias and not net.stem.bn and not net.batch_norm.fp32


def test_replace_by_dotted_name():
    recipe = presets.MYRTLE_FINAL.replace(**{"data.cutout": 3, "network.widths": (8, 8, 8, 8), "name": "x"})
    assert recipe.data.cutout == 3 and recipe.network.widths == (8, 8, 8, 8) and recipe.name == "x"
    assert presets.MYRTLE_FINAL.data.cutout == 0  # frozen: the preset is untouched
    with pytest.raises(TypeError):
        presets.MYRTLE_FINAL.replace(**{"network.widht": (8,)})


def test_with_epochs_stretches_the_knots_and_keeps_the_rest():
    short = presets.MYRTLE_FINAL.with_epochs(5)
    assert short.epochs == 5 and short.optimiser.lr_knots == ((0, 0.0), (1, 1.0), (4, 0.1), (5, 0.1))
    assert set(changed_fields(presets.MYRTLE_FINAL, short)) == {"optimiser.epochs", "optimiser.lr_knots"}


def test_replace_by_nested_path_of_any_depth():
    recipe = presets.MYRTLE_FINAL.replace(**{"optimiser.ema.momentum": 0.95, "network.batch_norm.ghost_splits": 8})
    assert recipe.optimiser.ema == presets.Ema(momentum=0.95, run_steps=970, every=5)
    assert recipe.network.batch_norm.ghost_splits == 8 and recipe.network.batch_norm.scale_frozen
    with pytest.raises(TypeError):
        presets.MYRTLE_FINAL.replace(**{"optimiser.ema.momentun": 0.95})


def test_setting_a_field_of_a_trick_that_is_off_turns_it_on_from_its_defaults():
    assert presets.MYRTLE_RESNET9.optimiser.lookahead is None
    recipe = presets.MYRTLE_RESNET9.replace(**{"optimiser.lookahead.decay": 0.9})
    assert recipe.optimiser.lookahead == presets.Lookahead(every=5, decay=0.9)
    assert presets.AIRBENCH94.replace(**{"optimiser.lookahead": None}).optimiser.lookahead is None


def test_the_flat_names_of_before_the_nesting_still_replace_their_fields():
    recipe = presets.MYRTLE_RESNET9.replace(**{
        "optimiser.ema_momentum": 0.98, "optimiser.ema_run_steps": 100, "network.ghost_bn_splits": 4,
        "network.stem": "whitening", "network.batch_norm": False, "network.stage_convs": 2,
        "optimiser.lookahead_every": 3, "optimiser.muon_lr": 0.1, "optimiser.whitening_bias_decay": "linear"})
    assert recipe.optimiser.ema == presets.Ema(momentum=0.98, run_steps=100, every=5)
    assert recipe.network.batch_norm == presets.BatchNorm(enabled=False, ghost_splits=4)
    assert recipe.network.stem.kind == "whitening" and recipe.network.stages.convs == 2
    assert recipe.optimiser.lookahead == presets.Lookahead(every=3)
    assert recipe.optimiser.muon == presets.Muon(lr=0.1)
    assert recipe.optimiser.whitening_bias == presets.WhiteningBias(decay="linear")
    # A flat switch at its off value turns the trick off.
    off = presets.MYRTLE_FINAL.replace(**{"optimiser.ema_momentum": None})
    assert off.optimiser.ema is None
    assert presets.AIRBENCH94.replace(**{"optimiser.lookahead_every": 0}).optimiser.lookahead is None
    assert presets.AIRBENCH94_MUON.replace(**{"optimiser.muon_lr": 0.0}).optimiser.muon is None
    # Every flat name names a field today.
    every_trick = presets.MYRTLE_FINAL.replace(**{"optimiser.lookahead.every": 5, "optimiser.muon.lr": 0.1,
                                                  "optimiser.whitening_bias.epochs": 3})
    assert set(presets.FLAT_NAMES.values()) <= set(every_trick.training_fields())


def test_every_preset_written_flat_before_the_nesting_upgrades_to_the_same_recipe():
    flat = json.loads((FLAT_RECIPES / "presets.json").read_text())
    # Every preset of that commit; the ones added since (airbench96, ...) were never written flat.
    assert set(flat) <= set(presets.PRESETS) and len(flat) == 26
    for name in flat:
        recipe = presets.PRESETS[name]
        today = json.loads(json.dumps(recipe.to_dict()))
        # Added since, and not a training field: the upgrade fills in its default.
        today["timing"]["published_pflops"] = None
        if today["optimiser"]["muon"]:  # the flat code ran Muon per filter bank, and the upgrade keeps that
            today["optimiser"]["muon"]["stacked"] = False
        assert "ema_momentum" in flat[name]["optimiser"]  # written flat
        assert presets.upgrade_recipe_dict(flat[name]) == today, name
        assert presets.upgrade_recipe_dict(today) == today  # a nested one is left as it is
    upgraded = presets.upgrade_recipe_dict(flat["airbench94"])["optimiser"]
    assert upgraded["ema"] is None and upgraded["muon"] is None and upgraded["lookahead"] == {"every": 5, "decay": 0.95}


def test_a_flat_recipe_older_than_a_trick_has_it_off():
    flat = json.loads((FLAT_RECIPES / "presets.json").read_text())["myrtle-final"]
    for switch in ("muon_lr", "muon_momentum", "lookahead_every", "lookahead_decay"):
        del flat["optimiser"][switch]
    assert presets.upgrade_recipe_dict(flat) == json.loads(json.dumps(presets.MYRTLE_FINAL.to_dict()))
    today = json.loads(json.dumps(presets.MYRTLE_FINAL.to_dict()))
    del today["optimiser"]["muon"]  # a nested recipe written before Muon was added
    assert presets.upgrade_recipe_dict(today)["optimiser"]["muon"] is None
