"""kernels/vexp.py's exp (the CPU softmax's) against NumPy's over the whole float range,
its special values, and the vector code it exists for; the softmax loss that uses it."""
import re

import numpy as np
import pytest
from numba import njit

from fastbp.kernels import codes, ops, vexp
from fastbp.kernels.codes import CROSS_ENTROPY

# below these arguments the result (under 3.3e-308, float32 4.5e-38) is flushed to 0
LOWEST = {np.float64: -708.0, np.float32: -86.0}
ULPS = {np.float64: 2, np.float32: 1}


def _arguments(dtype):
    info = np.finfo(dtype)
    rng = np.random.default_rng(0)
    top = float(np.log(info.max)) * 1.01
    return np.concatenate([np.linspace(-top * 1.05, top, 300_001),
                           rng.uniform(-40, 0, 200_000),          # a softmax's arguments
                           rng.uniform(-1, 1, 100_000),
                           [0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30]]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_exp_within_an_ulp_or_two_over_the_normal_range(dtype):
    """Against NumPy's float64 exp (float32: rounded from float64, so correctly rounded)."""
    x = _arguments(dtype)
    out = x.copy()
    vexp.exp_inplace(out)
    with np.errstate(over="ignore"):
        want = np.exp(x.astype(np.float64)).astype(dtype)
    normal = np.isfinite(want) & (x >= LOWEST[dtype])
    ulps = (np.abs(out[normal].astype(np.float64) - want[normal])
            / np.spacing(want[normal]).astype(np.float64))
    assert ulps.max() <= ULPS[dtype]
    assert out.dtype == dtype
    assert np.array_equal(np.isinf(out), np.isinf(want))        # overflow where NumPy's is
    flushed = x < LOWEST[dtype]
    assert np.all(out[flushed] == 0)
    assert np.all(want[flushed] < (3.3e-308 if dtype == np.float64 else 4.6e-38))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_exp_of_special_values(dtype):
    near_max = np.log(np.finfo(dtype).max) * 0.9999
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, near_max], dtype=dtype)
    out = x.copy()
    vexp.exp_inplace(out)
    assert np.isnan(out[0])
    assert out[1] == np.inf and out[2] == 0
    assert out[3] == 1 and out[4] == 1
    assert np.isfinite(out[5])
    assert out[5] == pytest.approx(np.exp(np.float64(x[5])), rel=4 * np.finfo(dtype).eps)


@pytest.mark.skipif("avx2" not in codes.target_features(), reason="no AVX2: no vector FMA")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_exp_loop_is_vector_code(dtype):
    """What the module is for: the loop is vectorised (packed FMAs of 256 or 512 bits), which
    a call of the C library's exp, or reassociation folding the rounding trick, would undo."""
    options = vexp.exp_inplace.targetoptions       # a copy outside the cache, to inspect
    fresh = njit(fastmath=options["fastmath"], error_model=options["error_model"])(
        vexp.exp_inplace.py_func)
    fresh(np.zeros(16, dtype=dtype))
    asm = fresh.inspect_asm(fresh.signatures[0])
    suffix = "pd" if dtype == np.float64 else "ps"
    assert re.search(rf"vfmadd\d+{suffix}\s+%[yz]mm", asm)
    assert "exp" not in " ".join(re.findall(r"call\w*\s+\S+", asm))


@njit(fastmath=codes.FASTMATH, error_model="numpy")    # as the kernels: reassoc included
def _tanh(x, out):
    for i in range(x.shape[0]):
        out[i] = vexp.tanh1(x[i])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tanh_within_a_few_ulps_signed_zeros_and_specials(dtype):
    """Against NumPy's float64 tanh; small arguments keep their relative accuracy (expm1, not
    1 - exp), and the function is odd."""
    rng = np.random.default_rng(2)
    small = np.geomspace(1e-30, 1.0, 50_000)
    grid = np.linspace(0, 40, 200_001)
    x = np.concatenate([grid, -grid, small, -small, rng.uniform(-3, 3, 100_000),
                        [np.nan, np.inf, -np.inf, 0.0, -0.0, 400.0, -800.0]]).astype(dtype)
    out = np.empty_like(x)
    _tanh(x, out)
    want = np.tanh(x.astype(np.float64)).astype(dtype)
    nonzero = np.isfinite(want) & (want != 0)
    ulps = (np.abs(out[nonzero].astype(np.float64) - want[nonzero])
            / np.spacing(np.abs(want[nonzero])).astype(np.float64))
    assert ulps.max() <= (3 if dtype == np.float64 else 2)
    assert np.array_equal(out[200_001:400_002], -out[:200_001])
    assert np.isnan(out[-7]) and list(out[-6:-3]) == [1, -1, 0] and np.signbit(out[-3])
    assert list(out[-2:]) == [1, -1]


@njit
def _loss(P, Z, labels):
    idx = np.arange(Z.shape[0])
    return ops.loss_forward(P, Z, idx, labels, np.empty((0, Z.shape[1]), Z.dtype),
                            np.empty(0, Z.dtype), CROSS_ENTROPY)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_loss_against_numpy_and_nan_rows(dtype):
    rng = np.random.default_rng(1)
    Z = (rng.standard_normal((37, 11)) * 8).astype(dtype)
    Z[5, 3] = 80.0                                    # a saturated row
    labels = rng.integers(0, 11, 37)
    P = np.empty_like(Z)
    total, correct = _loss(P, Z, labels)
    Z64 = Z.astype(np.float64)
    lse = Z64.max(1) + np.log(np.exp(Z64 - Z64.max(1, keepdims=True)).sum(1))
    want_P = np.exp(Z64 - lse[:, None])
    tol = 1e-13 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(P, want_P, rtol=tol * 10, atol=tol)
    assert total == pytest.approx((lse - Z64[np.arange(37), labels]).sum(), rel=tol * 10)
    assert correct == int((Z64.argmax(1) == labels).sum())
    Z[7, 0] = np.nan                                  # a diverged row makes the loss NaN
    total, _ = _loss(P, Z, labels)
    assert np.isnan(total) and np.all(np.isnan(P[7])) and np.all(np.isfinite(P[8]))
