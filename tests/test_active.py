"""widenets.active: pool-based active learning with the kernel model.

The rank-one look-ahead is checked against the model recomputed from scratch (a Cholesky
solve of the enlarged labelled set) and against kernels.kernel_regression; the look-ahead's
expected change against an explicit average over the labels; the runs against their own
definitions (the point chosen maximises the stated score; paired starts; keys).
"""
import numpy as np
import pytest
from scipy.stats import spearmanr

from widenets import active, kernels

RNG = np.random.default_rng(0)
N_PTS, D, O = 60, 6, 3
X = RNG.standard_normal((N_PTS, D))
LABELS = np.argmax(X[:, :O] + 0.3 * RNG.standard_normal((N_PTS, O)), axis=1)
# an RBF-plus-linear kernel: positive definite, with structure the labels follow
K = np.exp(-0.5 * np.sum((X[:, None] - X[None]) ** 2, -1) / D) + X @ X.T / D
Y = active.one_hot(LABELS, O)
L0 = np.array([0, 5, 11, 17, 23])


@pytest.mark.parametrize("ridge", [0.0, 1e-2])
def test_posterior_is_kernel_regression(ridge):
    st = active.posterior(K, Y, L0, ridge=ridge)
    ref = kernels.kernel_regression(K[np.ix_(L0, L0)], Y[L0], K[:, L0], ridge=ridge)
    np.testing.assert_allclose(st.f, ref, atol=1e-10)
    # the posterior variance vanishes on the labelled points without a ridge
    if ridge == 0:
        np.testing.assert_allclose(np.diagonal(st.cov)[L0], 0.0, atol=1e-10)
    assert np.all(np.diagonal(st.cov) >= -1e-10)


@pytest.mark.parametrize("ridge", [0.0, 1e-2])
def test_rank_one_update_equals_the_model_recomputed_from_scratch(ridge):
    """(LA): after adding three points one at a time the predictions and covariance equal a
    fresh Cholesky solve on the enlarged set (measured ~1e-14; tolerance 1e-9)."""
    st = active.posterior(K, Y, L0, ridge=ridge)
    for c in (30, 2, 41):
        st = active.add(st, c, Y[c], ridge=ridge)
    fresh = active.posterior(K, Y, np.concatenate([L0, [30, 2, 41]]), ridge=ridge)
    np.testing.assert_allclose(st.f, fresh.f, atol=1e-9)
    np.testing.assert_allclose(st.cov, fresh.cov, atol=1e-9)
    assert st.labelled.sum() == len(L0) + 3 and st.labelled[[30, 2, 41]].all()
    # a wrong label changes the model (the update uses it)
    wrong = active.add(active.posterior(K, Y, L0, ridge=ridge), 30, 1 - Y[30], ridge=ridge)
    assert np.max(np.abs(wrong.f - active.add(active.posterior(K, Y, L0, ridge=ridge), 30,
                                               Y[30], ridge=ridge).f)) > 0.1


def test_predicted_change_is_the_change_of_the_recomputed_model():
    st = active.posterior(K, Y, L0)
    cands = np.array([3, 30, 44, 59])
    over = np.arange(25, 60)
    pred = active.predicted_change(st, cands, Y[cands], over)
    for c, p in zip(cands, pred):
        new = active.posterior(K, Y, np.append(L0, c))
        assert p == pytest.approx(np.sum((new.f[over] - st.f[over]) ** 2), rel=1e-8)


