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

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks, _progress
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


# Every layer is unrolled into the compiled program (the layers have different shapes and
# their own weights), so compile time grows linearly with depth: ~40 s for a depth-64 trainer
# on one CPU core. Deeper requests are refused at once instead of compiling for minutes.
MAX_DEPTH = 64


def make_mlp(D, *, depth, width, activation="relu", parameterization="mup", gamma0=1.0,
             n_out=1) -> MLP:
    """Validated :class:`MLP` (every argument checked; errors name the argument)."""
    net = MLP(D=_checks.positive_int(D, "D"),
              **_net_args(depth, width, activation, parameterization, gamma0),
              n_out=_checks.positive_int(n_out, "n_out"))
    return _finite_table(net, _scalings)


def _net_args(depth, width, activation, parameterization, gamma0) -> dict:
    """The arguments an MLP and a CNN share, checked (errors name the argument)."""
    depth = _checks.positive_int(depth, "depth")
    if depth > MAX_DEPTH:
        raise ValueError(f"depth must be <= {MAX_DEPTH}; got {depth}: every layer is unrolled into "
                         f"the compiled program, so compile time grows with depth (~40 s at depth "
                         f"{MAX_DEPTH} on a CPU)")
    return dict(depth=depth, width=_checks.positive_int(width, "width"),
                activation=_checks.choice(activation, "activation", ACTIVATIONS),
                parameterization=_checks.choice(parameterization, "parameterization",
                                                PARAMETERIZATIONS),
                gamma0=_checks.nonnegative(gamma0, "gamma0", strict=True))


def _finite_table(net, scalings):
    """``net``, after checking that its multipliers and learning-rate scale are finite."""
    try:
        sc = scalings(net)
        ok = all(np.isfinite(v) and v > 0 for v in sc.multiplier + (sc.ntk_scale,))
    except (OverflowError, ZeroDivisionError):
        ok = False
    if not ok:
        raise ValueError(f"gamma0={net.gamma0!r} is too extreme for width {net.width}: the readout "
                         f"multiplier or the learning-rate scale (gamma0^2 N) over- or underflows "
                         f"float64")
    return net


def _net(net, argname: str = "net") -> MLP:
    """``net`` re-validated (an :class:`MLP` built by hand bypasses :func:`make_mlp`)."""
    if not isinstance(net, MLP):
        raise ValueError(f"{argname} must be an MLP (from widenets.nets.make_mlp); "
                         f"got {type(net).__name__}")
    return make_mlp(net.D, depth=net.depth, width=net.width, activation=net.activation,
                    parameterization=net.parameterization, gamma0=net.gamma0, n_out=net.n_out)


def param_shapes(net: MLP) -> list:
    """Shapes of the weights: ``[(N, D)] + [(N, N)] * (L - 1) + [(N, n_out)]``."""
    net = _net(net)
    return _param_shapes(net)


def _param_shapes(net: MLP) -> list:
    return [(net.width, net.D)] + [(net.width, net.width)] * (net.depth - 1) + \
           [(net.width, net.n_out)]


def n_params(net: MLP) -> int:
    """Number of trainable weights of ``net`` (a Python int: no overflow at any width)."""
    return sum(a * b for a, b in _param_shapes(_net(net)))


def _itemsize() -> int:
    return 8 if _checks._x64() else 4


def _params(net, params, argname: str = "params") -> list:
    """The weights of ``net`` (an MLP or a CNN): a list of arrays of :func:`param_shapes` (or
    :func:`cnn_param_shapes`), finite when concrete."""
    shapes = _cnn_param_shapes(net) if isinstance(net, CNN) else _param_shapes(net)
    if not isinstance(params, (list, tuple)):
        raise ValueError(f"{argname} must be the list of {len(shapes)} weight arrays of this "
                         f"network (from init_params); got {type(params).__name__}")
    if len(params) != len(shapes):
        raise ValueError(f"{argname} must hold {len(shapes)} weight arrays for depth "
                         f"{net.depth}; got {len(params)}")
    out = []
    for l, (p, shp) in enumerate(zip(params, shapes)):
        name = f"{argname}[{l}]"
        if not isinstance(p, jax.Array):
            p = jnp.asarray(_checks.real_array(p, name))
        elif not jnp.issubdtype(p.dtype, jnp.floating):
            raise ValueError(f"{name} must be an array of real numbers; got dtype {p.dtype}")
        if tuple(p.shape) != shp:
            hint = (" (a leading seed axis? pass one seed's weights, e.g. "
                    "[w[s] for w in traj.params])" if tuple(p.shape[1:]) == shp else "")
            raise ValueError(f"{name} must have shape {shp} for this network; got "
                             f"{tuple(p.shape)}{hint}")
        # (on the host: an eager jnp.isfinite compiles two programs per new weight shape)
        if not _checks.is_traced(p) and not np.all(np.isfinite(np.asarray(p))):
            raise ValueError(f"{name} contains NaN or infinite entries (weights of a diverged run?)")
        out.append(p)
    return out


def _inputs_for(net: MLP, X, argname: str = "X"):
    """Inputs (P, D) with the network's D columns; finite (unless traced)."""
    if _checks.is_traced(X):
        if X.ndim != 2 or X.shape[0] < 1:
            raise ValueError(f"{argname} must have shape (P, D) with P >= 1; got shape {X.shape}")
    else:
        X = jnp.asarray(_checks.inputs(X, argname))
    if X.shape[1] != net.D:
        raise ValueError(f"{argname} must have D={net.D} columns for this network; "
                         f"got shape {tuple(X.shape)}")
    return X


def _finite_or_warn(out, name: str, net, X):
    """``out``, after a RuntimeWarning naming the likely cause if a concrete result holds NaN or
    infinite values (the inputs and weights were checked finite, so something overflowed)."""
    leaves = jax.tree_util.tree_leaves(out)
    if any(_checks.is_traced(a) for a in leaves) or _checks.is_traced(X):
        return out
    if all(np.all(np.isfinite(np.asarray(a))) for a in leaves):   # (on the host: no compilation)
        return out
    import warnings
    warnings.warn(f"{name}: the result holds NaN or infinite values: {np.dtype(X.dtype).name} "
                  f"overflowed (largest input |x| = {float(jnp.max(jnp.abs(X))):.3g}, gamma0="
                  f"{net.gamma0:g}, readout multiplier {_any_scalings(net).multiplier[-1]:.3g}); "
                  f"rescale the inputs (e.g. wn.data.normalize), increase gamma0 or enable float64",
                  RuntimeWarning, stacklevel=3)
    return out


def _any_scalings(net) -> Scalings:
    return _cnn_scalings(net) if isinstance(net, CNN) else _scalings(net)


def _forward_bytes(net: MLP, P: int) -> int:
    """Activations of a forward and backward pass on P inputs (the weights already exist)."""
    return _itemsize() * (6 * P * net.width * net.depth + 2 * P * net.n_out)


def _kernels_bytes(net: MLP, P: int) -> int:
    """:func:`kernels` on P inputs: activations, their derivatives and the (2L + 2) Gram matrices."""
    return _itemsize() * (8 * P * net.width * net.depth + (2 * net.depth + 3) * P * P)


class Scalings(NamedTuple):
    """Per-layer constants of a parameterisation (layers l = 0..L, the last is the readout)."""
    fan_in: tuple
    multiplier: tuple
    init_std: tuple
    ntk_scale: float   # learning rate = eta * ntk_scale; ntk = ntk_scale * grad f . grad f'


def scalings(net: MLP) -> Scalings:
    """The multipliers, initial standard deviations and learning-rate scale of ``net``."""
    return _scalings(_net(net))


def _scalings(net: MLP) -> Scalings:
    return _table(net.parameterization, (net.D,) + (net.width,) * net.depth, net.width,
                  net.gamma0)


# The compiled programs (trainers, coordinate checks, initial kernels) take the multipliers, the
# initial standard deviations and the learning-rate scale as arguments instead of constants, so
# that networks that differ only in their parameterisation or gamma0 share one compilation (a
# sweep over gamma0 compiles once, not once per value). Compiling costs ~1 s per program on a
# CPU, often more than running it.
def _scalings_args(sc: Scalings, dtype) -> tuple:
    """``sc``'s numbers as arrays of ``dtype``: the arguments of a compiled program."""
    return (jnp.asarray(sc.multiplier, dtype), jnp.asarray(sc.init_std, dtype),
            jnp.asarray(sc.ntk_scale, dtype))


def _scalings_from(fan_in: tuple, args) -> Scalings:
    """The :class:`Scalings` (of traced numbers) that :func:`_scalings_args` passed in."""
    mult, std, ntk_scale = args
    n = len(fan_in)
    return Scalings(fan_in, tuple(mult[i] for i in range(n)), tuple(std[i] for i in range(n)),
                    ntk_scale)


def _program_net(net):
    """The part of an MLP or CNN that a compiled program depends on (its shapes and
    activation): the parameterisation and gamma0 enter through :func:`_scalings_args`."""
    return net._replace(parameterization="mup", gamma0=1.0)


