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
    """What band reads of a Monte-Carlo solution (wn.dmft.nonlinear's NonlinearSolution):
    params["repeats"] and loss_stderr (solving one costs ~14 s of compilation here)."""
    return wn.dmft.NonlinearSolution(
        delta=None, loss=np.ones(4), loss_stderr=np.array([0.0, 0.01, 0.02, 0.03]), ntk=None,
        phi=None, g=None, h=None, z=None, residuals=np.zeros(0), converged=True,
        method="monte-carlo", params={"repeats": 8}, kernel_err=None)


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


# ----------------------------------------------------------------------------- item 4, second part
def _task(P=4, D=8):
    task = wn.data.gaussian_task(jax.random.PRNGKey(0), P, D)
    return task, wn.data.input_kernel(task.X)


def _warnings(fn, *args, **kwargs):
    import warnings
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    return out, [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning)]


def _stable(msg):
    """The stable learning rate a divergence warning states."""
    import re
    return float(re.search(r"stable learning rate 2P/lambda_max\(K\(0\)\) = ([0-9.e+-]+)",
                           msg).group(1))


def test_divergence_is_reported_not_returned_as_success():
    """deep_linear above the stable eta, perturbative at gamma0 = 1e3 and the propagator above
    the stable eta returned converged=True (or nothing) silently; each now warns naming eta and
    the stable learning rate (which is right: 2P/lambda_max of the solver's own K(0)), or
    gamma0, and says converged=False. Just below the stable rate: no warning."""
    task, Kx = _task()
    sol, msgs = _warnings(wn.dmft.deep_linear, Kx, task.y, depth=2, gamma0=1.0, eta=50.0,
                          steps=8)
    assert not sol.converged and len(msgs) == 1 and "eta=50" in msgs[0]
    rate = 2 * 4 / np.linalg.eigvalsh(np.asarray(sol.ntk[0], np.float64))[-1]
    assert _stable(msgs[0]) == pytest.approx(rate, rel=1e-2)
    ok, msgs = _warnings(wn.dmft.deep_linear, Kx, task.y, depth=2, gamma0=1.0, eta=0.5 * rate,
                         steps=8)
    assert ok.converged and not msgs
    sol, msgs = _warnings(wn.dmft.perturbative, Kx, task.y, depth=2, gamma0=1e3, eta=0.5,
                          steps=8)
    assert not sol.converged and len(msgs) == 1 and "gamma0=1000" in msgs[0]
    two, K2 = _task(P=2)
    for depth, eta in ((1, 50.0), (2, 100.0)):    # the deep one reported a non-terminating sweep
        fl, msgs = _warnings(wn.fluctuations.propagator, K2, two.y, depth=depth,
                             activation="linear", gamma0=1.0, eta=eta, steps=8)
        assert not fl.converged and len(msgs) == 1, msgs
        assert f"eta={eta:g}" in msgs[0] and "terminate" not in msgs[0]
    fl, msgs = _warnings(wn.fluctuations.propagator, K2, two.y, depth=2, activation="linear",
                         gamma0=1.0, eta=0.5, steps=8)
    assert fl.converged and not msgs


def test_a_finite_but_growing_loss_counts_as_divergence():
    """Growth by GROWTH from the start, or above the start with eta above the stable rate, is
    divergence; a catapult that comes back down is not."""
    K0 = np.eye(2)                                     # stable eta 2P/1 = 4
    up = np.array([1.0, 3.0, 20.0])
    assert "grew from 1 to 20" in wn._checks.divergence(up, K0, 1.0, "x", "y")
    assert wn._checks.divergence(np.array([1.0, 3.0, 2.0]), K0, 1.0, "x", "y") is None
    assert "eta=5" in wn._checks.divergence(np.array([1.0, 3.0, 2.0]), K0, 5.0, "x", "y")
    assert wn._checks.divergence(np.array([1.0, 50.0, 0.1]), K0, 5.0, "x", "y") is None
    assert "not finite from step 2" in wn._checks.divergence(np.array([1.0, 2.0, np.inf]),
                                                             K0, 1.0, "x", "y")


