"""widenets.kernels: analytic kernels against wide networks, predictors, pNTK, metrics, checks.

neural-tangents compiles slowly on its first call, so its inputs stay small (P <= 10).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

import widenets as wn
from widenets import kernels, nets

P, D, P_TEST = 6, 10, 4
TASK = wn.data.gaussian_task(jax.random.PRNGKey(0), P, D, P_test=P_TEST)
X, Y, X_TEST = np.asarray(TASK.X), np.asarray(TASK.y), np.asarray(TASK.X_test)
KX = X @ X.T / D


def random_psd(seed, n=P, rank=None, ridge=0.0):
    """A random symmetric PSD (n, n) float64 matrix with eigenvalues of order one."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, rank or n))
    return A @ A.T / (rank or n) + ridge * np.eye(n)


# ----------------------------------------------------------------------------- analytic vs wide nets
WIDE_N, WIDE_SEEDS, DEPTH = 4096, 4, 2


@functools.lru_cache(maxsize=None)
def wide_kernels(activation, parameterization):
    """Kernels at initialisation of WIDE_SEEDS networks of width 4096, and the analytic ones."""
    net = nets.make_mlp(D, depth=DEPTH, width=WIDE_N, activation=activation,
                        parameterization=parameterization, gamma0=0.5)
    ks = nets.init_kernels(net, X, jax.random.PRNGKey(1), n_seeds=WIDE_SEEDS)
    return ks, kernels.analytic(X, depth=DEPTH, activation=activation)


# Tolerance: a finite network's kernels fluctuate around their limit with a relative size
# c / sqrt(N) (central limit theorem over the N neurons of each layer); measured here,
# c ~ 3 for the NTK of a depth-2 net (single seeds at N = 4096 are 0.02-0.06 off). The
# average of 4 independent seeds halves that: ~0.025, so 0.05 is about a 2-sigma bound on
# the fluctuation (fixed keys: the test is deterministic) and far below the O(1) error of a
# wrong kernel (a factor-2 error in one layer's term moves the NTK by > 0.2).
WIDE_TOL = 0.05


# relu, tanh, linear in both parameterisations; erf once (at initialisation the muP and NTK
# nets share their NTK exactly: ntk_scale * m_L^2 = 1/N in both)
WIDE_CASES = [(a, p) for a in ("relu", "tanh", "linear") for p in ("mup", "ntk")] + [("erf", "mup")]


@pytest.mark.parametrize("activation, parameterization", WIDE_CASES)
def test_analytic_ntk_is_the_wide_network_limit(activation, parameterization):
    ks, a = wide_kernels(activation, parameterization)
    assert ks.ntk.shape == (WIDE_SEEDS, P, P)
    assert float(kernels.relative_frobenius(ks.ntk.mean(0), a.ntk)) < WIDE_TOL


@pytest.mark.parametrize("activation, parameterization", WIDE_CASES)
def test_analytic_feature_kernels_are_the_wide_network_limit(activation, parameterization):
    ks, a = wide_kernels(activation, parameterization)
    assert a.phi.shape == (DEPTH, P, P)
    for l in range(DEPTH):
        assert float(kernels.relative_frobenius(ks.phi.mean(0)[l], a.phi[l])) < WIDE_TOL, l
    np.testing.assert_allclose(a.nngp, a.phi[-1], rtol=1e-6)   # the output covariance is Phi^L


@pytest.mark.parametrize("depth", [1, 3])
def test_linear_network_ntk_is_depth_plus_one_times_the_input_kernel(depth):
    """phi(h) = h: every Phi^l = Kx and every G^l = 1, so ntk = sum_{l=0}^{L} Kx = (L+1) Kx."""
    a = kernels.analytic(X, depth=depth, activation="linear")
    np.testing.assert_allclose(a.ntk, (depth + 1) * KX, rtol=1e-5, atol=1e-6)
    for l in range(depth):
        np.testing.assert_allclose(a.phi[l], KX, rtol=1e-5, atol=1e-6)


