"""Progress on the waits (progress.py): drawn on a terminal, nothing at all when stdout is not one."""

import io
import re
import sys
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from jax_resnet_speed import data, loop, presets, progress
from jax_resnet_speed.data import _images

pytestmark = pytest.mark.filterwarnings("ignore:this is not the full CIFAR-10:jax_resnet_speed.data.DataWarning")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True

    def text(self) -> str:
        """What was written, without the terminal's colour and cursor codes."""
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.getvalue())


def image_archive(path, per_class: int = 2):
    """A .tar.gz image tree of 10 classes with `per_class` train and test images each."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as archive:
        for split in ("train", "test"):
            for label in range(10):
                for index in range(per_class):
                    buffer = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
                    member = tarfile.TarInfo(f"{split}/class{label}/{index:03d}.png")
                    member.size = len(buffer.getvalue())
                    archive.addfile(member, io.BytesIO(buffer.getvalue()))
    return path


def test_a_task_prints_nothing_when_stdout_is_not_a_terminal(capsys):
    assert not progress.enabled()
    with progress.task("compiling", total=3, unit="steps") as shown:
        shown.update(description="compiling the train step")
        shown.advance(3)
    assert capsys.readouterr() == ("", "")


def test_a_terminal_is_shown_the_description_and_the_count(monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert progress.enabled()
    with progress.task("decoding x.tar.gz", total=10, unit="images") as shown:
        shown.advance(4)
    assert "decoding x.tar.gz" in terminal.text() and "4/10 images" in terminal.text()


def test_the_first_decode_shows_progress_on_a_terminal_only(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(_images, "_DECODE_CHUNK", 8)  # 40 images: several chunks, decoded by worker processes
    archive = image_archive(tmp_path / "images.tar.gz")
    data.load_cifar10(archive, tmp_path / "cache-pipe")
    assert capsys.readouterr() == ("", "")  # stdout is not a terminal here: nothing at all

    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    dataset = data.load_cifar10(archive, tmp_path / "cache-terminal")
    assert len(dataset.train_images) == len(dataset.test_images) == 20
    assert "decoding images.tar.gz" in terminal.text() and "40/40 images" in terminal.text()


class SleepingEngine:
    """loop.Engine with epochs of 0.05 s of sleep and made-up sums."""

    steps_per_epoch = 1

    def __init__(self):
        self.epochs = 0

    def init(self) -> None:
        pass

    def train_epoch(self, epoch: int, steps: int) -> None:
        time.sleep(0.05)
        self.epochs += 1

    def totals(self) -> np.ndarray:
        return np.array([[23.0, 5.0, 10.0]]) * self.epochs

    def evaluate(self) -> np.ndarray:
        return np.array([[5.0, 5.0, 23.0, 10.0]])

    def learning_rates(self, done: int) -> np.ndarray:
        return np.array([0.1])


def test_epochs_show_their_time_on_a_terminal_only(monkeypatch, capsys):
    recipe = presets.get_preset("myrtle-resnet9").with_epochs(3)
    rows = []
    loop.run(SleepingEngine(), recipe, [0], [{}], lambda member, metrics: rows.append(metrics["epoch"]))
    assert rows == [1, 2, 3] and capsys.readouterr() == ("", "")  # piped: nothing but what the caller prints

    monkeypatch.setattr(sys, "stdout", terminal := FakeTerminal())
    monkeypatch.setattr(progress, "EPOCH_SHOWN_FROM_SECONDS", 0.04)  # these 0.05 s epochs count as long ones
    loop.run(SleepingEngine(), recipe, [0], [{}], lambda member, metrics: None)
    assert "training epoch 1/3" in terminal.text() and "training epoch 3/3 (epoch 2 took 0 s)" in terminal.text()
    assert "evaluating after epoch 3/3" in terminal.text()

    monkeypatch.setattr(sys, "stdout", terminal := FakeTerminal())
    monkeypatch.setattr(progress, "EPOCH_SHOWN_FROM_SECONDS", 60.0)
    loop.run(SleepingEngine(), recipe, [0], [{}], lambda member, metrics: None)
    assert "training epoch 1/3" in terminal.text()  # its length is not known yet
    assert "epoch 2/3" not in terminal.text()  # the one before was short


def test_an_exit_that_skips_the_cleanup_gives_the_cursor_back(monkeypatch):
    monkeypatch.setattr(sys, "stdout", terminal := FakeTerminal())
    progress.abandon()  # no display: nothing to undo
    monkeypatch.setattr(progress, "_active", True)  # as while rich draws (and hides the cursor)
    progress.abandon()  # as interrupt.py does before os._exit
    assert terminal.getvalue() == "\r\x1b[2K\x1b[?25h"
