"""widenets.kernels: analytic kernels vs wide networks, predictors, pNTK, metrics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.experimental import enable_x64

import widenets as wn
from widenets import kernels, nets

TASK = wn.data.gaussian_task(jax.random.PRNGKey(0), 6, 10, P_test=4)


@pytest.mark.parametrize("activation", ["relu", "tanh", "linear"])
@pytest.mark.parametrize("parameterization", ["mup", "ntk"])
def test_analytic_ntk_is_the_wide_network_limit(activation, parameterization):
    """Relative error of one width-4096 net ~ c / sqrt(4096) ~ 0.03 (Chapter 1); averaging 4
    seeds halves the fluctuation; tolerance 0.05."""
    a = kernels.analytic(TASK.X, depth=2, activation=activation)
    net = nets.make_mlp(10, depth=2, width=4096, activation=activation,
                        parameterization=parameterization, gamma0=0.5)
    ks = nets.init_kernels(net, TASK.X, jax.random.PRNGKey(1), n_seeds=4)
    assert float(kernels.relative_frobenius(ks.ntk.mean(0), a.ntk)) < 0.05
    assert float(kernels.relative_frobenius(ks.phi.mean(0), a.phi)) < 0.05


def test_linear_network_kernels_in_closed_form():
    a = kernels.analytic(TASK.X, depth=3, activation="linear")
    Kx = wn.data.input_kernel(TASK.X)
    np.testing.assert_allclose(a.ntk, 4 * Kx, rtol=1e-5, atol=1e-6)
    for l in range(3):
        np.testing.assert_allclose(a.phi[l], Kx, rtol=1e-5, atol=1e-6)


def test_gd_predictor_equals_the_explicit_recursion():
    with enable_x64():
        K = np.asarray(kernels.analytic(TASK.X, depth=1).ntk, np.float64)
        Kt = np.asarray(kernels.analytic(TASK.X_test, TASK.X, depth=1).ntk, np.float64)
        y, P, eta = np.asarray(TASK.y, np.float64), 6, 0.7
        f0, ft0 = np.linspace(-0.1, 0.1, P), np.linspace(0.2, 0.3, 4)
        pred = kernels.gd_predictor(K, y, eta=eta, steps=20, K_test=Kt, f0=f0, f0_test=ft0)
        f, ft = f0.copy(), ft0.copy()
        for t in range(21):
            np.testing.assert_allclose(pred.f[t], f, atol=1e-10)
            np.testing.assert_allclose(pred.f_test[t], ft, atol=1e-10)
            d = y - f
            f, ft = f + eta / P * K @ d, ft + eta / P * Kt @ d


def test_gradient_flow_predictor_is_the_continuous_limit():
    with enable_x64():
        K = np.asarray(kernels.analytic(TASK.X, depth=1).ntk, np.float64)
        y, P = np.asarray(TASK.y, np.float64), 6
        eta, t = 0.01, 300
        flow = kernels.gradient_flow_predictor(K, y, eta=eta, t=[t])
        exact = y - scipy.linalg.expm(-eta * t * K / P) @ y
        np.testing.assert_allclose(flow.f[0], exact, atol=1e-8)
        gd = kernels.gd_predictor(K, y, eta=eta, steps=t)
        assert float(np.max(np.abs(gd.f[-1] - exact))) < 10 * eta   # O(eta) apart


def test_max_learning_rate_separates_convergence_from_divergence():
    K = np.asarray(kernels.analytic(TASK.X, depth=2).ntk)
    eta_max = kernels.max_learning_rate(K)
    assert eta_max == pytest.approx(2 * 6 / np.linalg.eigvalsh(K)[-1])
    y = np.asarray(TASK.y)
    stable = kernels.gd_predictor(K, y, eta=0.99 * eta_max, steps=3000)
    unstable = kernels.gd_predictor(K, y, eta=1.01 * eta_max, steps=3000)
    assert float(jnp.max(jnp.abs(stable.f[-1] - y))) < 1.0
    assert float(jnp.max(jnp.abs(unstable.f[-1] - y))) > 10.0


def test_pntk_equals_ntk_for_one_logit_and_approximates_many():
    net1 = nets.make_mlp(10, depth=1, width=32, n_out=1)
    p1 = nets.init_params(net1, jax.random.PRNGKey(2))
    full1 = kernels.full_ntk(net1, p1, TASK.X)
    np.testing.assert_allclose(kernels.pntk(net1, p1, TASK.X), full1[:, :, 0, 0], rtol=1e-5)
    assert float(kernels.pntk_error(full1, kernels.pntk(net1, p1, TASK.X))) < 1e-5
    net = nets.make_mlp(10, depth=1, width=32, n_out=3)
    p = nets.init_params(net, jax.random.PRNGKey(3))
    full = kernels.full_ntk(net, p, TASK.X)
    assert full.shape == (6, 6, 3, 3)
    np.testing.assert_allclose(full, jnp.transpose(full, (1, 0, 3, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nets.empirical_ntk(net, p, TASK.X), full, rtol=1e-4, atol=1e-5)


def test_metrics():
    A = np.asarray(kernels.analytic(TASK.X, depth=1).ntk)
    assert float(kernels.alignment(A, A)) == pytest.approx(1.0, abs=1e-6)
    assert float(kernels.alignment(A, 3 * A)) == pytest.approx(1.0, abs=1e-6)
    assert float(kernels.relative_frobenius(A, A)) == 0.0
    y = np.asarray(TASK.y)
    assert float(kernels.target_alignment(np.outer(y, y), y)) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        kernels.alignment(A, A[:2, :2])


@pytest.mark.parametrize("K, match", [
    (np.array([[1.0, 0.3], [0.0, 1.0]]), "symmetric"),
    (np.array([[1.0, 3.0], [3.0, 1.0]]), "positive semi-definite"),
    (np.ones((2, 3)), "square"),
])
def test_predictor_rejects_bad_kernels(K, match):
    with pytest.raises(ValueError, match=match):
        kernels.gd_predictor(K, np.ones(2), eta=0.1, steps=2)
