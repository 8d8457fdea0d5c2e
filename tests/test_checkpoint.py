import functools
import gc
import json
import os
import pathlib
import re
import select
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax_resnet_speed import optim, presets, train
from jax_resnet_speed.checkpoint import CheckpointError, Checkpoints

ROOT = pathlib.Path(__file__).resolve().parents[1]
TMP_NAME = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")  # Orbax's not-yet-finalised <index> folder

# A TrainState assembled by hand, with a step that mirrors train.steps.train_step on a
# two-layer net: the recipe's real optimiser (so the optax state has the real PartitionState,
# MaskedState and MaskedNode nesting), EMA, lookahead, loss scale and a typed key. The real
# network's init and step take over 30 s to compile on a CPU; these take a second.
RECIPE = presets.get_preset("myrtle-final")
FEATURES, HIDDEN, BATCH, STEPS_PER_EPOCH = 6, 8, 16, 4


def make_optimizer(hyper: optim.Hyper) -> optax.GradientTransformation:
    return optim.make_optimizer(RECIPE, optim.lr_schedule(RECIPE, STEPS_PER_EPOCH), BATCH, hyper, STEPS_PER_EPOCH)


@functools.partial(jax.jit, static_argnames="full")
def toy_init(key: jax.Array, full: bool = True) -> train.TrainState:
    """full: with EMA, lookahead and loss scale; else those are None and there are no batch stats."""
    init_key, rng = jax.random.split(key)
    hidden_key, classifier_key = jax.random.split(init_key)
    params = {"hidden": {"kernel": jax.random.normal(hidden_key, (FEATURES, HIDDEN))},
              "norm": {"bias": jnp.zeros(HIDDEN)},  # a 'bn_bias' group of its own
              "classifier": {"kernel": 0.1 * jax.random.normal(classifier_key, (HIDDEN, 10))}}
    batch_stats = {"norm": {"mean": jnp.zeros(HIDDEN)}} if full else {}
    weights = {"params": params, "batch_stats": batch_stats}
    hyper = optim.Hyper.of(RECIPE)
    return train.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
        constants={"mix": jnp.eye(FEATURES) + 0.1}, opt_state=make_optimizer(hyper).init(params), hyper=hyper,
        ema=weights if full else None, loss_scale=optim.LossScale.create() if full else None,
        totals=jnp.zeros(3, jnp.float32), rng=rng, slow=weights if full else None)


@functools.partial(jax.jit, donate_argnums=0)
def toy_step(state: train.TrainState) -> train.TrainState:
    """One step of the full toy state on a batch drawn from its key, as train_step takes one."""
    x_key, y_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
    x = jax.random.normal(x_key, (BATCH, FEATURES)) @ state.constants["mix"]
    y = jax.random.randint(y_key, (BATCH,), 0, 10)
    scale = state.loss_scale.scale

    def loss_fn(params):
        h = x @ params["hidden"]["kernel"]
        mean = h.mean(axis=0)
        logits = jax.nn.relu(h - mean + params["norm"]["bias"]) @ params["classifier"]["kernel"]
        losses = optim.smoothed_cross_entropy(logits, y, 0.2)
        return losses.sum() * scale, (losses, logits, mean)

    grads, (losses, logits, mean) = jax.grad(loss_fn, has_aux=True)(state.params)
    grads = jax.tree_util.tree_map(lambda g: g / scale, grads)
    updates, opt_state = make_optimizer(state.hyper).update(grads, state.opt_state, state.params)
    live = {"params": optax.apply_updates(state.params, updates),
            "batch_stats": {"norm": {"mean": 0.9 * state.batch_stats["norm"]["mean"] + 0.1 * mean}}}
    ema = optim.ema_update(state.ema, live, state.step, 0.9, 1)
    slow, live = optim.lookahead_update(state.slow, live, state.step + 1, 10, 0.95, 2)
    correct = jnp.sum(jnp.argmax(logits, -1) == y)
    totals = state.totals + jnp.stack([losses.sum(), correct, y.size]).astype(jnp.float32)
    return state.replace(step=state.step + 1, params=live["params"], batch_stats=live["batch_stats"],
                         opt_state=opt_state, ema=ema, slow=slow,
                         loss_scale=state.loss_scale.adjust(optim.all_finite(grads)), totals=totals)


