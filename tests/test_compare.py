import json
import pathlib
import sys

import pytest

from conftest import sigint_when
from jax_resnet_speed import cli, compare

pytestmark = pytest.mark.filterwarnings("ignore:this is not the full CIFAR-10")

# The smallest run that still trains and evaluates: one epoch of two steps of the narrowest net. The
# torch.compile'd run costs the most (its warm-up compiles the train and eval graphs); the shapes barely
# change that, the number of graphs does, and each framework still compiles once.
TINY = ["--width-mult", "0.0625", "--batch-size", "32", "--precision", "fp32", "--epochs", "1",
        "--train-subset", "64", "--test-subset", "50", "--preset", "myrtle-resnet9"]


@pytest.mark.slow
def test_all_three_frameworks_give_the_table_and_three_files(tiny_npz, tmp_path, capsys):
    """The real thing, tiny: one run each of JAX, PyTorch eager and PyTorch compiled on the CPU."""
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    code = compare.main(["--data", tiny_npz, "--cache-dir", str(tmp_path), "--runs", "1", "--out", str(out), *TINY])
    assert code == 0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("framework"))
    assert header.split()[-1] == "ratio" and "median epoch s" in header and "compile s" in header
    for name in ("jax", "torch", "torch-compile"):
        assert any(line.startswith(f"{name} ") and line.split()[-1] != "-" for line in printed.splitlines())
    payload = json.loads((out / "compare.json").read_text())
    assert list(payload["frameworks"]) == ["jax", "torch", "torch-compile"]
    rows = {row["framework"]: row for row in payload["table"]}
    assert rows["jax"]["ratio"] == 1.0 and rows["torch"]["ratio"] > 0
    assert all(row["completed_runs"] == 1 and row["median_compile_seconds"] > 0 for row in rows.values())
    for name, entry in payload["frameworks"].items():
        assert len(entry["runs"][0]["epochs"]) == 1
        assert entry["config"]["train_images"] == 64 and entry["config"]["width_mult"] == 0.0625
        recipe = entry["config"]["recipe"]
        assert recipe["data"]["batch_size"] == 32 and recipe["optimiser"]["epochs"] == 1
    assert payload["frameworks"]["torch-compile"]["environment"]["compile"] is True
    markdown = (out / "compare.md").read_text()
    assert "| framework | accuracy |" in markdown
    assert markdown.count("fp32, width x0.0625, batch 32, 1 epochs, 64 train / 50 test images") == 3
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "runs").glob("*.json")) == ["jax-1.json", "torch-1.json",
                                                                     "torch-compile-1.json"]


def fake_payload(seed: int, framework: str, epochs: int, status: str) -> dict:
    """A trainer's --json for one run: accuracy 0.45 per epoch, epochs of 1, 2 or 1.5 seconds."""
    seconds = {"jax": 1.0, "torch": 2.0, "torch-compile": 1.5}[framework]
    metrics = [{"epoch": e, "accuracy": 0.45 * e, "epoch_seconds": seconds, "train_seconds": seconds * e}
               for e in range(1, epochs + 1)]
    done = status == "completed"
    reached = next((m["train_seconds"] for m in metrics if m["accuracy"] >= 0.9), None) if done else None
    run = {"seed": seed, "status": status, "epochs": metrics,
           "final_accuracy": metrics[-1]["accuracy"] if done else None, "seconds_to_target": reached}
    recipe = {"name": "myrtle-final", "data": {"batch_size": 512}, "optimiser": {"epochs": epochs},
              "timing": {"target": 0.9}}  # the keys compare reads of train.RunConfig.to_dict's nested recipe
    return {"config": {"recipe": recipe, "precision": "fp32", "width_mult": 1.0,
                       "train_images": 50000, "test_images": 10000},
            "environment": {"backend": "cpu", "device_kind": "cpu", framework.split("-")[0]: "1.0"},
            "compile_seconds": 3.0, "runs": [run], "summary": {}}


