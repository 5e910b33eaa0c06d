"""widenets.plotting: the fitted slopes that chapters assert, and the shared figure helpers."""
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from widenets import plotting  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("slope, prefactor", [(-0.5, 3.0), (1.0, 0.2), (2.5, 10.0)])
def test_loglog_slope_recovers_a_power_law(slope, prefactor):
    x = np.array([1.0, 2.0, 4.0, 8.0, 64.0])
    s, c = plotting.loglog_slope(x, prefactor * x ** slope)
    assert s == pytest.approx(slope, abs=1e-10)
    assert np.exp(c) == pytest.approx(prefactor, rel=1e-10)


def test_loglog_slope_is_the_least_squares_fit_in_log_space():
    """Three points off a line: the slope is the ordinary least-squares slope of log y on log x,
    written out as cov / var."""
    x, y = np.array([1.0, 10.0, 100.0]), np.array([1.0, 3.0, 5.0])
    lx, ly = np.log(x), np.log(y)
    expected = np.sum((lx - lx.mean()) * (ly - ly.mean())) / np.sum((lx - lx.mean()) ** 2)
    assert plotting.loglog_slope(x, y)[0] == pytest.approx(expected, rel=1e-12)


def test_errorband_draws_the_mean_and_a_standard_error_band():
    fig, ax = plt.subplots()
    samples = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 7.0]])          # 2 samples at 3 points
    line = plotting.errorband(ax, [1, 2, 3], samples, label="m")
    np.testing.assert_allclose(line.get_ydata(), [2.0, 3.0, 5.0])
    (band,) = ax.collections
    ys = band.get_paths()[0].vertices[:, 1]
    se = np.std(samples, axis=0, ddof=1) / np.sqrt(2)                  # [1, 1, 2]
    assert ys.min() == pytest.approx((samples.mean(0) - se).min())
    assert ys.max() == pytest.approx((samples.mean(0) + se).max())


def test_reference_slope_draws_the_power_law_through_its_first_point():
    fig, ax = plt.subplots()
    plotting.reference_slope(ax, [2.0, 4.0, 8.0], 3.0, -0.5)
    (line,) = ax.get_lines()
    np.testing.assert_allclose(line.get_ydata(), 3.0 * np.array([1.0, 2.0, 4.0]) ** -0.5)
    assert line.get_label() == r"$\propto N^{-0.5}$"


def test_loglog_and_style():
    plotting.style()
    assert matplotlib.rcParams["axes.spines.top"] is False
    fig, ax = plt.subplots()
    plotting.loglog(ax)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"


# ----------------------------------------------------------------------------- bad input
def _ax():
    return plt.subplots()[1]


BAD_INPUTS = [
    *[pytest.param(plotting.loglog_slope, dict(x=x, y=y), m, id=f"loglog_slope-{i}")
      for i, (x, y, m) in enumerate([
          ([1.0, 2.0], [1.0, -1.0], r"positive, finite y"),
          ([0.0, 2.0], [1.0, 2.0], r"positive, finite x"),
          ([-1.0, 2.0], [1.0, 2.0], r"positive, finite x"),
          ([1.0, 2.0], [0.0, 2.0], r"positive, finite y"),
          ([1.0, np.nan], [1.0, 2.0], r"positive, finite x"),
          ([1.0, 2.0], [np.inf, 2.0], r"positive, finite y"),
          ([1.0, 2.0, 3.0], [1.0, 2.0], r"\by must be shape \(3,\)"),
          ([[1.0, 2.0]], [1.0, 2.0], r"\bx must be a 1-d array"),
          ([2.0, 2.0], [1.0, 3.0], r"at least two distinct x"),
          ([1.0], [1.0], r"at least two distinct x"),
          (["a", "b"], [1.0, 2.0], r"\bx must be an array of real numbers"),
          ([1.0, 2.0], None, r"\by must be an array of real numbers"),
      ])],
    pytest.param(plotting.reference_slope, dict(x=[1.0, 2.0], y0=-1.0, slope=1.0),
                 r"\by0 must be", id="reference_slope-y0"),
    pytest.param(plotting.reference_slope, dict(x=[1.0, 2.0], y0=1.0, slope=np.nan),
                 r"\bslope must be finite", id="reference_slope-slope"),
    pytest.param(plotting.reference_slope, dict(x=[0.0, 2.0], y0=1.0, slope=1.0),
                 r"positive, finite x", id="reference_slope-x"),
    pytest.param(plotting.errorband, dict(x=[1, 2], samples=np.ones((4, 3))),
                 r"\bx must have one entry per point, shape \(3,\)", id="errorband-x"),
    pytest.param(plotting.errorband, dict(x=[1, 2, 3], samples=np.full((4, 3), np.nan)),
                 r"\bsamples contains NaN", id="errorband-nan"),
    pytest.param(plotting.errorband, dict(x=[1, 2, 3], samples=np.ones((2, 3, 4))),
                 r"\bsamples must be 1-d or 2-d", id="errorband-3d"),
    pytest.param(plotting.errorband, dict(x=[1, 2, 3], samples=[["a"] * 3] * 2),
                 r"\bsamples must be an array of real numbers", id="errorband-str"),
    *[pytest.param(fn, dict(ax=ax, **kw), r"\bax must be a matplotlib Axes", id=f"{fn.__name__}-ax")
      for fn, kw in ((plotting.loglog, {}),
                     (plotting.errorband, dict(x=[1, 2], samples=np.ones((2, 2)))),
                     (plotting.reference_slope, dict(x=[1.0, 2.0], y0=1.0, slope=1.0)))
      for ax in (None,)],
]


@pytest.mark.parametrize("fn, kwargs, match", BAD_INPUTS)
def test_bad_input_raises_a_value_error_that_says_what_is_wrong(fn, kwargs, match):
    if fn in (plotting.reference_slope, plotting.errorband) and "ax" not in kwargs:
        kwargs = dict(ax=_ax(), **kwargs)
    with pytest.raises(ValueError, match=match):
        fn(**kwargs)