def test_cnn_functions_refuse_or_report_non_finite_values():
    from widenets import nets
    X = np.random.default_rng(0).normal(size=(3, 6, 6, 1))
    net = nets.make_cnn((6, 6, 1), depth=1, width=8)
    params = nets.init_cnn_params(net, 0)
    bad = [p.at[0].set(np.nan) if i == 0 else p for i, p in enumerate(params)]
    with pytest.raises(ValueError, match=r"params\[0\] contains NaN"):
        nets.cnn_apply(net, bad, X)
    with pytest.raises(ValueError, match=r"X is too large for float32.*squared"):
        nets.cnn_init_kernels(net, 1e200 * X, 0)
    k, msgs = _warnings(nets.cnn_init_kernels, net, 1e18 * X, 0)   # just below that limit
    assert not msgs and all(np.all(np.isfinite(np.asarray(a))) for a in k)
    y = np.array([1.0, -1.0, 1.0])
    _, msgs = _warnings(nets.cnn_coord_check, X, y, widths=[8], parameterization="mup",
                        depth=1, eta=1e30, steps=2, key=0, n_seeds=1)
    assert msgs and "cnn_coord_check" in msgs[0] and "eta=1e+30" in msgs[0]


def test_a_loss_not_finite_before_the_first_step_does_not_blame_eta():
    from widenets import nets
    X = np.random.default_rng(0).normal(size=(3, 6, 6, 1))
    with pytest.raises(ValueError, match=r"y is too large for float32"):
        nets.train_cnn(X, np.array([1e30, -1.0, 1.0]), depth=1, width=8, eta=0.1, steps=2, key=0)
    task, _ = _task()
    with pytest.raises(ValueError, match=r"y is too large"):      # (train_mlp blamed X)
        nets.train_mlp(task.X, 1e30 * task.y, depth=1, width=8, eta=0.1, steps=2, key=0)
    with pytest.raises(ValueError, match=r"beta_star is too large"):
        nets.train_online(8, np.full(8, 1e30), depth=1, width=8, eta=0.1, steps=2,
                          batch_size=2, key=0)
    msg = nets._not_eta_cause(nets.make_mlp(8, depth=1, width=8), X, np.ones(3))
    assert "eta is not the cause" in msg and "lower eta" not in msg


def test_kernel_regression_refuses_overflowing_predictions():
    K = np.array([[1.0, 1.0 - 1e-9], [1.0 - 1e-9, 1.0]])
    with pytest.raises(ValueError, match="overflow.*ridge"):
        wn.kernels.kernel_regression(K, np.array([1e300, -1e300]), K)
    out = wn.kernels.kernel_regression(K, np.array([1.0, -1.0]), K, ridge=1e-3)
    assert np.all(np.isfinite(out))


def test_teacher_task_with_huge_noise_is_pure_noise_not_nan():
    t, msgs = _warnings(wn.data.teacher_task, 0, 200, 5, noise=1e300)
    assert msgs and "pure noise" in msgs[0]
    clean = wn.data.teacher_task(0, 200, 5)
    y = np.asarray(t.y, np.float64)
    assert np.all(np.isfinite(y)) and abs(y.mean()) < 1e-5 and abs(y.std() - 1) < 1e-4
    assert abs(np.corrcoef(y, np.asarray(clean.y))[0, 1]) < 0.25     # 200 points: s.e. 0.07
    mid = np.asarray(wn.data.teacher_task(0, 200, 5, noise=2.0).y)    # the two routes agree
    assert abs(np.corrcoef(mid, np.asarray(clean.y))[0, 1] - 1 / np.sqrt(5)) < 0.2


