"""widenets.widgets: the static drawing functions and the live slider panels (Agg backend)."""
import jax
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import widenets as wn  # noqa: E402
from widenets import widgets  # noqa: E402

TASK = wn.data.gaussian_task(jax.random.PRNGKey(0), 6, 8, P_test=4)
NO_TEST = wn.data.gaussian_task(jax.random.PRNGKey(0), 6, 8)
KX = wn.data.input_kernel(TASK.X)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_draw_lazy_training_returns_a_finite_test_gap():
    fig, ax = plt.subplots()
    gap = widgets.draw_lazy_training(ax, TASK, width=64, depth=1, lr_fraction=0.5, steps=20,
                                     n_seeds=1)
    assert isinstance(gap, float) and np.isfinite(gap) and gap >= 0
    lines = ax.get_lines()
    assert len(lines) == 2                          # the network and the NTK predictor
    assert all(len(ln.get_xdata()) == 21 for ln in lines)
    assert all(np.all(np.isfinite(ln.get_ydata())) for ln in lines)


def test_draw_lazy_training_gap_shrinks_with_width_for_tanh():
    """The test gap to the NTK predictor is a finite-width effect: width 1024 beats width 16
    (the N^-1/2 law predicts a factor 8; an integer seed works as the key)."""
    gaps = []
    for width in (16, 1024):
        fig, ax = plt.subplots()
        gaps.append(widgets.draw_lazy_training(ax, TASK, width=width, depth=1, lr_fraction=0.5,
                                               steps=20, n_seeds=1, activation="tanh", key=3))
    assert np.all(np.isfinite(gaps)) and gaps[1] < gaps[0] / 2, gaps


def test_draw_feature_learning_returns_the_final_loss_and_an_alignment():
    fig, axes = plt.subplots(1, 2)
    loss, align = widgets.draw_feature_learning(axes, TASK, width=32, gamma0=1.0, steps=10)
    assert np.isfinite(loss) and -1 <= align <= 1
    assert axes[0].get_lines()[0].get_ydata()[-1] == pytest.approx(loss, rel=1e-6)
    assert len(axes[1].get_images()) == 1


def test_lazy_training_panel_is_an_ipywidgets_widget():
    import ipywidgets
    panel = widgets.lazy_training_panel(TASK, widths=(32, 64), steps=5)
    assert isinstance(panel.widget, ipywidgets.Widget)
    sliders = {c.description: c for c in panel.controls.values()}
    assert sliders["width N"].options == (32, 64) and sliders["width N"].value == 64
    assert set(sliders) >= {"depth L", "η / η_max"}
    (fig,) = [plt.figure(n) for n in plt.get_fignums()]          # drawn once, at N = 64
    assert "N=64" in fig.axes[0].get_title() and fig.axes[0].has_data()


def test_draw_nonlinear_plots_theory_and_networks():
    fig, axes = plt.subplots(1, 3)
    out = widgets.draw_nonlinear(axes, TASK.X, TASK.y, gamma0=1.0, activation="relu", depth=1,
                                 eta=0.5, steps=5, samples=64, width=32, n_seeds=2)
    assert set(out) == {"dmft", "static", "networks", "alignment", "kurtosis", "kurtosis_networks"}
    assert all(np.isfinite(v) for v in out.values())
    assert out["dmft"] < 0.5 and out["networks"] < 0.5       # it trains: loss(0) = mean(y^2)/2 = 0.5
    lines = axes[0].get_lines()                                # DMFT, static NTK, networks
    assert len(lines) == 3 and all(len(ln.get_xdata()) == 6 for ln in lines)
    assert len(axes[1].get_images()) == 1
    assert axes[2].get_yscale() == "log" and len(axes[2].patches) > 0


def test_draw_nonlinear_without_networks_and_deep_tanh():
    fig, axes = plt.subplots(1, 3)
    out = widgets.draw_nonlinear(axes, TASK.X, TASK.y, gamma0=1.0, activation="tanh", depth=2,
                                 eta=0.5, steps=3, samples=32, width=None)
    assert out["networks"] is None and out["kurtosis_networks"] is None
    assert np.isfinite(out["dmft"]) and np.isfinite(out["kurtosis"])
    assert len(axes[0].get_lines()) == 2                       # DMFT and static NTK only


