import json


from jax_resnet_speed import results

BENCH = {
    "framework": "jax", "environment": {"device_kind": "NVIDIA H100 80GB HBM3", "backend": "gpu"},
    "steps": 20, "repeats": 5, "peak_tflops": 989.4,
    "compilation": {"cache": None, "cache_dir": "/c", "xla_preset": "fast", "xla_flags": ""},
    "result": {"config": {"recipe": {"name": "myrtle-final", "data": {"batch_size": 512}}, "precision": "bf16",
                          "width_mult": 1.0, "loop": "step"},
               "compile": {"step": [{"seconds": 21.25, "cache": "cold"}, {"seconds": 1.5, "cache": "warm"}]}},
    "rows": {"step": {"median_step_seconds": 0.0025, "iqr_step_seconds": 0.0001, "images_per_second": 204800.0,
                      "model_tflops": 405.1, "mfu_peak": 0.4094, "mfu_matmul": 0.5, "bandwidth_gb_per_s": 1234.4}},
}
RUN = {"seed": 0, "status": "completed", "final_accuracy": 0.9412, "seconds_to_target": 3.1,
       "epochs": [{"train_seconds": 3.5}]}
TRAIN = {
    "config": {"recipe": {"name": "myrtle-final", "timing": {"target": 0.94}}, "precision": "bf16", "loop": "step"},
    "environment": {"device_kind": "NVIDIA H100 80GB HBM3"}, "compile_seconds": 25.0,
    "compilation": {"cache": "warm"}, "runs": [RUN, {**RUN, "seed": 1, "final_accuracy": 0.9388,
                                                    "seconds_to_target": None}],
    "summary": {"runs": 2, "completed_runs": 2, "mean_accuracy": 0.94, "std_accuracy": 0.0017,
                "ci95_accuracy": [0.9248, 0.9552], "runs_reaching_target": 1, "finished_runs": 2,
                "median_seconds_to_target": 3.1, "mean_train_seconds": 3.5},
}


def test_a_bench_and_a_training_result_become_their_tables(tmp_path, capsys):
    (tmp_path / "bench.json").write_text(json.dumps(BENCH))
    (tmp_path / "final.json").write_text(json.dumps(TRAIN))
    (tmp_path / "notes.json").write_text(json.dumps({"something": "else"}))  # skipped
    assert results.main([str(tmp_path), "--out", str(tmp_path / "tables.md")]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "tables.md").read_text() == text
    lines = text.splitlines()
    assert lines[0] == "### Train step (bench)"
    assert lines[4] == ("| bench.json | NVIDIA H100 80GB HBM3 | jax | myrtle-final | bf16 | x1 | 512 | step | fast | "
                        "2.50 (0.10) | 204800 | 405.1 | 40.9% | 50.0% | 1234 | 21.2 (cold), 1.5 (warm) |")
    assert "### Training runs" in lines
    assert ("| final.json | NVIDIA H100 80GB HBM3 | myrtle-final | bf16 | step | 2 | 0.9400 +- 0.0017 "
            "[0.9248, 0.9552] | 1/2 at 94.00% | 3.10 | 3.50 | 25.0 (warm) |") in lines


def test_a_compare_summary_becomes_its_table(tmp_path, capsys):
    row = {"framework": "jax", "runs": 3, "mean_accuracy": 0.94, "std_accuracy": 0.001, "ci95_accuracy": None,
           "runs_reaching_target": 2, "wilson95_reaching_target": None, "median_seconds_to_target": 3.0,
           "median_epoch_seconds": 0.31, "median_compile_seconds": 20.0, "ratio": 1.0}
    compare_out = tmp_path / "compare"
    compare_out.mkdir()
    (compare_out / "compare.json").write_text(json.dumps({
        "config": {"preset": "myrtle-final", "runs": 3}, "ratio_basis": "median seconds to target, relative to jax",
        "table": [row], "frameworks": {}}))
    assert results.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("### JAX against PyTorch (compare/compare.json, preset myrtle-final, 3 runs each)")
    assert "| jax | 0.9400 +- 0.0010 | 2/3 | 3.00 | 0.310 | 20.0 | 1.00 |" in lines


def test_nothing_to_render_is_one_line_and_exit_1(tmp_path, capsys):
    assert results.main([str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error: no bench, train or compare JSON found")
    (tmp_path / "broken.json").write_text("{")
    assert results.main([str(tmp_path)]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_the_training_table_gives_the_seconds_to_each_extra_target(tmp_path, capsys):
    def record(seed, accuracies, status="completed"):
        return {"seed": seed, "status": status, "final_accuracy": accuracies[-1], "seconds_to_target": None,
                "epochs": [{"accuracy": a, "train_seconds": 2.0 * (i + 1)} for i, a in enumerate(accuracies)]}

    runs = [record(0, [0.9, 0.932, 0.941]), record(1, [0.91, 0.936, 0.938]), record(2, [0.9], "interrupted")]
    payload = {**TRAIN, "runs": runs, "summary": {**TRAIN["summary"], "runs": 3}}
    (tmp_path / "final.json").write_text(json.dumps(payload))
    assert results.main([str(tmp_path), "--targets", "0.93,0.935,0.94"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].endswith("| s to 93.00% (reached) | s to 93.50% (reached) | s to 94.00% (reached) |")
    # Myrtle's rule (the recipe's default): the first epoch at or above each target.
    assert lines[4].startswith("| final.json | NVIDIA H100 80GB HBM3 | myrtle-final | bf16 | step | 2 of 3 | ")
    assert lines[4].endswith("| 4.00 (2/2) | 5.00 (2/2) | 6.00 (1/2) |")
    airbench = {**payload, "config": {**TRAIN["config"], "recipe": {"name": "airbench94",
                                                                     "timing": {"target": 0.94, "rule": "airbench"}}}}
    (tmp_path / "final.json").write_text(json.dumps(airbench))
    assert results.main([str(tmp_path), "--targets", "0.93,0.935,0.94"]) == 0
    assert capsys.readouterr().out.splitlines()[4].endswith("| 6.00 (2/2) | 6.00 (2/2) | 6.00 (1/2) |")
