import json
import math

import numpy as np
import pytest

from jax_resnet_speed import presets
from jax_resnet_speed.experiments import hyperparameters as hp
from conftest import run_experiment


def test_offsets_centre_on_the_recipe():
    assert hp.offsets(4) == [-2, -1, 0, 1]
    assert hp.offsets(5) == [-2, -1, 0, 1, 2]


def test_slices_put_the_recipe_at_offset_zero_and_curves_are_constant_products():
    recipe = presets.get_preset(hp.PRESET)
    lr_wd, lr_momentum = hp.SLICES
    assert lr_wd.y_of(5e-4, 0) == 5e-4 and lr_momentum.y_of(0.9, 0) == 0.9
    assert lr_momentum.y_of(0.9, 1) == pytest.approx(0.8) and lr_momentum.y_of(0.9, -1) == pytest.approx(0.95)
    for i, j in [(-2, 1), (0, -1), (1, 1)]:
        # lr x wd is constant along i + j; lr / (1 - momentum) along i - j.
        assert 2.0 ** i * lr_wd.y_of(5e-4, j) == pytest.approx(2.0 ** lr_wd.curve(i, j) * 5e-4)
        assert 2.0 ** i / (1 - lr_momentum.y_of(0.9, j)) == pytest.approx(2.0 ** lr_momentum.curve(i, j) / 0.1)
    hyper = lr_wd.hyper_of(recipe, 2.0, 1e-3)
    assert (float(hyper.lr_scale), float(hyper.weight_decay), float(hyper.momentum)) == pytest.approx((2, 1e-3, 0.9))


def test_flatness_by_hand():
    index = np.array([-1, 0, 1])
    keys = index[None, :] + index[:, None]  # curves along i + j
    control = index[None, :] - index[:, None]
    flat = 0.5 + 0.1 * keys.astype(float)  # constant along each curve
    result = hp.flatness(flat, keys, control)
    assert result["along"] == pytest.approx(0.0)
    assert result["along_over_control"] == pytest.approx(0.0)
    # Curve means 0.4 (i + j = -1) 0.5 0.6 (with two or more points): std 0.1.
    assert result["across"] == pytest.approx(0.1)
    noisy = flat.copy()
    # Key -1 holds (0, 1) and (1, 0); keys -1, 0, 1 have 2, 3, 2 points: 4 degrees of freedom.
    noisy[0, 1] += 0.02
    assert hp.flatness(noisy, keys, control)["along"] == pytest.approx(math.sqrt(2 * 0.01 ** 2 / 4))
    with_gap = flat.copy()
    with_gap[1, 1] = np.nan  # a diverged point drops out
    assert hp.flatness(with_gap, keys, control)["along"] == pytest.approx(0.0)


@pytest.mark.slow
def test_smoke_run_in_chunks_writes_the_figure_json_and_summary(tiny_npz, tmp_path):
    # A subprocess compiled with QUICK_COMPILE (conftest): compiling is most of the run.
    result = run_experiment("hyperparameters", "--out", str(tmp_path), "--data", tiny_npz, "--width-mult",
                                    "0.0625", "--epochs", "1", "--grid", "2", "--points-at-once", "3", "--batch-size",
                                    "32", "--train-subset", "64", "--test-subset", "50", "--slices", "lr_momentum")
    assert result.returncode == 0, result.stderr
    png, payload, summary = (tmp_path / f"hyperparameters.{ext}" for ext in ("png", "json", "md"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads(payload.read_text())
    assert {"settings", "environment", "recipe", "slices"} <= set(result)
    lr_momentum = result["slices"]["lr_momentum"]
    assert lr_momentum["points_at_once"] == 3 and lr_momentum["chunks"] == 2
    assert len(lr_momentum["points"]) == 4  # the padding of the second chunk is dropped
    assert np.array(lr_momentum["accuracy"], dtype=float).shape == (2, 2)
    assert lr_momentum["y"] == pytest.approx([0.95, 0.9])
    assert {"along", "across", "control"} <= set(lr_momentum["flatness"])
    assert "| lr_momentum |" in summary.read_text()


def test_unknown_slice_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        hp.main(["--out", "x", "--slices", "lr_batch"])
    assert exit_info.value.code == 2
    assert "unknown slice(s) lr_batch" in capsys.readouterr().err
