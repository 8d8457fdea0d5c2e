import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import sigint_when
from jax_resnet_speed import cli, presets, train

TINY = ["--width-mult", "0.125", "--batch-size", "64", "--precision", "fp32"]
# The small run most tests here make: after the first, its programs come from the run's shared
# compilation cache (tests/conftest.py).
ONE_EPOCH = ["--preset", "myrtle-resnet9", "--epochs", "1", "--train-subset", "128", "--test-subset", "100", *TINY]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "jax_resnet_speed.train", *args],
                          capture_output=True, text=True, timeout=600)


def exit_of_main(args, capsys):
    """cli.main(args) in this process, for what argparse decides before anything runs: its exit code, stdout
    and stderr (test_missing_data_is_one_line_and_exit_1 runs the real command line)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(args))
    printed = capsys.readouterr()
    return exit_info.value.code, printed.out, printed.err


def test_help_explains_every_option(capsys):
    code, out, _ = exit_of_main(["--help"], capsys)
    assert code == 0
    for flag in ("--preset", "--list-presets", "--data", "--epochs", "--batch-size", "--precision", "--seed",
                 "--runs", "--target", "--json", "--train-subset", "--test-subset", "--width-mult",
                 "--xla-dump", "--profile", "--loop", "--compile-cache", "--no-compile-cache", "--xla-preset",
                 "--tensorboard", "--plot"):
        assert flag in out


def test_list_presets(capsys):
    assert cli.main(["--list-presets"]) == 0
    out = capsys.readouterr().out
    assert "myrtle-final (default)" in out and "myrtle-resnet9" in out
    lines = out.splitlines()
    headers = [line for line in lines if not line.startswith(" ")]
    assert headers == ["Post 1: baseline", "Post 2: mini-batches", "Post 3: regularisation",
                       "Post 4: architecture", "Post 8: bag of tricks", "Airbench: past Myrtle"]
    listed = [line.split(":")[0].split()[0] for line in lines if line.startswith("  ")]
    assert listed[-6:] == ["airbench94", "airbench94-muon", "airbench95", "airbench96", "airbench96-faster",
                           "record94"]  # under "Airbench: past Myrtle", last
    assert len(listed) == len(presets.PRESETS) >= 20
    # Each preset under its post's header.
    assert lines.index("Post 8: bag of tricks") < lines.index(next(l for l in lines if "post8-01-baseline" in l))
    assert lines.index("Post 4: architecture") < lines.index(next(l for l in lines if "post4-arch-1" in l)) < \
        lines.index("Post 8: bag of tricks")


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "500"], "not divisible by the 16 ghost batch-norm splits"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--preset", "nope"], "invalid choice: 'nope'"),
    (["--target", "94"], "--target is a fraction"),
    (["--plot"], "--plot without a path draws beside --json"),
])
def test_bad_flags_exit_2_with_a_usage_message(args, message, capsys):
    code, _, err = exit_of_main(args, capsys)
    assert code == 2
    assert message in err and err.startswith("usage:") and "Traceback" not in err


def test_missing_data_is_one_line_and_exit_1(tmp_path):
    result = run_cli("--data", str(tmp_path / "nowhere.tar.gz"), "--cache-dir", str(tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nowhere.tar.gz" in errors[0]


def test_end_to_end_writes_the_table_and_json(tiny_npz, tmp_path):
    out = tmp_path / "result.json"
    result = run_cli("--data", tiny_npz, "--cache-dir", str(tmp_path), "--runs", "2", "--json", str(out),
                     "--tensorboard", str(tmp_path / "tb"), "--plot", *ONE_EPOCH)
    assert result.returncode == 0, result.stderr
    assert "epoch       lr  train loss" in result.stdout
    assert "compiling" not in result.stdout  # stdout is a pipe: no progress, only the "compiled ... in" line
    # --plot without a path: beside the JSON; --tensorboard: a folder of event files per run (test_tensorboard_log)
    assert (tmp_path / "result.png").read_bytes()[:4] == b"\x89PNG" and f"wrote {tmp_path / 'result.png'}" in result.stdout
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["run-1-seed-0", "run-2-seed-1"]
    assert all(list(p.glob("events.out.tfevents.*")) for p in (tmp_path / "tb").iterdir())
    assert "2 runs: accuracy" in result.stdout
    payload = json.loads(out.read_text())
    assert set(payload) == {"config", "environment", "compile_seconds", "compilation", "runs", "summary"}
    assert payload["compilation"]["cache"] in ("cold", "warm") and payload["config"]["loop"] == "step"
    config, recipe = payload["config"], payload["config"]["recipe"]
    assert recipe["name"] == "myrtle-resnet9" and recipe["optimiser"]["epochs"] == 1
    assert recipe["data"]["batch_size"] == 64 and recipe["network"]["widths"] == [64, 128, 256, 512]
    assert config["train_images"] == 128 and config["test_images"] == 100 and config["width_mult"] == 0.125
    assert recipe["optimiser"]["lr_knots"][1][0] == pytest.approx(5 / 24)  # stretched to 1 epoch
    assert {"jax", "jaxlib", "flax", "optax", "device_kind"} <= set(payload["environment"])
    assert payload["compile_seconds"] > 0
    assert [r["seed"] for r in payload["runs"]] == [0, 1]
    for record in payload["runs"]:
        assert record["status"] == "completed" and len(record["epochs"]) == 1
        assert 0 <= record["final_accuracy"] <= 1
        assert "seconds_to_target" in record
    summary = payload["summary"]
    reached = [r for r in payload["runs"] if r["seconds_to_target"] is not None]
    assert summary["runs_reaching_target"] == len(reached)
    assert summary["mean_accuracy"] == pytest.approx(np.mean([r["final_accuracy"] for r in payload["runs"]]))
    assert {"mean_accuracy", "std_accuracy", "runs_reaching_target", "median_seconds_to_target"} <= set(summary)


def test_a_second_run_of_the_same_command_loads_its_programs_from_the_compilation_cache(tiny_npz, tmp_path):
    command = ("--data", tiny_npz, "--cache-dir", str(tmp_path), "--compile-cache", str(tmp_path / "xla"), *ONE_EPOCH)
    first, second = run_cli(*command), run_cli(*command)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "(step loop, cold cache)" in first.stdout and "(step loop, warm cache)" in second.stdout
    assert list((tmp_path / "xla").iterdir())


def test_divergence_exits_non_zero_and_keeps_the_json(tiny_npz, tmp_path, monkeypatch, capsys):
    wild = presets.MYRTLE_RESNET9.replace(**{"optimiser.lr_knots": ((0, 1e7), (24, 1e7))})
    monkeypatch.setitem(presets.PRESETS, "myrtle-resnet9", wild)
    out = tmp_path / "diverged.json"
    code = cli.main(["--data", tiny_npz, "--cache-dir", str(tmp_path), "--epochs", "1", "--preset",
                     "myrtle-resnet9", "--json", str(out), *TINY])
    assert code == cli.EXIT_DIVERGED
    assert "diverged" in capsys.readouterr().err
    assert json.loads(out.read_text())["runs"][0]["status"] == "diverged"


def test_ctrl_c_writes_what_finished(tiny_npz, tmp_path, monkeypatch):
    real_run = train.run

    def interrupted_after_one_epoch(programs, data, config, seed, on_epoch, record):
        def stop(metrics):
            on_epoch(metrics)
            raise KeyboardInterrupt
        return real_run(programs, data, config, seed, stop, record)

    monkeypatch.setattr(train, "run", interrupted_after_one_epoch)
    out = tmp_path / "partial.json"
    code = cli.main(["--data", tiny_npz, "--cache-dir", str(tmp_path), "--json", str(out),
                     "--plot", str(tmp_path / "partial.png"), *ONE_EPOCH])
    assert code == cli.EXIT_INTERRUPTED
    payload = json.loads(out.read_text())
    assert payload["runs"][0]["status"] == "interrupted" and len(payload["runs"][0]["epochs"]) == 1
    assert (tmp_path / "partial.png").is_file()  # the curve of what finished


def test_xla_dump_then_report_lists_the_train_step_convolutions(tiny_npz, tmp_path):

    dump = tmp_path / "dump"
    result = run_cli("--data", tiny_npz, "--cache-dir", str(tmp_path), "--xla-dump", str(dump), *ONE_EPOCH)
    assert result.returncode == 0, result.stderr
    assert list(dump.glob("*jit_train_step*before_optimizations.txt"))
    assert list(dump.glob("*jit_train_step*after_optimizations.txt"))
    report = subprocess.run([sys.executable, "-m", "jax_resnet_speed.xla_report", str(dump)],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    assert "Convolutions: 23" in report.stdout  # 8 forward, 7 backward-input (none for the input), 8 backward-filter
    assert "forward" in report.stdout and "backward-filter" in report.stdout


def test_profile_writes_a_trace(tiny_npz, tmp_path):
    trace = tmp_path / "trace"
    result = run_cli("--data", tiny_npz, "--cache-dir", str(tmp_path), "--profile", str(trace), *ONE_EPOCH)
    assert result.returncode == 0, result.stderr
    assert list(trace.rglob("*.xplane.pb"))


def test_parallel_runs_match_the_same_seeds_run_one_by_one(tiny_npz, tmp_path, capsys):
    common = ["--data", tiny_npz, "--cache-dir", str(tmp_path), "--runs", "3", *ONE_EPOCH]
    assert cli.main([*common, "--json", str(tmp_path / "alone.json")]) == 0
    assert cli.main([*common, "--parallel", "2", "--json", str(tmp_path / "grouped.json")]) == 0
    printed = capsys.readouterr().out
    assert "group 1/2: seeds 0, 1 together" in printed and "group 2/2: seeds 2 together" in printed
    alone, grouped = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("alone", "grouped"))
    assert [r["seed"] for r in grouped["runs"]] == [r["seed"] for r in alone["runs"]] == [0, 1, 2]
    for together, by_itself in zip(grouped["runs"], alone["runs"]):
        assert together["status"] == "completed" and together["group_size"] == 2
        # vmapped convolutions sum in another order (tests/test_group.py): close, not equal.
        for got, want in zip(together["epochs"], by_itself["epochs"], strict=True):
            assert got["lr"] == pytest.approx(want["lr"], rel=1e-6)
            assert got["train_loss"] == pytest.approx(want["train_loss"], rel=2e-2)
            assert got["test_accuracy"] == pytest.approx(want["test_accuracy"], abs=0.05)
    assert {"ci95_accuracy", "wilson95_reaching_target", "iqr_seconds_to_target"} <= set(grouped["summary"])


def test_parallel_runs_under_airbench_rule_record_and_clock_it(tiny_npz, tmp_path, capsys):
    """A group is timed like a single run: under airbench's rule the init and the final evaluation are on
    the clock, and every record names the rule."""
    out = tmp_path / "grouped.json"
    assert cli.main(["--data", tiny_npz, "--cache-dir", str(tmp_path), "--epochs", "1", "--runs", "2",
                     "--parallel", "2", "--preset", "airbench94", "--train-subset", "128", "--test-subset", "100",
                     "--json", str(out), *TINY]) == 0
    assert "timing: airbench rule" in capsys.readouterr().out
    runs = json.loads(out.read_text())["runs"]
    assert [r["timing_rule"] for r in runs] == ["airbench", "airbench"]
    for record in runs:
        (last,) = record["epochs"]
        assert last["train_seconds"] > last["epoch_seconds"] + last["eval_seconds"]  # + the init


def test_a_group_too_large_for_memory_is_refused_naming_the_largest_that_fits(tiny_npz, tmp_path, monkeypatch,
                                                                              capsys):
    from jax_resnet_speed import group

    per_run = {}
    monkeypatch.setattr(group, "available_bytes", lambda device=None: 3 * per_run.setdefault("bytes", 0) + 10)
    real_member_bytes = group.member_bytes

    def member_bytes(programs, data):
        per_run["bytes"] = real_member_bytes(programs, data)
        return per_run["bytes"]

    monkeypatch.setattr(group, "member_bytes", member_bytes)
    code = cli.main(["--data", tiny_npz, "--cache-dir", str(tmp_path), "--runs", "8", "--parallel", "8", *ONE_EPOCH])
    assert code == 2  # a flag that cannot be met, as the README says
    error = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning: ")]
    assert len(error) == 1 and "8 runs at once (--parallel) need about" in error[0]
    assert error[0].endswith("the largest group that fits is --parallel 2")  # 80% of 3 runs' memory


@pytest.mark.slow
def test_a_real_ctrl_c_exits_130_with_one_line_and_never_replaces_a_result_with_less(tiny_npz, tmp_path):
    keep = tmp_path / "keep.json"
    keep.write_text('{"a good": "earlier result"}\n')
    args = ["--data", tiny_npz, "--cache-dir", str(tmp_path), "--json", str(keep), "--width-mult", "0.0625",
            "--batch-size", "64", "--precision", "fp32", "--epochs", "10", "--runs", "20"]
    # While compiling: nothing has finished, so the earlier file stays.
    compiling = sigint_when("train", args, "timing:", 0.5)
    assert compiling.returncode == 130, compiling.stderr
    assert compiling.stderr.endswith("\ninterrupted before anything finished: nothing was written\n")
    assert "Traceback" not in compiling.stderr and compiling.stderr.startswith("warning: this is not the full")
    assert keep.read_text() == '{"a good": "earlier result"}\n'
    # While training: what finished is written, the run in flight is marked interrupted.
    training = sigint_when("train", args, "    2 ", 0.0)
    assert training.returncode == 130, training.stderr
    assert "Traceback" not in training.stderr and training.stderr.endswith("interrupted: kept what finished\n")
    payload = json.loads(keep.read_text())
    assert payload["runs"][-1]["status"] == "interrupted" and len(payload["runs"]) < 20
    assert len(payload["runs"][0]["epochs"]) >= 2


def bad_flag_cases(tmp_path) -> dict[str, tuple[list[str], str]]:
    afile = tmp_path / "a-file"
    afile.write_text("x")
    return {
        "nan epochs": (["--epochs", "nan"], "argument --epochs: a finite number of epochs, got 'nan'"),
        "inf epochs": (["--epochs", "inf"], "a finite number of epochs, got 'inf'"),
        "negative seed": (["--seed", "-1"], "argument --seed: a whole number >= 0, got -1"),
        "cache both ways": (["--compile-cache", str(tmp_path / "c"), "--no-compile-cache"], "contradict each other"),
        "json is a folder": (["--json", str(tmp_path)], f"--json {tmp_path} names a folder"),
        "json ends in /": (["--json", f"{tmp_path}/new/"], "names a folder"),
        "json under a file": (["--json", str(afile / "out.json")], "a-file is a file, so nothing can be written"),
        "plot is a folder": (["--plot", str(tmp_path)], f"--plot {tmp_path} names a folder"),
        "tensorboard is a file": (["--tensorboard", str(afile)], "--tensorboard"),
        "checkpoints in a file": (["--checkpoint-dir", str(afile)], "--checkpoint-dir"),
        "xla dump is a file": (["--xla-dump", str(afile)], "--xla-dump"),
    }


def test_bad_values_and_output_paths_exit_2_before_any_work(tmp_path, capsys, monkeypatch):
    """Checked in-process through main(): each must stop in argument checking, before data or JAX's backend."""
    monkeypatch.setattr(cli, "train_from_args", lambda args: pytest.fail("got past the flag checks"))
    for case, (args, message) in bad_flag_cases(tmp_path).items():
        with pytest.raises(SystemExit) as stopped:
            cli.main(["--data", str(tmp_path / "never-read.npz"), *args])
        assert stopped.value.code == 2, case
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (case, err)
        assert err.strip().splitlines()[-1].startswith("python -m jax_resnet_speed.train: error: "), (case, err)
    err = ""
    for folder_flag in ("--tensorboard", "--checkpoint-dir", "--xla-dump"):
        with pytest.raises(SystemExit):
            cli.main([folder_flag, str(tmp_path / "a-file")])
        err = capsys.readouterr().err
        assert f"{folder_flag} {tmp_path / 'a-file'} is a file; give a folder path" in err, err


