"""XLA's optimisation level on the CPU: compile time is most of a small run.

On a CPU, XLA compiles every program with LLVM at its highest optimisation level (3). For the
programs of this package that costs seconds to tens of seconds per program -- the trainer of
a network and its linearisation took 20 s to compile and 0.09 s to run -- while level 2
compiles it in 3-5 s and runs it as fast (the matrix products are library calls, compiled
once; only the fused element-wise loops are generated), with bit-identical results. A chapter
compiles dozens of programs, so on a CPU this package asks for level 2.

It sets ``--xla_backend_optimization_level=2`` in ``XLA_FLAGS`` when ``widenets`` is imported,
only where it can act and is wanted: the option is not set already, JAX has no accelerator
plugin installed (a CUDA, ROCm or TPU install keeps XLA's defaults) or ``JAX_PLATFORMS`` is
``cpu``, and ``WIDENETS_XLA_DEFAULTS`` is not ``1`` (the opt-out). XLA reads the flags when JAX
starts its first backend, so the flag acts when ``widenets`` is imported before JAX has run any
computation (as in every chapter); afterwards it changes nothing.
"""
from __future__ import annotations

import os
from importlib.util import find_spec

OPTION = "--xla_backend_optimization_level=2"
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda11_plugin", "jax_rocm60_plugin",
                       "jax_rocm7_plugin", "jax_plugins", "libtpu")


def _has_accelerator_plugin() -> bool:
    for name in ACCELERATOR_PLUGINS:
        try:
            if find_spec(name) is not None:
                return True
        except (ImportError, ValueError):
            continue
    return False


def fast_cpu_compile(environ=None) -> bool:
    """Add :data:`OPTION` to ``environ["XLA_FLAGS"]`` (default ``os.environ``) where it is
    wanted (see the module's doc); returns whether it did."""
    environ = os.environ if environ is None else environ
    if environ.get("WIDENETS_XLA_DEFAULTS") == "1":
        return False
    flags = environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" in flags:
        return False
    cpu_only = (environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu"
                or not _has_accelerator_plugin())
    if not cpu_only:
        return False
    environ["XLA_FLAGS"] = f"{flags} {OPTION}".strip()
    return True
