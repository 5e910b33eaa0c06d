"""Presets, tasks, plotting helpers and the widget panels."""
import jax
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import widenets as wn  # noqa: E402


def test_preset_environment_variable_wins(monkeypatch):
    monkeypatch.setenv("WIDENETS_PRESET", "gpu")
    monkeypatch.setenv("CI", "true")
    assert wn.presets.name() == "gpu"


def test_ci_environment_selects_ci(monkeypatch):
    monkeypatch.delenv("WIDENETS_PRESET", raising=False)
    monkeypatch.setenv("CI", "true")
    assert wn.presets.name() == "ci"
    assert wn.presets.pick(ci=1, cpu=2, gpu=3) == 1
    assert "'ci'" in wn.presets.banner()


def test_cpu_without_accelerator(monkeypatch):
    monkeypatch.delenv("WIDENETS_PRESET", raising=False)
    monkeypatch.delenv("CI", raising=False)
    assert wn.presets.name() == "cpu"     # tests run with JAX_PLATFORMS=cpu


def test_bad_preset_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WIDENETS_PRESET", "tpu-pod")
    with pytest.raises(ValueError, match="WIDENETS_PRESET"):
        wn.presets.name()
    with pytest.raises(ValueError, match="preset"):
        wn.presets.pick(ci=1, cpu=2, preset="huge")
    assert wn.presets.pick(ci=1, cpu=2, preset="gpu") == 2     # gpu falls back to cpu


def test_gaussian_task():
    t = wn.data.gaussian_task(jax.random.PRNGKey(0), 7, 5, P_test=3)
    assert t.X.shape == (7, 5) and t.y.shape == (7,) and t.X_test.shape == (3, 5)
    np.testing.assert_allclose(np.sum(np.asarray(t.X) ** 2, axis=1), 5, rtol=1e-5)
    assert set(np.unique(np.asarray(t.y))) <= {-1.0, 1.0}
    np.testing.assert_allclose(np.diag(wn.data.input_kernel(t.X)), 1, rtol=1e-5)
    t2 = wn.data.gaussian_task(jax.random.PRNGKey(0), 7, 5, P_test=3)
    np.testing.assert_array_equal(t.X, t2.X)


def test_teacher_and_circle_tasks():
    t = wn.data.teacher_task(jax.random.PRNGKey(1), 50, 4)
    assert t.X.shape == (50, 4) and abs(float(np.std(np.asarray(t.y))) - 1) < 1e-3
    c = wn.data.regression_1d(12, P_test=30)
    assert c.X.shape == (12, 2) and c.X_test.shape == (30, 2)
    with pytest.raises(ValueError, match="P"):
        wn.data.gaussian_task(jax.random.PRNGKey(0), 0, 5)


def test_digits_fallback_images():
    xtr, ytr, xte, yte, source = wn.data.load_images("digits", n_train=100, n_test=50, flatten=True)
    assert source == "digits" and xtr.shape == (100, 64) and xte.shape == (50, 64)


def test_loglog_slope():
    x = np.array([1.0, 2.0, 4.0, 8.0])
    assert wn.plotting.loglog_slope(x, 3 * x ** -0.5)[0] == pytest.approx(-0.5)
    with pytest.raises(ValueError):
        wn.plotting.loglog_slope(x, -x)


def test_static_panels_draw_and_live_panels_build():
    task = wn.data.gaussian_task(jax.random.PRNGKey(0), 6, 8, P_test=4)
    fig, ax = plt.subplots()
    gap = wn.widgets.draw_lazy_training(ax, task, width=32, depth=1, lr_fraction=0.5, steps=10,
                                        n_seeds=1)
    assert np.isfinite(gap)
    fig, axes = plt.subplots(1, 2)
    loss, align = wn.widgets.draw_feature_learning(axes, task, width=32, gamma0=1.0, steps=10)
    assert np.isfinite(loss) and -1 <= align <= 1
    plt.close("all")
    import ipywidgets
    panel = wn.widgets.lazy_training_panel(task, widths=(16, 32), steps=5)
    assert isinstance(panel, ipywidgets.Widget)
    plt.close("all")
