"""How JAX compiles: the persistent compilation cache and the XLA option presets.

Both must be set before the first computation: XLA reads XLA_FLAGS when its backend starts, and
JAX fixes the cache directory when it first compiles.
"""

from __future__ import annotations

import os
import pathlib
import shlex

# How an epoch's steps are dispatched: "step", one call of the compiled train step per step from a
# Python loop; "epoch", every step of the epoch inside one compiled program (a fori_loop over the
# same step). The default per backend is the faster one measured (docs/results.md): on XLA:CPU the
# epoch program is many times slower, because the convolutions inside its loop body keep layouts that
# the CPU's Eigen kernels do not take (docs/speed.md). On a GPU, "step" until the battery says otherwise.
LOOPS = ("step", "epoch")
DEFAULT_LOOPS = {"cpu": "step", "gpu": "step"}

# XLA options per preset, added to XLA_FLAGS. "default" is XLA as it ships. Every jaxlib knows
# every backend's options and each backend reads only its own, so a preset lists them together.
# "fast" holds the candidates that the JAX/XLA documentation and issues name for a small convnet;
# docs/results.md records what each measurably did (scripts/gpu_battery.sh, parts bench and rest, measure them).
XLA_PRESETS: dict[str, tuple[str, ...]] = {
    "default": (),
    "fast": (
        # GPU: CUDA graphs for while loops too, so --loop epoch can launch one graph per epoch
        # instead of returning to the host at every iteration.
        "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL",
        # GPU: put even short runs of kernels into a graph (the default waits for 5).
        "--xla_gpu_graph_min_graph_size=1",
    ),
}

# Compile options for the program that runs once per run, the initialisation (random draws and the
# whitening filters). XLA:CPU compiles it without LLVM's optimisations about 6x faster, to the same
# values up to float32 rounding (a few elements 1 ulp apart: LLVM fuses some multiply-adds otherwise);
# myrtle-final at full width on the 2-core CPU: 40 s against 7.6 s of compiling, 8.7 s against 10.4 s
# of running, within that loaded machine's noise. Other backends compile it as they ship.
RUN_ONCE_OPTIONS: dict[str, dict[str, int]] = {"cpu": {"xla_backend_optimization_level": 0}}


def run_once_options(platform: str) -> dict[str, int]:
    """XLA compile options for a program that runs once per run on `platform` (jax.default_backend())."""
    return dict(RUN_ONCE_OPTIONS.get(platform, {}))


def default_compile_cache() -> pathlib.Path:
    """The xla/ folder of the user cache directory that also holds the decoded datasets."""
    from jax_resnet_speed import data

    return data.default_cache_dir() / "xla"


def apply_xla_preset(preset: str) -> tuple[str, ...]:
    """Append the preset's options to XLA_FLAGS (before JAX starts its backend); returns those added.

    Options the user already set in XLA_FLAGS win: a flag named there is not added again.
    """
    flags = XLA_PRESETS[preset]
    existing = os.environ.get("XLA_FLAGS", "")
    named = {item.split("=", 1)[0] for item in shlex.split(existing)}
    added = tuple(flag for flag in flags if flag.split("=", 1)[0] not in named)
    if added:
        os.environ["XLA_FLAGS"] = " ".join([existing, *added]).strip()
    return added


def enable_cache(directory: str | os.PathLike | None) -> None:
    """Use (or, with None, turn off) the persistent compilation cache for the programs compiled from now on.

    Every program is cached, however short its compile, so that a second run of the same command
    compiles nothing; on a GPU the cache also keeps XLA's autotuning results.
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    if directory is not None:
        pathlib.Path(directory).mkdir(parents=True, exist_ok=True)
        directory = str(directory)
    if jax.config.jax_compilation_cache_dir != directory:
        compilation_cache.reset_cache()  # JAX reads the directory once, when it first uses the cache
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_enable_compilation_cache", directory is not None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


_HIT, _MISS = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"
_counting: list["CacheCounter"] = []  # the counters entered now; one listener serves them all
_listening = False


def _on_event(event: str, **_) -> None:
    for counter in _counting:
        counter.hits += event == _HIT
        counter.misses += event == _MISS


class CacheCounter:
    """Counts the persistent cache's hits and misses while it is entered, from JAX's monitoring events."""

    def __init__(self) -> None:
        self.hits = self.misses = 0

    def __enter__(self) -> "CacheCounter":
        import jax.monitoring

        global _listening
        if not _listening:  # jax.monitoring cannot unregister one listener, so register it once
            jax.monitoring.register_event_listener(_on_event)
            _listening = True
        _counting.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _counting.remove(self)

    @property
    def state(self) -> str:
        """"cold": some program was compiled; "warm": none was (each came from the persistent cache or
        from memory); "no": the persistent cache is off."""
        import jax

        if not jax.config.jax_enable_compilation_cache or jax.config.jax_compilation_cache_dir is None:
            return "no"
        return "cold" if self.misses else "warm"
