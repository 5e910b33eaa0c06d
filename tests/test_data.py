"""widenets.data: the toy tasks, the input kernel and the small image data sets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from widenets import data


# ----------------------------------------------------------------------------- Gaussian task
def test_gaussian_task_shapes_normalised_rows_and_binary_targets():
    t = data.gaussian_task(jax.random.PRNGKey(0), 7, 5, P_test=3)
    assert t.X.shape == (7, 5) and t.y.shape == (7,)
    assert t.X_test.shape == (3, 5) and t.y_test.shape == (3,)
    for Xa in (t.X, t.X_test):
        np.testing.assert_allclose(np.sum(np.asarray(Xa) ** 2, axis=1), 5, rtol=1e-5)
    assert set(np.unique(np.concatenate([t.y, t.y_test]))) <= {-1.0, 1.0}
    no_test = data.gaussian_task(jax.random.PRNGKey(0), 7, 5)
    assert no_test.X_test is None and no_test.y_test is None


def test_gaussian_task_is_reproducible_with_the_same_key_and_accepts_an_integer_seed():
    a = data.gaussian_task(jax.random.PRNGKey(3), 9, 4, P_test=2)
    b = data.gaussian_task(jax.random.PRNGKey(3), 9, 4, P_test=2)
    c = data.gaussian_task(jax.random.PRNGKey(4), 9, 4, P_test=2)
    d = data.gaussian_task(3, 9, 4, P_test=2)                 # an int seed is PRNGKey(seed)
    for field in ("X", "y", "X_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        np.testing.assert_array_equal(getattr(a, field), getattr(d, field))
    assert not np.allclose(a.X, c.X)


def test_gaussian_task_targets_are_both_signs():
    y = np.asarray(data.gaussian_task(jax.random.PRNGKey(1), 200, 3).y)
    assert 0.3 < np.mean(y > 0) < 0.7       # Bernoulli(1/2): 200 draws, std of the mean 0.035


# ----------------------------------------------------------------------------- teacher task
@pytest.mark.parametrize("activation", ["tanh", "relu", "linear"])
@pytest.mark.parametrize("noise", [0.0, 0.5, 2.0])
def test_teacher_task_targets_have_zero_mean_and_unit_variance_at_any_noise(activation, noise):
    """The docstring's promise: unit-variance targets. Before the fix the noise was added after
    standardising, so the variance was 1 + noise^2 (1.25 and 5 here)."""
    t = data.teacher_task(jax.random.PRNGKey(1), 50, 4, P_test=10, activation=activation,
                          noise=noise)
    assert t.X.shape == (50, 4) and t.y.shape == (50,)
    assert t.X_test.shape == (10, 4) and t.y_test.shape == (10,)
    y_all = np.concatenate([t.y, t.y_test])          # standardised over train + test together
    assert abs(float(np.std(y_all)) - 1) < 1e-4 and abs(float(np.mean(y_all))) < 1e-5
    np.testing.assert_allclose(np.sum(np.asarray(t.X) ** 2, axis=1), 4, rtol=1e-5)


def test_teacher_targets_are_the_standardised_teacher_plus_the_stated_amount_of_noise():
    """Same key: the noiseless targets are act(beta . x / sqrt(D)) standardised (recomputed here
    from the inputs and the key's beta); with noise, the residual from the noiseless targets
    (after undoing the final rescaling) has standard deviation `noise`."""
    key, P, D, noise = jax.random.PRNGKey(7), 2000, 6, 0.5
    clean = data.teacher_task(key, P, D)
    noisy = data.teacher_task(key, P, D, noise=noise)
    np.testing.assert_array_equal(clean.X, noisy.X)
    beta = np.asarray(jax.random.normal(jax.random.split(key, 3)[1], (D,)), np.float64)
    z = np.tanh(np.asarray(clean.X, np.float64) @ beta / np.sqrt(D))
    np.testing.assert_allclose(clean.y, (z - z.mean()) / z.std(), atol=1e-5)
    # noisy = (clean + noise * n - mean) / s with s = std(clean + noise * n) ~ sqrt(1 + noise^2)
    s = np.sqrt(1 + noise ** 2)
    residual = np.asarray(noisy.y) * s - np.asarray(clean.y)
    assert np.std(residual) == pytest.approx(noise, rel=0.06)     # 2000 draws: 1.6% s.e.
    assert np.corrcoef(clean.y, noisy.y)[0, 1] == pytest.approx(1 / s, abs=0.03)


def test_teacher_task_without_noise_is_bit_identical_to_the_formula_before_the_fix():
    """Chapter 2 uses noise = 0: its targets must not move. The old formula, written out here:
    (z - mean z) / (std z + 1e-12) + 0 * noise draw."""
    key, P, D = jax.random.PRNGKey(0), 32, 20
    t = data.teacher_task(key, P, D, P_test=100)
    _, kb, kn = jax.random.split(key, 3)
    X = jnp.concatenate([t.X, t.X_test])
    z = jnp.tanh(X @ jax.random.normal(kb, (D,)) / jnp.sqrt(D))
    old = (z - z.mean()) / (z.std() + 1e-12) + 0.0 * jax.random.normal(kn, z.shape)
    np.testing.assert_array_equal(np.concatenate([t.y, t.y_test]), old)


# ----------------------------------------------------------------------------- kernels, circle
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), P=st.sampled_from([1, 3, 7]), D=st.sampled_from([1, 4]),
       log_scale=st.floats(-30, 30))
def test_input_kernel_has_unit_diagonal_on_normalised_inputs_of_any_scale(seed, P, D, log_scale):
    """normalize() rescales rows of any size, even 1e-30 or 1e30 whose squares leave float32."""
    X = (10.0 ** log_scale * np.random.default_rng(seed).standard_normal((P, D))).astype(np.float32)
    K = np.asarray(data.input_kernel(data.normalize(X)))
    assert K.shape == (P, P)
    np.testing.assert_allclose(np.diag(K), 1, rtol=1e-5)
    np.testing.assert_allclose(K, K.T, atol=1e-6)


def test_input_kernel_is_x_xt_over_d():
    X = np.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(data.input_kernel(X), X @ X.T / 4, rtol=1e-6)


def test_regression_1d_shapes_targets_and_inputs_on_the_circle():
    t = data.regression_1d(12, P_test=30)
    assert t.X.shape == (12, 2) and t.y.shape == (12,)
    assert t.X_test.shape == (30, 2) and t.y_test.shape == (30,)
    np.testing.assert_allclose(np.sum(np.asarray(t.X) ** 2, axis=1), 2, rtol=1e-5)
    theta = np.arctan2(np.asarray(t.X)[:, 1], np.asarray(t.X)[:, 0])
    np.testing.assert_allclose(t.y, np.sin(2 * theta), atol=1e-5)      # target fn(2 theta)
    cos = data.regression_1d(5, P_test=0, fn=np.cos)
    assert cos.X_test.shape == (0, 2)


# ----------------------------------------------------------------------------- images
def test_a_truly_huge_task_is_refused_against_the_real_limit(monkeypatch):
    monkeypatch.delenv("WIDENETS_MEMORY_LIMIT", raising=False)
    with pytest.raises(ValueError, match=r"GiB.*available here"):
        data.gaussian_task(0, 10 ** 9, 1000)


# ----------------------------------------------------------------------------- bad input
KEYS = jax.random.split(jax.random.PRNGKey(0), 2)
TASK_ARGS = dict(key=0, P=5, D=3)
NAN_X = np.array([[1.0, np.nan], [0.5, 0.5]])


def _bad(fn, base, match, /, **change):
    label = "-".join(f"{k}={v!r}"[:24] for k, v in change.items())
    return pytest.param(fn, {**base, **change}, match, id=f"{fn.__name__}-{label}")


BAD_INPUTS = [
    *[_bad(fn, TASK_ARGS, m, **c) for fn in (data.gaussian_task, data.teacher_task) for m, c in (
        (r"\bP must be an integer", dict(P=0)),
        (r"\bP must be an integer", dict(P=-5)),
        (r"\bP must be an integer", dict(P=5.5)),
        (r"\bP must be an integer", dict(P="5")),
        (r"\bP must be an integer", dict(P=True)),
        (r"\bD must be an integer", dict(D=0)),
        (r"\bD must be an integer", dict(D=3.0)),
        (r"\bD must be an integer", dict(D=None)),
        (r"\bP_test must be an integer >= 0", dict(P_test=-1)),
        (r"\bP_test must be an integer", dict(P_test=2.5)),
        (r"\bkey must be a JAX PRNG key", dict(key="seed")),
        (r"\bkey must be a JAX PRNG key", dict(key=None)),
        (r"\bkey must be a JAX PRNG key", dict(key=1.5)),
        (r"\bkey must be a JAX PRNG key", dict(key=KEYS)),
        (r"\bkey: an integer seed must fit", dict(key=2 ** 80)),
        (r"would need about .*reduce P, P_test or D", dict(P=10 ** 12)),
    )],
    *[_bad(data.teacher_task, TASK_ARGS, m, **c) for m, c in (
        (r"\bnoise must be", dict(noise=-1.0)),
        (r"\bnoise must be", dict(noise=np.nan)),
        (r"\bnoise must be", dict(noise="0.1")),
        (r"\bnoise must be", dict(noise=True)),
        (r"\bactivation must be one of", dict(activation="sigmoid")),
        (r"\bactivation must be one of", dict(activation=None)),
        (r"needs P \+ P_test >= 2", dict(P=1)),
    )],
    *[_bad(data.regression_1d, {"P": 8}, m, **c) for m, c in (
        (r"\bP must be an integer", dict(P=0)),
        (r"\bP must be an integer", dict(P=4.0)),
        (r"\bP_test must be an integer >= 0", dict(P_test=-2)),
        (r"\bP_test must be an integer", dict(P_test=1.5)),
        (r"\bD must be 2", dict(D=3)),
        (r"\bD must be 2", dict(D=True)),
        (r"\bfn must be a function", dict(fn="sin")),
        (r"\bfn\(2 theta\) contains NaN", dict(fn=lambda t: np.where(t > 3, np.nan, t))),
        (r"\bfn\(2 theta\) must have shape \(8,\)", dict(fn=lambda t: t[:3])),
        (r"\bfn\(2 theta\) must be an array of real", dict(fn=lambda t: t.astype(str))),
    )],
    *[_bad(fn, {"X": NAN_X}, m, **c) for fn in (data.normalize, data.input_kernel) for m, c in (
        (r"\bX contains NaN", {}),
        (r"\bX must have shape \(P, D\)", dict(X=np.ones(3))),
        (r"\bX must have shape \(P, D\)", dict(X=np.ones((0, 3)))),
        (r"\bX must be an array of real", dict(X=[["a", "b"]])),
        (r"\bX must be an array of real", dict(X=None)),
    )],
    _bad(data.normalize, {}, r"\bX has rows of zeros", X=np.array([[1.0, 2.0], [0.0, 0.0]])),
    _bad(data.input_kernel, {}, r"X X\^T / D overflows", X=np.full((2, 2), 1e30, np.float32)),
]


@pytest.mark.parametrize("fn, kwargs, match", BAD_INPUTS)
def test_bad_input_raises_a_value_error_that_says_what_is_wrong(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(**kwargs)


# ----------------------------------------------------------------------------- images(): digits
def test_images_digits_shapes_dtypes_and_pm1_targets_for_two_classes():
    d = data.images("digits", classes=(3, 5), n_train=40, n_test=20, key=jax.random.PRNGKey(0))
    assert isinstance(d, data.Images) and d.name == "digits" and d.classes == (3, 5)
    assert d.X.shape == (40, 8, 8, 1) and d.X_test.shape == (20, 8, 8, 1)
    assert d.X.dtype == jnp.float32 and d.X_test.dtype == jnp.float32
    assert d.y.shape == (40,) and d.y_test.shape == (20,) and d.y.dtype == jnp.float32
    for y, lab in ((d.y, d.labels), (d.y_test, d.labels_test)):
        lab = np.asarray(lab)
        assert set(np.unique(lab)) <= {3, 5}
        # classes[0] -> -1, classes[1] -> +1
        np.testing.assert_array_equal(np.asarray(y), np.where(lab == 3, -1.0, 1.0))
    assert d.class_names == ("3", "5")
    swapped = data.images("digits", classes=(5, 3), n_train=40, n_test=20, key=0)
    np.testing.assert_array_equal(np.asarray(swapped.y)[np.asarray(swapped.labels) == 5], -1.0)


def test_images_centred_one_hot_targets_for_three_classes():
    d = data.images("digits", classes=[7, 0, 2], n_train=30, n_test=12, key=1)
    assert d.y.shape == (30, 3) and d.y_test.shape == (12, 3)
    for y, lab in ((d.y, d.labels), (d.y_test, d.labels_test)):
        y, lab = np.asarray(y), np.asarray(lab)
        expected = (lab[:, None] == np.array([7, 0, 2])[None, :]) - 1 / 3
        np.testing.assert_allclose(y, expected, atol=1e-7)
        np.testing.assert_allclose(y.sum(axis=1), 0, atol=1e-6)


def test_images_normalisation_uses_the_training_split_only():
    key = jax.random.PRNGKey(2)
    d = data.images("digits", classes=(0, 1), n_train=50, n_test=30, key=key)
    X = np.asarray(d.X, np.float64)
    np.testing.assert_allclose(X.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(X.std(axis=(0, 1, 2)), 1, rtol=1e-5)
    raw = data.images("digits", classes=(0, 1), n_train=50, n_test=30, key=key, normalize=False)
    Xr, Xr_test = np.asarray(raw.X, np.float64), np.asarray(raw.X_test, np.float64)
    assert Xr.min() >= 0 and Xr.max() <= 1                    # pixels scaled to [0, 1]
    mean, std = Xr.mean(axis=(0, 1, 2)), Xr.std(axis=(0, 1, 2))
    np.testing.assert_allclose(d.mean, mean, rtol=1e-5)
    np.testing.assert_allclose(d.std, std, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(d.X_test), (Xr_test - mean) / std, atol=1e-5)
    assert abs(np.asarray(d.X_test).mean()) > 1e-4       # the test split is not re-centred


def test_images_same_key_reproduces_another_key_differs_and_splits_are_disjoint():
    kw = dict(classes=(0, 1), n_train=60, n_test=40)
    a = data.images("digits", key=jax.random.PRNGKey(5), **kw)
    b = data.images("digits", key=jax.random.PRNGKey(5), **kw)
    c = data.images("digits", key=jax.random.PRNGKey(6), **kw)
    for field in ("X", "y", "X_test", "y_test", "labels", "labels_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.X, c.X)
    # disjoint and without repeats: every image of the two splits together is distinct
    allX = np.concatenate([np.asarray(a.X), np.asarray(a.X_test)]).reshape(100, -1)
    assert len(np.unique(allX, axis=0)) == 100
    # the whole pool: 360 images of classes 0 and 1, split exactly, none left over or repeated
    full = data.images("digits", classes=(0, 1), n_train=300, n_test=60, key=0, normalize=False)
    pool = np.concatenate([np.asarray(full.X), np.asarray(full.X_test)]).reshape(360, -1)
    from sklearn.datasets import load_digits
    dg = load_digits()
    ref = dg.images[np.isin(dg.target, (0, 1))].reshape(-1, 64) / 16
    assert sorted(map(tuple, np.round(pool, 6))) == sorted(map(tuple, np.round(ref, 6)))


# ----------------------------------------------------------------------------- images(): CIFAR-10
def _fake_cifar_tarball(path, n_train_per_batch=4, n_test=6, seed=0):
    """A CIFAR-10-format tarball: cifar-10-batches-py/{data_batch_1..5, test_batch,
    batches.meta}, each batch a protocol-2 pickle of {b"data": uint8 (n, 3072) with the red, then
    green, then blue planes of each 32x32 image, b"labels": [ints]}; returns the images
    (n, 32, 32, 3) and labels it wrote, train and test."""
    import io
    import pickle
    import tarfile
    rng = np.random.default_rng(seed)
    out = {}
    with tarfile.open(path, "w:gz") as tar:
        def add(name, obj):
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        for name, n in [*[(f"data_batch_{i}", n_train_per_batch) for i in range(1, 6)],
                        ("test_batch", n_test)]:
            img = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            labels = [int(v) for v in np.arange(n) % 10]
            planes = img.transpose(0, 3, 1, 2).reshape(n, 3072)      # R, G, B planes per row
            add(name, {b"batch_label": name.encode(), b"data": planes, b"labels": labels})
            out[name] = (img, np.array(labels))
        add("batches.meta", {b"label_names": [s.encode() for s in data.CIFAR10_NAMES]})
    Xtr = np.concatenate([out[f"data_batch_{i}"][0] for i in range(1, 6)])
    ytr = np.concatenate([out[f"data_batch_{i}"][1] for i in range(1, 6)])
    return Xtr, ytr, *out["test_batch"]


def _no_network(monkeypatch):
    import urllib.request

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (simulated)")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_images_cifar10_parses_a_cached_tarball(tmp_path, monkeypatch):
    """A fake CIFAR-format tarball in the cache dir: read in place, no download attempted;
    the images come back channels-last, pixel for pixel, with their labels."""
    _no_network(monkeypatch)
    Xtr, ytr, Xte, yte = _fake_cifar_tarball(tmp_path / data.CIFAR10_TARBALL)
    d = data.images("cifar10", classes=(3, 5), n_train=4, n_test=1, key=0, cache_dir=tmp_path,
                    normalize=False)
    assert d.name == "cifar10" and d.class_names == ("cat", "dog")
    assert d.X.shape == (4, 32, 32, 3) and d.X_test.shape == (1, 32, 32, 3)
    assert d.X.dtype == jnp.float32 and d.y.shape == (4,)
    # the 5 batches of 4 hold labels 0..3 each: classes 3 and 5 -> 5 cats, no dogs;
    # the test batch (labels 0..5): one cat, one dog
    np.testing.assert_array_equal(np.asarray(d.labels), 3)
    np.testing.assert_array_equal(np.asarray(d.y), -1.0)
    for X, lab, Xsrc, ysrc in ((d.X, d.labels, Xtr, ytr), (d.X_test, d.labels_test, Xte, yte)):
        for img, label in zip(np.asarray(X), np.asarray(lab)):
            matches = [np.allclose(img, s / 255.0) for s in Xsrc[ysrc == label]]
            assert sum(matches) == 1                     # a real image of that class, unscrambled
    with pytest.raises(ValueError, match=r"n_train must be <= 5: the CIFAR-10 training split "
                                         r"has 5"):
        data.images("cifar10", classes=(3, 5), n_train=6, n_test=1, key=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"n_test must be <= 2"):
        data.images("cifar10", classes=(3, 5), n_train=2, n_test=3, key=0, cache_dir=tmp_path)
    dn = data.images("cifar10", classes=("airplane", "automobile", "bird"), n_train=12, n_test=3,
                     key=0, cache_dir=tmp_path)
    assert dn.classes == (0, 1, 2) and dn.y.shape == (12, 3)
    Xn = np.asarray(dn.X, np.float64)
    np.testing.assert_allclose(Xn.mean(axis=(0, 1, 2)), 0, atol=1e-5)    # per channel, 3 channels
    np.testing.assert_allclose(Xn.std(axis=(0, 1, 2)), 1, rtol=1e-4)


def test_images_cifar10_reads_an_extracted_folder_and_downloads_once(tmp_path, monkeypatch):
    """The download path end to end with a fake urlopen serving a fake tarball (its MD5 made the
    expected one): fetched once into the cache dir, which the environment variable selects."""
    import hashlib
    import io
    import urllib.request
    src = tmp_path / "src.tar.gz"
    _fake_cifar_tarball(src, seed=1)
    blob = src.read_bytes()
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        return io.BytesIO(blob)
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setattr(data, "CIFAR10_MD5", hashlib.md5(blob).hexdigest())
    monkeypatch.setenv("WIDENETS_DATA_DIR", str(tmp_path / "root"))
    cache = tmp_path / "root" / "cifar10"
    assert data.cifar10_cache_dir() == cache
    a = data.images("cifar10", classes=(0, 1), n_train=6, n_test=2, key=3)
    assert calls == [data.CIFAR10_URL] and (cache / data.CIFAR10_TARBALL).is_file()
    assert not list(cache.glob("*.part"))
    data._MEMO.clear()                                   # a new process: read from the cache
    b = data.images("cifar10", classes=(0, 1), n_train=6, n_test=2, key=3)
    assert len(calls) == 1
    np.testing.assert_array_equal(a.X, b.X)
    # an extracted cifar-10-batches-py folder is read as is
    import tarfile
    ext = tmp_path / "extracted"
    with tarfile.open(src) as tar:
        tar.extractall(ext, filter="data")
    c = data.images("cifar10", classes=(0, 1), n_train=6, n_test=2, key=3, cache_dir=ext)
    np.testing.assert_array_equal(a.X, c.X)
    # a download whose checksum is wrong is not kept
    monkeypatch.setattr(data, "CIFAR10_MD5", "0" * 32)
    with pytest.raises(data.DataUnavailableError, match=r"MD5"):
        data.images("cifar10", classes=(0, 1), n_train=2, n_test=1, key=0,
                    cache_dir=tmp_path / "bad")
    assert not any((tmp_path / "bad").iterdir())


def test_images_cifar10_offline_raises_an_error_naming_the_digits_fallback(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    kw = dict(classes=(3, 5), n_train=10, n_test=5, key=0)
    with pytest.raises(data.DataUnavailableError,
                       match=r"download failed.*unreachable.*\"digits\""):
        data.images("cifar10", cache_dir=tmp_path / "empty", **kw)
    assert issubclass(data.DataUnavailableError, OSError)
    with pytest.raises(OSError, match=r"download=False.*\"digits\""):
        data.images("cifar10", cache_dir=tmp_path / "empty", download=False, **kw)
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / data.CIFAR10_TARBALL).write_bytes(b"not a tarball")
    with pytest.raises(data.DataUnavailableError, match=r"cannot be read.*delete it.*\"digits\""):
        data.images("cifar10", cache_dir=tmp_path / "corrupt", **kw)


def test_a_cifar_batch_holding_other_objects_is_refused(tmp_path, monkeypatch):
    """The cache's pickles may hold only dicts, lists and NumPy arrays: nothing that runs code."""
    import collections
    import io
    import pickle
    import tarfile
    _no_network(monkeypatch)
    with tarfile.open(tmp_path / data.CIFAR10_TARBALL, "w:gz") as tar:
        blob = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0],
                             b"other": collections.OrderedDict()}, protocol=2)
        for name in (*[f"data_batch_{i}" for i in range(1, 6)], "test_batch"):
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(data.DataUnavailableError, match=r"unexpected object"):
        data.images("cifar10", classes=(0, 1), n_train=1, n_test=1, key=0, cache_dir=tmp_path)


