"""NTK-GP inference (wn.kernels.ntk_gp) against ensembles of wide NTK-parameterised networks
trained by the same discrete gradient descent, at several keys; its limits; bad input."""
import jax
import numpy as np
import pytest

import widenets as wn

P, P_TEST, D = 8, 5, 12


def _setting(key):
    task = wn.data.gaussian_task(jax.random.PRNGKey(key), P, D, P_test=P_TEST)
    k = wn.kernels.analytic(task.X, depth=1, activation="relu")
    k_t = wn.kernels.analytic(task.X_test, task.X, depth=1, activation="relu")
    k_tt = wn.kernels.analytic(task.X_test, depth=1, activation="relu")
    eta = 0.5 * wn.kernels.max_learning_rate(k.ntk)
    return task, k, k_t, k_tt, eta


def _gp(k, k_t, k_tt, y, eta, steps):
    return wn.kernels.ntk_gp(k.ntk, k.nngp, y, eta=eta, steps=steps, ntk_test=k_t.ntk,
                             nngp_test=k_t.nngp, nngp_test_test=k_tt.nngp)


@pytest.mark.parametrize("key", [0, 1])
def test_ntk_gp_is_the_distribution_of_wide_trained_networks(key):
    task, k, k_t, k_tt, eta = _setting(key)
    steps, E, N = 20, 1600, 2048
    gp = _gp(k, k_t, k_tt, task.y, eta, steps)
    tr = wn.nets.train_mlp(task.X, task.y, depth=1, width=N, activation="relu", eta=eta,
                           steps=steps, key=jax.random.PRNGKey(100 + key), n_seeds=E,
                           parameterization="ntk", X_test=task.X_test)
    f = np.asarray(tr.f_test[:, -1], np.float64)                    # (E, P_test)
    # mean: within 4 standard errors of the ensemble mean (plus 0.02 for the O(1/N) bias;
    # measured |z| <= 2.1 over 5 points x 3 keys)
    se = f.std(0, ddof=1) / np.sqrt(E)
    assert np.all(np.abs(f.mean(0) - gp.mean) < 4 * se + 0.02), (f.mean(0), gp.mean, se)
    # covariance: relative Frobenius error below 3 sqrt(2 / E) = 0.106, ~2x its sampling error
    # (measured 0.043-0.061 over 3 keys, 0.12-0.17 at E = 400: it falls like E^-1/2, so it is
    # sampling, not a width bias)
    err = np.linalg.norm(np.cov(f.T) - gp.cov) / np.linalg.norm(gp.cov)
    assert err < 3 * np.sqrt(2 / E), err
    # a wrong prior (NNGP scaled by 1.5) is rejected by the same check (measured 0.32-0.35)
    wrong = wn.kernels.ntk_gp(k.ntk, 1.5 * k.nngp, task.y, eta=eta, steps=steps,
                              ntk_test=k_t.ntk, nngp_test=1.5 * k_t.nngp,
                              nngp_test_test=1.5 * k_tt.nngp)
    assert np.linalg.norm(np.cov(f.T) - wrong.cov) / np.linalg.norm(wrong.cov) > 3 * np.sqrt(2 / E)


def test_ntk_gp_limits():
    task, k, k_t, k_tt, eta = _setting(0)
    prior = _gp(k, k_t, k_tt, task.y, eta, 0)
    np.testing.assert_allclose(prior.mean, 0.0, atol=1e-12)
    np.testing.assert_allclose(prior.cov, np.asarray(k_tt.nngp, np.float64), rtol=1e-6)
    # the mean after training is the gradient-descent predictor's mean from f0 = 0
    pred = wn.kernels.gd_predictor(k.ntk, task.y, eta=eta, steps=30, K_test=k_t.ntk)
    np.testing.assert_allclose(_gp(k, k_t, k_tt, task.y, eta, 30).mean,
                               np.asarray(pred.f_test[-1]), rtol=2e-4, atol=1e-5)
    # converged: kernel regression with the NTK
    late = _gp(k, k_t, k_tt, task.y, eta, 20000)
    np.testing.assert_allclose(late.mean, wn.kernels.kernel_regression(k.ntk, task.y, k_t.ntk),
                               rtol=1e-3, atol=1e-5)
    assert np.all(np.linalg.eigvalsh(late.cov) > -1e-6)


def test_ntk_gp_refuses_bad_input():
    task, k, k_t, k_tt, eta = _setting(0)
    kw = dict(eta=eta, steps=5, ntk_test=k_t.ntk, nngp_test=k_t.nngp, nngp_test_test=k_tt.nngp)
    with pytest.raises(ValueError, match="nngp must have the shape"):
        wn.kernels.ntk_gp(k.ntk, k.nngp[:3, :3], task.y, **kw)
    with pytest.raises(ValueError, match="ntk_test must have shape"):
        wn.kernels.ntk_gp(k.ntk, k.nngp, task.y, **dict(kw, ntk_test=k_t.ntk[:, :3]))
    with pytest.raises(ValueError, match="nngp_test_test must have shape"):
        wn.kernels.ntk_gp(k.ntk, k.nngp, task.y, **dict(kw, nngp_test_test=k.nngp))
    with pytest.raises(ValueError, match="above the stable learning rate"):
        wn.kernels.ntk_gp(k.ntk, k.nngp, task.y, **dict(kw, eta=10 * eta))
    with pytest.raises(ValueError, match="steps"):
        wn.kernels.ntk_gp(k.ntk, k.nngp, task.y, **dict(kw, steps=-1))
