"""widenets.kernels: the analytic CNN kernels (stax_cnn, cnn_analytic) against wide CNNs and a
hand-derived closed form, and kernel regression (the lazy baseline).

Sizes stay tiny (6 random 5x4x2 images, widths <= 256): neural-tangents holds (H W)^2
covariance entries per pair of images, and tanh's quadrature 32 x 32 points per entry.
"""
import numpy as np
import jax
import pytest

import widenets as wn
from widenets import kernels, nets

SHAPE = (5, 4, 2)                # H, W, C: not square, two channels (the fan-in is 9 C = 18)
IMGS = np.random.default_rng(0).standard_normal((6,) + SHAPE).astype(np.float32)
DIGITS = np.asarray(wn.data.images("digits", classes=(0, 1), n_train=6, n_test=1, key=0).X)


# ----------------------------------------------------------------------------- conventions
@pytest.mark.filterwarnings("ignore::UserWarning")   # stax: tanh is integrated by quadrature
def test_stax_cnn_computes_the_same_function_as_the_ntk_parameterised_cnn():
    """Same weights, same outputs: stax's Conv (fan-in 3 * 3 * C_in, multiplier W_std/sqrt(fan_in),
    HWIO filters, SAME padding), GlobalAvgPool and Dense(1) are nets' CNN with gamma0 = 1."""
    init_fn, apply_fn, _ = kernels.stax_cnn(2, "tanh", width=8)
    _, p = init_fn(jax.random.PRNGKey(0), (1,) + SHAPE)
    convs = [layer[0] for layer in p if len(layer) == 2 and layer[0].ndim == 4]
    readout = p[-1][0]
    assert [c.shape for c in convs] == [(3, 3, 2, 8), (3, 3, 8, 8)] and readout.shape == (8, 1)
    net = nets.make_cnn(SHAPE, depth=2, width=8, activation="tanh", parameterization="ntk")
    ours = nets.cnn_apply(net, convs + [readout[:, 0]], IMGS)
    np.testing.assert_allclose(apply_fn(p, IMGS)[:, 0], ours, rtol=1e-5, atol=1e-6)


def test_tapped_network_equals_stax_cnn_and_phi_holds_every_layers_pooled_nngp():
    k2 = kernels.cnn_analytic(IMGS, depth=2, activation="relu")
    ref = kernels.stax_cnn(2, "relu")[2](IMGS, IMGS, ("nngp", "ntk"))
    np.testing.assert_allclose(k2.ntk, ref.ntk, rtol=1e-5)
    np.testing.assert_allclose(k2.nngp, ref.nngp, rtol=1e-5)
    np.testing.assert_array_equal(k2.phi[-1], k2.nngp)
    # phi[0] is the depth-1 network's pooled feature kernel
    np.testing.assert_allclose(k2.phi[0], kernels.cnn_analytic(IMGS, depth=1).nngp, rtol=1e-5)


