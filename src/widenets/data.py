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
    X = _checks.real_array(X, "X")
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"X must have shape (P, D) with P, D >= 1; got shape {X.shape}")
    _checks.finite(X, "X")
    # in float64 on the host, each row first divided by its largest entry: rows of 1e-200 or
    # 1e200, whose squares (or whose entries, in float32) leave the float range, keep their
    # direction; the result has entries of order 1 in any precision
    X64 = X.astype(np.float64)
    top = np.max(np.abs(X64), axis=1, keepdims=True)
    if np.any(top == 0):
        raise ValueError(f"X has rows of zeros (rows {np.flatnonzero(top[:, 0] == 0)[:5].tolist()}"
                         f"): they cannot be rescaled to norm sqrt(D)")
    Xs = X64 / top
    out = Xs * np.sqrt(X.shape[1] / np.sum(Xs ** 2, axis=1, keepdims=True))
    return jnp.asarray(out.astype(X.dtype))


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
    if noise > 1e4:
        import warnings
        warnings.warn(f"noise={noise:g}: the signal is {(1 / noise) ** 2:.3g} of the targets' "
                      f"variance, so they are pure noise to float precision", RuntimeWarning,
                      stacklevel=2)
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
        n = jax.random.normal(kn, z.shape)
        # (y + noise n) and (y / noise + n) standardise alike; the second cannot overflow
        y = y + noise * n if noise <= 1 else y * (1.0 / noise) + n
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


class Images(NamedTuple):
    """An image classification task from :func:`images`.

    ``X`` (n_train, H, W, C) and ``X_test`` (n_test, H, W, C) are float32 images, channels last;
    ``y`` / ``y_test`` the regression targets: shape (n,) with entries -1 (``classes[0]``) and
    +1 (``classes[1]``) for two classes, centred one-hot of shape (n, k) for k > 2 classes;
    ``labels`` / ``labels_test`` the original integer labels (int32); ``classes`` the kept labels
    in the order that defines the targets; ``name`` the data set actually returned ("digits" or
    "cifar10"); ``class_names`` the names of ``classes``; ``mean`` and ``std`` the per-channel
    statistics (C,) of the training split used to normalise both splits (zeros and ones when
    ``normalize=False``).
    """
    X: jax.Array
    y: jax.Array
    X_test: jax.Array
    y_test: jax.Array
    classes: tuple
    name: str
    labels: jax.Array
    labels_test: jax.Array
    class_names: tuple
    mean: np.ndarray
    std: np.ndarray


class DataUnavailableError(OSError):
    """A data set that cannot be obtained here: no cached copy and no download possible (offline),
    or a cached copy that cannot be read. A subclass of ``OSError``. ``reason`` holds a short
    account of what failed; the message also names the offline ``"digits"`` fallback."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


IMAGE_SETS = ("digits", "cifar10")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"      # of the official tarball (163 MB)
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck")
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_MEMO: dict = {}          # parsed data sets of this process: {"digits": ..., ("cifar10", dir): ...}


def cifar10_cache_dir(cache_dir=None):
    """The directory that holds (or will hold) the CIFAR-10 tarball.

    ``cache_dir`` when given; else ``$WIDENETS_DATA_DIR/cifar10`` when that variable is set; else
    ``$XDG_CACHE_HOME/widenets/cifar10`` (``~/.cache/widenets/cifar10`` by default).
    """
    import os
    from pathlib import Path
    if cache_dir is not None:
        if not isinstance(cache_dir, (str, os.PathLike)) or str(cache_dir) == "":
            raise ValueError(f"cache_dir must be a directory path (str or os.PathLike) or None; "
                             f"got {cache_dir!r}")
        return Path(cache_dir).expanduser()
    root = os.environ.get("WIDENETS_DATA_DIR", "").strip()
    if root:
        return Path(root).expanduser() / "cifar10"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "widenets" / "cifar10"


def _digits_arrays():
    """scikit-learn's 1797 8x8 digits (bundled with the package: no download) as
    (images uint8-valued (n, 8, 8, 1) scaled to [0, 1], labels)."""
    if "digits" not in _MEMO:
        from sklearn.datasets import load_digits
        d = load_digits()
        X = (np.asarray(d.images, np.float32) / 16.0)[..., None]       # pixel values 0..16
        _MEMO["digits"] = (X, np.asarray(d.target, np.int64))
    return _MEMO["digits"]


class _NumpyOnlyUnpickler:
    """Unpickles the CIFAR-10 batches (dicts of lists, strings and NumPy arrays) and refuses any
    other object, so a tampered cache cannot run code."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
        (f"numpy.{core}.{mod}", fn) for core in ("core", "_core")
        for mod, fn in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                        ("numeric", "_frombuffer"))}

    @classmethod
    def load(cls, fileobj):
        import importlib
        import pickle

        allowed = cls._ALLOWED

        class Unpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if (module, name) not in allowed:
                    raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a "
                                                 f"CIFAR-10 batch")
                if module.startswith("numpy.core."):     # NumPy 2 renamed numpy.core to _core
                    try:
                        return getattr(importlib.import_module(
                            module.replace("numpy.core.", "numpy._core.", 1)), name)
                    except ImportError:                 # NumPy 1.x
                        pass
                return super().find_class(module, name)

        return Unpickler(fileobj, encoding="bytes").load()


