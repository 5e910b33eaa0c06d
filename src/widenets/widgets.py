"""Slider panels for live notebooks, and their static equivalents for the rendered book.

A widget's callback cannot run in static HTML, so every panel here is built on a plain
drawing function (``draw_*``) that the book calls for a grid of slider values at build time.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks, kernels, nets


def _axes(ax, n: int, argname: str = "ax"):
    """``n`` matplotlib Axes (one Axes when n == 1), else a ValueError saying what is needed."""
    from matplotlib.axes import Axes
    if n == 1:
        if not isinstance(ax, Axes):
            raise ValueError(f"{argname} must be a matplotlib Axes (e.g. plt.subplots()[1]); "
                             f"got {type(ax).__name__}")
        return ax
    try:
        axes = list(np.ravel(np.asarray(ax, dtype=object)))
    except TypeError:
        axes = []
    if len(axes) != n or not all(isinstance(a, Axes) for a in axes):
        raise ValueError(f"{argname} must be {n} matplotlib Axes (e.g. plt.subplots(1, {n})[1]); "
                         f"got {ax!r}")
    return axes


def _task(task, need_test: bool = False):
    """A :class:`widenets.data.Task` with finite inputs and targets (and test points if needed)."""
    from .data import Task
    if not isinstance(task, Task):
        raise ValueError(f"task must be a widenets.data.Task (e.g. wn.data.gaussian_task(...)); "
                         f"got {type(task).__name__}")
    X = _checks.inputs(task.X, "task.X")
    _checks.targets(task.y, X.shape[0], "task.y")
    if need_test:
        if task.X_test is None:
            raise ValueError("task must have test points (task.X_test), e.g. "
                             "wn.data.gaussian_task(key, P, D, P_test=50)")
        Xt = _checks.inputs(task.X_test, "task.X_test")
        if Xt.shape[1] != X.shape[1]:
            raise ValueError(f"task.X_test must have D={X.shape[1]} columns like task.X; "
                             f"got shape {Xt.shape}")
    return task


def _key(key):
    return jax.random.PRNGKey(0) if key is None else _checks.prng_key(key, "key")


def _alignment(K, y) -> float:
    """Target alignment of K, or NaN (no error: the panel still draws the rest) for a kernel
    that diverged; the trainer or solver has already warned why."""
    K = np.asarray(K, np.float64)
    if not np.all(np.isfinite(K)):
        return float("nan")
    return float(kernels.target_alignment(K, y))


def _slider_widths(widths):
    """At least two distinct widths for a width slider (its default is the second one)."""
    widths = _checks.int_list(widths, "widths")
    if len(widths) < 2 or len(set(widths)) != len(widths):
        raise ValueError(f"widths must hold at least two distinct widths for the slider "
                         f"(it starts at the second); got {widths}")
    return widths


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


class Panel:
    """A live panel: its controls, a status line and the figure ``draw`` makes of their values.

    Each change of a control redraws: the status line says "computing…" while ``draw(axes,
    **values)`` runs (on ``ncols`` new axes, one Axes when ``ncols == 1``), then the values,
    what ``summary`` makes of the draw's result and the time it took. Displayed in a notebook it
    is an ipywidgets VBox (``.widget``). ``values()`` are the controls' current values,
    ``result`` and ``seconds`` those of the last draw; ``describe(values, result)`` is the
    status line's text, so that a static figure drawn by ``draw`` with the same values can be
    compared with what the panel shows; ``warnings``: what the last draw warned about (also
    shown in the status line, under the values). The first draw happens on creation; a draw that fails
    then is raised to the caller (ipywidgets only logs an error raised in a callback), a later
    one is shown in the status line and the output.
    """

    def __init__(self, draw, *, ncols=1, figsize=(7.0, 4.2), summary=None, prepare=(),
                 **controls):
        import ipywidgets as w

        self.draw, self.ncols, self.figsize = draw, ncols, figsize
        self.summary = summary if summary is not None else _fmt
        self.controls = controls
        self.prepare = tuple(k for k in prepare if k in controls)
        self.status = w.HTML(value="computing…")
        self.output = w.Output()
        self.widget = w.VBox([*controls.values(), self.status, self.output],
                             layout=w.Layout(width="100%"))
        self.result, self.seconds, self.error, self.warnings = None, None, None, []
        self.prepared, self._pending, self._shown = set(), [], ""
        self.redraw()
        if self.error is not None:
            self.close()
            raise self.error
        for c in controls.values():
            c.observe(self.redraw, names="value")

    # -- preparing the programs of the settings a reader moves to next ---------------------
    # A control named in ``prepare`` changes the shapes of the computation (a width, a depth, a
    # batch size) or what is compiled (an activation): its first visit to a value compiles new
    # programs, which takes seconds. After each draw the panel prepares, while the kernel is
    # idle, the settings one move away along those controls: each is drawn once off-screen (no
    # figure shown, warnings dropped), one per turn of the kernel's event loop, so that a move
    # of a slider waits for at most one of them. The status line says "preparing…" meanwhile.
    # Not in batch runs (WIDENETS_PANEL_PREPARE=0: the book's executions), nor outside a kernel.

    def _signature(self, values) -> tuple:
        return tuple(values[k] for k in self.prepare)

    def _options(self, name) -> list:
        c = self.controls[name]
        if hasattr(c, "options"):
            return [o[1] if isinstance(o, tuple) else o for o in c.options]
        return list(range(c.min, c.max + 1)) if isinstance(c.value, int) else []

    def _schedule(self, values) -> None:
        import os
        if not self.prepare or os.environ.get("WIDENETS_PANEL_PREPARE", "1") == "0":
            return
        try:
            from IPython import get_ipython
            loop = get_ipython().kernel.io_loop
        except Exception:           # not in a kernel: nothing to prepare for
            return
        self.prepared.add(self._signature(values))
        near = [dict(values, **{k: v}) for k in self.prepare for v in self._options(k)]
        self._pending = [v for v in near if self._signature(v) not in self.prepared]
        if self._pending:
            self.status.value = self._shown + f"<br><i>preparing {len(self._pending)} nearby settings…</i>"
            loop.call_later(0.05, self._prepare_one, loop)

    def _prepare_one(self, loop) -> None:
        import warnings

        from matplotlib.figure import Figure
        while self._pending and self._signature(self._pending[0]) in self.prepared:
            self._pending.pop(0)
        if not self._pending:
            self.status.value = self._shown
            return
        values = self._pending.pop(0)
        self.prepared.add(self._signature(values))
        fig = Figure(figsize=self.figsize)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.draw(fig.subplots(1, self.ncols), **values)
        except Exception:           # a setting that cannot be drawn says so when it is chosen
            pass
        left = sum(self._signature(v) not in self.prepared for v in self._pending)
        self.status.value = self._shown + (f"<br><i>preparing {left} nearby settings…</i>"
                                           if left else "")
        if left:
            loop.call_later(0.05, self._prepare_one, loop)

    def values(self) -> dict:
        return {k: c.value for k, c in self.controls.items()}

    def describe(self, values, result) -> str:
        shown = ", ".join(f"{self.controls[k].description} = {_fmt(v)}" for k, v in values.items())
        return f"{shown} → {self.summary(result)}"

    def redraw(self, change=None) -> None:
        import html
        import time
        import warnings

        import matplotlib.pyplot as plt

        values = self.values()
        self.status.value = "<i>computing…</i>"
        t0 = time.perf_counter()
        self.error = None
        with self.output, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.output.clear_output(wait=True)
            fig, axes = plt.subplots(1, self.ncols, figsize=self.figsize)
            try:
                result = self.draw(axes, **values)
            except Exception as err:      # shown here; raised to the caller on creation
                plt.close(fig)
                self.error = err
                self.status.value = f"<b>could not draw</b>: {html.escape(f'{type(err).__name__}: {err}')}"
                return
            fig.tight_layout()
            plt.show()
        self.result, self.seconds = result, time.perf_counter() - t0
        # what the solvers and trainers warned about (a divergence, say) goes in the status
        # line, under the figure's values, instead of a stderr block beside the figure
        said = list(dict.fromkeys(str(m.message) for m in caught))
        self.warnings = said
        self._shown = (f"{html.escape(self.describe(values, result))} "
                       f"<i>({self.seconds:.1f} s)</i>"
                       + "".join(f"<br>⚠ {html.escape(m)}" for m in said))
        self.status.value = self._shown
        self._schedule(values)

    def close(self) -> None:
        for c in self.controls.values():
            c.close()
        self.widget.close()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def panel(draw, *, ncols=1, figsize=(7.0, 4.2), summary=None, prepare=(), **controls) -> Panel:
    """A :class:`Panel` around ``draw(axes, **values)`` with the given ipywidgets controls (name
    = the draw's keyword), for a notebook's own drawing function. ``summary`` formats the draw's
    result for the status line (default: as it is); ``prepare`` names the controls whose values
    change what is compiled (widths, depths, batch sizes): the panel prepares their neighbouring
    settings while the kernel is idle."""
    import ipywidgets as w

    if not callable(draw):
        raise ValueError(f"draw must be a function draw(axes, **values); got {type(draw).__name__}")
    ncols = _checks.positive_int(ncols, "ncols")
    if not controls or not all(isinstance(c, w.ValueWidget) for c in controls.values()):
        raise ValueError("give the controls as keyword arguments, each an ipywidgets control "
                         "(e.g. width=ipywidgets.IntSlider(...))")
    return Panel(draw, ncols=ncols, figsize=figsize, summary=summary, prepare=prepare,
                 **controls)


def draw_lazy_training(ax, task, *, width, depth, lr_fraction, steps=100, n_seeds=2,
                       activation="relu", key=None, legend=True):
    """Training loss of NTK-parameterised nets against the analytic-NTK predictor.

    ``lr_fraction`` is the learning rate as a fraction of the largest stable one,
    ``2 P / lambda_max(K)`` of the analytic NTK. Returns the networks' final test-set gap
    to the predictor (root mean square).
    """
    ax = _axes(ax, 1)
    task = _task(task, need_test=True)
    lr_fraction = _checks.nonnegative(lr_fraction, "lr_fraction", strict=True)
    legend = _checks.flag(legend, "legend")
    key = _key(key)
    K = kernels.analytic(task.X, depth=depth, activation=activation).ntk
    K_test = kernels.analytic(task.X_test, task.X, depth=depth, activation=activation).ntk
    eta = lr_fraction * kernels.max_learning_rate(K)
    if lr_fraction > 1:
        import warnings
        warnings.warn(f"lr_fraction={lr_fraction:g} > 1: eta = {eta:.3g} is above the largest "
                      f"stable learning rate of the analytic NTK, so the lazy networks and the "
                      f"predictor diverge", RuntimeWarning, stacklevel=2)
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
    """ipywidgets panel (width, depth, learning rate) around :func:`draw_lazy_training`.

    ``widths``: at least two distinct widths (the slider starts at the second).
    """
    import ipywidgets as w

    task = _task(task, need_test=True)
    widths = _slider_widths(widths)
    steps = _checks.positive_int(steps, "steps")
    # the widest, deepest setting of the sliders must fit (an error in a callback is only logged)
    net = nets.make_mlp(task.X.shape[1], depth=4, width=max(widths), parameterization="ntk")
    _checks.fits(*nets._train_bytes(net, task.X.shape[0], task.X_test.shape[0], steps=steps,
                                   record_every=steps, n_seeds=2))

    return Panel(
        lambda ax, **v: draw_lazy_training(ax, task, steps=steps, **v), ncols=1, figsize=(5.5, 3.8),
        prepare=("width", "depth"),
        summary=lambda gap: f"test gap to the NTK predictor {gap:.4f}",
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
    axes = _axes(axes, 2, "axes")
    task = _task(task)
    key = _key(key)
    tr = nets.train_mlp(task.X, task.y, depth=depth, width=width, activation=activation,
                        gamma0=gamma0, eta=eta, steps=steps, key=key, n_seeds=1,
                        parameterization=parameterization, center=True)
    order = np.argsort(np.asarray(task.y))
    phi_T = np.asarray(tr.phi[0, -1, -1])[np.ix_(order, order)]
    align = _alignment(tr.phi[0, -1, -1], task.y)
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
    """ipywidgets panel (gamma0, width, parameterisation) around :func:`draw_feature_learning`.

    ``widths``: at least two distinct widths (the slider starts at the second).
    """
    import ipywidgets as w

    task = _task(task)
    widths = _slider_widths(widths)
    steps = _checks.positive_int(steps, "steps")
    net = nets.make_mlp(task.X.shape[1], depth=2, width=max(widths))
    _checks.fits(*nets._train_bytes(net, task.X.shape[0], steps=steps, record_every=steps))

    return Panel(
        lambda axes, **v: draw_feature_learning(axes, task, steps=steps, **v), ncols=2,
        figsize=(9, 3.6), prepare=("width", "parameterization"), summary=lambda r: f"final loss {r[0]:.4g}, alignment {r[1]:.3f}",
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
    axes = _axes(axes, 2, "axes")
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

    # a panel's callback only logs its errors: check the data before building it
    Kx = _checks.kernel_matrix(Kx, "Kx")
    y = _checks.targets(y, Kx.shape[0], "y")
    steps = _checks.positive_int(steps, "steps")

    return Panel(
        lambda axes, **v: draw_deep_linear(axes, Kx, y, steps=steps, **v), ncols=2,
        figsize=(9, 3.6), prepare=("depth",),
        summary=lambda r: "final loss: " + ", ".join(f"{k} {v:.4g}" for k, v in r.items()),
        gamma0=w.FloatSlider(value=1.0, min=0.0, max=3.0, step=0.1, description="γ0",
                             continuous_update=False),
        depth=w.IntSlider(value=2, min=1, max=5, description="depth L", continuous_update=False),
        eta=w.FloatSlider(value=0.1, min=0.01, max=0.5, step=0.01, description="η",
                          continuous_update=False))


def draw_nonlinear(axes, X, y, *, gamma0, activation="relu", depth=1, eta=0.075, steps=50,
                   samples=1000, width=1000, n_seeds=4, key=None, repeats=8, probes=None):
    """Monte-Carlo DMFT of a nonlinear network against finite networks, on three axes.

    Left: the loss of the DMFT (band: +-3 Monte-Carlo standard errors), of the static NTK (the
    same solver at gamma0 = 0) and of ``n_seeds`` centred muP networks of width ``width`` (their
    mean); middle: the DMFT's last-layer feature kernel Phi^L(T, T), samples ordered by target;
    right: the density of the last layer's pre-activations h^L(T) on the first example, the DMFT's
    ``samples`` single-site neurons against the networks' neurons (all seeds), with the Gaussian
    of the DMFT's variance. ``width=None`` leaves the networks out (networks need gamma0 > 0).
    ``repeats`` and ``probes`` go to :func:`widenets.dmft.nonlinear`: the independent sub-solves
    behind the band, and the tangent probes per neuron at depth >= 2. Together most of a deep
    solve's time (S = 500, depth 3, T = 50, P = 10, idle 2-core CPU: 2.0 s with 4 repeats and
    the default 5 probes, 1.2 s with 1 probe); fewer make a redraw faster, the band noisier and
    less certain (one probe moved the final loss by about as much as a new key did).
    Returns a dict: final losses (``"dmft"``, ``"static"``, ``"networks"``), the target
    alignment of Phi^L(T) (``"alignment"``) and the excess kurtosis of h^L(T) averaged over the
    examples (``"kurtosis"``, ``"kurtosis_networks"``); network entries are None without them.
    """
    from scipy.stats import kurtosis   # excess kurtosis: 0 for a Gaussian

    from . import data, dmft
    axes = _axes(axes, 3, "axes")
    key = _key(key)
    k_dmft, k_net = jax.random.split(key)
    X = jnp.asarray(_checks.inputs(X, "X"))
    y = jnp.asarray(_checks.targets(y, X.shape[0], "y"), X.dtype)
    if width is not None:
        width = _checks.positive_int(width, "width")
        n_seeds = _checks.positive_int(n_seeds, "n_seeds")
    Kx = data.input_kernel(X)
    kw = dict(depth=depth, activation=activation, eta=eta, steps=steps, samples=samples,
              key=k_dmft, repeats=repeats, probes=probes)
    sol = dmft.nonlinear(Kx, y, gamma0=gamma0, **kw)
    lazy = _static_ntk_cached(Kx, y, **kw)
    tr = None
    if width is not None:
        tr = nets.train_mlp(X, y, depth=depth, width=width, activation=activation,
                            gamma0=gamma0, eta=eta, steps=steps, key=k_net,
                            n_seeds=n_seeds, center=True)
    ax_loss, ax_k, ax_h = axes
    t = np.arange(steps + 1)
    loss, err = np.asarray(sol.loss), 3 * np.asarray(sol.loss_stderr)
    ax_loss.plot(t, loss, "k", label="DMFT")
    ax_loss.fill_between(t, loss - err, loss + err, color="k", alpha=0.2, lw=0)
    ax_loss.plot(t, np.asarray(lazy.loss), "k--", lw=1.2, label=r"static NTK ($\gamma_0$ = 0)")
    if tr is not None:
        ax_loss.plot(t, np.asarray(tr.loss.mean(0)), color="C1", ls=":", lw=2.2,
                     label=f"networks, N = {width}")
    ax_loss.set_xlabel("step $t$")
    ax_loss.set_ylabel(r"$\mathcal{L}(t)$")
    ax_loss.set_title(f"{activation}, L={depth}, $\\gamma_0$={gamma0:g}")
    ax_loss.legend(fontsize=7)
    order = np.argsort(np.asarray(y))
    phi_T = np.asarray(sol.phi[-1, -1, :, -1, :])
    align = _alignment(phi_T, y)
    ax_k.imshow(phi_T[np.ix_(order, order)], cmap="viridis")
    ax_k.set_title(f"DMFT $\\Phi^L(T)$, alignment with $yy^\\top$ {align:.2f}")
    ax_k.set_xticks([])
    ax_k.set_yticks([])
    h = np.asarray(sol.h[-1, -1])                                   # (S, P)
    kurt = float(np.mean(kurtosis(h, axis=0)))
    kurt_net, h_net = None, None
    if tr is not None:
        h_net = np.asarray(jax.vmap(lambda p: nets.forward(tr.net, p, X)[0][-1])(tr.params))
        kurt_net = float(np.mean(kurtosis(h_net, axis=-1)))  # (seeds, P) -> mean
        h_net = h_net[:, 0].ravel()
    lim = float(np.max(np.abs(h[:, 0]))) if h_net is None else \
        float(max(np.max(np.abs(h[:, 0])), np.max(np.abs(h_net))))
    bins = np.linspace(-lim, lim, 41)
    if h_net is not None:
        ax_h.hist(h_net, bins=bins, density=True, color="C1", alpha=0.4,
                  label=f"networks ($\\kappa$ = {kurt_net:.2f})")
    ax_h.hist(h[:, 0], bins=bins, density=True, histtype="step", color="k", lw=1.5,
              label=f"DMFT ($\\kappa$ = {kurt:.2f})")
    sd = float(np.std(h[:, 0]))
    ax_h.plot(bins, np.exp(-bins ** 2 / (2 * sd ** 2)) / np.sqrt(2 * np.pi * sd ** 2), "--",
              color="0.5", lw=1, label="Gaussian")
    ax_h.set_yscale("log")
    # plain decade labels and no minor ticks: the default mathtext labels took half of the
    # figure's rendering time (0.45 of 0.79 s per redraw)
    from matplotlib import ticker
    ax_h.yaxis.set_major_locator(ticker.LogLocator(numticks=5))
    ax_h.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax_h.yaxis.set_minor_locator(ticker.NullLocator())
    ax_h.set_xlabel(r"$h^L_1(T)$")
    ax_h.set_ylabel("density")
    ax_h.set_title(r"pre-activations, $\kappa$: excess kurtosis")
    ax_h.legend(fontsize=7)
    return {"dmft": float(sol.loss[-1]), "static": float(lazy.loss[-1]),
            "networks": None if tr is None else float(tr.loss[:, -1].mean()),
            "alignment": align, "kurtosis": kurt, "kurtosis_networks": kurt_net}


# The static-NTK solve of draw_nonlinear does not depend on gamma0: moving the gamma0 slider, or
# a static grid over gamma0, reuses it (the last few are kept, keyed by the inputs and settings).
_LAZY: dict = {}


def _static_ntk_cached(Kx, y, *, depth, activation, eta, steps, samples, key, repeats, probes):
    from . import dmft
    ck = (dmft._digest(Kx, y, key), depth, activation, float(eta), steps, samples, repeats,
          probes)
    if ck not in _LAZY:
        # the Monte-Carlo solver at gamma0 = 0 (what static_ntk runs for a nonlinear
        # activation), for "linear" too, which static_ntk solves exactly and without samples
        _LAZY[ck] = dmft.nonlinear(Kx, y, depth=depth, activation=activation, gamma0=0.0,
                                   eta=eta, steps=steps, samples=samples, key=key,
                                   repeats=repeats, probes=probes)
        while len(_LAZY) > 4:
            _LAZY.pop(next(iter(_LAZY)))
    return _LAZY[ck]


def nonlinear_panel(X, y, *, eta=0.075, steps=50, samples=1000, width=1000, n_seeds=4,
                    repeats=8, probes=None):
    """ipywidgets panel (gamma0, activation, depth) around :func:`draw_nonlinear`."""
    import ipywidgets as w

    # a panel's callback only logs its errors: check the arguments before building it
    X = _checks.inputs(X, "X")
    y = _checks.targets(y, X.shape[0], "y")
    eta = _checks.nonnegative(eta, "eta")
    steps = _checks.positive_int(steps, "steps")
    samples = _checks.positive_int(samples, "samples", minimum=2)
    if width is not None:
        width = _checks.positive_int(width, "width")
    n_seeds = _checks.positive_int(n_seeds, "n_seeds")
    repeats = _checks.positive_int(repeats, "repeats", minimum=2)
    if probes is not None:
        probes = _checks.positive_int(probes, "probes")
    from . import dmft
    if samples // repeats < dmft.MIN_SAMPLES_PER_REPEAT:   # the relu button at depth 2 and 3
        raise ValueError(f"samples must be at least {dmft.MIN_SAMPLES_PER_REPEAT} * repeats = "
                         f"{dmft.MIN_SAMPLES_PER_REPEAT * repeats} for the panel's deep ReLU "
                         f"settings (or pass fewer repeats); got samples={samples}, "
                         f"repeats={repeats}")
    if width is not None:    # the depth slider reaches 3: the deepest networks must fit
        _checks.fits(*nets._train_bytes(nets.make_mlp(X.shape[1], depth=3, width=width),
                                        X.shape[0], steps=steps, record_every=steps,
                                        n_seeds=n_seeds))

    return Panel(
        lambda axes, **v: draw_nonlinear(axes, X, y, eta=eta, steps=steps, samples=samples,
                                         width=width, n_seeds=n_seeds, repeats=repeats,
                                         probes=probes, **v),
        ncols=3, figsize=(14, 3.8), prepare=("activation", "depth"),
        summary=lambda r: (f"final loss: DMFT {r['dmft']:.4g}, static NTK {r['static']:.4g}"
                           + ("" if r["networks"] is None else f", networks {r['networks']:.4g}")
                           + f"; alignment {r['alignment']:.3f}"),
        gamma0=w.FloatSlider(value=1.0, min=0.1, max=3.0, step=0.1, description="γ0",
                             continuous_update=False),
        activation=w.ToggleButtons(options=["relu", "tanh", "erf", "linear"], value="relu",
                                   description="activation"),
        depth=w.IntSlider(value=1, min=1, max=3, description="depth L", continuous_update=False))


# ----------------------------------------------------------------------------- CNNs (Chapter 6)
def _image_task(X, y, X_test, y_test):
    """Images (P, H, W, C) with targets (P,), and test images of the same shape with targets."""
    X = nets._images(X, "X")
    y = _checks.targets(y, X.shape[0], "y")
    X_test = nets._images(X_test, "X_test", X.shape[1:])
    y_test = _checks.targets(y_test, X_test.shape[0], "y_test")
    return X, y, X_test, y_test


def loss_increases(loss, rtol=1e-3):
    """Number of steps at which a training loss rose by more than ``rtol`` (relative), per run:
    ``loss`` (n_runs, T+1) -> (n_runs,) integers; a non-finite loss counts as a rise."""
    rtol = _checks.nonnegative(rtol, "rtol")
    loss = _checks.real_array(loss, "loss").astype(np.float64)
    if loss.ndim != 2 or loss.shape[1] < 2:
        raise ValueError(f"loss must have shape (n_runs, T+1) with T >= 1; got {loss.shape}")
    with np.errstate(invalid="ignore"):
        up = ~(loss[:, 1:] <= loss[:, :-1] * (1 + rtol))
    return up.sum(axis=1)


def draw_cnn_training(axes, X, y, X_test, y_test, *, width, gamma0, eta, depth=1,
                      activation="erf", steps=150, n_seeds=4, key=None, record_every=None,
                      n_probe=None, batch_size=None, trajectory=None):
    """An ensemble of ``n_seeds`` centred muP CNNs (:func:`widenets.nets.train_cnn`) on two axes.

    Left: training loss (solid) and test loss (dashed) against the step, mean over the seeds
    with a band of +-1 standard error, and the test loss of the ensemble's averaged prediction
    at the end (a star). Right: the first seed's final pooled feature kernel Phi(T) on the probe
    images (the first ``n_probe`` training images, default min(P, 16)), centred (``H Phi H``
    with ``H = I - 11^T / n``: the part common to all images removed) and shown as correlations
    ``k_ab / sqrt(k_aa k_bb)``, ordered by target (black lines: the class boundary), so that a
    kernel aligned with the task shows two blocks. ``record_every``, ``batch_size`` (None: full-batch gradient
    descent) and the probe images go to ``train_cnn`` (equal settings reuse its compiled
    trainer). Returns a dict: the final
    ``train_loss``, ``test_loss``, ``test_acc`` (means over the seeds), ``ensemble_test_loss``,
    ``alignment`` (target alignment of Phi(T) on the probe images, mean over the seeds) and
    ``increases``: the number of steps at which the training loss rose by more than 0.1%, mean
    over the seeds (0 for smooth training; many at the edge of stability).

    ``trajectory``: an ensemble already trained with these settings (a
    :class:`widenets.nets.CNNTrajectory` of ``train_cnn`` on these images, e.g. a run of a
    sweep) is drawn instead of training it again; its network, number of seeds and steps,
    test set and probe images must match (a ValueError names the first that does not; the
    learning rate and the key are not recorded in it: they are the caller's word).
    """
    axes = _axes(axes, 2, "axes")
    X, y, X_test, y_test = _image_task(X, y, X_test, y_test)
    n_seeds = _checks.positive_int(n_seeds, "n_seeds")
    n_probe = (min(X.shape[0], 16) if n_probe is None
               else _checks.positive_int(n_probe, "n_probe", maximum=X.shape[0]))
    key = _key(key)
    if trajectory is None:
        tr = nets.train_cnn(X, y, depth=depth, width=width, activation=activation,
                            gamma0=gamma0, eta=eta, steps=steps, key=key, n_seeds=n_seeds,
                            X_test=X_test, y_test=y_test, record_every=record_every,
                            X_probe=X[:n_probe], center=True, batch_size=batch_size)
    else:
        tr = _matching_cnn_run(trajectory, X, y, X_test, width=width, gamma0=gamma0, depth=depth,
                               activation=activation, steps=steps, n_seeds=n_seeds,
                               n_probe=n_probe, batch_size=batch_size)
    t = np.arange(steps + 1)
    ax_loss, ax_k = axes
    for curve, style, name in ((tr.loss, "-", "train"), (tr.test_loss, "--", "test")):
        c = np.asarray(curve, np.float64)
        m = c.mean(0)
        s = c.std(0, ddof=1) / np.sqrt(n_seeds) if n_seeds > 1 else np.zeros_like(m)
        ax_loss.plot(t, m, style, color="C0" if name == "train" else "C1", label=name)
        ax_loss.fill_between(t, m - s, m + s, color="C0" if name == "train" else "C1",
                             alpha=0.25, lw=0)
    f_bar = np.asarray(tr.f_test[:, -1], np.float64).mean(0)
    y_t = np.asarray(y_test, np.float64)
    ens = float(0.5 * np.mean((f_bar - y_t) ** 2))
    ax_loss.plot([steps], [ens], "*", color="C3", ms=10, label="ensemble, test")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step $t$")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(f"N={width}, $\\gamma_0$={gamma0:g}, $\\eta$={eta:.3g}: test acc "
                      f"{float(np.mean(np.asarray(tr.test_acc[:, -1]))):.2f}")
    ax_loss.legend(fontsize=7)
    y_p = np.asarray(y, np.float64)[:n_probe]
    phis = np.asarray(tr.phi[:, -1], np.float64)
    align = float(np.mean([_alignment(k, y_p) for k in phis]))
    order = np.argsort(y_p, kind="stable")
    k0 = phis[0][np.ix_(order, order)]
    k0 = k0 - k0.mean(0) - k0.mean(1)[:, None] + k0.mean()     # centred: H Phi H
    d = np.sqrt(np.clip(np.diag(k0), 1e-30, None))
    ax_k.imshow(k0 / np.outer(d, d), cmap="RdBu_r", vmin=-1, vmax=1)
    edge = int(np.sum(y_p[order] < 0)) - 0.5        # the boundary between the two classes
    ax_k.axhline(edge, color="k", lw=0.8)
    ax_k.axvline(edge, color="k", lw=0.8)
    ax_k.set_title(f"centred $\\Phi(T)$ (seed 1), alignment {align:.2f}", fontsize=9)
    ax_k.set_xticks([])
    ax_k.set_yticks([])
    return {"train_loss": float(np.mean(np.asarray(tr.loss[:, -1]))),
            "test_loss": float(np.mean(np.asarray(tr.test_loss[:, -1]))),
            "test_acc": float(np.mean(np.asarray(tr.test_acc[:, -1]))),
            "ensemble_test_loss": ens, "alignment": align,
            "increases": float(np.mean(loss_increases(tr.loss)))}


def _matching_cnn_run(tr, X, y, X_test, *, width, gamma0, depth, activation, steps, n_seeds,
                      n_probe, batch_size):
    """``tr`` if it is a muP CNN ensemble trained with these settings, else a ValueError."""
    if not isinstance(tr, nets.CNNTrajectory):
        raise ValueError(f"trajectory must be a CNNTrajectory from widenets.nets.train_cnn; got "
                         f"{type(tr).__name__}")
    want = {"width": width, "gamma0": float(gamma0), "depth": depth, "activation": activation,
            "parameterization": "mup", "image shape": tuple(X.shape[1:]), "n_seeds": n_seeds,
            "steps": steps, "n_probe": n_probe, "batch_size": batch_size,
            "test images": X_test.shape[0]}
    net = tr.net
    have = {"width": net.width, "gamma0": float(net.gamma0), "depth": net.depth,
            "activation": net.activation, "parameterization": net.parameterization,
            "image shape": (net.H, net.W, net.C), "n_seeds": tr.loss.shape[0],
            "steps": tr.loss.shape[1] - 1, "n_probe": tr.X_probe.shape[0],
            "batch_size": tr.batch_size,
            "test images": None if tr.f_test is None else tr.f_test.shape[-1]}
    for k in want:
        if want[k] != have[k]:
            raise ValueError(f"trajectory was trained with {k} = {have[k]!r}, not {want[k]!r}")
    if tr.test_loss is None:
        raise ValueError("trajectory has no test losses: train it with X_test and y_test")
    if tr.delta.shape[-1] != X.shape[0] or not np.allclose(np.asarray(tr.delta[:, 0]),
                                                           np.asarray(y)[None]):
        raise ValueError("trajectory was not trained on these targets with center=True "
                         "(its error at t = 0 is not y)")
    probe = np.asarray(tr.X_probe)
    if not np.array_equal(probe, np.asarray(X[:n_probe], probe.dtype)):
        raise ValueError(f"trajectory's probe images are not the first {n_probe} images of X")
    return tr


def cnn_panel(X, y, X_test, y_test, *, widths=(32, 64, 128), eta, gamma0=1.0, steps=150,
              n_seeds=4, depth=1, activation="erf", record_every=None, n_probe=None,
              batch_size=None):
    """ipywidgets panel (width, gamma0, learning rate) around :func:`draw_cnn_training`.

    ``widths``: at least two distinct widths (the slider starts at the second); ``eta`` and
    ``gamma0``: the learning rate and richness the sliders start at (eta / 10 .. 10 eta and
    0.01 .. 3).
    """
    import ipywidgets as w

    # a panel's callback only logs its errors: check the arguments before building it
    X, y, X_test, y_test = _image_task(X, y, X_test, y_test)
    widths = _slider_widths(widths)
    eta = _checks.nonnegative(eta, "eta", strict=True)
    gamma0 = _checks.nonnegative(gamma0, "gamma0", strict=True)
    steps = _checks.positive_int(steps, "steps")
    n_seeds = _checks.positive_int(n_seeds, "n_seeds")
    net = nets.make_cnn(X.shape[1:], depth=depth, width=max(widths), activation=activation)
    n_probe = (min(X.shape[0], 16) if n_probe is None
               else _checks.positive_int(n_probe, "n_probe", maximum=X.shape[0]))
    _checks.fits(*nets._cnn_train_bytes(net, X.shape[0], X_test.shape[0], n_probe, steps=steps,
                                       record_every=steps if record_every is None
                                       else record_every, n_seeds=n_seeds,
                                       batch_size=batch_size))
    log_eta = float(np.log10(eta))

    return Panel(
        lambda axes, **v: draw_cnn_training(axes, X, y, X_test, y_test, depth=depth,
                                            activation=activation, steps=steps,
                                            n_seeds=n_seeds, record_every=record_every,
                                            n_probe=n_probe, batch_size=batch_size, **v),
        ncols=2, figsize=(10, 3.8), prepare=("width",),
        summary=lambda r: (f"test loss {r['test_loss']:.4f}, test accuracy {r['test_acc']:.3f}, "
                           f"alignment {r['alignment']:.3f}"),
        width=w.SelectionSlider(options=list(widths), value=widths[1], description="width N",
                                continuous_update=False),
        gamma0=w.FloatLogSlider(value=min(max(gamma0, 0.01), 10 ** 0.5), base=10, min=-2,
                                max=0.5, description="γ0", continuous_update=False),
        eta=w.FloatLogSlider(value=eta, base=10, min=log_eta - 1, max=log_eta + 1,
                             description="η", continuous_update=False))


def _record_every(steps: int) -> int:
    """The largest divisor of ``steps`` that gives at least 10 records (1 for steps < 10)."""
    return max([d for d in range(1, steps // 10 + 1) if steps % d == 0] or [1])


def _correct(f, y) -> np.ndarray:
    """Per seed, the fraction of points an output (S, P) or (S, P, O) gets right: the sign of
    a scalar target y (P,), the class of a one-hot or label-coded target y (P, O)."""
    f, y = np.asarray(f), np.asarray(y)
    if f.ndim == 2:
        return (np.sign(f) == np.sign(y)).mean(-1)
    return (f.argmax(-1) == y.argmax(-1)).mean(-1)


def draw_linearized(axes, X, y, X_test, y_test, *, width, parameterization="ntk", gamma0=1.0,
                    eta=1.0, depth=1, activation="relu", steps=100, n_seeds=4, key=None,
                    run=None):
    """MLPs and their linearisations trained side by side (:func:`widenets.linearized.train_linearized`,
    centred outputs), on two axes.

    Left: the training loss of the networks (solid) and of their linearisations (dashed), mean
    over the ``n_seeds`` seeds. Right: over training, the relative gap between their test
    outputs, ``||f_t - f_lin_t|| / ||f_lin_t||``, and between their weights,
    ``||theta_t - theta_lin_t|| / ||theta_lin_t - theta_0||`` (mean over seeds). Targets y (P,)
    train a scalar output, (P, O) one output per class (accuracy: the sign or the class).
    ``run``: a LinearizedRun of these settings already trained (drawn instead of training
    again). Returns a dict: final ``out_gap``, ``weight_gap``, test accuracies ``acc`` and
    ``acc_lin``, training losses ``loss`` and ``loss_lin`` (means over the seeds).
    """
    from . import linearized
    ax_loss, ax_gap = _axes(axes, 2, "axes")
    steps = _checks.positive_int(steps, "steps")
    if run is None:
        run = linearized.train_linearized(
            X, y, depth=depth, width=width, activation=activation,
            parameterization=parameterization, gamma0=gamma0, eta=eta, steps=steps,
            key=_key(key), n_seeds=n_seeds, record_every=_record_every(steps), X_test=X_test,
            center=True)
    elif not isinstance(run, linearized.LinearizedRun) or run.f_test is None:
        raise ValueError("run must be a LinearizedRun with test outputs (train_linearized(..., "
                         "X_test=...)) or None")
    else:       # a run of other settings would be drawn under the wrong title
        net = run.net
        for name, have, want in (("width", net.width, width), ("depth", net.depth, depth),
                                 ("activation", net.activation, activation),
                                 ("parameterization", net.parameterization, parameterization),
                                 ("gamma0", net.gamma0, gamma0),
                                 ("n_seeds", run.loss.shape[0], n_seeds),
                                 ("steps", run.loss.shape[1] - 1, steps)):
            if have != want:
                raise ValueError(f"run was trained with {name} = {have}, not {want}")
    y_test = np.asarray(y_test)
    f, fl = np.asarray(run.f_test, np.float64), np.asarray(run.f_test_lin, np.float64)
    if f.shape[2:] != y_test.shape:
        raise ValueError(f"y_test must have shape {f.shape[2:]} like the recorded test outputs; "
                         f"got {y_test.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        out_gap = np.linalg.norm((f - fl).reshape(f.shape[:2] + (-1,)), axis=-1) / \
            np.linalg.norm(fl.reshape(f.shape[:2] + (-1,)), axis=-1)           # (S, n_rec)
        w_gap = np.asarray(run.weight_gap) / np.asarray(run.weight_change_lin)
    loss, loss_lin = np.asarray(run.loss).mean(0), np.asarray(run.loss_lin).mean(0)
    ax_loss.semilogy(loss, "-", color="C0", label="network")
    ax_loss.semilogy(loss_lin, "--", color="k", label="linearised")
    ax_loss.set_xlabel("step $t$")
    ax_loss.set_ylabel("training loss")
    par = {"ntk": "NTK", "mup": "μP", "standard": "standard"}.get(parameterization, parameterization)
    ax_loss.set_title(f"{par}, N = {run.net.width}, $\\gamma_0$ = {run.net.gamma0:g}")
    ax_loss.legend()
    t = np.asarray(run.times)[1:]
    # (at t = 0 both gaps are 0 / 0: drawn from the first record on)
    ax_gap.loglog(t, out_gap[:, 1:].mean(0), "o-", color="C0", label="test outputs")
    ax_gap.loglog(t, w_gap[:, 1:].mean(0), "s--", color="C3", label="weights")
    ax_gap.set_xlabel("step $t$")
    ax_gap.set_ylabel("relative gap to the linearisation")
    ax_gap.set_title("network vs linearisation")
    ax_gap.legend()
    return dict(out_gap=float(out_gap[:, -1].mean()), weight_gap=float(w_gap[:, -1].mean()),
                acc=float(_correct(f[:, -1], y_test).mean()),
                acc_lin=float(_correct(fl[:, -1], y_test).mean()),
                loss=float(loss[-1]), loss_lin=float(loss_lin[-1]))


def linearized_panel(X, y, X_test, y_test, *, widths=(64, 256, 1024), depth=1, activation="relu",
                     eta=1.0, steps=100, n_seeds=4):
    """ipywidgets panel (width, parameterisation, gamma0, learning rate) around
    :func:`draw_linearized`. ``widths``: at least two distinct widths (the slider starts at
    the second); ``eta``: where the learning-rate slider starts (eta / 4 .. 4 eta)."""
    import ipywidgets as w

    from . import linearized
    # a panel's callback only logs its errors: check the arguments before building it
    X = _checks.inputs(X, "X")
    X_test = _checks.inputs(X_test, "X_test")
    if X_test.shape[1] != X.shape[1]:
        raise ValueError(f"X_test must have D={X.shape[1]} columns like X; got {X_test.shape}")
    y, y_test = np.asarray(y), np.asarray(y_test)
    if y.shape[:1] != X.shape[:1] or y.ndim not in (1, 2):
        raise ValueError(f"y must have shape ({X.shape[0]},) or ({X.shape[0]}, O); got {y.shape}")
    if y_test.shape != (X_test.shape[0],) + y.shape[1:]:
        raise ValueError(f"y_test must have shape {(X_test.shape[0],) + y.shape[1:]}; "
                         f"got {y_test.shape}")
    widths = _slider_widths(widths)
    eta = _checks.nonnegative(eta, "eta", strict=True)
    steps = _checks.positive_int(steps, "steps")
    n_seeds = _checks.positive_int(n_seeds, "n_seeds")
    net = nets.make_mlp(X.shape[1], depth=depth, width=max(widths), activation=activation,
                        n_out=1 if y.ndim == 1 else y.shape[1])
    _checks.fits(*linearized._train_bytes(net, X.shape[0], X_test.shape[0], steps=steps,
                                          record_every=_record_every(steps), n_seeds=n_seeds))
    log_eta = float(np.log10(eta))
    return Panel(
        lambda axes, **v: draw_linearized(axes, X, y, X_test, y_test, depth=depth,
                                          activation=activation, steps=steps, n_seeds=n_seeds,
                                          **v),
        ncols=2, figsize=(10, 3.8), prepare=("width",),
        summary=lambda r: (f"gap to the linearisation: outputs {r['out_gap']:.3f}, weights "
                           f"{r['weight_gap']:.3f}; test accuracy {r['acc']:.3f} (linearised "
                           f"{r['acc_lin']:.3f})"),
        width=w.SelectionSlider(options=list(widths), value=widths[1], description="width N",
                                continuous_update=False),
        parameterization=w.ToggleButtons(options=["ntk", "mup"], value="ntk",
                                         description="param."),
        gamma0=w.FloatLogSlider(value=1.0, base=10, min=-1, max=0.5, description="γ0",
                                continuous_update=False),
        eta=w.FloatLogSlider(value=eta, base=10, min=log_eta - 0.6, max=log_eta + 0.6,
                             description="η", continuous_update=False))
