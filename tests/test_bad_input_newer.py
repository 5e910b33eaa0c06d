"""Bad requests to the newer functions get a clear answer (issue 21, item 4, first part): each
case was a silent bad result or an opaque error in an independent bad-input sweep."""
import types

import jax
import matplotlib
import numpy as np
import pytest

import widenets as wn

matplotlib.use("Agg")


def _mc_solution():
    task = wn.data.gaussian_task(jax.random.PRNGKey(0), 3, 8)
    return wn.dmft.nonlinear(wn.data.input_kernel(task.X), task.y, depth=1, activation="relu",
                             gamma0=1.0, eta=0.1, steps=3, samples=200, key=1, progress=False)


def test_band_is_finite_far_in_the_tails_and_refuses_other_objects():
    """band(sigmas=9) was NaN/inf (the coverage norm.cdf(9) rounds to 1); it now grows with
    sigmas and stays finite; anything but a Monte-Carlo solution is refused by name."""
    sol = _mc_solution()
    b3, b9 = np.asarray(wn.dmft.band(sol, 3.0)), np.asarray(wn.dmft.band(sol, 9.0))
    assert np.all(np.isfinite(b9)) and np.all(b9[1:] > b3[1:])
    for bad in (object(), types.SimpleNamespace(params={"repeats": 8}), None):
        with pytest.raises(ValueError, match="sol"):
            wn.dmft.band(bad)
    for sigmas in (-1.0, float("nan"), 0.0):
        with pytest.raises(ValueError, match="sigmas"):
            wn.dmft.band(sol, sigmas)


def test_alignment_of_huge_kernels_is_not_lost_to_overflow():
    """alignment of two kernels of 1e200 returned 0.0 for a true 1.0 (the norms overflowed)."""
    K = np.array([[2.0, 1.0], [1.0, 3.0]])
    assert wn.kernels.alignment(1e200 * K, 1e200 * K) == pytest.approx(1.0, rel=1e-12)
    assert wn.kernels.alignment(1e-200 * K, K) == pytest.approx(1.0, rel=1e-12)
    assert wn.kernels.target_alignment(1e200 * K, np.array([1.0, -1.0])) == pytest.approx(
        wn.kernels.target_alignment(K, np.array([1.0, -1.0])), rel=1e-12)
    with pytest.raises(ValueError, match="finite"):
        wn.kernels.alignment(np.array([[np.inf, 0.0], [0.0, 1.0]]), K)


def test_loss_increases_refuses_a_bad_rtol():
    loss = np.array([[1.0, 0.5, 0.6]])
    assert wn.widgets.loss_increases(loss, rtol=0.0).tolist() == [1]
    for rtol in (-0.1, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="rtol"):
            wn.widgets.loss_increases(loss, rtol=rtol)


@pytest.mark.parametrize("kwargs, match", [(dict(sigmas=-1.0), "sigmas"),
                                           (dict(sigmas=float("nan")), "sigmas"),
                                           (dict(max_lines=-1), "max_lines"),
                                           (dict(var=-np.ones(4)), "var"),
                                           (dict(var=np.array([0.0, 1.0, np.nan, 1.0])), "var")])
def test_spread_band_refuses_bad_arguments(kwargs, match):
    import matplotlib.pyplot as plt
    args = dict(t=np.arange(4.0), samples=np.zeros((3, 4)), mean=np.zeros(4), var=np.ones(4),
                width=10)
    args.update(kwargs)
    fig, ax = plt.subplots()
    try:
        with pytest.raises(ValueError, match=match):
            wn.plotting.spread_band(ax, args.pop("t"), args.pop("samples"), args.pop("mean"),
                                    args.pop("var"), args.pop("width"), **args)
    finally:
        plt.close(fig)
