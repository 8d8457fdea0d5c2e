import json
import math

import pytest

from jax_resnet_speed import report
from jax_resnet_speed.report import console, files
from jax_resnet_speed.report.__main__ import main


def epochs(accuracies, seconds_per_epoch=2.0):
    return [{"epoch": i + 1, "accuracy": a, "train_seconds": seconds_per_epoch * (i + 1)}
            for i, a in enumerate(accuracies)]


def test_seconds_to_target_is_the_first_epoch_at_or_above_target():
    assert report.seconds_to_target(epochs([0.9, 0.94, 0.93, 0.95]), 0.94) == 4.0
    assert report.seconds_to_target(epochs([0.9, 0.939]), 0.94) is None
    assert report.seconds_to_target(epochs([0.95]), 0.94) == 2.0


def run(accuracy, reached_at, status="completed", seconds=10.0):
    return {"seed": 0, "status": status, "final_accuracy": accuracy, "seconds_to_target": reached_at,
            "epochs": [{"train_seconds": seconds}]}


def test_summary_counts_runs_reaching_target_and_takes_the_median():
    runs = [run(0.941, 8.0), run(0.939, None), run(0.945, 6.0, seconds=12.0), run(0.95, 7.0),
            run(None, None, status="diverged")]
    summary = report.summarize(runs)
    assert summary["runs"] == 5 and summary["completed_runs"] == 4
    assert summary["runs_reaching_target"] == 3
    assert summary["median_seconds_to_target"] == 7.0
    assert summary["mean_accuracy"] == pytest.approx((0.941 + 0.939 + 0.945 + 0.95) / 4)
    assert summary["std_accuracy"] == pytest.approx(math.sqrt(7.075e-5 / 3))  # by hand: squared deviations sum to 7.075e-5
    assert summary["min_accuracy"] == 0.939 and summary["max_accuracy"] == 0.95
    assert summary["mean_train_seconds"] == pytest.approx(10.5)
    line = console.summary_line(summary, 0.94)
    assert "3/5 reached 94.00% (95% [0.23, 0.88])" in line  # the diverged run did not reach it either
    assert "(IQR [6.50, 7.50])" in line and "95% CI of the mean [0.9360, 0.9515]" in line


def test_the_interval_of_a_mean_accuracy_stays_inside_0_and_1():
    """Two runs far apart: the t interval (t = 12.706 at 1 degree of freedom) reaches below 0 and above 1."""
    runs = [run(0.05, None), run(0.6, None)]
    summary = report.summarize(runs)
    half = 12.7062047 * 0.55 / 2  # t(0.975, 1) x sem; sem = |0.6 - 0.05| / 2
    assert 0.325 - half < 0 and 0.325 + half > 1
    assert summary["ci95_accuracy"] == [0.0, 1.0]
    assert "95% CI of the mean [0.0000, 1.0000]" in console.summary_line(summary, 0.94)


def test_summary_statistics_by_hand():
    runs = [run(0.941, 8.0), run(0.939, None), run(0.945, 6.0, seconds=12.0), run(0.95, 7.0),
            run(None, None, status="diverged"), run(None, None, status="interrupted")]
    summary = report.summarize(runs)
    sd = math.sqrt(7.075e-5 / 3)
    assert summary["sem_accuracy"] == pytest.approx(sd / 2)
    half = 3.182446305 * sd / 2  # t(0.975, 3 degrees of freedom), from a table
    assert summary["ci95_accuracy"] == pytest.approx([0.94375 - half, 0.94375 + half])
    assert summary["finished_runs"] == 5 and summary["fraction_reaching_target"] == pytest.approx(0.6)
    # Wilson 95% for 3 of 5: centre (p + z^2/2n) / (1 + z^2/n), z = 1.959964; the textbook (0.231, 0.882).
    assert summary["wilson95_reaching_target"] == pytest.approx([0.2307, 0.8824], abs=1e-4)
    assert summary["iqr_seconds_to_target"] == pytest.approx([6.5, 7.5])


def test_wilson_interval_at_the_edges():
    low, high = report.wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.2775, abs=1e-4)  # 1.96^2 / (10 + 1.96^2)
    low, high = report.wilson_interval(10, 10)
    assert high == pytest.approx(1.0, abs=1e-12) and low == pytest.approx(0.7225, abs=1e-4)
    assert report.wilson_interval(0, 0) is None
    assert report.mean_interval([0.9]) is None