@pytest.mark.parametrize("make, names, n_axes", [
    (lambda: widgets.feature_learning_panel(TASK, widths=(16, 32), steps=3),
     {"γ0", "width N", "param."}, 2),
    (lambda: widgets.deep_linear_panel(KX, TASK.y, steps=3), {"γ0", "depth L", "η"}, 2),
    (lambda: widgets.nonlinear_panel(TASK.X, TASK.y, eta=0.1, steps=3, samples=128, width=16,
                                     n_seeds=1, repeats=2), {"γ0", "activation", "depth L"}, 3),
    (lambda: widgets.cnn_panel(*CNN_TASK, widths=(4, 8), eta=0.05, steps=3, n_seeds=2),
     {"γ0", "width N", "η"}, 2),
    (lambda: widgets.linearized_panel(TASK.X, TASK.y, TASK.X_test, TASK.y_test, widths=(8, 16),
                                      steps=10, n_seeds=2), {"γ0", "width N", "param.", "η"}, 2),
], ids=["feature_learning", "deep_linear", "nonlinear", "cnn", "linearized"])
def test_every_panel_draws_its_figure_from_its_controls(make, names, n_axes):
    import ipywidgets
    plt.close("all")
    panel = make()                     # the panel draws once on creation (outside a kernel a
    assert isinstance(panel.widget, ipywidgets.Widget)   # failing callback only logs: check the figure)
    controls = {c.description: c for c in panel.controls.values()}
    assert set(controls) >= names
    if "activation" in controls:
        assert controls["activation"].options == ("relu", "tanh", "erf", "linear")
    figs = [plt.figure(n) for n in plt.get_fignums()]
    assert len(figs) == 1 and len(figs[0].axes) >= n_axes
    assert all(ax.has_data() for ax in figs[0].axes[:n_axes])


_rng = np.random.default_rng(0)
CNN_TASK = (_rng.normal(size=(8, 4, 4, 1)), np.repeat([1.0, -1.0], 4),
            _rng.normal(size=(6, 4, 4, 1)), np.repeat([1.0, -1.0], 3))


def test_loss_increases_counts_rises_per_run():
    loss = np.array([[1.0, 0.9, 0.95, 0.8, 0.8005], [1.0, np.nan, 0.5, 0.4, 0.3]])
    # run 0: one rise of 5% (0.9 -> 0.95; 0.8 -> 0.8005 is within rtol = 1e-3); run 1: both
    # steps next to the NaN count (nothing is known to have fallen there)
    assert widgets.loss_increases(loss).tolist() == [1, 2]
    assert widgets.loss_increases(loss, rtol=1e-4).tolist() == [2, 2]


def test_draw_cnn_training_reports_the_ensemble_it_draws():
    axes = _ax(2)
    out = widgets.draw_cnn_training(axes, *CNN_TASK, width=8, gamma0=1.0, eta=0.05, steps=4,
                                    n_seeds=3, key=jax.random.PRNGKey(1))
    X, y, Xt, yt = CNN_TASK
    tr = wn.nets.train_cnn(X, y, depth=1, width=8, activation="erf", gamma0=1.0, eta=0.05,
                           steps=4, key=jax.random.PRNGKey(1), n_seeds=3, X_test=Xt, y_test=yt,
                           X_probe=X, center=True)
    f_bar = np.asarray(tr.f_test[:, -1]).mean(0)
    # the figure's numbers are those of the networks it trained (same key, same ensemble)
    np.testing.assert_allclose(out["ensemble_test_loss"], 0.5 * np.mean((f_bar - yt) ** 2),
                               rtol=1e-5)
    np.testing.assert_allclose(out["test_loss"], float(np.mean(tr.test_loss[:, -1])), rtol=1e-5)
    assert out["train_loss"] < float(np.mean(tr.loss[:, 0]))      # it trains
    assert 0 <= out["alignment"] <= 1 and out["increases"] >= 0
    assert axes[0].has_data() and axes[1].images


