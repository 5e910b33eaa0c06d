"""Slider panels for live notebooks, and their static equivalents for the rendered book.

A widget's callback cannot run in static HTML, so every panel here is built on a plain
drawing function (``draw_*``) that the book calls for a grid of slider values at build time.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import kernels, nets


def draw_lazy_training(ax, task, *, width, depth, lr_fraction, steps=100, n_seeds=2,
                       activation="relu", key=None, legend=True):
    """Training loss of NTK-parameterised nets against the analytic-NTK predictor.

    ``lr_fraction`` is the learning rate as a fraction of the largest stable one,
    ``2 P / lambda_max(K)`` of the analytic NTK. Returns the networks' final test-set gap
    to the predictor (root mean square).
    """
    key = jax.random.PRNGKey(0) if key is None else key
    K = kernels.analytic(task.X, depth=depth, activation=activation).ntk
    K_test = kernels.analytic(task.X_test, task.X, depth=depth, activation=activation).ntk
    eta = lr_fraction * kernels.max_learning_rate(K)
    tr = nets.train_mlp(task.X, task.y, depth=depth, width=width, activation=activation,
                        eta=eta, steps=steps, key=key, parameterization="ntk",
                        n_seeds=n_seeds, X_test=task.X_test)
    t = np.arange(steps + 1)
    gaps = []
    for s in range(n_seeds):
        pred = kernels.gd_predictor(K, task.y, eta=eta, steps=steps, K_test=K_test,
                                    f0=task.y - tr.delta[s, 0], f0_test=tr.f_test[s, 0])
        loss_pred = 0.5 * jnp.mean((pred.f - task.y) ** 2, axis=1)
        ax.semilogy(t, np.asarray(tr.loss[s]), color="C0", alpha=0.8,
                    label="network" if s == 0 else None)
        ax.semilogy(t, np.asarray(loss_pred), color="k", ls="--", lw=1.2,
                    label="NTK predictor" if s == 0 else None)
        gaps.append(float(jnp.sqrt(jnp.mean((pred.f_test[-1] - tr.f_test[s, -1]) ** 2))))
    ax.set_ylim(bottom=1e-8)    # below ~1e-10 float32 round-off dominates the loss
    ax.set_xlabel("step $t$")
    ax.set_ylabel(r"training loss $\mathcal{L}(t)$")
    ax.set_title(f"N={width}, L={depth}, $\\eta$={lr_fraction:g}$\\,\\eta_{{max}}$\n"
                 f"test gap {np.mean(gaps):.3f}")
    if legend:
        ax.legend(loc="lower left")
    return float(np.mean(gaps))


def lazy_training_panel(task, *, widths=(64, 256, 1024, 4096), steps=100):
    """ipywidgets panel (width, depth, learning rate) around :func:`draw_lazy_training`."""
    import ipywidgets as w
    import matplotlib.pyplot as plt

    def show(width, depth, lr_fraction):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        draw_lazy_training(ax, task, width=width, depth=depth, lr_fraction=lr_fraction,
                           steps=steps)
        plt.show()

    return w.interactive(
        show,
        width=w.SelectionSlider(options=list(widths), value=widths[1], description="width N",
                                continuous_update=False),
        depth=w.IntSlider(value=2, min=1, max=4, description="depth L", continuous_update=False),
        lr_fraction=w.FloatSlider(value=0.5, min=0.05, max=1.5, step=0.05,
                                  description="η / η_max", continuous_update=False))
