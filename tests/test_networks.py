"""Finite networks (widenets.nets): shapes, parameterisation scalings, the NTK, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import enable_x64

import widenets as wn
from widenets import nets

TASK = wn.data.gaussian_task(jax.random.PRNGKey(0), 6, 8, P_test=3)


def test_trajectory_has_the_contract_shapes():
    tr = nets.train_mlp(TASK.X, TASK.y, depth=2, width=16, eta=0.5, steps=6, key=jax.random.PRNGKey(1),
                        n_seeds=3, record_every=2, X_test=TASK.X_test)
    assert tr.loss.shape == (3, 7) and tr.delta.shape == (3, 7, 6) and tr.f_test.shape == (3, 7, 3)
    assert list(tr.times) == [0, 2, 4, 6]
    assert tr.ntk.shape == (3, 4, 6, 6) and tr.phi.shape == (3, 2, 4, 6, 6) and tr.g.shape == (3, 2, 4, 6, 6)
    np.testing.assert_allclose(tr.loss, 0.5 * np.mean(np.asarray(tr.delta) ** 2, axis=-1), rtol=1e-5)


def test_delta_at_init_is_y_minus_output_and_centering_makes_it_y():
    key = jax.random.PRNGKey(2)
    tr = nets.train_mlp(TASK.X, TASK.y, depth=1, width=32, eta=0.1, steps=2, key=key)
    net = tr.net
    f0 = nets.apply(net, nets.init_params(net, jax.random.split(key, 1)[0]), TASK.X)[:, 0]
    np.testing.assert_allclose(tr.delta[0, 0], TASK.y - f0, atol=1e-6)
    tc = nets.train_mlp(TASK.X, TASK.y, depth=1, width=32, eta=0.1, steps=2, key=key, center=True)
    np.testing.assert_allclose(tc.delta[0, 0], TASK.y, atol=1e-6)
    # centring does not change the gradients, hence the kernels
    np.testing.assert_allclose(tc.ntk[0, 0], tr.ntk[0, 0], rtol=1e-5)


@pytest.mark.parametrize("parameterization", ["mup", "ntk", "standard"])
@pytest.mark.parametrize("activation", ["linear", "relu", "tanh", "erf"])
def test_ntk_factorises_over_layers_exactly(parameterization, activation):
    with enable_x64():
        net = nets.make_mlp(8, depth=3, width=12, activation=activation,
                            parameterization=parameterization, gamma0=0.7)
        params = nets.init_params(net, jax.random.PRNGKey(3))
        X = jnp.asarray(TASK.X, jnp.float64)
        fast = nets.kernels(net, params, X).ntk
        slow = nets.empirical_ntk(net, params, X)
        np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)


def test_mup_ntk_is_sum_of_gradient_times_feature_kernels():
    with enable_x64():
        X = jnp.asarray(TASK.X, jnp.float64)
        net = nets.make_mlp(8, depth=2, width=20, activation="tanh", gamma0=1.3)
        k = nets.kernels(net, nets.init_params(net, jax.random.PRNGKey(4)), X)
        Kx = wn.data.input_kernel(X)
        expected = k.g[0] * Kx + k.g[1] * k.phi[0] + k.phi[1]
        np.testing.assert_allclose(k.ntk, expected, rtol=1e-10)


def test_ntk_scale_of_each_parameterisation():
    for p, scale in [("mup", lambda g, n: g ** 2 * n), ("ntk", lambda g, n: g ** 2),
                     ("standard", lambda g, n: g ** 2)]:
        sc = nets.scalings(nets.make_mlp(5, depth=2, width=64, parameterization=p, gamma0=0.5))
        assert sc.ntk_scale == pytest.approx(scale(0.5, 64))


def test_mup_with_gamma0_is_ntk_parameterisation_with_gamma0_sqrt_n():
    kw = dict(depth=2, activation="relu", eta=0.7, steps=5, key=jax.random.PRNGKey(5), n_seeds=2)
    a = nets.train_mlp(TASK.X, TASK.y, width=64, gamma0=0.5, parameterization="mup", **kw)
    b = nets.train_mlp(TASK.X, TASK.y, width=64, gamma0=0.5 * 8, parameterization="ntk", **kw)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-5)
    np.testing.assert_allclose(a.ntk, b.ntk, rtol=1e-5)


def test_mup_output_at_init_has_variance_phi_over_gamma0_sq_n():
    """Var f(x) = Phi^L(x, x) / (gamma0^2 N): check over 400 seeds (std error of a variance
    estimate is sqrt(2/400) ~ 7%; tolerance 25%)."""
    net = nets.make_mlp(8, depth=1, width=50, activation="relu", gamma0=2.0)
    keys = jax.random.split(jax.random.PRNGKey(6), 400)
    f = jax.vmap(lambda k: nets.apply(net, nets.init_params(net, k), TASK.X[:1])[0, 0])(keys)
    phi = float(wn.kernels.analytic(TASK.X[:1], depth=1, activation="relu").nngp[0, 0])
    assert float(jnp.var(f)) == pytest.approx(phi / (4.0 * 50), rel=0.25)


def test_fixed_key_reproduces_and_seeds_differ():
    kw = dict(depth=2, width=16, eta=0.3, steps=4, key=jax.random.PRNGKey(7), n_seeds=2)
    a, b = nets.train_mlp(TASK.X, TASK.y, **kw), nets.train_mlp(TASK.X, TASK.y, **kw)
    np.testing.assert_array_equal(a.loss, b.loss)
    assert not np.allclose(a.loss[0], a.loss[1])


def test_layers_get_independent_weights():
    net = nets.make_mlp(8, depth=3, width=8)
    p = nets.init_params(net, jax.random.PRNGKey(8))
    assert not np.allclose(p[1], p[2])


def test_error_follows_the_ntk_to_first_order_in_eta():
    eta = 1e-3
    tr = nets.train_mlp(TASK.X, TASK.y, depth=2, width=64, eta=eta, steps=3, key=jax.random.PRNGKey(9),
                        record_every=1)
    P = TASK.X.shape[0]
    for t in range(3):
        pred = tr.delta[0, t] - eta / P * tr.ntk[0, t] @ tr.delta[0, t]
        step = tr.delta[0, t + 1] - tr.delta[0, t]
        assert float(jnp.max(jnp.abs(tr.delta[0, t + 1] - pred))) < 1e-2 * float(jnp.max(jnp.abs(step)))


def test_small_learning_rate_decreases_the_loss():
    tr = nets.train_mlp(TASK.X, TASK.y, depth=2, width=64, eta=0.2, steps=30, key=jax.random.PRNGKey(10))
    assert np.all(np.diff(np.asarray(tr.loss[0])) < 0)


def test_divergence_warns():
    with pytest.warns(RuntimeWarning, match="diverged"):
        nets.train_mlp(TASK.X, TASK.y, depth=2, width=64, eta=1e4, steps=30, key=jax.random.PRNGKey(11))


def test_coord_check_scalings():
    widths = [64, 256, 1024]
    out = {p: nets.coord_check(TASK.X, TASK.y, widths=widths, parameterization=p, eta=e, steps=1,
                               key=jax.random.PRNGKey(12), n_seeds=2)
           for p, e in (("mup", 0.5), ("ntk", 0.5))}
    slope = lambda c: wn.plotting.loglog_slope(widths, c.dh_size[:, 0, -1])[0]
    assert abs(slope(out["mup"])) < 0.15
    assert abs(slope(out["ntk"]) + 0.5) < 0.15
    assert out["mup"].dh_size.shape == (3, 1, 2) and out["mup"].df_size.shape == (3, 1)


def test_abc_exponents_match_yang_and_hu():
    assert nets.abc_exponents("mup")["a0"] == (-0.5, 0.0, 0.5)
    assert nets.abc_exponents("mup")["b0"] == (0.5, 0.5, 0.5)
    assert nets.abc_exponents("ntk")["a"] == (0.0, 0.5, 0.5)
    assert nets.abc_exponents("standard")["b"] == (0.0, 0.5, 0.5)


def test_coord_check_rejects_bad_input():
    with pytest.raises(ValueError, match="widths"):
        nets.coord_check(TASK.X, TASK.y, widths=[0, 8], parameterization="mup", eta=0.1,
                         key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="parameterization"):
        nets.coord_check(TASK.X, TASK.y, widths=[8], parameterization="sp", eta=0.1,
                         key=jax.random.PRNGKey(0))
