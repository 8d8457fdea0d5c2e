"""CIFAR-10 through tensorflow-datasets (the [tfds] extra), read with tfds.data_source: no TensorFlow needed.

tfds.data_source reads the prepared array_record files example by example and decodes the images with
Pillow, so reading needs only tensorflow-datasets. Preparing the dataset the first time (download and
conversion, done by tfds's own cifar10 builder) needs TensorFlow; see docs/data.md.
"""

from __future__ import annotations

import re

import numpy as np

from jax_resnet_speed import install_hint, progress
from jax_resnet_speed.data._canonical import HOW_TO_PROVIDE, DataError, Dataset, finish, one_line


def read_tfds(name: str) -> Dataset:
    try:
        import tensorflow_datasets as tfds  # only here: importing it takes a second or two
    except ImportError as error:
        raise DataError(f"--data tfds needs tensorflow-datasets ({one_line(error)}): "
                        f"{install_hint('tfds')}") from None
    try:
        train, test = tfds.data_source(name, split=["train", "test"])
        class_names = tuple(train.dataset_info.features["label"].names)
        (train_images, train_labels), (test_images, test_labels) = (
            _arrays(source, f"reading tfds:{name} {split}") for source, split in ((train, "train"), (test, "test")))
    except DataError:
        raise
    except Exception as error:  # tfds fails in many ways (download, preparation, checksums, unknown name)
        needs_tensorflow = isinstance(error, ImportError) and re.search(r"\btensorflow\b", str(error))
        hint = "preparing it the first time needs TensorFlow (pip install tensorflow-cpu), or " \
            if needs_tensorflow else ""
        raise DataError(f"tensorflow-datasets could not load {name!r} ({one_line(error)}); {hint}{HOW_TO_PROVIDE}") \
            from None
    return finish(train_images, train_labels, test_images, test_labels, class_names, "tfds", f"tfds:{name}")


def _arrays(source, label: str) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of a tfds data source, in its order."""
    images = np.empty((len(source), 32, 32, 3), np.uint8)
    labels = np.empty(len(source), np.int64)
    with progress.task(label, total=len(source), unit="images") as shown:
        for index, example in enumerate(source):
            image = np.asarray(example["image"])
            if image.shape != (32, 32, 3):
                raise DataError(f"{label.removeprefix('reading ')}: image {index} has shape {image.shape}, "
                                "expected (32, 32, 3); CIFAR-10-shaped datasets only")
            images[index], labels[index] = image, example["label"]
            if index % 1024 == 1023:
                shown.advance(1024)
    return images, labels
