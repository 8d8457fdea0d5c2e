"""CIFAR-10 through tensorflow-datasets, when it is installed (the [tfds] extra)."""

from __future__ import annotations

from jax_resnet_speed.data._canonical import HOW_TO_PROVIDE, DataError, Dataset, finish, one_line


def read_tfds(name: str) -> Dataset:
    try:
        import tensorflow_datasets as tfds  # only here: importing it takes seconds
    except ImportError as error:
        raise DataError(f"--data tfds needs tensorflow-datasets ({one_line(error)}): "
                        "pip install 'jax_resnet_speed[tfds]'") from None
    try:
        (train, test), info = tfds.load(name, split=["train", "test"], batch_size=-1, as_supervised=True,
                                        with_info=True)
        (train_images, train_labels), (test_images, test_labels) = tfds.as_numpy(train), tfds.as_numpy(test)
        class_names = tuple(info.features["label"].names)
    except Exception as error:  # tfds fails in many ways (download, checksums, unknown name)
        raise DataError(f"tensorflow-datasets could not load {name!r} ({one_line(error)}); {HOW_TO_PROVIDE}") \
            from None
    return finish(train_images, train_labels, test_images, test_labels, class_names, "tfds", f"tfds:{name}")