def test_analytic_rejects_test_inputs_of_another_dimension():
    with pytest.raises(ValueError, match=r"\bX2\b"):
        kernels.analytic(X, X[:, :3], depth=1)


# ----------------------------------------------------------------------------- predictors
@pytest.mark.parametrize("rank", [None, 3], ids=["full-rank", "rank-3"])
def test_gd_predictor_equals_the_explicit_gradient_descent_recursion(rank, x64):
    """delta[t+1] = (I - eta K / P) delta[t];  f_test[t+1] = f_test[t] + (eta/P) K_test delta[t].

    eta = 1.5 P / lambda_max makes the top mode oscillate in sign (1 - eta lambda/P = -0.5);
    the rank-3 kernel exercises the zero-eigenvalue branch of the test-set gain.
    """
    joint = random_psd(0, P + P_TEST, rank=rank)            # a kernel on train + test points
    K, K_test = joint[:P, :P], joint[P:, :P]
    eta = 1.5 * P / np.linalg.eigvalsh(K)[-1]
    y, steps = Y.astype(np.float64), 25
    f0, f0_test = np.linspace(-0.3, 0.2, P), np.linspace(0.1, 0.4, P_TEST)
    pred = kernels.gd_predictor(K, y, eta=eta, steps=steps, K_test=K_test, f0=f0, f0_test=f0_test)
    assert pred.f.shape == (steps + 1, P) and pred.f_test.shape == (steps + 1, P_TEST)
    delta, f_test = y - f0, f0_test.copy()
    for t in range(steps + 1):
        np.testing.assert_allclose(y - pred.f[t], delta, rtol=1e-9, atol=1e-10, err_msg=str(t))
        np.testing.assert_allclose(pred.f_test[t], f_test, rtol=1e-9, atol=1e-10, err_msg=str(t))
        f_test = f_test + eta / P * K_test @ delta
        delta = delta - eta / P * K @ delta


def test_gradient_flow_predictor_is_the_matrix_exponential_solution(x64):
    """f(t) = y - expm(-eta t K / P)(y - f0);
    f_test(t) = f0_test + K_test K^-1 (I - expm(-eta t K / P)) (y - f0)."""
    joint = random_psd(1, P + P_TEST, ridge=0.1)
    K, K_test = joint[:P, :P], joint[P:, :P]
    y, eta, times = Y.astype(np.float64), 0.05, [0, 10, 100, 1000]
    f0, f0_test = np.linspace(-0.3, 0.2, P), np.linspace(0.1, 0.4, P_TEST)
    flow = kernels.gradient_flow_predictor(K, y, eta=eta, t=times, K_test=K_test, f0=f0,
                                           f0_test=f0_test)
    assert flow.f.shape == (len(times), P) and flow.f_test.shape == (len(times), P_TEST)
    for i, t in enumerate(times):
        decay = scipy.linalg.expm(-eta * t * K / P)
        np.testing.assert_allclose(flow.f[i], y - decay @ (y - f0), atol=1e-9)
        gain = K_test @ np.linalg.solve(K, (np.eye(P) - decay) @ (y - f0))
        np.testing.assert_allclose(flow.f_test[i], f0_test + gain, atol=1e-9)


def test_gradient_descent_approaches_gradient_flow_linearly_in_eta(x64):
    """At a fixed time tau = eta t, discrete GD differs from the flow by O(eta): halving eta
    halves the gap (ratio ~2), and the gap is a small multiple of eta."""
    K = random_psd(2, ridge=0.1)
    y, tau = Y.astype(np.float64), 2.0 * P / np.linalg.eigvalsh(K)[-1]

    def gap(eta):
        steps = int(round(tau / eta))
        gd = kernels.gd_predictor(K, y, eta=eta, steps=steps)
        flow = kernels.gradient_flow_predictor(K, y, eta=eta, t=[steps])
        return float(np.max(np.abs(gd.f[-1] - flow.f[0])))

    eta = tau / 50
    g1, g2 = gap(eta), gap(eta / 2)
    assert g1 < 2 * eta
    assert 1.8 < g1 / g2 < 2.2