def _table(parameterization: str, fan_in: tuple, N: int, g0: float) -> Scalings:
    """The multiplier table of the module docstring for layers of fan-ins ``fan_in`` (the last
    entry the readout's, N); shared by the MLP and the CNN (whose convolutions have fan-in
    k^2 C)."""
    L = len(fan_in) - 1
    p = parameterization
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
    return Scalings(tuple(fan_in), tuple(float(m) for m in mult), tuple(float(s) for s in std),
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
    depth = max(_checks.positive_int(depth, "depth", maximum=MAX_DEPTH), 2)
    D = _checks.positive_int(D, "D")
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


def _weights_argname(net: MLP) -> str:
    """The argument that sets the number of weights: the width, or the input dimension D when
    the first layer's D x N weights are most of them."""
    if net.D * net.width > n_params(net) / 2 and net.D > net.width:
        return f"the input dimension D={net.D} (columns of X) or width"
    return "width"


def init_params(net: MLP, key, n_seeds: int | None = None) -> list:
    """Independent Gaussian weights for every layer (one key per layer, never reused).

    ``key``: a JAX PRNG key or an integer seed. With ``n_seeds``, the initial weights of an
    ensemble instead, each array with a leading seed axis: seed s is
    ``init_params(net, jax.random.split(key, n_seeds)[s])``, the network that seed s of
    :func:`train_mlp` and :func:`init_kernels` starts from (drawn by the same compiled program,
    one per network shape). A request that cannot fit in memory is refused before anything is
    allocated.
    """
    net = _net(net)
    key = _checks.prng_key(key, "key")
    if n_seeds is None:
        _checks.fits(2 * n_params(net) * _itemsize(), _weights_argname(net),
                     f"the {n_params(net):,} weights of a width-{net.width}, depth-{net.depth} "
                     f"network")
        return _init_params(net, key)
    n_seeds = _checks.positive_int(n_seeds, "n_seeds")
    _checks.fits(2 * n_seeds * n_params(net) * _itemsize(), _weights_argname(net) + " or n_seeds",
                 f"the weights of {n_seeds} width-{net.width}, depth-{net.depth} networks")
    unit = _unit_normals(_param_shapes(net), jax.random.split(key, n_seeds))
    return [w if s == 1.0 else s * w for s, w in zip(_scalings(net).init_std, unit)]


def _gaussian_layers(shapes, init_std, key) -> list:
    """One N(0, init_std^2) array per layer, one key each (float64 when x64 is enabled)."""
    keys = jax.random.split(key, len(shapes))
    dtype = jnp.zeros(()).dtype
    return [s * jax.random.normal(k, shp, dtype) for k, shp, s in zip(keys, shapes, init_std)]


def _init_params(net: MLP, key) -> list:
    return _gaussian_layers(_param_shapes(net), _scalings(net).init_std, key)


_NORMALS: dict = {}


def _unit_normals(shapes, keys) -> list:
    """``_gaussian_layers(shapes, 1, k)`` for every key k of ``keys`` (S, 2): arrays (S, *shape).

    Drawing weights (threefry) compiles for ~0.3 s per layer shape on a CPU, often more than
    running it, so the programs are shared as widely as the numbers allow: the seeds are drawn
    in blocks of :data:`_SEED_BLOCK` (the rest one by one), by one program per block size that
    splits each seed's key into its layers' keys (as :func:`_gaussian_layers` does) and one
    per block size and layer *shape* that draws the normals, the blocks then concatenated. So
    every parameterisation, gamma0, training setting, number of seeds, depth and readout width
    shares them (a 1-logit and a 10-logit net of one width share their hidden layers), and an
    ensemble of thousands of seeds costs a few hundred calls, not thousands. On a CPU, blocks
    of small layers are compiled at LLVM's optimisation level 1 (half the compile time, the
    same numbers, ~20% slower to run: a loss only where drawing is slower than compiling).
    A network's weights are these times its init stds (the same numbers as
    :func:`_init_params`).
    """
    shapes = tuple(tuple(int(n) for n in shp) for shp in shapes)
    dtype = jnp.zeros(()).dtype
    n, S = len(shapes), int(keys.shape[0])
    cpu = jax.default_backend() == "cpu"
    parts: list = [[] for _ in shapes]
    i = 0
    while i < S:
        c = _SEED_BLOCK if S - i >= _SEED_BLOCK else 1
        if ("split", n, c) not in _NORMALS:
            _NORMALS["split", n, c] = jax.jit(jax.vmap(lambda k: jax.random.split(k, n)))
        layer_keys = _NORMALS["split", n, c](keys[i:i + c])           # (c, n, 2)
        for l, shp in enumerate(shapes):
            if (shp, c, dtype) not in _NORMALS:
                small = cpu and c * math.prod(shp) <= 2 ** 20
                _NORMALS[shp, c, dtype] = jax.jit(
                    lambda ks, shp=shp: jax.lax.map(lambda k: jax.random.normal(k, shp, dtype), ks),
                    compiler_options={"xla_backend_optimization_level": 1} if small else None)
            parts[l].append(_NORMALS[shp, c, dtype](layer_keys[:, l]))
        i += c
    if all(len(p) == 1 for p in parts):
        return [p[0] for p in parts]
    # joined on the host: an eager concatenate would compile a program per number of blocks
    return [jnp.asarray(np.concatenate([np.asarray(a) for a in p])) for p in parts]


_SEED_BLOCK = 16     # seeds per call of the drawing programs (the rest of S one by one)


def _scaled(sc: Scalings, unit: list) -> list:
    """Weights from unit normals: layer l times its init std."""
    return [s * w for s, w in zip(sc.init_std, unit)]


def forward(net: MLP, params, X, eps=None):
    """Pre-activations and output: ``(hs, f)`` with ``hs[l-1] = h^l`` of shape (P, N), ``f`` (P, n_out).

    ``eps`` (optional list of (P, N) arrays) is added to each h^l; differentiating the output
    with respect to it gives the per-sample derivatives df/dh^l. ``X`` must have the network's
    D columns and finite entries; ``params`` the shapes of :func:`param_shapes`.
    """
    net = _net(net)
    params = _params(net, params)
    X = _inputs_for(net, X)
    if eps is not None:
        if not isinstance(eps, (list, tuple)) or len(eps) != net.depth:
            raise ValueError(f"eps must be a list of {net.depth} arrays of shape "
                             f"({X.shape[0]}, {net.width}); got {type(eps).__name__}")
        for l, e in enumerate(eps):
            if tuple(jnp.shape(e)) != (X.shape[0], net.width):
                raise ValueError(f"eps[{l}] must have shape ({X.shape[0]}, {net.width}); "
                                 f"got {tuple(jnp.shape(e))}")
    _checks.fits(_forward_bytes(net, X.shape[0]), "the number of rows of X",
                 f"a forward pass on {X.shape[0]} inputs at width {net.width}")
    return _finite_or_warn(_forward(net, params, X, eps), "forward", net, X)


def _dense(a, W):
    """``a @ W.T`` for activations ``a`` (P, fan_in) and weights ``W`` (N, fan_in).

    XLA's CPU runtime (jax 0.5) multiplies a skinny matrix by a transposed large one ~10x more
    slowly than the large one by the skinny one (width 1024, P = 32: 7.5 ms against 0.6 ms), and
    it rewrites ``(W @ a.T).T`` back into the slow form. The optimization barrier keeps the
    product as ``W @ a.T`` and transposes its small (N, P) result instead; the backward pass's
    products (``dh @ W``, ``dh.T @ a``) are already of the fast kind. This made a width-1024
    training step 4-5x faster; at small widths it makes no difference.

    ``W`` may also be a triple ``(W0, A, B)``, the matrix ``W0 + A.T @ B`` kept in low-rank
    form (see :func:`_lowrank_trainer`): then ``a @ W0.T + (a @ B.T) @ A``.
    """
    if isinstance(W, tuple):
        W0, A, B = W
        return _dense(a, W0) + (a @ B.T) @ A
    return jax.lax.optimization_barrier(W @ a.T).T


def _forward(net: MLP, params, X, eps=None, sc=None):
    sc = _scalings(net) if sc is None else sc
    phi = activation_fn(net.activation)
    h = sc.multiplier[0] * _dense(X, params[0])
    hs = []
    for l in range(net.depth):
        if eps is not None:
            h = h + eps[l]
        hs.append(h)
        a = phi(h)
        if l < net.depth - 1:
            h = sc.multiplier[l + 1] * _dense(a, params[l + 1])
    f = sc.multiplier[-1] * phi(hs[-1]) @ params[-1]
    return hs, f


def apply(net: MLP, params, X):
    """Network output ``f`` of shape (P, n_out) (inputs checked as in :func:`forward`)."""
    return forward(net, params, X)[1]


def _apply(net: MLP, params, X, sc=None):
    return _forward(net, params, X, sc=sc)[1]


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
    net = _net(net)
    if net.n_out != 1:
        raise ValueError(f"kernels needs a scalar-output network (n_out=1); got n_out={net.n_out}")
    params = _params(net, params)
    X = _inputs_for(net, X)
    _checks.fits(_kernels_bytes(net, X.shape[0]), "the number of rows of X",
                 f"the kernels of {X.shape[0]} inputs at width {net.width}")
    return _finite_or_warn(_kernels(net, params, X), "kernels", net, X)


def _kernels(net: MLP, params, X, sc=None) -> Kernels:
    sc = _scalings(net) if sc is None else sc
    phi_fn = activation_fn(net.activation)
    P, N = X.shape[0], net.width
    zeros = [jnp.zeros((P, N), X.dtype) for _ in range(net.depth)]

    def out(eps):
        hs, f = _forward(net, params, X, eps, sc)
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
    net = _net(net)
    params = _params(net, params)
    X = _inputs_for(net, X)
    X2 = X if X2 is None else _inputs_for(net, X2, "X2")
    _checks.fits(_jacobian_ntk_bytes(net, X.shape[0], X2.shape[0]),
                 "the number of rows of X / X2, or width",
                 f"Jacobians of {X.shape[0]} + {X2.shape[0]} inputs x {net.n_out} outputs x "
                 f"{n_params(net):,} weights")
    sc = _scalings(net)
    flat = lambda J: jnp.concatenate([j.reshape(j.shape[:2] + (-1,)) for j in J], axis=-1)
    J1 = flat(jax.jacrev(lambda p: _apply(net, p, X))(params))    # (P, O, n_params)
    J2 = flat(jax.jacrev(lambda p: _apply(net, p, X2))(params))
    K = sc.ntk_scale * jnp.einsum("aip,bjp->abij", J1, J2)
    return _finite_or_warn(K[:, :, 0, 0] if net.n_out == 1 else K, "empirical_ntk", net, X)


def _jacobian_ntk_bytes(net: MLP, P: int, P2: int) -> int:
    """Memory of an explicit-Jacobian NTK: Jacobians (P + P2) x n_out x n_params (held twice
    while they are built) and the (P, P2, n_out, n_out) kernel."""
    return _itemsize() * (2 * (P + P2) * net.n_out * n_params(net)
                          + P * P2 * net.n_out ** 2 + _forward_bytes(net, P + P2) // 4)


SEED_CHUNK = 4096   # ensembles larger than this run in chunks of seeds, with progress


def _by_seed_chunks(keys, call, label: str):
    """``call(keys)`` (a pytree of arrays with a leading seed axis, one per key): at once for
    up to :data:`SEED_CHUNK` seeds; beyond, chunk by chunk (the same networks: seed s depends
    on ``keys[s]`` only), showing progress, the results concatenated on the host."""
    n = keys.shape[0]
    if n <= SEED_CHUNK:
        return call(keys)
    typed = jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
    host = keys if typed else np.asarray(keys)     # (raw keys sliced on the host)
    chunks = [host[i:i + SEED_CHUNK] for i in range(0, n, SEED_CHUNK)]
    outs = [jax.tree_util.tree_map(np.asarray, jax.block_until_ready(call(
                k if typed else jnp.asarray(k))))
            for k in _progress.track(chunks, n, label, size=len)]
    return jax.tree_util.tree_map(lambda *xs: jnp.asarray(np.concatenate(xs)), *outs)


def init_kernels(net: MLP, X, key, n_seeds: int = 1) -> Kernels:
    """Kernels at initialisation of ``n_seeds`` independent networks (leading axis: seed).

    Seed s uses ``jax.random.split(key, n_seeds)[s]``; vmapped and jitted, no Python loop.
    """
    net = _net(net)
    X = _inputs_for(net, X)
    n_seeds = _checks.positive_int(n_seeds, "n_seeds")
    key = _checks.prng_key(key, "key")
    if net.n_out != 1:
        raise ValueError(f"init_kernels needs a scalar-output network (n_out=1); got n_out={net.n_out}")
    per_seed = 2 * n_params(net) * _itemsize() + _kernels_bytes(net, X.shape[0])
    _checks.fits(n_seeds * per_seed, "n_seeds" if n_seeds > 1 else "width",
                 f"the kernels of {n_seeds} networks of width {net.width} (all seeds at once)")
    _check_scales(net, X, 0.0, center=False)
    keys = jax.random.split(key, n_seeds)
    prog = _program_net(net)
    if prog not in _INIT_KERNELS:      # one compilation per network shape (and input shape)
        fan_in = _scalings(prog).fan_in

        def one(unit, x, sca):
            sc = _scalings_from(fan_in, sca)
            return _kernels(prog, _scaled(sc, unit), x, sc)

        _INIT_KERNELS[prog] = jax.jit(jax.vmap(one, in_axes=(0, None, None)))
    sca = _scalings_args(_scalings(net), X.dtype)
    out = _by_seed_chunks(keys, lambda k: _INIT_KERNELS[prog](
        _unit_normals(_param_shapes(net), k), X, sca), "init_kernels")
    return _finite_or_warn(out, "init_kernels", net, X)


_INIT_KERNELS: dict = {}


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


def _run_args(eta, steps, n_seeds, record_every, center, key):
    """The training arguments shared by :func:`train_mlp` and :func:`train_cnn`, validated."""
    eta = _checks.nonnegative(eta, "eta")
    steps = _checks.positive_int(steps, "steps")
    n_seeds = _checks.positive_int(n_seeds, "n_seeds")
    record_every = steps if record_every is None else _checks.positive_int(record_every,
                                                                           "record_every")
    if steps % record_every:
        raise ValueError(f"record_every must divide steps={steps}; got {record_every}")
    return eta, steps, n_seeds, record_every, _checks.flag(center, "center"), \
        _checks.prng_key(key, "key")


def train_mlp(X, y, *, depth, width, activation="relu", gamma0=1.0, eta, steps, key,
              parameterization="mup", n_seeds=1, record_every=None, X_test=None,
              center=False, lowrank=False) -> Trajectory:
    """Train ``n_seeds`` independent MLPs by full-batch gradient descent and record their kernels.

    Args:
      X: inputs (P, D); y: targets (P,).
      depth, width, activation, gamma0, parameterization: the network (see the module docstring).
      eta: learning rate in DMFT units (the weights move with ``eta * ntk_scale``).
      steps: number of gradient steps T; records have T+1 entries, entry 0 at initialisation.
      key: PRNG key (or an integer seed); seed s uses ``jax.random.split(key, n_seeds)[s]``.
      record_every: kernels are recorded every this many steps (must divide ``steps``);
        default ``steps`` (at initialisation and at the end only).
      X_test: optional test inputs (P_test, D) whose predictions are recorded at every step.
      center: train and record ``f(x; theta) - f(x; theta_0)``, the output minus its value at
        initialisation, so that ``delta[0] = y`` exactly as in the infinite-width theory (the
        gradients, hence the kernels, are unchanged).
      lowrank: keep every hidden weight matrix as its initial value plus the rank-P updates of
        the steps taken, and train the seeds one after another (:func:`_lowrank_trainer`): the
        same network and numbers (to round-off), for wide networks trained for few steps on
        few examples (steps * P well below the width), whose initial matrices are then read
        from cache instead of rewritten at every step (depth 4, width 500, P = 1, 30 steps:
        4x faster).

    A request whose memory (weights and activations of all seeds at once, the recorded kernels,
    the per-step records) cannot fit is refused before anything is allocated, and so is a
    ``gamma0`` or input scale whose output or learning rate must overflow the floating-point
    type. A run that still produces non-finite values warns (``RuntimeWarning``) with the cause.
    """
    X = jnp.asarray(_checks.inputs(X, "X"))
    y = jnp.asarray(_checks.targets(y, X.shape[0], "y"), X.dtype)
    net = make_mlp(X.shape[1], depth=depth, width=width, activation=activation,
                   parameterization=parameterization, gamma0=gamma0)
    eta, steps, n_seeds, record_every, center, key = _run_args(eta, steps, n_seeds, record_every,
                                                              center, key)
    if X_test is not None:
        X_test = jnp.asarray(_checks.inputs(X_test, "X_test"), X.dtype)
        if X_test.shape[1] != X.shape[1]:
            raise ValueError(f"X_test must have D={X.shape[1]} columns like X; "
                             f"got shape {X_test.shape}")
    P_test = 0 if X_test is None else X_test.shape[0]
    _checks.fits(*_train_bytes(net, X.shape[0], P_test, steps=steps, record_every=record_every,
                              n_seeds=n_seeds))
    _check_scales(net, X, eta, center)
    keys = jax.random.split(key, n_seeds)
    trainer = _lowrank_trainer if _checks.flag(lowrank, "lowrank") else _trainer
    run = trainer(_program_net(net), steps, record_every, X_test is not None, center)
    args = (X, y, X_test if X_test is not None else jnp.zeros((1, X.shape[1]), X.dtype),
            jnp.asarray(eta * _scalings(net).ntk_scale, X.dtype),
            _scalings_args(_scalings(net), X.dtype))
    with np.errstate(over="ignore", invalid="ignore"), _progress.reporting("train_mlp"):
        out = jax.block_until_ready(_by_seed_chunks(
            keys, lambda k: run(_unit_normals(_param_shapes(net), k), *args), "train_mlp"))
    loss, delta, f_test, ntk, phi, g, params = out
    times = np.arange(0, steps + 1, record_every)
    _warn_if_grew("train_mlp", net, loss, ntk, eta)
    _warn_if_not_finite(net, X, eta, loss, delta, f_test if X_test is not None else None,
                        ntk, phi, g, times)
    return Trajectory(loss, delta, f_test if X_test is not None else None, times, ntk,
                      phi, g, params, net)


def _train_bytes(net: MLP, P: int, P_test: int = 0, *, steps: int, record_every: int,
                n_seeds: int = 1):
    """Estimated memory of :func:`train_mlp` as ``(bytes, argument to reduce, description)``.

    Per seed (all seeds are vmapped, so they live at once): the weights four times (initial,
    current, gradient, update), the activations of the forward and backward passes and of the
    kernel computation, the recorded kernels ``(steps / record_every + 1) (2 L + 1) P^2`` (twice:
    the scan's stack and the concatenated copy) and the per-step records ``(steps + 1)
    (1 + P + P_test)`` (three times).
    """
    L, N = net.depth, net.width
    n_rec = steps // record_every + 1
    terms = {
        _weights_argname(net): 4 * n_params(net) + 8 * (P + P_test) * N * L,
        "record_every (record the kernels less often) or the number of rows of X":
            2 * n_rec * (2 * L + 1) * P * P,
        "steps": 3 * (steps + 1) * (1 + P + P_test),
    }
    total = n_seeds * _itemsize() * sum(terms.values())
    blame = max(terms, key=terms.get)
    if n_seeds > 1:
        blame += " or n_seeds"
    return (total, blame, f"training {n_seeds} network(s) of width {N} and depth {L} for "
                          f"{steps} steps on {P} inputs")


def _output_scale(net: MLP, X) -> float:
    """Typical |f(x)| at initialisation: readout multiplier x init std x sqrt(N) x the size of
    phi(h^L) (which grows with the inputs for the homogeneous relu and linear activations and
    stays below 1 for tanh and erf)."""
    sc = _scalings(net)
    x_rms = float(np.sqrt(np.mean(np.square(np.asarray(X, np.float64)))))
    act = x_rms if net.activation in ("relu", "linear") else min(x_rms, 1.0)
    return sc.multiplier[-1] * sc.init_std[-1] * np.sqrt(net.width) * act


def _check_scales(net: MLP, X, eta: float, center: bool) -> None:
    """Refuse a gamma0, eta or input scale whose arithmetic must overflow the float type."""
    dtype = np.dtype(X.dtype)
    fi = np.finfo(dtype)
    sc = _scalings(net)
    g0 = net.gamma0
    lr = eta * sc.ntk_scale
    what = {"mup": "gamma0^2 N", "ntk": "gamma0^2", "standard": "gamma0^2"}[net.parameterization]
    if lr > float(fi.max) / 16:
        raise ValueError(f"the weights' learning rate eta * {what} = {lr:.3g} overflows "
                         f"{dtype.name} (max {float(fi.max):.3g}): gamma0={g0:g} or eta={eta:g} "
                         f"is too large")
    if 0 < lr < float(fi.tiny) * 2 ** 10:
        raise ValueError(f"the weights' learning rate eta * {what} = {lr:.3g} underflows "
                         f"{dtype.name} (smallest normal {float(fi.tiny):.3g}): gamma0={g0:g} is "
                         f"too small for this precision (enable float64 or increase gamma0)")
    xmax = float(np.max(np.abs(np.asarray(X))))
    if xmax ** 2 * X.shape[1] > float(fi.max) / 16:
        raise ValueError(f"X is too large for {dtype.name}: its largest entry {xmax:.3g} makes "
                         f"the input kernel X X^T overflow; rescale the inputs "
                         f"(e.g. wn.data.normalize)")
    f_scale = _output_scale(net, X)
    limit = np.sqrt(float(fi.max) / 16) if not center else float(fi.max) / 16
    if f_scale > limit:
        raise ValueError(f"gamma0={g0:g} is too small for {dtype.name}: the output at "
                         f"initialisation, of size ~{f_scale:.3g} (readout multiplier "
                         f"{sc.multiplier[-1]:.3g}, input RMS "
                         f"{np.sqrt(np.mean(np.square(np.asarray(X, np.float64)))):.3g}), "
                         f"{'' if center else 'squared in the loss and the kernels, '}must overflow "
                         f"(max {float(fi.max):.3g}); increase gamma0 or enable float64")
    if f_scale * float(fi.eps) > 0.01:
        import warnings
        warnings.warn(f"gamma0={g0:g}: the output at initialisation, of size ~{f_scale:.3g}, is so "
                      f"large that {dtype.name} round-off of the output"
                      f"{' minus its initial value' if center else ''} (~{f_scale * float(fi.eps):.2g}) "
                      f"is comparable to targets of size 1; increase gamma0 or enable float64",
                      RuntimeWarning, stacklevel=3)


def _warn_if_grew(name: str, net, loss, ntk, eta: float) -> None:
    """A RuntimeWarning when a finite training loss diverged (grew by ``_checks.GROWTH``, or grew
    at all with eta above the stable rate of the first seed's recorded initial NTK); non-finite
    losses are reported by the callers, which know more about the cause."""
    loss = np.asarray(loss, np.float64)
    if not np.all(np.isfinite(loss)):
        return
    K0 = np.asarray(ntk[0, 0], np.float64)
    msg = _checks.divergence(loss.T, K0, eta, f"{name}: training",
                             f"the NTK grew during training (gamma0={net.gamma0:g}, "
                             f"{net.parameterization!r} parameterisation): lower eta or gamma0")
    if msg is not None:
        import warnings
        warnings.warn(f"{msg} (width {net.width}; the stable rate is that of the initial NTK"
                      f"{' on the probe images' if isinstance(net, CNN) else ''})",
                      RuntimeWarning, stacklevel=3)


def _not_eta_cause(net, X, y) -> str:
    """Why a loss is not finite at initialisation, before any step (eta is never the cause)."""
    y_max = float(np.max(np.abs(np.asarray(y, np.float64))))
    x = ("" if X is None else
         f", the inputs (largest |x| {float(np.max(np.abs(np.asarray(X, np.float64)))):.3g})")
    return (f"the loss is not finite already at initialisation, before any step, so eta is not "
            f"the cause: the targets (largest |y| {y_max:.3g}){x} or the output's scale "
            f"(gamma0={net.gamma0:g}, {net.parameterization!r} parameterisation, width "
            f"{net.width}) overflow; rescale them, increase gamma0 or enable float64")


def _warn_if_not_finite(net, X, eta, loss, delta, f_test, ntk, phi, g, times) -> None:
    """Warn, naming the actual cause, when a trajectory holds NaN or infinite values."""
    import warnings
    loss = np.asarray(loss)
    fields = {"loss": loss, "delta": delta, "f_test": f_test, "ntk": ntk, "phi": phi, "g": g}
    # (on the host: an eager jnp.isfinite compiles two programs per new array shape)
    bad = [k for k, v in fields.items()
           if v is not None and not np.all(np.isfinite(np.asarray(v)))]
    if not bad:
        return
    dtype = np.dtype(X.dtype).name
    g0 = net.gamma0
    finite_t = np.all(np.isfinite(loss), axis=0)
    if not np.all(finite_t):
        t_bad = int(np.argmin(finite_t))
        if t_bad == 0:
            cause = (f"the loss is not finite already at initialisation: the output, of size "
                     f"~{_output_scale(net, X):.3g} (gamma0={g0:g}, readout multiplier "
                     f"{_scalings(net).multiplier[-1]:.3g}), overflows {dtype}; eta is not the "
                     f"cause: increase gamma0, rescale the inputs or enable float64")
        else:
            K0 = np.asarray(ntk[:, 0], np.float64)
            K0 = K0[np.all(np.isfinite(K0), axis=(1, 2))]
            if len(K0):
                eta_max = min(_checks.stable_eta(k, X.shape[0]) for k in K0)
                lam = 2 * X.shape[0] / eta_max
                x_rms = float(np.sqrt(np.mean(np.square(np.asarray(X, np.float64)))))
                if eta > eta_max and x_rms > 10:
                    cause = (f"the inputs' scale (RMS {x_rms:.3g}; normalised inputs have RMS 1) "
                             f"makes the initial NTK large (lambda_max = {lam:.3g}), so eta={eta:g} "
                             f"is above its stable learning rate 2P/lambda_max = {eta_max:.3g}: "
                             f"rescale X (e.g. wn.data.normalize) or lower eta")
                elif eta > eta_max:
                    cause = (f"eta={eta:g} is above the stable learning rate 2P/lambda_max = "
                             f"{eta_max:.3g} of the initial NTK: lower eta")
                else:
                    cause = (f"eta={eta:g} is below the initial stable rate 2P/lambda_max = "
                             f"{eta_max:.3g}, so the NTK grew during training (feature learning "
                             f"at gamma0={g0:g}) or an intermediate value overflowed {dtype}: "
                             f"lower eta")
            else:
                cause = f"the initial NTK overflows {dtype}; lower eta or rescale the inputs"
        warnings.warn(f"training diverged (non-finite loss from step {t_bad}): {cause} "
                      f"(parameterization={net.parameterization!r}, width={net.width})",
                      RuntimeWarning, stacklevel=3)
    else:
        warnings.warn(f"the recorded {', '.join(bad)} hold NaN or infinite values although the "
                      f"loss is finite: the kernels overflow {dtype} (gamma0={g0:g}, input RMS "
                      f"{float(np.sqrt(np.mean(np.square(np.asarray(X, np.float64))))):.3g}); "
                      f"rescale the inputs or enable float64", RuntimeWarning, stacklevel=3)


_TRAINERS: dict = {}


def _trainer(net: MLP, steps: int, record_every: int, with_test: bool, center: bool):
    """A jitted, vmapped (over seeds) trainer; cached per static configuration.

    ``net`` is a :func:`_program_net`: the learning rate and the scalings (parameterisation,
    gamma0) are traced arguments, so sweeps over them reuse one compilation. The trainer takes
    the seeds' unit-normal weights (:func:`_unit_normals`; donated: they become the returned
    final weights' buffers).
    """
    cache_key = (net, steps, record_every, with_test, center)
    if cache_key in _TRAINERS:
        return _TRAINERS[cache_key]
    n_chunks = steps // record_every
    fan_in = _scalings(net).fan_in

    def one_seed(unit, X, y, X_test, lr, sca):
        sc = _scalings_from(fan_in, sca)
        params = _scaled(sc, unit)
        # centring subtracts the output at initialisation (the DMFT's f(0) = 0)
        f_init = _apply(net, params, X, sc)[:, 0] if center else jnp.zeros(X.shape[0], X.dtype)
        ft_init = _apply(net, params, X_test, sc)[:, 0] if center and with_test else 0.0

        def out(p, x, f0):
            return _apply(net, p, x, sc)[:, 0] - f0

        def loss_fn(p):
            f = out(p, X, f_init)
            return 0.5 * jnp.mean((f - y) ** 2), f

        def step(p, t):
            _progress.tick(t, steps)
            (loss, f), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
            ft = out(p, X_test, ft_init) if with_test else jnp.zeros((0,), X.dtype)
            p = jax.tree_util.tree_map(lambda w, dw: w - lr * dw, p, grads)
            return p, (loss, y - f, ft)

        def chunk(p, c):
            k = _kernels(net, p, X, sc)
            p, rec = jax.lax.scan(step, p, c * record_every + jnp.arange(record_every))
            return p, (k, rec)

        params, (ks, (loss, delta, ft)) = jax.lax.scan(chunk, params, jnp.arange(n_chunks))
        k_end = _kernels(net, params, X, sc)
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

    run = jax.jit(jax.vmap(one_seed, in_axes=(0, None, None, None, None, None)),
                  donate_argnums=0)
    _TRAINERS[cache_key] = run
    return run


def _lowrank_trainer(net: MLP, steps: int, record_every: int, with_test: bool, center: bool):
    """:func:`_trainer` (same arguments and records) with every hidden matrix kept as
    ``(W0, A, B)``, ``W(t) = W0 + A.T @ B`` (:func:`_dense`): a full-batch gradient step adds
    the rank-P update ``-lr m_l dL/dh^{l+1}.T phi(h^l)`` as P new rows of A and B (rows of
    later steps are zero), so W0 is never rewritten, and the seeds are trained one after
    another (``lax.map``, not ``vmap``), each seed's W0 staying in cache through its run. The
    input and readout layers are updated densely; the final weights are returned dense.
    Cheaper than :func:`_trainer` when steps * P is well below the width."""
    cache_key = ("lowrank", net, steps, record_every, with_test, center)
    if cache_key in _TRAINERS:
        return _TRAINERS[cache_key]
    n_chunks = steps // record_every
    fan_in = _scalings(net).fan_in
    L, N = net.depth, net.width
    phi = activation_fn(net.activation)

    def one_seed(unit, X, y, X_test, lr, sca):
        sc = _scalings_from(fan_in, sca)
        dense = _scaled(sc, unit)
        P, dt = X.shape[0], X.dtype
        R = steps * P
        params = ([dense[0]] + [(W, jnp.zeros((R, N), dt), jnp.zeros((R, N), dt))
                                for W in dense[1:-1]] + [dense[-1]])
        f_init = _apply(net, params, X, sc)[:, 0] if center else jnp.zeros(P, dt)
        ft_init = _apply(net, params, X_test, sc)[:, 0] if center and with_test else 0.0

        def out(p, x, f0):
            return _apply(net, p, x, sc)[:, 0] - f0

        def step(carry, _):
            p, s = carry

            def loss_fn(eps, W_in, w_out):       # eps: perturbations of h^1..h^L
                hs, f = _forward(net, [W_in] + p[1:-1] + [w_out], X, eps, sc)
                f = f[:, 0] - f_init
                return 0.5 * jnp.mean((f - y) ** 2), (f, hs)

            eps = [jnp.zeros((P, N), dt) for _ in range(L)]
            (loss, (f, hs)), (dh, g_in, g_out) = jax.value_and_grad(
                loss_fn, argnums=(0, 1, 2), has_aux=True)(eps, p[0], p[-1])
            ft = out(p, X_test, ft_init) if with_test else jnp.zeros((0,), dt)
            hidden = []
            for l in range(1, L):                # dL/dW_l = m_l dL/dh^{l+1}.T phi(h^l)
                W0, A, B = p[l]
                A = jax.lax.dynamic_update_slice(A, -lr * sc.multiplier[l] * dh[l], (s * P, 0))
                B = jax.lax.dynamic_update_slice(B, phi(hs[l - 1]), (s * P, 0))
                hidden.append((W0, A, B))
            p = [p[0] - lr * g_in] + hidden + [p[-1] - lr * g_out]
            return (p, s + 1), (loss, y - f, ft)

        def chunk(carry, _):
            k = _kernels(net, carry[0], X, sc)
            carry, rec = jax.lax.scan(step, carry, None, length=record_every)
            return carry, (k, rec)

        (params, _), (ks, (loss, delta, ft)) = jax.lax.scan(chunk, (params, 0), None,
                                                            length=n_chunks)
        k_end = _kernels(net, params, X, sc)
        f_end = out(params, X, f_init)
        ft_end = out(params, X_test, ft_init) if with_test else jnp.zeros((0,), dt)
        flat = lambda a: a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])
        loss = jnp.concatenate([flat(loss), (0.5 * jnp.mean((f_end - y) ** 2))[None]])
        delta = jnp.concatenate([flat(delta), (y - f_end)[None]])
        ft = jnp.concatenate([flat(ft), ft_end[None]])
        ntk = jnp.concatenate([ks.ntk, k_end.ntk[None]])
        phi_k = jnp.concatenate([ks.phi, k_end.phi[None]]).transpose(1, 0, 2, 3)
        g = jnp.concatenate([ks.g, k_end.g[None]]).transpose(1, 0, 2, 3)
        final = [params[0]] + [W0 + A.T @ B for W0, A, B in params[1:-1]] + [params[-1]]
        return loss, delta, ft, ntk, phi_k, g, final

    def run(unit, X, y, X_test, lr, sca):
        return jax.lax.map(lambda u: one_seed(u, X, y, X_test, lr, sca), unit)

    run = jax.jit(run, donate_argnums=0)
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
    widths = _checks.int_list(widths, "widths")
    steps = _checks.positive_int(steps, "steps")
    n_seeds = _checks.positive_int(n_seeds, "n_seeds")
    eta = _checks.nonnegative(eta, "eta")
    key = _checks.prng_key(key, "key")
    nets_ = [make_mlp(X.shape[1], depth=depth, width=N, activation=activation,
                      parameterization=parameterization, gamma0=gamma0) for N in widths]
    P, L = X.shape[0], nets_[0].depth
    widest = max(nets_, key=lambda n: n.width)
    need = n_seeds * _itemsize() * (4 * n_params(widest) + 8 * P * widest.width * L
                                    + steps * (L + 1))
    _checks.fits(need, "widths (the largest)" + (" or n_seeds" if n_seeds > 1 else ""),
                 f"a coordinate check of {n_seeds} network(s) of width {widest.width}")
    for net in nets_:
        _check_scales(net, X, eta, center=False)
    h_size, dh_size, df_size = [], [], []
    for net in nets_:
        lr = jnp.asarray(eta * _scalings(net).ntk_scale, X.dtype)
        run = _coord_runner(net, steps)
        sca = _scalings_args(_scalings(net), X.dtype)
        with _progress.reporting(f"coord_check (width {net.width})"):
            hs0, dhs, dfs = jax.block_until_ready(_by_seed_chunks(
                jax.random.split(key, n_seeds),
                lambda k: run(_unit_normals(_param_shapes(net), k), X, y, lr, sca),
                f"coord_check (width {net.width})"))
        h_size.append(np.sqrt(np.mean(np.asarray(hs0), axis=0)))
        dh_size.append(np.sqrt(np.mean(np.asarray(dhs), axis=0)))
        df_size.append(np.sqrt(np.mean(np.asarray(dfs), axis=0)))
    return _coord_result(widths, h_size, dh_size, df_size, parameterization, X, eta,
                         "coord_check")