def test_draw_cnn_training_draws_a_given_run_as_if_it_had_trained_it():
    """A static grid can draw a sweep's runs instead of training them again: the same numbers;
    a run trained with other settings is refused, naming the setting."""
    X, y, Xt, yt = CNN_TASK
    kw = dict(width=8, gamma0=1.0, eta=0.05, steps=4, n_seeds=3, key=jax.random.PRNGKey(1),
              n_probe=4)
    tr = wn.nets.train_cnn(X, y, depth=1, width=8, activation="erf", gamma0=1.0, eta=0.05,
                           steps=4, key=jax.random.PRNGKey(1), n_seeds=3, X_test=Xt, y_test=yt,
                           X_probe=X[:4], center=True)
    trained = widgets.draw_cnn_training(_ax(2), *CNN_TASK, **kw)
    given = widgets.draw_cnn_training(_ax(2), *CNN_TASK, trajectory=tr, **kw)
    assert given == pytest.approx(trained, rel=1e-6)
    with pytest.raises(ValueError, match="width = 8, not 16"):
        widgets.draw_cnn_training(_ax(2), *CNN_TASK, trajectory=tr, **dict(kw, width=16))
    with pytest.raises(ValueError, match="n_seeds = 3, not 2"):
        widgets.draw_cnn_training(_ax(2), *CNN_TASK, trajectory=tr, **dict(kw, n_seeds=2))
    with pytest.raises(ValueError, match="center=True"):
        widgets.draw_cnn_training(_ax(2), X, -y, Xt, yt, trajectory=tr, **kw)
    with pytest.raises(ValueError, match="CNNTrajectory"):
        widgets.draw_cnn_training(_ax(2), *CNN_TASK, trajectory=tr.loss, **kw)


# ----------------------------------------------------------------------------- bad input
# Panels are checked before they are built: an error inside a panel's callback is only logged.
def _ax(n=1):
    axes = plt.subplots(1, n)[1]
    return axes


LAZY = dict(task=TASK, width=16, depth=1, lr_fraction=0.5, steps=2, n_seeds=1)
FEATURE = dict(task=TASK, width=16, gamma0=1.0, steps=2)
DEEP = dict(Kx=KX, y=TASK.y, gamma0=1.0, depth=1, eta=0.1, steps=2)
NONLIN = dict(X=TASK.X, y=TASK.y, gamma0=1.0, steps=2, samples=16, width=8, n_seeds=1)
CNN = dict(X=CNN_TASK[0], y=CNN_TASK[1], X_test=CNN_TASK[2], y_test=CNN_TASK[3], width=4,
           gamma0=1.0, eta=0.05, steps=2, n_seeds=1)
CNN_PANEL = dict(X=CNN_TASK[0], y=CNN_TASK[1], X_test=CNN_TASK[2], y_test=CNN_TASK[3], eta=0.05)
NAN_TASK = TASK._replace(X=np.where(np.eye(6, 8) > 0, np.nan, TASK.X))


def _bad(fn, n_axes, base, match, /, **change):
    label = "-".join(f"{k}={v!r}"[:24] for k, v in change.items())
    return pytest.param(fn, n_axes, {**base, **change}, match, id=f"{fn.__name__}-{label}")