def test_images_or_fallback_falls_back_to_digits_with_one_printed_line(tmp_path, monkeypatch,
                                                                       capsys):
    _no_network(monkeypatch)
    d = data.images_or_fallback("cifar10", classes=(3, 5), n_train=2000, n_test=10, key=0,
                                cache_dir=tmp_path, fallback_kwargs=dict(n_train=100))
    out = capsys.readouterr().out.strip().splitlines()
    assert d.name == "digits" and d.X.shape == (100, 8, 8, 1) and d.X_test.shape == (10, 8, 8, 1)
    assert len(out) == 1 and "using 'digits' instead" in out[0]          # one line, saying so
    assert "cifar10 is not available here" in out[0] and "unreachable" in out[0]
    # when the data set is there, no fallback and nothing printed about it
    _fake_cifar_tarball(tmp_path / data.CIFAR10_TARBALL)
    c = data.images_or_fallback("cifar10", classes=(0, 1), n_train=3, n_test=1, key=0,
                                cache_dir=tmp_path)
    assert c.name == "cifar10" and "instead" not in capsys.readouterr().out
    # bad arguments are errors, not a reason to fall back
    with pytest.raises(ValueError, match=r"\bclasses"):
        data.images_or_fallback("cifar10", classes=(3,), n_train=2, n_test=1, key=0,
                                cache_dir=tmp_path / "none")
    with pytest.raises(ValueError, match=r"\bfallback must be one of"):
        data.images_or_fallback("cifar10", fallback="mnist", classes=(0, 1), n_train=2, n_test=1,
                                key=0)