def _coord_result(widths, h_size, dh_size, df_size, parameterization, X, eta, name):
    """The :class:`CoordCheck`, after a RuntimeWarning naming the cause when a size is not
    finite (the updates diverged)."""
    out = CoordCheck(np.asarray(widths), np.stack(h_size), np.stack(dh_size), np.stack(df_size),
                     parameterization)
    if not all(np.all(np.isfinite(a)) for a in out[1:4]):
        import warnings
        x_rms = float(np.sqrt(np.mean(np.square(np.asarray(X, np.float64)))))
        cause = (f"the inputs' scale (RMS {x_rms:.3g}; normalised inputs have RMS 1) or eta={eta:g}"
                 if x_rms > 10 else f"eta={eta:g}")
        bad = [int(w) for w, a, b in zip(widths, dh_size, h_size)
               if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b)))]
        warnings.warn(f"{name}: non-finite coordinate sizes (the updates diverged): {cause} is "
                      f"too large for the {parameterization!r} parameterisation at width(s) {bad}",
                      RuntimeWarning, stacklevel=3)
    return out


_COORD: dict = {}


def _coord_runner(net, steps: int):
    """The jitted, seed-vmapped coordinate check of an MLP or a CNN (the same steps for both).

    Its arguments: per seed the unit-normal weights (:func:`_unit_normals`,
    :func:`_cnn_unit_normals`); the inputs, targets and learning rate; :func:`_scalings_args`.
    Cached per :func:`_program_net`, so the three parameterisations share one compilation per
    width."""
    net = _program_net(net)
    if (net, steps) in _COORD:
        return _COORD[net, steps]
    if isinstance(net, CNN):
        fan_in = _cnn_scalings(net).fan_in
        init = lambda unit, sc: _scaled(sc, unit)     # seed s of train_cnn
        forward = lambda p, X, sc: (lambda r: (r[0], r[2]))(_cnn_forward(net, p, X, sc))
        output = lambda p, X, sc: _cnn_apply(net, p, X, sc)
    else:
        fan_in = _scalings(net).fan_in
        init = lambda unit, sc: _scaled(sc, unit)
        forward = lambda p, X, sc: _forward(net, p, X, sc=sc)
        output = lambda p, X, sc: _apply(net, p, X, sc)[:, 0]

    def one_seed(unit, X, y, lr, sca):
        sc = _scalings_from(fan_in, sca)
        params = init(unit, sc)
        hs0, f0 = forward(params, X, sc)

        def loss_fn(p):
            return 0.5 * jnp.mean((output(p, X, sc) - y) ** 2)

        def step(p, t):
            _progress.tick(t, steps)
            p = jax.tree_util.tree_map(lambda w, dw: w - lr * dw, p, jax.grad(loss_fn)(p))
            hs, f = forward(p, X, sc)
            dh = jnp.stack([jnp.mean((h - h0) ** 2) for h, h0 in zip(hs, hs0)])
            return p, (dh, jnp.mean((f - f0) ** 2))

        _, (dh, df) = jax.lax.scan(step, params, jnp.arange(steps))
        return jnp.stack([jnp.mean(h ** 2) for h in hs0]), dh, df

    run = jax.jit(jax.vmap(one_seed, in_axes=(0, None, None, None, None)))
    _COORD[net, steps] = run
    return run


