"""Result files: written atomically, JSON with non-finite numbers as null, the environment a
result records, and the histogram of a merged result."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from typing import Any


def environment() -> dict:
    import flax
    import jax
    import jaxlib
    import optax

    device = jax.devices()[0]
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "backend": jax.default_backend(),
            "device_kind": device.device_kind, "device_count": jax.device_count()}


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write_atomically(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write through `write(handle)` into a temp file beside `path`, then rename it over `path`.

    The file gets an ordinary new file's permissions under the umask (a temp file starts 0600).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(mode, dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                         delete=False)
    try:
        with handle:
            write(handle)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(handle.name, 0o666 & ~umask)
        os.replace(handle.name, path)
    except BaseException:
        os.unlink(handle.name)
        raise


def write_json(path: str | os.PathLike, payload: dict) -> None:
    """Write atomically (write_atomically), non-finite numbers as null."""
    def dump(handle) -> None:
        json.dump(_finite_or_none(payload), handle, indent=2)
        handle.write("\n")

    write_atomically(path, dump)


def histogram(merged: dict, target: float, path: str) -> None:
    """Final accuracies of the completed runs, the target marked."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accuracies = [r["final_accuracy"] for r in merged["runs"] if r["status"] == "completed"]
    summary = merged["summary"]
    figure, axes = plt.subplots(figsize=(6.5, 4))
    axes.hist(accuracies, bins=max(5, min(40, len(accuracies) // 3)), color="C0", alpha=0.8)
    axes.axvline(target, color="C3", linestyle="--", label=f"target {target:.2%}")
    if summary["ci95_accuracy"]:
        axes.axvspan(*summary["ci95_accuracy"], color="grey", alpha=0.3, label="95% CI of the mean")
    axes.set(xlabel="final test accuracy", ylabel="runs",
             title=f"{summary['completed_runs']} runs, {summary['runs_reaching_target']}/{summary['finished_runs']} "
                   f"reached the target")
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    write_atomically(path, lambda handle: handle.write(buffer.getvalue()), mode="wb")
