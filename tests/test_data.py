"""widenets.data: the toy tasks, the input kernel and the small image data sets."""
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from widenets import data


# ----------------------------------------------------------------------------- Gaussian task
def test_gaussian_task_shapes_normalised_rows_and_binary_targets():
    t = data.gaussian_task(jax.random.PRNGKey(0), 7, 5, P_test=3)
    assert t.X.shape == (7, 5) and t.y.shape == (7,)
    assert t.X_test.shape == (3, 5) and t.y_test.shape == (3,)
    for Xa in (t.X, t.X_test):
        np.testing.assert_allclose(np.sum(np.asarray(Xa) ** 2, axis=1), 5, rtol=1e-5)
    assert set(np.unique(np.concatenate([t.y, t.y_test]))) <= {-1.0, 1.0}
    no_test = data.gaussian_task(jax.random.PRNGKey(0), 7, 5)
    assert no_test.X_test is None and no_test.y_test is None


def test_gaussian_task_is_reproducible_with_the_same_key_and_accepts_an_integer_seed():
    a = data.gaussian_task(jax.random.PRNGKey(3), 9, 4, P_test=2)
    b = data.gaussian_task(jax.random.PRNGKey(3), 9, 4, P_test=2)
    c = data.gaussian_task(jax.random.PRNGKey(4), 9, 4, P_test=2)
    d = data.gaussian_task(3, 9, 4, P_test=2)                 # an int seed is PRNGKey(seed)
    for field in ("X", "y", "X_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        np.testing.assert_array_equal(getattr(a, field), getattr(d, field))
    assert not np.allclose(a.X, c.X)


def test_gaussian_task_targets_are_both_signs():
    y = np.asarray(data.gaussian_task(jax.random.PRNGKey(1), 200, 3).y)
    assert 0.3 < np.mean(y > 0) < 0.7       # Bernoulli(1/2): 200 draws, std of the mean 0.035


# ----------------------------------------------------------------------------- teacher task
@pytest.mark.parametrize("activation", ["tanh", "relu", "linear"])
@pytest.mark.parametrize("noise", [0.0, 0.5, 2.0])
def test_teacher_task_targets_have_zero_mean_and_unit_variance_at_any_noise(activation, noise):
    """The docstring's promise: unit-variance targets. Before the fix the noise was added after
    standardising, so the variance was 1 + noise^2 (1.25 and 5 here)."""
    t = data.teacher_task(jax.random.PRNGKey(1), 50, 4, P_test=10, activation=activation,
                          noise=noise)
    assert t.X.shape == (50, 4) and t.y.shape == (50,)
    assert t.X_test.shape == (10, 4) and t.y_test.shape == (10,)
    y_all = np.concatenate([t.y, t.y_test])          # standardised over train + test together
    assert abs(float(np.std(y_all)) - 1) < 1e-4 and abs(float(np.mean(y_all))) < 1e-5
    np.testing.assert_allclose(np.sum(np.asarray(t.X) ** 2, axis=1), 4, rtol=1e-5)


def test_teacher_targets_are_the_standardised_teacher_plus_the_stated_amount_of_noise():
    """Same key: the noiseless targets are act(beta . x / sqrt(D)) standardised (recomputed here
    from the inputs and the key's beta); with noise, the residual from the noiseless targets
    (after undoing the final rescaling) has standard deviation `noise`."""
    key, P, D, noise = jax.random.PRNGKey(7), 2000, 6, 0.5
    clean = data.teacher_task(key, P, D)
    noisy = data.teacher_task(key, P, D, noise=noise)
    np.testing.assert_array_equal(clean.X, noisy.X)
    beta = np.asarray(jax.random.normal(jax.random.split(key, 3)[1], (D,)), np.float64)
    z = np.tanh(np.asarray(clean.X, np.float64) @ beta / np.sqrt(D))
    np.testing.assert_allclose(clean.y, (z - z.mean()) / z.std(), atol=1e-5)
    # noisy = (clean + noise * n - mean) / s with s = std(clean + noise * n) ~ sqrt(1 + noise^2)
    s = np.sqrt(1 + noise ** 2)
    residual = np.asarray(noisy.y) * s - np.asarray(clean.y)
    assert np.std(residual) == pytest.approx(noise, rel=0.06)     # 2000 draws: 1.6% s.e.
    assert np.corrcoef(clean.y, noisy.y)[0, 1] == pytest.approx(1 / s, abs=0.03)


def test_teacher_task_without_noise_is_bit_identical_to_the_formula_before_the_fix():
    """Chapter 2 uses noise = 0: its targets must not move. The old formula, written out here:
    (z - mean z) / (std z + 1e-12) + 0 * noise draw."""
    key, P, D = jax.random.PRNGKey(0), 32, 20
    t = data.teacher_task(key, P, D, P_test=100)
    _, kb, kn = jax.random.split(key, 3)
    X = jnp.concatenate([t.X, t.X_test])
    z = jnp.tanh(X @ jax.random.normal(kb, (D,)) / jnp.sqrt(D))
    old = (z - z.mean()) / (z.std() + 1e-12) + 0.0 * jax.random.normal(kn, z.shape)
    np.testing.assert_array_equal(np.concatenate([t.y, t.y_test]), old)


# ----------------------------------------------------------------------------- kernels, circle
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), P=st.sampled_from([1, 3, 7]), D=st.sampled_from([1, 4]),
       log_scale=st.floats(-30, 30))