class FakeRuns:
    """Stands in for compare.run_one: records the call and writes the JSON its command asks for.

    `codes` maps (framework, seed) to an exit code: 1 writes no JSON (a data error), 3 a
    diverged run, 130 an interrupted run and then raises KeyboardInterrupt as Ctrl-C would.
    """

    def __init__(self, codes: dict | None = None, epochs: dict | None = None):
        self.calls: list[tuple[str, int]] = []
        self.codes, self.epochs = codes or {}, epochs or {}

    def __call__(self, command, env, log_path):
        framework = "torch-compile" if "--compile" in command else "torch" if "torch_reference" in command[2] else "jax"
        seed = int(command[command.index("--seed") + 1])
        self.calls.append((framework, seed))
        code = self.codes.get((framework, seed), 0)
        if code == cli.EXIT_DATA_ERROR:
            log_path.write_text("loading\nerror: no CIFAR-10 here\n")
            return code
        status = {cli.EXIT_DIVERGED: "diverged", cli.EXIT_INTERRUPTED: "interrupted"}.get(code, "completed")
        payload = fake_payload(seed, framework, self.epochs.get(framework, 2), status)
        pathlib.Path(command[command.index("--json") + 1]).write_text(json.dumps(payload))
        if code == cli.EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        return code


def run_fake(monkeypatch, tmp_path, fake, *args):
    monkeypatch.setattr(compare, "run_one", fake)
    out = tmp_path / "out"
    return compare.main(["--out", str(out), *args]), out


def test_runs_are_interleaved_and_the_seeds_advance(monkeypatch, tmp_path, capsys):
    fake = FakeRuns()
    code, out = run_fake(monkeypatch, tmp_path, fake, "--runs", "2", "--seed", "5")
    assert code == 0
    assert fake.calls == [("jax", 5), ("torch", 5), ("torch-compile", 5),
                          ("jax", 6), ("torch", 6), ("torch-compile", 6)]
    printed = capsys.readouterr().out
    assert printed.index("jax run 2/2: seed 6") > printed.index("torch-compile run 1/2: seed 5")
    payload = json.loads((out / "compare.json").read_text())
    assert [r["seed"] for r in payload["frameworks"]["torch"]["runs"]] == [5, 6]
    assert "- torch: cpu (cpu), torch 1.0, fp32, width x1.0, batch 512, 2 epochs, 50000 train / 10000 test images" \
        in (out / "compare.md").read_text()
    assert all(r["compile_seconds"] == 3.0 for e in payload["frameworks"].values() for r in e["runs"])


def test_ratio_is_seconds_to_target_when_every_run_reaches_it(monkeypatch, tmp_path, capsys):
    code, out = run_fake(monkeypatch, tmp_path, FakeRuns(), "--runs", "1")
    assert code == 0
    rows = {row["framework"]: row for row in json.loads((out / "compare.json").read_text())["table"]}
    assert {name: row["ratio"] for name, row in rows.items()} == {"jax": 1.0, "torch": 2.0, "torch-compile": 1.5}
    assert rows["torch"]["median_seconds_to_target"] == 4.0 and rows["torch"]["median_epoch_seconds"] == 2.0
    assert "ratio: median seconds to target, relative to jax" in capsys.readouterr().out


def test_ratio_falls_back_to_training_seconds_for_every_framework(monkeypatch, tmp_path, capsys):
    # One epoch of torch reaches 0.45 only: no row is then compared on time to target.
    code, out = run_fake(monkeypatch, tmp_path, FakeRuns(epochs={"torch": 1}), "--runs", "1",
                         "--frameworks", "torch,jax")
    assert code == 0
    payload = json.loads((out / "compare.json").read_text())
    rows = {row["framework"]: row for row in payload["table"]}
    assert rows["torch"]["ratio"] == 1.0 and rows["jax"]["ratio"] == 1.0  # 2 s of training each
    assert rows["torch"]["median_seconds_to_target"] is None
    assert "training seconds (not every run reached the target), relative to jax" in payload["ratio_basis"]
    table = capsys.readouterr().out
    assert "torch" in table and "0/1" in table


def test_a_diverged_run_is_kept_and_exits_3(monkeypatch, tmp_path):
    fake = FakeRuns(codes={("torch", 0): cli.EXIT_DIVERGED})
    code, out = run_fake(monkeypatch, tmp_path, fake, "--runs", "1")
    assert code == cli.EXIT_DIVERGED
    assert len(fake.calls) == 3  # the others still ran
    rows = {row["framework"]: row for row in json.loads((out / "compare.json").read_text())["table"]}
    assert rows["torch"]["completed_runs"] == 0 and rows["torch"]["ratio"] is None


def test_a_failed_run_stops_with_one_error_line_and_exit_1(monkeypatch, tmp_path, capsys):
    fake = FakeRuns(codes={("torch", 0): cli.EXIT_DATA_ERROR})
    code, out = run_fake(monkeypatch, tmp_path, fake, "--runs", "2")
    assert code == cli.EXIT_DATA_ERROR
    assert fake.calls == [("jax", 0), ("torch", 0)]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: torch run 1 failed: no CIFAR-10 here")
    assert list(json.loads((out / "compare.json").read_text())["frameworks"]) == ["jax"]


