import os

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def user_cache_in_a_temporary_folder(tmp_path_factory):
    """The compilation cache (and any default dataset cache) of the whole session in one temporary
    folder, subprocesses included: programs compiled by one test load warm in the next."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if previous is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = previous


# For tests that run a program once to check shapes, dtypes and that a step moves every weight: XLA:CPU
# compiles without LLVM's optimisations several times faster (the random initialisers of a ResNet-9's
# init: 10 s against 0.8 s), and the values differ only in rounding. Tests that compare numbers between
# loops, devices or frameworks keep the default, as users run it.
QUICK_COMPILE = {"xla_backend_optimization_level": 0}


def run_quickly(fn, *args):
    """fn(*args), jitted and compiled with QUICK_COMPILE."""
    import jax

    return jax.jit(fn).lower(*args).compile(QUICK_COMPILE)(*args)


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
