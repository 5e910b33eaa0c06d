"""widenets.nets: the convolutional networks (make_cnn, train_cnn, cnn_coord_check,
cnn_init_kernels, minibatch_indices).

Sizes are small (8x8 digits, at most 64 images, widths up to 256) so that every test runs in a
few seconds on one CPU core; the tolerances quote the values measured when they were set.
"""
import numpy as np
import jax
import jax.numpy as jnp
import pytest

import widenets as wn
from widenets import nets

DIGITS = wn.data.images("digits", classes=(0, 1), n_train=64, n_test=64, key=0)
X, Y = np.asarray(DIGITS.X), np.asarray(DIGITS.y)
X_TEST, Y_TEST = np.asarray(DIGITS.X_test), np.asarray(DIGITS.y_test)
SMALL = dict(depth=2, width=8, activation="tanh", gamma0=1.0, eta=0.5, steps=4)


def test_conv_is_a_same_padded_stride_one_3x3_convolution():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 6, 3))
    w = jax.random.normal(jax.random.PRNGKey(2), (3, 3, 3, 4))
    ref = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(nets._conv(x, w), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("parameterization", ["mup", "ntk", "standard"])
def test_cnn_uses_the_mlp_table_with_convolution_fan_in_k2_c(parameterization):
    net = nets.make_cnn((8, 8, 3), depth=3, width=16, parameterization=parameterization,
                        gamma0=0.5)
    sc = nets.cnn_scalings(net)
    assert sc.fan_in == (27, 144, 144, 16)
    assert sc == nets._table(parameterization, (27, 144, 144, 16), 16, 0.5)
    # the MLP with the same fan-ins has the same readout and learning-rate scale
    mlp = nets.scalings(nets.make_mlp(27, depth=3, width=16, parameterization=parameterization,
                                      gamma0=0.5))
    assert sc.multiplier[-1] == mlp.multiplier[-1] and sc.ntk_scale == mlp.ntk_scale
    if parameterization == "mup":
        assert np.allclose(sc.multiplier, [1 / np.sqrt(27), 1 / 12, 1 / 12, 1 / (0.5 * 16)])
    assert [tuple(s) for s in nets.cnn_param_shapes(net)] == [(3, 3, 3, 16), (3, 3, 16, 16),
                                                              (3, 3, 16, 16), (16,)]


def test_forward_matches_an_explicit_mup_network():
    net = nets.make_cnn((8, 8, 1), depth=2, width=8, activation="tanh", gamma0=2.0)
    p = nets.init_cnn_params(net, 0)
    conv = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h1 = conv(jnp.asarray(X[:4]), p[0]) / 3.0                     # sqrt(9 * 1)
    h2 = conv(jnp.tanh(h1), p[1]) / np.sqrt(9 * 8)
    f = jnp.mean(jnp.tanh(h2), axis=(1, 2)) @ p[2] / (2.0 * 8)
    np.testing.assert_allclose(nets.cnn_apply(net, p, X[:4]), f, rtol=1e-4, atol=1e-6)


# (1) coordinate check -----------------------------------------------------------------------
def test_coord_check_mup_pre_activations_and_updates_are_order_one_across_widths():
    Xc, yc = X[:16], Y[:16]
    mup = nets.cnn_coord_check(Xc, yc, widths=[16, 64, 256], parameterization="mup", depth=2,
                               eta=0.5, steps=3, key=0, n_seeds=2)
    # measured: h_size [[.78 .52] [.91 .62] [.95 .63]], dh_size after 3 steps
    # [[.028 .029] [.024 .027] [.025 .023]]: largest/smallest ratio over widths 1.21 and 1.25
    for size in (mup.h_size, mup.dh_size[:, -1]):
        assert np.all(np.isfinite(size)) and np.all(size > 0)
        assert np.all(size.max(axis=0) / size.min(axis=0) < 1.5), size


def test_coord_check_standard_output_update_grows_with_width():
    Xc, yc = X[:16], Y[:16]
    sp = nets.cnn_coord_check(Xc, yc, widths=[16, 256], parameterization="standard", depth=2,
                              eta=0.05, steps=3, key=0, n_seeds=2)
    # measured: df_size 0.30 (N = 16), 0.57 (64), 3.4 (256): ratio 11 from 16 to 256
    assert sp.df_size[1, -1] / sp.df_size[0, -1] > 4, sp.df_size


# (2) NTK at initialisation --------------------------------------------------------------------
def _init_ntk(parameterization, N, depth, n_seeds):
    net = nets.make_cnn((8, 8, 1), depth=depth, width=N, parameterization=parameterization)
    return np.asarray(nets.cnn_init_kernels(net, X[:6], 0, n_seeds=n_seeds).ntk, np.float64)


def _mean_diag(K):
    return np.mean(np.diagonal(K, axis1=1, axis2=2))


def _spread(K):
    """Seed-to-seed standard deviation of the kernel's entries relative to its mean's size."""
    return np.sqrt(np.mean(np.var(K, axis=0))) / np.sqrt(np.mean(np.mean(K, 0) ** 2))


def test_init_ntk_has_the_parameterisations_width_scaling():
    # muP: O(1) in the width (measured mean diagonal 0.162 at N = 16, 0.147 at N = 256)
    mup = {N: _init_ntk("mup", N, 2, 4) for N in (16, 256)}
    assert 1 / 1.5 < _mean_diag(mup[256]) / _mean_diag(mup[16]) < 1.5
    # at initialisation the muP and NTK parameterisations have the same weights and, in these
    # units, the same kernel (muP with gamma0 is the NTK parameterisation with gamma0 sqrt N)
    np.testing.assert_allclose(_init_ntk("ntk", 16, 2, 4), mup[16], rtol=1e-5)
    # NTK parameterisation: converges, the spread over seeds falls like N^-1/2 (ratio 8 expected
    # from N = 16 to 1024; measured 0.178 -> 0.020 with 8 seeds, ratio 6.3-9.4 over 4 keys;
    # depth 1 keeps the width-1024 Jacobian cheap) while the mean stays put
    ntk = {N: _init_ntk("ntk", N, 1, 8) for N in (16, 1024)}
    assert _spread(ntk[1024]) < _spread(ntk[16]) / 4, (_spread(ntk[16]), _spread(ntk[1024]))
    assert 1 / 1.5 < _mean_diag(ntk[1024]) / _mean_diag(ntk[16]) < 1.5
    # standard parameterisation (at fixed learning-rate scale gamma0^2): grows like N
    sp = {N: _init_ntk("standard", N, 1, 2) for N in (16, 1024)}
    ratio = _mean_diag(sp[1024]) / _mean_diag(sp[16])
    assert 64 / 2 < ratio < 64 * 2, ratio


def test_probe_ntk_is_ntk_scale_times_the_jacobian_gram_matrix():
    net = nets.make_cnn((8, 8, 1), depth=2, width=8, activation="relu", gamma0=0.5)
    k = nets.cnn_init_kernels(net, X[:5], 3)
    p = nets._cnn_init_params(net, jax.random.split(jax.random.split(jax.random.PRNGKey(3), 1)[0])[0])
    per_example = jax.jit(jax.vmap(jax.grad(lambda q, x: nets._cnn_apply(net, q, x[None])[0]),
                                   in_axes=(None, 0)))
    J = np.concatenate([np.reshape(g, (5, -1)) for g in per_example(p, jnp.asarray(X[:5]))], 1)
    np.testing.assert_allclose(k.ntk[0], 0.5 ** 2 * 8 * J @ J.T, rtol=1e-4)
    feats = nets._cnn_forward(net, p, jnp.asarray(X[:5]))[1]
    np.testing.assert_allclose(k.phi[0], feats @ feats.T / 8, rtol=1e-5)


# (3) minibatches ------------------------------------------------------------------------------
def test_minibatches_visit_every_example_once_per_epoch_in_a_reshuffled_order():
    P, B = 64, 16
    idx, mask = nets.minibatch_indices(P, B, 12, key=0)
    assert idx.shape == mask.shape == (12, B) and mask.all()
    epochs = idx.reshape(3, 4 * B)
    for e in epochs:
        assert sorted(e.tolist()) == list(range(P))
    assert not np.array_equal(epochs[0], epochs[1])          # reshuffled every epoch
    idx2, _ = nets.minibatch_indices(P, B, 12, key=1)
    assert not np.array_equal(idx, idx2)                     # another key, another order
    np.testing.assert_array_equal(idx, nets.minibatch_indices(P, B, 12, key=0)[0])


def test_a_last_partial_batch_holds_the_remaining_examples():
    idx, mask = nets.minibatch_indices(10, 4, 6, key=2)      # 3 steps per epoch: 4 + 4 + 2
    assert mask.sum(axis=1).tolist() == [4, 4, 2, 4, 4, 2]
    for e in range(2):
        used = idx[3 * e:3 * e + 3][mask[3 * e:3 * e + 3]]
        assert sorted(used.tolist()) == list(range(10))


# (4) training on digits -----------------------------------------------------------------------
def test_full_batch_training_on_digits_learns_the_task():
    traj = nets.train_cnn(X, Y, depth=2, width=32, activation="relu", gamma0=1.0, eta=0.5,
                          steps=100, key=0, X_test=X_TEST, y_test=Y_TEST, record_every=50)
    loss = np.asarray(traj.loss[0])
    # measured: loss 0.503 -> 0.027, test accuracy 0.53 -> 1.0 (from step 70)
    assert loss.shape == (101,) and loss[-1] < 0.2 * loss[0]
    assert np.all(np.diff(loss) < 1e-6)                       # monotone at this eta
    assert traj.test_acc.shape == traj.test_loss.shape == (1, 101)
    assert float(traj.test_acc[0, -1]) > 0.9
    assert traj.f_test.shape == (1, 3, 64) and traj.ntk.shape == traj.phi.shape == (1, 3, 16, 16)
    np.testing.assert_array_equal(traj.times, [0, 50, 100])
    np.testing.assert_allclose(traj.loss, 0.5 * np.mean(np.asarray(traj.delta) ** 2, -1),
                               rtol=1e-5)
    # the recorded test predictions give the recorded test loss
    np.testing.assert_allclose(0.5 * np.mean((traj.f_test[0, -1] - Y_TEST) ** 2),
                               traj.test_loss[0, -1], rtol=1e-5)


# (5) seeds ------------------------------------------------------------------------------------
def test_seeds_give_different_networks_and_a_fixed_key_reproduces_bit_for_bit():
    a = nets.train_cnn(X[:16], Y[:16], **SMALL, key=7, n_seeds=3, batch_size=4)
    b = nets.train_cnn(X[:16], Y[:16], **SMALL, key=7, n_seeds=3, batch_size=4)
    for fa, fb in zip(jax.tree_util.tree_leaves((a.loss, a.delta, a.ntk, a.phi, a.params)),
                      jax.tree_util.tree_leaves((b.loss, b.delta, b.ntk, b.phi, b.params))):
        np.testing.assert_array_equal(fa, fb)
    # minibatch SGD (batch_size = 4 of 16) lowers the full training loss it records
    assert a.loss.shape == (3, 5) and a.batch_size == 4
    assert np.all(np.isfinite(a.loss)) and np.all(a.loss[:, -1] < a.loss[:, 0]), a.loss
    d = np.asarray(a.delta[:, 0])
    assert not np.allclose(d[0], d[1]) and not np.allclose(d[1], d[2])
    c = nets.train_cnn(X[:16], Y[:16], **SMALL, key=8, n_seeds=3, batch_size=4)
    assert not np.allclose(a.loss, c.loss)


# (7) centring ---------------------------------------------------------------------------------
def test_center_starts_the_error_at_y_exactly():
    traj = nets.train_cnn(X[:16], Y[:16], **SMALL, key=0, center=True, X_test=X_TEST[:5],
                          y_test=Y_TEST[:5])
    np.testing.assert_array_equal(traj.delta[0, 0], Y[:16])
    np.testing.assert_array_equal(traj.f_test[0, 0], 0.0)
    assert float(traj.test_acc[0, 0]) == 0.5                  # a zero prediction counts one half


# (6) bad input and memory ---------------------------------------------------------------------
BASE = dict(X=X[:8], y=Y[:8], **SMALL, key=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(X=X[:8, :, :, 0]), r"\bX must have shape \(P, H, W, C\)"),
    (dict(X=np.where(np.arange(8)[:, None, None, None] == 0, np.nan, X[:8])), r"\bX contains NaN"),
    (dict(y=Y[:7]), r"\by must have shape \(8,\)"),
    (dict(batch_size=0), r"\bbatch_size must be"),
    (dict(batch_size=9), r"\bbatch_size must be <= P=8"),
    (dict(batch_size=2.0), r"\bbatch_size must be an integer"),
    (dict(parameterization="sp"), r"\bparameterization must be one of"),
    (dict(activation="gelu"), r"\bactivation must be one of"),
    (dict(width=0), r"\bwidth must be"),
    (dict(depth=0), r"\bdepth must be"),
    (dict(gamma0=0.0), r"\bgamma0 must be"),
    (dict(eta=-1.0), r"\beta must be"),
    (dict(steps=0), r"\bsteps must be"),
    (dict(n_seeds=0), r"\bn_seeds must be"),
    (dict(record_every=3), r"\brecord_every must divide"),
    (dict(key="a"), r"\bkey must be a JAX PRNG key"),
    (dict(center=1), r"\bcenter must be True or False"),
    (dict(X_test=X[:3, :4]), r"\bX_test must hold images of shape \(8, 8, 1\)"),
    (dict(X_test=X[:3], y_test=Y[:2]), r"\by_test must have shape \(3,\)"),
    (dict(y_test=Y[:2]), r"\by_test needs X_test"),
    (dict(X_probe=X[:2, :, :, 0]), r"\bX_probe must have shape"),
])
def test_bad_input_raises_a_value_error_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nets.train_cnn(**{**BASE, **kwargs})


