"""Files written before the recipes were nested by trick (flat names such as optimiser.ema_momentum)
still load as the same recipe: report merges their results, --resume goes on from their checkpoints
and the series compares their recipes. The files are in tests/data/flat_recipes (its README says how
they were made)."""

import copy
import json
import pathlib
import shutil

from jax_resnet_speed import cli, presets, series
from jax_resnet_speed.report.__main__ import main as report_main

FLAT_RECIPES = pathlib.Path(__file__).parent / "data" / "flat_recipes"
# The flags the files were written with (their --data was the tests' tiny_npz, written elsewhere).
FLAT_RUN = ["--batch-size", "128", "--precision", "fp32", "--preset", "myrtle-final", "--train-subset", "256",
            "--test-subset", "100", "--epochs", "2", "--runs", "1"]


def test_report_merges_a_result_written_with_flat_recipes_with_one_written_today(tiny_npz, tmp_path, capsys):
    old = json.loads((FLAT_RECIPES / "myrtle_final_result.json").read_text())
    assert "ghost_bn_splits" in old["config"]["recipe"]["network"]  # written flat
    args = cli.build_parser().parse_args(["--data", tiny_npz, "--cache-dir", str(tmp_path), "--width-mult", "0.125",
                                          "--seed", "1", *FLAT_RUN])
    config = cli.resolve_config(args, "cpu")
    section = json.loads(json.dumps(cli.config_section(args, config, cli.load_data(args))))
    assert section["data_checksum"] == old["config"]["data_checksum"]  # the same images
    section["data"] = old["config"]["data"]  # and the same path
    today = {"config": section, "runs": [{**copy.deepcopy(old["runs"][0]), "seed": 1}]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "today.json").write_text(json.dumps(today))

    merged_path = tmp_path / "merged.json"
    assert report_main([str(tmp_path / "old.json"), str(tmp_path / "today.json"), "--json", str(merged_path)]) == 0
    merged = json.loads(merged_path.read_text())
    assert merged["config"]["recipe"] == section["recipe"]  # in today's shape
    assert merged["config"]["recipe"]["optimiser"]["ema"] == {"momentum": 0.99, "run_steps": 970, "every": 5}
    assert [run["seed"] for run in merged["runs"]] == [0, 1] and merged["config"]["runs"] == 2
    assert "2 runs: accuracy" in capsys.readouterr().out

    # A recipe that does differ is still refused, named in today's dotted path.
    section["recipe"]["network"]["batch_norm"]["ghost_splits"] = 8
    (tmp_path / "today.json").write_text(json.dumps(today))
    assert report_main([str(tmp_path / "old.json"), str(tmp_path / "today.json")]) == 1
    assert "differs in recipe.network.batch_norm.ghost_splits" in capsys.readouterr().err


def test_resume_goes_on_from_a_checkpoint_written_with_flat_recipes(tiny_npz, tmp_path, capsys):
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(FLAT_RECIPES / "myrtle_final_checkpoint", checkpoints)
    flags = ["--data", tiny_npz, "--cache-dir", str(tmp_path), "--width-mult", "0.0625", *FLAT_RUN,
             "--checkpoint-dir", str(checkpoints), "--resume", "--json", str(tmp_path / "resumed.json")]
    assert cli.main(flags) == 0
    out = capsys.readouterr().out
    assert "run with seed 0 goes on after epoch 1" in out and out.count("(from the checkpoint)") == 1
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    (run,) = resumed["runs"]
    assert run["status"] == "completed" and len(run["epochs"]) == 2
    assert resumed["config"]["recipe"]["network"]["batch_norm"]["ghost_splits"] == 16  # written in today's shape

    # The config check still tells a real difference from a renamed field.
    assert cli.main([*flags[:-2], "--target", "0.5"]) == 2
    assert "recipe.timing.target (0.94 there, 0.5 here)" in capsys.readouterr().err


def test_the_series_compares_a_flat_stored_recipe_with_todays_field_by_field():
    flat = json.loads((FLAT_RECIPES / "presets.json").read_text())
    today = presets.PRESETS["airbench94"].to_dict()
    assert series.recipe_differences(flat["airbench94"], today) == []
    changed = presets.PRESETS["airbench94"].replace(**{"network.stages.convs": 3, "optimiser.lookahead": None,
                                                       "optimiser.ema.momentum": 0.9})
    assert series.recipe_differences(flat["airbench94"], changed.to_dict()) == [
        "network.stages.convs", "optimiser.ema", "optimiser.lookahead"]