BAD_INPUTS = [
    # draw_lazy_training
    *[_bad(widgets.draw_lazy_training, 1, LAZY, m, **c) for m, c in (
        (r"\btask must be a widenets.data.Task", dict(task={"X": TASK.X, "y": TASK.y})),
        (r"\btask must be a widenets.data.Task", dict(task=(TASK.X, TASK.y))),
        (r"\btask must have test points", dict(task=NO_TEST)),
        (r"\btask.X contains NaN", dict(task=NAN_TASK)),
        (r"\btask.y must have shape \(6,\)", dict(task=TASK._replace(y=TASK.y[:3]))),
        (r"\btask.X_test must have D=8 columns", dict(task=TASK._replace(X_test=TASK.X[:, :3]))),
        (r"\blr_fraction must be", dict(lr_fraction=0)),
        (r"\blr_fraction must be", dict(lr_fraction=-0.5)),
        (r"\blr_fraction must be", dict(lr_fraction="0.5")),
        (r"\blegend must be True or False", dict(legend="no")),
        (r"\bkey must be a JAX PRNG key", dict(key="seed")),
        (r"\bwidth must be an integer", dict(width=0)),
        (r"\bwidth must be an integer", dict(width=16.5)),
        (r"\bdepth must be an integer", dict(depth=0)),
        (r"\bsteps must be an integer", dict(steps=0)),
        (r"\bn_seeds must be an integer", dict(n_seeds=0)),
        (r"\bactivation must be one of", dict(activation="sigmoid")),
    )],
    _bad(widgets.draw_lazy_training, 2, LAZY, r"\bax must be a matplotlib Axes"),
    _bad(widgets.draw_lazy_training, 0, LAZY, r"\bax must be a matplotlib Axes"),
    # lazy_training_panel: at least two widths
    *[_bad(widgets.lazy_training_panel, None, {"task": TASK}, m, **c) for m, c in (
        (r"\bwidths must hold at least two distinct widths", dict(widths=(64,))),
        (r"\bwidths must hold at least two distinct widths", dict(widths=64)),
        (r"\bwidths must hold at least two distinct widths", dict(widths=(64, 64))),
        (r"\bwidths must hold at least 1", dict(widths=())),
        (r"\bwidths must be an integer", dict(widths=(64, 128.5))),
        (r"\bwidths must be an integer", dict(widths=("64", "128"))),
        (r"\bwidths must be an integer >= 1", dict(widths=(0, 64))),
        (r"\bsteps must be an integer", dict(steps=0)),
        (r"\btask must have test points", dict(task=NO_TEST)),
        (r"\btask must be a widenets.data.Task", dict(task=None)),
        (r"would need about .*reduce steps", dict(steps=10 ** 12)),
        (r"would need about .*reduce width", dict(widths=(64, 10 ** 7))),
    )],
    # draw_feature_learning and its panel
    *[_bad(widgets.draw_feature_learning, 2, FEATURE, m, **c) for m, c in (
        (r"\btask must be a widenets.data.Task", dict(task=[TASK.X, TASK.y])),
        (r"\btask.X contains NaN", dict(task=NAN_TASK)),
        (r"\bgamma0 must be", dict(gamma0=0)),
        (r"\bgamma0 must be", dict(gamma0="1")),
        (r"\bparameterization must be one of", dict(parameterization="sp")),
        (r"\beta must be", dict(eta=-1)),
        (r"\bkey must be a JAX PRNG key", dict(key=2.5)),
    )],
    _bad(widgets.draw_feature_learning, 1, FEATURE, r"\baxes must be 2 matplotlib Axes"),
    _bad(widgets.draw_feature_learning, 3, FEATURE, r"\baxes must be 2 matplotlib Axes"),
    *[_bad(widgets.feature_learning_panel, None, {"task": TASK}, m, **c) for m, c in (
        (r"\bwidths must hold at least two distinct widths", dict(widths=(16,))),
        (r"\bwidths must be an integer", dict(widths=(16, True))),
        (r"\bsteps must be an integer", dict(steps=-1)),
        (r"would need about .*reduce steps", dict(steps=10 ** 12)),
    )],
    # draw_deep_linear and its panel (the DMFT solver checks the rest)
    _bad(widgets.draw_deep_linear, 1, DEEP, r"\baxes must be 2 matplotlib Axes"),
    *[_bad(widgets.deep_linear_panel, None, {"Kx": KX, "y": TASK.y}, m, **c) for m, c in (
        (r"\bKx must be symmetric", dict(Kx=np.triu(np.asarray(KX)))),
        (r"\bKx must be a non-empty square", dict(Kx=np.ones((6, 5)))),
        (r"\bKx contains NaN", dict(Kx=np.full((6, 6), np.nan))),
        (r"\by must have shape \(6,\)", dict(y=TASK.y[:2])),
        (r"\by must be an array of real numbers", dict(y=["a"] * 6)),
        (r"\bsteps must be an integer", dict(steps=0)),
    )],
    # draw_nonlinear and its panel
    *[_bad(widgets.draw_nonlinear, 3, NONLIN, m, **c) for m, c in (
        (r"\bX contains NaN", dict(X=NAN_TASK.X)),
        (r"\bX must have shape \(P, D\)", dict(X=TASK.X[0])),
        (r"\by must have shape \(6,\)", dict(y=TASK.y[:5])),
        (r"\by must be an array of real numbers", dict(y=["+"] * 6)),
        (r"\bwidth must be an integer", dict(width=0)),
        (r"\bwidth must be an integer", dict(width="8")),
        (r"\bn_seeds must be an integer", dict(n_seeds=0)),
        (r"\bkey must be a JAX PRNG key", dict(key="k")),
    )],
    _bad(widgets.draw_nonlinear, 2, NONLIN, r"\baxes must be 3 matplotlib Axes"),
    *[_bad(widgets.nonlinear_panel, None, {"X": TASK.X, "y": TASK.y}, m, **c) for m, c in (
        (r"\bX contains NaN", dict(X=NAN_TASK.X)),
        (r"\by must have shape", dict(y=TASK.y[:1])),
        (r"\beta must be", dict(eta=-0.1)),
        (r"\beta must be", dict(eta="0.1")),
        (r"\bsteps must be an integer", dict(steps=1.5)),
        (r"\bsamples must be an integer >= 2", dict(samples=1)),
        (r"\bwidth must be an integer", dict(width=-1)),
        (r"\bn_seeds must be an integer", dict(n_seeds=True)),
    )],
    # draw_cnn_training and its panel
    *[_bad(widgets.draw_cnn_training, 2, CNN, m, **c) for m, c in (
        (r"\bX must have shape \(P, H, W, C\)", dict(X=CNN_TASK[0][..., 0])),
        (r"\by must have shape \(8,\)", dict(y=CNN_TASK[1][:3])),
        (r"\bX_test must hold images of shape", dict(X_test=CNN_TASK[2][:, :2])),
        (r"\bwidth must be an integer", dict(width=0)),
        (r"\bn_probe must be an integer", dict(n_probe=100)),
        (r"\beta must be", dict(eta=-1.0)),
    )],
    _bad(widgets.draw_cnn_training, 1, CNN, r"\baxes must be 2 matplotlib Axes"),
    *[_bad(widgets.cnn_panel, None, CNN_PANEL, m, **c) for m, c in (
        (r"\bwidths must", dict(widths=(8,))),
        (r"\beta must be", dict(eta=0.0)),
        (r"\bgamma0 must be", dict(gamma0=-1.0)),
        (r"\by_test must have shape", dict(y_test=CNN_TASK[3][:2])),
    )],
]