def test_summary_of_no_completed_run():
    summary = report.summarize([run(None, None, status="interrupted")])
    assert summary["mean_accuracy"] is None and summary["median_seconds_to_target"] is None
    assert "no run completed" in console.summary_line(summary, 0.94)


def test_table_row_lines_up_with_the_header():
    metrics = {"epoch": 3, "lr": 0.5, "train_loss": 1.23456, "train_accuracy": 0.5, "test_accuracy": 0.6,
               "tta_accuracy": 0.61, "epoch_seconds": 1.5, "train_seconds": 4.5}
    header, row = console.table_header(), console.table_row(metrics)
    assert len(header) == len(row)
    assert row.split() == ["3", "0.5000", "1.2346", "0.5000", "0.6000", "0.6100", "1.50", "4.50"]


def test_write_json_is_atomic_and_turns_non_finite_numbers_into_null(tmp_path):
    path = tmp_path / "sub" / "out.json"
    files.write_json(path, {"loss": math.nan, "runs": [{"x": math.inf, "y": 1.5}]})
    assert json.loads(path.read_text()) == {"loss": None, "runs": [{"x": None, "y": 1.5}]}
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]


def result_file(path, seeds, epochs=2, accuracies=None):
    config = {"recipe": {"optimiser": {"epochs": epochs}, "timing": {"target": 0.94}}, "precision": "fp32",
              "seed": seeds[0], "runs": len(seeds)}
    runs = [{**run(a, 5.0 if a >= 0.94 else None), "seed": s} for s, a in zip(seeds, accuracies)]
    path.write_text(json.dumps({"config": config, "runs": runs, "summary": report.summarize(runs)}))
    return str(path)


def test_report_merges_results_of_one_config(tmp_path, capsys):
    first = result_file(tmp_path / "a.json", [0, 1], accuracies=[0.941, 0.939])
    second = result_file(tmp_path / "b.json", [2, 3, 4], accuracies=[0.945, 0.95, 0.93])
    out, png = tmp_path / "merged.json", tmp_path / "hist.png"
    assert main([first, second, "--json", str(out), "--plot", str(png)]) == 0
    merged = json.loads(out.read_text())
    assert [r["seed"] for r in merged["runs"]] == [0, 1, 2, 3, 4] and merged["config"]["runs"] == 5
    assert merged["summary"]["mean_accuracy"] == pytest.approx(0.941)
    assert merged["summary"]["runs_reaching_target"] == 3 and merged["sources"] == [first, second]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "5 runs: accuracy 0.9410" in capsys.readouterr().out