# ----------------------------------------------------------------------------- online SGD
class OnlineTrajectory(NamedTuple):
    """Records of ``n_seeds`` networks trained by online SGD on a linear teacher (leading axis:
    seed).

    ``error`` (S, T+1): the generalisation error E_x (f(x) - y(x))^2 over x ~ N(0, I_D) before
    step t (entry 0 at initialisation): exact, |beta - beta*|^2 / D, for a linear network;
    estimated on ``n_test`` fixed test inputs otherwise. ``beta`` (S, T+1, D): the linear
    network's weight vector, f(x) = beta . x / sqrt(D) (centred: beta - beta_0), or None for a
    nonlinear one. ``params`` the final weights (leading axis S).
    """
    error: jax.Array
    beta: jax.Array | None
    params: list
    net: MLP
    batch_size: int | None


def train_online(D, beta_star, *, depth, width, activation="linear", gamma0=1.0, eta, steps,
                 batch_size, key, n_seeds=1, parameterization="mup", center=True,
                 n_test=2048) -> OnlineTrajectory:
    """Train ``n_seeds`` MLPs by online SGD on the linear teacher y = beta* . x / sqrt(D).

    Every step draws a fresh batch of ``batch_size`` inputs x ~ N(0, I_D) and takes one
    gradient step on ``(1/2B) sum_b (f(x_b) - y_b)^2`` with the learning rate
    ``eta * ntk_scale`` (muP: ``eta * gamma0^2 * N``), as :func:`train_mlp` does on a fixed set.

    Args:
      D: input dimension; beta_star: the teacher (D,).
      depth, width, activation, gamma0, parameterization: the network (see :func:`make_mlp`).
      eta: learning rate in DMFT units. steps: number of SGD steps T (records have T+1 entries).
      batch_size: B >= 1 fresh examples per step, or None for the population gradient (the
        infinite-batch limit, exact for a linear network: its population loss is
        |beta - beta*|^2 / (2D); equivalently full-batch GD on the D inputs sqrt(D) e_mu).
      key: PRNG key or integer seed; seed s uses ``jax.random.split(key, n_seeds)[s]`` for its
        weights, its batches and its test inputs.
      center: train ``f(x; theta) - f(x; theta_0)`` (the infinite-width theory's f(0) = 0).
      n_test: test inputs per seed for the error of a nonlinear network (unused when linear).

    Time is a ``lax.scan`` and seeds are vmapped: no Python loop. A request that cannot fit
    in memory is refused before anything is allocated.
    """
    D = _checks.positive_int(D, "D")
    bs = _checks.real_array(beta_star, "beta_star")
    if bs.shape != (D,):
        raise ValueError(f"beta_star must have shape ({D},) (D={D}); got shape {bs.shape}")
    _checks.finite(bs, "beta_star")
    _checks.representable(bs, "beta_star", power=2)
    net = make_mlp(D, depth=depth, width=width, activation=activation,
                   parameterization=parameterization, gamma0=gamma0)
    eta = _checks.nonnegative(eta, "eta")
    steps = _checks.positive_int(steps, "steps")
    n_seeds = _checks.positive_int(n_seeds, "n_seeds")
    center = _checks.flag(center, "center")
    key = _checks.prng_key(key, "key")
    linear = net.activation == "linear"
    if batch_size is not None:
        batch_size = _checks.positive_int(batch_size, "batch_size")
    elif not linear:
        raise ValueError(f"batch_size must be an integer >= 1 for activation={activation!r}: the "
                         f"population gradient (batch_size=None) is only exact for linear networks")
    n_test = _checks.positive_int(n_test, "n_test")
    dtype = jnp.zeros(()).dtype
    # memory (all seeds at once): the weights (initial, current, gradient, update), the batch,
    # the activations of the D probe inputs (a linear network: f(x) = beta . x / sqrt(D), so
    # its batches never pass through the layers) or of a batch and the test set (nonlinear),
    # the records
    B = 0 if batch_size is None else batch_size
    terms = {"width": 4 * n_params(net) + 8 * net.width * net.depth,
             "batch_size": 8 * B * net.width * net.depth + 2 * B * D,
             "n_test": 0 if linear else n_test * (D + 8 * net.width * net.depth),
             "steps": 3 * (steps + 1) * (D + 1)}
    if linear:           # beta is read off by a backward pass: a few D-vectors per layer
        terms["width"] += 8 * D * net.depth
    largest = max(terms, key=terms.get)
    _checks.fits(n_seeds * _itemsize() * sum(terms.values()),
                 largest + (" or n_seeds" if n_seeds > 1 else ""),
                 f"online SGD of {n_seeds} network(s) of width {net.width} and depth "
                 f"{net.depth} on D={D} inputs for {steps} steps with batches of {B}")
    _check_scales(net, jnp.ones((1, D), dtype), eta, center)
    run = _online_trainer(_program_net(net), steps, batch_size, center, n_test)
    keys = jax.random.split(key, n_seeds)
    with np.errstate(over="ignore", invalid="ignore"), _progress.reporting("train_online"):
        args = (jnp.asarray(bs, dtype), jnp.asarray(eta * _scalings(net).ntk_scale, dtype),
                _scalings_args(_scalings(net), dtype))
        error, beta, params = jax.block_until_ready(
            _by_seed_chunks(keys, lambda k: run(k, *args), "train_online"))
    if not np.all(np.isfinite(np.asarray(error))):
        import warnings
        t_bad = int(np.argmin(np.all(np.isfinite(np.asarray(error)), axis=0)))
        cause = (_not_eta_cause(net, None, bs) if t_bad == 0 else
                 f"eta={eta:g} is probably above the stable learning rate (about D / (depth + 1) "
                 f"= {D / (net.depth + 1):.3g} at small gamma0 for a linear network) or "
                 f"gamma0={net.gamma0:g} too large for |beta*|; lower eta")
        warnings.warn(f"online SGD diverged (non-finite error from step {t_bad}): {cause}",
                      RuntimeWarning, stacklevel=2)
    return OnlineTrajectory(error, beta if linear else None, params, net, batch_size)