def test_ctrl_c_saves_what_finished_and_exits_130(monkeypatch, tmp_path):
    fake = FakeRuns(codes={("torch", 1): cli.EXIT_INTERRUPTED})
    code, out = run_fake(monkeypatch, tmp_path, fake, "--runs", "3")
    assert code == cli.EXIT_INTERRUPTED
    assert fake.calls[-1] == ("torch", 1) and len(fake.calls) == 5
    frameworks = json.loads((out / "compare.json").read_text())["frameworks"]
    assert [r["status"] for r in frameworks["torch"]["runs"]] == ["completed", "interrupted"]
    assert (out / "compare.md").exists()


@pytest.mark.slow
def test_a_real_ctrl_c_reaches_the_run_in_flight_once_and_exits_130(tiny_npz, tmp_path):
    """SIGINT to compare alone (its runs have their own session): compare passes it on to the trainer it
    waits for, which stops while compiling, writing nothing; compare then says so and exits 130."""
    out = tmp_path / "out"
    log = out / "runs" / "jax-1.log"
    result = sigint_when("compare", ["--data", tiny_npz, "--cache-dir", str(tmp_path), "--runs", "1",
                                     "--frameworks", "jax", "--out", str(out), *TINY],
                         lambda: log.exists() and "timing:" in log.read_text())
    assert result.returncode == cli.EXIT_INTERRUPTED, result.stderr
    assert result.stderr == "interrupted before any run finished: nothing was written\n"
    assert result.stdout.endswith("jax run 1/1: interrupted\n")
    assert log.read_text().endswith("\ninterrupted before anything finished: nothing was written\n")
    assert not (out / "compare.json").exists()


def test_without_matplotlib_the_plot_is_skipped_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    code, out = run_fake(monkeypatch, tmp_path, FakeRuns(), "--runs", "1", "--frameworks", "jax")
    assert code == 0
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert (out / "compare.json").exists() and (out / "compare.md").exists() and not (out / "compare.png").exists()


def test_run_commands_forward_the_trainer_flags(tmp_path):
    args = compare.build_parser().parse_args(["--data", "x.npz", "--epochs", "3", "--width-mult", "0.5",
                                              "--device", "gpu", "--precision", "fp16"])
    jax_command = compare.run_command("jax", args, 7, tmp_path / "j.json")
    torch_command = compare.run_command("torch-compile", args, 7, tmp_path / "t.json")
    assert jax_command[1:3] == ["-m", "jax_resnet_speed.train"] and "--device" not in jax_command
    assert torch_command[1:4] == ["-m", "jax_resnet_speed.torch_reference", "--compile"]
    for command in (jax_command, torch_command):
        text = " ".join(command)
        assert "--runs 1 --seed 7" in text and "--data x.npz" in text and "--epochs 3" in text
        assert "--width-mult 0.5" in text and "--precision fp16" in text
    assert torch_command[-2:] == ["--device", "cuda"]
    assert compare.run_environment("jax", "gpu")["JAX_PLATFORMS"] == "cuda"
    assert compare.run_environment("jax", "cpu")["JAX_PLATFORMS"] == "cpu"


@pytest.mark.parametrize("args, message", [
    (["--json", "x.json"], "unrecognized arguments: --json"),
    (["--frameworks", "jax,mxnet"], "choose from jax,torch,torch-compile"),
    (["--runs", "0"], "--runs must be positive"),
])
def test_bad_flags_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compare.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_without_torch_asking_for_it_is_one_line_and_exit_1(monkeypatch, capsys):
    monkeypatch.setattr(compare.importlib.util, "find_spec", lambda name: None)
    assert compare.main(["--frameworks", "jax,torch"]) == cli.EXIT_DATA_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['error: PyTorch is not installed; pip install -e ".[torch]" (or --frameworks jax)']


def test_a_real_failing_run_reports_its_error_line(tmp_path, capsys):
    code = compare.main(["--data", str(tmp_path / "nowhere.npz"), "--cache-dir", str(tmp_path), "--runs", "1",
                         "--frameworks", "jax", "--out", str(tmp_path / "out")])
    assert code == cli.EXIT_DATA_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere.npz" in err[0] and "jax run 1 failed" in err[0]
