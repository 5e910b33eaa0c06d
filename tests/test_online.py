"""Online SGD on a linear teacher (issue 11f): the networks (wn.nets.train_online) and the
leading 1/N and 1/B corrections to their generalisation error (wn.fluctuations.online_error)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import widenets as wn
from widenets import nets
from widenets.fluctuations import online_error
from widenets.fluctuations.online import _second_order

# the setting of the network comparisons: |beta*| = 1, muP, gamma0 = 1, the error decays from
# 1/D = 0.05 to ~4e-4 (infinite width) over 40 steps; the width correction peaks near t = 18
D, G0, ETA, T = 20, 1.0, 0.5, 40
TIMES = np.array([10, 15, 20, 25, 30])


def _teacher(d=D, seed=1):
    b = np.random.default_rng(seed).normal(size=d)
    return b / np.linalg.norm(b)


def test_two_direction_reduction_equals_full_problem(x64):
    """The theory reduced to {beta*, one orthogonal direction} by rotational symmetry equals the
    D-dimensional computation at D = 4 to round-off: the width covariance against the existing
    exact propagator on Kx = I_D (population GD = full-batch GD on x_mu = sqrt(D) e_mu), the
    biases and the batch covariance against the full D-dimensional second-order expansion, and
    the infinite-width error against the exact discrete-time deep-linear DMFT."""
    d, g0, eta, steps, norm = 4, 1.5, 0.8, 25, 1.3
    bs = norm * _teacher(d, seed=0)
    u = bs / norm
    th = online_error(d, norm, gamma0=g0, eta=eta, steps=steps)
    par, perp = np.outer(u, u), np.eye(d) - np.outer(u, u)
    prop = wn.fluctuations.propagator(np.eye(d), bs, depth=1, activation="linear", gamma0=g0,
                                      eta=eta, steps=steps, update="exact")
    width_cov = th.width_par[:, None, None] * par + th.width_perp[:, None, None] * perp
    scale = np.abs(prop.delta_cov).max()
    np.testing.assert_allclose(width_cov, prop.delta_cov, atol=1e-10 * scale)
    mean, cov_N, bias_N, cov_B, bias_B = _second_order(bs, gamma0=g0, eta=eta, steps=steps)
    np.testing.assert_allclose(cov_N, prop.delta_cov, atol=1e-10 * scale)
    np.testing.assert_allclose(th.width_bias[:, None] * u, bias_N, atol=1e-10 * np.abs(bias_N).max())
    batch_cov = th.batch_par[:, None, None] * par + th.batch_perp[:, None, None] * perp
    np.testing.assert_allclose(batch_cov, cov_B, atol=1e-10 * np.abs(cov_B).max())
    np.testing.assert_allclose(th.batch_bias[:, None] * u, bias_B, atol=1e-10 * np.abs(bias_B).max())
    sol = wn.dmft.deep_linear(np.eye(d), bs, depth=1, gamma0=g0, eta=eta, steps=steps,
                              update="exact")
    np.testing.assert_allclose(th.error_inf, np.sum(np.asarray(sol.delta) ** 2, -1) / d,
                               rtol=1e-10, atol=1e-15)
    # the orthogonal directions carry no mean and no bias; the correction starts at 0 (centred)
    np.testing.assert_allclose(mean @ perp, 0.0, atol=1e-12)
    assert th.width_correction[0] == 0.0 and th.batch_correction[0] == 0.0
    # without centring the initial function's variance D / (gamma0^2 N) adds at t = 0
    raw = online_error(d, norm, gamma0=g0, eta=eta, steps=steps, center=False)
    assert raw.width_correction[0] == pytest.approx(1 / g0 ** 2, rel=1e-10)


def test_width_correction_against_networks(x64):
    """Theory vs 300 networks per width trained on the population gradient (no SGD noise),
    D = 20, N = 100 and 400, at t = 10..30 (where the error is 0.017 ... 0.0015).

    Tolerances (E = 300 seeds):
    * N Var along an orthogonal direction, averaged over the D - 1 = 19 of them (independent at
      leading order): relative standard error sqrt(2 / (19 E)) = 1.9%; 8% allowed (measured
      within 2.5% at N = 100, 1% at N = 400).
    * N Var along beta*: relative SE sqrt(2 / E) = 8.2%; 25% allowed (3 SE; measured 10% low
      at N = 100, within 2.5% at N = 400).
    * The O(1/N) bias along beta*, N (<Delta_par> - Delta_inf), and the excess error
      N (<error> - error_inf): 3.5 standard errors of the ensemble mean plus 10% of the
      prediction for the O(D/N) higher orders (a Wishart simulation with 20000 draws per N
      agrees with the bias to 3%). The bias matters: 2 Delta_inf b_par / D is 45-60% of the
      width correction here.
    * Narrower is worse: <error> at N = 100 exceeds <error> at N = 400 by more than 3 standard
      errors of the difference, and both exceed the infinite-width error.
    """
    E = 300
    bs = _teacher()
    th = online_error(D, 1.0, gamma0=G0, eta=ETA, steps=T)
    means = {}
    for N in (100, 400):
        tr = nets.train_online(D, bs, depth=1, width=N, gamma0=G0, eta=ETA, steps=T,
                               batch_size=None, key=N, n_seeds=E)
        beta, err = np.asarray(tr.beta), np.asarray(tr.error)
        Delta = bs - beta
        par = Delta @ bs
        perp = Delta - par[..., None] * bs
        t = TIMES
        var_perp = N * np.sum(perp ** 2, -1).mean(0)[t] / (D - 1)
        np.testing.assert_allclose(var_perp, th.width_perp[t], rtol=0.08)
        np.testing.assert_allclose(N * par.var(0, ddof=1)[t], th.width_par[t], rtol=0.25)
        bias = N * (par.mean(0) - th.delta_inf)[t]
        bias_se = N * par.std(0, ddof=1)[t] / np.sqrt(E)
        assert np.all(np.abs(bias - th.width_bias[t]) < 3.5 * bias_se + 0.1 * th.width_bias[t]), \
            (N, bias, bias_se, th.width_bias[t])
        excess = N * (err.mean(0) - th.error_inf)[t]
        excess_se = N * err.std(0, ddof=1)[t] / np.sqrt(E)
        assert np.all(np.abs(excess - th.width_correction[t])
                      < 3.5 * excess_se + 0.1 * th.width_correction[t]), \
            (N, excess, excess_se, th.width_correction[t])
        means[N] = (err.mean(0)[t], err.std(0, ddof=1)[t] / np.sqrt(E))
        assert np.all(means[N][0] > th.error_inf[t])
    gap = means[100][0] - means[400][0]
    assert np.all(gap > 3 * np.hypot(means[100][1], means[400][1])), (gap, means)
    assert np.all(th.width_correction[1:] > 0)          # slower at every step, in theory too


def test_batch_size_effect(x64):
    """SGD noise adds b_B / B to the error: networks of width 100 with fresh batches of B = 20
    and 200 (E = 200 seeds each) against error_inf + width_correction / N + batch_correction / B
    at t = 10..30. Measured within 1.2 standard errors (the standard error of the mean error is
    0.4-1.4% of it); allowed: 4 SE plus 5% of the total 1/N + 1/B correction (neglected
    O(1/N^2, 1/(NB), 1/B^2) terms). Smaller batches are slower (more than 3 SE of the
    difference), and at B = 10^4 the batch term is below 3% of the width term of N = 400
    networks (so the population gradient stands for a large batch)."""
    E, N = 200, 100
    bs = _teacher()
    mean = {}
    for B in (20, 200):
        th = online_error(D, 1.0, width=N, batch_size=B, gamma0=G0, eta=ETA, steps=T)
        tr = nets.train_online(D, bs, depth=1, width=N, gamma0=G0, eta=ETA, steps=T,
                               batch_size=B, key=7 + B, n_seeds=E)
        err = np.asarray(tr.error)[:, TIMES]
        m, se = err.mean(0), err.std(0, ddof=1) / np.sqrt(E)
        corr = th.error[TIMES] - th.error_inf[TIMES]
        assert np.all(np.abs(m - th.error[TIMES]) < 4 * se + 0.05 * corr), (B, m, se, th.error[TIMES])
        mean[B] = (m, se)
    assert np.all(mean[20][0] - mean[200][0] > 3 * np.hypot(mean[20][1], mean[200][1]))
    assert np.all(th.batch_correction[1:] > 0)
    big = th.batch_correction[TIMES] / 1e4
    assert np.all(big < 0.03 * th.width_correction[TIMES] / 400)


def test_linear_shortcut_equals_plain_sgd(x64):
    """train_online evaluates a linear network on a batch as beta . x / sqrt(D) (exact for a
    linear network, and cheaper than passing the batch through the layers): the same weights
    and errors as plain SGD through the layers, written here independently (same keys)."""
    d, N, B, steps, S, depth, lr_eta = 5, 8, 4, 3, 2, 2, 0.7
    bs = _teacher(d, seed=3)
    tr = nets.train_online(d, bs, depth=depth, width=N, gamma0=1.3, eta=lr_eta, steps=steps,
                           batch_size=B, key=11, n_seeds=S)
    net = nets.make_mlp(d, depth=depth, width=N, activation="linear", gamma0=1.3)
    lr = lr_eta * nets.scalings(net).ntk_scale
    for s, k in enumerate(jax.random.split(jax.random.PRNGKey(11), S)):
        k_init, k_data, _ = jax.random.split(k, 3)
        p0 = nets.init_params(net, k_init)
        p = p0
        for t, kt in enumerate(jax.random.split(k_data, steps)):
            X = jax.random.normal(kt, (B, d), jnp.float64)
            y = X @ bs / np.sqrt(d)

            def loss(q):
                f = nets.apply(net, q, X)[:, 0] - nets.apply(net, p0, X)[:, 0]
                return 0.5 * jnp.mean((f - y) ** 2)

            p = [w - lr * g for w, g in zip(p, jax.grad(loss)(p))]
        for w, w_ref in zip(tr.params, p):
            np.testing.assert_allclose(np.asarray(w[s]), np.asarray(w_ref), rtol=1e-10, atol=1e-12)
    # the recorded beta is the centred linear map: E_x (f - y)^2 = |beta - beta*|^2 / D
    np.testing.assert_allclose(np.asarray(tr.error),
                               np.sum((np.asarray(tr.beta) - bs) ** 2, -1) / d, rtol=1e-12)


def test_deep_networks_approach_dmft(x64):
    """Any depth: depth-2 linear networks on the population gradient against the exact
    discrete-time deep-linear DMFT on Kx = I_D (population GD = full-batch GD on sqrt(D) e_mu),
    8 seeds. The error falls 30x in 4 steps (and then on towards 0, where a relative comparison
    with finite networks means nothing): over t <= 4 the seed mean at width 2048 is within 10%
    of the DMFT at every step (measured max 4.1%, keys 5 and 6) and its largest relative
    deviation is < 1/4 of the width-128 networks' (measured 0.041 against 0.46-0.79: the
    deviation is a finite-width effect, ~1/N). An error off by 10% at any of those steps, or a
    deviation that does not shrink with N, fails."""
    d, steps = 10, 30
    bs = _teacher(d, seed=4)
    sol = wn.dmft.deep_linear(np.eye(d), bs, depth=2, gamma0=1.0, eta=1.0, steps=steps,
                              update="exact")
    ref = np.sum(np.asarray(sol.delta) ** 2, -1) / d
    assert ref[4] < ref[0] / 30 and np.all(np.diff(ref[:5]) < 0)
    dev = {}
    for N in (128, 2048):
        tr = nets.train_online(d, bs, depth=2, width=N, gamma0=1.0, eta=1.0, steps=steps,
                               batch_size=None, key=5, n_seeds=8)
        dev[N] = np.abs(np.asarray(tr.error, np.float64).mean(0)[:5] / ref[:5] - 1)
    assert dev[2048].max() < 0.1, dev
    assert dev[2048].max() < dev[128].max() / 4, dev


def test_fixed_key_reproduces():
    bs = _teacher(6)
    kw = dict(depth=1, width=16, gamma0=1.0, eta=1.0, steps=5, batch_size=8, n_seeds=3)
    a = nets.train_online(6, bs, key=jax.random.PRNGKey(2), **kw)
    b = nets.train_online(6, bs, key=jax.random.PRNGKey(2), **kw)
    c = nets.train_online(6, bs, key=jax.random.PRNGKey(3), **kw)
    np.testing.assert_array_equal(np.asarray(a.error), np.asarray(b.error))
    np.testing.assert_array_equal(np.asarray(a.beta), np.asarray(b.beta))
    assert not np.allclose(np.asarray(a.error[:, 1:]), np.asarray(c.error[:, 1:]))
    # seeds differ from one another
    assert not np.allclose(np.asarray(a.error[0, 1:]), np.asarray(a.error[1, 1:]))
    # nonlinear networks: the error on fixed test inputs
    t = nets.train_online(6, bs, key=2, activation="tanh", n_test=64, **kw)
    assert t.beta is None and t.error.shape == (3, 6) and np.all(np.isfinite(np.asarray(t.error)))


def test_online_networks_pools_its_calls():
    """fl.online_networks trains n_seeds networks per_call at a time with the documented keys
    (a remainder call for the rest): its mean and standard error are those of the networks
    trained call by call; and the programs of two ensembles of different sizes are shared."""
    from widenets.fluctuations import online_networks
    bs = _teacher(6)
    kw = dict(width=16, gamma0=1.0, eta=1.0, steps=5, batch_size=8)
    mean, se = online_networks(6, bs, n_seeds=7, key=4, per_call=3, **kw)
    keys = jax.random.split(jax.random.PRNGKey(4), 3)
    err = np.concatenate([np.asarray(nets.train_online(6, bs, depth=1, key=k, n_seeds=n, **kw).error,
                                     np.float64) for k, n in zip(keys, (3, 3, 1))])
    np.testing.assert_allclose(mean, err.mean(0), rtol=1e-12)
    np.testing.assert_allclose(se, err.std(0, ddof=1) / np.sqrt(7), rtol=1e-12)
    n_programs = len(nets._ONLINE)
    online_networks(6, bs, n_seeds=6, key=5, per_call=3, **dict(kw, gamma0=2.0))
    assert len(nets._ONLINE) == n_programs        # gamma0 and the ensemble size are not static
    with pytest.raises(ValueError, match="n_seeds"):
        online_networks(6, bs, n_seeds=1, key=4, **kw)


@pytest.mark.parametrize("kwargs, argname", [
    (dict(beta_star=np.ones(3)), "beta_star"),
    (dict(beta_star=np.array([1.0, np.nan, 0, 0, 0])), "beta_star"),
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=2.5), "batch_size"),
    (dict(steps=0), "steps"),
    (dict(eta=-1.0), "eta"),
    (dict(width=0), "width"),
    (dict(gamma0=0.0), "gamma0"),
    (dict(D=0), "D"),
    (dict(n_seeds=0), "n_seeds"),
    (dict(activation="sigmoid"), "activation"),
    (dict(activation="tanh", batch_size=None), "batch_size"),
    (dict(center="yes"), "center"),
    (dict(key="seed"), "key"),
])
def test_train_online_bad_input(kwargs, argname):
    args = dict(D=5, beta_star=np.ones(5), depth=1, width=8, gamma0=1.0, eta=1.0, steps=3,
                batch_size=4, key=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=argname):
        nets.train_online(args.pop("D"), args.pop("beta_star"), **args)


@pytest.mark.parametrize("kwargs, argname", [
    (dict(depth=2), "depth"), (dict(width=0), "width"), (dict(batch_size=0), "batch_size"),
    (dict(eta=-0.1), "eta"), (dict(steps=0), "steps"), (dict(gamma0=0.0), "gamma0"),
    (dict(D=0), "D"), (dict(beta_star_norm=-1.0), "beta_star_norm"), (dict(center=1), "center"),
])
def test_online_error_bad_input(kwargs, argname):
    args = dict(D=5, beta_star_norm=1.0, gamma0=1.0, eta=0.5, steps=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=argname):
        online_error(args.pop("D"), args.pop("beta_star_norm"), **args)


def test_memory_refusal_before_allocation():
    with pytest.raises(ValueError, match="width"):
        nets.train_online(5, np.ones(5), depth=2, width=10 ** 6, gamma0=1.0, eta=1.0, steps=3,
                          batch_size=4, key=0, n_seeds=4)