def test_max_learning_rate_is_two_p_over_the_top_eigenvalue_and_separates_convergence(x64):
    K = random_psd(3, ridge=0.2)
    y = Y.astype(np.float64)
    eta_max = kernels.max_learning_rate(K)
    assert eta_max == pytest.approx(2 * P / np.linalg.eigvalsh(K)[-1], rel=1e-12)
    steps = 3000
    stable = kernels.gd_predictor(K, y, eta=0.99 * eta_max, steps=steps)
    unstable = kernels.gd_predictor(K, y, eta=1.01 * eta_max, steps=steps)
    loss = lambda f: 0.5 * np.mean((np.asarray(f) - y) ** 2, axis=-1)
    # below eta_max every mode shrinks, so the loss never increases and reaches ~0 ...
    assert np.all(np.diff(loss(stable.f)) <= 1e-15) and loss(stable.f)[-1] < 1e-12
    # ... above it the top mode grows by |1 - 2.02| = 1.02 per step: 1.02^3000 ~ 1e25
    assert loss(unstable.f)[-1] > 1e20 * loss(unstable.f)[0]


# ----------------------------------------------------------------------------- full NTK and pNTK
@pytest.fixture(scope="module")
def one_logit():
    net = nets.make_mlp(D, depth=1, width=32, activation="relu", gamma0=0.8)
    return net, nets.init_params(net, jax.random.PRNGKey(2))


def test_pntk_of_one_logit_is_the_full_ntk(one_logit):
    net, params = one_logit
    full = kernels.full_ntk(net, params, X)
    assert full.shape == (P, P, 1, 1)
    approx = kernels.pntk(net, params, X)
    np.testing.assert_allclose(approx, full[..., 0, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full[..., 0, 0], nets.kernels(net, params, X).ntk, rtol=1e-4,
                               atol=1e-5)
    assert float(kernels.pntk_error(full, approx)) < 1e-5


def test_full_ntk_has_shape_p_p_o_o_and_block_symmetry():
    O = 3
    net = nets.make_mlp(D, depth=1, width=32, activation="tanh", n_out=O)
    params = nets.init_params(net, jax.random.PRNGKey(3))
    full = np.asarray(kernels.full_ntk(net, params, X))
    assert full.shape == (P, P, O, O)
    np.testing.assert_allclose(full, full.transpose(1, 0, 3, 2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full, nets.empirical_ntk(net, params, X), rtol=1e-4, atol=1e-5)
    # as a (P O, P O) matrix it is a Gram matrix: positive semi-definite
    flat = full.transpose(0, 2, 1, 3).reshape(P * O, P * O)
    assert np.linalg.eigvalsh((flat + flat.T) / 2)[0] > -1e-4 * np.abs(flat).max()
    err = float(kernels.pntk_error(full, kernels.pntk(net, params, X)))
    assert 0 < err < 1


# ----------------------------------------------------------------------------- metrics
def random_pair(seed, n):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n)), rng.standard_normal((n, n))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), n=st.integers(1, 8),
       c=st.floats(0.01, 100.0) | st.floats(-100.0, -0.01))
def test_alignment_is_a_scale_invariant_cosine(seed, n, c):
    A, B = random_pair(seed, n)
    assert float(kernels.alignment(A, A)) == pytest.approx(1.0, abs=1e-5)
    ab = float(kernels.alignment(A, B))
    assert -1 - 1e-5 <= ab <= 1 + 1e-5                                   # Cauchy-Schwarz
    assert float(kernels.alignment(B, A)) == pytest.approx(ab, abs=1e-5)  # symmetric
    assert float(kernels.alignment(c * A, B)) == pytest.approx(np.sign(c) * ab, abs=1e-5)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), n=st.integers(1, 8), c=st.floats(-10.0, 10.0))
