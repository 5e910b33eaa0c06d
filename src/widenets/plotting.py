"""Shared figure style and small plotting helpers for the chapters."""
from __future__ import annotations

import numpy as np

from . import _checks


def _ax(ax):
    from matplotlib.axes import Axes
    if not isinstance(ax, Axes):
        raise ValueError(f"ax must be a matplotlib Axes (e.g. plt.subplots()[1]); got "
                         f"{type(ax).__name__}")
    return ax


def _positive_1d(v, argname: str, n: int | None = None) -> np.ndarray:
    v = _checks.real_array(v, argname).astype(float)
    if v.ndim != 1 or (n is not None and v.shape[0] != n):
        need = f"shape ({n},)" if n is not None else "a 1-d array"
        raise ValueError(f"{argname} must be {need}; got shape {v.shape}")
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"loglog_slope needs positive, finite {argname}; got {v}")
    return v


def style():
    """Apply the book's matplotlib style (readable fonts, light grid, no top/right spines)."""
    import matplotlib as mpl
    mpl.rcParams.update({
        "figure.figsize": (6.4, 4.0), "figure.dpi": 110, "savefig.dpi": 150,
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
        "axes.spines.right": False, "font.size": 11, "axes.titlesize": 11,
        "legend.frameon": False, "lines.linewidth": 1.8,
    })


def loglog_slope(x, y):
    """Least-squares slope and intercept of log(y) against log(x)."""
    x = _positive_1d(x, "x")
    y = _positive_1d(y, "y", n=len(x))
    if len(np.unique(x)) < 2:
        raise ValueError(f"loglog_slope needs at least two distinct x values; got {x}")
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(slope), float(intercept)


def reference_slope(ax, x, y0, slope, label=None, **kw):
    """Draw the power law ``y0 * (x / x[0])**slope`` as a dashed guide on a log-log axis."""
    ax = _ax(ax)
    x = _positive_1d(x, "x")
    y0 = _checks.nonnegative(y0, "y0", strict=True)
    slope = float(_checks.real_array(slope, "slope"))
    if not np.isfinite(slope):
        raise ValueError(f"slope must be finite; got {slope}")
    kw.setdefault("color", "0.4")
    kw.setdefault("ls", "--")
    ax.plot(x, y0 * (x / x[0]) ** slope, label=label or rf"$\propto N^{{{slope:g}}}$", **kw)


def errorband(ax, x, samples, label=None, axis=0, **kw):
    """Plot the mean over ``axis`` of ``samples`` with a +-1 standard-error band."""
    ax = _ax(ax)
    samples = _checks.real_array(samples, "samples")
    if samples.ndim not in (1, 2) or axis not in (0, 1, -1) or axis >= samples.ndim:
        raise ValueError(f"samples must be 1-d or 2-d with axis 0 or 1 the samples; got shape "
                         f"{samples.shape}, axis={axis!r}")
    _checks.finite(samples, "samples")
    m = samples.mean(axis=axis)
    if np.shape(x) != m.shape:
        raise ValueError(f"x must have one entry per point, shape {m.shape} (samples has shape "
                         f"{samples.shape}, averaged over axis {axis}); got shape {np.shape(x)}")
    se = samples.std(axis=axis, ddof=1) / np.sqrt(samples.shape[axis]) if samples.shape[axis] > 1 \
        else np.zeros_like(m)
    (line,) = ax.plot(x, m, label=label, **kw)
    ax.fill_between(x, m - se, m + se, color=line.get_color(), alpha=0.2, lw=0)
    return line


def loglog(ax):
    """Log scales on both axes, labelling only the decades (minor labels overlap on short ranges)."""
    from matplotlib.ticker import NullFormatter
    ax = _ax(ax)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


def spread_band(ax, t, samples, mean, var, width, *, sigmas=2.0, color="C0", max_lines=40,
                label=None):
    """Finite-width spread of a quantity around its infinite-width value (Chapter 5).

    Draws up to ``max_lines`` of the ``samples`` (n, T+1) as thin lines (one per network), the
    infinite-width ``mean`` (T+1,) in black and the band ``mean +- sigmas * sqrt(var / width)``
    with ``var`` (T+1,) = N Var of the quantity (the propagator's prediction). Returns the
    fraction of all sample points that lie inside the band.
    """
    ax = _ax(ax)
    samples = _checks.real_array(samples, "samples").astype(float)
    mean = _checks.real_array(mean, "mean").astype(float)
    var = _checks.real_array(var, "var").astype(float)
    t = _checks.real_array(t, "t").astype(float)
    if samples.ndim != 2 or mean.shape != (samples.shape[1],) or var.shape != mean.shape \
            or t.shape != mean.shape:
        raise ValueError(f"samples must be (n, T+1) and t, mean, var (T+1,); got shapes "
                         f"{samples.shape}, {t.shape}, {mean.shape}, {var.shape}")
    for arr, name in ((samples, "samples"), (mean, "mean"), (t, "t")):
        _checks.finite(arr, name)
    width = _checks.positive_int(width, "width")
    sigmas = _checks.nonnegative(sigmas, "sigmas", strict=True)
    max_lines = _checks.positive_int(max_lines, "max_lines", minimum=0)
    # (a variance may come out at -1e-17 from round-off; a clearly negative one is an error)
    if not np.all(np.isfinite(var)) or np.any(var < -1e-9 * np.abs(var).max()):
        raise ValueError(f"var (N Var of the quantity) must be finite and >= 0; got min "
                         f"{var.min()!r}")
    half = sigmas * np.sqrt(np.clip(var, 0.0, None) / width)
    for s in samples[:max_lines]:
        ax.plot(t, s, color=color, alpha=0.25, lw=0.8)
    ax.fill_between(t, mean - half, mean + half, color="0.5", alpha=0.3, lw=0,
                    label=rf"$\pm{sigmas:g}\sqrt{{\Sigma/N}}$ (propagator)")
    ax.plot(t, mean, "k", lw=1.8, label="DMFT mean")
    ax.plot([], [], color=color, alpha=0.6, lw=0.8, label=label or f"networks, N = {width}")
    return float(np.mean(np.abs(samples - mean) <= half))
