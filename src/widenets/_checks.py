"""Input validation shared by the package: errors name the argument and what was expected."""
from __future__ import annotations

import numpy as np

ACTIVATIONS = ("linear", "relu", "tanh", "erf")
PARAMETERIZATIONS = ("mup", "ntk", "standard")


def positive_int(value, argname: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{argname} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def nonnegative(value, argname: str, strict: bool = False) -> float:
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"{argname} must be a real number; got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{argname} must be a real number; got {value!r}") from None
    if not np.isfinite(v) or v < 0 or (strict and v == 0):
        need = "> 0" if strict else ">= 0"
        raise ValueError(f"{argname} must be finite and {need}; got {value!r}")
    return v


def flag(value, argname: str) -> bool:
    """A genuine boolean (``"no"`` or ``2`` are refused rather than read as True)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"{argname} must be True or False; got {value!r}")


def prng_key(key, argname: str = "key"):
    """A JAX PRNG key; an integer seed is accepted and turned into ``jax.random.PRNGKey(seed)``."""
    import jax
    import jax.numpy as jnp
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.PRNGKey(int(key))
    arr = None
    if isinstance(key, (jax.Array, np.ndarray)):
        arr = key if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else jnp.asarray(key)
    if arr is not None and (jax.dtypes.issubdtype(arr.dtype, jax.dtypes.prng_key)
                            and arr.shape == ()
                            or arr.dtype == jnp.uint32 and arr.shape == (2,)):
        return arr
    raise ValueError(f"{argname} must be a JAX PRNG key (jax.random.PRNGKey(seed) or "
                     f"jax.random.key(seed)) or an integer seed; got {key!r}")


def memory_limit() -> int:
    """Bytes a single request may use: 70% of the accelerator's memory, or of the machine's
    physical memory on a CPU (``WIDENETS_MEMORY_LIMIT`` overrides, in bytes)."""
    import os
    env = os.environ.get("WIDENETS_MEMORY_LIMIT")
    if env:
        return int(float(env))
    try:
        import jax
        dev = jax.devices()[0]
        if dev.platform != "cpu":
            stats = dev.memory_stats() or {}
            if stats.get("bytes_limit"):
                return int(0.7 * stats["bytes_limit"])
    except Exception:   # no backend details: fall back to the host's memory
        pass
    return int(0.7 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def fits(nbytes: float, argname: str, what: str) -> None:
    """Refuse a request whose estimated memory exceeds :func:`memory_limit`, before allocating.

    ``argname`` names the argument to reduce; ``what`` describes the request.
    """
    limit = memory_limit()
    if nbytes > limit:
        raise ValueError(f"{what} would need about {_gib(nbytes)} of memory, more than the "
                         f"{_gib(limit)} available here: reduce {argname}")


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def choice(value, argname: str, options) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{argname} must be one of {tuple(options)}; got {value!r}")
    return value


def inputs(X, argname: str = "X") -> np.ndarray:
    X = np.asarray(X)
    if X.dtype.kind in "biu":   # integer or boolean features train as floats
        X = X.astype(np.float64 if _x64() else np.float32)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"{argname} must have shape (P, D) with P, D >= 1; got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{argname} contains NaN or infinite entries")
    return X


def targets(y, P: int, argname: str = "y") -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != P:
        raise ValueError(f"{argname} must have shape ({P},) to match the inputs; got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{argname} contains NaN or infinite entries")
    return y


def kernel_matrix(K, argname: str = "Kx", P: int | None = None, tol: float = 1e-8) -> np.ndarray:
    """A symmetric positive semi-definite (P, P) matrix, else a ValueError that says why."""
    K_in = np.asarray(K)
    if np.issubdtype(K_in.dtype, np.floating):   # round-off of the input's own precision
        tol = max(tol, 64 * float(np.finfo(K_in.dtype).eps))
    K = K_in.astype(np.float64)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"{argname} must be a square (P, P) matrix; got shape {K.shape}")
    if P is not None and K.shape[0] != P:
        raise ValueError(f"{argname} must have shape ({P}, {P}); got shape {K.shape}")
    if not np.all(np.isfinite(K)):
        raise ValueError(f"{argname} contains NaN or infinite entries")
    scale = max(1.0, float(np.max(np.abs(K))))
    asym = float(np.max(np.abs(K - K.T)))
    if asym > tol * scale:
        raise ValueError(f"{argname} must be symmetric; max |K - K^T| is {asym:.3g}")
    lam = float(np.linalg.eigvalsh((K + K.T) / 2)[0])
    if lam < -1e-6 * scale:
        raise ValueError(f"{argname} must be symmetric positive semi-definite; "
                         f"smallest eigenvalue is {lam:.3g}")
    return K


def _x64() -> bool:
    import jax
    return bool(jax.config.jax_enable_x64)