def _cifar_batch(fileobj, member: str):
    """(images uint8 (n, 32, 32, 3), labels int64 (n,)) from one pickled CIFAR-10 batch: a dict
    with ``data`` (n, 3072), each row 1024 red, then green, then blue values of a 32x32 image in
    row-major order, and ``labels`` (n integers in 0..9)."""
    batch = _NumpyOnlyUnpickler.load(fileobj)
    if not isinstance(batch, dict):
        raise ValueError(f"{member} is not a CIFAR-10 batch (a pickled dict)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{member} lacks the 'data' or 'labels' entry of a CIFAR-10 batch")
    data = np.asarray(batch["data"], np.uint8)
    labels = np.asarray(batch["labels"], np.int64).reshape(-1)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise ValueError(f"{member}: data of shape {data.shape} with {labels.shape[0]} labels; "
                         f"expected (n, 3072) and n labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{member}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _read_cifar(source) -> tuple:
    """(X_train, y_train, X_test, y_test) from an extracted ``cifar-10-batches-py`` directory or
    from the official tarball (read in place, nothing extracted)."""
    import tarfile
    parts = {}
    if source.is_dir():
        for member in (*_CIFAR_TRAIN, _CIFAR_TEST):
            with open(source / member, "rb") as f:
                parts[member] = _cifar_batch(f, member)
    else:
        with tarfile.open(source, "r:gz") as tar:
            for member in (*_CIFAR_TRAIN, _CIFAR_TEST):
                f = tar.extractfile(f"{CIFAR10_DIR}/{member}")     # KeyError if it is missing
                if f is None:
                    raise ValueError(f"{CIFAR10_DIR}/{member} is not a file in {source}")
                with f:
                    parts[member] = _cifar_batch(f, member)
    Xtr = np.concatenate([parts[m][0] for m in _CIFAR_TRAIN])
    ytr = np.concatenate([parts[m][1] for m in _CIFAR_TRAIN])
    return Xtr, ytr, *parts[_CIFAR_TEST]


def _download(url: str, dest, md5: str, timeout: float = 20.0) -> None:
    """Fetch ``url`` into ``dest`` through a temporary file, checking its MD5 before the rename
    (an interrupted or corrupt download never looks like a cached copy). One line is printed once
    the server answers (offline, nothing is printed here). ``timeout``: seconds per socket
    operation."""
    import hashlib
    import os
    import urllib.request
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        h = hashlib.md5()
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            print(f"widenets.data: downloading {url} (once) into {dest.parent}", flush=True)
            while chunk := resp.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != md5:
            raise OSError(f"the download's MD5 is {h.hexdigest()}, not the expected {md5}")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


_FALLBACK_HINT = ("use the offline \"digits\" data set instead (wn.data.images(\"digits\", ...), "
                  "scikit-learn's 8x8 digits, no download), or wn.data.images_or_fallback("
                  "\"cifar10\", ...), which falls back to \"digits\" by itself")


def _cifar_arrays(cache_dir, download: bool):
    """The CIFAR-10 arrays: from ``cache_dir`` (an extracted ``cifar-10-batches-py`` folder or the
    tarball), downloading the tarball there first when neither is present and ``download``."""
    d = cifar10_cache_dir(cache_dir)
    memo_key = ("cifar10", str(d.resolve()))
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    extracted, tarball = d / CIFAR10_DIR, d / CIFAR10_TARBALL
    source = extracted if (extracted / _CIFAR_TEST).is_file() else tarball
    if not source.exists():
        if not download:
            reason = f"no cached copy in {d} and download=False"
            raise DataUnavailableError(f"CIFAR-10 is not available: {reason}; {_FALLBACK_HINT}",
                                       reason)
        try:
            _download(CIFAR10_URL, tarball, CIFAR10_MD5)
        except Exception as err:    # no network, DNS, HTTP error, timeout, read-only cache, ...
            reason = f"no cached copy in {d} and the download failed ({type(err).__name__}: {err})"
            raise DataUnavailableError(
                f"CIFAR-10 is not available (offline?): {reason}. Set cache_dir or "
                f"WIDENETS_DATA_DIR to a folder holding {CIFAR10_TARBALL}, or {_FALLBACK_HINT}",
                reason) from err
    try:
        arrays = _read_cifar(source)
    except Exception as err:     # truncated gzip, missing member, foreign pickle, bad shapes
        reason = f"the cached copy {source} cannot be read ({type(err).__name__}: {err})"
        raise DataUnavailableError(f"CIFAR-10 is not available: {reason}; delete it to download "
                                   f"again, or {_FALLBACK_HINT}", reason) from err
    _MEMO[memo_key] = arrays
    return arrays


def _image_classes(classes, names: tuple, name: str) -> tuple:
    """``classes`` as a tuple of distinct labels in 0..len(names)-1 (names such as "cat" are
    accepted for their label), at least two of them."""
    if isinstance(classes, (list, tuple, np.ndarray)):
        classes = [names.index(c) if isinstance(c, str) and c in names else c for c in classes]
        for c in classes:
            if isinstance(c, str):
                raise ValueError(f"classes: {c!r} is not a class of {name}; its classes are "
                                 f"0..{len(names) - 1} or the names {names}")
    classes = _checks.int_list(classes, "classes", minimum=0, min_len=2)
    if max(classes) >= len(names):
        raise ValueError(f"classes must be labels in 0..{len(names) - 1} for {name}; got {classes}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must not repeat a label; got {classes}")
    return tuple(classes)


def _targets(labels: np.ndarray, classes: tuple) -> np.ndarray:
    """+-1 for two classes (-1 for classes[0]); one-hot minus 1/k, shape (n, k), for k > 2."""
    onehot = (labels[:, None] == np.asarray(classes)[None, :]).astype(np.float32)
    if len(classes) == 2:
        return onehot[:, 1] - onehot[:, 0]
    return onehot - np.float32(1.0 / len(classes))


def images(name: str, *, classes, n_train: int, n_test: int, key, normalize: bool = True,
           cache_dir=None, download: bool = True) -> Images:
    """An image classification task with regression targets, channels last.

    ``name``: ``"digits"`` (scikit-learn's 1797 8x8 grey digits, shipped with scikit-learn: works
    offline; X of shape (n, 8, 8, 1)) or ``"cifar10"`` (the 60000 32x32 colour images of CIFAR-10;
    X of shape (n, 32, 32, 3)). CIFAR-10 comes from the official python tarball, downloaded once
    (163 MB) into ``cache_dir`` (default :func:`cifar10_cache_dir`: ``$WIDENETS_DATA_DIR/cifar10``
    or ``~/.cache/widenets/cifar10``) and read from there afterwards; an extracted
    ``cifar-10-batches-py`` folder in ``cache_dir`` is used as is. Without a cached copy and
    without network (or with ``download=False``) it raises :class:`DataUnavailableError` (an
    ``OSError``) whose message names the ``"digits"`` fallback; :func:`images_or_fallback` falls
    back by itself.

    ``classes``: the labels to keep (at least two distinct ones, each in 0..9; CIFAR-10 names
    such as "cat" also work), in the order that defines the targets: for two classes
    ``y = -1`` for ``classes[0]`` and ``y = +1`` for ``classes[1]``, shape (n,); for k > 2
    classes ``y[i, j] = 1[label_i == classes[j]] - 1/k``, shape (n, k) (each row sums to 0).

    ``n_train``, ``n_test`` (>= 1): drawn without replacement with ``key`` (a JAX PRNG key or an
    integer seed) from the examples of those classes, in random order; the same key gives the same
    split. CIFAR-10 draws the training set from its 50000 training images and the test set from
    its 10000 test images; digits has no official split, so both are drawn from one permutation
    of its images and are disjoint (the training set does not depend on ``n_test``). Requests
    beyond the available examples are refused with the count that exists.

    ``normalize``: subtract each channel's mean and divide by its standard deviation, both
    computed on the training split (over images and pixels), from both splits: the training
    images then have mean 0 and standard deviation 1 per channel. With ``normalize=False`` the
    pixels are scaled to [0, 1] (digits / 16, CIFAR-10 / 255).
    """
    _checks.choice(name, "name", IMAGE_SETS)
    n_train = _checks.positive_int(n_train, "n_train")
    n_test = _checks.positive_int(n_test, "n_test")
    key = _checks.prng_key(key, "key")
    normalize = _checks.flag(normalize, "normalize")
    download = _checks.flag(download, "download")
    names = CIFAR10_NAMES if name == "cifar10" else tuple(str(i) for i in range(10))
    classes = _image_classes(classes, names, name)
    if name == "cifar10":
        cifar10_cache_dir(cache_dir)                    # validate before any download
    elif cache_dir is not None:
        raise ValueError(f"cache_dir is only used by \"cifar10\" (digits ships with scikit-learn); "
                         f"got cache_dir={cache_dir!r} for {name!r}")
    k_train, k_test = jax.random.split(key)

    def pick(labels):
        return np.flatnonzero(np.isin(labels, classes))

    def draw(k, idx, n):
        return idx[np.asarray(jax.random.permutation(k, len(idx)))[:n]]

    what = f"{name} images of classes {classes}"
    if name == "digits":
        Xall, lall = _digits_arrays()
        idx = pick(lall)
        if n_train > len(idx):
            raise ValueError(f"n_train must be <= {len(idx)}: there are {len(idx)} {what} "
                             f"(train and test together); got n_train={n_train}")
        if n_train + n_test > len(idx):
            raise ValueError(f"n_test must be <= {len(idx) - n_train}: there are {len(idx)} "
                             f"{what}, and n_train={n_train} of them train; got n_test={n_test}")
        order = draw(key, idx, n_train + n_test)
        Xtr, ltr = Xall[order[:n_train]], lall[order[:n_train]]
        Xte, lte = Xall[order[n_train:]], lall[order[n_train:]]
    else:
        Xtr_all, ltr_all, Xte_all, lte_all = _cifar_arrays(cache_dir, download)
        itr, ite = pick(ltr_all), pick(lte_all)
        if n_train > len(itr):
            raise ValueError(f"n_train must be <= {len(itr)}: the CIFAR-10 training split has "
                             f"{len(itr)} images of classes {classes}; got n_train={n_train}")
        if n_test > len(ite):
            raise ValueError(f"n_test must be <= {len(ite)}: the CIFAR-10 test split has "
                             f"{len(ite)} images of classes {classes}; got n_test={n_test}")
        itr, ite = draw(k_train, itr, n_train), draw(k_test, ite, n_test)
        Xtr = Xtr_all[itr].astype(np.float32) / 255.0
        Xte = Xte_all[ite].astype(np.float32) / 255.0
        ltr, lte = ltr_all[itr], lte_all[ite]
    C = Xtr.shape[-1]
    mean, std = np.zeros(C, np.float32), np.ones(C, np.float32)
    if normalize:
        x64 = Xtr.astype(np.float64)
        mean = x64.mean(axis=(0, 1, 2)).astype(np.float32)
        sd = x64.std(axis=(0, 1, 2))
        std = np.where(sd > 0, sd, 1.0).astype(np.float32)     # a constant channel stays 0
        Xtr, Xte = (Xtr - mean) / std, (Xte - mean) / std
    return Images(X=jnp.asarray(Xtr, jnp.float32), y=jnp.asarray(_targets(ltr, classes)),
                  X_test=jnp.asarray(Xte, jnp.float32), y_test=jnp.asarray(_targets(lte, classes)),
                  classes=classes, name=name, labels=jnp.asarray(ltr, jnp.int32),
                  labels_test=jnp.asarray(lte, jnp.int32),
                  class_names=tuple(names[c] for c in classes), mean=mean, std=std)


def images_or_fallback(name: str, *, fallback: str = "digits", fallback_kwargs=None,
                       **kwargs) -> Images:
    """:func:`images` of ``name``, or of ``fallback`` when ``name`` is not available here
    (:class:`DataUnavailableError`: offline without a cached copy), saying so in one printed line.

    ``kwargs`` go to both calls; ``fallback_kwargs`` (a dict) overrides some of them for the
    fallback only, e.g. smaller ``n_train`` / ``n_test`` for the 1797 digits. The result's
    ``name`` says which data set was returned. Bad arguments raise ``ValueError`` as usual, never
    a silent fallback.
    """
    _checks.choice(fallback, "fallback", IMAGE_SETS)
    if fallback_kwargs is not None and not isinstance(fallback_kwargs, dict):
        raise ValueError(f"fallback_kwargs must be a dict of arguments of images() or None; "
                         f"got {fallback_kwargs!r}")
    try:
        return images(name, **kwargs)
    except DataUnavailableError as err:
        if name == fallback:
            raise
        fb = {k: v for k, v in kwargs.items() if not (k in ("cache_dir", "download")
                                                      and fallback != "cifar10")}
        fb.update(fallback_kwargs or {})
        print(f"widenets.data: {name} is not available here ({err.reason}); using {fallback!r} "
              f"instead", flush=True)
        return images(fallback, **fb)
