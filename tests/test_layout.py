"""The package's layering: which modules import what, and that the command line runs each module once."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

JAX_FREE = ("jax_resnet_speed.torch_reference", "jax_resnet_speed.loop", "jax_resnet_speed.settings",
            "jax_resnet_speed.flags", "jax_resnet_speed.cli", "jax_resnet_speed.presets", "jax_resnet_speed.data",
            "jax_resnet_speed.report", "jax_resnet_speed.report.console", "jax_resnet_speed.report.files",
            "jax_resnet_speed.report.__main__")


def run_python(*args: str) -> subprocess.CompletedProcess:
    """A fresh interpreter on this checkout's package."""
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_the_pytorch_reference_and_what_it_shares_import_no_jax():
    pytest.importorskip("torch")
    code = (f"import sys\nfor name in {JAX_FREE!r}:\n    __import__(name)\n"
            "print(sorted(m for m in ('jax', 'flax', 'optax') if m in sys.modules))")
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_trainer_command_line_imports_each_module_once():
    result = run_python("-X", "importtime", "-m", "jax_resnet_speed.train", "--help")
    assert result.returncode == 0, result.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:") and "jax_resnet_speed" in line]
    assert "jax_resnet_speed.train" in imported and "jax_resnet_speed.cli" in imported
    assert len(imported) == len(set(imported)), sorted(name for name in imported if imported.count(name) > 1)
