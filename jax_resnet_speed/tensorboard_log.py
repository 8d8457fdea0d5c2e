"""Per-epoch metrics as TensorBoard event files (--tensorboard DIR), written by tensorboard itself.

tensorboard.summary.Writer needs only numpy, and its flush waits until the events are on disk; the same
package reads them back and shows them (README.md says why not tensorboardX or clu). Each run gets
its own folder, DIR/run-<i>-seed-<seed>, which TensorBoard lists as a run: the runs of one invocation
are separate curves of the same tags. Scalars are written from the per-epoch callback, after the
epoch's clock has stopped, and flushed there, so the writer's thread is idle while the next epoch is
timed.
"""

from __future__ import annotations

import os

# metrics key (report.epoch_metrics) -> TensorBoard tag; the step is the epoch.
TAGS = {
    "train_loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "test_loss": "test/loss",
    "test_accuracy": "test/accuracy",
    "tta_accuracy": "test/tta_accuracy",
    "lr": "lr",
    "epoch_seconds": "seconds/epoch",
    "eval_seconds": "seconds/eval",
    "train_seconds": "seconds/training_total",
}


def run_folder(run: int, seed: int) -> str:
    """The folder of the run numbered `run` (from 1) under the --tensorboard folder."""
    return f"run-{run}-seed-{seed}"


class EpochLog:
    """One writer per run, created at the run's first epoch."""

    def __init__(self, folder: str | os.PathLike) -> None:
        from tensorboard.summary import Writer  # about a second to import: only when asked

        self.folder = os.fspath(folder)
        self._writer_class = Writer
        self._writers: dict[tuple[int, int], Writer] = {}

    def write(self, run: int, seed: int, metrics: dict) -> None:
        """The scalars of one epoch of run number `run`, flushed to disk before returning."""
        if (run, seed) not in self._writers:
            self._writers[run, seed] = self._writer_class(os.path.join(self.folder, run_folder(run, seed)))
        writer = self._writers[run, seed]
        for key, tag in TAGS.items():
            writer.add_scalar(tag, metrics[key], step=metrics["epoch"])
        writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