_ONLINE: dict = {}


def _online_trainer(net: MLP, steps: int, batch_size, center: bool, n_test: int):
    """A jitted, vmapped (over seeds) online-SGD trainer; cached per static configuration.

    ``net`` is a :func:`_program_net`: the scalings (parameterisation, gamma0) and the
    learning rate are traced arguments, so a sweep over gamma0 compiles once per width."""
    cache_key = (net, steps, batch_size, center, n_test)
    if cache_key in _ONLINE:
        return _ONLINE[cache_key]
    D, linear = net.D, net.activation == "linear"
    fan_in = _scalings(net).fan_in

    def one_seed(key, beta_star, lr, sca):
        sc = _scalings_from(fan_in, sca)
        k_init, k_data, k_test = jax.random.split(key, 3)
        params0 = _gaussian_layers(_param_shapes(net), sc.init_std, k_init)
        dtype = beta_star.dtype

        def beta_of(p):      # a linear network: f(x) = beta . x / sqrt(D), beta = sqrt(D) grad f
            # (one backward pass, O(D N) memory; evaluating f on the D inputs sqrt(D) e_mu
            # would hold a D x D matrix: 40 GB at D = 10^5)
            grad = jax.grad(lambda x: _apply(net, p, x[None, :], sc)[0, 0])(jnp.zeros(D, dtype))
            return jnp.sqrt(jnp.asarray(D, dtype)) * grad

        b0 = beta_of(params0) if center and linear else jnp.zeros(D, dtype)

        def out(p, X):       # the (centred) output on inputs X
            if linear:
                return X @ (beta_of(p) - b0) / jnp.sqrt(jnp.asarray(D, dtype))
            f = _apply(net, p, X, sc)[:, 0]
            return f - _apply(net, params0, X, sc)[:, 0] if center else f

        if batch_size is None:
            def loss(p, k):
                return 0.5 * jnp.sum((beta_of(p) - b0 - beta_star) ** 2) / D
        else:
            def loss(p, k):
                X = jax.random.normal(k, (batch_size, D), dtype)
                y = X @ beta_star / jnp.sqrt(jnp.asarray(D, dtype))
                return 0.5 * jnp.mean((out(p, X) - y) ** 2)

        if linear:
            def record(p):
                b = beta_of(p) - b0
                return jnp.sum((b - beta_star) ** 2) / D, b
        else:
            X_test = jax.random.normal(k_test, (n_test, D), dtype)
            y_test = X_test @ beta_star / jnp.sqrt(jnp.asarray(D, dtype))

            def record(p):
                return jnp.mean((out(p, X_test) - y_test) ** 2), jnp.zeros((0,), dtype)

        def step(p, tk):
            t, k = tk
            _progress.tick(t, steps)
            rec = record(p)
            grads = jax.grad(loss)(p, k)
            return jax.tree_util.tree_map(lambda w, dw: w - lr * dw, p, grads), rec

        params, (err, beta) = jax.lax.scan(step, params0, (jnp.arange(steps),
                                                           jax.random.split(k_data, steps)))
        err_end, beta_end = record(params)
        return (jnp.concatenate([err, err_end[None]]), jnp.concatenate([beta, beta_end[None]]),
                params)

    run = jax.jit(jax.vmap(one_seed, in_axes=(0, None, None, None)))
    _ONLINE[cache_key] = run
    return run