# ----------------------------------------------------------------------------- images(): bad input
IMG = dict(name="digits", classes=(0, 1), n_train=10, n_test=5, key=0)
BAD_IMAGES = [
    (r"\bname must be one of", dict(name="mnist")),
    (r"\bname must be one of", dict(name=None)),
    (r"\bclasses must hold at least 2", dict(classes=())),
    (r"\bclasses must hold at least 2", dict(classes=[4])),
    (r"\bclasses must not repeat", dict(classes=(3, 3))),
    (r"\bclasses must be labels in 0\.\.9", dict(classes=(0, 10))),
    (r"\bclasses must be an integer >= 0", dict(classes=(-1, 2))),
    (r"\bclasses must be an integer", dict(classes=(0, 1.5))),
    (r"\bclasses: 'cat' is not a class of digits", dict(classes=("cat", "dog"))),
    (r"\bclasses must be a list", dict(classes="01")),
    (r"\bn_train must be an integer >= 1", dict(n_train=0)),
    (r"\bn_train must be an integer >= 1", dict(n_train=-3)),
    (r"\bn_train must be an integer", dict(n_train=10.0)),
    (r"\bn_test must be an integer >= 1", dict(n_test=0)),
    (r"\bn_test must be an integer", dict(n_test="5")),
    (r"\bn_train must be <= 360: there are 360 digits images of classes \(0, 1\)",
     dict(n_train=361)),
    (r"\bn_test must be <= 60: there are 360 .*n_train=300", dict(n_train=300, n_test=61)),
    (r"\bkey must be a JAX PRNG key", dict(key=None)),
    (r"\bnormalize must be True or False", dict(normalize=1)),
    (r"\bdownload must be True or False", dict(download="no")),
    (r"\bcache_dir is only used by \"cifar10\"", dict(cache_dir="/tmp")),
    (r"\bcache_dir must be a directory path", dict(name="cifar10", cache_dir=3)),
]


@pytest.mark.parametrize("match, change", BAD_IMAGES, ids=[
    "-".join(f"{k}={v!r}"[:20] for k, v in c.items()) for _, c in BAD_IMAGES])
def test_images_bad_input_raises_a_value_error_naming_the_argument(match, change):
    with pytest.raises(ValueError, match=match):
        data.images(**{**IMG, **change})
