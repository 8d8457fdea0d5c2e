"""The single-device programs lower to the StableHLO recorded before the refactors of issue 20
(scripts/stablehlo_hashes.py): a change of layout must not change what the device runs."""

import importlib.util
import json
import pathlib

import jax
import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "stablehlo_hashes.py"


def load_script():
    spec = importlib.util.spec_from_file_location("stablehlo_hashes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_programs_lower_to_the_recorded_stablehlo():
    script = load_script()
    recorded = json.loads(script.RECORDED.read_text())
    if recorded["jax"] != jax.__version__:
        pytest.skip(f"hashes recorded on jax {recorded['jax']}; StableHLO text differs between versions")
    assert script.hashes() == recorded["hashes"]
