import json
import math

import pytest

from jax_resnet_speed import report


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
    assert "3/4 reached 94.00%" in report.summary_line(summary, 0.94)


def test_summary_of_no_completed_run():
    summary = report.summarize([run(None, None, status="interrupted")])
    assert summary["mean_accuracy"] is None and summary["median_seconds_to_target"] is None
    assert "no run completed" in report.summary_line(summary, 0.94)


def test_table_row_lines_up_with_the_header():
    metrics = {"epoch": 3, "lr": 0.5, "train_loss": 1.23456, "train_accuracy": 0.5, "test_accuracy": 0.6,
               "tta_accuracy": 0.61, "epoch_seconds": 1.5, "train_seconds": 4.5}
    header, row = report.table_header(), report.table_row(metrics)
    assert len(header) == len(row)
    assert row.split() == ["3", "0.5000", "1.2346", "0.5000", "0.6000", "0.6100", "1.50", "4.50"]


def test_write_json_is_atomic_and_turns_non_finite_numbers_into_null(tmp_path):
    path = tmp_path / "sub" / "out.json"
    report.write_json(path, {"loss": math.nan, "runs": [{"x": math.inf, "y": 1.5}]})
    assert json.loads(path.read_text()) == {"loss": None, "runs": [{"x": None, "y": 1.5}]}
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]
