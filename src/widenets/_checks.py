"""Input validation shared by the package: errors name the argument and what was expected."""
from __future__ import annotations

import numpy as np

ACTIVATIONS = ("linear", "relu", "tanh", "erf")
PARAMETERIZATIONS = ("mup", "ntk", "standard")


def positive_int(value, argname: str, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer >= ``minimum`` (and <= ``maximum`` if given); bools, floats such as 8.0 or
    8.9 and strings are refused rather than rounded."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{argname} must be an integer >= {minimum}; got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{argname} must be an integer <= {maximum}; got {value!r}")
    return int(value)


def int_list(values, argname: str, minimum: int = 1, min_len: int = 1) -> list:
    """A non-empty sequence of integers >= ``minimum`` (no rounding of 8.9 to 8, no bools or
    strings); a single integer counts as a list of one."""
    if isinstance(values, (str, bytes, dict, set)):
        raise ValueError(f"{argname} must be a list of integers; got {values!r}")
    arr = np.asarray(values, dtype=object)
    if arr.ndim > 1:
        raise ValueError(f"{argname} must be a flat list of integers; got shape {arr.shape}")
    items = list(np.atleast_1d(arr))
    if len(items) < min_len:
        raise ValueError(f"{argname} must hold at least {min_len} integer(s); got {values!r}")
    return [positive_int(v, argname, minimum) for v in items]


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
        if not -2**63 <= int(key) < 2**64:
            raise ValueError(f"{argname}: an integer seed must fit in 64 bits; got {key!r}")
        return jax.random.PRNGKey(int(key))
    if isinstance(key, (jax.Array, np.ndarray)):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            if key.shape == ():
                return key
        elif key.dtype == np.uint32 and key.shape == (2,):   # a raw key, jax.random.PRNGKey(s)
            return key if isinstance(key, jax.Array) else jnp.asarray(key)
    raise ValueError(f"{argname} must be a JAX PRNG key (jax.random.PRNGKey(seed) or "
                     f"jax.random.key(seed)) or an integer seed; got {key!r}")


def is_traced(x) -> bool:
    """True for a JAX tracer (inside jit / vmap / grad), whose values cannot be inspected."""
    import jax
    return isinstance(x, jax.core.Tracer)


