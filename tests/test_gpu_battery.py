"""REHEARSAL of the GPU battery's first part on the CPU: `scripts/gpu_battery.sh headline` run the way
the GPU machine runs it (PYTHONPATH=., nothing installed, `python3` on the PATH), shrunk to tiny runs,
so that a device window is never the first time it runs."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRESETS = ("myrtle-final", "airbench94", "airbench94-muon")
# Three tiny runs and their preflight: at most about a minute on a 2-core CPU with the suite's quick
# compile (conftest.QUICK_COMPILE, in the XLA_FLAGS it inherits); --runs 1 overrides the part's --runs 5
# (flags given last win).
# TIME_SCALE stretches the part's time limits, made for a GPU, for a CPU shared with other jobs.
TRAIN_EXTRA = "--width-mult 0.0625 --batch-size 64 --train-subset 128 --test-subset 64 --epochs 2 --runs 1"


def battery(part: str, out: pathlib.Path, tmp_path: pathlib.Path, data: str, **env: str) -> subprocess.CompletedProcess:
    """Run one part as the device machine does, from the repository root, on the CPU."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    python3 = bin_dir / "python3"  # the script calls python3, as on the GPU machine: this one, venv and all
    python3.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python3.chmod(0o755)
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": ".",
                   "JAX_PLATFORMS": "cpu",
                   "DATA": data, "CACHE": str(tmp_path / "cache"), "WORK": str(tmp_path / "work"),
                   "ALLOW_CPU": "1", "TRAIN_EXTRA": TRAIN_EXTRA, "TIME_SCALE": "5", **env}
    return subprocess.run(["bash", "scripts/gpu_battery.sh", part, str(out)], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.rehearsal
def test_rehearsal_headline_prints_its_table_and_writes_every_json(tiny_npz, tmp_path):
    out = tmp_path / "out"
    result = battery("headline", out, tmp_path, tiny_npz)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "preflight passed" in result.stdout
    for preset in PRESETS:
        assert f"preflight: {preset}: one fp32 train step" in result.stdout
        payload = json.loads((out / f"{preset}.json").read_text())
        assert payload["config"]["recipe"]["name"] == preset
        assert [run["status"] for run in payload["runs"]] == ["completed"]
        assert len(payload["runs"][0]["epochs"]) == 2
    assert {path.name for path in out.iterdir()} == {"versions.txt", "headline.log", "tables.md",
                                                     *(f"{preset}.json" for preset in PRESETS)}
    assert len(list(out.iterdir())) <= 8  # what a device call brings back
    # The table comes last: one row per preset, the seconds to 93, 93.5 and 94% beside the target's.
    table = result.stdout[result.stdout.index("### Training runs"):]
    assert table == (out / "tables.md").read_text()
    lines = table.splitlines()
    assert lines[2].endswith("| s to 93.00% (reached) | s to 93.50% (reached) | s to 94.00% (reached) |")
    rows = lines[4:]
    assert [row.split(" | ")[0] for row in rows] == sorted(f"| {preset}.json" for preset in PRESETS)
    assert all(row.count("|") == 15 and row.endswith("(0/1) |") for row in rows)  # 14 cells
    assert "jax 0.1" in (out / "versions.txt").read_text()


@pytest.mark.rehearsal
def test_rehearsal_headline_stops_at_once_on_a_failed_preflight(tiny_npz, tmp_path):
    """Without ALLOW_CPU the preflight refuses the CPU: one line says why, and no run starts."""
    out = tmp_path / "out"
    result = battery("headline", out, tmp_path, tiny_npz, ALLOW_CPU="0")
    assert result.returncode == 1
    failed = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("preflight failed")]
    assert failed == ["preflight failed: jax.devices() shows no GPU, only [CpuDevice(id=0)] "
                      "(is the CUDA plugin installed?)"]
    assert "headline stopped by the preflight (exit 1)" in result.stdout
    assert not list(out.glob("*.json")) and "tables.md" not in os.listdir(out)


@pytest.mark.rehearsal
def test_rehearsal_without_the_dataset_no_part_starts(tmp_path):
    result = battery("headline", tmp_path / "out", tmp_path, str(tmp_path / "missing.tar.gz"))
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == (f"preflight failed: no dataset at {tmp_path / 'missing.tar.gz'}; "
                                              "copy it to .data/ and name .data in the call's carry")
