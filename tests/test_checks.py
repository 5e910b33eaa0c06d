"""widenets._checks: the shared input checks (every message names the argument)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from widenets import _checks


def test_prng_key_accepts_keys_and_integer_seeds():
    k = _checks.prng_key(3)
    np.testing.assert_array_equal(k, jax.random.PRNGKey(3))
    np.testing.assert_array_equal(_checks.prng_key(np.int64(3)), jax.random.PRNGKey(3))
    raw = jax.random.PRNGKey(5)
    assert _checks.prng_key(raw) is raw
    typed = jax.random.key(5)
    assert _checks.prng_key(typed) is typed
    assert _checks.prng_key(np.asarray(raw)).shape == (2,)
    # a traced key (inside vmap) passes
    out = jax.vmap(lambda kk: _checks.prng_key(kk))(jax.random.split(raw, 3))
    assert out.shape == (3, 2)


def test_flag_and_numbers():
    assert _checks.flag(True, "f") is True and _checks.flag(np.bool_(False), "f") is False
    assert _checks.nonnegative(np.float32(0.5), "x") == 0.5
    assert _checks.nonnegative(2, "x") == 2.0
    assert _checks.positive_int(np.int64(4), "n") == 4
    assert _checks.int_list([8, np.int32(16)], "w") == [8, 16]
    assert _checks.int_list(8, "w") == [8]
    assert _checks.int_list(np.array([4, 8]), "w") == [4, 8]


def test_real_array_turns_integers_and_booleans_into_floats():
    assert _checks.real_array([1, 2], "a").dtype.kind == "f"
    assert _checks.real_array(np.array([True, False]), "a").dtype.kind == "f"
    assert _checks.real_array(np.array([1.0, 2.0], dtype=object), "a").dtype == np.float64
    assert _checks.inputs([[1, 2], [3, 4]]).dtype.kind == "f"


def test_memory_limit_reads_the_environment_and_fits_refuses_above_it(monkeypatch):
    monkeypatch.setenv("WIDENETS_MEMORY_LIMIT", "1e6")
    assert _checks.memory_limit() == 10 ** 6
    _checks.fits(10 ** 6, "n", "a request")                         # at the limit: fine
    with pytest.raises(ValueError, match=r"a request would need about 1.91 MiB.*0.954 MiB.*reduce n"):
        _checks.fits(2 * 10 ** 6, "n", "a request")
    with pytest.raises(ValueError, match="reduce n"):
        _checks.fits(float("nan"), "n", "a request")
    monkeypatch.delenv("WIDENETS_MEMORY_LIMIT")
    assert 2 ** 26 < _checks.memory_limit() < 2 ** 50              # 70% of this machine


@pytest.mark.parametrize("value", ["abc", "-5", "0", "nan", "inf"])
def test_a_bad_memory_limit_in_the_environment_is_refused(monkeypatch, value):
    monkeypatch.setenv("WIDENETS_MEMORY_LIMIT", value)
    with pytest.raises(ValueError, match="WIDENETS_MEMORY_LIMIT must be a positive number"):
        _checks.memory_limit()


BAD_INPUTS = [
    *[pytest.param(_checks.flag, (v, "center"), r"\bcenter must be True or False",
                   id=f"flag-{v!r}") for v in ("no", "True", 1, 0, None, 1.0, [True])],
    *[pytest.param(_checks.prng_key, (v, "key"), r"\bkey must be a JAX PRNG key",
                   id=f"prng_key-{v!r}"[:40])
      for v in ("0", 1.5, None, True, [0, 1], np.zeros(2), np.zeros((3, 2), np.uint32),
                jnp.zeros(3, jnp.uint32), {"seed": 0}, np.full(2, "a"), jnp.zeros(2, jnp.int32),
                jax.random.split(jax.random.key(0), 2))],
    pytest.param(_checks.prng_key, (2 ** 64, "key"), r"\bkey: an integer seed must fit",
                 id="prng_key-2**64"),
    *[pytest.param(_checks.nonnegative, (v, "eta"), r"\beta must be", id=f"nonnegative-{v!r}")
      for v in (-1, np.nan, np.inf, "1", b"1", True, None, [1.0], 1j)],
    pytest.param(_checks.nonnegative, (0.0, "gamma0", True), r"\bgamma0 must be finite and > 0",
                 id="nonnegative-strict"),
    *[pytest.param(_checks.positive_int, (v, "steps"), r"\bsteps must be an integer >= 1",
                   id=f"positive_int-{v!r}") for v in (0, -1, 1.0, 2.5, "3", True, None)],
    pytest.param(_checks.positive_int, (10, "depth", 1, 5), r"\bdepth must be an integer <= 5",
                 id="positive_int-maximum"),
    *[pytest.param(_checks.int_list, (v, "widths"), r"\bwidths must", id=f"int_list-{v!r}")
      for v in ([], [8.9], ["8"], [True], [0], "8", None, [[8]], {8}, {8: 1})],
    *[pytest.param(_checks.choice, (v, "activation", ("relu", "tanh")),
                   r"\bactivation must be one of \('relu', 'tanh'\)", id=f"choice-{v!r}")
      for v in ("RELU", "", None, 1, ["relu"])],
    *[pytest.param(_checks.inputs, (v, "X"), m, id=f"inputs-{i}") for i, (v, m) in enumerate([
        (np.ones(3), r"\bX must have shape \(P, D\)"),
        (np.ones((0, 3)), r"\bX must have shape"),
        (np.ones((2, 2, 2)), r"\bX must have shape"),
        (np.array([[np.nan, 1.0]]), r"\bX contains NaN or infinite entries \(1 of 2\)"),
        (np.full((2, 2), "a"), r"\bX must be an array of real numbers"),
        (np.ones((2, 2)) * 1j, r"\bX must be an array of real numbers"),
        ([[1.0, 2.0], [3.0]], r"\bX must be an array of real numbers"),
        (None, r"\bX must be an array of real numbers"),
        ({"a": 1}, r"\bX must be an array of real numbers"),
        (np.array([[object()]]), r"\bX must be an array of real numbers"),
    ])],
    *[pytest.param(_checks.targets, (v, 3, "y"), m, id=f"targets-{i}") for i, (v, m) in enumerate([
        (np.ones(4), r"\by must have shape \(3,\)"),
        (np.ones((3, 1)), r"\by must have shape \(3,\)"),
        (np.array([1.0, np.inf, 0.0]), r"\by contains NaN"),
        (["a", "b", "c"], r"\by must be an array of real numbers"),
    ])],
    *[pytest.param(_checks.kernel_matrix, (v, "Kx"), m, id=f"kernel_matrix-{i}")
      for i, (v, m) in enumerate([
          (np.zeros((0, 0)), r"\bKx must be a non-empty square"),
          (np.ones((2, 3)), r"\bKx must be a non-empty square"),
          (np.array([[1.0, 0.5], [0.0, 1.0]]), r"\bKx must be symmetric"),
          (np.array([[1.0, 3.0], [3.0, 1.0]]), r"smallest eigenvalue is -2"),
          (np.full((2, 2), "k"), r"\bKx must be an array of real numbers"),
      ])],
]


@pytest.mark.parametrize("fn, args, match", BAD_INPUTS)
def test_bad_input_raises_a_value_error_that_says_what_is_wrong(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


def test_a_float32_kernel_cast_to_float64_is_accepted_and_returned_symmetric():
    """The package's float32 kernels carry ~1e-7 relative round-off in their symmetry; cast to
    float64 before being passed in, they must still be accepted (an empirical pNTK cast so was
    refused at 1e-8) and come back exactly symmetric; a real asymmetry (1e-3) is refused."""
    from widenets import _checks
    rng = np.random.default_rng(0)
    A = rng.standard_normal((40, 40))
    K = (A @ A.T / 40).astype(np.float32)
    K32 = K + np.triu(rng.standard_normal((40, 40)).astype(np.float32) * 3e-7 * np.abs(K).max(), 1)
    out = _checks.kernel_matrix(np.asarray(K32, np.float64), "K")
    assert out.dtype == np.float64 and np.array_equal(out, out.T)
    bad = np.asarray(K, np.float64).copy()
    bad[0, 1] += 1e-3 * np.abs(bad).max()
    with pytest.raises(ValueError, match=r"\bK must be symmetric"):
        _checks.kernel_matrix(bad, "K")
