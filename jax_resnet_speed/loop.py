"""The timed epoch loop every runner shares: a single run, a group of runs trained together, the
PyTorch reference and the experiments.

A runner wraps its framework's programs in an Engine; `run` does the rest the same way for all:
the clock, evaluation after each epoch (timed apart), the timing rule of the recipe, the epoch
rows of the run records, divergence and Ctrl-C. An engine trains one run or a group of
`members` at once (group.py); the records hold one run each.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from jax_resnet_speed import interrupt, progress, report
from jax_resnet_speed.presets import Recipe
from jax_resnet_speed.settings import epoch_steps


class Engine(Protocol):
    """One framework's state and programs for a run, or for a group of runs trained together."""

    steps_per_epoch: int

    def init(self) -> None:
        """Initialise the state and wait for the device (on airbench's clock: it computes the whitening; with
        data filtering it also runs the proxy)."""

    def train_epoch(self, epoch: int, steps: int) -> None:
        """`steps` training steps of epoch `epoch` (1-based); may return before the device is done."""

    def totals(self) -> np.ndarray:
        """(members, 3): running [loss sum, correct, examples] over the run so far; waits for the device."""

    def evaluate(self) -> np.ndarray:
        """(members, 4): [correct, correct with flip TTA, loss sum, examples] over the test set."""

    def learning_rates(self, done: int) -> np.ndarray:
        """(members,): each member's learning rate after `done` steps."""


def run(engine: Engine, recipe: Recipe, seeds: Sequence[int], records: Sequence[dict],
        on_epoch: Callable[[int, dict], None], after_epoch: Callable[[int], None] = lambda epoch: None,
        resumed: bool = False) -> list[report.Diverged]:
    """Train and time the runs of `engine`, filling records[k] (seed, status, epochs, ...) for member k.

    The clock covers the training epochs; evaluation after each epoch is timed apart. Under
    airbench's rule (recipe.timing.rule) it also covers the init, which computes the whitening
    filters, and the final evaluation with TTA. With data filtering (recipe.data.filtering) the init
    includes the proxy's run, on the clock under either rule. The members of a group share one clock.

    A member whose loss stops being finite is marked diverged and gets no more epochs; the others
    go on, and the loop ends when none is left. Returns the divergences. on_epoch(member, metrics)
    hears each member's epoch row; after_epoch(epoch) is called, off the clock, after each epoch.
    On Ctrl-C the runs still training are marked interrupted before KeyboardInterrupt goes on.

    resumed: the engine holds the state saved after the last epoch in the records (checkpoint.py);
    the loop goes on from the next epoch, its clock from the recorded seconds.
    """
    airbench_rule = recipe.timing.rule == "airbench"
    try:
        if resumed:
            train_seconds = records[0]["epochs"][-1]["train_seconds"]
            previous_totals = engine.totals()
        else:
            for record, seed in zip(records, seeds, strict=True):
                record.update(seed=seed, status="running", epochs=[], final_accuracy=None, seconds_to_target=None)
            start = time.perf_counter()
            engine.init()
            # A proxy's run for data filtering (in init) is on every clock.
            train_seconds = time.perf_counter() - start if airbench_rule or recipe.data.filtering else 0.0
            previous_totals = np.zeros((len(records), 3))
        diverged: list[report.Diverged] = []
        lengths = epoch_steps(recipe, engine.steps_per_epoch)
        last_seconds = None
        for epoch, steps in enumerate(lengths, 1):
            if epoch <= len(records[0]["epochs"]):
                continue  # done before the checkpoint this run resumed from
            # On a terminal, a line shows the epoch's time so far; it is opened and closed off the clock.
            with progress.epoch(epoch, len(lengths), last_seconds) as shown:
                start = time.perf_counter()
                engine.train_epoch(epoch, steps)
                totals = engine.totals()  # waits for the device
                epoch_seconds = last_seconds = time.perf_counter() - start
                shown.update(description=f"evaluating after epoch {epoch}/{len(lengths)}")
                eval_start = time.perf_counter()
                sums = engine.evaluate()
                eval_seconds = time.perf_counter() - eval_start
            train_seconds += epoch_seconds
            if airbench_rule and epoch == len(lengths):
                train_seconds += eval_seconds  # the final evaluation, with TTA, is on airbench's clock

            lrs = engine.learning_rates((epoch - 1) * engine.steps_per_epoch + steps)
            for member, record in enumerate(records):
                if record["status"] != "running":
                    continue
                metrics = report.epoch_metrics(epoch, lrs[member], totals[member] - previous_totals[member],
                                               sums[member], recipe.evaluation.tta, epoch_seconds, train_seconds,
                                               eval_seconds)
                try:
                    report.add_epoch(record, metrics, lambda m, member=member: on_epoch(member, m))
                except report.Diverged as error:
                    diverged.append(error)  # status is "diverged"; the rest of a group trains on
            previous_totals = totals
            after_epoch(epoch)
            interrupt.check()  # with --loop epoch, Ctrl-C stops here, after the epoch's row
            if all(record["status"] != "running" for record in records):
                break
    except KeyboardInterrupt:
        report.mark_interrupted(records)
        raise
    for record in records:
        if record["status"] == "running":
            report.complete_run(record, recipe.timing.target, recipe.timing.rule)
    return diverged