# ============================================================================= CNN
# Convolutional networks: ``depth`` 3x3 convolutions (SAME padding, stride 1), global average
# pooling over space, a linear readout; the same multiplier table as the MLP (:func:`_table`).
KERNEL_SIZE = 3


class CNN(NamedTuple):
    """A convolutional network on (H, W, C) images: ``depth`` 3x3 convolutions of ``width``
    channels, global average pooling, a scalar linear readout (see :func:`make_cnn`)."""
    H: int
    W: int
    C: int
    depth: int
    width: int
    activation: str = "relu"
    parameterization: str = "mup"
    gamma0: float = 1.0


def make_cnn(image_shape, *, depth, width, activation="relu", parameterization="mup",
             gamma0=1.0) -> CNN:
    """Validated :class:`CNN` for images of shape ``image_shape = (H, W, C)`` (channels last).

    The network, for ``"mup"`` (``*`` a 3x3 convolution, SAME padding, stride 1; k = 3)::

        h^1     = W^0 * x / sqrt(k^2 C)            W^0: (k, k, C, N)
        h^{l+1} = W^l * phi(h^l) / sqrt(k^2 N)     W^l: (k, k, N, N), l = 1..L-1
        f       = w . pool(phi(h^L)) / (gamma0 N)  w: (N,),  pool = mean over the H x W positions

    with weights N(0, 1) and the learning rate ``eta * gamma0^2 * N``, exactly as for the MLP:
    a convolution's fan-in is ``k^2 C`` (k^2 positions of the window times C input channels), and
    the multipliers, initial standard deviations and learning-rate scale of every
    parameterisation come from the MLP's table (module docstring) with these fan-ins (the
    readout's fan-in is N: pooling averages over positions, it adds no fan-in). Errors name the
    argument.
    """
    shp = image_shape
    if (not isinstance(shp, (tuple, list)) or len(shp) != 3
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
                   for v in shp)):
        raise ValueError(f"image_shape must be (H, W, C), three integers >= 1; got {shp!r}")
    net = CNN(H=int(shp[0]), W=int(shp[1]), C=int(shp[2]),
              **_net_args(depth, width, activation, parameterization, gamma0))
    return _finite_table(net, _cnn_scalings)


def _cnn(net, argname: str = "net") -> CNN:
    if not isinstance(net, CNN):
        raise ValueError(f"{argname} must be a CNN (from widenets.nets.make_cnn); "
                         f"got {type(net).__name__}")
    return make_cnn((net.H, net.W, net.C), depth=net.depth, width=net.width,
                    activation=net.activation, parameterization=net.parameterization,
                    gamma0=net.gamma0)


def cnn_scalings(net: CNN) -> Scalings:
    """Fan-ins ``(k^2 C, k^2 N, ..., k^2 N, N)``, multipliers, init stds and ``ntk_scale`` of a CNN."""
    return _cnn_scalings(_cnn(net))


def _cnn_scalings(net: CNN) -> Scalings:
    k2 = KERNEL_SIZE ** 2
    fan_in = (k2 * net.C,) + (k2 * net.width,) * (net.depth - 1) + (net.width,)
    return _table(net.parameterization, fan_in, net.width, net.gamma0)


def _cnn_param_shapes(net: CNN) -> list:
    k, N = KERNEL_SIZE, net.width
    return [(k, k, net.C, N)] + [(k, k, N, N)] * (net.depth - 1) + [(N,)]


def cnn_param_shapes(net: CNN) -> list:
    """Shapes of the weights: ``[(3, 3, C, N)] + [(3, 3, N, N)] * (L - 1) + [(N,)]`` (HWIO)."""
    return _cnn_param_shapes(_cnn(net))


def cnn_n_params(net: CNN) -> int:
    """Number of trainable weights of a CNN (a Python int)."""
    return sum(int(np.prod(s)) for s in _cnn_param_shapes(_cnn(net)))


def init_cnn_params(net: CNN, key) -> list:
    """Independent Gaussian weights (N(0, 1) times the table's init std), one key per layer."""
    net = _cnn(net)
    key = _checks.prng_key(key, "key")
    _checks.fits(2 * cnn_n_params(net) * _itemsize(), "width",
                 f"the {cnn_n_params(net):,} weights of a width-{net.width}, depth-{net.depth} CNN")
    return _cnn_init_params(net, key)


def _cnn_init_params(net: CNN, key) -> list:
    return _gaussian_layers(_cnn_param_shapes(net), _cnn_scalings(net).init_std, key)


def _conv(x, w):
    """3x3 convolution, SAME padding, stride 1 (x: NHWC, w: HWIO).

    On a CPU it is one matrix product of the k^2 shifted copies of x (im2col): XLA's CPU
    convolution inside a ``lax.scan`` ran 10-20x slower than outside it (jax 0.5.3: 113 ms
    against 16 ms per GD step at width 32 on 64 8x8 images, minutes at width 256); elsewhere
    ``lax.conv_general_dilated`` (cuDNN on a GPU). Both give the same function.
    """
    w = w.astype(x.dtype)
    if jax.default_backend() != "cpu":
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    k, H, W = w.shape[0], x.shape[1], x.shape[2]
    lo = (k - 1) // 2
    xp = jnp.pad(x, ((0, 0), (lo, k - 1 - lo), (lo, k - 1 - lo), (0, 0)))
    patches = jnp.concatenate([xp[:, i:i + H, j:j + W, :] for i in range(k) for j in range(k)],
                              axis=-1)
    # one 2-d product (P H W, k^2 C) x (k^2 C, N): the same numbers as the 4-d product, but XLA's
    # CPU runtime (jax 0.5.3) ran the 4-d one's gradient 3x more slowly (3.8 against 1.2 ms per
    # step at width 128 on 64 8x8 images)
    out = patches.reshape(-1, patches.shape[-1]) @ w.reshape(-1, w.shape[-1])
    return out.reshape(patches.shape[:3] + (w.shape[-1],))


def _cnn_forward(net: CNN, params, X, sc=None):
    """``(hs, features, f)``: pre-activations h^l (P, H, W, N), pooled last-layer features
    pool(phi(h^L)) (P, N) and the output f (P,)."""
    sc = _cnn_scalings(net) if sc is None else sc
    phi = activation_fn(net.activation)
    h = sc.multiplier[0] * _conv(X, params[0])
    hs = [h]
    for l in range(1, net.depth):
        h = sc.multiplier[l] * _conv(phi(h), params[l])
        hs.append(h)
    feats = jnp.mean(phi(h), axis=(1, 2))
    return hs, feats, sc.multiplier[-1] * feats @ params[-1].astype(X.dtype)


def _cnn_apply(net: CNN, params, X, sc=None):
    return _cnn_forward(net, params, X, sc)[2]


def _images(X, argname: str, shape=None):
    """Images (P, H, W, C) of real, finite numbers (and the given (H, W, C) if ``shape``)."""
    X = _checks.real_array(X, argname)
    if X.ndim != 4 or min(X.shape) < 1:
        raise ValueError(f"{argname} must have shape (P, H, W, C) (images, channels last) with "
                         f"every size >= 1; got shape {X.shape}")
    if shape is not None and tuple(X.shape[1:]) != tuple(shape):
        raise ValueError(f"{argname} must hold images of shape {tuple(shape)} like X; "
                         f"got shape {X.shape}")
    _checks.finite(X, argname)
    _checks.representable(X, argname, power=2)
    return X


def cnn_apply(net: CNN, params, X):
    """Outputs f (P,) of ``net`` with weights ``params`` (:func:`init_cnn_params`) on images X."""
    net = _cnn(net)
    X = jnp.asarray(_images(X, "X", (net.H, net.W, net.C)))
    params = _params(net, params)
    _checks.fits(_cnn_act_bytes(net, X.shape[0]), "the number of rows of X",
                 f"a forward pass of {X.shape[0]} images at width {net.width}")
    return _finite_or_warn(_cnn_apply(net, params, X), "cnn_apply", net, X)


class CNNKernels(NamedTuple):
    """Kernels of a CNN on a probe set, in the DMFT's units."""
    ntk: jax.Array   # (P, P): ntk_scale * J J^T (muP: gamma0^2 N grad f . grad f')
    phi: jax.Array   # (P, P): pooled last-layer features, pool(phi(h^L)) . pool(phi(h^L))' / N


def _cnn_kernels(net: CNN, params, X, sc=None) -> CNNKernels:
    """The NTK from the explicit Jacobian of the outputs (for a scalar output the pNTK of
    Mohamadi et al. is the NTK itself) and the pooled feature kernel of the last layer.

    The Jacobian is taken one image at a time (vmapped): ``jacrev`` of the batched forward pass
    would send each of the P cotangents back through all P images, O(P^2) image passes
    (measured 20-110x slower at P = 64, benchmarks/bench_cnn.py)."""
    sc = _cnn_scalings(net) if sc is None else sc
    feats = _cnn_forward(net, params, X, sc)[1]
    J = jax.vmap(lambda x: jax.jacrev(lambda p: _cnn_apply(net, p, x[None], sc)[0])(params))(X)
    J = jnp.concatenate([j.reshape(X.shape[0], -1) for j in J], axis=1)
    return CNNKernels(sc.ntk_scale * J @ J.T, feats @ feats.T / net.width)


def _cnn_act_bytes(net: CNN, P: int) -> int:
    """Activations of a forward and backward pass of P images (~8 arrays of H W N per layer)."""
    return _itemsize() * 8 * P * net.H * net.W * net.width * net.depth


