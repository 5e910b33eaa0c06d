"""widenets.nets: the finite-width MLPs, their kernels, their training records and their input checks.

Sizes are tiny (P = 6 inputs in D = 8 dimensions, widths of tens) so that every jitted trainer
compiles in a second or two; trainers are cached per configuration, so tests that can share
one (``BASE``) do.
"""
import re
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import enable_x64

import widenets as wn
from widenets import nets

P, D, P_TEST = 6, 8, 3
TASK = wn.data.gaussian_task(jax.random.PRNGKey(0), P, D, P_test=P_TEST)
X, Y, X_TEST = np.asarray(TASK.X), np.asarray(TASK.y), np.asarray(TASK.X_test)

# one trainer configuration shared by several tests (one compilation)
BASE = dict(depth=2, width=32, activation="tanh", gamma0=1.0, steps=8, n_seeds=2)

ACTIVATIONS = ["linear", "relu", "tanh", "erf"]
PARAMETERIZATIONS = ["mup", "ntk", "standard"]
FIELDS = ("loss", "delta", "f_test", "ntk", "phi", "g")


def _phi_and_derivative(activation):
    """numpy phi and phi' (an independent reference, not the package's activation_fn)."""
    from scipy.special import erf
    return {
        "linear": (lambda h: h, lambda h: np.ones_like(h)),
        "relu": (lambda h: np.maximum(h, 0), lambda h: (h > 0).astype(h.dtype)),
        "tanh": (np.tanh, lambda h: 1 - np.tanh(h) ** 2),
        "erf": (erf, lambda h: 2 / np.sqrt(np.pi) * np.exp(-h ** 2)),
    }[activation]


def reference_mup(params, X, activation, gamma0):
    """The muP network of DESIGN.md written out in numpy, with its kernels.

    h^1 = W^0 x / sqrt(D), h^{l+1} = W^l phi(h^l) / sqrt(N), f = w^L . phi(h^L) / (gamma0 N);
    g^l = gamma0 N df/dh^l by explicit back-propagation: g^L = phi'(h^L) w^L,
    g^l = phi'(h^l) (W^l^T g^{l+1}) / sqrt(N). Returns (f, Phi (L, P, P), G (L, P, P)).
    """
    phi, dphi = _phi_and_derivative(activation)
    W = [np.asarray(w, np.float64) for w in params]
    N, Dx = W[0].shape
    hs = [X @ W[0].T / np.sqrt(Dx)]
    for Wl in W[1:-1]:
        hs.append(phi(hs[-1]) @ Wl.T / np.sqrt(N))
    f = phi(hs[-1]) @ W[-1][:, 0] / (gamma0 * N)
    gs = [dphi(hs[-1]) * W[-1][:, 0]]
    for l in range(len(hs) - 2, -1, -1):
        gs.insert(0, dphi(hs[l]) * (gs[0] @ W[l + 1]) / np.sqrt(N))
    Phi = np.stack([phi(h) @ phi(h).T / N for h in hs])
    G = np.stack([g @ g.T / N for g in gs])
    return f, Phi, G


def all_finite(tr):
    return all(bool(np.all(np.isfinite(np.asarray(getattr(tr, f))))) for f in FIELDS
               if getattr(tr, f) is not None)


# ----------------------------------------------------------------------------- records
def test_trajectory_fields_have_the_contract_shapes_and_are_finite():
    S, T, every = 3, 6, 2
    tr = nets.train_mlp(X, Y, depth=2, width=16, eta=0.5, steps=T, key=jax.random.PRNGKey(1),
                        n_seeds=S, record_every=every, X_test=X_TEST)
    n_rec = T // every + 1
    assert tr.loss.shape == (S, T + 1)
    assert tr.delta.shape == (S, T + 1, P)
    assert tr.f_test.shape == (S, T + 1, P_TEST)
    assert list(tr.times) == [0, 2, 4, 6]
    assert tr.ntk.shape == (S, n_rec, P, P)
    assert tr.phi.shape == (S, 2, n_rec, P, P)
    assert tr.g.shape == (S, 2, n_rec, P, P)
    assert len(tr.params) == 3 and all(p.shape[0] == S for p in tr.params)
    assert all_finite(tr)
    assert all(bool(np.all(np.isfinite(p))) for p in tr.params)


def test_delta_at_initialisation_is_target_minus_network_output():
    key = jax.random.PRNGKey(2)
    tr = nets.train_mlp(X, Y, eta=0.1, key=key, X_test=X_TEST, **BASE)
    for s, k in enumerate(jax.random.split(key, BASE["n_seeds"])):   # seed s uses split(key)[s]
        params = nets.init_params(tr.net, k)
        np.testing.assert_allclose(tr.delta[s, 0], Y - nets.apply(tr.net, params, X)[:, 0],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tr.f_test[s, 0], nets.apply(tr.net, params, X_TEST)[:, 0],
                                   rtol=1e-5, atol=1e-6)


def test_centering_starts_the_error_at_y_and_leaves_the_kernels_unchanged():
    """center=True trains f - f(0): delta[0] = y exactly, f_test[0] = 0, and since the
    subtracted constant has no gradient the kernels (hence the whole run) match the uncentred
    network's at initialisation."""
    key = jax.random.PRNGKey(2)
    plain = nets.train_mlp(X, Y, eta=0.1, key=key, X_test=X_TEST, **BASE)
    centred = nets.train_mlp(X, Y, eta=0.1, key=key, X_test=X_TEST, center=True, **BASE)
    np.testing.assert_allclose(centred.delta[:, 0], np.broadcast_to(Y, (2, P)), atol=1e-6)
    np.testing.assert_allclose(centred.f_test[:, 0], 0, atol=1e-6)
    np.testing.assert_allclose(centred.ntk[:, 0], plain.ntk[:, 0], rtol=1e-5)
    np.testing.assert_allclose(centred.phi[:, :, 0], plain.phi[:, :, 0], rtol=1e-5)
    assert not np.allclose(plain.delta[:, 0], Y)            # the uncentred output is not 0