@pytest.mark.parametrize("fn, n_axes, kwargs, match", BAD_INPUTS)
def test_bad_input_raises_a_value_error_that_says_what_is_wrong(fn, n_axes, kwargs, match):
    if n_axes is not None:
        ax = _ax(n_axes) if n_axes > 0 else None
        name = "ax" if fn is widgets.draw_lazy_training else "axes"
        kwargs = {name: ax, **kwargs}
    with pytest.raises(ValueError, match=match):
        fn(**kwargs)


def test_a_panel_redraws_when_a_control_moves_and_says_what_it_drew():
    import ipywidgets
    calls = []

    def draw(ax, *, n):
        calls.append(n)
        ax.plot(range(n))
        if n == 7:
            raise ValueError("seven cannot be drawn")
        return 2 * n

    p = widgets.panel(draw, summary=lambda r: f"twice {r}",
                      n=ipywidgets.IntSlider(value=3, min=1, max=9, description="n"))
    assert calls == [3] and p.result == 6 and "n = 3 → twice 6" in p.status.value
    p.controls["n"].value = 5
    assert calls == [3, 5] and p.result == 10 and "n = 5 → twice 10" in p.status.value
    assert p.describe(p.values(), 10) == "n = 5 → twice 10"
    p.controls["n"].value = 7                     # a later failure is shown, not raised
    assert "could not draw" in p.status.value and "seven" in p.status.value
    plt.close("all")
    with pytest.raises(ValueError, match="seven"):  # the first draw's failure is raised
        widgets.panel(draw, n=ipywidgets.IntSlider(value=7, description="n"))
    with pytest.raises(ValueError, match="draw must be a function"):
        widgets.panel(3, n=ipywidgets.IntSlider())
    with pytest.raises(ValueError, match="controls"):
        widgets.panel(draw, n=3)


