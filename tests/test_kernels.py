"""widenets.kernels: analytic kernels against wide networks, predictors, pNTK, metrics, checks.

neural-tangents compiles slowly on its first call, so its inputs stay small (P <= 10).
"""
import functools
import re
import warnings

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


# muP for every activation; the NTK parameterisation has exactly the same kernels at
# initialisation (ntk_scale * m_L^2 = 1/N in both), checked at small width below.
WIDE_CASES = ["relu", "tanh", "linear", "erf"]


@pytest.mark.parametrize("activation", WIDE_CASES)
def test_analytic_kernels_are_the_wide_network_limit(activation):
    ks, a = wide_kernels(activation, "mup")
    assert ks.ntk.shape == (WIDE_SEEDS, P, P) and a.phi.shape == (DEPTH, P, P)
    assert float(kernels.relative_frobenius(ks.ntk.mean(0), a.ntk)) < WIDE_TOL
    for l in range(DEPTH):
        assert float(kernels.relative_frobenius(ks.phi.mean(0)[l], a.phi[l])) < WIDE_TOL, l
    assert all(bool(jnp.all(jnp.isfinite(k))) for k in (*a, *ks))


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_ntk_parameterisation_has_the_mup_kernels_at_initialisation(activation):
    """Same key, any gamma0: identical Phi, G and NTK (so the wide-network limit tested for muP
    holds for the NTK parameterisation too)."""
    kw = dict(depth=2, width=64, activation=activation)
    a = nets.init_kernels(nets.make_mlp(D, parameterization="mup", gamma0=0.5, **kw), X, 1,
                          n_seeds=2)
    b = nets.init_kernels(nets.make_mlp(D, parameterization="ntk", gamma0=3.0, **kw), X, 1,
                          n_seeds=2)
    for field in ("ntk", "phi"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-5, atol=1e-7)
    # G is measured in units of the readout multiplier: G_mup / G_ntk = (m_ntk / m_mup)^2 = 1
    np.testing.assert_allclose(a.g, b.g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_analytic_layer_kernels_are_the_nngp_of_the_truncated_network(activation):
    """analytic() propagates one kernel through the layers; Phi^l must equal the NNGP of the
    depth-l network built whole by stax_mlp (an independent neural-tangents evaluation), the
    NNGP of the full network is Phi^L, and the test-point kernels use the same path."""
    a = kernels.analytic(X_TEST, X, depth=3, activation=activation)
    assert a.ntk.shape == (P_TEST, P) and a.phi.shape == (3, P_TEST, P)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for l in range(1, 4):
            whole = kernels.stax_mlp(l, activation)[2](X_TEST, X, ("nngp", "ntk"))
            np.testing.assert_allclose(a.phi[l - 1], whole.nngp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.ntk, whole.ntk, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.nngp, a.phi[-1], rtol=1e-6)      # the output covariance is Phi^L


@pytest.mark.parametrize("depth", [1, 3])
def test_linear_network_ntk_is_depth_plus_one_times_the_input_kernel(depth):
    """phi(h) = h: every Phi^l = Kx and every G^l = 1, so ntk = sum_{l=0}^{L} Kx = (L+1) Kx."""
    a = kernels.analytic(X, depth=depth, activation="linear")
    np.testing.assert_allclose(a.ntk, (depth + 1) * KX, rtol=1e-5, atol=1e-6)
    for l in range(depth):
        np.testing.assert_allclose(a.phi[l], KX, rtol=1e-5, atol=1e-6)


def test_relu_layer_kernel_is_the_arc_cosine_kernel():
    """One ReLU layer: Phi^1(x, x') = (sqrt(k k') / 2 pi) (sin t + (pi - t) cos t), with
    cos t = Kx(x, x') / sqrt(k k') (Cho & Saul's arc-cosine kernel, written out here)."""
    k = np.diag(KX)
    norm = np.sqrt(np.outer(k, k))
    t = np.arccos(np.clip(KX / norm, -1, 1))
    expected = norm / (2 * np.pi) * (np.sin(t) + (np.pi - t) * np.cos(t))
    np.testing.assert_allclose(kernels.analytic(X, depth=1).phi[0], expected, rtol=1e-4, atol=1e-6)


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
    # a single time may be given as a number
    one = kernels.gradient_flow_predictor(K, y, eta=eta, t=100, f0=f0)
    np.testing.assert_allclose(one.f[0], flow.f[2], atol=1e-12)


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
    with pytest.warns(RuntimeWarning, match="above the stable learning rate"):
        unstable = kernels.gd_predictor(K, y, eta=1.01 * eta_max, steps=steps)
    loss = lambda f: 0.5 * np.mean((np.asarray(f) - y) ** 2, axis=-1)
    # below eta_max every mode shrinks, so the loss never increases and reaches ~0 ...
    assert np.all(np.diff(loss(stable.f)) <= 1e-15) and loss(stable.f)[-1] < 1e-12
    # ... above it the top mode grows by |1 - 2.02| = 1.02 per step: 1.02^3000 ~ 1e25
    assert loss(unstable.f)[-1] > 1e20 * loss(unstable.f)[0]


def test_gd_predictor_above_the_stable_rate_warns_naming_eta_and_the_rate():
    """Far above 2P/lambda_max the float32 prediction overflows: no silent inf, a warning that
    gives eta, the stable rate and the growth factor per step (and says it overflowed)."""
    K = random_psd(4, ridge=0.1).astype(np.float32)
    eta_max = 2 * P / np.linalg.eigvalsh(K.astype(np.float64))[-1]
    with pytest.warns(RuntimeWarning) as rec:
        pred = kernels.gd_predictor(K, Y, eta=4 * eta_max, steps=200)
    msg = str(rec[0].message)
    rate = float(re.search(r"2P/lambda_max\(K\) = ([0-9.e+-]+)", msg).group(1))
    assert rate == pytest.approx(eta_max, rel=1e-3)
    assert f"eta={4 * eta_max:g}" in msg and "grows by" in msg and "overflows" in msg
    assert not np.all(np.isfinite(np.asarray(pred.f)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # at 0.99 eta_max: silent
        kernels.gd_predictor(K, Y, eta=0.99 * eta_max, steps=200)


def test_predictors_accept_the_float32_analytic_tanh_ntk():
    K = wide_kernels("tanh", "mup")[1].ntk
    assert K.dtype == jnp.float32
    Kn = np.asarray(K, np.float64)
    # premise: the asymmetry is float32 round-off (a few ulps), not a wrong kernel
    assert np.max(np.abs(Kn - Kn.T)) < 4 * np.finfo(np.float32).eps * np.abs(Kn).max()
    eta = kernels.max_learning_rate(K)
    pred = kernels.gd_predictor(K, Y, eta=0.5 * eta, steps=10)
    assert np.all(np.isfinite(np.asarray(pred.f)))


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
    # between two input sets: the (X, X_test) block of the NTK of all the inputs
    cross = kernels.full_ntk(net, params, X, X_TEST)
    joint = nets.kernels(net, params, np.vstack([X, X_TEST])).ntk
    np.testing.assert_allclose(cross[..., 0, 0], joint[:P, P:], rtol=1e-4, atol=1e-5)


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


def test_full_ntk_and_pntk_trace_under_jit(one_logit):
    """Chapter 1 times them inside jax.jit with traced weights: the checks let tracers pass."""
    net, params = one_logit
    jitted = jax.jit(lambda p: kernels.pntk(net, p, X))(params)
    np.testing.assert_allclose(jitted, kernels.pntk(net, params, X), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- metrics
def random_pair(seed, n):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n)), rng.standard_normal((n, n))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), n=st.integers(1, 8),
       c=st.floats(0.01, 100.0) | st.floats(-100.0, -0.01))