def test_input_kernel_has_unit_diagonal_on_normalised_inputs_of_any_scale(seed, P, D, log_scale):
    """normalize() rescales rows of any size, even 1e-30 or 1e30 whose squares leave float32."""
    X = (10.0 ** log_scale * np.random.default_rng(seed).standard_normal((P, D))).astype(np.float32)
    K = np.asarray(data.input_kernel(data.normalize(X)))
    assert K.shape == (P, P)
    np.testing.assert_allclose(np.diag(K), 1, rtol=1e-5)
    np.testing.assert_allclose(K, K.T, atol=1e-6)


def test_input_kernel_is_x_xt_over_d():
    X = np.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(data.input_kernel(X), X @ X.T / 4, rtol=1e-6)


def test_regression_1d_shapes_targets_and_inputs_on_the_circle():
    t = data.regression_1d(12, P_test=30)
    assert t.X.shape == (12, 2) and t.y.shape == (12,)
    assert t.X_test.shape == (30, 2) and t.y_test.shape == (30,)
    np.testing.assert_allclose(np.sum(np.asarray(t.X) ** 2, axis=1), 2, rtol=1e-5)
    theta = np.arctan2(np.asarray(t.X)[:, 1], np.asarray(t.X)[:, 0])
    np.testing.assert_allclose(t.y, np.sin(2 * theta), atol=1e-5)      # target fn(2 theta)
    cos = data.regression_1d(5, P_test=0, fn=np.cos)
    assert cos.X_test.shape == (0, 2)


# ----------------------------------------------------------------------------- images
def test_load_images_digits():
    xtr, ytr, xte, yte, source = data.load_images("digits", n_train=100, n_test=50)
    assert source == "digits"
    assert xtr.shape == (100, 8, 8, 1) and xte.shape == (50, 8, 8, 1)      # channels-last
    assert ytr.shape == (100,) and yte.shape == (50,)
    assert set(np.unique(np.asarray(ytr))) <= set(range(10))
    np.testing.assert_allclose(np.asarray(xtr).mean(0), 0, atol=1e-4)    # standardised per pixel
    assert all(np.all(np.isfinite(np.asarray(a))) for a in (xtr, xte))
    flat = data.load_images("digits", n_train=20, n_test=10, flatten=True, classes=[0, 1])
    assert flat[0].shape == (20, 64) and set(np.unique(np.asarray(flat[1]))) <= {0, 1}
    assert set(np.unique(np.asarray(flat[3]))) <= {0, 1}


def test_load_images_says_when_it_has_fewer_images_than_asked():
    with pytest.warns(UserWarning, match=r"digits has \d+ training .*n_train=5000"):
        xtr, *_ = data.load_images("digits", n_train=5000, n_test=10, classes=[3])
    assert 0 < len(xtr) < 5000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.load_images("digits", n_train=10, n_test=10)


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


# ----------------------------------------------------------------------------- resource limits
@pytest.mark.parametrize("call, argname", [
    (lambda: data.gaussian_task(0, 10 ** 4, 100), "P, P_test or D"),
    (lambda: data.teacher_task(0, 100, 10 ** 4), "P, P_test or D"),
    (lambda: data.regression_1d(10, P_test=10 ** 5), "P or P_test"),
    (lambda: data.input_kernel(np.ones((10 ** 3, 2))), "rows of X"),
], ids=["gaussian_task", "teacher_task", "regression_1d", "input_kernel"])
def test_requests_beyond_the_memory_limit_are_refused_before_allocating(monkeypatch, call,
                                                                        argname):
    monkeypatch.setenv("WIDENETS_MEMORY_LIMIT", str(2 ** 20))
    with pytest.raises(ValueError, match=rf"would need about .*reduce .*{argname}"):
        call()


def test_a_truly_huge_task_is_refused_against_the_real_limit(monkeypatch):
    monkeypatch.delenv("WIDENETS_MEMORY_LIMIT", raising=False)
    with pytest.raises(ValueError, match=r"GiB.*available here"):
        data.gaussian_task(0, 10 ** 9, 1000)


# ----------------------------------------------------------------------------- bad input
KEYS = jax.random.split(jax.random.PRNGKey(0), 2)
TASK_ARGS = dict(key=0, P=5, D=3)
IMAGES = dict(name="digits", n_train=10, n_test=5)
NAN_X = np.array([[1.0, np.nan], [0.5, 0.5]])


def _bad(fn, base, match, /, **change):
    label = "-".join(f"{k}={v!r}"[:24] for k, v in change.items())
    return pytest.param(fn, {**base, **change}, match, id=f"{fn.__name__}-{label}")