def memory_limit() -> int:
    """Bytes a single request may use: on an accelerator, 90% of what its allocator has left
    (XLA's pool, ``bytes_limit``, minus the buffers in use); on a CPU, 70% of the machine's
    physical memory, or less when a container's cgroup or ``ulimit -v`` allows less
    (:func:`_imposed_limit`). ``WIDENETS_MEMORY_LIMIT`` (bytes) overrides all of these."""
    import os
    env = os.environ.get("WIDENETS_MEMORY_LIMIT", "").strip()
    if env:
        try:
            limit = float(env)
        except ValueError:
            limit = float("nan")
        if not np.isfinite(limit) or limit <= 0:
            raise ValueError(f"WIDENETS_MEMORY_LIMIT must be a positive number of bytes; got {env!r}")
        return int(limit)
    try:
        import jax
        dev = jax.devices()[0]
        if dev.platform != "cpu":
            stats = dev.memory_stats() or {}
            if stats.get("bytes_limit"):
                return int(0.9 * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
    except Exception:   # no backend details: fall back to the host's memory
        pass
    limit = 0.7 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(min(limit, _imposed_limit()))


def _imposed_limit() -> float:
    """What a limit imposed on this process leaves free (inf when none): a cgroup's memory.max
    (containers, CI runners) minus its usage, and an address-space limit (``ulimit -v``) minus
    the address space in use; 90% of the smallest."""
    import resource
    free = [float("inf")]
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            cap = f.read().strip()
        if cap != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                free.append(float(cap) - float(f.read().strip()))
    except (OSError, ValueError):
        pass
    for which in ("RLIMIT_AS", "RLIMIT_DATA"):
        soft = resource.getrlimit(getattr(resource, which))[0]
        if soft != resource.RLIM_INFINITY:
            try:
                with open("/proc/self/status") as f:
                    field = "VmSize" if which == "RLIMIT_AS" else "VmData"
                    used = next(float(line.split()[1]) * 1024 for line in f
                                if line.startswith(field + ":"))
            except (OSError, StopIteration, ValueError):
                used = 0.0
            free.append(soft - used)
    return 0.9 * max(min(free), 0.0)


def fits(nbytes: float, argname: str, what: str) -> None:
    """Refuse a request whose estimated memory exceeds :func:`memory_limit`, before allocating.

    ``argname`` names the argument to reduce; ``what`` describes the request.
    """
    limit = memory_limit()
    if not nbytes <= limit:          # also refuses a NaN estimate
        raise ValueError(f"{what} would need about {_gib(nbytes)} of memory, more than the "
                         f"{_gib(limit)} available here (WIDENETS_MEMORY_LIMIT sets the limit): "
                         f"reduce {argname}")


def _gib(n: float) -> str:
    n = float(n)
    if n >= 2**70:
        return f"{n:.3g} bytes"
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def choice(value, argname: str, options) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{argname} must be one of {tuple(options)}; got {value!r}")
    return value


def real_array(A, argname: str) -> np.ndarray:
    """``A`` as a NumPy array of real numbers (integers and booleans become floats), else a
    ValueError that names the argument: strings, complex numbers, None or ragged lists."""
    if A is None or isinstance(A, (str, bytes, dict, set)):
        raise ValueError(f"{argname} must be an array of real numbers; got {type(A).__name__}")
    try:
        A = np.asarray(A)
    except (TypeError, ValueError) as err:   # ragged nested lists
        raise ValueError(f"{argname} must be an array of real numbers; {err}") from None
    if A.dtype.kind == "O":
        try:
            A = A.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{argname} must be an array of real numbers; got entries of "
                             f"type {type(A.flat[0]).__name__ if A.size else 'object'}") from None
    if A.dtype.kind in "biu":   # integer or boolean entries count as floats
        A = A.astype(np.float64 if _x64() else np.float32)
    if A.dtype.kind != "f":
        raise ValueError(f"{argname} must be an array of real numbers; got dtype {A.dtype}")
    return A


def finite(A, argname: str) -> None:
    """Refuse NaN or infinite entries (traced arrays, whose values are unknown, pass)."""
    if is_traced(A):
        return
    bad = ~np.isfinite(np.asarray(A))
    if np.any(bad):
        raise ValueError(f"{argname} contains NaN or infinite entries "
                         f"({int(bad.sum())} of {bad.size})")


def representable(A, argname: str, power: int = 1) -> None:
    """Refuse entries whose ``power``-th power overflows JAX's working float type (float32
    unless float64 is enabled): an input of 1e200 would become inf on conversion, a target
    whose square overflows makes the loss inf. Traced arrays pass."""
    if is_traced(A) or np.size(A) == 0:
        return
    dt = np.dtype(np.float64 if _x64() else np.float32)
    big = float(np.max(np.abs(np.asarray(A, np.float64))))
    limit = (float(np.finfo(dt).max) / 16) ** (1.0 / power)
    if big > limit:
        what = "" if power == 1 else (" when squared (in the loss and the kernels)"
                                      if power == 2 else f" in its {power}th power")
        raise ValueError(f"{argname} is too large for {dt.name}: its largest entry {big:.3g} "
                         f"overflows{what} (limit {limit:.3g}); rescale {argname}"
                         + ("" if dt == np.float64 else " or enable float64"))


def inputs(X, argname: str = "X") -> np.ndarray:
    X = real_array(X, argname)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"{argname} must have shape (P, D) with P, D >= 1; got shape {X.shape}")
    finite(X, argname)
    representable(X, argname)
    return X


def targets(y, P: int, argname: str = "y") -> np.ndarray:
    y = real_array(y, argname)
    if y.ndim != 1 or y.shape[0] != P:
        raise ValueError(f"{argname} must have shape ({P},) to match the inputs; got shape {y.shape}")
    finite(y, argname)
    representable(y, argname, power=2)
    return y