def test_alignment_is_a_scale_invariant_cosine(seed, n, c):
    A, B = random_pair(seed, n)
    assert float(kernels.alignment(A, A)) == pytest.approx(1.0, abs=1e-12)
    ab = float(kernels.alignment(A, B))
    assert -1 - 1e-12 <= ab <= 1 + 1e-12                                  # Cauchy-Schwarz
    assert float(kernels.alignment(B, A)) == pytest.approx(ab, abs=1e-12)  # symmetric
    assert float(kernels.alignment(c * A, B)) == pytest.approx(np.sign(c) * ab, abs=1e-12)


@pytest.mark.parametrize("n", [1, 4, 9])
def test_alignment_closed_forms(n):
    """<I, 1 1^T> = n, |I| = sqrt(n), |1 1^T| = n: alignment 1/sqrt(n); disjoint supports: 0."""
    assert float(kernels.alignment(np.eye(n), np.ones((n, n)))) == pytest.approx(n ** -0.5)
    E = np.zeros((n + 1, n + 1))
    F = E.copy()
    E[0, 0], F[-1, -1] = 2.0, 3.0
    assert float(kernels.alignment(E, F)) == 0.0


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 8), s=st.floats(1e-6, 1e3), c=st.floats(-10.0, 10.0))
def test_relative_frobenius_closed_forms(n, s, c):
    """|c B - B| / |B| = |c - 1|; and I + s E_11 against I: s / sqrt(n) (float64 throughout,
    so even a difference 1e-6 of the reference is resolved to 1e-9 relative)."""
    B = np.eye(n)
    assert float(kernels.relative_frobenius(B, B)) == 0.0
    assert float(kernels.relative_frobenius(c * B, B)) == pytest.approx(abs(c - 1), rel=1e-12,
                                                                         abs=1e-15)
    A = B.copy()
    A[0, 0] += s
    assert float(kernels.relative_frobenius(A, B)) == pytest.approx(s / np.sqrt(n), rel=1e-9)


