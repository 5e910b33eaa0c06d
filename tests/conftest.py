"""Shared test set-up: CPU-only JAX, quiet TensorFlow, a non-interactive matplotlib backend.

The environment defaults are set before anything imports JAX (pytest imports this file first).
Float64 is *not* switched on globally: tests that need it use ``jax.experimental.enable_x64()``
locally, or the ``x64`` fixture below, which restores the previous setting afterwards.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")
# JAX's persistent compilation cache is never used here (see the Makefile): with JAX 0.5.3 on
# the CPU a program read back from it returned wrong numbers (the deep linear propagator: 0.0)
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)

# `make test` runs two pytest-xdist workers side by side, and a chapter's kernel next to them.
# XLA sizes its thread pools by the CPUs a process may run on; with every process allowed on
# every core, a process of many small ops (a Monte-Carlo DMFT solve) waits for the cores at
# each op while another runs large matrix products (Chapter 4 took 1117 s instead of ~150 s in
# one make test). WIDENETS_PIN_WORKERS=1 (set by make test) gives worker gw<n> one core of its
# own, before JAX is imported; the chapter kernels it starts inherit it.
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if (os.environ.get("WIDENETS_PIN_WORKERS") == "1" and _worker.startswith("gw")
        and hasattr(os, "sched_setaffinity")):
    _cpus = sorted(os.sched_getaffinity(0))
    if len(_cpus) > 1:
        os.sched_setaffinity(0, {_cpus[int(_worker[2:]) % len(_cpus)]})

# XLA's CPU optimisation level 2 (widenets/_xla_flags.py), set before any test computes: a test
# module that runs JAX before importing widenets would otherwise compile at level 3
from widenets._xla_flags import fast_cpu_compile  # noqa: E402

fast_cpu_compile()

import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Float64 for the duration of one test (the previous value is restored)."""
    import jax
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Free every compiled XLA program after each test module.

    Each program XLA compiles for the CPU stays mapped into the process (a few memory mappings
    per program, dozens for a Monte-Carlo DMFT pass) until its cache entry is dropped, and
    Linux allows 65530 mappings per process (vm.max_map_count): a single pytest process
    running the whole suite passed 65000 in tests/test_kernels.py and then crashed with a
    segmentation fault inside the compiler. Tests share compilations within a module, hardly
    across modules, so clearing JAX's caches between modules costs little and keeps every
    worker far below the limit.
    """
    yield
    import gc

    import jax
    jax.clear_caches()
    gc.collect()
