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
