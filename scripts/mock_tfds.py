"""Run a command of this package with --data tfds served by tensorflow-datasets' own mock (no download).

    python scripts/mock_tfds.py N MODULE [ARGS...]
    python scripts/mock_tfds.py 1000 jax_resnet_speed.data info tfds
    python scripts/mock_tfds.py 2048 jax_resnet_speed.train --data tfds --width-mult 0.125 --epochs 2

tfds.testing.mock_data makes tfds.data_source('cifar10') return N random CIFAR-10-shaped examples per
split (the same N in train and test; labels named '0'..'9', as tfds's builder knows no names before it
has prepared the data), through the real tfds code. Random images: nothing is learnt from them.
"""

import runpy
import sys

import tensorflow_datasets as tfds

if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    examples, module, sys.argv = int(sys.argv[1]), sys.argv[2], [sys.argv[2], *sys.argv[3:]]
    with tfds.testing.mock_data(num_examples=examples, policy=tfds.testing.MockPolicy.USE_CODE):
        runpy.run_module(module, run_name="__main__", alter_sys=True)