def host_leaves(tree) -> dict[str, np.ndarray]:
    """{path: numpy copy} of every leaf, typed keys as their key data."""
    def to_numpy(leaf):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        return np.array(leaf)

    return {jax.tree_util.keystr(path): to_numpy(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_bitwise_equal(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert (actual[name].dtype, actual[name].shape) == (value.dtype, value.shape), name
        assert actual[name].tobytes() == value.tobytes(), name


def test_round_trip_restores_every_leaf_bit_for_bit_and_training_continues_identically(tmp_path):
    state = toy_step(toy_init(jax.random.key(0)))
    assert int(state.step) == 1 and float(state.loss_scale.good_steps) == 1
    buffers = [leaf for leaf in jax.tree_util.tree_leaves(state.opt_state) if leaf.ndim]
    assert buffers and all(np.any(leaf != 0) for leaf in buffers)  # every momentum buffer holds a step
    progress = {"epoch": 3, "epochs": [{"epoch": 1, "train_loss": 2.25}], "seed": 0, "note": None}

    with Checkpoints(str(tmp_path / "run")) as checkpoints:
        checkpoints.save(7, state, progress)
    like = toy_init(jax.random.key(1))  # another seed: nothing right by accident
    with Checkpoints(str(tmp_path / "run")) as checkpoints:  # as a resumed run does
        restored, restored_progress = checkpoints.restore(like)

    assert restored_progress == progress
    assert type(restored) is train.TrainState
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(state)
    assert_bitwise_equal(host_leaves(restored), host_leaves(state))
    assert restored.rng.dtype == state.rng.dtype and jax.random.key_impl(restored.rng) == jax.random.key_impl(state.rng)
    for got, want in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(like), strict=True):
        assert isinstance(got, jax.Array) and jax.typeof(got) == jax.typeof(want) and got.sharding == want.sharding

    # Both go on from here alike (the step donates its input, so each state is stepped last).
    assert_bitwise_equal(host_leaves(toy_step(restored)), host_leaves(toy_step(state)))


def test_a_state_without_ema_lookahead_or_loss_scale_round_trips(tmp_path):
    state = toy_init(jax.random.key(2), full=False)
    with Checkpoints(str(tmp_path)) as checkpoints:
        checkpoints.save(1, state, {})
        restored, progress = checkpoints.restore(toy_init(jax.random.key(3), full=False))
    assert restored.ema is None and restored.slow is None and restored.loss_scale is None
    assert restored.batch_stats == {} and progress == {}
    assert_bitwise_equal(host_leaves(restored), host_leaves(state))


def test_latest_is_the_newest_finalised_checkpoint_and_keep_drops_the_oldest(tmp_path):
    state = toy_init(jax.random.key(0), full=False)
    with Checkpoints(str(tmp_path), keep=2) as checkpoints:
        assert checkpoints.latest() is None
        checkpoints.save(1, state, {"epoch": 1})
        checkpoints.save(2, state, {"epoch": 2})
        assert checkpoints.latest() == 2
        checkpoints.save(3, state, {"epoch": 3})
        assert checkpoints.latest() == 3
        with pytest.raises(TypeError, match="not JSON serializable"):
            checkpoints.save(4, state, {"loss": np.float32(1.5)})
    assert {name for name in os.listdir(tmp_path) if name[0].isdigit()} == {"2", "3"}  # no half-written folders
    with Checkpoints(str(tmp_path), keep=2) as reopened:
        assert reopened.latest() == 3
        assert reopened.restore(state, 2)[1] == {"epoch": 2}
        with pytest.raises(CheckpointError, match=r"no checkpoint 1 in .* holds \[2, 3\]"):
            reopened.restore(state, 1)
        with pytest.raises(CheckpointError, match="already exists"):
            reopened.save(3, state, {})


def test_relative_directories_are_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Checkpoints("runs/a") as checkpoints:
        assert checkpoints.directory == str(tmp_path / "runs" / "a")
        checkpoints.save(5, toy_init(jax.random.key(0), full=False), {"epoch": 5})
    assert (tmp_path / "runs" / "a" / "5").is_dir()
    with Checkpoints("runs/a") as checkpoints:
        assert checkpoints.latest() == 5


# Saves index 1 (a small array), prints SAVED, then keeps saving larger ones until it is killed.
SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    from jax_resnet_speed.checkpoint import Checkpoints

    checkpoints = Checkpoints(sys.argv[1], keep=100)
    big = np.arange(int(sys.argv[2]), dtype=np.float32)
    checkpoints.save(1, {"index": np.int32(1), "values": big[:1000]}, {"index": 1})
    print("SAVED", flush=True)
    for index in range(2, 20):
        checkpoints.save(index, {"index": np.int32(index), "values": big + index}, {"index": index})
""")
BIG = 40_000_000  # 160 MB of float32: each save writes for a good fraction of a second


def read_line(stream, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else ""


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment, with this checkout first on the path, on the CPU (no accelerator to set up)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "JAX_PLATFORMS": "cpu", **extra}


def test_a_save_killed_midway_leaves_the_finalised_checkpoints_readable(tmp_path):
    directory = tmp_path / "run"
    saver = subprocess.Popen([sys.executable, "-c", SAVER, str(directory), str(BIG)], env=subprocess_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if read_line(saver.stdout, timeout=120) != "SAVED\n":
            saver.kill()
            pytest.fail(f"the saver did not save index 1: {saver.communicate(timeout=30)[1][-3000:]}")
        # Orbax writes <index>.orbax-checkpoint-tmp/{state,progress}.orbax-checkpoint-tmp, renames each
        # item's folder when it is written, then the step's. Kill it while the arrays are being written:
        # freeze it, make sure the folder is still half-written (else let it go on to the next), kill it.
        deadline, caught = time.monotonic() + 60, None
        while caught is None and time.monotonic() < deadline and saver.poll() is None:
            caught = next((name for name in os.listdir(directory) if (m := TMP_NAME.match(name)) and int(m[1]) > 1
                           and (directory / name / "state.orbax-checkpoint-tmp").is_dir()), None)
            if caught is not None:
                saver.send_signal(signal.SIGSTOP)
                time.sleep(0.05)  # every thread stopped
                if not (directory / caught / "state.orbax-checkpoint-tmp").is_dir():
                    caught = None
                    saver.send_signal(signal.SIGCONT)
            time.sleep(0.001)
        assert caught is not None, "no temporary checkpoint folder appeared"
        saver.send_signal(signal.SIGKILL)
        assert saver.wait(timeout=30) == -signal.SIGKILL
    finally:
        if saver.poll() is None:
            saver.kill()
            saver.wait(timeout=30)
        saver.stdout.close()
        saver.stderr.close()

    half_written = int(TMP_NAME.match(caught)[1])
    assert (directory / caught / "state.orbax-checkpoint-tmp").is_dir(), "the save was not caught midway"
    assert not (directory / str(half_written)).exists()
    with Checkpoints(str(directory), keep=100) as checkpoints:
        latest = checkpoints.latest()
        assert latest == half_written - 1  # each save returns finalised, so the one before is whole
        first, progress = checkpoints.restore({"index": np.int32(0), "values": np.zeros(1000, np.float32)}, 1)
        assert progress == {"index": 1} and first["index"] == 1
        np.testing.assert_array_equal(first["values"], np.arange(1000, dtype=np.float32))
        if latest > 1:
            last, progress = checkpoints.restore({"index": np.int32(0), "values": np.zeros(BIG, np.float32)})
            assert progress == {"index": latest} and last["index"] == latest
            assert last["values"][0] == latest and last["values"][-1] == BIG - 1 + latest
        # A resumed run saves that index again: Orbax replaces the half-written folder.
        checkpoints.save(half_written, {"index": np.int32(half_written), "values": np.ones(3, np.float32)}, {})
        assert checkpoints.latest() == half_written and not (directory / caught).exists()


def test_restore_from_an_empty_folder_says_there_is_nothing_to_resume(tmp_path):
    with Checkpoints(str(tmp_path / "empty")) as checkpoints:
        with pytest.raises(CheckpointError, match=r"no checkpoint to resume from in .*empty"):
            checkpoints.restore(toy_init(jax.random.key(0), full=False))


def test_restore_into_a_state_of_another_shape_names_the_leaves_that_differ(tmp_path):
    other = toy_init(jax.random.key(0), full=False)
    other = other.replace(params={**other.params, "classifier": {"kernel": jnp.zeros((HIDDEN, 100))}})
    with Checkpoints(str(tmp_path)) as checkpoints:
        checkpoints.save(1, toy_init(jax.random.key(0), full=False), {})
        with pytest.raises(CheckpointError, match=r"does not match .*ema\.params\.classifier\.kernel missing"):
            checkpoints.restore(toy_init(jax.random.key(0), full=True))
        with pytest.raises(CheckpointError, match=r"params\.classifier\.kernel is float32\[8, 10\] there, "
                                                  r"float32\[8, 100\] here"):
            checkpoints.restore(other)


# Orbax's failed restore leaves reads of the other arrays to finish after its event loop has closed,
# which Python reports as an unraisable RuntimeError; wait for them here, so it is reported (and
# ignored) in this test rather than in whichever runs next.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_checkpoint_raises_checkpoint_error(tmp_path):
    state = toy_init(jax.random.key(0), full=False)
    with Checkpoints(str(tmp_path)) as checkpoints:
        checkpoints.save(1, state, {})
        for path in (tmp_path / "1" / "state").rglob("*"):
            if path.is_file() and path.parent.name == "d":  # the arrays' data
                path.write_bytes(b"not an array")
        with pytest.raises(CheckpointError, match="cannot read checkpoint 1 in .*Error reading"):
            checkpoints.restore(state)
    time.sleep(0.5)
    gc.collect()


# Saves arrays laid out one way on two CPU devices and restores them into a `like` laid out another.
SHARDED = textwrap.dedent("""
    import sys
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec
    from jax_resnet_speed.checkpoint import Checkpoints

    mesh = jax.make_mesh((2,), ("data",))
    split, whole = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
    saved = {"w": jax.device_put(jnp.arange(8.0), whole), "b": jax.device_put(jnp.arange(3.0), whole),
             "rng": jax.device_put(jax.random.key(3), whole)}
    checkpoints = Checkpoints(sys.argv[1])
    checkpoints.save(1, saved, {})
    like = {"w": jax.device_put(jnp.zeros(8), split), "b": jnp.zeros(3),
            "rng": jax.device_put(jax.random.key(0), whole)}
    restored, _ = checkpoints.restore(like)
    for name in like:
        assert restored[name].sharding == like[name].sharding, (name, restored[name].sharding, like[name].sharding)
    np.testing.assert_array_equal(restored["w"], np.arange(8.0))
    np.testing.assert_array_equal(jax.random.key_data(restored["rng"]), jax.random.key_data(jax.random.key(3)))
    assert len(jax.devices()) == 2 and restored["w"].sharding.spec == PartitionSpec("data")
    print("OK")
""")


def test_restored_leaves_are_placed_like_the_leaves_of_like(tmp_path):
    env = subprocess_env(XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2")
    result = subprocess.run([sys.executable, "-c", SHARDED, str(tmp_path)], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout == "OK\n", result.stderr


# The trainer's --checkpoint-dir and --resume (cli.py): two runs of four epochs, stopped in the
# second run's third epoch and resumed.
RESUMABLE = ["--width-mult", "0.125", "--batch-size", "64", "--precision", "fp32", "--preset", "myrtle-final",
             "--train-subset", "128", "--test-subset", "100", "--epochs", "4", "--runs", "2"]
EPOCH_FIELDS = ("lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "tta_accuracy")


def test_an_interrupted_run_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(tiny_npz, tmp_path,
                                                                                     monkeypatch, capsys):
    from jax_resnet_speed import cli

    flags = ["--data", tiny_npz, "--cache-dir", str(tmp_path), *RESUMABLE]
    assert cli.main([*flags, "--json", str(tmp_path / "whole.json")]) == 0
    whole = json.loads((tmp_path / "whole.json").read_text())

    real_train_epoch, calls = train.train_epoch, []

    def ctrl_c_in_the_third_epoch_of_run_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4 + 3:  # run 1's four epochs, then run 2's first two, saved
            raise KeyboardInterrupt
        return real_train_epoch(*args, **kwargs)

    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setattr(train, "train_epoch", ctrl_c_in_the_third_epoch_of_run_2)
    assert cli.main([*flags, "--checkpoint-dir", str(checkpoints)]) == cli.EXIT_INTERRUPTED
    assert "--resume goes on from it" in capsys.readouterr().err
    with Checkpoints(str(checkpoints)) as saved:
        assert saved.latest() == 6
        progress = saved.progress()
    assert [len(r["epochs"]) for r in progress["runs"]] == [4, 2]
    assert [r["status"] for r in progress["runs"]] == ["completed", "running"]

    monkeypatch.setattr(train, "train_epoch", real_train_epoch)
    assert cli.main([*flags, "--checkpoint-dir", str(checkpoints), "--resume",
                     "--json", str(tmp_path / "resumed.json")]) == 0
    out = capsys.readouterr().out
    assert "run with seed 1 goes on after epoch 2" in out
    assert out.count("(from the checkpoint)") == 2  # run 2's saved epochs; run 1 is kept as it finished
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert [r["seed"] for r in resumed["runs"]] == [0, 1]
    for run_whole, run_resumed in zip(whole["runs"], resumed["runs"], strict=True):
        assert run_resumed["status"] == "completed"
        for a, b in zip(run_whole["epochs"], run_resumed["epochs"], strict=True):
            assert {k: b[k] for k in EPOCH_FIELDS} == pytest.approx({k: a[k] for k in EPOCH_FIELDS}, rel=1e-6)
        assert run_resumed["final_accuracy"] == run_whole["final_accuracy"]
    with Checkpoints(str(checkpoints)) as saved:
        assert saved.latest() == 8


def test_a_run_stopped_after_its_last_epoch_counts_as_finished_on_resume(tiny_npz, tmp_path, monkeypatch, capsys):
    """Killed at the very start of run 2: the checkpoint holds run 1 after its last epoch, not yet marked completed."""
    from jax_resnet_speed import cli

    flags = ["--data", tiny_npz, "--cache-dir", str(tmp_path), *RESUMABLE]
    real_train_epoch, calls = train.train_epoch, []

    def ctrl_c_as_run_2_starts(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4 + 1:  # run 1's four epochs, then run 2's first
            raise KeyboardInterrupt
        return real_train_epoch(*args, **kwargs)

    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setattr(train, "train_epoch", ctrl_c_as_run_2_starts)
    assert cli.main([*flags, "--checkpoint-dir", str(checkpoints)]) == cli.EXIT_INTERRUPTED
    monkeypatch.setattr(train, "train_epoch", real_train_epoch)
    capsys.readouterr()
    assert cli.main([*flags, "--checkpoint-dir", str(checkpoints), "--resume", "--json",
                     str(tmp_path / "resumed.json")]) == 0
    out = capsys.readouterr().out
    assert "1 finished run(s) kept, and the run with seed 0, which had trained all 4 epochs" in out
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert [(r["seed"], r["status"], len(r["epochs"])) for r in resumed["runs"]] == [(0, "completed", 4),
                                                                                   (1, "completed", 4)]


def test_resume_with_another_config_is_refused_with_exit_2_naming_the_fields(tiny_npz, tmp_path, capsys):
    from jax_resnet_speed import cli

    checkpoints = str(tmp_path / "checkpoints")
    flags = ["--data", tiny_npz, "--cache-dir", str(tmp_path), "--no-compile-cache", *RESUMABLE,
             "--checkpoint-dir", checkpoints]
    args = cli.build_parser().parse_args(flags)
    config = cli.resolve_config(args, "cpu")
    section = json.loads(json.dumps(cli.config_section(args, config, cli.load_data(args))))
    section["recipe"]["optimiser"]["epochs"] = 3  # this run's config, but made with three epochs
    with Checkpoints(checkpoints) as saved:
        saved.save(1, {"step": np.zeros(())}, {"config": section, "runs": []})
    assert cli.main([*flags, "--resume"]) == 2
    error = capsys.readouterr().err
    assert "was made with another config" in error and "recipe.optimiser.epochs (3 there, 4 here)" in error
    assert "Traceback" not in error
    assert cli.main(flags) == 2  # a folder with checkpoints is not started over without --resume
    assert "already holds checkpoints; add --resume" in capsys.readouterr().err


def test_resume_without_a_checkpoint_dir_is_a_usage_error(capsys):
    from jax_resnet_speed import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--resume"])
    assert exit_info.value.code == 2
    assert "--resume continues from --checkpoint-dir" in capsys.readouterr().err