def test_linear_depth_one_pooled_nngp_and_ntk_match_a_hand_derived_closed_form():
    """h_i = sum_{d, c} W[d, c] x_{i+d, c} / sqrt(9 C) (zero outside the image), so with
    s_d(x) = sum_i x_{i+d} (a C-vector summed over the positions i whose window entry d is inside)
    the pooled NNGP is E[mean_i h_i mean_j h'_j] = sum_d s_d(x) . s_d(x') / (9 C (H W)^2); the NTK
    adds the first layer's share (1/N) sum_n w_n^2 times the same kernel: 2 x the NNGP."""
    X = DIGITS.astype(np.float64)
    P, H, W, C = X.shape
    Xp = np.pad(X, ((0, 0), (1, 1), (1, 1), (0, 0)))
    s = np.stack([Xp[:, a:a + H, b:b + W, :].sum(axis=(1, 2))
                  for a in range(3) for b in range(3)], axis=1).reshape(P, -1)    # (P, 9 C)
    closed = s @ s.T / (9 * C * (H * W) ** 2)
    k = kernels.cnn_analytic(DIGITS, depth=1, activation="linear")
    np.testing.assert_allclose(k.nngp, closed, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(k.ntk, 2 * closed, rtol=2e-5, atol=1e-7)


def _gaussian_mean(q1, s, q2, f, g, n=48):
    """E[f(u) g(v)] for (u, v) ~ N(0, [[q1, s], [s, q2]]): a product Gauss-Hermite rule on
    u = a z1, v = b z1 + c z2 (the Cholesky factor)."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    a = np.sqrt(q1)
    b = s / a
    c = np.sqrt(max(q2 - b * b, 0.0))
    U, V = a * z[:, None], b * z[:, None] + c * z[None, :]
    return float(np.sum(w[:, None] * w[None, :] * f(U) * g(V)))


def _cnn_kernels_by_hand(X, depth, act, dact):
    """The infinite-width CNN's pooled NNGP and NTK written out position by position, in plain
    loops: nothing shared with widenets or neural-tangents but the conventions (3x3 windows,
    zero SAME padding, fan-in 9 C, global average pooling, a linear readout, no biases).
    Sigma^1(a i, b j) = sum_d x_a[i + d] . x_b[j + d] / (9 C); with K^l = E[phi(u) phi(v)] and
    Kd^l = E[phi'(u) phi'(v)] under Sigma^l: Sigma^{l+1}(a i, b j) = sum_d K^l(a i+d, b j+d) / 9,
    Theta^1 = Sigma^1, Theta^{l+1} = Sigma^{l+1} + sum_d (Theta^l Kd^l)(a i+d, b j+d) / 9; the
    output's NNGP is the mean of K^L over i, j and its NTK that plus the mean of Theta^L Kd^L."""
    P, H, W, C = X.shape
    pos = [(i, j) for i in range(H) for j in range(W)]
    offs = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)]
    inside = lambda i, j: 0 <= i < H and 0 <= j < W
    n = P * H * W
    idx = lambda a, i, j: (a * H + i) * W + j
    S = np.zeros((n, n))
    for a in range(P):
        for b in range(P):
            for (i, j) in pos:
                for (k, l) in pos:
                    S[idx(a, i, j), idx(b, k, l)] = sum(
                        X[a, i + di, j + dj] @ X[b, k + di, l + dj] for di, dj in offs
                        if inside(i + di, j + dj) and inside(k + di, l + dj)) / (9 * C)
    T = S.copy()
    for layer in range(depth):
        Kp, Kd = np.zeros((n, n)), np.zeros((n, n))
        for u in range(n):
            for v in range(n):
                Kp[u, v] = _gaussian_mean(S[u, u], S[u, v], S[v, v], act, act)
                Kd[u, v] = _gaussian_mean(S[u, u], S[u, v], S[v, v], dact, dact)
        T = T * Kd
        if layer < depth - 1:
            S2, T2 = np.zeros((n, n)), np.zeros((n, n))
            for a in range(P):
                for b in range(P):
                    for (i, j) in pos:
                        for (k, l) in pos:
                            terms = [(idx(a, i + di, j + dj), idx(b, k + di, l + dj))
                                     for di, dj in offs
                                     if inside(i + di, j + dj) and inside(k + di, l + dj)]
                            S2[idx(a, i, j), idx(b, k, l)] = sum(Kp[u, v] for u, v in terms) / 9
                            T2[idx(a, i, j), idx(b, k, l)] = sum(T[u, v] for u, v in terms) / 9
            S, T = S2, S2 + T2
    pool = lambda M: M.reshape(P, H * W, P, H * W).mean(axis=(1, 3))
    return pool(Kp), pool(Kp) + pool(T)