def _cnn_kernel_bytes(net: CNN, P: int) -> int:
    """:func:`_cnn_kernels` on P images: the Jacobian P x n_params (held twice while it is
    built), the P per-image back-propagations (vmapped, all live at once), the P x P kernels."""
    return _itemsize() * (2 * P * cnn_n_params(net) + 2 * P * P) + _cnn_act_bytes(net, P)


def _over_seeds(one_seed):
    """``one_seed(per_seed, *args)`` run for every seed, results stacked: ``per_seed`` is a
    pytree of arrays with a leading seed axis (keys, unit-normal weights).

    On a GPU or TPU one jitted, vmapped program; on a CPU one jitted program for a single seed,
    called for each seed in turn (there the vmapped convolution, a batched matrix product, ran
    1.2-1.8x slower than a Python loop over seeds, benchmarks/bench_cnn.py), so that ensembles
    of every size share one compilation (~2 s for a CNN trainer)."""
    if jax.default_backend() != "cpu":
        return jax.jit(lambda per_seed, *args: jax.vmap(lambda s: one_seed(s, *args))(per_seed))
    run = jax.jit(one_seed)

    def over(per_seed, *args):
        leaves, tree = jax.tree_util.tree_flatten(per_seed)
        # slices on the host (an eager slice compiles per shape), except typed PRNG keys
        leaves = [a if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else np.asarray(a)
                  for a in leaves]
        n = leaves[0].shape[0]
        outs = [jax.block_until_ready(
                    run(jax.tree_util.tree_unflatten(tree, [a[i] for a in leaves]), *args))
                for i in _progress.track(range(n), n, "CNNs, one seed after another")]
        return jax.tree_util.tree_map(
            lambda *xs: jnp.asarray(np.stack([np.asarray(x) for x in xs])), *outs)
    return over


def _cnn_unit_normals(net: CNN, keys) -> list:
    """The unit-normal weights of the CNNs of seed keys ``keys`` (S, 2), as :func:`train_cnn`
    draws them (seed key k: weights from ``jax.random.split(k)[0]``, minibatches from
    ``[1]``): arrays (S, *shape). Drawn by :func:`_unit_normals`' programs, one per layer shape
    and shared by every trainer, coordinate check and set of initial kernels of that width,
    instead of inside each of those programs (~0.3 s of compilation per layer and program)."""
    if "cnn_init_keys" not in _NORMALS:
        _NORMALS["cnn_init_keys"] = jax.jit(jax.vmap(lambda k: jax.random.split(k)[0]))
    return _unit_normals(_cnn_param_shapes(net), _NORMALS["cnn_init_keys"](keys))


def cnn_init_kernels(net: CNN, X, key, n_seeds: int = 1) -> CNNKernels:
    """NTK and pooled feature kernel at initialisation of ``n_seeds`` CNNs on the images X
    (leading axis: seed; seed s initialised like seed s of :func:`train_cnn`). Vmapped and
    jitted; refused before allocating when the Jacobians (n_seeds x P x n_params) would not fit."""
    net = _cnn(net)
    X = jnp.asarray(_images(X, "X", (net.H, net.W, net.C)))
    n_seeds = _checks.positive_int(n_seeds, "n_seeds")
    key = _checks.prng_key(key, "key")
    need = n_seeds * (2 * cnn_n_params(net) * _itemsize() + _cnn_kernel_bytes(net, X.shape[0]))
    _checks.fits(need, "the number of rows of X, width" + (" or n_seeds" if n_seeds > 1 else ""),
                 f"the kernels of {X.shape[0]} images for {n_seeds} CNN(s) of width {net.width} "
                 f"({cnn_n_params(net):,} weights each; the Jacobian is P x n_params per seed)")
    prog = _program_net(net)
    if prog not in _CNN_INIT_KERNELS:   # one compilation per network shape (and image shape)
        shapes, fan_in = _cnn_param_shapes(prog), _cnn_scalings(prog).fan_in

        def one(unit, x, sca):
            sc = _scalings_from(fan_in, sca)
            return _cnn_kernels(prog, _scaled(sc, unit), x, sc)
        _CNN_INIT_KERNELS[prog] = _over_seeds(one)
    out = _CNN_INIT_KERNELS[prog](_cnn_unit_normals(net, jax.random.split(key, n_seeds)), X,
                                  _scalings_args(_cnn_scalings(net), X.dtype))
    return _finite_or_warn(out, "cnn_init_kernels", net, X)


_CNN_INIT_KERNELS: dict = {}


# ----------------------------------------------------------------------------- minibatches
def _batch_at(key, t, P: int, B: int):
    """Indices (B,) and validity mask (B,) of minibatch step ``t`` (traceable).

    Epoch e = t // n_b (n_b = ceil(P / B) steps per epoch) visits the permutation
    ``jax.random.permutation(fold_in(key, e), P)`` in consecutive slices of B; when B does not
    divide P the epoch's last batch holds the remaining P - (n_b - 1) B examples (padded with
    masked-out index 0)."""
    nb = -(-P // B)
    epoch, b = t // nb, t % nb
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), P)
    padded = jnp.concatenate([perm, jnp.zeros(nb * B - P, perm.dtype)])
    start = b * B
    idx = jax.lax.dynamic_slice(padded, (start,), (B,))
    return idx, (start + jnp.arange(B)) < P


def minibatch_indices(P, batch_size, steps, key):
    """The minibatches :func:`train_cnn` uses: ``(idx, mask)``, both of shape (steps, batch_size).

    Step t trains on the examples ``idx[t][mask[t]]``. Every epoch (``ceil(P / batch_size)``
    consecutive steps) visits each of the P examples exactly once, in an order reshuffled every
    epoch with ``key`` (epoch e uses ``jax.random.fold_in(key, e)``). When batch_size does not
    divide P, an epoch's last batch is smaller (the rest of the permutation; its padding is
    masked out, and its loss is the mean over the examples it holds). In :func:`train_cnn`,
    seed s draws its batches with ``jax.random.split(jax.random.split(key, n_seeds)[s])[1]``.
    """
    P = _checks.positive_int(P, "P")
    B = _checks.positive_int(batch_size, "batch_size", maximum=P)
    steps = _checks.positive_int(steps, "steps")
    key = _checks.prng_key(key, "key")
    nb = -(-P // B)                         # steps per epoch
    epochs = -(-steps // nb)
    # the epochs' permutations (epochs, P), padded to (epochs, nb * B), twice (host and device);
    # one epoch is P's doing, more are the steps'
    _checks.fits(2 * 8.0 * epochs * (nb * B + P), "P" if epochs == 1 else "steps",
                 f"the minibatch indices of {steps} steps over {P} examples ({epochs} epoch(s))")
    perms = jax.jit(jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), P)))(
        jnp.arange(epochs))
    # (the same batches as _batch_at, which train_cnn evaluates step by step inside its scan)
    padded = np.concatenate([np.asarray(perms), np.zeros((epochs, nb * B - P), np.int32)], 1)
    idx = padded.reshape(epochs * nb, B)[:steps]
    mask = ((np.arange(nb)[:, None] * B + np.arange(B)[None, :]) < P)
    mask = np.tile(mask, (epochs, 1))[:steps]
    return idx.astype(np.asarray(perms).dtype), mask


# ----------------------------------------------------------------------------- training
class CNNTrajectory(NamedTuple):
    """Training records of an ensemble of CNNs (leading axis: seed S).

    ``loss`` (S, T+1) on the whole training set and ``delta = y - f`` (S, T+1, P) at every step;
    ``test_loss``, ``test_acc`` (S, T+1) at every step when ``y_test`` was given (else None);
    ``f_test`` (S, n_rec, P_test) test predictions at the recorded ``times`` (n_rec,) when
    ``X_test`` was given (else None); on the probe images ``X_probe`` (n_probe, H, W, C):
    ``ntk`` (S, n_rec, n_probe, n_probe) and ``phi`` (S, n_rec, n_probe, n_probe), the last
    layer's pooled feature kernel; ``params`` the final weights (leading axis S).
    """
    loss: jax.Array
    delta: jax.Array
    test_loss: jax.Array | None
    test_acc: jax.Array | None
    f_test: jax.Array | None
    times: np.ndarray
    ntk: jax.Array
    phi: jax.Array
    X_probe: jax.Array
    params: list
    net: CNN
    batch_size: int | None


def train_cnn(X, y, *, depth, width, activation="relu", gamma0=1.0, eta, steps, key,
              parameterization="mup", n_seeds=1, batch_size=None, X_test=None, y_test=None,
              record_every=None, X_probe=None, center=False) -> CNNTrajectory:
    """Train ``n_seeds`` independent CNNs (:func:`make_cnn`) by gradient descent.

    Args:
      X: images (P, H, W, C), channels last; y: targets (P,) (e.g. +-1 for two classes).
      depth, width, activation, gamma0, parameterization: the network (:func:`make_cnn`).
      eta: learning rate in DMFT units (the weights move with ``eta * ntk_scale``; muP:
        ``eta * gamma0^2 * N``) on ``(1/2B) sum_{mu in batch} (f_mu - y_mu)^2``.
      steps: number of steps T; per-step records have T+1 entries, entry 0 at initialisation.
      key: PRNG key or integer seed; seed s uses ``k_s = jax.random.split(key, n_seeds)[s]``,
        split again into the key of its weights and the key of its minibatch order.
      batch_size: None for full-batch gradient descent; else minibatch SGD, one step per
        minibatch of ``batch_size`` (1..P) examples, each epoch visiting every example exactly
        once in an order reshuffled with the key (:func:`minibatch_indices`; when batch_size
        does not divide P an epoch's last batch holds the remainder and its loss is the mean
        over those examples).
      X_test, y_test: optional test images and targets; the test loss and the accuracy (sign
        agreement of f and y, a prediction of exactly 0 counting one half) are recorded at
        every step when y_test is given, the test predictions at the recorded times.
      record_every: the probe kernels and test predictions are recorded every this many steps
        (must divide ``steps``); default ``steps`` (at initialisation and at the end).
      X_probe: images for the kernels; default the first min(P, 16) training images. The NTK
        is ``ntk_scale * J J^T`` from the Jacobian J (n_probe x n_params) of the probe outputs
        (for a scalar output the pNTK is the NTK itself), in train_mlp's units.
      center: train and record ``f(x; theta) - f(x; theta_0)``, so that ``delta[0] = y``.

    Seeds are vmapped and time is a ``lax.scan``. A request whose memory (weights and
    activations of all seeds at once, the probe Jacobian n_probe x n_params per seed, the
    records) cannot fit is refused before anything is allocated, saying how much it needs.
    """
    X = jnp.asarray(_images(X, "X"))
    P = X.shape[0]
    y = jnp.asarray(_checks.targets(y, P, "y"), X.dtype)
    net = make_cnn(X.shape[1:], depth=depth, width=width, activation=activation,
                   parameterization=parameterization, gamma0=gamma0)
    eta, steps, n_seeds, record_every, center, key = _run_args(eta, steps, n_seeds, record_every,
                                                              center, key)
    if batch_size is not None:
        if isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool) \
                and batch_size > P:
            raise ValueError(f"batch_size must be <= P={P} (the number of training images) or "
                             f"None for full-batch GD; got {batch_size}")
        batch_size = _checks.positive_int(batch_size, "batch_size", maximum=P)
    if X_test is not None:
        X_test = jnp.asarray(_images(X_test, "X_test", X.shape[1:]), X.dtype)
    if y_test is not None:
        if X_test is None:
            raise ValueError("y_test needs X_test (the test images it labels); got X_test=None")
        y_test = jnp.asarray(_checks.targets(y_test, X_test.shape[0], "y_test"), X.dtype)
    X_probe = (X[:min(P, 16)] if X_probe is None
               else jnp.asarray(_images(X_probe, "X_probe", X.shape[1:]), X.dtype))
    P_test = 0 if X_test is None else X_test.shape[0]
    _checks.fits(*_cnn_train_bytes(net, P, P_test, X_probe.shape[0], steps=steps,
                                   record_every=record_every, n_seeds=n_seeds,
                                   batch_size=batch_size))
    lr = eta * _cnn_scalings(net).ntk_scale
    if lr > float(np.finfo(np.dtype(X.dtype)).max) / 16:
        raise ValueError(f"the weights' learning rate eta * ntk_scale = {lr:.3g} overflows "
                         f"{np.dtype(X.dtype).name}: gamma0={net.gamma0:g} or eta={eta:g} is too "
                         f"large")
    run = _cnn_trainer(_program_net(net), steps, record_every, batch_size, X_test is not None,
                       y_test is not None, center)
    keys = jax.random.split(key, n_seeds)
    dummy = jnp.zeros((1,) + X.shape[1:], X.dtype)
    with np.errstate(over="ignore", invalid="ignore"), _progress.reporting("train_cnn"):
        out = jax.block_until_ready(run(
            (keys, _cnn_unit_normals(net, keys)), X, y, X_test if X_test is not None else dummy,
            y_test if y_test is not None else jnp.zeros((1,), X.dtype), X_probe,
            jnp.asarray(lr, X.dtype), _scalings_args(_cnn_scalings(net), X.dtype)))
    loss, delta, tl, acc, ft, ntk, phi, params = out
    _warn_if_grew("train_cnn", net, loss, ntk, eta)
    if not bool(jnp.all(jnp.isfinite(loss))):
        import warnings
        t_bad = int(np.argmin(np.all(np.isfinite(np.asarray(loss)), axis=0)))
        cause = (_not_eta_cause(net, X, y) if t_bad == 0 else
                 f"lower eta={eta:g} (parameterization={net.parameterization!r}, width="
                 f"{net.width})")
        warnings.warn(f"train_cnn: training diverged (non-finite loss from step {t_bad}): {cause}",
                      RuntimeWarning, stacklevel=2)
    has_y = y_test is not None
    return CNNTrajectory(loss, delta, tl if has_y else None, acc if has_y else None,
                         ft if X_test is not None else None,
                         np.arange(0, steps + 1, record_every), ntk, phi, X_probe, params, net,
                         batch_size)