@pytest.mark.parametrize("change, match", [
    (dict(kappa=-np.ones((2,) * 4)), "kappa must be a covariance"),
    (dict(kappa=np.full((2,) * 4, np.nan)), "kappa contains NaN"),
    (dict(K=np.array([[1.0, 2.0], [2.0, 1.0]])), "K must be symmetric positive semi-definite"),
    (dict(K=np.array([[1.0, np.nan], [np.nan, 1.0]])), "K contains NaN"),
    (dict(K=np.float64(1.0)), r"K must be a non-empty square"),
    (dict(K=np.zeros((0, 0))), r"K must be a non-empty square"),
    (dict(eta=50.0), r"eta=50 is above the stable learning rate 2P/lambda_max\(K\) = 4"),
])
def test_lazy_delta_variance_validates_its_inputs(change, match):
    K = np.eye(2)
    kappa = (np.einsum("ac,bd->abcd", K, K) + np.einsum("ad,bc->abcd", K, K))
    args = dict(K=K, kappa=kappa, y=np.array([1.0, -1.0]), eta=0.5, steps=100)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        wn.fluctuations.lazy_delta_variance(args.pop("K"), args.pop("kappa"), args.pop("y"),
                                            **args)


def test_ensemble_refuses_a_wrong_solution_before_training():
    task, _ = _task()
    for bad, match in ((object(), "solution must be a DMFT solution"),
                       (types.SimpleNamespace(delta=np.zeros((3, 4))), r"solution.delta must "
                                                                        r"have shape \(6, 4\)"),
                       (types.SimpleNamespace(delta=np.full((6, 4), np.nan)), "solution.delta")):
        with pytest.raises(ValueError, match=match):
            wn.fluctuations.ensemble(task.X, task.y, depth=1, width=10 ** 6, activation="tanh",
                                     gamma0=1.0, eta=0.5, steps=5, n_seeds=4, key=0,
                                     solution=bad)


def test_size_refusals_name_the_argument_to_reduce():
    from widenets import nets
    task, _ = _task()
    X400 = np.ones((400, 2))
    with pytest.raises(ValueError, match="reduce the number of rows of X"):
        wn.fluctuations.init_ntk_covariance(X400, depth=1, width=8, activation="relu",
                                            n_seeds=4, key=0)
    with pytest.raises(ValueError, match="reduce the number of rows of X or depth"):
        wn.fluctuations.init_kernel_covariance(X400, depth=2, width=8, activation="relu",
                                               n_seeds=4, key=0)
    with pytest.raises(ValueError, match="reduce depth"):
        wn.fluctuations.init_relative_covariance(10 ** 7, "relu")
    # a linear network's beta comes from a backward pass: D = 10^5 (a 40 GB D x D probe
    # before) trains in a moment
    tr = nets.train_online(10 ** 5, np.ones(10 ** 5), depth=1, width=8, eta=0.1, steps=2,
                           batch_size=None, key=0)
    assert np.all(np.isfinite(np.asarray(tr.error)))
    with pytest.raises(ValueError, match="reduce n_test"):
        nets.train_online(8, np.ones(8), depth=1, width=8, activation="tanh", eta=0.1,
                          steps=2, batch_size=2, key=0, n_test=10 ** 9)
    with pytest.raises(ValueError, match="reduce the input dimension D=1000000000"):
        nets.init_params(nets.make_mlp(10 ** 9, depth=1, width=8), 0)
    with pytest.raises(ValueError, match="reduce P"):
        nets.minibatch_indices(10 ** 9, 10, 5, 0)
    with pytest.raises(ValueError, match="depth must be an integer <= 64"):
        wn.fluctuations.propagator(np.eye(1), np.ones(1), depth=10 ** 7, activation="linear",
                                   gamma0=1.0, eta=0.5, steps=5)
    with pytest.raises(ValueError, match="reduce the image size 128x128"):
        wn.kernels.cnn_analytic(np.ones((1, 128, 128, 1)), depth=1)


