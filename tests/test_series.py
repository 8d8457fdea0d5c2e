import json
import math
import subprocess
import sys

import pytest

from conftest import sigint_when
from jax_resnet_speed import cli, presets, report, series, train

pytestmark = pytest.mark.filterwarnings("ignore:this is not the full CIFAR-10")

FIRST, LAST = "post8-01-baseline", "post8-10-tta"  # a plain ResNet-9 and the final recipe (whitening, EMA, TTA)
TINY = ["--width-mult", "0.125", "--batch-size", "64", "--epochs", "1", "--train-subset", "256",
        "--test-subset", "100", "--precision", "fp32"]


@pytest.fixture
def argv(tiny_npz, tmp_path):
    def make(out, *extra, presets_=f"{FIRST},{LAST}"):
        return ["--presets", presets_, "--data", tiny_npz, "--cache-dir", str(tmp_path / "cache"),
                "--out", str(out), *TINY, *extra]
    return make


@pytest.fixture
def train_calls(monkeypatch):
    """Every call of train.run as (preset, seed); the runs themselves are real."""
    calls = []
    real_run = train.run

    def counted(programs, data, config, seed, on_epoch, record):
        calls.append((config.recipe.name, seed))
        return real_run(programs, data, config, seed, on_epoch, record)

    monkeypatch.setattr(train, "run", counted)
    return calls


def read(out):
    return json.loads((out / "series.json").read_text())


def seeds(payload, name):
    return [(r["seed"], r["status"]) for r in payload["presets"][name]["runs"]]


def test_groups_follow_the_presets():
    groups = series.SELECTIONS
    assert groups["post8"] == [r.name for r in presets.BY_POST["post 8: bag of tricks"][:10]]
    assert len(groups["post8"]) == 10 and groups["post8"][0] == FIRST and groups["post8"][-1] == LAST
    assert groups["post4-arch"][-1] == "myrtle-resnet9" and len(groups["post4-arch"]) == 7
    assert all(name.startswith("post4-arch-") for name in groups["post4-arch"][:6])
    assert groups["post1-4"] == ["post1-baseline", "post2-batch512", "post3-fp32-bn", "post3-cutout",
                                 "post3-batch768", "myrtle-resnet9"]
    assert groups["all"] == list(presets.PRESETS) and len(set(groups["all"])) == len(presets.PRESETS)
    # Each chained row's predecessor is the row before it (post1-4 jumps from post 3 to ResNet-9).
    for names in (groups["post8"], groups["post4-arch"], groups["post1-4"][:-1]):
        assert all(presets.PREDECESSORS[later] == earlier for earlier, later in zip(names, names[1:]))


def fake_entry(seconds, accuracies, reached=None):
    runs = [{"seed": i, "status": "completed", "final_accuracy": a, "seconds_to_target": reached,
             "epochs": [{"train_seconds": seconds + i, "accuracy": a}]} for i, a in enumerate(accuracies)]
    return {"runs": runs}


def test_table_ratios_and_myrtle_accuracy_column():
    payload = {"presets": {"post4-arch-6-residual": fake_entry(10.0, [0.93, 0.95], reached=9.0),
                           "myrtle-resnet9": fake_entry(20.0, [0.94]),
                           "post8-01-baseline": {"runs": [{"seed": 0, "status": "diverged", "epochs": []}]}}}
    rows = series.table_rows(payload, ["post4-arch-6-residual", "myrtle-resnet9", "post8-01-baseline"])
    first, second, third = rows
    assert first["median_train_seconds"] == 10.5 and first["ratio_to_previous"] is None
    assert first["mean_accuracy"] == pytest.approx(0.94) and first["runs_reaching_target"] == 2
    assert second["ratio_to_previous"] == pytest.approx(20 / 10.5)
    assert second["myrtle_ratio_to_previous"] == pytest.approx(79 / 66)
    assert third["median_train_seconds"] is None and third["diverged_runs"] == 1
    assert third["myrtle_ratio_to_previous"] == pytest.approx(75 / 79) and third["ratio_to_previous"] is None

    lines = series.text_table(rows).splitlines()
    assert "Myrtle acc %" in lines[0] and "Myrtle s (V100)" in lines[0]
    assert "93.7" in lines[1] and "94.00 +- 1.41" in lines[1] and "2/2" in lines[1]
    assert "93.7" not in lines[2] and "0/1 (1 diverged)" in lines[3]
    markdown = series.markdown_table(rows).splitlines()
    assert len(markdown) == 5 and "| 66 |" in markdown[2] and "±" in markdown[2]
    # Without a 20-epoch search row there is no Myrtle accuracy column.
    assert "Myrtle acc" not in series.text_table(rows[1:])


def test_png_is_skipped_without_matplotlib(tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.ticker", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    payload = {"presets": {}, "environment": {"device_kind": "cpu", "backend": "cpu"}, "runs": 1,
               "title": "t", "smoke_reasons": []}
    note = series.write_png(str(tmp_path / "series.png"), payload, series.table_rows(payload, [FIRST]))
    assert "matplotlib" in note and not (tmp_path / "series.png").exists()