def test_metrics_give_the_same_answer_under_jit():
    A, B = random_pair(0, 5)
    for metric in (kernels.alignment, kernels.relative_frobenius):
        eager = float(metric(A, B))
        traced = float(jax.jit(metric)(jnp.asarray(A), jnp.asarray(B)))
        assert traced == pytest.approx(eager, rel=1e-5), metric.__name__


def test_target_alignment_of_the_target_kernel_is_one():
    assert float(kernels.target_alignment(np.outer(Y, Y), Y)) == pytest.approx(1.0, abs=1e-12)
    assert float(kernels.target_alignment(5.0 * np.outer(Y, Y), Y)) == pytest.approx(1.0, abs=1e-12)
    assert float(kernels.target_alignment(KX, Y)) < 1 - 1e-3
    # y^T K y / (|K|_F |y|^2) written out, in float64 like the metric (KX and Y are float32:
    # a float32 product's rounding depends on the BLAS's summation order, ~1e-7)
    K64, Y64 = KX.astype(np.float64), Y.astype(np.float64)
    expected = Y64 @ K64 @ Y64 / (np.linalg.norm(K64) * (Y64 @ Y64))
    assert float(kernels.target_alignment(KX, Y)) == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------- resource limits
@pytest.mark.parametrize("call, argname", [
    (lambda: kernels.gd_predictor(np.eye(P), Y, eta=0.1, steps=10 ** 5), "steps"),
    (lambda: kernels.gradient_flow_predictor(np.eye(P), Y, eta=0.1, t=np.arange(10 ** 5)), "t"),
    (lambda: kernels.analytic(np.ones((200, D)), depth=1, activation="tanh"), "rows of X"),
    (lambda: kernels.full_ntk(nets.make_mlp(D, depth=1, width=4096),
                              [np.zeros((4096, D)), np.zeros((4096, 1))], X), "width"),
], ids=["gd_predictor", "gradient_flow_predictor", "analytic", "full_ntk"])
def test_requests_beyond_the_memory_limit_are_refused_before_allocating(monkeypatch, call,
                                                                        argname):
    monkeypatch.setenv("WIDENETS_MEMORY_LIMIT", str(2 ** 20))
    with pytest.raises(ValueError, match=rf"would need about .*reduce .*\b{argname}"):
        call()