@pytest.mark.filterwarnings("ignore::UserWarning")   # stax: tanh is integrated by quadrature
@pytest.mark.parametrize("activation, depth", [("tanh", 1), ("tanh", 2), ("erf", 2)])
def test_cnn_analytic_matches_a_recursion_written_by_hand(activation, depth):
    """Against an independent recursion (loops over positions, Gauss-Hermite expectations):
    tanh goes through neural-tangents' quadrature and erf through the package's closed form,
    so neither is checked against itself. erf agrees to 1e-4 relative (float32); tanh to 2e-3,
    since neural-tangents integrates tanh' on a 32-point grid (measured: NNGP 1.1e-4, NTK
    8.5e-4 off, against 7e-5 between 48 and 120 points of the rule here). Inputs scaled by 3
    (a fan-in of C instead of 9 C) are off by 45-58%."""
    from scipy.special import erf
    X = np.random.default_rng(3).standard_normal((2, 3, 3, 2))
    fns = {"tanh": (np.tanh, lambda u: 1 / np.cosh(u) ** 2),
           "erf": (erf, lambda u: 2 / np.sqrt(np.pi) * np.exp(-u * u))}
    nngp, ntk = _cnn_kernels_by_hand(X, depth, *fns[activation])
    k = kernels.cnn_analytic(X.astype(np.float32), depth=depth, activation=activation)
    rtol = 2e-3 if activation == "tanh" else 1e-4
    np.testing.assert_allclose(np.asarray(k.nngp), nngp, rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(np.asarray(k.ntk), ntk, rtol=rtol, atol=1e-6)


# ----------------------------------------------------------------------------- wide networks
# The empirical kernel of a width-N CNN scatters around the limit with a relative Frobenius
# error ~ c / sqrt(N) per network (the O(1/N) bias is smaller here), so the mean over n_seeds
# networks is off by ~ c / sqrt(N n_seeds). Measured c = err sqrt(N n_seeds) on these 6 images
# at N = 128 with 8 seeds, keys 0-5, in the 9 CASES: NTK 0.27-3.7, pooled NNGP 0.29-4.7 (medians
# 1.0 and 1.7; depth 1 at most 2.2, depths 2-3 up to 4.7: deeper kernels fluctuate more, and the
# tail is heavy since the kernel's overall scale fluctuates coherently over all entries). The
# wide-network test below uses 16 seeds and a tolerance per depth, 1.5x the largest c measured:
# C_DEPTH = 3.3 at depth 1 (tolerance 3.3 / sqrt(128 x 16) = 7.3%) and 7 at depths 2-3 (15%),
# against typical errors of 2-4%; conventions that differ are off by far more (a fan-in of C
# instead of 9 C: a factor 9 on the first layer; circular instead of zero padding changes most
# of a 5x4 image's windows). C_TOL = 7 stays the bound of the trained networks' records below.
N_WIDE, N_SEEDS, KEYS, C_TOL = 128, 16, (0, 1, 2), 7.0
C_DEPTH = {1: 3.3, 2: 7.0, 3: 7.0}
# each activation and each depth is checked in both parameterisations (at initialisation their
# kernels coincide in these units; tests/test_cnn.py checks that directly); muP uses gamma0 = 0.5
# somewhere, since its NTK must not depend on gamma0
CASES = [("relu", 1, "mup", 1.0), ("relu", 2, "ntk", 1.0), ("relu", 3, "mup", 0.5),
         ("tanh", 1, "ntk", 1.0), ("tanh", 2, "mup", 0.5), ("tanh", 3, "ntk", 1.0),
         ("linear", 1, "mup", 0.5), ("linear", 2, "ntk", 1.0), ("linear", 3, "mup", 1.0)]


@pytest.mark.parametrize("activation,depth,parameterization,gamma0", CASES)
def test_analytic_cnn_kernels_are_the_wide_network_limit(activation, depth, parameterization,
                                                          gamma0):
    an = kernels.cnn_analytic(IMGS, depth=depth, activation=activation)
    net = nets.make_cnn(SHAPE, depth=depth, width=N_WIDE, activation=activation,
                        parameterization=parameterization, gamma0=gamma0)
    tol = C_DEPTH[depth] / np.sqrt(N_WIDE * N_SEEDS)
    for key in KEYS:
        emp = nets.cnn_init_kernels(net, IMGS, key, n_seeds=N_SEEDS)
        e_ntk = kernels.relative_frobenius(np.mean(emp.ntk, 0), an.ntk)
        e_phi = kernels.relative_frobenius(np.mean(emp.phi, 0), an.nngp)
        assert e_ntk < tol and e_phi < tol, (key, e_ntk, e_phi, tol)


def test_distance_to_the_analytic_kernel_falls_like_one_over_sqrt_width():
    """RMS over 32 networks of the relative error at widths 32 and 512: sqrt(512 / 32) = 4
    expected; measured 3.7-4.5 (NTK and NNGP, keys 7-11; depth 1 keeps 32 seeds at width 512
    cheap). The bounds 3-5.5 fail for an N^-1/4 (ratio 2) or an N^-1 (ratio 16) decay, or if the
    empirical kernels converged to anything else (the error would level off)."""
    an = kernels.cnn_analytic(IMGS, depth=1, activation="relu")
    rms = {}
    for N in (32, 512):
        net = nets.make_cnn(SHAPE, depth=1, width=N, activation="relu")
        emp = nets.cnn_init_kernels(net, IMGS, 7, n_seeds=32)
        rms[N] = [np.sqrt(np.mean([kernels.relative_frobenius(k, ref) ** 2 for k in ks]))
                  for ks, ref in ((emp.ntk, an.ntk), (emp.phi, an.nngp))]
    ratio = np.array(rms[32]) / np.array(rms[512])
    assert np.all((3.0 < ratio) & (ratio < 5.5)), (rms, ratio)


@pytest.mark.parametrize("activation,depth,width", [("relu", 1, 2048), ("erf", 1, 2048),
                                                    ("relu", 2, 256)])
def test_trained_wide_cnns_follow_kernel_gradient_descent_with_the_cnn_ntk(activation, depth,
                                                                          width):
    """train_cnn's records of nearly lazy (muP, gamma0 = 0.02), wide CNNs against the CNTK: the
    NTK and pooled feature kernel on the probe images at every recorded time (t = 0, 10, 20),
    the training error and the test predictions at every step against kernel GD with the CNTK
    (gd_predictor), 4 seeds, keys 0 and 1. Kernels: the tolerance of the initial kernels above,
    C_TOL / sqrt(N S) (0.077 at N = 2048, 0.22 at 256), for every record (measured: c <= 1.6 at
    t = 0; over the 20 steps the erf NTK moves by up to 0.036 at gamma0 = 0.02, within it).
    Outputs: max |error| / max |y| < 0.06; measured 0.004 (relu, depth 1), 0.024-0.032 (erf:
    the kernel's O(gamma0) motion), 0.007-0.023 (depth 2, N = 256: the 1/sqrt(N S) scatter).
    Half or twice the learning rate moves the lazy outputs by 0.26-0.98 (measured): far outside."""
    X_test = np.random.default_rng(1).standard_normal((4,) + SHAPE).astype(np.float32)
    y = np.array([1.0, -1.0, 1.0, -1.0, -1.0, 1.0])
    an = kernels.cnn_analytic(IMGS, depth=depth, activation=activation)
    K = np.asarray(an.ntk, np.float64)
    K_test = np.asarray(kernels.cnn_analytic(X_test, IMGS, depth=depth, activation=activation).ntk,
                        np.float64)
    eta, steps, S = 0.5 * kernels.max_learning_rate(K), 20, 4
    lazy = kernels.gd_predictor(K, y, eta=eta, steps=steps, K_test=K_test)
    tol = C_TOL / np.sqrt(width * S)
    for key in (0, 1):
        tr = nets.train_cnn(IMGS, y, depth=depth, width=width, activation=activation,
                            gamma0=0.02, eta=eta, steps=steps, key=key, n_seeds=S, center=True,
                            X_probe=IMGS, record_every=10, X_test=X_test)
        assert list(tr.times) == [0, 10, 20]
        for i in range(len(tr.times)):
            e_k = kernels.relative_frobenius(np.mean(np.asarray(tr.ntk)[:, i], 0), K)
            e_p = kernels.relative_frobenius(np.mean(np.asarray(tr.phi)[:, i], 0), an.nngp)
            assert e_k < tol and e_p < tol, (key, tr.times[i], e_k, e_p, tol)
        e_d = np.max(np.abs(np.asarray(tr.delta).mean(0) - (y - np.asarray(lazy.f))))
        e_f = np.max(np.abs(np.asarray(tr.f_test).mean(0) - np.asarray(lazy.f_test)[tr.times]))
        assert e_d < 0.06 and e_f < 0.06, (key, e_d, e_f)


# ----------------------------------------------------------------------------- cnn_analytic
def test_blocks_and_a_second_image_set_give_the_same_kernels():
    full = kernels.cnn_analytic(IMGS, depth=2, activation="relu")
    # blocks of 4 images: the last one padded, the lower-left one filled by transposition
    blocked = kernels.cnn_analytic(IMGS, depth=2, activation="relu", batch_size=4)
    for a, b in zip(blocked, full):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(full.ntk, full.ntk.T)     # X2 = None: exactly symmetric
    np.testing.assert_array_equal(blocked.phi, np.swapaxes(blocked.phi, 1, 2))
    cross = kernels.cnn_analytic(IMGS, IMGS[2:5], depth=2, activation="relu", batch_size=4)
    assert cross.ntk.shape == (6, 3) and cross.phi.shape == (2, 6, 3)
    for a, b in zip(cross, full):
        np.testing.assert_allclose(a, b[..., 2:5], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("call,argname", [
    (lambda: kernels.cnn_analytic(IMGS[0], depth=1), "X"),
    (lambda: kernels.cnn_analytic(IMGS, IMGS[:, :, :, :1], depth=1), "X2"),
    (lambda: kernels.cnn_analytic(IMGS, IMGS[:, :4], depth=1), "X2"),
    (lambda: kernels.cnn_analytic(np.where(IMGS > 2, np.nan, IMGS), depth=1), "X"),
    (lambda: kernels.cnn_analytic(IMGS, depth=0), "depth"),
    (lambda: kernels.cnn_analytic(IMGS, depth=1, activation="gelu"), "activation"),
    (lambda: kernels.cnn_analytic(IMGS, depth=1, batch_size=0), "batch_size"),
    (lambda: kernels.stax_cnn(1, "relu", width=0), "width"),
])
def test_bad_input_raises_a_value_error_naming_the_argument(call, argname):
    with pytest.raises(ValueError, match=argname):
        call()


def test_a_request_that_cannot_fit_is_refused_before_allocating(monkeypatch):
    # one pair of 5x4 images needs ~4 (H W)^2 (4 L + 4) bytes = 12.8 kB per copy, ~39 kB in
    # all: below that not even one pair fits (the image size is to blame); above it the
    # default blocks shrink to fit, and only a batch_size given by the caller can be too large
    monkeypatch.setenv("WIDENETS_MEMORY_LIMIT", "20000")
    with pytest.raises(ValueError, match="reduce the image size 5x4"):
        kernels.cnn_analytic(IMGS, depth=1)
    monkeypatch.setenv("WIDENETS_MEMORY_LIMIT", "60000")
    with pytest.raises(ValueError, match="reduce batch_size"):
        kernels.cnn_analytic(IMGS, depth=1, batch_size=4)
    assert kernels.cnn_analytic(IMGS, depth=1).ntk.shape == (6, 6)


def test_non_finite_kernels_raise():
    with pytest.raises(ValueError, match="X is too large for float32"):   # before any work
        kernels.cnn_analytic(IMGS * np.float32(1e30), depth=1, activation="relu")
    with pytest.raises(ValueError, match="not finite"):     # representable, but the kernel is not
        kernels.cnn_analytic(IMGS * np.float32(1e18), depth=3, activation="relu")


# ----------------------------------------------------------------------------- kernel regression
def _problem(seed, P=8, P_test=3, ridge=0.5):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((P + P_test, P + P_test))
    K_all = A @ A.T / (P + P_test) + ridge * np.eye(P + P_test)
    return K_all[:P, :P], rng.standard_normal(P), K_all[P:, :P]


def test_kernel_regression_solves_the_linear_system():
    K, y, K_test = _problem(0)
    np.testing.assert_allclose(kernels.kernel_regression(K, y, K_test),
                               K_test @ np.linalg.solve(K, y), rtol=1e-10)
    np.testing.assert_allclose(kernels.kernel_regression(K, y, K_test, ridge=0.3),
                               K_test @ np.linalg.solve(K + 0.3 * np.eye(8), y), rtol=1e-10)
    # it interpolates the training set, and several outputs are regressed column by column
    np.testing.assert_allclose(kernels.kernel_regression(K, y, K), y, rtol=1e-9, atol=1e-12)
    Y2 = np.stack([y, -2 * y], axis=1)
    np.testing.assert_allclose(kernels.kernel_regression(K, Y2, K_test),
                               K_test @ np.linalg.solve(K, Y2), rtol=1e-10)


def test_kernel_regression_is_gradient_descent_run_to_convergence(x64):
    K, y, K_test = _problem(1)
    eta = kernels.max_learning_rate(K) / 2
    gd = kernels.gd_predictor(K, y, eta=eta, steps=2000, K_test=K_test)
    np.testing.assert_allclose(gd.f_test[-1], kernels.kernel_regression(K, y, K_test),
                               rtol=1e-8, atol=1e-10)


def test_kernel_regression_errors():
    K, y, K_test = _problem(2)
    with pytest.raises(ValueError, match="ridge"):
        kernels.kernel_regression(K, y, K_test, ridge=-1.0)
    with pytest.raises(ValueError, match="K_test"):
        kernels.kernel_regression(K, y, K_test.T)
    with pytest.raises(ValueError, match="y"):
        kernels.kernel_regression(K, y[:-1], K_test)
    with pytest.raises(ValueError, match="K"):
        kernels.kernel_regression(K[:, :-1], y, K_test)
    A = np.random.default_rng(3).standard_normal((8, 3))
    singular = A @ A.T                                   # rank 3
    with pytest.raises(ValueError, match="singular.*ridge > 0"):
        kernels.kernel_regression(singular, y, K_test)
    assert np.all(np.isfinite(kernels.kernel_regression(singular, y, K_test, ridge=1e-3)))