BAD_INPUTS = [
    *[_bad(fn, TASK_ARGS, m, **c) for fn in (data.gaussian_task, data.teacher_task) for m, c in (
        (r"\bP must be an integer", dict(P=0)),
        (r"\bP must be an integer", dict(P=-5)),
        (r"\bP must be an integer", dict(P=5.5)),
        (r"\bP must be an integer", dict(P="5")),
        (r"\bP must be an integer", dict(P=True)),
        (r"\bD must be an integer", dict(D=0)),
        (r"\bD must be an integer", dict(D=3.0)),
        (r"\bD must be an integer", dict(D=None)),
        (r"\bP_test must be an integer >= 0", dict(P_test=-1)),
        (r"\bP_test must be an integer", dict(P_test=2.5)),
        (r"\bkey must be a JAX PRNG key", dict(key="seed")),
        (r"\bkey must be a JAX PRNG key", dict(key=None)),
        (r"\bkey must be a JAX PRNG key", dict(key=1.5)),
        (r"\bkey must be a JAX PRNG key", dict(key=KEYS)),
        (r"\bkey: an integer seed must fit", dict(key=2 ** 80)),
        (r"would need about .*reduce P, P_test or D", dict(P=10 ** 12)),
    )],
    *[_bad(data.teacher_task, TASK_ARGS, m, **c) for m, c in (
        (r"\bnoise must be", dict(noise=-1.0)),
        (r"\bnoise must be", dict(noise=np.nan)),
        (r"\bnoise must be", dict(noise="0.1")),
        (r"\bnoise must be", dict(noise=True)),
        (r"\bactivation must be one of", dict(activation="sigmoid")),
        (r"\bactivation must be one of", dict(activation=None)),
        (r"needs P \+ P_test >= 2", dict(P=1)),
    )],
    *[_bad(data.regression_1d, {"P": 8}, m, **c) for m, c in (
        (r"\bP must be an integer", dict(P=0)),
        (r"\bP must be an integer", dict(P=4.0)),
        (r"\bP_test must be an integer >= 0", dict(P_test=-2)),
        (r"\bP_test must be an integer", dict(P_test=1.5)),
        (r"\bD must be 2", dict(D=3)),
        (r"\bD must be 2", dict(D=True)),
        (r"\bfn must be a function", dict(fn="sin")),
        (r"\bfn\(2 theta\) contains NaN", dict(fn=lambda t: np.where(t > 3, np.nan, t))),
        (r"\bfn\(2 theta\) must have shape \(8,\)", dict(fn=lambda t: t[:3])),
        (r"\bfn\(2 theta\) must be an array of real", dict(fn=lambda t: t.astype(str))),
    )],
    *[_bad(fn, {"X": NAN_X}, m, **c) for fn in (data.normalize, data.input_kernel) for m, c in (
        (r"\bX contains NaN", {}),
        (r"\bX must have shape \(P, D\)", dict(X=np.ones(3))),
        (r"\bX must have shape \(P, D\)", dict(X=np.ones((0, 3)))),
        (r"\bX must be an array of real", dict(X=[["a", "b"]])),
        (r"\bX must be an array of real", dict(X=None)),
    )],
    _bad(data.normalize, {}, r"\bX has rows of zeros", X=np.array([[1.0, 2.0], [0.0, 0.0]])),
    _bad(data.input_kernel, {}, r"X X\^T / D overflows", X=np.full((2, 2), 1e30, np.float32)),
    *[_bad(data.load_images, IMAGES, m, **c) for m, c in (
        (r"\bname must be one of", dict(name="mnist")),
        (r"\bname must be one of", dict(name=None)),
        (r"\bn_train must be an integer >= 1", dict(n_train=-5)),
        (r"\bn_train must be an integer >= 1", dict(n_train=0)),
        (r"\bn_train must be an integer", dict(n_train=10.5)),
        (r"\bn_train must be an integer", dict(n_train="10")),
        (r"\bn_test must be an integer >= 0", dict(n_test=-1)),
        (r"\bclasses must be labels in 0\.\.9", dict(classes=[99])),
        (r"\bclasses must be labels in 0\.\.9", dict(classes=[0, 10])),
        (r"\bclasses must be an integer >= 0", dict(classes=[-1])),
        (r"\bclasses must be an integer", dict(classes=["cat"])),
        (r"\bclasses must be an integer", dict(classes=[1.5])),
        (r"\bclasses must hold at least 1", dict(classes=[])),
        (r"\bclasses must not repeat", dict(classes=[3, 3])),
        (r"\bclasses must be a list", dict(classes="01")),
        (r"\bflatten must be True or False", dict(flatten="yes")),
        (r"\bflatten must be True or False", dict(flatten=1)),
        (r"\bseed must be an integer >= 0", dict(seed=-1)),
        (r"\bseed must be an integer", dict(seed=0.5)),
    )],
]


@pytest.mark.parametrize("fn, kwargs, match", BAD_INPUTS)
def test_bad_input_raises_a_value_error_that_says_what_is_wrong(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(**kwargs)
