"""The package imports no private module of its dependencies: those change without notice between
releases (the GPU machine runs a newer jax than the development machine). Private functions of public
modules are not modules, and are left to review (torch._foreach_add_, PyTorch's multi-tensor ops, have
no public form)."""

import ast
import pathlib

import jax_resnet_speed

PACKAGE = pathlib.Path(jax_resnet_speed.__file__).parent
# Modules without an underscore in their name that their projects still call internal.
INTERNAL = ("jax.interpreters", "jax.lib", "flax.linen.module", "flax.core.scope")


def is_private(dotted: str, last_is_module: bool = True) -> bool:
    """Whether a dotted path goes through a private module; its last part counts when it may be a module."""
    parts = dotted.split(".")
    if parts[0] == "jax_resnet_speed":
        return False  # our own underscore modules (data._cache, ...) are ours to change
    modules = parts if last_is_module else parts[:-1]
    return (any(part.startswith("_") and not part.startswith("__") for part in modules)
            or any(dotted == name or dotted.startswith(name + ".") for name in INTERNAL))


def private_uses(source: str) -> list[str]:
    """The private modules and names `source` imports, and private attributes it reads off imported modules."""
    found, modules = [], {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found += [alias.name] if is_private(alias.name) else []
                bound = alias.name if alias.asname else alias.name.split(".")[0]  # `import a.b` binds a
                modules[alias.asname or bound] = bound
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                found += [dotted] if is_private(dotted) else []
                modules[alias.asname or alias.name] = dotted
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            chain, base = [], node
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in modules:
                dotted = ".".join([modules[base.id], *reversed(chain)])
                found += [dotted] if is_private(dotted, last_is_module=False) else []
    return sorted(set(found))


def test_the_scan_finds_each_kind_of_private_use():
    assert private_uses("from jax._src import config") == ["jax._src.config"]
    assert private_uses("import flax.linen.module") == ["flax.linen.module"]
    assert private_uses("from optax import _src as s") == ["optax._src"]
    assert private_uses("import jax\nx = jax._src.xla_bridge.backends()") == ["jax._src.xla_bridge",
                                                                                  "jax._src.xla_bridge.backends"]
    assert private_uses("import numpy as np\nnp._core.multiarray") == ["numpy._core.multiarray"]
    assert private_uses("import jax.numpy as jnp\njnp._src.x") == ["jax.numpy._src.x"]
    assert private_uses("import jax\nfrom jax_resnet_speed.data import _cache\nstate._replace()\njax.tree.map\n"
                        "import torch\ntorch._foreach_add_(a, b)") == []


def test_the_package_imports_no_private_module():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    uses = {str(path.relative_to(PACKAGE)): private_uses(path.read_text()) for path in files}
    assert {name: found for name, found in uses.items() if found} == {}