def test_report_refuses_other_configs_and_repeated_seeds(tmp_path, capsys):
    first = result_file(tmp_path / "a.json", [0, 1], accuracies=[0.941, 0.939])
    longer = result_file(tmp_path / "b.json", [2], epochs=3, accuracies=[0.95])
    assert main([first, longer]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "differs in recipe.optimiser.epochs" in error
    again = result_file(tmp_path / "c.json", [1], accuracies=[0.95])
    assert main([first, again]) == 1
    assert "seed 1 is in both" in capsys.readouterr().err
    assert main([first, str(tmp_path / "missing.json")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_airbench_rule_times_whole_runs_and_judges_the_mean():
    runs_epochs = [epochs([0.5, 0.945], seconds_per_epoch=1.5), epochs([0.6, 0.937], seconds_per_epoch=1.5)]
    assert report.seconds_to_target(runs_epochs[0], 0.94, "airbench") == 3.0  # the whole run's clock
    assert report.seconds_to_target(epochs([0.95, 0.939]), 0.94, "airbench") is None  # judged at the end only
    records = []
    for seed, run_epochs in enumerate(runs_epochs):
        record = {"seed": seed, "epochs": run_epochs}
        report.complete_run(record, 0.94, "airbench")
        records.append(record)
    assert [r["timing_rule"] for r in records] == ["airbench", "airbench"]
    summary = report.summarize(records, 0.94)
    assert summary["timing_rule"] == "airbench" and summary["mean_accuracy"] == pytest.approx(0.941)
    assert summary["mean_accuracy_meets_target"] is True and summary["runs_reaching_target"] == 1
    line = console.summary_line(summary, 0.94)
    assert line.startswith("airbench rule: mean accuracy 0.9410") and "over n=2 runs" in line
    assert "meets 94.00%" in line and "3.00 +- 0.00 s per run" in line
    missed = report.summarize(records[1:], 0.94)
    assert missed["mean_accuracy_meets_target"] is False
    assert "misses 94.00% by 0.0030" in console.summary_line(missed, 0.94)
    # Myrtle's rule stays the default, for records written before the rule was recorded too.
    assert report.summarize([run(0.95, 7.0)])["timing_rule"] == "myrtle"


def test_seconds_to_other_targets_come_from_the_epoch_records_under_the_recipes_rule(tmp_path, capsys):
    runs = [{"seed": 0, "epochs": epochs([0.92, 0.931, 0.936, 0.941])},
            {"seed": 1, "epochs": epochs([0.925, 0.934, 0.938, 0.939], seconds_per_epoch=3.0)}]
    for record in runs:
        report.complete_run(record, 0.94, "airbench")
    runs += [{"seed": 2, "status": "diverged", "epochs": epochs([0.5])},
            {"seed": 3, "status": "interrupted", "epochs": epochs([0.95])}]  # neither counted nor timed
    targets = [0.93, 0.935, 0.94]
    # Myrtle's rule: the first epoch at or above each target; the median over the runs reaching it, of 3 finished.
    assert report.seconds_to_targets(runs, targets) == {
        0.93: {"reached": 2, "finished": 3, "median_seconds": 5.0},
        0.935: {"reached": 2, "finished": 3, "median_seconds": 7.5},
        0.94: {"reached": 1, "finished": 3, "median_seconds": 8.0}}
    # airbench's: the whole run's clock when its final accuracy reaches the target.
    airbench = report.seconds_to_targets(runs, targets, "airbench")
    assert [airbench[t]["median_seconds"] for t in targets] == [10.0, 10.0, 8.0]
    assert [airbench[t]["reached"] for t in targets] == [2, 2, 1]
    assert report.seconds_to_targets(runs, [0.99])[0.99] == {"reached": 0, "finished": 3, "median_seconds": None}

    path = tmp_path / "a.json"
    config = {"recipe": {"timing": {"target": 0.94, "rule": "airbench"}}, "seed": 0, "runs": 2}
    path.write_text(json.dumps({"config": config, "runs": runs[:2]}))
    assert main([str(path), "--targets", "0.93,0.935,0.94"]) == 0
    assert ("seconds to 93.00% 10.00 (2/2), 93.50% 10.00 (2/2), 94.00% 8.00 (1/2): median s (runs reaching "
            "it/finished), airbench rule") in capsys.readouterr().out.splitlines()
    with pytest.raises(SystemExit) as exit_info:
        main([str(path), "--targets", "0.93,93.5"])
    assert exit_info.value.code == 2 and "accuracy fractions" in capsys.readouterr().err


def test_time_left_after_the_first_epoch_only_when_over_a_minute():
    first = {"epoch": 1, "epoch_seconds": 25.0, "eval_seconds": 5.0}
    assert console.time_left_line(first, 10) == "about 4 min 30 s left in this run, at epoch 1's pace"  # 9 x 30 s
    assert console.time_left_line(first, 2.5) is None  # 1.5 x 30 s = 45 s: not worth a line
    assert console.time_left_line({**first, "epoch": 2}, 10) is None


def test_report_refuses_files_that_are_not_results_and_output_paths_that_cannot_be_written(tmp_path, capsys):
    good = result_file(tmp_path / "a.json", [0], accuracies=[0.94])
    for content in ("{}", "[1, 2]", '{"config": 1, "runs": []}'):
        (tmp_path / "odd.json").write_text(content)
        assert main([good, str(tmp_path / "odd.json")]) == 1, content
        error = capsys.readouterr().err.strip()
        assert error == f"error: {tmp_path / 'odd.json'} is not a result JSON (no config and runs); give files " \
                        "written by --json of the trainer", content
    with pytest.raises(SystemExit) as stopped:
        main([good, "--json", str(tmp_path)])  # a folder: refused before reading anything
    assert stopped.value.code == 2 and f"--json {tmp_path} names a folder" in capsys.readouterr().err
