"""A finite network and its linearisation around initialisation, trained side by side.

The linearised network (Lee et al. 2019) is the first-order Taylor expansion of the network
``f(theta; x)`` in its weights around the initial weights ``theta_0``::

    f_lin(theta; x) = f(theta_0; x) + J(theta_0; x) (theta - theta_0),   J = df/dtheta,

evaluated with one forward-mode product (``jax.jvp``), never an explicit Jacobian. Trained by
full-batch gradient descent on ``L = (1/2P) sum_mu sum_k (f_mu,k - y_mu,k)^2`` with the
learning rate ``eta * ntk_scale`` of :mod:`widenets.nets`, its outputs on the training set
follow kernel gradient descent with the network's empirical NTK at initialisation,
``ntk = ntk_scale * J(theta_0) J(theta_0)^T`` (the package's units), exactly::

    f_lin[t+1] = f_lin[t] - (eta / P) ntk (f_lin[t] - y),
    f_lin_test[t+1] = f_lin_test[t] - (eta / P) ntk(X_test, X) (f_lin[t] - y),

which is :func:`widenets.kernels.gd_predictor`. The network itself follows the same equation
with the kernel ``ntk(t)`` of its current weights; the two agree as long as the NTK stays
put. In the NTK parameterisation the gap between them closes with the width N: Lee et al.
bound it by O(1/sqrt(N)); the relative weight gap ``||theta - theta_lin|| / ||theta -
theta_0||`` falls about so (measured ~N^-0.35 between N = 64 and 1024, depth 2), the output
gap faster (~N^-0.8 there: the NTK moves by O(1/N) on average during training). In muP at a
fixed ``gamma0`` it does not close (the features move by O(gamma0) at every width).

Each output (logit) k of a multi-output network has the scalar-output dynamics above, coupled
to the other logits only through the off-diagonal blocks ``ntk[mu, nu, k, k']`` (k != k'),
which vanish at infinite width.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks, _progress
from .nets import (CNN, MLP, _apply, _cnn, _cnn_apply, _cnn_scalings, _cnn_unit_normals,
                   _images, _inputs_for, _itemsize, _net, _param_shapes, _params,
                   _program_net, _run_args, _scaled, _scalings, _scalings_args,
                   _scalings_from, _unit_normals, cnn_n_params, make_cnn, make_mlp, n_params)

__all__ = ["linearize", "train_linearized", "train_linearized_cnn", "LinearizedRun"]


# ----------------------------------------------------------------------------- the two kinds
def _valid(net, argname: str = "net"):
    """``net`` re-validated: an :class:`~widenets.nets.MLP` or a :class:`~widenets.nets.CNN`."""
    if isinstance(net, CNN):
        return _cnn(net, argname)
    if isinstance(net, MLP):
        return _net(net, argname)
    raise ValueError(f"{argname} must be an MLP or a CNN (from widenets.nets.make_mlp or "
                     f"make_cnn); got {type(net).__name__}")


def _table(net):
    """The :class:`~widenets.nets.Scalings` of an MLP or a CNN."""
    return _cnn_scalings(net) if isinstance(net, CNN) else _scalings(net)


def _outputs(net, params, X, sc):
    """Outputs of shape (P, O): an MLP's (P, n_out), a CNN's scalar output as (P, 1)."""
    if isinstance(net, CNN):
        return _cnn_apply(net, params, X, sc)[:, None]
    return _apply(net, params, X, sc)


def _inputs(net, X, argname: str = "X"):
    """Inputs of ``net``: (P, D) for an MLP, images (P, H, W, C) for a CNN (finite unless
    traced)."""
    if not isinstance(net, CNN):
        return _inputs_for(net, X, argname)
    shape = (net.H, net.W, net.C)
    if _checks.is_traced(X):
        if X.ndim != 4 or tuple(X.shape[1:]) != shape:
            raise ValueError(f"{argname} must have shape (P, {net.H}, {net.W}, {net.C}); got "
                             f"shape {X.shape}")
        return X
    return jnp.asarray(_images(X, argname, shape))


def _sub(a, b):
    return [u - v for u, v in zip(a, b)]


def _norm(a, b):
    """Euclidean norm of ``a - b`` over all the weights (lists of arrays)."""
    return jnp.sqrt(sum(jnp.sum((u - v) ** 2) for u, v in zip(a, b)))


# ----------------------------------------------------------------------------- linearize
_LINEAR: dict = {}


def linearize(net, params):
    """The network ``net`` linearised in its weights around ``params`` = theta_0.

    Returns ``f_lin(params_new, X) = f(theta_0; X) + J(theta_0; X) (params_new - theta_0)``,
    computed by ``jax.jvp`` (a forward-mode product, no Jacobian held), of shape (P, n_out)
    for an MLP (:func:`widenets.nets.make_mlp`) and (P,) for a CNN
    (:func:`widenets.nets.make_cnn`). ``params`` and ``params_new`` are weight lists as
    :func:`widenets.nets.init_params` / :func:`~widenets.nets.init_cnn_params` return them
    (the weights as stored, times the parameterisation's multipliers in the forward pass);
    ``X`` is (P, D) or images (P, H, W, C). ``f_lin`` can be jitted and differentiated.
    Bad input raises ``ValueError`` naming the argument.
    """
    net = _valid(net)
    params0 = _params(net, params, "params")
    prog = _program_net(net)
    if prog not in _LINEAR:
        fan_in = _table(prog).fan_in

        def run(p0, p, X, sca):
            sc = _scalings_from(fan_in, sca)
            f0, df = jax.jvp(lambda q: _outputs(prog, q, X, sc), (p0,), (_sub(p, p0),))
            return f0 + df
        _LINEAR[prog] = jax.jit(run)
    scalar = isinstance(net, CNN)

    def f_lin(params_new, X):
        p = _params(net, params_new, "params_new")
        X = _inputs(net, X)
        dtype = jnp.result_type(X.dtype, *(w.dtype for w in params0))
        f = _LINEAR[prog](params0, p, X, _scalings_args(_table(net), dtype))
        return f[:, 0] if scalar else f

    f_lin.__doc__ = (f"The linearisation of {net} around the given weights: "
                     f"f_lin(params_new, X) = f(theta_0; X) + J(theta_0; X) (params_new - "
                     f"theta_0).")
    return f_lin


# ----------------------------------------------------------------------------- training
class LinearizedRun(NamedTuple):
    """A network and its linearisation trained side by side (leading axis: seed S).

    Every step t = 0..T: ``loss``, ``loss_lin`` (S, T+1). At the record ``times`` (n_rec,):
    training outputs ``f``, ``f_lin`` (S, n_rec, P), or (S, n_rec, P, O) for targets (P, O);
    test outputs ``f_test``, ``f_test_lin`` likewise (None without ``X_test``); the distances
    (S, n_rec), Euclidean over all the weights as stored: ``weight_change`` =
    ||theta(t) - theta_0||, ``weight_change_lin`` = ||theta_lin(t) - theta_0||,
    ``weight_gap`` = ||theta(t) - theta_lin(t)||. With ``center`` the outputs are
    ``f - f(theta_0)``. ``params``, ``params_lin``: final weights (leading axis S).
    """
    loss: jax.Array
    loss_lin: jax.Array
    times: np.ndarray
    f: jax.Array
    f_lin: jax.Array
    f_test: jax.Array | None
    f_test_lin: jax.Array | None
    weight_change: jax.Array
    weight_change_lin: jax.Array
    weight_gap: jax.Array
    params: list
    params_lin: list
    net: MLP | CNN


_DOC_ARGS = """
    Args:
      X: inputs; y: targets (P,) or (P, O) (see above).
      depth, width, activation, gamma0, parameterization: the network, as in
        :mod:`widenets.nets` (muP by default).
      eta: learning rate in DMFT units; the weights of both models move with
        ``eta * ntk_scale`` (muP: ``eta * gamma0^2 * N``).
      steps: number of gradient steps T; losses have T+1 entries, entry 0 at initialisation.
      key: PRNG key or integer seed. Seed s starts from the same weights as seed s of
        {twin} with the same key.
      n_seeds: independent networks (vmapped).
      record_every: outputs and weight distances are recorded every this many steps (must
        divide ``steps``); default 1, every step.
      X_test: optional test inputs whose outputs are recorded too.
      center: train (and record) ``f - f(theta_0)`` for both models, so that the output at
        initialisation is 0 as in the infinite-width theory (the gradients are unchanged).

    One compiled program (per network shape, steps, record_every, test set and centring)
    runs both models in one ``lax.scan`` over the steps, vmapped over the seeds; the learning
    rate and the parameterisation's constants are traced arguments, so a sweep over gamma0 or
    the parameterisation compiles once. A request that cannot fit in memory is refused before
    anything is allocated; a run whose losses are not finite warns (``RuntimeWarning``).
    """


def train_linearized(X, y, *, depth, width, activation="relu", gamma0=1.0,
                     parameterization="mup", eta, steps, key, n_seeds=1, record_every=None,
                     X_test=None, center=False) -> LinearizedRun:
    """Train MLPs and their linearisations around the same initial weights, side by side.

    For each seed, the network ``f(theta)`` (:func:`widenets.nets.make_mlp`, inputs X of
    shape (P, D)) and ``f_lin(theta_lin) = f(theta_0) + J(theta_0) (theta_lin - theta_0)``
    both start at ``theta_0`` and take full-batch gradient steps on
    ``L = (1/2P) sum_mu sum_k (f_mu,k - y_mu,k)^2``::

        theta[t+1] = theta[t] - eta ntk_scale dL/dtheta (theta[t]),

    so that ``f_lin`` follows kernel gradient descent with the initial NTK,
    ``f_lin[t+1] = f_lin[t] - (eta/P) ntk(0) (f_lin[t] - y)``. Targets y of shape (P,) train a
    scalar output; (P, O) an O-logit readout, each logit with the scalar loss's dynamics.
    """
    X = jnp.asarray(_checks.inputs(X, "X"))
    y = _targets(y, X.shape[0], X.dtype)
    net = make_mlp(X.shape[1], depth=depth, width=width, activation=activation,
                   parameterization=parameterization, gamma0=gamma0,
                   n_out=1 if y.ndim == 1 else y.shape[1])
    if X_test is not None:
        X_test = jnp.asarray(_checks.inputs(X_test, "X_test"), X.dtype)
        if X_test.shape[1] != X.shape[1]:
            raise ValueError(f"X_test must have D={X.shape[1]} columns like X; "
                             f"got shape {X_test.shape}")
    return _train(net, X, y, X_test, eta, steps, key, n_seeds, record_every, center,
                  lambda keys: _unit_normals(_param_shapes(net), keys), "train_linearized")


def train_linearized_cnn(X, y, *, depth, width, activation="relu", gamma0=1.0,
                         parameterization="mup", eta, steps, key, n_seeds=1, record_every=None,
                         X_test=None, center=False) -> LinearizedRun:
    """Train CNNs and their linearisations around the same initial weights, side by side.

    :func:`train_linearized` for the CNNs of :func:`widenets.nets.make_cnn`: images X of
    shape (P, H, W, C) (channels last), a scalar output, targets y of shape (P,), full-batch
    gradient descent on ``L = (1/2P) sum_mu (f_mu - y_mu)^2`` with the learning rate
    ``eta * ntk_scale`` for the network and for
    ``f_lin(theta_lin) = f(theta_0) + J(theta_0) (theta_lin - theta_0)``.
    """
    X = jnp.asarray(_images(X, "X"))
    y = jnp.asarray(_checks.targets(y, X.shape[0], "y"), X.dtype)
    net = make_cnn(X.shape[1:], depth=depth, width=width, activation=activation,
                   parameterization=parameterization, gamma0=gamma0)
    if X_test is not None:
        X_test = jnp.asarray(_images(X_test, "X_test", X.shape[1:]), X.dtype)
    return _train(net, X, y, X_test, eta, steps, key, n_seeds, record_every, center,
                  lambda keys: _cnn_unit_normals(net, keys), "train_linearized_cnn")


if train_linearized.__doc__ and train_linearized_cnn.__doc__:     # (None under python -OO)
    train_linearized.__doc__ += _DOC_ARGS.format(twin=":func:`widenets.nets.train_mlp`")
    train_linearized_cnn.__doc__ += _DOC_ARGS.format(
        twin=":func:`widenets.nets.train_cnn` (full batch)").replace(
        "y: targets (P,) or (P, O) (see above)", "y: targets (P,)")


def _targets(y, P: int, dtype):
    """Targets (P,) or (P, O), real and finite; errors name ``y``."""
    a = _checks.real_array(y, "y")
    if a.ndim == 1:
        return jnp.asarray(_checks.targets(a, P, "y"), dtype)
    if a.ndim != 2 or a.shape[0] != P or a.shape[1] < 1:
        raise ValueError(f"y must have shape ({P},) or ({P}, O) with O >= 1 to match the "
                         f"inputs; got shape {a.shape}")
    _checks.finite(a, "y")
    _checks.representable(a, "y", power=2)
    return jnp.asarray(a, dtype)


def _train(net, X, y, X_test, eta, steps, key, n_seeds, record_every, center, unit_normals,
           name: str) -> LinearizedRun:
    """The training shared by the MLP and the CNN: ``unit_normals(keys)`` draws the seeds'
    unit-normal weights as the twin trainer of :mod:`widenets.nets` does."""
    eta, steps, n_seeds, record_every, center, key = _run_args(
        eta, steps, n_seeds, 1 if record_every is None else record_every, center, key)
    P = X.shape[0]
    P_test = 0 if X_test is None else X_test.shape[0]
    _checks.fits(*_train_bytes(net, P, P_test, steps=steps, record_every=record_every,
                               n_seeds=n_seeds))
    lr = eta * _table(net).ntk_scale
    big = float(np.finfo(np.dtype(X.dtype)).max) / 16
    if lr > big:
        raise ValueError(f"the weights' learning rate eta * ntk_scale = {lr:.3g} overflows "
                         f"{np.dtype(X.dtype).name}: eta={eta:g} or gamma0={net.gamma0:g} is "
                         f"too large")
    y2 = y if y.ndim == 2 else y[:, None]
    run = _trainer(_program_net(net), steps, record_every, X_test is not None, center)
    keys = jax.random.split(key, n_seeds)
    args = (X, y2, X_test if X_test is not None else X[:1], jnp.asarray(lr, X.dtype),
            _scalings_args(_table(net), X.dtype))
    with np.errstate(over="ignore", invalid="ignore"), _progress.reporting(name):
        loss, loss_lin, rec, params, params_lin = jax.block_until_ready(
            run(unit_normals(keys), *args))
    f, f_lin, ft, ft_lin, dw, dw_lin, gap = rec
    if y.ndim == 1:
        f, f_lin, ft, ft_lin = (a[..., 0] for a in (f, f_lin, ft, ft_lin))
    _warn_if_not_finite(name, net, eta, loss, loss_lin)
    with_test = X_test is not None
    return LinearizedRun(loss, loss_lin, np.arange(0, steps + 1, record_every), f, f_lin,
                         ft if with_test else None, ft_lin if with_test else None,
                         dw, dw_lin, gap, params, params_lin, net)


def _train_bytes(net, P: int, P_test: int, *, steps: int, record_every: int, n_seeds: int):
    """Estimated memory as ``(bytes, argument to reduce, description)`` for :func:`_checks.fits`.

    As :func:`widenets.nets._train_bytes`, doubled for the two models, per seed (all seeds
    live at once): each model's weights four times (current, gradient, update, initial) and
    the activations of its forward and backward passes on the training and test inputs (the
    linearisation holds the initial ones as residuals); the records (twice: the scan's stack
    and the concatenated copy) and the per-step losses (three times).
    """
    it = _itemsize()
    cnn = isinstance(net, CNN)
    O = 1 if cnn else net.n_out
    weights = cnn_n_params(net) if cnn else n_params(net)
    per_row = 8 * net.width * net.depth * (net.H * net.W if cnn else 1) + 2 * O
    n_rec = steps // record_every + 1
    terms = {
        "width": 2 * (4 * weights + per_row * (P + P_test)),
        "record_every (record less often) or the number of rows of X":
            2 * 2 * n_rec * ((P + P_test) * O + 3),
        "steps": 2 * 3 * (steps + 1),
    }
    blame = max(terms, key=terms.get) + (" or n_seeds" if n_seeds > 1 else "")
    kind = "CNN" if cnn else "network"
    return (n_seeds * it * sum(terms.values()), blame,
            f"training {n_seeds} {kind}(s) of width {net.width} and depth {net.depth} "
            f"({weights:,} weights each) and their linearisations for {steps} steps on "
            f"{P} inputs")


def _warn_if_not_finite(name: str, net, eta: float, loss, loss_lin) -> None:
    """A RuntimeWarning naming eta when either model's loss is not finite, or ends above
    ``_checks.GROWTH`` times where it started (a finite divergence)."""
    import warnings
    for what, l in (("network", loss), ("linearised network", loss_lin)):
        l = np.asarray(l, np.float64)                                   # (S, T+1)
        ok = np.all(np.isfinite(l), axis=0)
        if np.all(ok):
            l0, lT = float(np.max(l[:, 0])), float(np.max(l[:, -1]))
            if not (l0 > 0 and lT > _checks.GROWTH * l0):
                continue
            how = f"the loss grew from {l0:.3g} to {lT:.3g} in {l.shape[1] - 1} steps"
            t_bad = 1
        else:
            t_bad = int(np.argmin(ok))
            how = f"non-finite loss from step {t_bad}"
        cause = (f"eta={eta:g} is probably above the stable learning rate 2P/lambda_max of the "
                 f"initial NTK (the linearised network diverges exactly when it is): lower eta"
                 if t_bad > 0 else
                 f"the loss is not finite already at initialisation, so eta={eta:g} is not the "
                 f"cause: the targets, the inputs or the output's scale (gamma0="
                 f"{net.gamma0:g}) overflow")
        warnings.warn(f"{name}: the {what}'s training diverged ({how}): {cause} "
                      f"(parameterization={net.parameterization!r}, width={net.width})",
                      RuntimeWarning, stacklevel=4)


_TRAINERS: dict = {}


def _trainer(net, steps: int, record_every: int, with_test: bool, center: bool):
    """The jitted program that trains a network and its linearisation, vmapped over seeds.

    ``net`` is a :func:`widenets.nets._program_net` (an MLP or a CNN); the learning rate and
    the scalings are traced arguments. Its arguments: the seeds' unit-normal weights (S, ...)
    (donated), X, y (P, O), X_test, lr, :func:`widenets.nets._scalings_args`. Cached per
    static configuration in :data:`_TRAINERS`.
    """
    cache_key = (net, steps, record_every, with_test, center)
    if cache_key in _TRAINERS:
        return _TRAINERS[cache_key]
    fan_in = _table(net).fan_in
    n_chunks = steps // record_every

    def one_seed(unit, X, y, X_test, lr, sca):
        sc = _scalings_from(fan_in, sca)
        theta0 = _scaled(sc, unit)
        P = X.shape[0]
        # f(theta_0) and the linear map dtheta -> J(theta_0) dtheta (jax.linearize: the jvp
        # with its forward pass at theta_0 done once, outside the loop)
        f0, jvp = jax.linearize(lambda p: _outputs(net, p, X, sc), theta0)
        if with_test:
            ft0, jvp_test = jax.linearize(lambda p: _outputs(net, p, X_test, sc), theta0)
        else:
            ft0, jvp_test = jnp.zeros((0, y.shape[1]), X.dtype), None
        c, ct = (f0, ft0) if center else (0.0, 0.0)

        def f_net(p):
            return _outputs(net, p, X, sc) - c

        def f_lin(p):
            return f0 - c + jvp(_sub(p, theta0))

        def ft_net(p):
            return _outputs(net, p, X_test, sc) - ct if with_test else ft0

        def ft_lin(p):
            return ft0 - ct + jvp_test(_sub(p, theta0)) if with_test else ft0

        def loss_of(model):
            return lambda p: 0.5 * jnp.sum((model(p) - y) ** 2) / P

        def gd(p, g):
            return [w - lr * dw for w, dw in zip(p, g)]

        def step(carry, t):
            _progress.tick(t, steps)
            p, q = carry
            loss, g = jax.value_and_grad(loss_of(f_net))(p)
            loss_lin, g_lin = jax.value_and_grad(loss_of(f_lin))(q)
            return (gd(p, g), gd(q, g_lin)), (loss, loss_lin)

        def record(p, q):
            return (f_net(p), f_lin(q), ft_net(p), ft_lin(q), _norm(p, theta0),
                    _norm(q, theta0), _norm(p, q))

        def chunk(carry, t0):
            rec = record(*carry)
            carry, losses = jax.lax.scan(step, carry, t0 + jnp.arange(record_every))
            return carry, (rec, losses)

        (p, q), (recs, (loss, loss_lin)) = jax.lax.scan(chunk, (theta0, theta0),
                                                        jnp.arange(n_chunks) * record_every)
        flat = lambda a: a.reshape((-1,) + a.shape[2:])
        loss = jnp.concatenate([flat(loss), loss_of(f_net)(p)[None]])
        loss_lin = jnp.concatenate([flat(loss_lin), loss_of(f_lin)(q)[None]])
        recs = tuple(jnp.concatenate([a, e[None]]) for a, e in zip(recs, record(p, q)))
        return loss, loss_lin, recs, p, q

    run = jax.jit(jax.vmap(one_seed, in_axes=(0, None, None, None, None, None)),
                  donate_argnums=0)
    _TRAINERS[cache_key] = run
    return run