def test_lookahead_score_is_the_expected_change_over_the_models_own_labels():
    """The closed form ||S(over, c)||^2 / S(c, c)^2 E_y||y - f(c)||^2 against an explicit sum
    over the classes of p_k times the change of the model labelled k (each by add)."""
    st = active.posterior(K, Y, L0)
    over = np.arange(N_PTS)
    s = active.scores(st, "lookahead", over)
    assert np.all(np.isneginf(s[L0]))
    for c in (3, 30, 59):
        f = st.f[c]
        p = np.clip(f, 0, None)
        p = p / p.sum() if p.sum() > 0 else np.full(O, 1 / O)
        direct = sum(p[k] * np.sum((active.add(st, c, np.eye(O)[k]).f - st.f)[over] ** 2)
                     for k in range(O))
        assert s[c] == pytest.approx(direct, rel=1e-8)
    u = active.scores(st, "uncertainty", over)
    free = np.setdiff1d(np.arange(N_PTS), L0)
    np.testing.assert_allclose(u[free], np.diagonal(st.cov)[free])


def test_runs_choose_by_their_score_and_learn():
    pool, test = np.arange(40), np.arange(40, 60)
    # with a ridge (the labels are noisy: interpolating them, ridge = 0, need not lower the
    # test error at 15 labels)
    cur = active.curves(K, LABELS, pool=pool, test=test, n_initial=3, budget=12, runs=3,
                        key=1, ridge=0.1)
    assert set(cur) == set(active.STRATEGIES)
    for name, c in cur.items():
        assert c.accuracy.shape == c.mse.shape == (3, 13) and c.chosen.shape == (3, 12)
        np.testing.assert_array_equal(c.n_labelled, np.arange(3, 16))
        assert np.all(np.isin(c.chosen, pool))
        assert all(len(set(row)) == 12 for row in c.chosen)             # never twice
        # the model learns: more labels, lower test error (on average over the runs)
        assert c.mse[:, -1].mean() < 0.7 * c.mse[:, 0].mean()     # measured 0.51-0.63
        assert c.accuracy[:, -1].mean() > c.accuracy[:, 0].mean()
    # paired: every strategy starts from the same labelled points
    for name in active.STRATEGIES[1:]:
        np.testing.assert_array_equal(cur[name].accuracy[:, 0], cur["random"].accuracy[:, 0])
    # uncertainty's first choice is the pool point of largest posterior variance
    acc0, mse0, chosen0 = active.run(K, LABELS, pool=pool, test=test, initial=[0, 1, 2],
                                     budget=2, strategy="uncertainty", key=0)
    st = active.posterior(K[np.ix_(np.r_[pool, test], np.r_[pool, test])],
                          Y[np.r_[pool, test]], [0, 1, 2])
    var = np.diagonal(st.cov)[:40].copy()
    var[[0, 1, 2]] = -np.inf
    assert chosen0[0] == int(np.argmax(var))
    # the same key gives the same random run; another key another
    a = active.run(K, LABELS, pool=pool, test=test, initial=[0, 1, 2], budget=5,
                   strategy="random", key=3)
    b = active.run(K, LABELS, pool=pool, test=test, initial=[0, 1, 2], budget=5,
                   strategy="random", key=3)
    c = active.run(K, LABELS, pool=pool, test=test, initial=[0, 1, 2], budget=5,
                   strategy="random", key=4)
    np.testing.assert_array_equal(a[2], b[2])
    assert not np.array_equal(a[2], c[2])