def test_train_cnn_blames_the_probe_images_for_their_memory(monkeypatch):
    from widenets import nets
    X = np.random.default_rng(0).normal(size=(4, 6, 6, 1))
    probe = np.random.default_rng(1).normal(size=(3000, 6, 6, 1))
    monkeypatch.setenv("WIDENETS_MEMORY_LIMIT", str(2 ** 26))
    with pytest.raises(ValueError, match=r"reduce X_probe"):
        nets.train_cnn(X, np.ones(4), depth=1, width=8, eta=0.1, steps=2, key=0, X_probe=probe)


def test_minibatch_indices_are_train_cnns_batches():
    """Built per epoch (memory steps x batch_size, not steps x P): the batches _batch_at gives
    inside train_cnn's scan."""
    from widenets.nets import _batch_at
    key = jax.random.PRNGKey(3)
    for P, B, steps in ((10, 3, 17), (8, 8, 5), (7, 1, 20), (12, 5, 2)):
        idx, mask = wn.nets.minibatch_indices(P, B, steps, key)
        at = jax.jit(_batch_at, static_argnums=(2, 3))
        ref = [at(key, t, P, B) for t in range(steps)]
        assert np.array_equal(idx, np.stack([np.asarray(r[0]) for r in ref]))
        assert np.array_equal(mask, np.stack([np.asarray(r[1]) for r in ref]))


def test_analytic_kernels_of_any_depth_compile_once():
    """The hidden layers are a scan: depth 1000 is quick, and a deeper network's first layers
    are the shallower one's."""
    X = np.random.default_rng(0).normal(size=(3, 4))
    k3 = wn.kernels.analytic(X, depth=3, activation="erf")
    k5 = wn.kernels.analytic(X, depth=5, activation="erf")
    np.testing.assert_allclose(np.asarray(k5.phi[:3]), np.asarray(k3.phi), rtol=1e-6)
    k1 = wn.kernels.analytic(X, depth=1, activation="erf")
    np.testing.assert_allclose(np.asarray(k3.phi[0]), np.asarray(k1.phi[0]), rtol=1e-6)
    deep = wn.kernels.analytic(X, depth=1000, activation="tanh")
    assert deep.phi.shape == (1000, 3, 3) and np.all(np.isfinite(np.asarray(deep.ntk)))


def test_long_runs_report_progress(monkeypatch, capsys):
    from widenets import _progress
    monkeypatch.setattr(_progress, "AFTER_S", 0.0)
    monkeypatch.setattr(_progress, "EVERY_S", 0.0)
    task, _ = _task()
    wn.nets.train_mlp(task.X, task.y, depth=1, width=8, eta=0.1, steps=2000, key=0)
    err = capsys.readouterr().err
    assert "train_mlp: step" in err and "left" in err and "train_mlp: done" in err
    wn.nets.train_mlp(task.X, task.y, depth=1, width=8, eta=0.1, steps=20, key=0)
    assert capsys.readouterr().err == ""      # short loops carry no hook
    # the book's executions turn the lines off (stderr fails the strict build)
    monkeypatch.setenv("WIDENETS_PROGRESS", "0")
    wn.nets.train_mlp(task.X, task.y, depth=1, width=8, eta=0.1, steps=2000, key=0)
    assert capsys.readouterr().err == ""