def test_bad_minibatch_arguments():
    with pytest.raises(ValueError, match=r"\bbatch_size must be an integer <= 10"):
        nets.minibatch_indices(10, 11, 3, key=0)
    with pytest.raises(ValueError, match=r"\bsteps must be"):
        nets.minibatch_indices(10, 2, 0, key=0)
    with pytest.raises(ValueError, match=r"\bimage_shape must be"):
        nets.make_cnn((8, 8), depth=1, width=4)


def test_requests_beyond_the_memory_limit_are_refused_before_allocating(monkeypatch):
    monkeypatch.setenv("WIDENETS_MEMORY_LIMIT", str(2 ** 20))      # 1 MiB
    with pytest.raises(ValueError, match=r"would need about .* MiB of memory, more than the "
                                         r"1 MiB available.*reduce"):
        nets.train_cnn(**{**BASE, "width": 64})
    with pytest.raises(ValueError, match=r"Jacobian is P x n_params.*reduce"):
        nets.cnn_init_kernels(nets.make_cnn((8, 8, 1), depth=2, width=64), X[:16], 0)
    monkeypatch.delenv("WIDENETS_MEMORY_LIMIT")
    # a huge width against the real limit: the probe Jacobian alone is 16 x 9e12 numbers
    with pytest.raises(ValueError, match=r"would need about .*reduce (width|X_probe)"):
        nets.train_cnn(**{**BASE, "width": 10 ** 6})
