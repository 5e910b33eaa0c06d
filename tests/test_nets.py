"""widenets.nets: the finite-width MLPs, their kernels, their training records and their input checks.

Sizes are tiny (P = 6 inputs in D = 8 dimensions, widths of tens) so that every jitted trainer
compiles in a second or two; trainers are cached per configuration, so tests that can share
one (``BASE``) do.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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


# ----------------------------------------------------------------------------- records
def test_trajectory_fields_have_the_contract_shapes():
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


def test_delta_at_initialisation_is_target_minus_network_output():
    key = jax.random.PRNGKey(2)
    tr = nets.train_mlp(X, Y, eta=0.1, key=key, X_test=X_TEST, **BASE)
    for s, k in enumerate(jax.random.split(key, BASE["n_seeds"])):   # seed s uses split(key)[s]
        params = nets.init_params(tr.net, k)
        np.testing.assert_allclose(tr.delta[s, 0], Y - nets.apply(tr.net, params, X)[:, 0],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tr.f_test[s, 0], nets.apply(tr.net, params, X_TEST)[:, 0],
                                   rtol=1e-5, atol=1e-6)


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


# ----------------------------------------------------------------------------- parameterisations
@settings(max_examples=25, deadline=None)
@given(width=st.integers(1, 8192), gamma0=st.floats(1e-3, 1e3), depth=st.integers(1, 4))
def test_ntk_scale_is_gamma0_squared_times_width_for_mup_only(width, gamma0, depth):
    for p, expected in [("mup", gamma0 ** 2 * width), ("ntk", gamma0 ** 2),
                        ("standard", gamma0 ** 2)]:
        net = nets.make_mlp(D, depth=depth, width=width, parameterization=p, gamma0=gamma0)
        assert nets.scalings(net).ntk_scale == pytest.approx(expected, rel=1e-12)


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
    is a standard normal in every seed. Over S = 4000 seeds the mean of z^2 has standard
    error sqrt(2 / S) = 0.022: a tolerance of 0.11 is 5 standard errors. A wrong width power
    in the readout (1/sqrt(N) instead of 1/N) would give mean z^2 = N >= 16.
    """
    S, gamma0 = 4000, 2.0
    net = nets.make_mlp(D, depth=2, width=width, activation="relu", gamma0=gamma0)
    X4 = jnp.asarray(X[:4])

    @jax.jit
    @jax.vmap
    def sample(k):
        params = nets.init_params(net, k)
        return nets.apply(net, params, X4)[:, 0], nets.kernels(net, params, X4).phi[-1]

    f, phi_L = sample(jax.random.split(jax.random.PRNGKey(8), S))
    z2 = np.asarray(f) ** 2 * gamma0 ** 2 * width / np.diagonal(np.asarray(phi_L), axis1=1, axis2=2)
    assert abs(z2.mean() - 1) < 0.11
    # and the whole output covariance: E[f f^T] gamma0^2 N = E[Phi^L]; with S = 4000 the
    # relative Frobenius error is <~ sqrt(2 P / S) = 0.045 for P = 4 inputs; tolerance 0.15
    cov = np.einsum("sa,sb->ab", f, f) / S * gamma0 ** 2 * width
    ref = np.asarray(phi_L).mean(0)
    assert np.linalg.norm(cov - ref) / np.linalg.norm(ref) < 0.15


# ----------------------------------------------------------------------------- randomness
def test_fixed_key_reproduces_the_trajectory_exactly():
    a = nets.train_mlp(X, Y, eta=0.3, key=jax.random.PRNGKey(9), X_test=X_TEST, **BASE)
    b = nets.train_mlp(X, Y, eta=0.3, key=jax.random.PRNGKey(9), X_test=X_TEST, **BASE)
    for field in ("loss", "delta", "f_test", "ntk", "phi", "g"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_different_seeds_give_different_networks():
    a = nets.train_mlp(X, Y, eta=0.3, key=jax.random.PRNGKey(10), **BASE)
    b = nets.train_mlp(X, Y, eta=0.3, key=jax.random.PRNGKey(11), **BASE)
    assert not np.allclose(a.delta[0, 0], a.delta[1, 0])     # seeds within one ensemble
    assert not np.allclose(a.delta[:, 0], b.delta[:, 0])     # different keys
    assert not np.allclose(a.ntk[:, 0], b.ntk[:, 0])


def test_init_params_uses_an_independent_key_per_layer():
    net = nets.make_mlp(D, depth=3, width=D)       # W^0, W^1, W^2 all (D, D)
    W = nets.init_params(net, jax.random.PRNGKey(12))
    assert [w.shape for w in W] == [(D, D)] * 3 + [(D, 1)]
    for i in range(3):
        for j in range(i):
            assert not np.allclose(W[i], W[j]), (i, j)
            # not even a sign flip or a shift of one another
            assert abs(np.corrcoef(np.ravel(W[i]), np.ravel(W[j]))[0, 1]) < 0.5


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


def test_a_diverging_run_warns():
    with pytest.warns(RuntimeWarning, match="diverged"):
        nets.train_mlp(X, Y, eta=1e8, key=jax.random.PRNGKey(15), **BASE)


def test_integer_inputs_train_like_the_same_inputs_as_floats():
    X_int = (np.asarray(X) > 0).astype(np.int32)          # binary features, shape (P, D)
    a = nets.train_mlp(X_int, Y, eta=0.3, key=jax.random.PRNGKey(16), **BASE)
    b = nets.train_mlp(X_int.astype(np.float32), Y, eta=0.3, key=jax.random.PRNGKey(16), **BASE)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-6)


# ----------------------------------------------------------------------------- bad input
GOOD = dict(depth=1, width=8, eta=0.1, steps=2, key=jax.random.PRNGKey(0))


@pytest.mark.parametrize("change, argname", [
    (dict(X=np.ones(P)), "X"),                        # bad X shape
    (dict(X=np.ones((P, D, 1))), "X"),
    (dict(X=np.where(np.eye(P, D) > 0, np.nan, X)), "X"),   # NaN in X
    (dict(y=np.ones(P + 1)), "y"),                    # y does not match X
    (dict(y=np.ones((P, 1))), "y"),
    (dict(eta=-0.1), "eta"),
    (dict(gamma0=0.0), "gamma0"),
    (dict(gamma0=-1.0), "gamma0"),
    (dict(steps=0), "steps"),
    (dict(n_seeds=0), "n_seeds"),
    (dict(width=0), "width"),
    (dict(depth=0), "depth"),
    (dict(activation="sigmoid"), "activation"),
    (dict(parameterization="xavier"), "parameterization"),
    (dict(steps=6, record_every=4), "record_every"),
    (dict(X_test=np.ones((2, D + 1))), "X_test"),
])
def test_bad_input_raises_value_error_naming_the_argument(change, argname):
    args = dict(X=X, y=Y, **GOOD)
    args.update(change)
    Xa, ya = args.pop("X"), args.pop("y")
    with pytest.raises(ValueError, match=rf"\b{argname}\b"):
        nets.train_mlp(Xa, ya, **args)


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=4).filter(
    lambda s: len(s) != 2 or 0 in s))
def test_inputs_of_any_wrong_shape_are_rejected_naming_X(shape):
    with pytest.raises(ValueError, match=r"\bX must have shape"):
        nets.train_mlp(np.ones(shape), np.ones(3), **GOOD)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 12).filter(lambda n: n != P))
def test_targets_of_the_wrong_length_are_rejected_naming_y(n):
    with pytest.raises(ValueError, match=r"\by must have shape"):
        nets.train_mlp(X, np.ones(n), **GOOD)