def test_help_has_the_run_flags_but_not_preset():
    result = subprocess.run([sys.executable, "-m", "jax_resnet_speed.series", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for flag in ("--group", "--presets", "--out", "--data", "--cache-dir", "--epochs", "--batch-size",
                 "--precision", "--seed", "--runs", "--target", "--train-subset", "--test-subset", "--width-mult"):
        assert flag in result.stdout
    options = {option for action in series.build_parser()._actions for option in action.option_strings}
    assert "--preset" not in options and "--list-presets" not in options


@pytest.mark.parametrize("args, message", [
    (["--group", "post8", "--batch-size", "500"], "not divisible by the 16 ghost batch-norm splits of preset post8-06"),
    (["--presets", f"{FIRST},nope"], "unknown preset 'nope'"),
    (["--group", "post8", "--epochs", "0"], "--epochs must be positive"),
    ([], "one of the arguments --group --presets is required"),
    (["--group", "post8", "--list-presets"], "unrecognized arguments: --list-presets"),
])
def test_bad_flags_exit_2(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        series.main([*args, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_data_is_one_line_and_exit_1(tmp_path, capsys):
    code = series.main(["--presets", FIRST, "--data", str(tmp_path / "nowhere.tar.gz"), "--cache-dir",
                        str(tmp_path), "--out", str(tmp_path / "out")])
    assert code == cli.EXIT_DATA_ERROR
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nowhere.tar.gz" in errors[0] and "Traceback" not in err
    assert not (tmp_path / "out" / "series.json").exists()


def test_ctrl_c_then_continues_writes_the_files_and_refuses_other_settings(argv, tmp_path, train_calls,
                                                                           monkeypatch, capsys):
    out = tmp_path / "out"
    # A real Ctrl-C (SIGINT) as the second preset starts: once a run is on disk, its compilation stops at
    # the next stage instead of at once, and the files keep the first preset's run (interrupt.py).
    stopped = sigint_when("series", argv(out), f"== [2/2] {LAST}")
    assert stopped.returncode == cli.EXIT_INTERRUPTED, stopped.stderr
    assert "Traceback" not in stopped.stderr and "compiled" not in stopped.stdout.split("[2/2]")[1]
    assert stopped.stderr.splitlines()[-1] == (f"interrupted: kept 1 finished run(s) in {out}; the same command "
                                               "goes on from them")
    assert seeds(read(out), FIRST) == [(0, "completed")] and seeds(read(out), LAST) == []
    assert "epoch       lr  train loss" in stopped.stdout  # the trainer's epoch table, per preset
    assert (out / "series.md").exists()

    # The same command goes on where it stopped: only the second preset runs.
    assert series.main(argv(out)) == 0
    stdout = capsys.readouterr().out
    assert "epoch       lr  train loss" in stdout and "continuing" in stdout
    table = stdout[stdout.index("Myrtle s (V100)") - 200:].splitlines()
    rows = {line.split()[0]: line for line in table if line.split() and line.split()[0] in (FIRST, LAST)}
    assert set(rows) == {FIRST, LAST}
    assert " 75 " in rows[FIRST] and " 26 " in rows[LAST] and "0.35" in rows[LAST]  # Myrtle: 26 / 75
    assert train_calls == [(LAST, 0)]

    payload = read(out)
    assert list(payload["presets"]) == [FIRST, LAST] and payload["selection"] == [FIRST, LAST]
    assert {"width_mult", "epochs", "seed", "data_checksum", "train_images"} <= set(payload["settings"])
    assert {"jax", "backend", "device_kind"} <= set(payload["environment"])
    for name, seconds in ((FIRST, 75), (LAST, 26)):
        entry = payload["presets"][name]
        assert {"config", "environment", "compile_seconds", "runs", "summary", "myrtle"} <= set(entry)
        assert entry["config"]["recipe"]["name"] == name and entry["config"]["width_mult"] == 0.125
        assert entry["config"]["recipe"]["optimiser"]["epochs"] == 1 and entry["compile_seconds"] > 0
        assert seeds(payload, name) == [(0, "completed")] and entry["summary"]["completed_runs"] == 1
        assert entry["myrtle"]["seconds"] == seconds
    assert [row["preset"] for row in payload["table"]] == [FIRST, LAST]
    assert payload["table"][1]["myrtle_ratio_to_previous"] == pytest.approx(26 / 75)
    md = (out / "series.md").read_text()
    assert "CPU smoke run: these are not results" in md and "jax " in md
    md_rows = [line for line in md.splitlines() if line.startswith(f"| {FIRST} ") or line.startswith(f"| {LAST} ")]
    assert len(md_rows) == 2 and "| 75 |" in md_rows[0] and "| 26 |" in md_rows[1]
    assert (out / "series.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --runs 2: only the missing seed of each preset runs; the first runs are kept as they were. (Which runs
    # are made is the series' logic, so these are made up: fake_runs, without compiling.)
    first_runs = {name: payload["presets"][name]["runs"][0] for name in (FIRST, LAST)}
    calls = fake_runs(monkeypatch)
    assert series.main(argv(out, "--runs", "2")) == 0
    assert calls == [(FIRST, 1), (LAST, 1)]
    payload = read(out)
    for name in (FIRST, LAST):
        assert seeds(payload, name) == [(0, "completed"), (1, "completed")]
        assert payload["presets"][name]["runs"][0] == first_runs[name]
        assert payload["presets"][name]["summary"]["completed_runs"] == 2
    assert all(row["finished_runs"] == 2 for row in payload["table"])

    # Nothing left to run.
    calls.clear()
    capsys.readouterr()
    assert series.main(argv(out, "--runs", "2")) == 0
    assert calls == [] and "skipped" in capsys.readouterr().out

    # Other settings are refused, naming them, and the file is left alone.
    before = (out / "series.json").read_text()
    assert series.main(argv(out, "--width-mult", "0.25", "--seed", "3")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--width-mult 0.125 there, 0.25 here" in err[0] and "--seed 0 there, 3 here" in err[0]
    # A recipe edited in presets.py since is refused too.
    edited = presets.PRESETS[FIRST].replace(**{"network.celu_alpha": 0.5})
    monkeypatch.setitem(presets.PRESETS, FIRST, edited)
    assert series.main(argv(out)) == 2
    err = capsys.readouterr().err
    assert f"the recipe of {FIRST} changed" in err and "network.celu_alpha" in err
    assert calls == [] and (out / "series.json").read_text() == before


def fake_runs(monkeypatch, interrupt_in: str | None = None, diverge_in: str | None = None) -> list:
    """cli.prepare_runs without compiling: each run is one made-up epoch (accuracy 0.5); a run of the
    preset `interrupt_in` is stopped by a KeyboardInterrupt after it, as a Ctrl-C in training would, and
    one of `diverge_in` has a NaN loss. Returns the (preset, seed) of every run."""
    calls = []

    def prepare_runs(config, dataset, seed, payload, *rest):
        payload["compile_seconds"] = 1.0

        def run_one(seed, on_epoch, record):
            calls.append((config.recipe.name, seed))
            record.update(seed=seed, status="running", epochs=[], final_accuracy=None, seconds_to_target=None)
            metrics = report.epoch_metrics(1, 0.1, (230.0, 50, 100), (50, 50, 115.0, 100), False, 2.0, 2.0, 0.5)
            if config.recipe.name == diverge_in:
                metrics["train_loss"] = math.nan
            report.add_epoch(record, metrics, on_epoch)  # raises Diverged on the NaN, as in loop.run
            if config.recipe.name == interrupt_in:
                raise KeyboardInterrupt
            report.complete_run(record, config.recipe.timing.target)
            return record

        return run_one

    monkeypatch.setattr(cli, "prepare_runs", prepare_runs)
    return calls


def test_ctrl_c_in_a_run_keeps_what_finished_and_a_rerun_completes_the_rest(argv, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    fake_runs(monkeypatch, interrupt_in=LAST)
    assert series.main(argv(out)) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err.splitlines()[-1] == (f"interrupted: kept 1 finished run(s) in {out}; the same "
                                                        "command goes on from them")
    payload = read(out)
    assert seeds(payload, FIRST) == [(0, "completed")] and seeds(payload, LAST) == [(0, "interrupted")]
    assert (out / "series.md").exists()
    finished = payload["presets"][FIRST]["runs"][0]

    calls = fake_runs(monkeypatch)
    assert series.main(argv(out)) == 0
    assert calls == [(LAST, 0)]
    payload = read(out)
    assert payload["presets"][FIRST]["runs"] == [finished] and seeds(payload, LAST) == [(0, "completed")]


def test_a_diverged_run_exits_3_and_the_series_goes_on(argv, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    fake_runs(monkeypatch, diverge_in=FIRST)
    assert series.main(argv(out)) == cli.EXIT_DIVERGED
    assert "diverged" in capsys.readouterr().err
    payload = read(out)
    assert seeds(payload, FIRST) == [(0, "diverged")] and seeds(payload, LAST) == [(0, "completed")]
    assert payload["table"][0]["diverged_runs"] == 1 and payload["table"][1]["ratio_to_previous"] is None
    # A diverged run is a result: a rerun does not repeat it, and still reports it.
    calls = fake_runs(monkeypatch)
    assert series.main(argv(out)) == cli.EXIT_DIVERGED
    assert calls == [] and read(out)["presets"] == payload["presets"]


def test_out_naming_a_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(series, "run_series", lambda *a: pytest.fail("got past the flag checks"))
    afile = tmp_path / "a-file"
    afile.write_text("x")
    with pytest.raises(SystemExit) as stopped:
        series.main(["--presets", FIRST, "--out", str(afile)])
    assert stopped.value.code == 2 and f"--out {afile} is a file; give a folder path" in capsys.readouterr().err