def kernel_matrix(K, argname: str = "Kx", P: int | None = None, tol: float = 1e-5) -> np.ndarray:
    """A symmetric positive semi-definite (P, P) matrix (float64, returned symmetrised), else a
    ValueError that says why.

    Symmetry and semi-definiteness are checked to ``tol`` relative to the largest entry: the
    round-off of a float32 kernel (the package's kernels, the empirical NTK) is ~1e-7 to 1e-6
    relative, and stays so when the kernel is cast to float64 before it is passed in."""
    K_in = real_array(K, argname)
    if np.issubdtype(K_in.dtype, np.floating):   # round-off of the input's own precision
        tol = max(tol, 64 * float(np.finfo(K_in.dtype).eps))
    K = K_in.astype(np.float64)
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] < 1:
        raise ValueError(f"{argname} must be a non-empty square (P, P) matrix; got shape {K.shape}")
    if P is not None and K.shape[0] != P:
        raise ValueError(f"{argname} must have shape ({P}, {P}); got shape {K.shape}")
    if not np.all(np.isfinite(K)):
        raise ValueError(f"{argname} contains NaN or infinite entries")
    scale = max(1.0, float(np.max(np.abs(K))))
    asym = float(np.max(np.abs(K - K.T)))
    if asym > tol * scale:
        raise ValueError(f"{argname} must be symmetric; max |K - K^T| is {asym:.3g}")
    lam = float(np.linalg.eigvalsh(K / 2 + K.T / 2)[0])
    if lam < -tol * scale:
        raise ValueError(f"{argname} must be symmetric positive semi-definite; "
                         f"smallest eigenvalue is {lam:.3g}")
    return K / 2 + K.T / 2          # symmetric to the last bit: the solvers may rely on it


def _x64() -> bool:
    import jax
    return bool(jax.config.jax_enable_x64)


def stable_eta(K0, P: int) -> float:
    """The largest stable learning rate 2P / lambda_max(K) of the error dynamics
    ``delta <- delta - (eta/P) K delta`` at kernel ``K0`` (inf for a zero kernel, NaN when
    ``K0`` is not finite)."""
    K0 = np.asarray(K0, np.float64)
    if not np.all(np.isfinite(K0)):
        return float("nan")
    lam = float(np.linalg.eigvalsh(K0 / 2 + K0.T / 2)[-1])
    return 2 * P / lam if lam > 0 else float("inf")


GROWTH = 10.0   # a final loss this many times the initial one is reported as divergence


def divergence(loss, K0, eta: float, what: str, stable_cause: str) -> str | None:
    """A message when a trajectory diverged, else None.

    Diverged means: a non-finite loss, a final loss above ``GROWTH`` times the initial one, or,
    with eta above the stable rate, a final loss above the initial one (a catapult that comes
    back down is not divergence). The message names eta and the stable
    learning rate 2P/lambda_max(K(0)); when eta is below it, ``stable_cause`` says what grew
    instead (the kernel under feature learning, an expansion in gamma0, ...)."""
    loss = np.asarray(loss, np.float64).reshape(len(loss), -1).max(axis=1)
    P = np.shape(K0)[-1]
    eta_max = stable_eta(K0, P)
    finite = np.isfinite(loss)
    if np.all(finite):
        l0, lT = float(loss[0]), float(loss[-1])
        unstable = np.isfinite(eta_max) and eta > eta_max
        if not (l0 > 0 and (lT > GROWTH * l0 or (unstable and lT > l0))):
            return None
        grew = f"the loss grew from {l0:.3g} to {lT:.3g} in {len(loss) - 1} steps"
    else:
        grew = f"the loss is not finite from step {int(np.argmin(finite))}"
    if np.isfinite(eta_max) and eta > eta_max:
        cause = (f"eta={eta:g} is above the stable learning rate 2P/lambda_max(K(0)) = "
                 f"{eta_max:.3g}: lower eta")
    elif np.isnan(eta_max):
        cause = "the initial kernel is not finite (the inputs' scale or gamma0)"
    else:
        cause = (f"eta={eta:g} is below the stable learning rate 2P/lambda_max(K(0)) = "
                 f"{eta_max:.3g}, so {stable_cause}")
    return f"{what} diverged: {grew}; {cause}"
