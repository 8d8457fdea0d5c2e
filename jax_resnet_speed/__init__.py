"""Fast CIFAR-10 training in JAX/Flax: Myrtle AI's ResNet-9 recipes and the airbench records, timed to 94%."""

import sys

from jax_resnet_speed import interrupt

# `python -m jax_resnet_speed.train` imports the library (jax_resnet_speed.train, seconds of JAX and
# Flax imports) before its __main__ can take over Ctrl-C: until then, a Ctrl-C exits with one line.
if sys.argv[:1] == ["-m"] and sys.orig_argv[sys.orig_argv.index("-m") + 1:][:1] == ["jax_resnet_speed.train"]:
    interrupt.exit_on_sigint_while_starting()


def install_hint(extra: str) -> str:
    """The command that adds an optional extra to an install from a clone, as the README installs it."""
    return f'pip install -e ".[{extra}]"'
