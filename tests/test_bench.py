import json

import pytest

from conftest import sigint_when
from jax_resnet_speed import bench
from test_flops import resnet9_forward_flops_per_image, resnet9_train_flops_per_image

TINY = ["--preset", "myrtle-resnet9", "--width-mult", "0.0625", "--batch-size", "32", "--precision", "fp32",
        "--steps", "2", "--repeats", "2"]
HAND_COUNT = 32 * resnet9_train_flops_per_image((4, 8, 16, 32))
FORWARD = resnet9_forward_flops_per_image((4, 8, 16, 32))
RUN_STEPS = 24 * (50_000 // 32)  # myrtle-resnet9's 24 epochs at batch 32


def test_jax_bench_prints_its_table_and_json_and_the_warm_compile_is_faster(tmp_path, capsys):
    out = tmp_path / "bench.json"
    # One loop mode keeps the test short; test_train checks that the epoch loop trains as the step loop does.
    assert bench.main([*TINY, "--loops", "step", "--cold-compile", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "CPU numbers" in text and "images/s" in text and "MFU peak" in text
    payload = json.loads(out.read_text())
    result = payload["result"]
    assert result["model_flops_per_step"] == HAND_COUNT
    # XLA's own count (elementwise work included, its own convention at the borders) lands close to it.
    assert result["xla_flops_per_step"] == pytest.approx(HAND_COUNT, rel=0.1)
    assert result["bytes_per_step"] > 0
    # The whole run's count, at this width: 24 epochs of steps, then a plain pass over the 10,000
    # test images (myrtle-resnet9 has no TTA); post 4 published no FLOPs.
    assert result["run"] == {
        "run_steps": RUN_STEPS, "train_images": RUN_STEPS * 32, "evaluation_forward_passes": 10_000,
        "forward_flops_per_image": FORWARD, "pflops": pytest.approx((RUN_STEPS * HAND_COUNT + 10_000 * FORWARD) / 1e15),
        "width_mult": 0.0625, "published_pflops": None, "ratio_to_published": None}
    assert (f"per run at width x0.0625: {result['run']['pflops']:.4g} PFLOP model (37,488 steps of 32 images, "
            "then 10,000 forward passes of evaluation); its script publishes no figure") in text
    assert set(payload["rows"]) == {"step"}
    for loop, row in payload["rows"].items():
        assert len(row["chunk_seconds"]) == 2 and row["min_step_seconds"] <= row["median_step_seconds"]
        assert row["images_per_second"] == pytest.approx(32 / row["median_step_seconds"])
        assert row["model_tflops"] == pytest.approx(HAND_COUNT / row["median_step_seconds"] / 1e12)
        assert row["mfu_peak"] is None  # no datasheet peak for a CPU
        assert row["mfu_matmul"] == pytest.approx(row["model_tflops"] / result["matmul"]["tflops"])
        cold, warm = result["compile"][loop]
        assert (cold["cache"], warm["cache"]) == ("cold", "warm")
        assert warm["seconds"] < cold["seconds"]
    assert payload["environment"]["backend"] == "cpu" and payload["peak"] is None


def test_torch_bench_counts_the_same_model_flops(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    assert bench.main([*TINY, "--framework", "torch", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["framework"] == "torch"
    assert payload["result"]["model_flops_per_step"] == pytest.approx(HAND_COUNT, rel=0.01)
    assert payload["result"]["run"]["forward_flops_per_image"] == pytest.approx(FORWARD, rel=0.01)
    assert payload["rows"]["step"]["images_per_second"] > 0


@pytest.mark.slow
def test_a_real_ctrl_c_after_a_loop_mode_keeps_its_row(tmp_path):
    """SIGINT once the step loop is timed: the epoch loop's compilation stops at its next stage, and the
    table and JSON hold the step loop's row."""
    out = tmp_path / "bench.json"
    result = sigint_when("bench", [*TINY, "--loops", "step,epoch", "--no-compile-cache", "--json", str(out)],
                         "timed the step loop")
    assert result.returncode == 130, result.stderr
    assert result.stderr == f"interrupted: kept what was timed (step loop) in {out}\n"
    assert "images/s" in result.stdout and "timed the epoch loop" not in result.stdout
    payload = json.loads(out.read_text())
    assert payload["interrupted"] is True and set(payload["rows"]) == set(payload["result"]["compile"]) == {"step"}
    assert payload["rows"]["step"]["images_per_second"] > 0 and payload["result"]["matmul"] is None


@pytest.mark.parametrize("args, message", [(["--steps", "0"], "--steps must be positive"),
                                           (["--loops", "step,scan"], "--loops takes"),
                                           (["--compile"], "--compile is torch.compile")])
def test_bad_flags_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