def _cnn_train_bytes(net: CNN, P: int, P_test: int, n_probe: int, *, steps: int,
                     record_every: int, n_seeds: int, batch_size):
    """Estimated memory of :func:`train_cnn` as ``(bytes, argument to reduce, description)``.

    Per seed (seeds are vmapped, so all live at once): the weights four times; the activations
    of the backward pass on a batch (all P images for full-batch GD), of the forward passes on
    the training set (minibatch SGD records the full training loss) and the test set; the
    probe kernels (Jacobian n_probe x n_params, twice, and n_probe backward passes); the
    records.
    """
    n_rec = steps // record_every + 1
    rows = (P if batch_size is None else batch_size + P) + P_test
    it = _itemsize()
    terms = {
        "width": it * 4 * cnn_n_params(net) + _cnn_act_bytes(net, rows),
        "X_probe (fewer probe images) or width": (_cnn_kernel_bytes(net, n_probe)
                                                  + it * 4 * n_rec * n_probe ** 2),
        "steps or record_every": it * (3 * (steps + 1) * (3 + P) + 2 * n_rec * P_test),
    }
    blame = max(terms, key=terms.get) + (" or n_seeds" if n_seeds > 1 else "")
    return (n_seeds * sum(terms.values()), blame,
            f"training {n_seeds} CNN(s) of width {net.width} and depth {net.depth} "
            f"({cnn_n_params(net):,} weights each) on {P} images of shape "
            f"{(net.H, net.W, net.C)} with a probe Jacobian of {n_probe} x {cnn_n_params(net):,}")


_CNN_TRAINERS: dict = {}


def _cnn_trainer(net: CNN, steps: int, record_every: int, batch_size, with_test: bool,
                 with_y_test: bool, center: bool):
    """A jitted CNN trainer run over seeds (:func:`_over_seeds`); cached per static
    configuration (``net`` a :func:`_program_net`: the learning rate and the scalings are
    traced arguments)."""
    cache_key = (net, steps, record_every, batch_size, with_test, with_y_test, center)
    if cache_key in _CNN_TRAINERS:
        return _CNN_TRAINERS[cache_key]
    n_chunks = steps // record_every
    fan_in = _cnn_scalings(net).fan_in

    def one_seed(per_seed, X, y, X_test, y_test, X_probe, lr, sca):
        key, unit = per_seed          # the seed's key and its unit-normal weights
        sc = _scalings_from(fan_in, sca)
        k_data = jax.random.split(key)[1]
        P = X.shape[0]
        params = _scaled(sc, unit)
        f_init = _cnn_apply(net, params, X, sc) if center else jnp.zeros(P, X.dtype)
        ft_init = _cnn_apply(net, params, X_test, sc) if center and with_test else 0.0

        def out(p, x, f0):
            return _cnn_apply(net, p, x, sc) - f0

        def test_out(p):
            return out(p, X_test, ft_init) if with_test else jnp.zeros((0,), X.dtype)

        def full_loss(p):
            f = out(p, X, f_init)
            return 0.5 * jnp.mean((f - y) ** 2), f

        def batch_loss(p, t):
            idx, mask = _batch_at(k_data, t, P, batch_size)
            r = jnp.where(mask, out(p, X[idx], f_init[idx]) - y[idx], 0.0)
            return 0.5 * jnp.sum(r ** 2) / jnp.sum(mask)

        def test_rec(ft):
            if not with_y_test:
                return jnp.zeros((), X.dtype), jnp.zeros((), X.dtype)
            hit = jnp.where(ft == 0, 0.5, (jnp.sign(ft) == jnp.sign(y_test)).astype(X.dtype))
            return 0.5 * jnp.mean((ft - y_test) ** 2), jnp.mean(hit)

        def step(p, t):
            _progress.tick(t, steps)
            if batch_size is None:
                (loss, f), grads = jax.value_and_grad(full_loss, has_aux=True)(p)
            else:
                loss, f = full_loss(p)
                grads = jax.grad(batch_loss)(p, t)
            ft = test_out(p)
            if center:   # f(theta_0) - f(theta_0) is 0 exactly, whatever XLA's rounding
                f, ft = jnp.where(t == 0, 0.0, f), jnp.where(t == 0, 0.0, ft)
            tl, acc = test_rec(ft) if with_y_test else test_rec(None)
            p = jax.tree_util.tree_map(lambda w, dw: w - lr * dw, p, grads)
            return p, (loss, y - f, tl, acc)

        def chunk(p, t0):
            k = _cnn_kernels(net, p, X_probe, sc)
            ft = test_out(p)
            ft = jnp.where(t0 == 0, 0.0, ft) if center else ft
            p, rec = jax.lax.scan(step, p, t0 + jnp.arange(record_every))
            return p, (k, ft, rec)

        params, (ks, ft, (loss, delta, tl, acc)) = jax.lax.scan(
            chunk, params, jnp.arange(n_chunks) * record_every)
        k_end = _cnn_kernels(net, params, X_probe, sc)
        loss_end, f_end = full_loss(params)
        ft_end = test_out(params)
        tl_end, acc_end = test_rec(ft_end) if with_y_test else test_rec(None)
        flat = lambda a: a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])
        cat = lambda a, e: jnp.concatenate([flat(a), e[None]])
        return (cat(loss, loss_end), cat(delta, y - f_end), cat(tl, tl_end), cat(acc, acc_end),
                jnp.concatenate([ft, ft_end[None]]),
                jnp.concatenate([ks.ntk, k_end.ntk[None]]),
                jnp.concatenate([ks.phi, k_end.phi[None]]), params)

    run = _over_seeds(one_seed)
    _CNN_TRAINERS[cache_key] = run
    return run


# ----------------------------------------------------------------------------- CNN coordinate check
def cnn_coord_check(X, y, *, widths, parameterization, depth=2, activation="relu", gamma0=1.0,
                    eta, steps=3, key, n_seeds=4) -> CoordCheck:
    """Coordinate check of CNNs (as :func:`coord_check` for MLPs): ``n_seeds`` CNNs per width
    trained by full-batch GD for ``steps`` steps (learning rate ``eta * ntk_scale``);
    ``h_size`` (n_widths, depth) is the RMS of each layer's pre-activations h^l at
    initialisation (over channels, positions, images and seeds), ``dh_size`` (n_widths, steps,
    depth) the RMS of h^l(t) - h^l(0), ``df_size`` (n_widths, steps) that of f(t) - f(0).
    Under muP all three are O(1) in the width; under the standard parameterisation at a fixed
    learning rate the output's update grows with the width."""
    X = jnp.asarray(_images(X, "X"))
    y = jnp.asarray(_checks.targets(y, X.shape[0], "y"), X.dtype)
    widths = _checks.int_list(widths, "widths")
    steps = _checks.positive_int(steps, "steps")
    n_seeds = _checks.positive_int(n_seeds, "n_seeds")
    eta = _checks.nonnegative(eta, "eta")
    key = _checks.prng_key(key, "key")
    nets_ = [make_cnn(X.shape[1:], depth=depth, width=N, activation=activation,
                      parameterization=parameterization, gamma0=gamma0) for N in widths]
    widest = max(nets_, key=lambda n: n.width)
    need = n_seeds * (4 * cnn_n_params(widest) * _itemsize()
                      + 2 * _cnn_act_bytes(widest, X.shape[0]))
    _checks.fits(need, "widths (the largest)" + (" or n_seeds" if n_seeds > 1 else ""),
                 f"a coordinate check of {n_seeds} CNN(s) of width {widest.width}")
    h_size, dh_size, df_size = [], [], []
    for net in nets_:
        lr = jnp.asarray(eta * _cnn_scalings(net).ntk_scale, X.dtype)
        with _progress.reporting(f"cnn_coord_check (width {net.width})"):
            hs0, dhs, dfs = jax.block_until_ready(_coord_runner(net, steps)(
                _cnn_unit_normals(net, jax.random.split(key, n_seeds)), X, y, lr,
                _scalings_args(_cnn_scalings(net), X.dtype)))
        h_size.append(np.sqrt(np.mean(np.asarray(hs0), axis=0)))
        dh_size.append(np.sqrt(np.mean(np.asarray(dhs), axis=0)))
        df_size.append(np.sqrt(np.mean(np.asarray(dfs), axis=0)))
    return _coord_result(widths, h_size, dh_size, df_size, parameterization, X, eta,
                         "cnn_coord_check")


