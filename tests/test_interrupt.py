"""Ctrl-C handling (interrupt.py) through real SIGINTs to small scripts, and the output-path checks (paths.py)."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jax_resnet_speed import interrupt, paths

REPO = Path(__file__).resolve().parents[1]

# A runner in miniature: `ready` once the handler is in place, then either a phase with nothing to save
# (compiling) or a loop that checks between its steps and saves on KeyboardInterrupt.
SCRIPT = """
import sys, time
from jax_resnet_speed import interrupt
phase, ready = sys.argv[1], sys.argv[2]
with interrupt.handling():
    open(ready, "w").close()
    if phase == "compiling":
        time.sleep(30)
    try:
        with interrupt.saving():
            for step in range(3000):
                time.sleep(0.01) if phase == "training" else time.sleep(30)
                interrupt.check()
    except KeyboardInterrupt:
        print("saved step", step)
        sys.exit(interrupt.leave("wrote result.json"))
"""


def interrupted(phase: str, tmp_path: Path, signals: int = 1) -> subprocess.CompletedProcess:
    ready = tmp_path / f"ready-{phase}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, phase, str(ready)], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    for _ in range(signals):
        process.send_signal(signal.SIGINT)
        time.sleep(0.2)
    stdout, stderr = process.communicate(timeout=30)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_ctrl_c_before_anything_can_be_saved_exits_at_once_with_one_line(tmp_path):
    start = time.monotonic()
    result = interrupted("compiling", tmp_path)
    assert result.returncode == 130 and time.monotonic() - start < 10  # not after the 30 s "compile"
    assert result.stderr == "interrupted before anything finished: nothing was written\n"
    assert result.stdout == ""


def test_ctrl_c_while_training_stops_at_the_next_check_and_saves(tmp_path):
    result = interrupted("training", tmp_path)
    assert result.returncode == 130, result.stderr
    assert result.stdout.startswith("saved step ") and int(result.stdout.split()[-1]) < 2999
    assert result.stderr == "wrote result.json\n"


def test_a_second_ctrl_c_stops_without_saving(tmp_path):
    result = interrupted("stuck", tmp_path, signals=2)  # the loop is inside a 30 s call: no check comes
    assert result.returncode == 130
    assert result.stderr == "interrupted again: stopping without saving\n" and result.stdout == ""


def test_in_process_the_module_only_changes_sigint_inside_handling():
    before = signal.getsignal(signal.SIGINT)
    with interrupt.handling():
        assert signal.getsignal(signal.SIGINT) is not before
        interrupt.check()  # nothing asked: no exception
        assert not interrupt.requested()
    assert signal.getsignal(signal.SIGINT) is before
    assert interrupt.leave("a KeyboardInterrupt raised in-process") == 130  # returns: no os._exit under pytest


def test_saving_blocks_are_counted_so_one_opened_inside_another_outlives_it(monkeypatch):
    monkeypatch.setattr(interrupt, "_exit", lambda message: pytest.fail(f"exited at once: {message}"))
    with interrupt.handling(), contextlib.ExitStack() as kept:
        with interrupt.saving():  # a preset's runs (cli.run_all)
            kept.enter_context(interrupt.saving())  # the series', opened once a run is on disk
        signal.raise_signal(signal.SIGINT)
        assert interrupt.requested()
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()


# --- output paths ---------------------------------------------------------------------------------------------

def test_output_file_paths_are_checked(tmp_path):
    afile = tmp_path / "a.txt"
    afile.write_text("x")
    for good in (tmp_path / "out.json", tmp_path / "new" / "deeper" / "out.json", afile, None):
        paths.check_output_file(good, "--json")
    cases = {tmp_path: "names a folder", f"{tmp_path}/sub/": "names a folder",
             afile / "out.json": "a.txt is a file, so nothing can be written under it",
             afile / "x" / "out.json": "a.txt is a file"}
    for bad, message in cases.items():
        with pytest.raises(paths.PathError, match=message) as error:
            paths.check_output_file(bad, "--json")
        assert str(error.value).startswith("--json ") and "\n" not in str(error.value)


def test_output_folder_paths_are_checked(tmp_path):
    afile = tmp_path / "a.txt"
    afile.write_text("x")
    for good in (tmp_path, tmp_path / "new" / "folder", None):
        paths.check_output_folder(good, "--out")
    with pytest.raises(paths.PathError, match=r"--out .*a.txt is a file; give a folder path"):
        paths.check_output_folder(afile, "--out")
    with pytest.raises(paths.PathError, match="a.txt is a file, so nothing can be written under it"):
        paths.check_output_folder(afile / "sub", "--out")