def test_a_panel_prepares_the_settings_one_move_away_while_the_kernel_is_idle(monkeypatch):
    import types

    import ipywidgets
    import IPython
    queue = []
    loop = types.SimpleNamespace(call_later=lambda delay, fn, *a: queue.append((fn, a)))
    monkeypatch.setattr(IPython, "get_ipython",
                        lambda: types.SimpleNamespace(kernel=types.SimpleNamespace(io_loop=loop)))
    monkeypatch.delenv("WIDENETS_PANEL_PREPARE", raising=False)
    drawn = []

    def draw(ax, *, depth, gamma0):
        drawn.append((depth, gamma0))
        return depth

    p = widgets.panel(draw, prepare=("depth",),
                      depth=ipywidgets.IntSlider(value=2, min=1, max=4, description="L"),
                      gamma0=ipywidgets.FloatSlider(value=1.0, min=0.0, max=2.0, description="g"))
    assert drawn == [(2, 1.0)] and "preparing 3 nearby settings" in p.status.value
    while queue:                                  # the kernel's idle turns
        fn, a = queue.pop(0)
        fn(*a)
    # each other depth drawn once off-screen at the current gamma0, no figure left open
    assert sorted(drawn[1:]) == [(1, 1.0), (3, 1.0), (4, 1.0)]
    assert "preparing" not in p.status.value and p.status.value.startswith("L = 2, g = 1 → 2")
    assert p.prepared == {(1,), (2,), (3,), (4,)}
    n = len(drawn)
    p.controls["gamma0"].value = 0.5             # gamma0 compiles nothing new (not in prepare)
    assert drawn[n] == (2, 0.5) and not queue     # prepared signatures are depths: nothing new
    monkeypatch.setenv("WIDENETS_PANEL_PREPARE", "0")   # batch runs (the book) prepare nothing
    q = widgets.panel(draw, prepare=("depth",), depth=ipywidgets.IntSlider(value=1, min=1, max=3),
                      gamma0=ipywidgets.FloatSlider(value=1.0))
    assert not queue and "preparing" not in q.status.value


@pytest.mark.parametrize("activation", ["linear", "erf"])
def test_draw_nonlinear_draws_every_activation_of_its_panel(activation):
    # the panel's toggle offers relu, tanh, erf and linear; "linear" once failed in its
    # static-NTK reference (the exact linear solver takes no samples)
    fig, axes = plt.subplots(1, 3)
    out = widgets.draw_nonlinear(axes, TASK.X, TASK.y, gamma0=1.0, activation=activation,
                                 depth=1, eta=0.5, steps=3, samples=32, width=16, n_seeds=1)
    assert np.isfinite(out["dmft"]) and np.isfinite(out["static"]) and out["static"] < 0.5
    plt.close(fig)


