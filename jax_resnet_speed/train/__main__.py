"""`python -m jax_resnet_speed.train`: the trainer's command line (cli.py).

The library is this package's __init__; running it as a package imports it once, as
jax_resnet_speed.train, so the command line and the library share one TrainState and RunConfig.
"""

from jax_resnet_speed import interrupt


def _main() -> int:
    from jax_resnet_speed.cli import main  # imported under interrupt.main: Ctrl-C in the imports is one line too

    return main()


interrupt.main(_main)
