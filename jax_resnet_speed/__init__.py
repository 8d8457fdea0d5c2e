"""Fast CIFAR-10 training in JAX/Flax: Myrtle AI's ResNet-9 recipes and the airbench records, timed to 94%."""

import sys

from jax_resnet_speed import interrupt

# `python -m jax_resnet_speed.train` (or another command line) imports seconds of JAX and Flax before its
# main can take over Ctrl-C (interrupt.main): until then, a Ctrl-C exits with one line. Not the data
# command, which handles Ctrl-C itself (its decode workers).
_COMMANDS = tuple(f"jax_resnet_speed.{name}" for name in
                  ("train", "series", "compare", "bench", "torch_reference", "experiments."))
_RUN_AS = sys.orig_argv[sys.orig_argv.index("-m") + 1] if sys.argv[:1] == ["-m"] else ""  # while `-m` imports
if _RUN_AS.startswith(_COMMANDS):
    interrupt.exit_on_sigint_while_starting()


def install_hint(extra: str) -> str:
    """The command that adds an optional extra to an install from a clone, as the README installs it."""
    return f'pip install -e ".[{extra}]"'
