"""Ctrl-C in the runners: stop at a safe point, keep what finished, exit 130 with one line, never crash.

Python's default turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be: in an
import, in XLA's compilation (the interpreter then tears down under XLA's running threads, which can
segfault), or in a garbage-collection callback (where it is swallowed and the run goes on). Instead,
inside `handling()`:

- until results can be saved (`saving()` not entered: loading, compiling, warming up), Ctrl-C exits at
  once: nothing has finished, so nothing is written and an earlier result file is left alone;
- while they can, Ctrl-C sets a flag that the runner reads at its safe points (`check`: between steps,
  between the stages of a compilation, between a series' presets, while waiting for a child process),
  which raises KeyboardInterrupt there; the runner saves what finished, then calls `leave`;
- a second Ctrl-C exits at once without saving.

Every command line (train, series, compare, bench, the PyTorch reference, the experiments) runs its
main() through `main`.

Leaving goes through os._exit after flushing the output: steps already dispatched to the device are not
waited for, and no interpreter teardown runs under XLA's threads. Plain Python (no JAX).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import NoReturn

from jax_resnet_speed import progress

EXIT_INTERRUPTED = 130
_NOTHING_SAVED = "interrupted before anything finished: nothing was written"

_state = {"requested": False, "saving": 0}  # saving: how many saving() blocks are open


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Route SIGINT through this module for the duration (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    _state.update(requested=False, saving=0)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _state.update(requested=False, saving=0)


@contextlib.contextmanager
def saving() -> Iterator[None]:
    """While inside, Ctrl-C asks the loop to stop at its next `check` so that the caller can save.

    A count, not a flag: a runner may open one (a series, once a run is on disk) that outlives the ones
    it calls open and close (each preset's runs)."""
    _state["saving"] += 1
    try:
        yield
    finally:
        _state["saving"] -= 1


def requested() -> bool:
    """Whether Ctrl-C asked the run to stop."""
    return _state["requested"]


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C asked the run to stop: call it where stopping is safe."""
    if _state["requested"]:
        raise KeyboardInterrupt


def leave(message: str) -> int:
    """After the runner saved what finished: print `message` and exit 130 at once if a real Ctrl-C
    started this; otherwise (a KeyboardInterrupt raised in-process, e.g. by a test) return 130."""
    if _state["requested"]:
        _exit(message)
    print(message, file=sys.stderr)
    return EXIT_INTERRUPTED


def main(entry: Callable[[], int]) -> NoReturn:
    """Run a command line's `entry` with Ctrl-C handled as above, and exit with its code."""
    with handling():
        code = entry()
    sys.exit(code)


def exit_on_sigint_while_starting() -> None:
    """Until `handling()` takes over: Ctrl-C exits at once with one line (imports are not a place to stop
    in with a traceback)."""
    signal.signal(signal.SIGINT, lambda signum, frame: _exit(_NOTHING_SAVED))


def _on_sigint(signum: int, frame: object) -> None:
    if _state["requested"]:
        _exit("interrupted again: stopping without saving")
    if not _state["saving"]:
        _exit(_NOTHING_SAVED)
    _state["requested"] = True


def _exit(message: str) -> NoReturn:
    progress.abandon()
    print(message, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(EXIT_INTERRUPTED)