def test_memory_limit_honours_an_address_space_limit(monkeypatch):
    import resource
    from widenets import _checks
    monkeypatch.delenv("WIDENETS_MEMORY_LIMIT", raising=False)
    real = resource.getrlimit

    def fake(which):
        if which == resource.RLIMIT_AS:
            return (2 ** 50, resource.RLIM_INFINITY)     # ~1 PiB of address space ...
        return real(which)
    monkeypatch.setattr(resource, "getrlimit", fake)
    with open("/proc/self/status") as f:
        used = next(float(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
    assert _checks._imposed_limit() == pytest.approx(0.9 * (2 ** 50 - used), rel=1e-3)

    def tight(which):
        if which == resource.RLIMIT_AS:
            return (int(used) + 2 ** 30, resource.RLIM_INFINITY)   # ... or 1 GiB to spare
        return real(which)
    monkeypatch.setattr(resource, "getrlimit", tight)
    assert _checks.memory_limit() < 2 ** 30


# ----------------------------------------------------------------------------- the sweep's last finds
@pytest.mark.parametrize("kwargs, match", [
    (dict(samples="abc"), "samples must be an array of real numbers"),
    (dict(samples=np.array([1.0, np.nan, 2.0, 3.0, 4.0])), "samples contains NaN"),
    (dict(samples=np.array([1e300, -1e300, 1.0, 2.0, 3.0])), "samples are too large"),
    (dict(axis=5), "axis must be an integer <= 1"),
    (dict(axis=1.5), "axis must be an integer"),
    (dict(sum_axis=5), "sum_axis must be an integer <= 1"),
])
def test_variance_stderr_validates_its_inputs(kwargs, match):
    args = dict(samples=np.random.default_rng(0).normal(size=(6, 3)))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        wn.fluctuations.variance_stderr(args.pop("samples"), **args)


def test_more_inputs_validated():
    with pytest.raises(ValueError, match="loss must be an array of real numbers"):
        wn.widgets.loss_increases("abc")
    sol = types.SimpleNamespace(params={"repeats": 4}, loss_stderr=np.ones(3))
    with pytest.raises(ValueError, match="sigmas=1e.300 is too large"):
        wn.dmft.band(sol, 1e300)
    assert np.all(np.isfinite(wn.dmft.band(sol, 20.0)))
    with pytest.raises(ValueError, match="Kx is too large for float32"):
        wn.dmft.deep_linear(1e200 * np.eye(2), np.ones(2), depth=1, gamma0=1.0, eta=0.1, steps=2)
    with pytest.raises(ValueError, match="Kx is too large"):
        wn.fluctuations.propagator(1e200 * np.eye(2), np.ones(2), depth=1, activation="linear",
                                   gamma0=1.0, eta=0.1, steps=2)
    with pytest.raises(ValueError, match="beta_star_norm is too large"):
        wn.fluctuations.online_error(8, 1e300, gamma0=1.0, eta=0.1, steps=2)


@pytest.mark.parametrize("arg", ["samples", "mean", "t"])
def test_spread_band_refuses_nan(arg):
    import matplotlib.pyplot as plt
    args = dict(t=np.arange(4.0), samples=np.zeros((3, 4)), mean=np.zeros(4), var=np.ones(4))
    args[arg] = args[arg].copy()
    args[arg].flat[1] = np.nan
    fig, ax = plt.subplots()
    try:
        with pytest.raises(ValueError, match=f"{arg} contains NaN"):
            wn.plotting.spread_band(ax, args["t"], args["samples"], args["mean"], args["var"], 10)
    finally:
        plt.close(fig)


def test_normalize_keeps_rows_that_leave_the_float_range():
    """Rows of 1e-200 were refused as 'rows of zeros' and rows of 1e200 as too large for
    float32: normalize works in float64 on the host, so both keep their direction."""
    X = np.random.default_rng(0).normal(size=(3, 4))
    ref = np.asarray(wn.data.normalize(X))
    for scale in (1e-200, 1e200, 1e-30, 1e30):
        np.testing.assert_allclose(np.asarray(wn.data.normalize(scale * X)), ref, rtol=1e-6)
    with pytest.raises(ValueError, match="rows of zeros"):
        wn.data.normalize(np.zeros((2, 3)))


def test_picard_non_convergence_names_max_iter():
    task, Kx = _task()
    _, msgs = _warnings(wn.dmft.deep_linear, Kx, task.y, depth=2, gamma0=1.0, eta=0.3, steps=4,
                        method="picard", max_iter=1)
    assert msgs and "max_iter=1" in msgs[0]


def test_picard_divergence_names_eta_not_the_kernel():
    """The Picard iteration blows up everywhere, K(0) included; the stable rate is then that of
    the closed-form K(0) = (L + 1) Kx."""
    task, Kx = _task()
    sol, msgs = _warnings(wn.dmft.deep_linear, Kx, task.y, depth=2, gamma0=1.0, eta=1e4,
                          steps=4, method="picard")
    rate = 2 * 4 / np.linalg.eigvalsh(3 * np.asarray(Kx, np.float64))[-1]
    assert not sol.converged and "eta=10000" in msgs[0]
    assert _stable(msgs[0]) == pytest.approx(rate, rel=1e-2)


def test_a_finite_but_diverging_cnn_warns():
    d = wn.data.images("digits", classes=(0, 1), n_train=8, n_test=4, key=0)
    _, msgs = _warnings(wn.nets.train_cnn, d.X, d.y, depth=1, width=16, activation="erf",
                        eta=500.0, steps=5, key=0)
    assert msgs and "train_cnn: training diverged" in msgs[0] and "eta=500" in msgs[0]
    _, msgs = _warnings(wn.nets.train_cnn, d.X, d.y, depth=1, width=16, activation="erf",
                        eta=0.5, steps=5, key=0)
    assert not msgs


def test_kernel_regression_warns_when_ill_conditioned():
    K = np.ones((2, 2)) + 1e-13 * np.eye(2)
    _, msgs = _warnings(wn.kernels.kernel_regression, K, np.array([1.0, -1.0]), K)
    assert msgs and "ill-conditioned" in msgs[0] and "ridge" in msgs[0]
    _, msgs = _warnings(wn.kernels.kernel_regression, K, np.array([1.0, -1.0]), K, ridge=1e-3)
    assert not msgs


def test_large_ensembles_run_in_chunks_with_the_same_networks(monkeypatch, capsys):
    from widenets import _progress, nets
    task, _ = _task()
    kw = dict(depth=1, width=16, eta=0.5, steps=5, n_seeds=150)
    for key in (0, jax.random.key(1)):
        whole = nets.train_mlp(task.X, task.y, key=key, **kw)
        monkeypatch.setattr(nets, "SEED_CHUNK", 64)
        monkeypatch.setattr(_progress, "AFTER_S", 0.0)
        monkeypatch.setattr(_progress, "EVERY_S", 0.0)
        parts = nets.train_mlp(task.X, task.y, key=key, **kw)
        assert "of 150 networks" in capsys.readouterr().err
        monkeypatch.setattr(nets, "SEED_CHUNK", 4096)
        np.testing.assert_allclose(np.asarray(parts.loss), np.asarray(whole.loss), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(parts.ntk), np.asarray(whole.ntk), rtol=1e-5)


def test_nonlinear_panel_checks_its_deepest_setting():
    task, _ = _task()
    with pytest.raises(ValueError, match="reduce width"):
        wn.widgets.nonlinear_panel(task.X, task.y, width=10 ** 8)


def test_a_diverging_ensemble_warns_and_returns_nan_statistics():
    """train_mlp warns; the ensemble's error bars are NaN beside its NaN variances (it raised
    variance_stderr's 'samples contains NaN' before)."""
    task, _ = _task()
    ens, msgs = _warnings(wn.fluctuations.ensemble, task.X, task.y, depth=1, width=16,
                          activation="tanh", gamma0=1.0, eta=1e3, steps=10, n_seeds=4, key=0)
    assert msgs and "eta=1000" in msgs[0]
    assert not np.all(np.isfinite(ens.delta)) and not np.all(np.isfinite(ens.delta_stderr))


def test_zero_kernel_has_no_largest_learning_rate():
    with pytest.raises(ValueError, match="K is zero"):
        wn.kernels.max_learning_rate(np.zeros((2, 2)))
