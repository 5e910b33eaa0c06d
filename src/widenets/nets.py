"""Finite-width MLPs in the standard, NTK and muP / mean-field parameterisations.

The network (DESIGN.md conventions, paper 1 of Bordelon & Pehlevan for ``"mup"``)::

    h^1     = m_0 W^0 x                     W^0: (N, D)
    h^{l+1} = m_l W^l phi(h^l)              W^l: (N, N), l = 1..L-1
    f       = m_L w^L . phi(h^L)            w^L: (N, n_out)

trained by full-batch gradient descent on ``L = (1/2P) sum_mu (f_mu - y_mu)^2`` with the
learning rate ``eta * ntk_scale``. Per parameterisation (richness ``gamma0``):

=============  ====================  ===================  ==================  ===============
name           multipliers m_l       readout m_L          init std of W^l     ntk_scale
=============  ====================  ===================  ==================  ===============
``mup``        1/sqrt(fan_in)        1/(gamma0 N)         1                   gamma0^2 N
``ntk``        1/sqrt(fan_in)        1/(gamma0 sqrt N)    1                   gamma0^2
``standard``   1                     1/gamma0             1/sqrt(fan_in)      gamma0^2
=============  ====================  ===================  ==================  ===============

With these choices the kernel that drives the training error, ``ntk = ntk_scale * grad f . grad f'``,
satisfies ``delta[t+1] ~ delta[t] - (eta/P) ntk(t) delta[t]``, the same units as the DMFT fields.
muP with ``gamma0`` is the NTK parameterisation with ``gamma = gamma0 sqrt(N)``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from ._checks import ACTIVATIONS, PARAMETERIZATIONS


def activation_fn(name: str):
    """The elementwise nonlinearity phi for ``name`` in ``ACTIVATIONS``."""
    _checks.choice(name, "activation", ACTIVATIONS)
    return {"linear": lambda h: h, "relu": jax.nn.relu, "tanh": jnp.tanh,
            "erf": jax.scipy.special.erf}[name]


class MLP(NamedTuple):
    """A fully connected network: ``depth`` hidden layers of ``width`` units on inputs of dimension ``D``."""
    D: int
    depth: int
    width: int
    activation: str = "relu"
    parameterization: str = "mup"
    gamma0: float = 1.0
    n_out: int = 1


def make_mlp(D, *, depth, width, activation="relu", parameterization="mup", gamma0=1.0,
             n_out=1) -> MLP:
    """Validated :class:`MLP` (every argument checked; errors name the argument)."""
    return MLP(D=_checks.positive_int(D, "D"), depth=_checks.positive_int(depth, "depth"),
               width=_checks.positive_int(width, "width"),
               activation=_checks.choice(activation, "activation", ACTIVATIONS),
               parameterization=_checks.choice(parameterization, "parameterization",
                                               PARAMETERIZATIONS),
               gamma0=_checks.nonnegative(gamma0, "gamma0", strict=True),
               n_out=_checks.positive_int(n_out, "n_out"))


class Scalings(NamedTuple):
    """Per-layer constants of a parameterisation (layers l = 0..L, the last is the readout)."""
    fan_in: tuple
    multiplier: tuple
    init_std: tuple
    ntk_scale: float   # learning rate = eta * ntk_scale; ntk = ntk_scale * grad f . grad f'


def scalings(net: MLP) -> Scalings:
    """The multipliers, initial standard deviations and learning-rate scale of ``net``."""
    N, L, g0 = net.width, net.depth, net.gamma0
    fan_in = (net.D,) + (N,) * L
    p = net.parameterization
    if p == "mup":
        mult = tuple(1 / np.sqrt(n) for n in fan_in[:-1]) + (1 / (g0 * N),)
        std = (1.0,) * (L + 1)
        ntk_scale = g0 ** 2 * N
    elif p == "ntk":
        mult = tuple(1 / np.sqrt(n) for n in fan_in[:-1]) + (1 / (g0 * np.sqrt(N)),)
        std = (1.0,) * (L + 1)
        ntk_scale = g0 ** 2
    else:  # standard
        mult = (1.0,) * L + (1 / g0,)
        std = tuple(1 / np.sqrt(n) for n in fan_in)
        ntk_scale = g0 ** 2
    return Scalings(fan_in, tuple(float(m) for m in mult), tuple(float(s) for s in std),
                    float(ntk_scale))


def abc_exponents(parameterization: str, depth: int = 2, D: int = 10) -> dict:
    """Width exponents of a parameterisation, read off :func:`scalings` (Yang & Hu's abc form).

    Writing layer l's weight as ``W = N^{-a} w`` with ``w ~ N(0, N^{-2b})`` and the learning
    rate as ``eta N^{-c}``, returns ``{"a": (a_in, a_hidden, a_out), "b": ..., "c": c}``, and the
    same exponents moved by the symmetry ``(a, b, c) -> (a - s, b + s, c + 2s)`` of ``w = N^s w'`` to ``c = 0``
    (``"a0"``, ``"b0"``), the normalisation of Yang & Hu's table. The input dimension D is held
    fixed, so only N-dependence counts. Exponents are measured from two widths, not hard-coded.
    """
    _checks.choice(parameterization, "parameterization", PARAMETERIZATIONS)
    depth = max(_checks.positive_int(depth, "depth"), 2)
    N1, N2 = 1024, 4096
    s1, s2 = (scalings(make_mlp(D, depth=depth, width=n, parameterization=parameterization))
              for n in (N1, N2))
    expo = lambda v1, v2: -float(np.log(v2 / v1) / np.log(N2 / N1))
    pick = lambda seq: (seq[0], seq[1], seq[-1])        # input, a hidden layer, readout
    a = tuple(expo(m1, m2) for m1, m2 in zip(pick(s1.multiplier), pick(s2.multiplier)))
    b = tuple(expo(v1, v2) for v1, v2 in zip(pick(s1.init_std), pick(s2.init_std)))
    c = expo(s1.ntk_scale, s2.ntk_scale)
    shift = c / 2          # w = N^s w' maps (a, b, c) to (a - s, b + s, c + 2s); s = -c/2
    clean = lambda x: round(x * 2) / 2 + 0.0
    return {"a": tuple(map(clean, a)), "b": tuple(map(clean, b)), "c": clean(c),
            "a0": tuple(clean(x + shift) for x in a), "b0": tuple(clean(x - shift) for x in b)}


def init_params(net: MLP, key) -> list:
    """Independent Gaussian weights for every layer (one key per layer, never reused)."""
    sc = scalings(net)
    shapes = [(net.width, net.D)] + [(net.width, net.width)] * (net.depth - 1) + \
             [(net.width, net.n_out)]
    keys = jax.random.split(key, len(shapes))
    dtype = jnp.zeros(()).dtype  # float64 when x64 is enabled
    return [s * jax.random.normal(k, shp, dtype) for k, shp, s in zip(keys, shapes, sc.init_std)]


def forward(net: MLP, params, X, eps=None):
    """Pre-activations and output: ``(hs, f)`` with ``hs[l-1] = h^l`` of shape (P, N), ``f`` (P, n_out).

    ``eps`` (optional list of (P, N) arrays) is added to each h^l; differentiating the output
    with respect to it gives the per-sample derivatives df/dh^l.
    """
    sc = scalings(net)
    phi = activation_fn(net.activation)
    h = sc.multiplier[0] * X @ params[0].T
    hs = []
    for l in range(net.depth):
        if eps is not None:
            h = h + eps[l]
        hs.append(h)
        a = phi(h)
        if l < net.depth - 1:
            h = sc.multiplier[l + 1] * a @ params[l + 1].T
    f = sc.multiplier[-1] * phi(hs[-1]) @ params[-1]
    return hs, f


def apply(net: MLP, params, X):
    """Network output ``f`` of shape (P, n_out)."""
    return forward(net, params, X)[1]


class Kernels(NamedTuple):
    """Equal-time kernels of a network on one set of inputs, in the DMFT's units."""
    ntk: jax.Array   # (P, P): ntk_scale * grad f . grad f'
    phi: jax.Array   # (depth, P, P): Phi^l = phi(h^l) . phi(h^l') / N, l = 1..L
    g: jax.Array     # (depth, P, P): G^l = g^l . g^l' / N with g^l = (df/dh^l) / m_L


def kernels(net: MLP, params, X) -> Kernels:
    """Feature kernels, gradient kernels and the exact NTK of a scalar-output network.

    The NTK of a dense network factorises exactly, layer by layer:
    ``ntk = ntk_scale * sum_l m_l^2 (df/dh^{l+1} . df/dh^{l+1}') (a^l . a^l')``
    with ``a^0 = x`` and ``a^l = phi(h^l)``; this costs O(P^2 N L) instead of a Jacobian.
    """
    if net.n_out != 1:
        raise ValueError(f"kernels needs a scalar-output network (n_out=1); got n_out={net.n_out}")
    sc = scalings(net)
    phi_fn = activation_fn(net.activation)
    P, N = X.shape[0], net.width
    zeros = [jnp.zeros((P, N), X.dtype) for _ in range(net.depth)]

    def out(eps):
        hs, f = forward(net, params, X, eps)
        return jnp.sum(f), hs

    dfdh, hs = jax.grad(out, has_aux=True)(zeros)          # dfdh[l-1] = df/dh^l, (P, N)
    acts = [X] + [phi_fn(h) for h in hs]                     # a^0..a^L
    grams_a = [a @ a.T for a in acts]
    grams_d = [d @ d.T for d in dfdh] + [jnp.ones((P, P), X.dtype)]   # df/dh^{L+1} = 1
    ntk = sc.ntk_scale * sum(m ** 2 * gd * ga for m, gd, ga in
                             zip(sc.multiplier, grams_d, grams_a))
    phi = jnp.stack(grams_a[1:]) / N
    g = jnp.stack(grams_d[:-1]) / (N * sc.multiplier[-1] ** 2)
    return Kernels(ntk, phi, g)


def empirical_ntk(net: MLP, params, X, X2=None):
    """The empirical NTK ``ntk_scale * J J'^T`` from explicit Jacobians (any ``n_out``).

    Returns shape (P, P2) for a scalar output, else (P, P2, n_out, n_out). Slow at large width:
    use :func:`kernels` for scalar outputs; this is the reference it is tested against.
    """
    X2 = X if X2 is None else X2
    sc = scalings(net)
    flat = lambda J: jnp.concatenate([j.reshape(j.shape[:2] + (-1,)) for j in J], axis=-1)
    J1 = flat(jax.jacrev(lambda p: apply(net, p, X))(params))    # (P, O, n_params)
    J2 = flat(jax.jacrev(lambda p: apply(net, p, X2))(params))
    K = sc.ntk_scale * jnp.einsum("aip,bjp->abij", J1, J2)
    return K[:, :, 0, 0] if net.n_out == 1 else K


def init_kernels(net: MLP, X, key, n_seeds: int = 1) -> Kernels:
    """Kernels at initialisation of ``n_seeds`` independent networks (leading axis: seed).

    Seed s uses ``jax.random.split(key, n_seeds)[s]``; vmapped and jitted, no Python loop.
    """
    X = jnp.asarray(_checks.inputs(X, "X"))
    if X.shape[1] != net.D:
        raise ValueError(f"X must have D={net.D} columns for this network; got shape {X.shape}")
    n_seeds = _checks.positive_int(n_seeds, "n_seeds")
    keys = jax.random.split(key, n_seeds)
    return jax.jit(jax.vmap(lambda k: kernels(net, init_params(net, k), X)))(keys)


class Trajectory(NamedTuple):
    """Training records of an ensemble of networks (leading axis: seed).

    ``loss`` (S, T+1), ``delta`` (S, T+1, P) with ``delta = y - f``; ``f_test`` (S, T+1, P_test)
    or None; kernels at the recorded ``times`` (n_rec,): ``ntk`` (S, n_rec, P, P),
    ``phi`` and ``g`` (S, depth, n_rec, P, P); ``params`` the final weights (leading axis S).
    """
    loss: jax.Array
    delta: jax.Array
    f_test: jax.Array | None
    times: np.ndarray
    ntk: jax.Array
    phi: jax.Array
    g: jax.Array
    params: list
    net: MLP


def train_mlp(X, y, *, depth, width, activation="relu", gamma0=1.0, eta, steps, key,
              parameterization="mup", n_seeds=1, record_every=None, X_test=None,
              center=False) -> Trajectory:
    """Train ``n_seeds`` independent MLPs by full-batch gradient descent and record their kernels.

    Args:
      X: inputs (P, D); y: targets (P,).
      depth, width, activation, gamma0, parameterization: the network (see the module docstring).
      eta: learning rate in DMFT units (the weights move with ``eta * ntk_scale``).
      steps: number of gradient steps T; records have T+1 entries, entry 0 at initialisation.
      key: PRNG key; seed s uses ``jax.random.split(key, n_seeds)[s]``.
      record_every: kernels are recorded every this many steps (must divide ``steps``);
        default ``steps`` (at initialisation and at the end only).
      X_test: optional test inputs (P_test, D) whose predictions are recorded at every step.
      center: train and record ``f(x; theta) - f(x; theta_0)``, the output minus its value at
        initialisation, so that ``delta[0] = y`` exactly as in the infinite-width theory (the
        gradients, hence the kernels, are unchanged).
    """
    X = jnp.asarray(_checks.inputs(X, "X"))
    y = jnp.asarray(_checks.targets(y, X.shape[0], "y"), X.dtype)
    net = make_mlp(X.shape[1], depth=depth, width=width, activation=activation,
                   parameterization=parameterization, gamma0=gamma0)
    eta = _checks.nonnegative(eta, "eta")
    steps = _checks.positive_int(steps, "steps")
    n_seeds = _checks.positive_int(n_seeds, "n_seeds")
    record_every = steps if record_every is None else _checks.positive_int(record_every,
                                                                           "record_every")
    if steps % record_every:
        raise ValueError(f"record_every must divide steps={steps}; got {record_every}")
    if X_test is not None:
        X_test = jnp.asarray(_checks.inputs(X_test, "X_test"), X.dtype)
        if X_test.shape[1] != X.shape[1]:
            raise ValueError(f"X_test must have D={X.shape[1]} columns like X; "
                             f"got shape {X_test.shape}")
    keys = jax.random.split(key, n_seeds)
    run = _trainer(net, steps, record_every, X_test is not None, bool(center))
    out = run(keys, X, y, X_test if X_test is not None else jnp.zeros((1, X.shape[1]), X.dtype),
              jnp.asarray(eta * scalings(net).ntk_scale, X.dtype))
    loss, delta, f_test, ntk, phi, g, params = out
    if not bool(jnp.all(jnp.isfinite(loss))):
        import warnings
        warnings.warn("training diverged (non-finite loss); lower eta "
                      f"(eta={eta}, parameterization={parameterization!r}, width={width})",
                      RuntimeWarning, stacklevel=2)
    times = np.arange(0, steps + 1, record_every)
    return Trajectory(loss, delta, f_test if X_test is not None else None, times, ntk,
                      phi, g, params, net)


_TRAINERS: dict = {}


def _trainer(net: MLP, steps: int, record_every: int, with_test: bool, center: bool):
    """A jitted, vmapped (over seeds) trainer; cached per static configuration.

    The learning rate is a traced argument, so sweeps over it reuse one compilation.
    """
    cache_key = (net, steps, record_every, with_test, center)
    if cache_key in _TRAINERS:
        return _TRAINERS[cache_key]
    n_chunks = steps // record_every

    def one_seed(key, X, y, X_test, lr):
        params = init_params(net, key)
        # centring subtracts the output at initialisation (the DMFT's f(0) = 0)
        f_init = apply(net, params, X)[:, 0] if center else jnp.zeros(X.shape[0], X.dtype)
        ft_init = apply(net, params, X_test)[:, 0] if center and with_test else 0.0

        def out(p, x, f0):
            return apply(net, p, x)[:, 0] - f0

        def loss_fn(p):
            f = out(p, X, f_init)
            return 0.5 * jnp.mean((f - y) ** 2), f

        def step(p, _):
            (loss, f), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
            ft = out(p, X_test, ft_init) if with_test else jnp.zeros((0,), X.dtype)
            p = jax.tree_util.tree_map(lambda w, dw: w - lr * dw, p, grads)
            return p, (loss, y - f, ft)

        def chunk(p, _):
            k = kernels(net, p, X)
            p, rec = jax.lax.scan(step, p, None, length=record_every)
            return p, (k, rec)

        params, (ks, (loss, delta, ft)) = jax.lax.scan(chunk, params, None, length=n_chunks)
        k_end = kernels(net, params, X)
        f_end = out(params, X, f_init)
        ft_end = out(params, X_test, ft_init) if with_test else jnp.zeros((0,), X.dtype)
        flat = lambda a: a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])
        loss = jnp.concatenate([flat(loss), (0.5 * jnp.mean((f_end - y) ** 2))[None]])
        delta = jnp.concatenate([flat(delta), (y - f_end)[None]])
        ft = jnp.concatenate([flat(ft), ft_end[None]])
        ntk = jnp.concatenate([ks.ntk, k_end.ntk[None]])
        phi = jnp.concatenate([ks.phi, k_end.phi[None]]).transpose(1, 0, 2, 3)
        g = jnp.concatenate([ks.g, k_end.g[None]]).transpose(1, 0, 2, 3)
        return loss, delta, ft, ntk, phi, g, params

    run = jax.jit(jax.vmap(one_seed, in_axes=(0, None, None, None, None)))
    _TRAINERS[cache_key] = run
    return run