def test_a_truly_huge_prediction_is_refused_against_the_real_limit(monkeypatch):
    monkeypatch.delenv("WIDENETS_MEMORY_LIMIT", raising=False)
    with pytest.raises(ValueError, match=r"GiB.*available here.*reduce steps"):
        kernels.gd_predictor(np.eye(P), Y, eta=0.1, steps=10 ** 11)


# ----------------------------------------------------------------------------- bad input
NET = nets.make_mlp(D, depth=1, width=8)
PARAMS = nets.init_params(NET, 0)
NET3 = nets.make_mlp(D, depth=1, width=8, n_out=3)
K = random_psd(5, ridge=0.1)
NON_SYMMETRIC = np.array([[1.0, 0.3], [0.0, 1.0]])
NOT_PSD = np.array([[1.0, 3.0], [3.0, 1.0]])         # eigenvalues 4 and -2
NAN_K = np.array([[1.0, np.nan], [np.nan, 1.0]])
NAN_X = np.where(np.eye(P, D) > 0, np.nan, X)
FULL3 = np.ones((P, P, 3, 3))

GD = dict(K=K, y=Y, eta=0.1, steps=2)
FLOW = dict(K=K, y=Y, eta=0.1, t=[1.0])
NTK_ARGS = dict(net=NET, params=PARAMS, X=X)


def _bad(fn, base, match, /, **change):
    label = "-".join(f"{k}={v!r}"[:24] for k, v in change.items())
    return pytest.param(fn, {**base, **change}, match, id=f"{fn.__name__}-{label}")


BAD_K = [(NON_SYMMETRIC, "symmetric"), (NOT_PSD, "positive semi-definite"),
         (np.ones((2, 3)), "square"), (np.zeros((0, 0)), "non-empty square"), (NAN_K, "NaN"),
         (np.full((2, 2), "k"), "real numbers"), (None, "real numbers"), (np.eye(2) * 1j, "real")]

