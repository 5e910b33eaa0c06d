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


def draw_feature_learning(axes, task, *, width, gamma0, parameterization="mup", depth=2,
                          eta=1.0, steps=200, activation="relu", key=None):
    """Loss curve and final last-layer feature kernel of one network, on a pair of axes.

    The kernel heat map orders the samples by target, so a kernel aligned with the task shows
    two blocks. Returns ``(final loss, target alignment of Phi^L(T))``.
    """
    key = jax.random.PRNGKey(0) if key is None else key
    tr = nets.train_mlp(task.X, task.y, depth=depth, width=width, activation=activation,
                        gamma0=gamma0, eta=eta, steps=steps, key=key, n_seeds=1,
                        parameterization=parameterization, center=True)
    order = np.argsort(np.asarray(task.y))
    phi_T = np.asarray(tr.phi[0, -1, -1])[np.ix_(order, order)]
    align = float(kernels.target_alignment(tr.phi[0, -1, -1], task.y))
    ax_loss, ax_k = axes
    ax_loss.semilogy(np.asarray(tr.loss[0]))
    ax_loss.set_xlabel("step $t$")
    ax_loss.set_ylabel(r"$\mathcal{L}(t)$")
    ax_loss.set_title(f"{parameterization}, N={width}, $\\gamma_0$={gamma0:g}")
    ax_k.imshow(phi_T, cmap="viridis")
    ax_k.set_title(f"$\\Phi^L(T)$, alignment {align:.2f}")
    ax_k.set_xticks([])
    ax_k.set_yticks([])
    return float(tr.loss[0, -1]), align


def feature_learning_panel(task, *, widths=(64, 256, 1024), steps=200):
    """ipywidgets panel (gamma0, width, parameterisation) around :func:`draw_feature_learning`."""
    import ipywidgets as w
    import matplotlib.pyplot as plt

    def show(gamma0, width, parameterization):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        draw_feature_learning(axes, task, width=width, gamma0=gamma0,
                              parameterization=parameterization, steps=steps)
        fig.tight_layout()
        plt.show()

    return w.interactive(
        show,
        gamma0=w.FloatLogSlider(value=1.0, base=10, min=-1.5, max=0.5, description="γ0",
                                continuous_update=False),
        width=w.SelectionSlider(options=list(widths), value=widths[1], description="width N",
                                continuous_update=False),
        parameterization=w.ToggleButtons(options=["mup", "ntk"], description="param."))


def draw_deep_linear(axes, Kx, y, *, gamma0, depth, eta, steps=100):
    """DMFT of a deep linear net against its approximations: loss curves and the final H^L.

    ``axes``: two axes. Left: loss of the full DMFT, the static NTK, leading-order perturbation
    theory and gradient independence; right: the DMFT's last-layer kernel H^L(T) = Phi^L(T, T).
    Returns the final losses as a dict.
    """
    from . import dmft
    kw = dict(depth=depth, eta=eta, steps=steps)
    sols = {"DMFT": dmft.deep_linear(Kx, y, gamma0=gamma0, **kw),
            "static NTK": dmft.static_ntk(Kx, y, **kw),
            "perturbative": dmft.perturbative(Kx, y, gamma0=gamma0, **kw),
            "grad. independence": dmft.gradient_independence(Kx, y, gamma0=gamma0, **kw)}
    ax_loss, ax_k = axes
    for (name, s), st in zip(sols.items(), ("-", "--", "-.", ":")):
        ax_loss.semilogy(np.asarray(s.loss), ls=st, label=name)
    ax_loss.set_xlabel("step $t$")
    ax_loss.set_ylabel(r"$\mathcal{L}(t)$")
    ax_loss.set_title(f"$\\gamma_0$={gamma0:g}, L={depth}, $\\eta$={eta:g}")
    ax_loss.legend(fontsize=7)
    order = np.argsort(np.asarray(y))
    H = np.asarray(sols["DMFT"].phi[-1, -1, :, -1, :])[np.ix_(order, order)]
    ax_k.imshow(H, cmap="viridis")
    ax_k.set_title(r"DMFT $H^L(T)$")
    ax_k.set_xticks([])
    ax_k.set_yticks([])
    return {k: float(s.loss[-1]) for k, s in sols.items()}


def deep_linear_panel(Kx, y, *, steps=100):
    """ipywidgets panel (gamma0, depth, eta) around :func:`draw_deep_linear`."""
    import ipywidgets as w
    import matplotlib.pyplot as plt

    def show(gamma0, depth, eta):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        draw_deep_linear(axes, Kx, y, gamma0=gamma0, depth=depth, eta=eta, steps=steps)
        fig.tight_layout()
        plt.show()

    return w.interactive(
        show,
        gamma0=w.FloatSlider(value=1.0, min=0.0, max=3.0, step=0.1, description="γ0",
                             continuous_update=False),
        depth=w.IntSlider(value=2, min=1, max=5, description="depth L", continuous_update=False),
        eta=w.FloatSlider(value=0.1, min=0.01, max=0.5, step=0.01, description="η",
                          continuous_update=False))