def test_too_few_images_for_a_batch_and_subsets_beyond_the_data(tiny_npz, tmp_path, capsys):
    assert cli.main(["--data", tiny_npz, "--cache-dir", str(tmp_path), "--train-subset", "10", *TINY]) == 2
    err = capsys.readouterr().err
    assert "error: 10 training images are fewer than one batch of 64" in err and "Traceback" not in err
    args = cli.build_parser().parse_args(["--data", tiny_npz, "--train-subset", "60000", "--test-subset", "100"])
    dataset = cli.load_data(args)
    assert len(dataset.train_images) == 512 and len(dataset.test_images) == 100
    err = capsys.readouterr().err.splitlines()
    assert "warning: --train-subset 60000 is more than the 512 images there are: using all of them" in err
    # The dataset's own warning as one plain line, as `data info` prints it, not Python's warning format.
    assert any(line.startswith("warning: this is not the full CIFAR-10") for line in err)
    assert not any("DataWarning" in line or "load_cifar10(" in line for line in err)


def test_distributed_without_a_cluster_is_one_line_and_exit_2(monkeypatch):
    environment = {k: v for k, v in __import__("os").environ.items()
                   if not k.startswith(("SLURM_", "OMPI_", "PMI_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES"))}
    result = subprocess.run([sys.executable, "-m", "jax_resnet_speed.train", "--distributed", "--epochs", "1"],
                            capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: --distributed could not join a cluster")
    assert "Traceback" not in result.stderr


def test_help_names_each_default_once():
    from jax_resnet_speed import compare, series, torch_reference

    for parser in (cli.build_parser(), series.build_parser(), compare.build_parser(), torch_reference.build_parser()):
        text = " ".join(parser.format_help().split())
        assert "(default: None)" not in text and "(default: False)" not in text, parser.prog
        assert "(default: the preset's) (default:" not in text, parser.prog
    assert "(default: 1)" in " ".join(cli.build_parser().format_help().split())  # --runs: a real default stays


def test_free_host_memory_is_memavailable_not_memfree(tmp_path):
    import os

    from jax_resnet_speed import group

    # A written meminfo, not the live one: MemAvailable moves between two reads of /proc/meminfo.
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   15000000 kB\n")
    assert group._host_available_bytes(str(meminfo)) == 15000000 * 1024
    page_bytes = os.sysconf("SC_PAGE_SIZE")  # no meminfo (not Linux): the free pages
    assert group._host_available_bytes(str(tmp_path / "missing")) % page_bytes == 0
    assert group._host_available_bytes() > 0