def test_relative_frobenius_measures_distance_relative_to_the_reference(seed, n, c):
    A, B = random_pair(seed, n)
    assert float(kernels.relative_frobenius(B, B)) == 0.0
    assert float(kernels.relative_frobenius(c * B, B)) == pytest.approx(abs(c - 1), abs=1e-5)
    expected = np.linalg.norm(A - B) / np.linalg.norm(B)
    assert float(kernels.relative_frobenius(A, B)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("metric", [kernels.alignment, kernels.relative_frobenius])
def test_metrics_reject_matrices_of_different_shapes(metric):
    with pytest.raises(ValueError, match="same shape"):
        metric(np.eye(3), np.eye(4))


def test_target_alignment_of_the_target_kernel_is_one():
    assert float(kernels.target_alignment(np.outer(Y, Y), Y)) == pytest.approx(1.0, abs=1e-6)
    assert float(kernels.target_alignment(5.0 * np.outer(Y, Y), Y)) == pytest.approx(1.0, abs=1e-6)
    assert float(kernels.target_alignment(KX, Y)) < 1 - 1e-3


# ----------------------------------------------------------------------------- kernel checks
NON_SYMMETRIC = np.array([[1.0, 0.3], [0.0, 1.0]])
NOT_PSD = np.array([[1.0, 3.0], [3.0, 1.0]])         # eigenvalues 4 and -2


@pytest.mark.parametrize("call", [
    lambda K: kernels.gd_predictor(K, np.ones(len(K)), eta=0.1, steps=2),
    lambda K: kernels.gradient_flow_predictor(K, np.ones(len(K)), eta=0.1, t=[1.0]),
    lambda K: kernels.max_learning_rate(K),
], ids=["gd_predictor", "gradient_flow_predictor", "max_learning_rate"])
@pytest.mark.parametrize("K, message", [
    (NON_SYMMETRIC, "symmetric"),
    (NOT_PSD, "positive semi-definite"),
    (np.ones((2, 3)), "square"),
    (np.array([[1.0, np.nan], [np.nan, 1.0]]), "NaN"),
], ids=["non-symmetric", "not-psd", "not-square", "nan"])
def test_predictors_reject_kernels_that_are_not_symmetric_psd(call, K, message):
    with pytest.raises(ValueError, match=message):
        call(K)


def test_predictors_accept_the_float32_analytic_tanh_ntk():
    K = wide_kernels("tanh", "mup")[1].ntk
    assert K.dtype == jnp.float32
    Kn = np.asarray(K, np.float64)
    # premise: the asymmetry is float32 round-off (a few ulps), not a wrong kernel
    assert np.max(np.abs(Kn - Kn.T)) < 4 * np.finfo(np.float32).eps * np.abs(Kn).max()
    eta = kernels.max_learning_rate(K)
    pred = kernels.gd_predictor(K, Y, eta=0.5 * eta, steps=10)
    assert np.all(np.isfinite(np.asarray(pred.f)))


def test_gd_predictor_rejects_bad_arguments_by_name():
    K = random_psd(4)
    with pytest.raises(ValueError, match=r"\by\b"):
        kernels.gd_predictor(K, np.ones(P + 1), eta=0.1, steps=2)
    with pytest.raises(ValueError, match=r"\beta\b"):
        kernels.gd_predictor(K, Y, eta=-0.1, steps=2)
    with pytest.raises(ValueError, match=r"\bsteps\b"):
        kernels.gd_predictor(K, Y, eta=0.1, steps=0)
    with pytest.raises(ValueError, match=r"\bK_test\b"):
        kernels.gd_predictor(K, Y, eta=0.1, steps=2, K_test=np.ones((2, P + 1)))
