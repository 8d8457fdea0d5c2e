"""`python -m jax_resnet_speed.train`: the trainer's command line (cli.py).

The library is this package's __init__; running it as a package imports it once, as
jax_resnet_speed.train, so the command line and the library share one TrainState and RunConfig.
"""

import sys

from jax_resnet_speed import interrupt

with interrupt.handling():  # before the heavy imports: Ctrl-C during them exits with one line too
    from jax_resnet_speed.cli import main

    code = main()
sys.exit(code)
