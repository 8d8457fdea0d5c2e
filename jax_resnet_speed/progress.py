"""Progress on the waits (first decode, download, compilation, a long epoch), on a terminal only.

Drawn with rich (already installed as a dependency of flax) on stdout while the wait lasts, then erased,
so what stays printed is the same with and without a terminal. When stdout is not a terminal (a pipe,
a file, a test) nothing is drawn at all. Imports nothing heavy: jax_resnet_speed.data uses it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

_active = False  # rich draws one live display at a time; a wait inside another is not drawn
EPOCH_SHOWN_FROM_SECONDS = 2.0  # an epoch is shown when the one before took this long (or it is the first)


class Task:
    """A wait being shown; the silent one (stdout not a terminal) ignores every call."""

    def advance(self, amount: float = 1) -> None:
        """`amount` more units done."""

    def update(self, total: float | None = None, description: str | None = None) -> None:
        """A new total (when it becomes known) or a new description (what is happening now)."""


class _Shown(Task):
    def __init__(self, bar, task_id) -> None:
        self._bar, self._id = bar, task_id

    def advance(self, amount: float = 1) -> None:
        self._bar.advance(self._id, amount)

    def update(self, total: float | None = None, description: str | None = None) -> None:
        fields = {key: value for key, value in (("total", total), ("description", description)) if value is not None}
        self._bar.update(self._id, **fields)


def enabled() -> bool:
    """Progress is drawn only when stdout is a terminal."""
    stdout = sys.stdout
    return stdout is not None and hasattr(stdout, "isatty") and stdout.isatty()


@contextlib.contextmanager
def task(description: str, total: float | None = None, unit: str | None = None) -> Iterator[Task]:
    """Show `description` with a spinner and the elapsed time while the block runs.

    unit: "bytes" adds a size and speed, any other word a count `done/total word`; None (a wait that
    cannot be counted, such as a compilation) shows the spinner and the time only.
    """
    global _active
    if _active or not enabled():
        yield Task()
        return
    from rich import progress as rich_progress
    from rich.console import Console

    columns = [rich_progress.SpinnerColumn(), rich_progress.TextColumn("{task.description}")]
    if unit == "bytes":
        columns += [rich_progress.BarColumn(), rich_progress.DownloadColumn(), rich_progress.TransferSpeedColumn()]
    elif unit is not None:
        columns += [rich_progress.BarColumn(), rich_progress.MofNCompleteColumn(), rich_progress.TextColumn(unit)]
    columns.append(rich_progress.TimeElapsedColumn())
    _active = True
    try:
        with rich_progress.Progress(*columns, console=Console(file=sys.stdout), transient=True) as bar:
            yield _Shown(bar, bar.add_task(description, total=total))
    finally:
        _active = False


def abandon() -> None:
    """A display cut short by an exit that skips its cleanup (Ctrl-C exiting at once, interrupt.py): clear
    its line and show the cursor again, which rich hides while it draws."""
    if _active:
        sys.stdout.write("\r\x1b[2K\x1b[?25h")


def epoch(number: int, epochs: int, last_seconds: float | None) -> contextlib.AbstractContextManager[Task]:
    """A line for training epoch `number` of `epochs` (loop.run), with the time spent in it so far beside
    the previous epoch's `last_seconds` (None: the first epoch, whose length is unknown).

    Time, not steps, because counting dispatched steps would say nothing: the device runs behind the
    dispatch (on a 2-core CPU, 30 calls of a 0.11 s program returned in 0.5 ms, done 3.3 s later), and
    asking it where it is would be the host sync that the timed loop avoids. rich draws the line from its
    own thread and the wall clock, so the loop neither waits nor counts for it.
    """
    if last_seconds is not None and last_seconds < EPOCH_SHOWN_FROM_SECONDS:
        return contextlib.nullcontext(Task())
    pace = f" (epoch {number - 1} took {last_seconds:.0f} s)" if last_seconds is not None else ""
    return task(f"training epoch {number}/{epochs}{pace}")