BAD_INPUTS = [
    # kernels of the predictors and the stable learning rate
    *[_bad(fn, {**base, "y": np.ones(2)}, rf"\bK .*{m}", K=k) for fn, base in
      ((kernels.gd_predictor, GD), (kernels.gradient_flow_predictor, FLOW))
      for k, m in BAD_K],
    *[_bad(kernels.max_learning_rate, {}, rf"\bK .*{m}", K=k) for k, m in BAD_K],
    *[_bad(kernels.max_learning_rate, {"K": K}, r"\beps must be", eps=v) for v in (0, -1, "x")],
    # targets, initial outputs and test kernels of both predictors
    *[_bad(fn, base, m, **c) for fn, base in ((kernels.gd_predictor, GD),
                                              (kernels.gradient_flow_predictor, FLOW))
      for m, c in (
          (r"\by must have shape \(6,\)", dict(y=np.ones(P + 1))),
          (r"\by must have shape", dict(y=np.ones((P, 1)))),
          (r"\by contains NaN", dict(y=np.full(P, np.nan))),
          (r"\by must be an array of real numbers", dict(y=["a"] * P)),
          (r"\bf0 must have shape \(6,\)", dict(f0=np.ones(3))),
          (r"\bf0 contains NaN", dict(f0=np.full(P, np.inf))),
          (r"\bf0 must be an array of real", dict(f0="zeros")),
          (r"\bK_test must have shape \(P_test, 6\)", dict(K_test=np.ones((2, P + 1)))),
          (r"\bK_test must have shape", dict(K_test=np.ones(P))),
          (r"\bK_test must have shape", dict(K_test=np.ones((0, P)))),
          (r"\bK_test contains NaN", dict(K_test=np.full((2, P), np.nan))),
          (r"\bK_test must be an array of real", dict(K_test=np.full((2, P), "k"))),
          (r"\bf0_test must have shape \(2,\)", dict(K_test=np.ones((2, P)), f0_test=np.ones(3))),
          (r"\bf0_test contains NaN", dict(K_test=np.ones((2, P)), f0_test=[np.nan, 0.0])),
          (r"\bf0_test needs K_test", dict(f0_test=np.ones(2))),
          (r"\beta must be", dict(eta=-0.1)),
          (r"\beta must be", dict(eta=np.nan)),
          (r"\beta must be", dict(eta="0.1")),
          (r"\beta must be", dict(eta=True)),
          (r"\beta must be", dict(eta=None)),
      )],
    *[_bad(kernels.gd_predictor, GD, r"\bsteps must be an integer", steps=v)
      for v in (0, -3, 2.5, "2", True, None)],
    _bad(kernels.gd_predictor, GD, r"would need about .*reduce steps", steps=10 ** 12),
    *[_bad(kernels.gradient_flow_predictor, FLOW, r"\bt must hold finite times >= 0", t=v)
      for v in ([-1.0], -5, [1.0, -1e-9], [np.nan], np.inf, [0.0, np.inf])],
    *[_bad(kernels.gradient_flow_predictor, FLOW, r"\bt must be", t=v)
      for v in ("10", True, None, [], [[1.0, 2.0]], ["a", "b"])],
    # analytic kernels and the stax network
    *[_bad(kernels.analytic, {"X": X, "depth": 2}, m, **c) for m, c in (
        (r"\bX contains NaN", dict(X=NAN_X)),
        (r"\bX must have shape \(P, D\)", dict(X=X[0])),
        (r"\bX must have shape \(P, D\)", dict(X=np.zeros((0, D)))),
        (r"\bX must be an array of real", dict(X=np.full((P, D), "x"))),
        (r"\bX2 must have D=10 columns", dict(X2=X[:, :3])),
        (r"\bX2 contains NaN", dict(X2=NAN_X)),
        (r"\bdepth must be an integer", dict(depth=0)),
        (r"\bdepth must be an integer", dict(depth=2.0)),
        (r"\bdepth must be an integer", dict(depth="2")),
        (r"\bdepth must be an integer <= 1000", dict(depth=10 ** 6)),
        (r"\bactivation must be one of", dict(activation="sigmoid")),
        (r"\bactivation must be one of", dict(activation=None)),
        (r"would need about .*reduce the number of rows of X", dict(X=np.ones((10 ** 5, D)))),
        (r"\banalytic ntk is not finite \(float32\)", dict(X=1e20 * X)),
    )],
    *[_bad(kernels.stax_mlp, {"depth": 1}, m, **c) for m, c in (
        (r"\bdepth must be an integer", dict(depth=0)),
        (r"\bdepth must be an integer <= 1000", dict(depth=10 ** 9)),
        (r"\bactivation must be one of", dict(activation="gelu")),
        (r"\bwidth must be an integer", dict(width=0)),
        (r"\bwidth must be an integer", dict(width="512")),
    )],
    # empirical NTKs
    *[_bad(fn, NTK_ARGS, m, **c) for fn in (kernels.full_ntk, kernels.pntk) for m, c in (
        (r"\bX contains NaN", dict(X=NAN_X)),
        (r"\bX must have D=10 columns", dict(X=X[:, :4])),
        (r"\bX must have shape \(P, D\)", dict(X=X[0])),
        (r"\bX must have shape \(P, D\)", dict(X=X[None])),
        (r"\bX must be an array of real", dict(X=[["a"] * D] * P)),
        (r"\bX2 must have D=10 columns", dict(X2=X[:, :4])),
        (r"\bX2 contains NaN", dict(X2=NAN_X)),
        (r"\bnet must be an MLP", dict(net={"D": D, "depth": 1, "width": 8})),
        (r"\bnet must be an MLP", dict(net=None)),
        (r"\bgamma0 must be finite and > 0", dict(net=nets.MLP(D, 1, 8, gamma0=0))),
        (r"\bparams must be the list of 2 weight arrays", dict(params={"W": PARAMS[0]})),
        (r"\bparams must hold 2 weight arrays", dict(params=PARAMS * 2)),
        (r"\bparams\[0\] must have shape \(8, 10\).*leading seed axis",
         dict(params=[w[None] for w in PARAMS])),
        (r"\bparams\[1\] must have shape \(8, 3\).*got \(8, 1\)", dict(net=NET3)),
        (r"\bparams\[0\] contains NaN", dict(params=[PARAMS[0] * np.nan, PARAMS[1]])),
    )],
    # pNTK error and the metrics
    *[_bad(kernels.pntk_error, {"full": FULL3, "approx": np.ones((P, P))}, m, **c) for m, c in (
        (r"\bfull must have 4 dimensions", dict(full=np.ones((P, P)))),
        (r"\bapprox must have 2 dimensions", dict(approx=np.ones(P))),
        (r"\bfull must have shape \(P, P2, O, O\) and approx", dict(approx=np.ones((P, P + 1)))),
        (r"\bfull must have shape \(P, P2, O, O\)", dict(full=np.ones((P, P, 3, 2)))),
        (r"\bfull contains NaN", dict(full=FULL3 * np.nan)),
        (r"\bapprox contains NaN", dict(approx=np.full((P, P), np.inf))),
        (r"\bB \(the reference\) is zero", dict(full=np.zeros((P, P, 3, 3)))),
    )],
    *[_bad(fn, {"A": K, "B": K}, m, **c) for fn in (kernels.relative_frobenius, kernels.alignment)
      for m, c in (
          (r"\bA and B must have the same shape", dict(B=np.eye(3))),
          (r"\bA contains NaN", dict(A=np.full((P, P), np.nan))),
          (r"\bB contains NaN", dict(B=np.full((P, P), np.inf))),
          (r"\bA must be an array of real", dict(A=np.full((P, P), "a"))),
          (r"\bB must be an array of real", dict(B=None)),
          (r"\bA must be an array of real", dict(A=K * 1j)),
          (r"\bA is empty", dict(A=np.zeros((0, 0)), B=np.zeros((0, 0)))),
          (r"\bB .*is zero", dict(B=np.zeros((P, P)))),
      )],
    _bad(kernels.alignment, {"A": K, "B": K}, r"\bA is zero", A=np.zeros((P, P))),
    *[_bad(kernels.target_alignment, {"K": K, "y": Y}, m, **c) for m, c in (
        (r"\by must have shape \(6,\)", dict(y=Y[:3])),
        (r"\by contains NaN", dict(y=np.full(P, np.nan))),
        (r"\by must be an array of real", dict(y=["+"] * P)),
        (r"\by is zero", dict(y=np.zeros(P))),
        (r"\bK must be a square", dict(K=np.ones((P, P + 1)))),
        (r"\bK must have 2 dimensions", dict(K=np.ones(P))),
        (r"\bK contains NaN", dict(K=np.full((P, P), np.nan))),
        (r"\bK is zero", dict(K=np.zeros((P, P)))),
    )],
]


@pytest.mark.parametrize("fn, kwargs, match", BAD_INPUTS)
def test_bad_input_raises_a_value_error_that_says_what_is_wrong(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(**kwargs)


def test_flatten_full_puts_logit_i_of_example_a_at_row_a_times_o_plus_i():
    rng = np.random.default_rng(0)
    F = rng.standard_normal((3, 2, 4, 4))
    M = kernels.flatten_full(F)
    assert M.shape == (12, 8)
    for a, b, i, j in ((0, 0, 0, 0), (2, 1, 3, 1), (1, 0, 2, 3)):
        assert M[a * 4 + i, b * 4 + j] == F[a, b, i, j]
    with pytest.raises(ValueError, match=r"\bfull must have shape \(P, P2, O, O\)"):
        kernels.flatten_full(F[..., :3])
