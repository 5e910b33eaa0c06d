"""widenets.presets: which problem sizes a chapter runs at, and the package's layout."""
import jax
import pytest

import widenets as wn
from widenets import presets


@pytest.fixture
def clean_env(monkeypatch):
    """No preset chosen by the environment (`make test` itself sets WIDENETS_PRESET=ci)."""
    monkeypatch.delenv("WIDENETS_PRESET", raising=False)
    monkeypatch.delenv("CI", raising=False)
    return monkeypatch


@pytest.mark.parametrize("value, expected", [("ci", "ci"), ("cpu", "cpu"), ("gpu", "gpu"),
                                             (" GPU ", "gpu")])
def test_widenets_preset_environment_variable_chooses_the_preset(clean_env, value, expected):
    clean_env.setenv("WIDENETS_PRESET", value)
    clean_env.setenv("CI", "true")                    # the explicit choice wins over CI
    assert presets.name() == expected


@pytest.mark.parametrize("ci", ["true", "1", "yes", "TRUE"])
def test_ci_environment_selects_the_ci_preset(clean_env, ci):
    clean_env.setenv("CI", ci)
    assert presets.name() == "ci"
    assert presets.pick(ci=1, cpu=2, gpu=3) == 1


@pytest.mark.parametrize("ci", ["false", "0", ""])
def test_ci_false_does_not_select_the_ci_preset(clean_env, ci):
    clean_env.setenv("CI", ci)
    assert presets.name() == "cpu"


def test_cpu_backend_without_environment_selects_the_cpu_preset(clean_env):
    assert jax.default_backend() == "cpu"             # conftest: JAX_PLATFORMS=cpu
    assert presets.name() == "cpu"


@pytest.mark.parametrize("preset, expected", [("ci", 1), ("cpu", 2), ("gpu", 3)])
def test_pick_returns_the_value_of_the_active_preset(clean_env, preset, expected):
    assert presets.pick(ci=1, cpu=2, gpu=3, preset=preset) == expected
    clean_env.setenv("WIDENETS_PRESET", preset)
    assert presets.pick(ci=1, cpu=2, gpu=3) == expected


def test_pick_falls_back_from_gpu_to_cpu(clean_env):
    assert presets.pick(ci=[64], cpu=[64, 256], preset="gpu") == [64, 256]
    clean_env.setenv("WIDENETS_PRESET", "gpu")
    assert presets.pick(ci=[64], cpu=[64, 256]) == [64, 256]


@pytest.mark.parametrize("preset", ["ci", "cpu", "gpu"])
def test_banner_mentions_the_preset_jax_version_and_device(clean_env, preset):
    clean_env.setenv("WIDENETS_PRESET", preset)
    line = presets.banner()
    assert repr(preset) in line and jax.__version__ in line and "CPU" in line
    assert "float64 off" in line


def test_package_exposes_its_modules():
    for mod in ("data", "dmft", "kernels", "nets", "plotting", "presets", "widgets"):
        assert hasattr(wn, mod) and mod in wn.__all__


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("env", ["tpu-pod", "CPUS", "c i", "1"])
def test_an_invalid_preset_in_the_environment_is_a_value_error_naming_widenets_preset(
        clean_env, env):
    clean_env.setenv("WIDENETS_PRESET", env)
    with pytest.raises(ValueError, match=r"WIDENETS_PRESET must be one of \('ci', 'cpu', 'gpu'\)"):
        presets.name()
    with pytest.raises(ValueError, match="WIDENETS_PRESET"):
        presets.pick(ci=1, cpu=2)                     # pick reads the same variable


BAD_INPUTS = [
    pytest.param(presets.pick, dict(ci=1, cpu=2, preset=v), r"\bpreset must be one of",
                 id=f"pick-preset={v!r}")
    for v in ("huge", "GPU", "", 1, True, ["ci"], ("cpu",), b"ci")
]


@pytest.mark.parametrize("fn, kwargs, match", BAD_INPUTS)
def test_bad_input_raises_a_value_error_that_says_what_is_wrong(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(**kwargs)
