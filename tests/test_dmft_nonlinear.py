"""Monte-Carlo DMFT of two-layer nonlinear networks (depth 1)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import widenets as wn
from widenets import dmft

TASK = wn.data.gaussian_task(jax.random.PRNGKey(0), 8, 16)
KX = wn.data.input_kernel(TASK.X)


def test_lazy_limit_equals_the_arccosine_kernels():
    """gamma0 = 0: sampled kernels are Monte-Carlo estimates of the NNGP/NTK; with S = 8000 the
    relative Frobenius error is ~2.5/sqrt(S) ~ 0.03 (measured 0.05 at S = 2000); tolerance 0.06."""
    s = dmft.nonlinear(KX, TASK.y, depth=1, activation="relu", gamma0=0.0, eta=0.1, steps=5,
                       samples=8000, key=jax.random.PRNGKey(1))
    a = wn.kernels.analytic(TASK.X, depth=1, activation="relu")
    assert float(wn.kernels.relative_frobenius(s.ntk[0], a.ntk)) < 0.06
    assert float(wn.kernels.relative_frobenius(s.phi[0, 0, :, 0, :], a.nngp)) < 0.06
    # lazy: the kernels do not move
    np.testing.assert_allclose(s.ntk[-1], s.ntk[0], rtol=1e-5, atol=1e-6)


def test_linear_activation_agrees_with_the_deep_linear_solver():
    """Within 4 Monte-Carlo standard errors (plus a 1e-3 floor for the O(1/S) bias)."""
    kw = dict(depth=1, gamma0=1.0, eta=0.3, steps=30)
    mc = dmft.nonlinear(KX, TASK.y, activation="linear", samples=4000, key=jax.random.PRNGKey(2), **kw)
    exact = dmft.deep_linear(KX, TASK.y, **kw)
    assert np.all(np.abs(np.asarray(mc.loss - exact.loss)) < 4 * np.asarray(mc.loss_stderr) + 1e-3)


def test_agrees_with_two_layer_relu_networks():
    """Width-2000 centred networks (mean of 4): finite-width fluctuation ~0.01 plus MC error of
    the same size at S = 2000; tolerance 0.035 (the SCIENCE.md claim)."""
    kw = dict(depth=1, activation="relu", gamma0=1.0, eta=0.75, steps=30)
    mc = dmft.nonlinear(KX, TASK.y, samples=2000, key=jax.random.PRNGKey(3), **kw)
    tr = wn.nets.train_mlp(TASK.X, TASK.y, width=2000, key=jax.random.PRNGKey(4), n_seeds=4,
                           center=True, **kw)
    assert float(jnp.max(jnp.abs(tr.loss.mean(0) - mc.loss))) < 0.035


def test_fixed_key_reproduces_and_shapes():
    kw = dict(depth=1, activation="tanh", gamma0=1.0, eta=0.5, steps=6, samples=64)
    a = dmft.nonlinear(KX, TASK.y, key=jax.random.PRNGKey(5), **kw)
    b = dmft.nonlinear(KX, TASK.y, key=jax.random.PRNGKey(5), **kw)
    np.testing.assert_array_equal(a.loss, b.loss)
    assert a.delta.shape == (7, 8) and a.ntk.shape == (7, 8, 8) and a.loss_stderr.shape == (7,)
    assert a.phi.shape == (1, 7, 8, 7, 8) and a.g.shape == (1, 7, 8, 7, 8)
    assert a.features.shape == (7, 64, 8)


def test_richer_networks_train_faster():
    kw = dict(depth=1, activation="relu", eta=0.75, steps=30, samples=1000, key=jax.random.PRNGKey(6))
    losses = [float(dmft.nonlinear(KX, TASK.y, gamma0=g, **kw).loss[-1]) for g in (0.5, 1.0, 2.0)]
    assert losses[0] > losses[1] > losses[2], losses


@pytest.mark.parametrize("kwargs, match", [
    (dict(samples=1), "samples"),
    (dict(activation="softplus"), "activation"),
    (dict(eta=-1.0), "eta"),
    (dict(gamma0=-0.1), "gamma0"),
    (dict(repeats=1), "repeats"),
])
def test_bad_input_raises(kwargs, match):
    args = dict(depth=1, activation="relu", gamma0=1.0, eta=0.1, steps=3, samples=16,
                key=jax.random.PRNGKey(0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        dmft.nonlinear(KX, TASK.y, **args)


def test_deep_nonlinear_is_not_silently_wrong():
    with pytest.raises(NotImplementedError, match="depth"):
        dmft.nonlinear(KX, TASK.y, depth=2, activation="tanh", gamma0=1.0, eta=0.1, steps=3,
                       samples=16, key=jax.random.PRNGKey(0))
