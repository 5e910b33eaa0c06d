"""widenets.linearized: a network and its linearisation trained side by side (Lee et al. 2019).

Every check compares with something computed independently: nets.train_mlp / train_cnn (the
same initial weights and network trajectory), kernel gradient descent with an empirical NTK
built from explicit Jacobians (kernels.gd_predictor), a second-order Taylor remainder, and the
width dependence of the gap between the two models. Sizes are small (P <= 8, widths <= 1024,
<= 30 steps); tolerances quote the values measured when they were set (float32 unless said).
"""
import numpy as np
import jax
import jax.numpy as jnp
import pytest

from widenets import kernels, linearized as lz, nets

X = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (8, 5)))
Y = np.sign(X[:, 0])
X_TEST = np.asarray(jax.random.normal(jax.random.PRNGKey(9), (3, 5)))
RUN = dict(depth=2, width=64, eta=1.0, steps=12)


def _rel(a, b):
    """max |a - b| / max |b| (0 when a == b, also for b = 0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = float(np.max(np.abs(a - b)))
    return 0.0 if d == 0 else d / float(np.max(np.abs(b)))


# ----------------------------------------------------------------------------- t = 0, train_mlp
@pytest.mark.parametrize("center", [False, True])
def test_network_is_train_mlp_and_starts_on_its_linearisation(center):
    """Seed s starts from train_mlp's seed s: the network's loss, training and test outputs
    are train_mlp's at every step (measured max relative difference 0 to 1.2e-7: round-off
    of two compilations of the same float32 arithmetic; tolerance 1e-5), and at t = 0 the
    linearisation is the network (f_lin(theta_0) = f(theta_0), measured equal bit for bit;
    tolerance 1e-6 relative), and so are the first losses. After one step the weight gap is
    4e-8 to 1e-7 of the weight change (tolerance 1e-5), after 12 it is 0.75-0.83 (> 0.1)."""
    r = lz.train_linearized(X, Y, **RUN, key=3, n_seeds=2, X_test=X_TEST, center=center)
    tr = nets.train_mlp(X, Y, **RUN, key=3, n_seeds=2, X_test=X_TEST, center=center)
    np.testing.assert_array_equal(r.times, np.arange(RUN["steps"] + 1))
    assert r.f.shape == (2, RUN["steps"] + 1, 8) and r.f_test.shape == (2, RUN["steps"] + 1, 3)
    assert _rel(r.loss, tr.loss) < 1e-5
    assert _rel(r.f, Y - np.asarray(tr.delta)) < 1e-5
    assert _rel(r.f_test, tr.f_test) < 1e-5
    assert _rel(r.f_lin[:, 0], r.f[:, 0]) < 1e-6 and _rel(r.f_test_lin[:, 0], r.f_test[:, 0]) < 1e-6
    assert _rel(r.loss_lin[:, 0], r.loss[:, 0]) < 1e-6
    np.testing.assert_array_equal(r.weight_change[:, 0], 0.0)
    np.testing.assert_array_equal(r.weight_gap[:, 0], 0.0)
    # one step from theta_0 takes both to the same weights (the same gradient at theta_0);
    # later they part (width 64, muP: the gap is of the order of the weight change)
    assert np.all(np.asarray(r.weight_gap[:, 1]) < 1e-5 * np.asarray(r.weight_change[:, 1]))
    assert np.all(np.asarray(r.weight_gap[:, -1]) > 0.1 * np.asarray(r.weight_change[:, -1]))
    if center:
        np.testing.assert_allclose(r.f[:, 0], 0.0, atol=1e-6)
    # the final weights are the models' weights: the linearisation evaluated at params_lin
    # gives the last recorded f_lin, the network at params the last f (measured <= 3e-7)
    P0 = nets.init_params(r.net, 3, n_seeds=2)
    for s in range(2):
        p0, p, q = ([w[s] for w in ws] for ws in (P0, r.params, r.params_lin))
        c = nets.apply(r.net, p0, X)[:, 0] if center else 0.0
        assert _rel(lz.linearize(r.net, p0)(q, X)[:, 0] - c, r.f_lin[s, -1]) < 1e-5
        assert _rel(nets.apply(r.net, p, X)[:, 0] - c, r.f[s, -1]) < 1e-5
        dq = np.sqrt(sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(q, p0)))
        assert abs(dq - float(r.weight_change_lin[s, -1])) < 1e-5 * dq


# ----------------------------------------------------------------------------- kernel GD
@pytest.mark.parametrize("parameterization,center", [("mup", False), ("ntk", True),
                                                     ("standard", False)])
def test_linearised_model_is_kernel_gd_with_the_initial_empirical_ntk(parameterization, center):
    """f_lin follows delta[t+1] = delta[t] - (eta/P) ntk(0) delta[t] exactly, with the NTK of
    nets.empirical_ntk (explicit Jacobians, times ntk_scale) at theta_0 = init_params(net, key,
    n_seeds)[s], on the training and the test inputs. An exact identity: measured max relative
    differences (train, test, loss_lin) 1.2e-7 to 1.03e-6 in float32 over 30 steps, 6 cases;
    tolerance 2e-5 (about 150 float32 epsilons, for round-off accumulated over 30 steps). The
    network itself is not kernel GD: its f is 0.06-0.53 away from the prediction."""
    S, T = 2, 30
    eta = 0.05 if parameterization == "standard" else 1.0   # below 2P/lambda_max (~0.1 there)
    r = lz.train_linearized(X, Y, depth=2, width=64, eta=eta, steps=T, key=5, n_seeds=S,
                            X_test=X_TEST, center=center, parameterization=parameterization,
                            record_every=3)
    np.testing.assert_array_equal(r.times, np.arange(0, T + 1, 3))
    P0 = nets.init_params(r.net, 5, n_seeds=S)
    for s in range(S):
        p = [w[s] for w in P0]
        K, K_test = nets.empirical_ntk(r.net, p, X), nets.empirical_ntk(r.net, p, X_TEST, X)
        f0, ft0 = nets.apply(r.net, p, X)[:, 0], nets.apply(r.net, p, X_TEST)[:, 0]
        if center:
            f0, ft0 = 0 * f0, 0 * ft0
        pred = kernels.gd_predictor(K, Y, eta=eta, steps=T, K_test=K_test, f0=f0, f0_test=ft0)
        assert _rel(r.f_lin[s], np.asarray(pred.f)[r.times]) < 2e-5
        assert _rel(r.f_test_lin[s], np.asarray(pred.f_test)[r.times]) < 2e-5
        assert _rel(r.f[s], np.asarray(pred.f)[r.times]) > 1e-3
        # the recorded loss of the linearised model is that of its outputs
        loss = 0.5 * np.mean((np.asarray(pred.f) - Y) ** 2, axis=1)
        assert _rel(r.loss_lin[s], loss) < 2e-5


def test_multi_output_is_kernel_gd_with_the_full_ntk_including_cross_logit_blocks():
    """y (P, 3): the loss is (1/2P) sum_mu sum_k (f - y)^2 (checked from the recorded outputs
    for both models), and vec(f_lin) follows kernel GD with the full (P O, P O) NTK
    ntk[mu, nu, k, l] (nets.empirical_ntk), i.e. gd_predictor on the flattened kernel with
    eta * O (it divides by its kernel's size P O, the dynamics by P). Measured max relative
    difference 6.6e-7 and 7.9e-7 (two seeds); tolerance 2e-5. Keeping only the diagonal
    blocks (each logit independent, the infinite-width limit) is off by 0.099 at width 64
    (NTK parameterisation: the cross-logit blocks are O(1/sqrt(N))), so the check sees them.
    The losses agree with the recorded outputs to 1.9e-7."""
    O, T, eta = 3, 20, 1.0
    y = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (8, O)))
    r = lz.train_linearized(X, y, depth=2, width=64, eta=eta, steps=T, key=6, n_seeds=2,
                            X_test=X_TEST, parameterization="ntk")
    assert r.net.n_out == O
    assert r.f.shape == r.f_lin.shape == (2, T + 1, 8, O)
    assert r.f_test.shape == r.f_test_lin.shape == (2, T + 1, 3, O)
    for f, loss in ((r.f, r.loss), (r.f_lin, r.loss_lin)):
        assert _rel(loss, 0.5 * np.mean(np.sum((np.asarray(f) - y) ** 2, -1), -1)) < 1e-5
    P0 = nets.init_params(r.net, 6, n_seeds=2)
    for s in range(2):
        p = [w[s] for w in P0]
        K = np.asarray(nets.empirical_ntk(r.net, p, X))            # (P, P, O, O)
        K_flat = K.transpose(0, 2, 1, 3).reshape(8 * O, 8 * O)
        f0 = np.asarray(nets.apply(r.net, p, X))
        pred = np.asarray(kernels.gd_predictor(K_flat, y.ravel(), eta=eta * O, steps=T,
                                               f0=f0.ravel()).f).reshape(T + 1, 8, O)
        assert _rel(r.f_lin[s], pred) < 2e-5
        diag = np.stack([kernels.gd_predictor(K[:, :, k, k], y[:, k], eta=eta, steps=T,
                                              f0=f0[:, k]).f for k in range(O)], -1)
        assert _rel(r.f_lin[s], diag) > 1e-2


# ----------------------------------------------------------------------------- width
def _final_gaps(r):
    """Per seed: ||f - f_lin|| / ||f - f(0)|| and weight_gap / weight_change at the end."""
    f, f_lin = np.asarray(r.f), np.asarray(r.f_lin)
    out = (np.linalg.norm(f[:, -1] - f_lin[:, -1], axis=-1)
           / np.linalg.norm(f[:, -1] - f[:, 0], axis=-1))
    return out, np.asarray(r.weight_gap[:, -1] / r.weight_change[:, -1])


def test_gap_to_the_linearisation_closes_with_width_in_ntk_but_not_in_mup():
    """Final relative gaps at widths 64, 256, 1024 (depth 2, ReLU, P = 8, eta = 1, 20 steps),
    averaged over 6 networks (keys 0 and 1, 3 seeds each); ratio of width 64's to width 1024's.

    Measured, NTK parameterisation (1/sqrt(N) would give 4, 1/N 16), over keys 0..7 with 3
    seeds each and keys 10..15 with 6 each: output gap ratio 4.6-13.0 (mean gaps ~0.04,
    0.015, 0.005: faster than 1/sqrt(N), ~N^-0.8 -- the change of the NTK during training is
    O(1/N) on average, Dyer & Gur-Ari 2019), weight gap ratio 2.2-3.1 (gaps ~0.31, 0.20,
    0.12, ~N^-0.35, tending to N^-1/2 as the gap becomes small). muP at gamma0 = 1 (the same
    compiled program): output gap ratio 0.95-1.31 (gaps ~0.2 at every width), weight gap
    ratio 0.96-1.10 (~0.95). Bands: NTK output [3, 20], weights [1.7, 5]; muP both
    [0.7, 1.5]."""
    widths = (64, 256, 1024)
    ratios = {}
    for par in ("ntk", "mup"):
        gaps = []
        for N in widths:
            runs = [lz.train_linearized(X, Y, depth=2, width=N, eta=1.0, steps=20, key=k,
                                        n_seeds=3, record_every=20, parameterization=par)
                    for k in (0, 1)]
            gaps.append([np.mean(np.concatenate(g)) for g in zip(*map(_final_gaps, runs))])
        gaps = np.asarray(gaps)                            # (width, [output, weights])
        ratios[par] = gaps[0] / gaps[-1]
        if par == "ntk":
            assert np.all(np.diff(gaps, axis=0) < 0), gaps      # falls at every step in N
    assert 3 < ratios["ntk"][0] < 20 and 1.7 < ratios["ntk"][1] < 5, ratios
    assert np.all((0.7 < ratios["mup"]) & (ratios["mup"] < 1.5)), ratios


def test_a_sweep_over_gamma0_and_parameterisation_compiles_once():
    n = len(lz._TRAINERS)
    for par, g0 in (("mup", 0.5), ("ntk", 2.0), ("standard", 1.0)):
        lz.train_linearized(X, Y, depth=1, width=16, eta=0.01, steps=2, key=0,
                            gamma0=g0, parameterization=par)
    assert len(lz._TRAINERS) == n + 1


# ----------------------------------------------------------------------------- linearize
def test_linearize_is_the_first_order_taylor_expansion(x64):
    """f(theta_0 + e v) - f_lin(theta_0 + e v) = O(e^2): halving e divides the remainder by 4
    (measured 4.0015 and 3.996; band [3.6, 4.4]), for an MLP with two outputs and a CNN, in
    float64; f_lin is affine in the weights (measured 3e-14 and 7e-14 relative; tolerance
    1e-10) and equals f at theta_0 (measured bit for bit; tolerance 1e-12)."""
    mlp = nets.make_mlp(5, depth=2, width=16, activation="tanh", n_out=2)
    cnn = nets.make_cnn((4, 4, 1), depth=2, width=4, activation="tanh")
    images = jax.random.normal(jax.random.PRNGKey(2), (3, 4, 4, 1), jnp.float64)
    for net, x, p0, f in ((mlp, jnp.asarray(X, jnp.float64), nets.init_params(mlp, 1),
                           nets.apply),
                          (cnn, images, nets.init_cnn_params(cnn, 1), nets.cnn_apply)):
        f_lin = lz.linearize(net, p0)
        v = [jax.random.normal(k, w.shape, w.dtype)
             for k, w in zip(jax.random.split(jax.random.PRNGKey(3), len(p0)), p0)]
        at = lambda e: [w + e * d for w, d in zip(p0, v)]
        assert np.asarray(f_lin(p0, x)).shape == np.asarray(f(net, p0, x)).shape
        assert _rel(f_lin(p0, x), f(net, p0, x)) < 1e-12
        assert _rel(f_lin(at(2e-3), x) - f_lin(p0, x), 2 * (f_lin(at(1e-3), x) - f_lin(p0, x))) \
            < 1e-10
        rem = [float(np.max(np.abs(f(net, at(e), x) - f_lin(at(e), x)))) for e in (2e-3, 1e-3)]
        assert 3.6 < rem[0] / rem[1] < 4.4, rem


# ----------------------------------------------------------------------------- CNN
def test_cnn_network_is_train_cnn_and_its_linearisation_is_kernel_gd(x64):
    """Tiny CNN (width 4, 4x4x1 images, P = 4, depth 2), in float64: the network's loss and
    outputs are train_cnn's with the same key (measured max relative difference 1.3e-15;
    tolerance 1e-10); f_lin(0) = f(0); f_lin (train and test) is gd_predictor with the NTK
    ntk_scale J J^T from the explicit Jacobian J (jax.jacrev in this test) at train_cnn's
    initial weights (seed key k_s, weights from jax.random.split(k_s)[0]): measured
    1.2e-14, tolerance 1e-10; the network's own f is 0.45-0.59 away. (In float32 f_lin agrees
    with the float64 recursion delta <- delta - (eta/P) K delta to 4.4e-7, but gd_predictor's
    float32 eigendecomposition of this ill-conditioned K, eigenvalues 0.003-0.2, is itself off
    by up to 1.5e-5: hence float64 here.)"""
    imgs = np.asarray(jax.random.normal(jax.random.PRNGKey(7), (6, 4, 4, 1)))
    Xc, Xt = imgs[:4], imgs[4:]
    yc = np.array([1.0, -1.0, 1.0, -1.0])
    S, T, eta = 2, 15, 1.0
    r = lz.train_linearized_cnn(Xc, yc, depth=2, width=4, eta=eta, steps=T, key=8, n_seeds=S,
                                X_test=Xt)
    tr = nets.train_cnn(Xc, yc, depth=2, width=4, eta=eta, steps=T, key=8, n_seeds=S)
    assert r.f.dtype == jnp.float64
    assert r.f.shape == (S, T + 1, 4) and r.f_test_lin.shape == (S, T + 1, 2)
    assert _rel(r.loss, tr.loss) < 1e-10 and _rel(r.f, yc - np.asarray(tr.delta)) < 1e-10
    assert _rel(r.f_lin[:, 0], r.f[:, 0]) < 1e-12
    net = r.net
    scale = nets.cnn_scalings(net).ntk_scale
    for s in range(S):
        p = nets.init_cnn_params(net, jax.random.split(jax.random.split(
            jax.random.PRNGKey(8), S)[s])[0])
        jac = lambda x: jnp.concatenate(
            [j.reshape(x.shape[0], -1)
             for j in jax.jit(jax.jacrev(lambda q: nets.cnn_apply(net, q, x)))(p)], axis=1)
        J, J_test = jac(Xc), jac(Xt)
        pred = kernels.gd_predictor(scale * J @ J.T, yc, eta=eta, steps=T,
                                    K_test=scale * J_test @ J.T, f0=nets.cnn_apply(net, p, Xc),
                                    f0_test=nets.cnn_apply(net, p, Xt))
        assert _rel(r.f_lin[s], pred.f) < 1e-10 and _rel(r.f_test_lin[s], pred.f_test) < 1e-10
        assert _rel(r.f[s], pred.f) > 1e-2         # the network itself is not kernel GD


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("change,name", [
    (dict(eta=-1.0), "eta"), (dict(steps=0), "steps"), (dict(record_every=3), "record_every"),
    (dict(y=np.zeros(7)), "y"), (dict(y=np.zeros((8, 2, 1))), "y"),
    (dict(X_test=np.zeros((2, 4))), "X_test"), (dict(width=0), "width"),
    (dict(key="a"), "key"), (dict(center=1), "center"), (dict(n_seeds=0), "n_seeds")])
def test_bad_training_arguments_name_the_argument(change, name):
    args = dict(X=X, y=Y, depth=1, width=8, eta=0.5, steps=10, key=0) | change
    with pytest.raises(ValueError, match=name):
        lz.train_linearized(**args)


def test_bad_cnn_arguments_and_linearize_inputs_name_the_argument():
    imgs = np.zeros((4, 4, 4, 1))
    with pytest.raises(ValueError, match="X_test"):
        lz.train_linearized_cnn(imgs, np.ones(4), depth=1, width=2, eta=0.5, steps=2, key=0,
                                X_test=np.zeros((2, 4, 5, 1)))
    with pytest.raises(ValueError, match="y"):
        lz.train_linearized_cnn(imgs, np.ones((4, 2)), depth=1, width=2, eta=0.5, steps=2,
                                key=0)
    net = nets.make_mlp(5, depth=2, width=8)
    p0 = nets.init_params(net, 0)
    with pytest.raises(ValueError, match=r"params\[1\]"):
        lz.linearize(net, [p0[0], p0[1][:4], p0[2]])
    with pytest.raises(ValueError, match="params"):
        lz.linearize(net, p0[:2])
    with pytest.raises(ValueError, match="net"):
        lz.linearize("mlp", p0)
    f_lin = lz.linearize(net, p0)
    with pytest.raises(ValueError, match=r"params_new\[0\]"):
        f_lin([p0[0].T] + p0[1:], X)
    with pytest.raises(ValueError, match="X"):
        f_lin(p0, X[:, :4])


def test_a_request_too_big_for_memory_is_refused_before_allocation(monkeypatch):
    monkeypatch.setenv("WIDENETS_MEMORY_LIMIT", str(2 ** 20))
    with pytest.raises(ValueError, match="WIDENETS_MEMORY_LIMIT.*reduce width"):
        lz.train_linearized(X, Y, depth=2, width=4096, eta=0.5, steps=10, key=0)
    with pytest.raises(ValueError, match="reduce steps"):
        lz.train_linearized(X, Y, depth=1, width=4, eta=0.5, steps=10 ** 5, key=0,
                            record_every=10 ** 5)


def test_divergence_warns_naming_eta():
    with pytest.warns(RuntimeWarning, match="eta=10"):
        lz.train_linearized(X, Y, depth=1, width=16, eta=10.0, steps=30, key=0,
                            parameterization="standard", record_every=30)


def test_a_finite_divergence_warns_naming_eta():
    """eta = 1.0, 2.5x the stable 2P/lambda_max = 0.41 of this standard network's NTK: after
    4 steps the losses are finite but far above the start (measured 0.54 -> ~1e2-1e3); both
    models' divergences are reported, not only non-finite ones."""
    import warnings
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = lz.train_linearized(X, Y, depth=1, width=16, eta=1.0, steps=4, key=0,
                                parameterization="standard", record_every=4)
    assert np.all(np.isfinite(np.asarray(r.loss_lin)))
    msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
    assert any("linearised network" in m and "grew" in m and "eta=1" in m for m in msgs), msgs
