"""The deep linear DMFT solver: exact limits, self-consistency, approximations, bad input."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import enable_x64

import widenets as wn
from widenets import dmft


def problem(P=6, D=12, seed=0):
    task = wn.data.gaussian_task(jax.random.PRNGKey(seed), P, D)
    return task, np.asarray(wn.data.input_kernel(task.X), np.float64), np.asarray(task.y, np.float64)


def test_lazy_limit_equals_ntk_dynamics():
    with enable_x64():
        _, Kx, y = problem()
        for depth in (1, 3):
            eta, steps = 0.4, 40
            sol = dmft.deep_linear(Kx, y, depth=depth, gamma0=0.0, eta=eta, steps=steps)
            M = np.eye(len(y)) - eta * (depth + 1) * Kx / len(y)
            expected = np.stack([np.linalg.matrix_power(M, t) @ y for t in range(steps + 1)])
            np.testing.assert_allclose(sol.delta, expected, rtol=0, atol=1e-10)
            np.testing.assert_allclose(sol.ntk, np.broadcast_to((depth + 1) * Kx, sol.ntk.shape),
                                       atol=1e-12)
            assert sol.converged
            # a lazy network is linear in its weights: discrete steps are the Euler recursion
            exact = dmft.deep_linear(Kx, y, depth=depth, gamma0=0.0, eta=eta, steps=steps,
                                     update="exact")
            np.testing.assert_allclose(exact.delta, expected, rtol=0, atol=1e-10)


def test_solution_has_the_contract_shapes():
    _, Kx, y = problem(P=5)
    sol = dmft.deep_linear(Kx, y, depth=2, gamma0=1.0, eta=0.3, steps=7)
    assert sol.delta.shape == (8, 5) and sol.loss.shape == (8,) and sol.ntk.shape == (8, 5, 5)
    assert sol.phi.shape == (2, 8, 5, 8, 5) and sol.g.shape == (2, 8, 8)
    np.testing.assert_allclose(sol.delta[0], y, atol=1e-6)
    np.testing.assert_allclose(sol.loss, 0.5 * np.mean(np.asarray(sol.delta) ** 2, axis=1), rtol=1e-5)
    assert sol.residuals.ndim == 1 and isinstance(sol.converged, bool)


def test_causal_solution_satisfies_the_dense_fixed_point_equations():
    with enable_x64():
        _, Kx, y = problem()
        sol = dmft.deep_linear(Kx, y, depth=3, gamma0=1.5, eta=0.3, steps=30)
        # the dense map applied once to the one-pass solution returns it (to rounding)
        assert sol.residuals[-1] < 1e-11, sol.residuals
        exact = dmft.deep_linear(Kx, y, depth=3, gamma0=1.5, eta=0.3, steps=30, update="exact")
        assert exact.residuals[-1] < 1e-11, exact.residuals


def test_causal_one_pass_equals_damped_picard_iteration():
    with enable_x64():
        _, Kx, y = problem()
        kw = dict(depth=2, gamma0=1.0, eta=0.3, steps=25)
        fast = dmft.deep_linear(Kx, y, **kw)
        slow = dmft.deep_linear(Kx, y, method="picard", tol=1e-11, **kw)
        assert slow.converged and len(slow.residuals) > 3
        np.testing.assert_allclose(slow.delta, fast.delta, atol=1e-9)
        np.testing.assert_allclose(slow.phi, fast.phi, atol=1e-8)
        np.testing.assert_allclose(slow.g, fast.g, atol=1e-8)


def test_kernels_are_symmetric_and_feature_kernels_psd():
    with enable_x64():
        _, Kx, y = problem()
        sol = dmft.deep_linear(Kx, y, depth=2, gamma0=2.0, eta=0.3, steps=20)
        T1, P = 21, 6
        for l in range(2):
            F = np.asarray(sol.phi[l]).reshape(T1 * P, T1 * P)
            np.testing.assert_allclose(F, F.T, atol=1e-12)
            assert np.linalg.eigvalsh(F)[0] > -1e-9
            np.testing.assert_allclose(sol.g[l], np.asarray(sol.g[l]).T, atol=1e-12)


def test_feature_learning_moves_the_kernels_and_speeds_up_training():
    with enable_x64():
        _, Kx, y = problem()
        lazy = dmft.deep_linear(Kx, y, depth=2, gamma0=0.0, eta=0.2, steps=40)
        rich = dmft.deep_linear(Kx, y, depth=2, gamma0=1.5, eta=0.2, steps=40)
        assert rich.loss[-1] < lazy.loss[-1]
        align = lambda s: float(wn.kernels.target_alignment(s.phi[-1, -1, :, -1, :], y))
        assert align(rich) > align(lazy) + 0.05


def test_responses_matter_for_deep_networks():
    with enable_x64():
        _, Kx, y = problem()
        a = dmft.deep_linear(Kx, y, depth=3, gamma0=1.0, eta=0.3, steps=20)
        b = dmft.gradient_independence(Kx, y, depth=3, gamma0=1.0, eta=0.3, steps=20)
        assert float(jnp.max(jnp.abs(a.ntk - b.ntk))) > 1e-3


def test_perturbation_theory_error_is_fourth_order_in_gamma0():
    """Kernels are even in gamma0, so the O(gamma0^2) truncation errs at O(gamma0^4)."""
    with enable_x64():
        _, Kx, y = problem()
        errs = []
        for g0 in (0.05, 0.1):
            full = dmft.deep_linear(Kx, y, depth=2, gamma0=g0, eta=0.2, steps=30)
            pt = dmft.perturbative(Kx, y, depth=2, gamma0=g0, eta=0.2, steps=30)
            errs.append(float(jnp.max(jnp.abs(full.ntk - pt.ntk))))
        ratio = errs[1] / errs[0]
        assert 12 < ratio < 20, ratio      # 2^4 = 16


@pytest.mark.parametrize("depth", [1, 3])
def test_static_ntk_closed_form_is_what_the_solver_finds_at_gamma0_0(depth):
    """static_ntk (linear) writes the lazy kernels down (Phi = Kx, G = 1); deep_linear at
    gamma0 = 0 solves for them: every returned array agrees to round-off (float64)."""
    with enable_x64():
        _, Kx, y = problem()
        a = dmft.static_ntk(Kx, y, depth=depth, eta=0.2, steps=12)
        b = dmft.deep_linear(Kx, y, depth=depth, gamma0=0.0, eta=0.2, steps=12)
        for name in ("delta", "loss", "ntk", "phi", "g"):
            x, z = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
            assert x.shape == z.shape, name
            np.testing.assert_allclose(x, z, atol=1e-12 * np.max(np.abs(z)), err_msg=name)
        assert a.converged and a.method == "closed form"


def test_static_ntk_of_a_linear_net_is_kernel_gradient_descent():
    """The lazy linear network: K = (L+1) Kx, Delta(t) = (1 - eta K / P)^t y, in closed form."""
    with enable_x64():
        _, Kx, y = problem()
        sol = dmft.static_ntk(Kx, y, depth=2, eta=0.2, steps=10)
        M = np.eye(len(y)) - 0.2 * 3 * Kx / len(y)
        expected = np.stack([np.linalg.matrix_power(M, t) @ y for t in range(11)])
        np.testing.assert_allclose(sol.delta, expected, atol=1e-12)
        np.testing.assert_allclose(sol.ntk[-1], 3 * Kx, atol=1e-12)
    with pytest.raises(TypeError, match="gamma0"):         # no longer swallowed by **kwargs
        dmft.static_ntk(Kx, y, depth=2, eta=0.2, steps=10, gamma0=5.0)
    with pytest.raises(ValueError, match="samples"):      # Monte-Carlo arguments need an activation
        dmft.static_ntk(Kx, y, depth=2, eta=0.2, steps=10, samples=100)


def test_agrees_with_wide_linear_networks():
    """DMFT vs the mean of 4 width-2000 linear networks (mean-field parameterisation).

    Tolerance 0.02 on the loss: finite-width fluctuations of the loss are ~sqrt(Var/N) ~ 0.01
    per network at N = 2000 (0.005 for the mean of 4), plus an O(1/N) bias and the O(1/sqrt N)
    output at initialisation; measured gap ~0.003. ``update="exact"`` matches discrete GD.
    """
    with enable_x64():
        task, Kx, y = problem(P=8, D=16)
        kw = dict(depth=2, gamma0=1.0, eta=0.4, steps=30)
        sol = dmft.deep_linear(Kx, y, update="exact", **kw)
        tr = wn.nets.train_mlp(task.X, task.y, width=2000, activation="linear",
                               key=jax.random.PRNGKey(3), n_seeds=4, **kw)
        gap = float(jnp.max(jnp.abs(tr.loss.mean(0) - sol.loss)))
        assert gap < 0.02, gap
        align = float(wn.kernels.alignment(tr.phi[:, 1, -1].mean(0), sol.phi[1, -1, :, -1, :]))
        assert align > 0.99, align


def test_exact_update_matches_discrete_gradient_descent_better_than_euler():
    with enable_x64():
        task, Kx, y = problem(P=8, D=16)
        kw = dict(depth=2, gamma0=1.5, eta=0.5, steps=30)
        exact = dmft.deep_linear(Kx, y, update="exact", **kw)
        euler = dmft.deep_linear(Kx, y, **kw)
        tr = wn.nets.train_mlp(task.X, task.y, width=2000, activation="linear",
                               key=jax.random.PRNGKey(4), n_seeds=4, **kw)
        net = tr.loss.mean(0)
        assert float(jnp.max(jnp.abs(net - exact.loss))) < float(jnp.max(jnp.abs(net - euler.loss)))


def test_divergence_is_reported_not_silent():
    _, Kx, y = problem()
    with pytest.warns(RuntimeWarning, match="diverged"):
        sol = dmft.deep_linear(Kx, y, depth=2, gamma0=1.0, eta=50.0, steps=60)
    assert not sol.converged


@pytest.mark.parametrize("kwargs, match", [
    (dict(Kx=np.array([[1.0, 0.5], [0.0, 1.0]])), "symmetric"),
    (dict(Kx=np.array([[1.0, 2.0], [2.0, 1.0]])), "positive semi-definite"),
    (dict(Kx=np.ones((2, 3))), "Kx"),
    (dict(y=np.ones(3)), "y"),
    (dict(eta=-0.1), "eta"),
    (dict(gamma0=-1.0), "gamma0"),
    (dict(steps=0), "steps"),
    (dict(depth=0), "depth"),
    (dict(method="newton"), "method"),
    (dict(update="discrete"), "update"),
    (dict(update="exact", responses=False, depth=2), "responses"),
    (dict(responses="no"), "responses"),
    (dict(tol=-1.0), "tol"),
    (dict(eta=float("nan")), "eta"),
    (dict(depth=10**6), "depth"),
    (dict(steps=10**9), "steps"),
    (dict(damping=0.0), "damping"),
])
def test_bad_input_raises_value_error_naming_the_argument(kwargs, match):
    args = dict(Kx=np.eye(2), y=np.ones(2), depth=1, gamma0=1.0, eta=0.1, steps=3)
    args.update(kwargs)
    Kx, y = args.pop("Kx"), args.pop("y")
    with pytest.raises(ValueError, match=match):
        dmft.deep_linear(Kx, y, **args)
