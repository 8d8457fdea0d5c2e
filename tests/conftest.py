import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest


# .ci/run names the folder; without it, the workers of one pytest run share one under its base temp.
CACHE_VARIABLE = "JAX_RESNET_SPEED_TEST_CACHE"


def shared_cache_home(tmp_path_factory) -> pathlib.Path:
    """The XDG cache home of the whole run: every xdist worker gets the same folder, because under
    xdist each worker's base temp (.../popen-gwN) sits in the run's own folder."""
    if os.environ.get(CACHE_VARIABLE):
        return pathlib.Path(os.environ[CACHE_VARIABLE])
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "xdg-cache"


@pytest.fixture(scope="session", autouse=True)
def shared_compilation_cache(tmp_path_factory):
    """One persistent XLA cache for every worker and subprocess of the run: XDG_CACHE_HOME points at
    the shared folder (the CLI's default cache, for subprocesses) and this process uses its xla/
    folder, as the CLI would. Workers may write the same entry at once; jax writes entries without
    a lock, and an entry it cannot read back is a warning and a recompile, never a wrong program."""
    from jax_resnet_speed import compilation

    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(shared_cache_home(tmp_path_factory))
    cache = compilation.default_compile_cache()
    compilation.enable_cache(cache)
    yield cache
    compilation.enable_cache(None)
    if previous is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(autouse=True)
def compilation_cache_restored(shared_compilation_cache):
    """A test that runs cli.main with --compile-cache or --no-compile-cache leaves the shared cache on for the next."""
    yield
    from jax_resnet_speed import compilation

    compilation.enable_cache(shared_compilation_cache)


# How the suite compiles. Most tests run each program a few times, so compiling is most of their time:
# XLA:CPU without LLVM's optimisations and with its older loop emitters in place of its fusion emitters
# compiles a width-1/16 ResNet-9 train step about 3x faster (1.3 s against 4.1 s, measured 2026-12-06),
# to the same values up to rounding (tests/test_train.py checks the train step against OPTIMISED). It runs
# them 1.5-3.5x slower, so the few tests that run hundreds of steps compile their programs with OPTIMISED,
# as XLA ships (train.compile_programs' `options`).
QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
OPTIMISED = {"xla_backend_optimization_level": 3, "xla_cpu_use_fusion_emitters": True}  # XLA's defaults

# Set before any test runs, because XLA reads XLA_FLAGS once, when its backend starts; every subprocess
# a test starts inherits it. JAX_RESNET_SPEED_TEST_OPTIMISED=1 runs the whole suite as users compile.
if not os.environ.get("JAX_RESNET_SPEED_TEST_OPTIMISED"):
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                        *(f"--{k}={str(v).lower()}" for k, v in QUICK_COMPILE.items())]).strip()


def run_jitted(fn, *args):
    """fn(*args), jitted: one compiled program instead of one per operation."""
    import jax

    return jax.jit(fn)(*args)


def run_experiment(name: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m jax_resnet_speed.experiments.<name> args`, its output captured."""
    return subprocess.run([sys.executable, "-m", f"jax_resnet_speed.experiments.{name}", *args],
                          capture_output=True, text=True, timeout=900)


def sigint_when(module: str, args: list[str], seen, delay: float = 0.0) -> subprocess.CompletedProcess:
    """Run `python -m jax_resnet_speed.<module> args`, send it one SIGINT `delay` seconds
    after `seen` (a text of its stdout, or a function polled until it says so), and wait for it to exit."""
    import signal
    import time

    process = subprocess.Popen([sys.executable, "-u", "-m", f"jax_resnet_speed.{module}", *args],
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = []
    if callable(seen):
        deadline = time.monotonic() + 300
        while not seen() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        for line in process.stdout:
            lines.append(line)
            if seen in line:
                break
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, "".join(lines) + stdout, stderr)


def make_learnable(n: int, seed: int, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """uint8 32x32 images whose class sets a colour and a stripe orientation, plus noise."""
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(1234).integers(30, 225, (num_classes, 3))
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    rows = np.arange(32)[:, None]
    stripes = np.stack([((rows + np.arange(32)[None, :] * (c % 3)) // (2 + c % 4)) % 2 for c in range(num_classes)])
    images = palette[labels][:, None, None, :] + 40 * stripes[labels][..., None] + rng.normal(0, 20, (n, 32, 32, 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="session")
def learnable_data():
    """A small train and test split drawn from the same learnable distribution."""
    train_images, train_labels = make_learnable(1024, seed=0)
    test_images, test_labels = make_learnable(300, seed=1)
    return train_images, train_labels, test_images, test_labels


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory):
    """A learnable 512 + 200 image dataset as a prepared .npz source for the command-line tests."""
    train_images, train_labels = make_learnable(512, seed=0)
    test_images, test_labels = make_learnable(200, seed=1)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, train_images=train_images, train_labels=train_labels, test_images=test_images,
             test_labels=test_labels, class_names=np.array([f"class{i}" for i in range(10)]))
    return str(path)
