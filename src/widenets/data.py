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


def normalize(X):
    """Rescale each row of ``X`` (P, D) to squared norm D, so that diag(Kx) = 1."""
    X = jnp.asarray(X)
    return X * jnp.sqrt(X.shape[1] / jnp.sum(X ** 2, axis=1, keepdims=True))


def input_kernel(X):
    """``Kx = X X^T / D`` for inputs ``X`` of shape (P, D)."""
    X = jnp.asarray(X)
    return X @ X.T / X.shape[1]


def gaussian_task(key, P: int, D: int, *, P_test: int = 0) -> Task:
    """Isotropic Gaussian inputs on the sphere of radius sqrt(D) with random +-1 targets."""
    P = _checks.positive_int(P, "P")
    D = _checks.positive_int(D, "D")
    P_test = _checks.positive_int(P_test, "P_test", minimum=0)
    kx, ky = jax.random.split(key)
    X = normalize(jax.random.normal(kx, (P + P_test, D)))
    y = jnp.where(jax.random.bernoulli(ky, 0.5, (P + P_test,)), 1.0, -1.0)
    if P_test == 0:
        return Task(X, y)
    return Task(X[:P], y[:P], X[P:], y[P:])


def teacher_task(key, P: int, D: int, *, P_test: int = 0, activation: str = "tanh",
                 noise: float = 0.0) -> Task:
    """Targets from a single-index teacher ``y = act(beta . x / sqrt(D)) + noise``, scaled to unit variance."""
    P = _checks.positive_int(P, "P")
    D = _checks.positive_int(D, "D")
    P_test = _checks.positive_int(P_test, "P_test", minimum=0)
    _checks.choice(activation, "activation", _checks.ACTIVATIONS)
    noise = _checks.nonnegative(noise, "noise")
    from .nets import activation_fn
    kx, kb, kn = jax.random.split(key, 3)
    X = normalize(jax.random.normal(kx, (P + P_test, D)))
    beta = jax.random.normal(kb, (D,))
    z = activation_fn(activation)(X @ beta / jnp.sqrt(D))
    y = (z - z.mean()) / (z.std() + 1e-12) + noise * jax.random.normal(kn, z.shape)
    if P_test == 0:
        return Task(X, y)
    return Task(X[:P], y[:P], X[P:], y[P:])


def regression_1d(P: int, *, P_test: int = 200, D: int = 2, fn=np.sin) -> Task:
    """Points on the circle: x = (cos theta, sin theta) * sqrt(D/2)-ish (D = 2), target fn(2 theta).

    Useful to draw a learned function against the angle; the test points cover the circle densely.
    """
    P = _checks.positive_int(P, "P")
    if D != 2:
        raise ValueError(f"D must be 2 for the circle regression task; got {D!r}")
    theta = jnp.linspace(0, 2 * jnp.pi, P, endpoint=False) + 0.1
    theta_test = jnp.linspace(0, 2 * jnp.pi, P_test, endpoint=False)

    def embed(t):
        return normalize(jnp.stack([jnp.cos(t), jnp.sin(t)], axis=1))

    return Task(embed(theta), jnp.asarray(fn(2 * np.asarray(theta))),
                embed(theta_test), jnp.asarray(fn(2 * np.asarray(theta_test))))


def load_images(name: str = "cifar10", *, n_train: int = 1000, n_test: int = 500,
                classes=None, flatten: bool = False, seed: int = 0):
    """Small image classification data as ``(X_train, y_train, X_test, y_test, source)``.

    ``name="cifar10"`` tries the real CIFAR-10 loader (``tf.keras.datasets``, which needs the
    internet, e.g. on Colab) and, when that fails, falls back to scikit-learn's bundled 8x8
    ``digits`` so that the book builds offline; ``source`` says which one was used.
    Images are channels-last (n, H, W, C), standardised per pixel; labels are integers.
    """
    _checks.choice(name, "name", ("cifar10", "digits"))
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
    xtr, ytr, xte, yte = xtr[:n_train], ytr[:n_train], xte[:n_test], yte[:n_test]
    mean, std = xtr.mean(axis=0), xtr.std(axis=0) + 1e-6
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    if flatten:
        xtr, xte = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
    return (jnp.asarray(xtr, dtype=jnp.float32), jnp.asarray(ytr), jnp.asarray(xte, dtype=jnp.float32),
            jnp.asarray(yte), source)
