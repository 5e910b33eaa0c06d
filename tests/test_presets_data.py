"""widenets.presets, widenets.data and widenets.plotting.loglog_slope."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import widenets as wn
from widenets import data, plotting, presets


# ----------------------------------------------------------------------------- presets
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


def test_cpu_backend_without_environment_selects_the_cpu_preset(clean_env):
    assert jax.default_backend() == "cpu"             # conftest: JAX_PLATFORMS=cpu
    assert presets.name() == "cpu"


def test_invalid_preset_is_a_value_error_naming_widenets_preset(clean_env):
    clean_env.setenv("WIDENETS_PRESET", "tpu-pod")
    with pytest.raises(ValueError, match="WIDENETS_PRESET"):
        presets.name()


@pytest.mark.parametrize("preset, expected", [("ci", 1), ("cpu", 2), ("gpu", 3)])
def test_pick_returns_the_value_of_the_active_preset(clean_env, preset, expected):
    assert presets.pick(ci=1, cpu=2, gpu=3, preset=preset) == expected
    clean_env.setenv("WIDENETS_PRESET", preset)
    assert presets.pick(ci=1, cpu=2, gpu=3) == expected


def test_pick_falls_back_from_gpu_to_cpu(clean_env):
    assert presets.pick(ci=[64], cpu=[64, 256], preset="gpu") == [64, 256]
    clean_env.setenv("WIDENETS_PRESET", "gpu")
    assert presets.pick(ci=[64], cpu=[64, 256]) == [64, 256]


def test_pick_rejects_an_unknown_preset():
    with pytest.raises(ValueError, match="preset"):
        presets.pick(ci=1, cpu=2, preset="huge")


@pytest.mark.parametrize("preset", ["ci", "cpu", "gpu"])
def test_banner_mentions_the_preset(clean_env, preset):
    clean_env.setenv("WIDENETS_PRESET", preset)
    line = presets.banner()
    assert repr(preset) in line and jax.__version__ in line


# ----------------------------------------------------------------------------- data
def test_gaussian_task_shapes_normalised_rows_and_binary_targets():
    t = data.gaussian_task(jax.random.PRNGKey(0), 7, 5, P_test=3)
    assert t.X.shape == (7, 5) and t.y.shape == (7,)
    assert t.X_test.shape == (3, 5) and t.y_test.shape == (3,)
    for Xa in (t.X, t.X_test):
        np.testing.assert_allclose(np.sum(np.asarray(Xa) ** 2, axis=1), 5, rtol=1e-5)
    assert set(np.unique(np.concatenate([t.y, t.y_test]))) <= {-1.0, 1.0}
    no_test = data.gaussian_task(jax.random.PRNGKey(0), 7, 5)
    assert no_test.X_test is None and no_test.y_test is None


def test_gaussian_task_is_reproducible_with_the_same_key():
    a = data.gaussian_task(jax.random.PRNGKey(3), 9, 4, P_test=2)
    b = data.gaussian_task(jax.random.PRNGKey(3), 9, 4, P_test=2)
    c = data.gaussian_task(jax.random.PRNGKey(4), 9, 4, P_test=2)
    for field in ("X", "y", "X_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.allclose(a.X, c.X)


def test_gaussian_task_targets_are_both_signs():
    y = np.asarray(data.gaussian_task(jax.random.PRNGKey(1), 200, 3).y)
    assert 0.3 < np.mean(y > 0) < 0.7       # Bernoulli(1/2): 200 draws, std of the mean 0.035


@pytest.mark.parametrize("activation", ["tanh", "relu", "linear"])
def test_teacher_task_shapes_and_unit_variance_targets(activation):
    t = data.teacher_task(jax.random.PRNGKey(1), 50, 4, P_test=10, activation=activation)
    assert t.X.shape == (50, 4) and t.y.shape == (50,)
    assert t.X_test.shape == (10, 4) and t.y_test.shape == (10,)
    y_all = np.concatenate([t.y, t.y_test])          # standardised over train + test together
    assert abs(float(np.std(y_all)) - 1) < 1e-4 and abs(float(np.mean(y_all))) < 1e-5
    np.testing.assert_allclose(np.sum(np.asarray(t.X) ** 2, axis=1), 4, rtol=1e-5)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), P=st.integers(1, 12), D=st.integers(1, 12),
       scale=st.floats(1e-3, 1e3))
def test_input_kernel_has_unit_diagonal_on_normalised_inputs(seed, P, D, scale):
    X = scale * np.random.default_rng(seed).standard_normal((P, D))
    K = np.asarray(data.input_kernel(data.normalize(X)))
    assert K.shape == (P, P)
    np.testing.assert_allclose(np.diag(K), 1, rtol=1e-5)
    np.testing.assert_allclose(K, K.T, atol=1e-6)


def test_regression_1d_shapes_and_inputs_on_the_circle():
    t = data.regression_1d(12, P_test=30)
    assert t.X.shape == (12, 2) and t.y.shape == (12,)
    assert t.X_test.shape == (30, 2) and t.y_test.shape == (30,)
    np.testing.assert_allclose(np.sum(np.asarray(t.X) ** 2, axis=1), 2, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\bD\b"):
        data.regression_1d(12, D=3)


def test_samplers_reject_bad_sizes_by_name():
    with pytest.raises(ValueError, match=r"\bP\b"):
        data.gaussian_task(jax.random.PRNGKey(0), 0, 5)
    with pytest.raises(ValueError, match=r"\bD\b"):
        data.teacher_task(jax.random.PRNGKey(0), 5, 0)
    with pytest.raises(ValueError, match=r"\bnoise\b"):
        data.teacher_task(jax.random.PRNGKey(0), 5, 3, noise=-1.0)
    with pytest.raises(ValueError, match=r"\bname\b"):
        data.load_images("mnist")


def test_load_images_digits():
    xtr, ytr, xte, yte, source = data.load_images("digits", n_train=100, n_test=50)
    assert source == "digits"
    assert xtr.shape == (100, 8, 8, 1) and xte.shape == (50, 8, 8, 1)      # channels-last
    assert ytr.shape == (100,) and yte.shape == (50,)
    assert set(np.unique(np.asarray(ytr))) <= set(range(10))
    np.testing.assert_allclose(np.asarray(xtr).mean(0), 0, atol=1e-4)    # standardised per pixel
    flat = data.load_images("digits", n_train=20, n_test=10, flatten=True, classes=[0, 1])
    assert flat[0].shape == (20, 64) and set(np.unique(np.asarray(flat[1]))) <= {0, 1}


CIFAR_OFFLINE = r"""
import widenets as wn
xtr, ytr, xte, yte, source = wn.data.load_images("cifar10", n_train=20, n_test=10)
print("RESULT", source, xtr.shape, xte.shape)
"""


def test_load_images_cifar10_offline_falls_back_to_digits(tmp_path):
    """The download is made to fail fast and deterministically, whatever the machine: a fresh
    HOME / KERAS_HOME (no cached CIFAR-10) and every proxy pointed at a closed local port
    (urllib honours *_proxy, so the fetch is refused at once instead of waiting on the
    network). It runs in a subprocess (TensorFlow's import included, ~10 s) with a 60 s
    limit, and is skipped rather than allowed to hang if it takes longer."""
    env = dict(os.environ, HOME=str(tmp_path), KERAS_HOME=str(tmp_path / ".keras"),
               JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        env[var] = "http://127.0.0.1:9"
    for var in ("no_proxy", "NO_PROXY"):
        env.pop(var, None)
    try:
        out = subprocess.run([sys.executable, "-c", CIFAR_OFFLINE], env=env, capture_output=True,
                             text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.skip("the CIFAR-10 download attempt did not fail within 60 s")
    assert out.returncode == 0, out.stderr[-2000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")][-1]
    assert line == "RESULT digits (20, 8, 8, 1) (10, 8, 8, 1)"


# ----------------------------------------------------------------------------- plotting
@pytest.mark.parametrize("slope, prefactor", [(-0.5, 3.0), (1.0, 0.2), (2.5, 10.0)])
def test_loglog_slope_recovers_a_power_law(slope, prefactor):
    x = np.array([1.0, 2.0, 4.0, 8.0, 64.0])
    s, c = plotting.loglog_slope(x, prefactor * x ** slope)
    assert s == pytest.approx(slope, abs=1e-10)
    assert np.exp(c) == pytest.approx(prefactor, rel=1e-10)


@pytest.mark.parametrize("x, y", [([1.0, 2.0], [1.0, -1.0]), ([0.0, 2.0], [1.0, 2.0]),
                                  ([-1.0, 2.0], [1.0, 2.0]), ([1.0, 2.0], [0.0, 2.0])])
def test_loglog_slope_rejects_non_positive_input(x, y):
    with pytest.raises(ValueError, match="positive"):
        plotting.loglog_slope(x, y)


def test_package_exposes_its_modules():
    for mod in ("data", "kernels", "nets", "plotting", "presets", "widgets"):
        assert hasattr(wn, mod)
