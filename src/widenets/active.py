"""Pool-based active learning with kernel models: random, uncertainty and look-ahead selection.

The model is kernel (ridge) regression with a kernel ``K``: with the NTK, the infinitely wide
network trained to convergence by gradient descent on the squared error from ``f = 0``
(:func:`widenets.kernels.kernel_regression`). Given the labelled set L, on every point x::

    f(x)      = K(x, L) (K(L, L) + r I)^{-1} Y_L
    S(x, x')  = K(x, x') - K(x, L) (K(L, L) + r I)^{-1} K(L, x')

(``S`` is also the posterior covariance of a Gaussian process with kernel K and noise r).
Adding one labelled example (c, y_c) changes both by a rank-one term (the block inverse)::

    f'(x)     = f(x) + S(x, c) (y_c - f(c)) / (S(c, c) + r)                      (LA)
    S'(x, x') = S(x, x') - S(x, c) S(c, x') / (S(c, c) + r)

Equation (LA) is the *look-ahead* of Mohamadi, Bae & Sutherland (NeurIPS 2022): the model
retrained with a candidate added, predicted by the linearised (kernel) model instead of
retraining; for the kernel model it is exact. Three strategies pick the next example from the
unlabelled pool:

* ``"random"``: uniformly at random;
* ``"uncertainty"``: the largest posterior variance ``S(c, c)``;
* ``"lookahead"``: the largest expected change of the pool's predictions,
  ``E_y ||f'(pool) - f(pool)||^2 = ||S(pool, c)||^2 / (S(c, c) + r)^2 E_y ||y - f(c)||^2``,
  the label y drawn from the model's own class probabilities: with one-hot targets the squared
  loss estimates P(class | x), so ``p_k = max(f_k(c), 0)`` normalised (uniform if all vanish).

Labels are integer classes; the targets are their one-hot vectors and a prediction's class is
its largest output. Everything runs in float64 NumPy on the host: the rank-one downdates lose
accuracy in float32 (JAX's default) long before a budget of a few hundred labels.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks, _progress

STRATEGIES = ("random", "uncertainty", "lookahead")


class State(NamedTuple):
    """The kernel model on ``n`` points: ``labelled`` (n,) bool, predictions ``f`` (n, O),
    posterior covariance ``cov`` (n, n), all float64 NumPy; ``scale`` the prior's largest
    variance max K(x, x) (what a posterior variance is small against)."""
    labelled: np.ndarray
    f: np.ndarray
    cov: np.ndarray
    scale: float


class Curve(NamedTuple):
    """Learning curves of ``runs`` active-learning runs of one strategy: ``n_labelled``
    (budget+1,), test ``accuracy`` and test ``mse`` (runs, budget+1), and the points ``chosen``
    (runs, budget), as indices into the kernel's rows."""
    n_labelled: np.ndarray
    accuracy: np.ndarray
    mse: np.ndarray
    chosen: np.ndarray


def _kernel(K) -> np.ndarray:
    K = np.asarray(_checks.kernel_matrix(K, "K"), np.float64)
    return (K + K.T) / 2


def _labels(labels, n: int, n_classes=None):
    a = _checks.real_array(labels, "labels")
    if a.shape != (n,) or not np.all(a == np.round(a)) or np.any(a < 0):
        raise ValueError(f"labels must be {n} non-negative integers (one per row of K); got "
                         f"shape {a.shape}")
    a = a.astype(int)
    O = int(a.max()) + 1 if n_classes is None else n_classes
    if O < 2:
        raise ValueError(f"labels must hold at least 2 classes; got {O}")
    return a, O


def _indices(idx, n: int, argname: str) -> np.ndarray:
    a = np.asarray(idx)
    if a.ndim != 1 or a.size == 0 or not np.issubdtype(a.dtype, np.integer) \
            or a.min() < 0 or a.max() >= n or len(np.unique(a)) != a.size:
        raise ValueError(f"{argname} must be distinct integer indices in [0, {n}); got "
                         f"{a.size} entries" + ("" if a.ndim == 1 else f" of shape {a.shape}"))
    return a.astype(int)


