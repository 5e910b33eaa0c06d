"""Tasks: Gaussian inputs with +-1 targets, teacher tasks, 1-D regression, and small images.

Every sampler takes an explicit PRNG key. Inputs are returned as ``X`` of shape (P, D),
scaled so that ``|x|^2 = D`` (the input kernel ``Kx = X X^T / D`` has unit diagonal).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks


class Task(NamedTuple):
    """A regression task: training inputs and targets, optional test inputs and targets."""
    X: jax.Array          # (P, D)
    y: jax.Array          # (P,)
    X_test: jax.Array | None = None   # (P_test, D)
    y_test: jax.Array | None = None   # (P_test,)


def _samples_bytes(n: int, D: int) -> int:
    return 4 * n * D * 8     # a few float copies of an (n, D) array (float64 at most)


def normalize(X):
    """Rescale each row of ``X`` (P, D) to squared norm D, so that diag(Kx) = 1.

    A row of zeros has no direction to keep: it is refused (it would become NaN).
    """
    if _checks.is_traced(X):
        return _normalize(X)
    X = _checks.inputs(X, "X")
    norms = np.sum(np.asarray(X, np.float64) ** 2, axis=1)
    if np.any(norms == 0):
        raise ValueError(f"X has rows of zeros (rows {np.flatnonzero(norms == 0)[:5].tolist()}): "
                         f"they cannot be rescaled to norm sqrt(D)")
    X = jnp.asarray(X)
    sq = np.asarray(jnp.sum(X ** 2, axis=1), np.float64)      # in X's precision: it may overflow
    tiny = float(jnp.finfo(X.dtype).tiny)
    # D / |x|^2 must be a normal number too (denormals are flushed to zero on CPUs)
    if np.all(np.isfinite(sq) & (sq > tiny) & (sq < 0.25 * X.shape[1] / tiny)):
        return _normalize(X)
    # the squares over- or underflow the float type: divide by each row's largest entry first
    Xs = X / jnp.max(jnp.abs(X), axis=1, keepdims=True)
    return Xs * jnp.sqrt(X.shape[1] / jnp.sum(Xs ** 2, axis=1, keepdims=True))


def _normalize(X):
    return X * jnp.sqrt(X.shape[1] / jnp.sum(X ** 2, axis=1, keepdims=True))


def input_kernel(X):
    """``Kx = X X^T / D`` for inputs ``X`` of shape (P, D)."""
    if _checks.is_traced(X):
        return X @ X.T / X.shape[1]
    X = _checks.inputs(X, "X")
    _checks.fits(X.shape[0] ** 2 * X.dtype.itemsize * 2, "the number of rows of X",
                 f"the ({X.shape[0]}, {X.shape[0]}) input kernel")
    X = jnp.asarray(X)
    K = X @ X.T / X.shape[1]
    if not bool(jnp.all(jnp.isfinite(K))):
        raise ValueError(f"X X^T / D overflows {K.dtype} (largest |x| = "
                         f"{float(jnp.max(jnp.abs(X))):.3g}); rescale X (e.g. normalize(X))")
    return K


def gaussian_task(key, P: int, D: int, *, P_test: int = 0) -> Task:
    """Isotropic Gaussian inputs on the sphere of radius sqrt(D) with random +-1 targets.

    ``key``: a JAX PRNG key or an integer seed.
    """
    key = _checks.prng_key(key, "key")
    P = _checks.positive_int(P, "P")
    D = _checks.positive_int(D, "D")
    P_test = _checks.positive_int(P_test, "P_test", minimum=0)
    _checks.fits(_samples_bytes(P + P_test, D), "P, P_test or D",
                 f"{P + P_test} Gaussian inputs of dimension {D}")
    kx, ky = jax.random.split(key)
    X = normalize(jax.random.normal(kx, (P + P_test, D)))
    y = jnp.where(jax.random.bernoulli(ky, 0.5, (P + P_test,)), 1.0, -1.0)
    if P_test == 0:
        return Task(X, y)
    return Task(X[:P], y[:P], X[P:], y[P:])


def teacher_task(key, P: int, D: int, *, P_test: int = 0, activation: str = "tanh",
                 noise: float = 0.0) -> Task:
    """Targets from a single-index teacher: ``y = act(beta . x / sqrt(D))`` plus label noise, with
    zero mean and unit variance.

    The teacher's outputs are standardised, Gaussian noise of standard deviation ``noise`` (in
    units of the teacher's standard deviation: a signal-to-noise variance ratio 1 / noise^2) is
    added, and the sum is standardised again, so the targets have unit variance for any noise
    level. Means and variances are taken over the training and test points together.
    ``key``: a JAX PRNG key or an integer seed.
    """
    key = _checks.prng_key(key, "key")
    P = _checks.positive_int(P, "P")
    D = _checks.positive_int(D, "D")
    P_test = _checks.positive_int(P_test, "P_test", minimum=0)
    _checks.choice(activation, "activation", _checks.ACTIVATIONS)
    noise = _checks.nonnegative(noise, "noise")
    if P + P_test < 2:
        raise ValueError(f"teacher_task needs P + P_test >= 2 points to standardise the targets; "
                         f"got P={P}, P_test={P_test}")
    _checks.fits(_samples_bytes(P + P_test, D), "P, P_test or D",
                 f"{P + P_test} teacher inputs of dimension {D}")
    from .nets import activation_fn
    kx, kb, kn = jax.random.split(key, 3)
    X = normalize(jax.random.normal(kx, (P + P_test, D)))
    beta = jax.random.normal(kb, (D,))
    z = activation_fn(activation)(X @ beta / jnp.sqrt(D))
    if float(z.std()) < 1e-6 * max(1.0, float(jnp.max(jnp.abs(z)))):
        raise ValueError(f"the {activation} teacher is constant on these {P + P_test} points "
                         f"(e.g. relu of all-negative projections): its targets cannot be "
                         f"standardised; use more points or another key")
    y = (z - z.mean()) / z.std()
    if noise > 0:
        y = y + noise * jax.random.normal(kn, z.shape)
        y = (y - y.mean()) / y.std()
    if P_test == 0:
        return Task(X, y)
    return Task(X[:P], y[:P], X[P:], y[P:])


def regression_1d(P: int, *, P_test: int = 200, D: int = 2, fn=np.sin) -> Task:
    """Points on the circle: x = (cos theta, sin theta) * sqrt(D/2)-ish (D = 2), target fn(2 theta).

    Useful to draw a learned function against the angle; the test points cover the circle densely.
    ``fn`` maps an array of angles to an array of the same shape of finite real targets.
    """
    P = _checks.positive_int(P, "P")
    P_test = _checks.positive_int(P_test, "P_test", minimum=0)
    if isinstance(D, bool) or D != 2:
        raise ValueError(f"D must be 2 for the circle regression task; got {D!r}")
    if not callable(fn):
        raise ValueError(f"fn must be a function of the angle (e.g. np.sin); got {fn!r}")
    _checks.fits(_samples_bytes(P + P_test, 2), "P or P_test", f"{P + P_test} points on a circle")
    theta = jnp.linspace(0, 2 * jnp.pi, P, endpoint=False) + 0.1
    theta_test = jnp.linspace(0, 2 * jnp.pi, P_test, endpoint=False)

    def embed(t):
        return _normalize(jnp.stack([jnp.cos(t), jnp.sin(t)], axis=1))

    def target(t, argname):
        out = fn(2 * np.asarray(t))
        return jnp.asarray(_checks.targets(np.asarray(out).reshape(-1) if np.ndim(out) else out,
                                           len(t), argname))

    return Task(embed(theta), target(theta, "fn(2 theta)"),
                embed(theta_test), target(theta_test, "fn(2 theta_test)"))


def load_images(name: str = "cifar10", *, n_train: int = 1000, n_test: int = 500,
                classes=None, flatten: bool = False, seed: int = 0):
    """Small image classification data as ``(X_train, y_train, X_test, y_test, source)``.

    ``name="cifar10"`` tries the real CIFAR-10 loader (``tf.keras.datasets``, which needs the
    internet, e.g. on Colab) and, when that fails, falls back to scikit-learn's bundled 8x8
    ``digits`` so that the book builds offline; ``source`` says which one was used.
    Images are channels-last (n, H, W, C), standardised per pixel with the training set's
    statistics; labels are integers. ``classes`` keeps only those labels (each in 0..9);
    ``n_train`` (>= 1) and ``n_test`` (>= 0) are upper bounds: a smaller data set (the digits
    fallback has 898 training images, fewer for a subset of classes) returns all it has, with a
    warning.
    """
    _checks.choice(name, "name", ("cifar10", "digits"))
    n_train = _checks.positive_int(n_train, "n_train")
    n_test = _checks.positive_int(n_test, "n_test", minimum=0)
    flatten = _checks.flag(flatten, "flatten")
    seed = _checks.positive_int(seed, "seed", minimum=0)
    if classes is not None:
        classes = _checks.int_list(classes, "classes", minimum=0)
        if max(classes) > 9:
            raise ValueError(f"classes must be labels in 0..9; got {classes}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes must not repeat a label; got {classes}")
    source = name
    if name == "cifar10":
        try:
            import os
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            from tensorflow.keras.datasets import cifar10  # noqa: PLC0415
            (xtr, ytr), (xte, yte) = cifar10.load_data()
            ytr, yte = ytr.ravel(), yte.ravel()
        except Exception:  # offline: no download possible
            source = "digits"
    if source == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        imgs = d.images[..., None].astype(np.float64)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(imgs))
        cut = len(imgs) // 2
        xtr, ytr = imgs[order[:cut]], d.target[order[:cut]]
        xte, yte = imgs[order[cut:]], d.target[order[cut:]]
    if classes is not None:
        keep_tr, keep_te = np.isin(ytr, classes), np.isin(yte, classes)
        xtr, ytr, xte, yte = xtr[keep_tr], ytr[keep_tr], xte[keep_te], yte[keep_te]
    if len(xtr) < n_train or len(xte) < n_test:
        import warnings
        warnings.warn(f"load_images: {source} has {len(xtr)} training and {len(xte)} test images"
                      f"{'' if classes is None else f' of classes {classes}'}; returning those "
                      f"(asked for n_train={n_train}, n_test={n_test})", UserWarning, stacklevel=2)
    xtr, ytr, xte, yte = xtr[:n_train], ytr[:n_train], xte[:n_test], yte[:n_test]
    mean, std = xtr.mean(axis=0), xtr.std(axis=0) + 1e-6
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    if flatten:
        xtr, xte = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
    return (jnp.asarray(xtr, dtype=jnp.float32), jnp.asarray(ytr), jnp.asarray(xte, dtype=jnp.float32),
            jnp.asarray(yte), source)