def test_nonlinear_panel_draws_deep_relu_at_its_sizes():
    """The relu button at depth 3: each repeat needs 64 neurons for its estimate of phi''. A
    panel at samples = 500 with 8 repeats (62 each) once failed only there, after its first draw."""
    plt.close("all")
    with pytest.raises(ValueError, match=r"samples must be at least 64 \* repeats = 512"):
        widgets.nonlinear_panel(TASK.X, TASK.y, eta=0.1, steps=3, samples=500, width=16)
    panel = widgets.nonlinear_panel(TASK.X, TASK.y, eta=0.1, steps=3, samples=128, width=16,
                                    n_seeds=1, repeats=2)
    panel.controls["depth"].value = 3
    assert panel.values()["activation"] == "relu" and panel.error is None
    assert np.isfinite(panel.result["dmft"])
    plt.close("all")


LIN_KW = dict(width=16, depth=1, activation="relu", parameterization="ntk", gamma0=1.0, eta=0.5,
              steps=10, n_seeds=3)


def test_draw_linearized_reports_the_gaps_of_the_run_it_draws():
    """The returned numbers are the run's, by their definitions (computed here from its
    arrays); a given run is drawn as if trained again (same numbers), and one of other settings
    is refused naming the setting."""
    Y = np.eye(3)[np.arange(6) % 3]
    Yt = np.eye(3)[np.arange(4) % 3]
    run = wn.linearized.train_linearized(TASK.X, Y, key=1, record_every=1, X_test=TASK.X_test,
                                         center=True, **LIN_KW)
    out = widgets.draw_linearized(_ax(2), TASK.X, Y, TASK.X_test, Yt, key=1, **LIN_KW)
    f, fl = np.asarray(run.f_test[:, -1]), np.asarray(run.f_test_lin[:, -1])
    want_gap = np.mean([np.linalg.norm(a - b) / np.linalg.norm(b) for a, b in zip(f, fl)])
    assert out["out_gap"] == pytest.approx(want_gap, rel=1e-5)
    assert out["weight_gap"] == pytest.approx(
        float(np.mean(run.weight_gap[:, -1] / run.weight_change_lin[:, -1])), rel=1e-5)
    assert out["acc"] == pytest.approx(np.mean(f.argmax(-1) == Yt.argmax(-1)))
    assert out["loss_lin"] == pytest.approx(float(np.mean(run.loss_lin[:, -1])), rel=1e-6)
    assert 0 < out["out_gap"] < 1 and 0 < out["weight_gap"] < 1
    given = widgets.draw_linearized(_ax(2), TASK.X, Y, TASK.X_test, Yt, run=run, **LIN_KW)
    assert given == pytest.approx(out, rel=1e-6)
    for name, value in (("width", 32), ("parameterization", "mup"), ("n_seeds", 2), ("steps", 5)):
        with pytest.raises(ValueError, match=f"run was trained with {name} = "):
            widgets.draw_linearized(_ax(2), TASK.X, Y, TASK.X_test, Yt, run=run,
                                    **dict(LIN_KW, **{name: value}))
    with pytest.raises(ValueError, match=r"\by_test must have shape \(4, 3\)"):
        widgets.draw_linearized(_ax(2), TASK.X, Y, TASK.X_test, Yt[:, :2], run=run, **LIN_KW)
    with pytest.raises(ValueError, match="run must be a LinearizedRun"):
        widgets.draw_linearized(_ax(2), TASK.X, Y, TASK.X_test, Yt, run=run.loss, **LIN_KW)


@pytest.mark.parametrize("change, match", [
    (dict(widths=(8,)), r"\bwidths must"),
    (dict(eta=0.0), r"\beta must be"),
    (dict(y=TASK.y[:3]), r"\by must have shape \(6,\)"),
    (dict(y_test=TASK.y_test[:2]), r"\by_test must have shape \(4,\)"),
    (dict(X_test=TASK.X_test[:, :3]), r"\bX_test must have D=8"),
    (dict(steps=0), r"\bsteps must be"),
])
def test_linearized_panel_refuses_bad_input_naming_the_argument(change, match):
    kw = dict(X=TASK.X, y=TASK.y, X_test=TASK.X_test, y_test=TASK.y_test, widths=(8, 16),
              steps=10, n_seeds=2)
    with pytest.raises(ValueError, match=match):
        widgets.linearized_panel(**dict(kw, **change))