@pytest.mark.parametrize("kwargs, name", [
    (dict(strategy="best"), "strategy"),
    (dict(budget=0), "budget"),
    (dict(budget=100), "budget"),
    (dict(pool=np.arange(50), test=np.arange(40, 60)), "pool and test"),
    (dict(initial=[45]), "initial"),
    (dict(ridge=-1.0), "ridge"),
    (dict(labels=LABELS[:10]), "labels"),
    (dict(K=K[:10]), "K"),
])
def test_bad_input_names_the_argument(kwargs, name):
    args = dict(K=K, labels=LABELS, pool=np.arange(40), test=np.arange(40, 60),
                initial=[0, 1, 2], budget=5, strategy="lookahead", key=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        active.run(args.pop("K"), args.pop("labels"), **args)


def test_a_duplicate_candidate_needs_a_ridge():
    """Point 1 made a copy of point 0: once 0 is labelled its posterior variance is round-off
    (the update would divide by it), so without a ridge it is refused; with one it is fine."""
    Xd = X.copy()
    Xd[1] = Xd[0]
    Kd = np.exp(-0.5 * np.sum((Xd[:, None] - Xd[None]) ** 2, -1) / D) + Xd @ Xd.T / D
    with pytest.raises(ValueError, match="ridge"):
        active.add(active.posterior(Kd, Y, [0, 2, 3]), 1, Y[1])
    st = active.add(active.posterior(Kd, Y, [0, 2, 3], ridge=1e-3), 1, Y[1], ridge=1e-3)
    assert np.all(np.isfinite(st.f))


def _lookahead_errors(parameterization, width, keys=(0, 1)):
    """Median relative error of the linearised look-ahead against retraining, per key."""
    rng = np.random.default_rng(1)
    Xn = rng.standard_normal((48, 8))
    Xn /= np.linalg.norm(Xn, axis=1, keepdims=True) / np.sqrt(8)
    lab = np.argmax(Xn[:, :3], axis=1)
    out = []
    for key in keys:
        r = active.network_lookahead(Xn, lab, labelled=np.arange(10), candidates=np.arange(10, 20),
                                     over=np.arange(20, 48), depth=2, width=width, eta=1.0,
                                     steps=60, steps_after=60, key=key,
                                     parameterization=parameterization)
        assert r.predicted.shape == r.actual.shape == (10,) and np.all(r.actual > 0)
        out.append((np.median(np.abs(r.predicted - r.actual) / r.actual),
                    spearmanr(r.predicted, r.actual)[0]))
    return np.array(out)


def test_network_lookahead_approaches_retraining_with_width_in_ntk_not_in_mup():
    """The look-ahead of a finite network (its linearisation at the trained weights, trained
    the same way) against retraining it on each candidate. In the NTK parameterisation the
    relative error falls with width (measured here over keys 0-2: median 0.04-0.064 at N = 64,
    0.010-0.020 at N = 512, about N^-1/2; in a larger run 0.01-0.02 at 1024); in muP at
    gamma0 = 1 it does not (0.13-0.15 at N = 512; 0.09-0.22 at widths 64-1024 in the larger
    run): the features keep learning. The ranking of the candidates, what selection uses, is
    good in both (Spearman 0.96-1.0)."""
    ntk64, ntk512 = _lookahead_errors("ntk", 64), _lookahead_errors("ntk", 512)
    mup512 = _lookahead_errors("mup", 512)
    assert ntk512[:, 0].mean() < ntk64[:, 0].mean() / 1.8                # sqrt(8) = 2.8
    assert ntk512[:, 0].max() < 0.05
    assert mup512[:, 0].mean() > 3 * ntk512[:, 0].mean()
    assert np.all(ntk512[:, 1] > 0.9) and np.all(mup512[:, 1] > 0.8)


@pytest.mark.parametrize("kwargs, name", [
    (dict(candidates=[4, 30]), "candidates"),
    (dict(over=[70]), "over"),
    (dict(steps_after=0), "steps_after"),
    (dict(eta=-1.0), "eta"),
    (dict(width=10 ** 8), "width"),
])
def test_network_lookahead_bad_input_names_the_argument(kwargs, name):
    args = dict(labelled=np.arange(5), candidates=[30, 31], over=np.arange(40, 50), depth=1,
                width=16, eta=1.0, steps=5, steps_after=5, key=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        active.network_lookahead(X, LABELS, **args)


def test_network_lookahead_refuses_a_diverging_network():
    with pytest.raises(ValueError, match="eta"):
        active.network_lookahead(X, LABELS, labelled=np.arange(5), candidates=[30, 31],
                                 over=np.arange(40, 50), depth=1, width=16, eta=1e4, steps=20,
                                 steps_after=5, key=0)