def test_loss_is_half_the_mean_squared_error():
    tr = nets.train_mlp(X, Y, eta=0.3, key=jax.random.PRNGKey(3), **BASE)
    np.testing.assert_allclose(tr.loss, 0.5 * np.mean(np.asarray(tr.delta) ** 2, axis=-1),
                               rtol=1e-5)


def test_recorded_kernels_are_those_at_the_recorded_times():
    """A run recording every step and one recording every other step agree at shared times."""
    kw = dict(depth=2, width=16, activation="relu", eta=0.5, key=jax.random.PRNGKey(4))
    every1 = nets.train_mlp(X, Y, steps=4, record_every=1, **kw)
    every2 = nets.train_mlp(X, Y, steps=4, record_every=2, **kw)
    assert list(every2.times) == [0, 2, 4]
    np.testing.assert_allclose(every2.loss, every1.loss, rtol=1e-5)
    np.testing.assert_allclose(every2.ntk, every1.ntk[:, ::2], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(every2.phi, every1.phi[:, :, ::2], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(every2.g, every1.g[:, :, ::2], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- the NTK
@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_layerwise_ntk_equals_the_explicit_jacobian_ntk(parameterization, activation):
    """kernels(...).ntk (layer-wise factorisation) == ntk_scale J J^T from jax.jacrev."""
    with enable_x64():
        net = nets.make_mlp(D, depth=3, width=12, activation=activation,
                            parameterization=parameterization, gamma0=0.7)
        params = nets.init_params(net, jax.random.PRNGKey(5))
        assert params[0].dtype == jnp.float64
        X64 = jnp.asarray(X, jnp.float64)
        fast = np.asarray(nets.kernels(net, params, X64).ntk)
        slow = np.asarray(nets.empirical_ntk(net, params, X64))
        assert np.linalg.norm(fast - slow) <= 1e-10 * np.linalg.norm(slow)


@pytest.mark.parametrize("activation", ["relu", "tanh", "erf"])
def test_ntk_factorises_over_layers(activation):
    """muP: ntk = sum_{l=0}^{L} G^{l+1} * Phi^l, Phi^0 = Kx = X X^T / D, G^{L+1} = 1 (DESIGN.md).

    Phi and G come from an independent numpy implementation of the network and its
    back-propagation; the NTK they assemble is compared with the explicit-Jacobian NTK.
    """
    gamma0, L = 1.3, 3
    with enable_x64():
        net = nets.make_mlp(D, depth=L, width=20, activation=activation, gamma0=gamma0)
        params = nets.init_params(net, jax.random.PRNGKey(6))
        X64 = np.asarray(X, np.float64)
        f, Phi, G = reference_mup(params, X64, activation, gamma0)
        np.testing.assert_allclose(nets.apply(net, params, X64)[:, 0], f, rtol=1e-12, atol=1e-14)
        k = nets.kernels(net, params, jnp.asarray(X64))
        np.testing.assert_allclose(k.phi, Phi, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(k.g, G, rtol=1e-10, atol=1e-13)
        Kx = X64 @ X64.T / D
        feats = [Kx] + list(Phi)                       # Phi^0 .. Phi^L
        grads = list(G) + [np.ones((P, P))]            # G^1 .. G^{L+1}
        assembled = sum(g * phi for g, phi in zip(grads, feats))
        exact = np.asarray(nets.empirical_ntk(net, params, jnp.asarray(X64)))
        assert np.linalg.norm(assembled - exact) <= 1e-10 * np.linalg.norm(exact)


def test_empirical_ntk_between_two_input_sets_is_the_off_diagonal_block():
    """empirical_ntk(X, X2) is the (X, X2) block of the NTK on the stacked inputs, shape
    (P, P2, O, O) for O = 2 outputs."""
    net = nets.make_mlp(D, depth=1, width=10, activation="tanh", n_out=2)
    params = nets.init_params(net, 7)
    joint = np.asarray(nets.empirical_ntk(net, params, np.vstack([X, X_TEST])))
    block = np.asarray(nets.empirical_ntk(net, params, X, X_TEST))
    assert block.shape == (P, P_TEST, 2, 2)
    np.testing.assert_allclose(block, joint[:P, P:], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- parameterisations
@pytest.mark.parametrize("parameterization, multiplier, init_std, ntk_scale", [
    # the module docstring's table at D = 16, N = 64, gamma0 = 0.5, depth 2, written out
    ("mup", (1 / 4, 1 / 8, 1 / 32), (1.0, 1.0, 1.0), 16.0),
    ("ntk", (1 / 4, 1 / 8, 1 / 4), (1.0, 1.0, 1.0), 0.25),
    ("standard", (1.0, 1.0, 2.0), (1 / 4, 1 / 8, 1 / 8), 0.25),
])
def test_scalings_follow_the_parameterisation_table(parameterization, multiplier, init_std,
                                                    ntk_scale):
    net = nets.make_mlp(16, depth=2, width=64, parameterization=parameterization, gamma0=0.5)
    sc = nets.scalings(net)
    assert sc.fan_in == (16, 64, 64)
    np.testing.assert_allclose(sc.multiplier, multiplier, rtol=1e-15)
    np.testing.assert_allclose(sc.init_std, init_std, rtol=1e-15)
    assert sc.ntk_scale == pytest.approx(ntk_scale, rel=1e-15)
    # and the weights are drawn with those standard deviations (4096 entries per matrix:
    # the sample std is within 3% of its value at 99.9% confidence)
    W = nets.init_params(net, jax.random.PRNGKey(0))
    for w, s in zip(W[1:2], init_std[1:2]):
        assert float(np.std(np.asarray(w))) == pytest.approx(s, rel=0.05)


def test_mup_with_gamma0_is_ntk_parameterisation_with_gamma0_sqrt_width():
    """Same key -> identical outputs and trajectories.

    N = 64 and gamma0 = 0.5 make every constant exact in binary (readout 1/(0.5*64) = 1/(4*8),
    learning-rate scale 0.5^2*64 = 4^2 = 16), so the two runs are the same computation and
    agree bit for bit.
    """
    N, g0 = 64, 0.5
    mup = nets.make_mlp(D, depth=2, width=N, activation="relu", parameterization="mup", gamma0=g0)
    ntk = nets.make_mlp(D, depth=2, width=N, activation="relu", parameterization="ntk",
                        gamma0=g0 * np.sqrt(N))
    assert nets.scalings(mup).multiplier == nets.scalings(ntk).multiplier
    assert nets.scalings(mup).ntk_scale == nets.scalings(ntk).ntk_scale
    key = jax.random.PRNGKey(7)
    params = nets.init_params(mup, key)
    np.testing.assert_array_equal(nets.apply(mup, params, X), nets.apply(ntk, params, X))

    kw = dict(depth=2, width=N, activation="relu", eta=0.7, steps=5, key=key, n_seeds=2,
              record_every=1)
    a = nets.train_mlp(X, Y, gamma0=g0, parameterization="mup", **kw)
    b = nets.train_mlp(X, Y, gamma0=g0 * np.sqrt(N), parameterization="ntk", **kw)
    assert float(a.loss[0, -1]) < 0.9 * float(a.loss[0, 0])      # it did train
    for field in ("loss", "delta", "ntk", "phi", "g"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


@pytest.mark.parametrize("width", [16, 64])
def test_mup_output_variance_at_init_is_phi_L_over_gamma0_squared_width(width):
    """Var f(x) = Phi^L(x, x) / (gamma0^2 N) at initialisation.

    Given the hidden layers, f = w^L . phi(h^L) / (gamma0 N) with w^L ~ N(0, I) is exactly
    Gaussian with variance Phi^L(x, x) / (gamma0^2 N), so z = f gamma0 sqrt(N) / sqrt(Phi^L(x, x))
    is a standard normal in every seed. Over S = 2000 seeds the mean of z^2 has standard
    error sqrt(2 / S) = 0.032: a tolerance of 0.16 is 5 standard errors. A wrong width power
    in the readout (1/sqrt(N) instead of 1/N) would give mean z^2 = N >= 16, a wrong power of
    gamma0 mean z^2 = 4 or 1/4.
    """
    S, gamma0 = 2000, 2.0
    net = nets.make_mlp(D, depth=2, width=width, activation="relu", gamma0=gamma0)
    X4 = jnp.asarray(X[:4])

    @jax.jit
    @jax.vmap
    def sample(k):
        params = nets.init_params(net, k)
        return nets.apply(net, params, X4)[:, 0], nets.kernels(net, params, X4).phi[-1]

    f, phi_L = sample(jax.random.split(jax.random.PRNGKey(8), S))
    z2 = np.asarray(f) ** 2 * gamma0 ** 2 * width / np.diagonal(np.asarray(phi_L), axis1=1, axis2=2)
    assert abs(z2.mean() - 1) < 0.16
    # and the whole output covariance: E[f f^T] gamma0^2 N = E[Phi^L]; with S = 2000 the
    # relative Frobenius error is <~ sqrt(2 P / S) = 0.063 for P = 4 inputs; tolerance 0.2
    cov = np.einsum("sa,sb->ab", f, f) / S * gamma0 ** 2 * width
    ref = np.asarray(phi_L).mean(0)
    assert np.linalg.norm(cov - ref) / np.linalg.norm(ref) < 0.2


def test_abc_exponents_match_yang_and_hu():
    assert nets.abc_exponents("mup")["a0"] == (-0.5, 0.0, 0.5)
    assert nets.abc_exponents("mup")["b0"] == (0.5, 0.5, 0.5)
    assert nets.abc_exponents("ntk")["a"] == (0.0, 0.5, 0.5)
    assert nets.abc_exponents("standard")["b"] == (0.0, 0.5, 0.5)



@pytest.mark.parametrize("depth", [1, 3])
def test_one_compiled_trainer_serves_every_parameterisation_and_gamma0(depth):
    """The multipliers, init stds and learning rate are arguments of the compiled trainer (a
    compilation costs ~1 s on a CPU, often more than the training): networks of one shape share
    it whatever their parameterisation and gamma0. Each run is still its own network: its
    weights after two steps equal plain gradient descent on ``nets.apply`` (the scalings as
    constants) from ``init_params``, to float32 round-off."""
    kw = dict(depth=depth, width=24, activation="relu", eta=0.05, steps=2, key=3, n_seeds=2)
    settings = [(p, g) for p in PARAMETERIZATIONS for g in (0.5, 2.0)]
    before = len(nets._TRAINERS)
    runs = [nets.train_mlp(X, Y, parameterization=p, gamma0=g, **kw) for p, g in settings]
    assert len(nets._TRAINERS) == before + 1
    for (p, g), tr in zip(settings, runs):
        net = nets.make_mlp(D, depth=depth, width=24, activation="relu", parameterization=p,
                            gamma0=g)
        lr = kw["eta"] * nets.scalings(net).ntk_scale
        loss = lambda w: 0.5 * jnp.mean((nets.apply(net, w, X)[:, 0] - Y) ** 2)
        for s, k in enumerate(jax.random.split(jax.random.PRNGKey(3), 2)):
            w = nets.init_params(net, k)
            for _ in range(2):
                w = [a - lr * b for a, b in zip(w, jax.grad(loss)(w))]
            for a, b in zip(w, tr.params):
                np.testing.assert_allclose(b[s], a, rtol=1e-4, atol=1e-5 * float(jnp.abs(a).max()),
                                           err_msg=f"{p}, gamma0={g}, seed {s}")


# ----------------------------------------------------------------------------- randomness
def test_fixed_key_reproduces_the_trajectory_exactly():
    a = nets.train_mlp(X, Y, eta=0.3, key=jax.random.PRNGKey(9), X_test=X_TEST, **BASE)
    b = nets.train_mlp(X, Y, eta=0.3, key=jax.random.PRNGKey(9), X_test=X_TEST, **BASE)
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_different_seeds_give_different_networks():
    a = nets.train_mlp(X, Y, eta=0.3, key=jax.random.PRNGKey(10), **BASE)
    b = nets.train_mlp(X, Y, eta=0.3, key=jax.random.PRNGKey(11), **BASE)
    assert not np.allclose(a.delta[0, 0], a.delta[1, 0])     # seeds within one ensemble
    assert not np.allclose(a.delta[:, 0], b.delta[:, 0])     # different keys
    assert not np.allclose(a.ntk[:, 0], b.ntk[:, 0])


def test_an_integer_seed_is_the_key_prngkey_of_that_seed():
    """Every function that takes a key accepts an integer seed: key=9 is PRNGKey(9)."""
    a = nets.train_mlp(X, Y, eta=0.3, key=9, X_test=X_TEST, **BASE)
    b = nets.train_mlp(X, Y, eta=0.3, key=jax.random.PRNGKey(9), X_test=X_TEST, **BASE)
    np.testing.assert_array_equal(a.loss, b.loss)
    net = nets.make_mlp(D, depth=2, width=8)
    for w1, w2 in zip(nets.init_params(net, 4), nets.init_params(net, jax.random.PRNGKey(4))):
        np.testing.assert_array_equal(w1, w2)
    k1 = nets.init_kernels(net, X, 5, n_seeds=2)
    k2 = nets.init_kernels(net, X, jax.random.PRNGKey(5), n_seeds=2)
    np.testing.assert_array_equal(k1.ntk, k2.ntk)
    # new-style typed keys work too
    typed = nets.init_params(net, jax.random.key(4))
    assert [w.shape for w in typed] == nets.param_shapes(net)


def test_init_params_uses_an_independent_key_per_layer():
    net = nets.make_mlp(D, depth=3, width=D)       # W^0, W^1, W^2 all (D, D)
    W = nets.init_params(net, jax.random.PRNGKey(12))
    assert [w.shape for w in W] == [(D, D)] * 3 + [(D, 1)]
    assert nets.n_params(net) == 3 * D * D + D
    for i in range(3):
        for j in range(i):
            assert not np.allclose(W[i], W[j]), (i, j)
            # not even a sign flip or a shift of one another
            assert abs(np.corrcoef(np.ravel(W[i]), np.ravel(W[j]))[0, 1]) < 0.5


def test_forward_and_init_params_under_vmap_and_jit_match_the_eager_calls():
    """Chapter 4 maps ``forward`` over traced weights and ``init_params`` over traced keys: the
    checks must let tracers through, and the traced results equal the eager ones."""
    net = nets.make_mlp(D, depth=2, width=8, activation="tanh")
    keys = jax.random.split(jax.random.PRNGKey(13), 3)
    traced = jax.jit(jax.vmap(lambda k: nets.forward(net, nets.init_params(net, k), X)[0][0]))(keys)
    eager = np.stack([np.asarray(nets.forward(net, nets.init_params(net, k), X)[0][0])
                      for k in keys])
    np.testing.assert_allclose(traced, eager, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- dynamics
def test_loss_decreases_for_a_small_learning_rate():
    tr = nets.train_mlp(X, Y, eta=0.1, key=jax.random.PRNGKey(13), **BASE)
    assert np.all(np.diff(np.asarray(tr.loss), axis=1) < 0)


def test_training_error_follows_the_ntk_to_first_order_in_eta(x64):
    """delta[t+1] = delta[t] - (eta/P) ntk(t) delta[t] + O(eta^2).

    The residual of this first-order step must be a small fraction of the step itself, and it
    must be second order: halving eta divides the residual of the first step by ~4.
    """
    X64, Y64 = jnp.asarray(X, jnp.float64), jnp.asarray(Y, jnp.float64)

    def residuals(eta):
        tr = nets.train_mlp(X64, Y64, depth=2, width=32, activation="tanh", eta=eta, steps=3,
                            key=jax.random.PRNGKey(14), record_every=1)
        assert tr.delta.dtype == jnp.float64
        d, K = np.asarray(tr.delta[0]), np.asarray(tr.ntk[0])
        res, step = [], []
        for t in range(3):
            first_order = d[t] - eta / P * K[t] @ d[t]
            res.append(np.max(np.abs(d[t + 1] - first_order)))
            step.append(np.max(np.abs(d[t + 1] - d[t])))
        return np.array(res), np.array(step)

    eta = 0.02
    res1, step1 = residuals(eta)
    res2, _ = residuals(eta / 2)
    assert np.all(res1 < 0.05 * step1)
    assert 3.5 < res1[0] / res2[0] < 4.5


def test_integer_inputs_train_like_the_same_inputs_as_floats():
    X_int = (np.asarray(X) > 0).astype(np.int32)          # binary features, shape (P, D)
    a = nets.train_mlp(X_int, Y, eta=0.3, key=jax.random.PRNGKey(16), **BASE)
    b = nets.train_mlp(X_int.astype(np.float32), Y, eta=0.3, key=jax.random.PRNGKey(16), **BASE)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-6)


def test_coord_check_mup_updates_stay_order_one_and_ntk_updates_vanish_like_n_to_minus_half():
    """The slope of |dh^2| of a depth-2 net from width 64 to 1024 after one step: ~0 in muP, ~-1/2
    in the NTK parameterisation (Yang & Hu). With 16 seeds the slope scatters by ~0.03 from key
    to key (measured over six keys: muP within 0.04 of 0, NTK within 0.06 of -0.5), so 0.15 is a
    safe bound; a wrong width power in either would move it by >= 0.5. (A middle width adds
    nothing: for widths equally spaced in log N the least-squares slope is the end-point slope.)"""
    widths = [64, 1024]
    out = {p: nets.coord_check(X, Y, widths=widths, parameterization=p, depth=2, eta=0.5,
                               steps=1, key=jax.random.PRNGKey(12), n_seeds=16)
           for p in ("mup", "ntk")}
    slope = lambda c: wn.plotting.loglog_slope(widths, c.dh_size[:, 0, -1])[0]
    assert abs(slope(out["mup"])) < 0.15
    assert abs(slope(out["ntk"]) + 0.5) < 0.15
    c = out["mup"]
    assert c.h_size.shape == (2, 2) and c.dh_size.shape == (2, 1, 2) and c.df_size.shape == (2, 1)
    assert list(c.widths) == widths and c.parameterization == "mup"
    assert all(np.all(np.isfinite(a)) and np.all(a > 0) for a in (c.h_size, c.dh_size, c.df_size))
    # pre-activations at initialisation are O(1) at every width in both
    assert np.all(np.abs(np.log(out["ntk"].h_size)) < np.log(1.5))


# ----------------------------------------------------------------------------- non-finite results
def _caught(fn):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn()
    return out, [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning)]


def test_divergence_warns_naming_eta_and_the_stable_rate_of_the_initial_ntk():
    eta = 1e4
    tr, msgs = _caught(lambda: nets.train_mlp(X, Y, eta=eta, key=jax.random.PRNGKey(15), **BASE))
    assert not np.all(np.isfinite(np.asarray(tr.loss)))
    (msg,) = [m for m in msgs if "diverged" in m]
    rate = float(re.search(r"stable learning rate 2P/lambda_max = ([0-9.e+-]+)", msg).group(1))
    K0 = np.asarray(tr.ntk[:, 0], np.float64)
    expected = 2 * P / np.max(np.linalg.eigvalsh(K0)[:, -1])
    assert rate == pytest.approx(expected, rel=1e-2)
    assert "eta=10000 is above" in msg


def test_divergence_from_large_inputs_blames_the_input_scale():
    """Inputs of size 1e6 make the NTK ~1e12: the warning names the inputs, not only eta."""
    tr, msgs = _caught(lambda: nets.train_mlp(1e6 * X, Y, depth=1, width=8, activation="relu",
                                              eta=0.1, steps=8, key=0))
    (msg,) = [m for m in msgs if "diverged" in m]
    assert "inputs' scale" in msg and "rescale X" in msg


def test_a_non_finite_loss_at_initialisation_is_blamed_on_the_output_scale_not_eta():
    """The cause reported for a loss that is not finite at t = 0 (after the scale checks this
    needs a corrupted run, so the diagnosis is fed one directly)."""
    net = nets.make_mlp(D, depth=1, width=8, gamma0=1e-3)
    loss = np.array([[np.inf, np.inf]])
    with pytest.warns(RuntimeWarning, match=r"already at initialisation.*eta is not the cause"):
        nets._warn_if_not_finite(net, jnp.asarray(X), 0.1, loss, np.zeros((1, 2, P)), None,
                                 np.full((1, 2, P, P), np.inf), np.zeros((1, 1, 2, P, P)),
                                 np.zeros((1, 1, 2, P, P)), np.arange(2))


@pytest.mark.parametrize("center", [False, True])
def test_a_gamma0_so_small_that_the_output_must_overflow_is_refused(center):
    """At eta = 0 nothing underflows in the learning rate, but f(0) ~ 1/(gamma0 sqrt N) = 3.5e29
    does not fit in float32 once squared (uncentred loss), or itself for gamma0 = 1e-39."""
    g0 = 1e-39 if center else 1e-30
    with pytest.raises(ValueError, match=rf"gamma0={g0:g} is too small for float32.*overflow"):
        nets.train_mlp(X, Y, depth=1, width=8, eta=0.0, steps=2, key=0, gamma0=g0, center=center)


def test_a_tiny_gamma0_warns_that_round_off_swamps_the_targets():
    """gamma0 = 1e-6 at N = 8: f(0) ~ 3.5e5, whose float32 round-off (~0.04) is as large as a
    good fit's error: a warning that names gamma0 and float32, and still a finite run."""
    tr, msgs = _caught(lambda: nets.train_mlp(X, Y, depth=1, width=8, eta=0.1, steps=2, key=0,
                                              gamma0=1e-6, center=True))
    assert any("gamma0=1e-06" in m and "float32 round-off" in m for m in msgs), msgs
    assert all_finite(tr)


def test_kernels_of_inputs_that_overflow_float32_warn_with_the_cause():
    """Inputs of size 1e20 are finite, but X X^T is not in float32: a warning, not a silent inf."""
    net = nets.make_mlp(D, depth=2, width=8, activation="relu")
    params = nets.init_params(net, 0)
    with pytest.warns(RuntimeWarning, match=r"kernels: the result holds NaN or infinite values: "
                                            r"float32 overflowed \(largest input .*e\+20"):
        nets.kernels(net, params, 1e20 * X)
    with pytest.raises(ValueError, match=r"\bX is too large for float32"):
        nets.init_kernels(net, 1e20 * X, 0)
    with pytest.raises(ValueError, match=r"gamma0=1e-30 is too small for float32"):
        nets.init_kernels(nets.make_mlp(D, depth=1, width=8, gamma0=1e-30), X, 0)


def test_coord_check_warns_when_the_updates_diverge():
    with pytest.warns(RuntimeWarning, match=r"non-finite.*eta=1e\+30"):
        out = nets.coord_check(X, Y, widths=[8, 16], parameterization="standard", depth=1,
                               eta=1e30, steps=3, key=0, n_seeds=1)
    assert not np.all(np.isfinite(out.dh_size))


# ----------------------------------------------------------------------------- resource limits
def test_a_huge_depth_is_refused_at_once():
    t = time.perf_counter()
    with pytest.raises(ValueError, match=r"depth must be <= 64.*compile"):
        nets.train_mlp(X, Y, depth=10 ** 6, width=8, eta=0.1, steps=2, key=0)
    assert time.perf_counter() - t < 2


@pytest.mark.parametrize("call, argname", [
    (lambda: nets.train_mlp(X, Y, depth=2, width=1024, eta=0.1, steps=2, key=0), "width"),
    (lambda: nets.train_mlp(X, Y, depth=1, width=8, eta=0.1, steps=10 ** 5, key=0), "steps"),
    (lambda: nets.train_mlp(X, Y, depth=1, width=8, eta=0.1, steps=4000, record_every=1, key=0),
     "record_every"),
    (lambda: nets.train_mlp(X, Y, depth=1, width=64, eta=0.1, steps=2, key=0, n_seeds=10 ** 4),
     "n_seeds"),
    (lambda: nets.init_params(nets.make_mlp(D, depth=2, width=1024), 0), "width"),
    (lambda: nets.init_kernels(nets.make_mlp(D, depth=1, width=64), X, 0, n_seeds=10 ** 4),
     "n_seeds"),
    (lambda: nets.coord_check(X, Y, widths=[8, 4096], parameterization="mup", eta=0.1, key=0),
     "widths"),
    (lambda: nets.empirical_ntk(nets.make_mlp(D, depth=1, width=4096), [np.zeros((4096, D)),
                                np.zeros((4096, 1))], X), "rows of X / X2, or width"),
    (lambda: nets.forward(nets.make_mlp(D, depth=2, width=64),
                          nets.init_params(nets.make_mlp(D, depth=2, width=64), 0),
                          np.ones((10 ** 4, D))), "rows of X"),
], ids=["train-width", "train-steps", "train-record_every", "train-n_seeds", "init_params",
        "init_kernels", "coord_check", "empirical_ntk", "forward"])
def test_requests_beyond_the_memory_limit_are_refused_before_allocating(monkeypatch, call,
                                                                        argname):
    monkeypatch.setenv("WIDENETS_MEMORY_LIMIT", str(2 ** 20))          # 1 MiB
    with pytest.raises(ValueError, match=rf"would need about .*reduce .*{re.escape(argname)}"):
        call()


def test_small_requests_pass_under_a_small_memory_limit(monkeypatch):
    monkeypatch.setenv("WIDENETS_MEMORY_LIMIT", str(2 ** 20))
    net = nets.make_mlp(D, depth=1, width=8)
    assert [w.shape for w in nets.init_params(net, 0)] == [(8, D), (8, 1)]


@pytest.mark.parametrize("call", [
    lambda: nets.init_params(nets.make_mlp(D, depth=3, width=10 ** 6), 0),
    lambda: nets.train_mlp(X, Y, depth=1, width=8, eta=0.1, steps=10 ** 12, key=0),
], ids=["init_params-width-1e6", "train_mlp-steps-1e12"])
def test_truly_huge_requests_are_refused_against_the_real_limit(monkeypatch, call):
    """A width-10^6 net (2e12 weights, 15 TB) once aborted the whole process in XLA."""
    monkeypatch.delenv("WIDENETS_MEMORY_LIMIT", raising=False)
    with pytest.raises(ValueError, match=r"TiB|GiB.*available here"):
        call()


# ----------------------------------------------------------------------------- bad input
NET = nets.make_mlp(D, depth=2, width=8)
PARAMS = nets.init_params(NET, 0)
NET2 = nets.make_mlp(D, depth=2, width=8, n_out=2)
NAN_X = np.where(np.eye(P, D) > 0, np.nan, X)
INF_X = np.where(np.eye(P, D) > 0, np.inf, X)
KEYS = jax.random.split(jax.random.PRNGKey(0), 3)

MLP_ARGS = dict(D=D, depth=2, width=8)
TRAIN = dict(X=X, y=Y, depth=1, width=8, eta=0.1, steps=2, key=0)
COORD = dict(X=X, y=Y, widths=[8, 16], parameterization="mup", eta=0.1, steps=1, key=0, n_seeds=1)
FWD = dict(net=NET, params=PARAMS, X=X)


def _bad(fn, base, match, /, **change):
    label = "-".join(f"{k}={v!r}"[:24] for k, v in change.items())
    return pytest.param(fn, {**base, **change}, match, id=f"{fn.__name__}-{label}")


BAD_INPUTS = [
    # make_mlp (and so every function building a network)
    *[_bad(nets.make_mlp, MLP_ARGS, r"\bD must be an integer", D=v)
      for v in (0, -1, 2.5, "8", True, None)],
    *[_bad(nets.make_mlp, MLP_ARGS, r"\bdepth must be an integer", depth=v)
      for v in (0, -2, 1.5, "2", True, None)],
    *[_bad(nets.make_mlp, MLP_ARGS, r"\bdepth must be <= 64", depth=v) for v in (65, 10 ** 6)],
    *[_bad(nets.make_mlp, MLP_ARGS, r"\bwidth must be an integer", width=v)
      for v in (0, -3, 8.9, 8.0, "8", False, None)],
    *[_bad(nets.make_mlp, MLP_ARGS, r"\bactivation must be one of", activation=v)
      for v in ("sigmoid", "RELU", None, 1)],
    *[_bad(nets.make_mlp, MLP_ARGS, r"\bparameterization must be one of", parameterization=v)
      for v in ("xavier", "MUP", None)],
    *[_bad(nets.make_mlp, MLP_ARGS, r"\bgamma0 must be", gamma0=v)
      for v in (0, -1.0, np.nan, np.inf, "1", True, None, [1.0])],
    *[_bad(nets.make_mlp, MLP_ARGS, r"\bgamma0=.* too extreme", gamma0=v) for v in (1e-320, 1e200)],
    *[_bad(nets.make_mlp, MLP_ARGS, r"\bn_out must be an integer", n_out=v) for v in (0, 1.0, True)],
    # a network where one is expected
    *[_bad(nets.scalings, {}, r"\bnet must be an MLP", net=v) for v in ({"D": 8}, None, (8, 2, 8))],
    _bad(nets.scalings, {}, r"\bgamma0 must be finite and > 0", net=nets.MLP(D, 2, 8, gamma0=0)),
    _bad(nets.scalings, {}, r"\bD must be an integer", net=nets.MLP(0, 2, 8)),
    _bad(nets.scalings, {}, r"\bactivation must be one of", net=nets.MLP(D, 2, 8, "sigmoid")),
    _bad(nets.param_shapes, {}, r"\bnet must be an MLP", net={}),
    _bad(nets.n_params, {}, r"\bnet must be an MLP", net=[8, 2, 8]),
    *[_bad(nets.activation_fn, {}, r"\bactivation must be one of", name=v) for v in ("gelu", None)],
    *[_bad(nets.abc_exponents, {"parameterization": "mup"}, rf"\b{k} must be", **{k: v})
      for k, v in (("parameterization", "sp"), ("depth", 0), ("depth", 1000), ("D", 0),
                   ("D", 2.5))],
    # init_params: keys
    _bad(nets.init_params, {"net": NET, "key": 0}, r"\bnet must be an MLP", net={}),
    *[_bad(nets.init_params, {"net": NET}, r"\bkey must be a JAX PRNG key", key=v)
      for v in ("a", 1.5, None, True, np.zeros(3), KEYS, jnp.zeros(2))],
    _bad(nets.init_params, {"net": NET}, r"\bkey: an integer seed must fit", key=2 ** 70),
    # forward / apply / kernels / empirical_ntk: inputs, weights, networks
    *[_bad(fn, FWD, r"\bX contains NaN or infinite", X=v) for fn in (nets.forward, nets.apply,
                                                                       nets.kernels,
                                                                       nets.empirical_ntk)
      for v in (NAN_X, INF_X)],
    *[_bad(fn, FWD, r"\bX must have D=8 columns", X=X[:, :5]) for fn in (nets.forward, nets.apply,
                                                                          nets.kernels,
                                                                          nets.empirical_ntk)],
    *[_bad(fn, FWD, r"\bX must have shape \(P, D\)", X=v) for fn in (nets.forward, nets.kernels)
      for v in (X[0], X[None], np.zeros((0, D)), np.float32(1.0))],
    *[_bad(fn, FWD, r"\bX must be an array of real numbers", X=v)
      for fn in (nets.forward, nets.empirical_ntk)
      for v in (np.full((P, D), "a"), X + 1j, None, [[1.0, 2.0], [3.0]])],
    *[_bad(fn, FWD, r"\bnet must be an MLP", net=v) for fn in (nets.forward, nets.apply,
                                                                nets.kernels, nets.empirical_ntk)
      for v in ({"D": D, "depth": 2, "width": 8}, None)],
    _bad(nets.forward, FWD, r"\bgamma0 must be finite", net=nets.MLP(D, 2, 8, gamma0=0)),
    *[_bad(fn, FWD, r"\bparams must be the list of 3 weight arrays", params=v)
      for fn in (nets.forward, nets.kernels) for v in ({"W0": PARAMS[0]}, PARAMS[0], None)],
    _bad(nets.forward, FWD, r"\bparams must hold 3 weight arrays", params=PARAMS[:2]),
    _bad(nets.forward, FWD, r"\bparams\[0\] must have shape \(8, 8\).*leading seed axis",
         params=[w[None] for w in PARAMS]),
    _bad(nets.forward, FWD, r"\bparams\[1\] must have shape \(8, 8\)",
         params=[PARAMS[0], PARAMS[1][:4], PARAMS[2]]),
    _bad(nets.forward, FWD, r"\bparams\[2\] contains NaN",
         params=[PARAMS[0], PARAMS[1], jnp.full((8, 1), jnp.nan)]),
    _bad(nets.forward, FWD, r"\bparams\[0\] must be an array of real numbers",
         params=[np.full((8, D), "w"), PARAMS[1], PARAMS[2]]),
    _bad(nets.forward, FWD, r"\bparams\[0\] must be an array of real numbers",
         params=[jnp.zeros((8, D), jnp.int32), PARAMS[1], PARAMS[2]]),
    _bad(nets.forward, FWD, r"\beps must be a list of 2 arrays", eps=[jnp.zeros((P, 8))]),
    _bad(nets.forward, FWD, r"\beps\[1\] must have shape \(6, 8\)",
         eps=[jnp.zeros((P, 8)), jnp.zeros((P, 9))]),
    _bad(nets.kernels, {**FWD, "net": NET2}, r"\bn_out=1\b",
         params=nets.init_params(NET2, 0)),
    *[_bad(nets.empirical_ntk, FWD, r"\bX2 ", X2=v) for v in (X[:, :3], NAN_X, X[0])],
    # init_kernels
    *[_bad(nets.init_kernels, {"net": NET, "X": X, "key": 0}, m, **c) for m, c in (
        (r"\bX must have D=8 columns", dict(X=X[:, :4])),
        (r"\bX contains NaN", dict(X=NAN_X)),
        (r"\bn_seeds must be an integer", dict(n_seeds=0)),
        (r"\bn_seeds must be an integer", dict(n_seeds=2.0)),
        (r"\bkey must be a JAX PRNG key", dict(key="seed")),
        (r"\bn_out=1\b", dict(net=NET2)),
        (r"\bnet must be an MLP", dict(net={})),
    )],
    # train_mlp
    *[_bad(nets.train_mlp, TRAIN, r"\bX must have shape \(P, D\)", X=v)
      for v in (X[0], X[..., None], np.zeros((0, D)), np.zeros((P, 0)), 3.0)],
    *[_bad(nets.train_mlp, TRAIN, r"\bX contains NaN or infinite", X=v) for v in (NAN_X, INF_X)],
    *[_bad(nets.train_mlp, TRAIN, r"\bX must be an array of real numbers", X=v)
      for v in (np.full((P, D), "x"), X * 1j, None, {"X": X})],
    *[_bad(nets.train_mlp, TRAIN, r"\by must have shape \(6,\)", y=v)
      for v in (np.ones(P + 1), np.ones(P - 1), np.ones((P, 1)), np.ones(0), 1.0)],
    *[_bad(nets.train_mlp, TRAIN, r"\by contains NaN", y=v)
      for v in (np.where(np.arange(P) == 2, np.nan, Y), np.full(P, -np.inf))],
    *[_bad(nets.train_mlp, TRAIN, r"\by must be an array of real numbers", y=v)
      for v in (["a"] * P, None, Y + 2j, [Y[:3], Y[:2]])],
    *[_bad(nets.train_mlp, TRAIN, r"\beta must be", eta=v)
      for v in (-0.1, np.nan, np.inf, "0.1", True, None, [0.1], b"1")],
    *[_bad(nets.train_mlp, TRAIN, r"\bgamma0 must be", gamma0=v) for v in (0.0, -1.0, "1", False)],
    *[_bad(nets.train_mlp, TRAIN, r"\bsteps must be an integer", steps=v)
      for v in (0, -1, 2.5, "2", True, None)],
    *[_bad(nets.train_mlp, TRAIN, r"\bn_seeds must be an integer", n_seeds=v)
      for v in (0, 1.5, True, "2")],
    *[_bad(nets.train_mlp, TRAIN, r"\bwidth must be an integer", width=v)
      for v in (0, "8", True, 8.5, [8])],
    *[_bad(nets.train_mlp, TRAIN, r"\bdepth must be", depth=v) for v in (0, "1", 10 ** 6)],
    _bad(nets.train_mlp, TRAIN, r"\bactivation must be one of", activation="sigmoid"),
    _bad(nets.train_mlp, TRAIN, r"\bparameterization must be one of", parameterization="xavier"),
    *[_bad(nets.train_mlp, TRAIN, r"\brecord_every must", **c)
      for c in (dict(record_every=0), dict(steps=6, record_every=4), dict(record_every=1.0),
                dict(steps=2, record_every=3))],
    *[_bad(nets.train_mlp, TRAIN, r"\bX_test ", X_test=v)
      for v in (np.ones((2, D + 1)), np.where(np.eye(2, D) > 0, np.nan, 1.0), np.ones(D),
                np.full((2, D), "t"))],
    *[_bad(nets.train_mlp, TRAIN, r"\bcenter must be True or False", center=v)
      for v in ("no", "False", 1, None, [True])],
    *[_bad(nets.train_mlp, TRAIN, r"\bkey must be a JAX PRNG key", key=v)
      for v in ("a", 1.5, None, KEYS, np.ones(2))],
    _bad(nets.train_mlp, TRAIN, r"underflows float32.*gamma0=1e-30 is too small", gamma0=1e-30),
    _bad(nets.train_mlp, TRAIN, r"overflows float32.*gamma0=1e\+25", gamma0=1e25),
    _bad(nets.train_mlp, TRAIN, r"overflows float32.*eta=1e\+40", eta=1e40),
    _bad(nets.train_mlp, TRAIN, r"\bX is too large for float32", X=1e30 * X),
    _bad(nets.train_mlp, TRAIN, r"would need about .*reduce width", width=10 ** 6, depth=2),
    _bad(nets.train_mlp, TRAIN, r"would need about .*reduce steps", steps=10 ** 12),
    # coord_check
    *[_bad(nets.coord_check, COORD, r"\bwidths must", widths=v)
      for v in ([], [8.9, 16.2], ["8", "16"], [True, 8], [0, 8], "8", None, [[8, 16]], 8.5,
                {8: 1})],
    _bad(nets.coord_check, COORD, r"\bparameterization must be one of", parameterization="sp"),
    *[_bad(nets.coord_check, COORD, r"\beta must be", eta=v) for v in ("x", -1.0, np.nan)],
    _bad(nets.coord_check, COORD, r"\bsteps must be an integer", steps=0),
    _bad(nets.coord_check, COORD, r"\bn_seeds must be an integer", n_seeds=0),
    _bad(nets.coord_check, COORD, r"\bdepth must be", depth=0),
    _bad(nets.coord_check, COORD, r"\bgamma0 must be", gamma0=-1),
    _bad(nets.coord_check, COORD, r"\bkey must be a JAX PRNG key", key="a"),
    _bad(nets.coord_check, COORD, r"\bX contains NaN", X=NAN_X),
    _bad(nets.coord_check, COORD, r"\by must have shape", y=Y[:3]),
    _bad(nets.coord_check, COORD, r"would need about .*reduce widths", widths=[10 ** 7]),
]


@pytest.mark.parametrize("fn, kwargs, match", BAD_INPUTS)
def test_bad_input_raises_a_value_error_that_says_what_is_wrong(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(**kwargs)
