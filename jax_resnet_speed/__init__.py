"""Fast CIFAR-10 training in JAX/Flax: Myrtle AI's ResNet-9 recipes and the airbench records, timed to 94%."""


def install_hint(extra: str) -> str:
    """The command that adds an optional extra to an install from a clone, as the README installs it."""
    return f'pip install -e ".[{extra}]"'