# ----------------------------------------------------------------------------- coordinate check
class CoordCheck(NamedTuple):
    """Sizes of the pre-activations and of their change during the first steps, per width.

    ``h_size`` (n_widths, depth): root-mean-square of h^l at initialisation (over neurons,
    samples and seeds); ``dh_size`` (n_widths, steps, depth): RMS of h^l(t) - h^l(0) after
    t = 1..steps steps; ``df_size`` (n_widths, steps): RMS change of the output.
    """
    widths: np.ndarray
    h_size: np.ndarray
    dh_size: np.ndarray
    df_size: np.ndarray
    parameterization: str


def coord_check(X, y, *, widths, parameterization, depth=2, activation="relu", gamma0=1.0,
                eta, steps=3, key, n_seeds=4) -> CoordCheck:
    """Coordinate check (Yang & Hu 2021): how the size of each layer's update scales with width.

    Trains ``n_seeds`` networks per width for ``steps`` full-batch steps (learning rate
    ``eta * ntk_scale`` as in :func:`train_mlp`) and measures typical coordinate sizes. A
    parameterisation admits feature learning at infinite width when ``dh_size`` neither grows
    nor vanishes with the width: muP does this; the NTK parameterisation's updates vanish like
    N^-1/2 and the standard parameterisation's blow up.
    """
    X = jnp.asarray(_checks.inputs(X, "X"))
    y = jnp.asarray(_checks.targets(y, X.shape[0], "y"), X.dtype)
    widths = [_checks.positive_int(int(n), "widths") for n in np.atleast_1d(widths)]
    steps = _checks.positive_int(steps, "steps")
    n_seeds = _checks.positive_int(n_seeds, "n_seeds")
    eta = _checks.nonnegative(eta, "eta")
    h_size, dh_size, df_size = [], [], []
    for N in widths:
        net = make_mlp(X.shape[1], depth=depth, width=N, activation=activation,
                       parameterization=parameterization, gamma0=gamma0)
        lr = jnp.asarray(eta * scalings(net).ntk_scale, X.dtype)
        run = _coord_runner(net, steps)
        hs0, dhs, dfs = run(jax.random.split(key, n_seeds), X, y, lr)
        h_size.append(np.sqrt(np.mean(np.asarray(hs0), axis=0)))
        dh_size.append(np.sqrt(np.mean(np.asarray(dhs), axis=0)))
        df_size.append(np.sqrt(np.mean(np.asarray(dfs), axis=0)))
    return CoordCheck(np.asarray(widths), np.stack(h_size), np.stack(dh_size), np.stack(df_size),
                      parameterization)


_COORD: dict = {}


def _coord_runner(net: MLP, steps: int):
    if (net, steps) in _COORD:
        return _COORD[net, steps]

    def one_seed(key, X, y, lr):
        params = init_params(net, key)
        hs0, f0 = forward(net, params, X)

        def loss_fn(p):
            return 0.5 * jnp.mean((apply(net, p, X)[:, 0] - y) ** 2)

        def step(p, _):
            p = jax.tree_util.tree_map(lambda w, dw: w - lr * dw, p, jax.grad(loss_fn)(p))
            hs, f = forward(net, p, X)
            dh = jnp.stack([jnp.mean((h - h0) ** 2) for h, h0 in zip(hs, hs0)])
            return p, (dh, jnp.mean((f - f0) ** 2))

        _, (dh, df) = jax.lax.scan(step, params, None, length=steps)
        return jnp.stack([jnp.mean(h ** 2) for h in hs0]), dh, df

    run = jax.jit(jax.vmap(one_seed, in_axes=(0, None, None, None)))
    _COORD[net, steps] = run
    return run
