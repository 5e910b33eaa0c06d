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
