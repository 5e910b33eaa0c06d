"""widenets.widgets: the static drawing function and the live slider panel (Agg backend)."""
import jax
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import widenets as wn  # noqa: E402

TASK = wn.data.gaussian_task(jax.random.PRNGKey(0), 6, 8, P_test=4)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_draw_lazy_training_returns_a_finite_test_gap():
    fig, ax = plt.subplots()
    gap = wn.widgets.draw_lazy_training(ax, TASK, width=64, depth=1, lr_fraction=0.5, steps=20,
                                        n_seeds=1)
    assert isinstance(gap, float) and np.isfinite(gap) and gap >= 0
    lines = ax.get_lines()
    assert len(lines) == 2                          # the network and the NTK predictor
    assert all(len(ln.get_xdata()) == 21 for ln in lines)
    assert all(np.all(np.isfinite(ln.get_ydata())) for ln in lines)


def test_lazy_training_panel_is_an_ipywidgets_widget():
    import ipywidgets
    panel = wn.widgets.lazy_training_panel(TASK, widths=(32, 64), steps=5)
    assert isinstance(panel, ipywidgets.Widget)
    sliders = {c.description: c for c in panel.children if hasattr(c, "description")}
    assert sliders["width N"].options == (32, 64) and sliders["width N"].value == 64


def test_draw_lazy_training_works_for_tanh():
    fig, ax = plt.subplots()
    gap = wn.widgets.draw_lazy_training(ax, TASK, width=64, depth=1, lr_fraction=0.5, steps=20,
                                        n_seeds=1, activation="tanh")
    assert np.isfinite(gap)


def test_draw_nonlinear_plots_theory_and_networks():
    fig, axes = plt.subplots(1, 3)
    out = wn.widgets.draw_nonlinear(axes, TASK.X, TASK.y, gamma0=1.0, activation="relu", depth=1,
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
    out = wn.widgets.draw_nonlinear(axes, TASK.X, TASK.y, gamma0=1.0, activation="tanh", depth=2,
                                    eta=0.5, steps=3, samples=32, width=None)
    assert out["networks"] is None and out["kurtosis_networks"] is None
    assert np.isfinite(out["dmft"]) and np.isfinite(out["kurtosis"])
    assert len(axes[0].get_lines()) == 2                       # DMFT and static NTK only


def test_draw_nonlinear_deep_relu():
    fig, axes = plt.subplots(1, 3)
    out = wn.widgets.draw_nonlinear(axes, TASK.X, TASK.y, gamma0=1.0, activation="relu", depth=2,
                                    eta=0.5, steps=3, samples=32, width=16, n_seeds=1)
    assert all(np.isfinite(v) for v in out.values())


def test_nonlinear_panel_is_an_ipywidgets_widget():
    import ipywidgets
    panel = wn.widgets.nonlinear_panel(TASK.X, TASK.y, eta=0.5, steps=3, samples=16, width=16,
                                       n_seeds=1)
    assert isinstance(panel, ipywidgets.Widget)
    controls = {c.description: c for c in panel.children if hasattr(c, "description")}
    assert set(controls) >= {"γ0", "activation", "depth L"}
    assert controls["activation"].options == ("relu", "tanh", "erf", "linear")
    controls["depth L"].value = 2                              # re-draws without an error
    assert controls["depth L"].value == 2


@pytest.mark.parametrize("make, names", [
    (lambda: wn.widgets.feature_learning_panel(TASK, widths=(16, 32), steps=3),
     {"γ0", "width N", "param."}),
    (lambda: wn.widgets.deep_linear_panel(wn.data.input_kernel(TASK.X), TASK.y, steps=3),
     {"γ0", "depth L", "η"}),
])
def test_every_panel_draws_its_figure_from_its_controls(make, names):
    import ipywidgets
    plt.close("all")
    panel = make()                     # the panel draws once on creation (outside a kernel a
    assert isinstance(panel, ipywidgets.Widget)   # failing callback only logs: check the figure)
    controls = {c.description: c for c in panel.children if hasattr(c, "description")}
    assert set(controls) >= names
    figs = [plt.figure(n) for n in plt.get_fignums()]
    assert len(figs) == 1 and len(figs[0].axes) >= 2
    assert all(ax.has_data() for ax in figs[0].axes[:2])
