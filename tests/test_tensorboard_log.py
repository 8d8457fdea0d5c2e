"""--tensorboard (tensorboard_log.py): the event files hold every per-epoch metric of every run, read back with
tensorboard's own event reader."""

import math
import os

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from jax_resnet_speed import tensorboard_log


def epoch(number: int, seed: int) -> dict:
    """report.epoch_metrics' keys, each value telling its key, epoch and seed apart."""
    metrics = {key: index + number / 10 + seed / 100 for index, key in enumerate(tensorboard_log.TAGS)}
    return {"epoch": number, "accuracy": metrics["tta_accuracy"], **metrics}


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every event file in `folder`."""
    reader = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.TENSORS: 0})
    reader.Reload()
    return {tag: [(event.step, tensor_util.make_ndarray(event.tensor_proto).item()) for event in reader.Tensors(tag)]
            for tag in reader.Tags()["tensors"]}


def test_every_metric_of_every_run_and_epoch_is_in_its_run_folder(tmp_path):
    log = tensorboard_log.EpochLog(tmp_path / "tb")
    runs = [(1, 5), (2, 6)]  # (run number, seed), as --seed 5 --runs 2 numbers them
    for run, seed in runs:
        for number in (1, 2, 3):
            log.write(run, seed, epoch(number, seed))
    # Flushed after each epoch: readable before the writers are closed.
    assert read_scalars(tmp_path / "tb" / "run-1-seed-5")["lr"][-1][0] == 3
    log.close()

    assert sorted(os.listdir(tmp_path / "tb")) == ["run-1-seed-5", "run-2-seed-6"]
    for run, seed in runs:
        scalars = read_scalars(tmp_path / "tb" / tensorboard_log.run_folder(run, seed))
        assert set(scalars) == set(tensorboard_log.TAGS.values())
        for key, tag in tensorboard_log.TAGS.items():
            expected = [(number, epoch(number, seed)[key]) for number in (1, 2, 3)]
            assert [step for step, _ in scalars[tag]] == [1, 2, 3]
            assert [value for _, value in scalars[tag]] == pytest.approx([v for _, v in expected], rel=1e-6)


def test_a_diverged_epoch_is_written_as_nan(tmp_path):
    log = tensorboard_log.EpochLog(tmp_path)
    log.write(1, 0, {**epoch(1, 0), "train_loss": float("nan")})
    log.close()
    [(step, value)] = read_scalars(tmp_path / "run-1-seed-0")["train/loss"]
    assert step == 1 and math.isnan(value)
