"""widenets._xla_flags: XLA's CPU optimisation level 2, set at import where it can act."""
import os
import subprocess
import sys

import pytest

from widenets import _xla_flags


@pytest.fixture
def no_plugin(monkeypatch):
    monkeypatch.setattr(_xla_flags, "_has_accelerator_plugin", lambda: False)


def test_adds_the_option_on_a_cpu_only_install_keeping_other_flags(no_plugin):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    assert _xla_flags.fast_cpu_compile(env)
    assert env["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=4 "
                                "--xla_backend_optimization_level=2")
    env = {}
    assert _xla_flags.fast_cpu_compile(env) and env["XLA_FLAGS"] == _xla_flags.OPTION
    assert not _xla_flags.fast_cpu_compile(env)         # once only
    assert env["XLA_FLAGS"] == _xla_flags.OPTION


def test_leaves_a_level_the_user_chose_and_honours_the_opt_out(no_plugin):
    env = {"XLA_FLAGS": "--xla_backend_optimization_level=3"}
    assert not _xla_flags.fast_cpu_compile(env)
    assert env["XLA_FLAGS"] == "--xla_backend_optimization_level=3"
    env = {"WIDENETS_XLA_DEFAULTS": "1"}
    assert not _xla_flags.fast_cpu_compile(env) and "XLA_FLAGS" not in env


def test_keeps_xla_defaults_where_an_accelerator_plugin_is_installed(monkeypatch):
    monkeypatch.setattr(_xla_flags, "_has_accelerator_plugin", lambda: True)
    env = {}
    assert not _xla_flags.fast_cpu_compile(env) and "XLA_FLAGS" not in env
    env = {"JAX_PLATFORMS": "cpu"}                  # ... unless JAX is told to use the CPU
    assert _xla_flags.fast_cpu_compile(env) and env["XLA_FLAGS"] == _xla_flags.OPTION


def test_importing_widenets_sets_it_before_jax_starts():
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "WIDENETS_XLA_DEFAULTS")}
    code = ("import jax, widenets, os; from jax._src import xla_bridge as xb; "
            "print(os.environ.get('XLA_FLAGS')); print(bool(xb._backends))")
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, JAX_PLATFORMS="cpu"),
                         capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == _xla_flags.OPTION
    assert out[1] == "False"        # no backend started by the import: the flag will act