def one_hot(labels, n_classes: int) -> np.ndarray:
    """Targets (n, n_classes): row i is the unit vector of class ``labels[i]``."""
    return np.eye(n_classes)[np.asarray(labels, int)]


def posterior(K, Y, labelled, *, ridge: float = 0.0) -> State:
    """The kernel model after training on the rows ``labelled`` (indices) of ``Y`` (n, O): its
    predictions and posterior covariance on all n points of ``K`` (n, n), from scratch (a
    Cholesky factorisation of ``K(L, L) + ridge I``)."""
    K = _kernel(K)
    n = K.shape[0]
    Y = np.asarray(_checks.real_array(Y, "Y"), np.float64)
    if Y.ndim != 2 or Y.shape[0] != n:
        raise ValueError(f"Y must have shape ({n}, O); got {Y.shape}")
    return _posterior(K, Y, _indices(labelled, n, "labelled"), _checks.nonnegative(ridge, "ridge"))


def _posterior(K, Y, L, ridge: float) -> State:
    import scipy.linalg  # noqa: PLC0415
    n = K.shape[0]
    A = K[np.ix_(L, L)] + ridge * np.eye(len(L))
    try:
        cho = scipy.linalg.cho_factor(A, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        raise ValueError(f"K(L, L) + ridge I is not positive definite (ridge={ridge:g}): pass "
                         f"a ridge > 0") from None
    B = scipy.linalg.cho_solve(cho, K[L], check_finite=False)          # (|L|, n)
    mask = np.zeros(n, bool)
    mask[L] = True
    return State(mask, B.T @ Y[L], K - K[:, L] @ B, float(np.max(np.diagonal(K))))


def _gain(state: State, c, ridge: float):
    """S(:, c) / (S(c, c) + ridge): the rank-one direction of (LA), shape (n, len(c))."""
    s = state.cov[:, c]
    d = np.diagonal(state.cov)[c] + ridge
    if np.any(d <= 1e-10 * state.scale):
        raise ValueError(f"a candidate has (nearly) zero posterior variance, "
                         f"{float(np.min(d)):.3g} against the prior's {state.scale:.3g} (a "
                         f"duplicate of a labelled point): pass a ridge > 0")
    return s / d


def add(state: State, c: int, y_c, *, ridge: float = 0.0) -> State:
    """The model after labelling point ``c`` with targets ``y_c`` (O,): the rank-one update (LA)."""
    c = int(c)
    if state.labelled[c]:
        raise ValueError(f"c={c} is already labelled")
    g = _gain(state, [c], ridge)[:, 0]
    f = state.f + np.outer(g, np.asarray(y_c, np.float64) - state.f[c])
    cov = state.cov - np.outer(g, state.cov[c])
    labelled = state.labelled.copy()
    labelled[c] = True
    return State(labelled, f, (cov + cov.T) / 2, state.scale)


def predicted_change(state: State, candidates, Y_candidates, over, *, ridge: float = 0.0):
    """``||f'(over) - f(over)||^2`` for each candidate labelled with its row of ``Y_candidates``
    (m, O), by the look-ahead (LA): shape (m,). Exact for the kernel model; for a finite network
    with ``K`` its empirical NTK, the linearised prediction of retraining."""
    n = state.cov.shape[0]
    c = _indices(candidates, n, "candidates")
    over = _indices(over, n, "over")
    Yc = np.asarray(_checks.real_array(Y_candidates, "Y_candidates"), np.float64)
    if Yc.shape != (len(c), state.f.shape[1]):
        raise ValueError(f"Y_candidates must have shape ({len(c)}, {state.f.shape[1]}); got "
                         f"{Yc.shape}")
    g = _gain(state, c, ridge)[over]                                  # (|over|, m)
    return np.sum(g ** 2, axis=0) * np.sum((Yc - state.f[c]) ** 2, axis=1)


def scores(state: State, strategy: str, over, *, ridge: float = 0.0) -> np.ndarray:
    """Each unlabelled point's score under ``strategy`` (``"uncertainty"`` or
    ``"lookahead"``), shape (n,), ``-inf`` on labelled points; ``over``: the indices whose
    predictions the look-ahead's expected change is measured on (the pool)."""
    _checks.choice(strategy, "strategy", STRATEGIES[1:])
    n = state.cov.shape[0]
    free = np.flatnonzero(~state.labelled)
    out = np.full(n, -np.inf)
    if strategy == "uncertainty":
        out[free] = np.diagonal(state.cov)[free]
        return out
    over = _indices(over, n, "over")
    f = state.f[free]
    p = np.clip(f, 0.0, None)
    tot = p.sum(axis=1, keepdims=True)
    p = np.where(tot > 0, p / np.where(tot > 0, tot, 1.0), 1.0 / f.shape[1])
    # E_k ||e_k - f||^2 = sum_k p_k (1 - 2 f_k) + ||f||^2
    expected = np.sum(p * (1 - 2 * f), axis=1) + np.sum(f ** 2, axis=1)
    g = _gain(state, free, ridge)[over]
    out[free] = np.sum(g ** 2, axis=0) * expected
    return out


def _accuracy(f, labels) -> float:
    return float(np.mean(np.argmax(f, axis=1) == labels))


def run(K, labels, *, pool, test, initial, budget: int, strategy: str, key,
        ridge: float = 0.0, n_classes=None):
    """One active-learning run: starting from the labelled points ``initial`` (indices of
    ``pool``'s points), label ``budget`` more points of ``pool`` one at a time, chosen by
    ``strategy``, and record the kernel model's test accuracy and mean squared error on
    ``test`` after each. ``K`` (n, n) is the kernel on every point (pool and test), ``labels``
    (n,) their classes. Returns ``(accuracy (budget+1,), mse (budget+1,), chosen (budget,))``.
    """
    return _runs(_kernel(K), labels, pool=pool, test=test, initials=[initial], budget=budget,
                 strategy=strategy, keys=[key], ridge=ridge, n_classes=n_classes)[0]


def _runs(K, labels, *, pool, test, initials, budget, strategy, keys, ridge, n_classes):
    """:func:`run` for several initial sets and keys; ``K`` already validated (float64)."""
    n = K.shape[0]
    labels, O = _labels(labels, n, n_classes)
    pool = _indices(pool, n, "pool")
    test = _indices(test, n, "test")
    if np.intersect1d(pool, test).size:
        raise ValueError("pool and test must not share points")
    _checks.choice(strategy, "strategy", STRATEGIES)
    budget = _checks.positive_int(budget, "budget")
    ridge = _checks.nonnegative(ridge, "ridge")
    Y = one_hot(labels, O)
    # the model lives on the pool and the test points only (rows of K outside both unused)
    rows = np.concatenate([pool, test])
    Kr, Yr, lab = K[np.ix_(rows, rows)], Y[rows], labels[rows]
    P = len(pool)
    test_r = np.arange(P, len(rows))
    pool_r = np.arange(P)
    _checks.fits(8 * 4 * len(rows) ** 2, "pool or test (fewer points)",
                 f"active learning on {len(rows)} points")
    out = []
    for init, key in zip(initials, keys):
        init = _indices(init, n, "initial")
        where = {int(v): i for i, v in enumerate(pool)}
        if any(int(v) not in where for v in init):
            raise ValueError("initial must be indices of pool points")
        if len(init) + budget > P:
            raise ValueError(f"budget={budget} plus {len(init)} initial labels exceed the pool "
                             f"of {P} points")
        order = np.asarray(jax.random.permutation(_checks.prng_key(key, "key"), P))
        state = _posterior(Kr, Yr, np.array([where[int(v)] for v in init]), ridge)
        acc = [_accuracy(state.f[test_r], lab[test_r])]
        mse = [float(np.mean(np.sum((state.f[test_r] - Yr[test_r]) ** 2, axis=1)))]
        chosen = []
        for _ in range(budget):
            if strategy == "random":
                c = int(next(i for i in order if not state.labelled[i]))
            else:
                s = scores(state, strategy, pool_r, ridge=ridge)
                s[P:] = -np.inf                                    # never a test point
                c = int(np.argmax(s))
            state = add(state, c, Yr[c], ridge=ridge)
            chosen.append(int(pool[c]))
            acc.append(_accuracy(state.f[test_r], lab[test_r]))
            mse.append(float(np.mean(np.sum((state.f[test_r] - Yr[test_r]) ** 2, axis=1))))
        out.append((np.array(acc), np.array(mse), np.array(chosen)))
    return out


def curves(K, labels, *, pool, test, n_initial: int, budget: int, runs: int, key,
           strategies=STRATEGIES, ridge: float = 0.0, n_classes=None) -> dict:
    """Learning curves of each strategy over ``runs`` runs: run r starts every strategy from
    the same ``n_initial`` random pool points (paired comparison) and gives ``"random"`` its
    own random order. Returns ``{strategy: Curve}``."""
    runs = _checks.positive_int(runs, "runs")
    n_initial = _checks.positive_int(n_initial, "n_initial")
    key = _checks.prng_key(key, "key")
    K = _kernel(K)
    pool_a = _indices(pool, K.shape[0], "pool")
    if n_initial > len(pool_a):
        raise ValueError(f"n_initial={n_initial} exceeds the pool of {len(pool_a)} points")
    k_init, k_order = jax.random.split(key)
    initials = [pool_a[np.asarray(jax.random.choice(k, len(pool_a), (n_initial,),
                                                    replace=False))]
                for k in jax.random.split(k_init, runs)]
    orders = list(jax.random.split(k_order, runs))
    out = {}
    for s in _progress.track(list(strategies), len(strategies), "active learning",
                             unit="strategies"):
        res = _runs(K, labels, pool=pool_a, test=test, initials=initials, budget=budget,
                    strategy=s, keys=orders, ridge=ridge, n_classes=n_classes)
        out[s] = Curve(np.arange(n_initial, n_initial + budget + 1),
                       np.stack([r[0] for r in res]), np.stack([r[1] for r in res]),
                       np.stack([r[2] for r in res]))
    return out


# ----------------------------------------------------------------------------- finite networks
class NetworkLookahead(NamedTuple):
    """The look-ahead of a finite network against retraining it, per candidate (m,):
    ``predicted`` and ``actual`` changes ``||f'(over) - f(over)||^2``; ``f_over`` (|over|, O)
    the network's outputs before; ``params`` its weights after training on the labelled set."""
    predicted: np.ndarray
    actual: np.ndarray
    f_over: np.ndarray
    params: list


_FINETUNE: dict = {}


def _gd_program(prog, steps: int):
    """Jitted GD from given weights on a dataset, vmapped over datasets of equal size:
    ``(params, params0, X (m, P, D), Y (m, P, O), X_eval, lr, scalings) -> outputs on X_eval
    (m, P_eval, O)``, with outputs centred at ``params0`` (f - f(theta_0))."""
    from . import nets
    if (prog, steps) not in _FINETUNE:
        fan_in = nets._scalings(prog).fan_in

        def one(params, params0, X, Y, X_eval, lr, sca):
            sc = nets._scalings_from(fan_in, sca)
            # the outputs at theta_0, subtracted (centring), computed once outside the loop
            c, c_eval = (nets._apply(prog, params0, x, sc) for x in (X, X_eval))
            loss = lambda p: 0.5 * jnp.sum((nets._apply(prog, p, X, sc) - c - Y) ** 2) / X.shape[0]

            def step(p, _):
                g = jax.grad(loss)(p)
                return [w - lr * dw for w, dw in zip(p, g)], None

            p, _ = jax.lax.scan(step, params, None, length=steps)
            return nets._apply(prog, p, X_eval, sc) - c_eval, p

        _FINETUNE[prog, steps] = jax.jit(jax.vmap(one, in_axes=(None, None, 0, 0, None, None,
                                                                  None)))
    return _FINETUNE[prog, steps]


def network_lookahead(X, labels, *, labelled, candidates, over, depth, width, eta, steps,
                      steps_after, key, activation="relu", parameterization="ntk", gamma0=1.0,
                      n_classes=None) -> NetworkLookahead:
    """Look-ahead by the linearised network against real retraining, for a finite network.

    A network with one output per class (``nets.make_mlp``, centred: ``f - f(theta_0)``) is
    trained by ``steps`` steps of full-batch gradient descent on the one-hot targets of the
    points ``labelled``, to weights theta_L. For each candidate c, with its true label:

    * actual: ``steps_after`` more steps of gradient descent from theta_L on ``labelled + [c]``
      (all candidates at once, one vmapped program), the change of the outputs on ``over``;
    * predicted: the network linearised at theta_L trained the same way, i.e. kernel gradient
      descent with its full empirical NTK at theta_L (``kernels.full_ntk``, every logit pair:
      :func:`widenets.kernels.gd_predictor` on the flattened kernel, in which the learning rate
      is ``eta * O``), from the network's own outputs.

    Returns :class:`NetworkLookahead`. In the NTK parameterisation the two agree better the
    wider the network; in muP at fixed gamma0 the features keep moving.
    """
    from . import kernels, nets
    X = np.asarray(_checks.inputs(X, "X"))
    n = X.shape[0]
    labels, O = _labels(labels, n, n_classes)
    L = _indices(labelled, n, "labelled")
    C = _indices(candidates, n, "candidates")
    over = _indices(over, n, "over")
    if np.intersect1d(L, C).size:
        raise ValueError("candidates must not be labelled already")
    eta = _checks.nonnegative(eta, "eta")
    steps = _checks.positive_int(steps, "steps")
    steps_after = _checks.positive_int(steps_after, "steps_after")
    key = _checks.prng_key(key, "key")
    net = nets.make_mlp(X.shape[1], depth=depth, width=width, activation=activation,
                        parameterization=parameterization, gamma0=gamma0, n_out=O)
    m, P1 = len(C), len(L) + 1
    _checks.fits(4 * (m + 2) * (4 * nets.n_params(net) + 8 * width * depth * (P1 + len(over)))
                 + 4 * (P1 + m + len(over)) ** 2 * O * O * 2, "candidates or width",
                 f"retraining a width-{width} network once per candidate ({m})")
    Y = one_hot(labels, O)
    prog = nets._program_net(net)
    sc = nets._scalings(net)
    sca = nets._scalings_args(sc, jnp.zeros(()).dtype)
    lr = jnp.asarray(eta * sc.ntk_scale)
    theta0 = nets.init_params(net, key)
    Xj = jnp.asarray(X)
    f_L, theta_L = _gd_program(prog, steps)(theta0, theta0, Xj[L][None], jnp.asarray(Y[L])[None],
                                            Xj, lr, sca)
    theta_L = [w[0] for w in theta_L]
    f_all = np.asarray(f_L[0], np.float64)                          # (n, O) after training on L
    idx = np.concatenate([np.tile(L, (m, 1)), C[:, None]], axis=1)  # (m, P1)
    f_new, _ = _gd_program(prog, steps_after)(theta_L, theta0, Xj[idx], jnp.asarray(Y[idx]),
                                              Xj[over], lr, sca)
    actual = np.sum((np.asarray(f_new, np.float64) - f_all[over]) ** 2, axis=(1, 2))
    if not (np.all(np.isfinite(f_all)) and np.all(np.isfinite(actual))):
        raise ValueError(f"the network's training diverged (non-finite outputs): eta={eta:g} is "
                         f"above its stable learning rate; lower eta")
    # the linearisation at theta_L: its NTK on every point involved, once
    pts = np.unique(np.concatenate([L, C, over]))
    pos = {int(v): i for i, v in enumerate(pts)}
    ntk = np.asarray(kernels.full_ntk(net, theta_L, X[pts]), np.float64)   # (p, p, O, O)
    ntk = (ntk + ntk.transpose(1, 0, 3, 2)) / 2     # symmetric beyond float32 round-off
    flat = lambda a, b: kernels.flatten_full(ntk[np.ix_(a, b)])
    rows_over = np.array([pos[int(v)] for v in over])
    predicted = np.empty(m)
    for j in range(m):
        r = np.array([pos[int(v)] for v in idx[j]])
        pred = kernels.gd_predictor(flat(r, r), Y[idx[j]].ravel(), eta=eta * O,
                                    steps=steps_after, K_test=flat(rows_over, r),
                                    f0=f_all[idx[j]].ravel(), f0_test=f_all[over].ravel())
        predicted[j] = np.sum((np.asarray(pred.f_test[-1], np.float64)
                               - f_all[over].ravel()) ** 2)
    return NetworkLookahead(predicted, actual, f_all[over], theta_L)
