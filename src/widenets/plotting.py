"""Shared figure style and small plotting helpers for the chapters."""
from __future__ import annotations

import numpy as np


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
    x, y = np.asarray(x, float), np.asarray(y, float)
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("loglog_slope needs positive x and y")
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(slope), float(intercept)


def reference_slope(ax, x, y0, slope, label=None, **kw):
    """Draw the power law ``y0 * (x / x[0])**slope`` as a dashed guide on a log-log axis."""
    x = np.asarray(x, float)
    kw.setdefault("color", "0.4")
    kw.setdefault("ls", "--")
    ax.plot(x, y0 * (x / x[0]) ** slope, label=label or rf"$\propto N^{{{slope:g}}}$", **kw)


def errorband(ax, x, samples, label=None, axis=0, **kw):
    """Plot the mean over ``axis`` of ``samples`` with a +-1 standard-error band."""
    samples = np.asarray(samples)
    m = samples.mean(axis=axis)
    se = samples.std(axis=axis, ddof=1) / np.sqrt(samples.shape[axis]) if samples.shape[axis] > 1 \
        else np.zeros_like(m)
    (line,) = ax.plot(x, m, label=label, **kw)
    ax.fill_between(x, m - se, m + se, color=line.get_color(), alpha=0.2, lw=0)
    return line


def loglog(ax):
    """Log scales on both axes, labelling only the decades (minor labels overlap on short ranges)."""
    from matplotlib.ticker import NullFormatter
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
