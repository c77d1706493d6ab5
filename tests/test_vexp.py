"""kernels/vexp.py's exp (the CPU softmax's) against NumPy's over the whole float range,
its special values, and the vector code it exists for; the softmax loss that uses it."""
import re

import numpy as np
import pytest
from numba import njit

from fastbp.kernels import codes, ops, vexp
from fastbp.kernels.codes import CROSS_ENTROPY

# below these arguments exp rounds to 0 (under half the smallest subnormal), as libm's
LOWEST = {np.float64: -745.1332191019412, np.float32: -103.97208}
ULPS = {np.float64: 2, np.float32: 1}
# a call of the C library's function in Numba's assembly: `movabsq $exp, %reg; callq *%reg`
LIBM = re.compile(r"\$(exp|expf|tanh|tanhf|__svml\w*)\b")


def _arguments(dtype):
    info = np.finfo(dtype)
    rng = np.random.default_rng(0)
    top = float(np.log(info.max)) * 1.01
    return np.concatenate([np.linspace(-top * 1.05, top, 300_001),
                           rng.uniform(-40, 0, 200_000),          # a softmax's arguments
                           rng.uniform(-1, 1, 100_000),
                           [0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30]]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_exp_within_an_ulp_or_two_over_the_whole_range(dtype):
    """Against NumPy's float64 exp (float32: rounded from float64, so correctly rounded),
    subnormal results included."""
    x = _arguments(dtype)
    out = x.copy()
    vexp.exp_inplace(out)
    with np.errstate(over="ignore"):
        want = np.exp(x.astype(np.float64)).astype(dtype)
    inside = np.isfinite(want) & (x >= LOWEST[dtype])
    ulps = (np.abs(out[inside].astype(np.float64) - want[inside])
            / np.spacing(want[inside]).astype(np.float64))
    assert ulps.max() <= ULPS[dtype]
    assert out.dtype == dtype
    subnormal = inside & (want < np.finfo(dtype).tiny) & (want > 0)
    assert subnormal.sum() > 100 and np.all(out[subnormal] > 0)
    assert np.array_equal(np.isinf(out), np.isinf(want))        # overflow where NumPy's is
    below = x < LOWEST[dtype]
    assert np.all(out[below] == 0) and np.all(want[below] <= np.finfo(dtype).smallest_subnormal)


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
    assert not LIBM.search(asm)


@pytest.mark.skipif("avx2" not in codes.target_features(), reason="no AVX2: no vector code")
@pytest.mark.parametrize("code", [codes.TANH, codes.SIGMOID, codes.GELU])
def test_activation_loops_call_no_libm_and_are_vector_code(code):
    """scalar.py's tanh, sigmoid and GELU, as the kernels' activation loops compile them
    (both directions): no call of the C library's exp or tanh, packed arithmetic."""
    fresh = [njit(fastmath=codes.FASTMATH, error_model="numpy")(f.py_func)
             for f in (ops.activation_forward, ops.activation_backward)]
    Z = np.linspace(-3, 3, 64).reshape(8, 8)
    A, dA = np.empty_like(Z), np.ones_like(Z)
    fresh[0](A, Z, code)
    fresh[1](dA, Z, A, code, True)                   # from z: the activation recomputed
    for f in fresh:
        asm = f.inspect_asm(f.signatures[0])
        assert not LIBM.search(asm), f.__name__
        assert re.search(r"v(fmadd\d+|mul|div)pd\s+%[yz]mm", asm), f.__name__
    want = {codes.TANH: np.tanh(Z), codes.SIGMOID: 1 / (1 + np.exp(-Z)),
            codes.GELU: 0.5 * Z * (1 + np.tanh(codes.GELU_C * (Z + codes.GELU_K * Z ** 3)))}
    np.testing.assert_allclose(A, want[code], rtol=1e-14, atol=1e-15)


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
