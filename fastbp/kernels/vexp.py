"""exp and tanh in arithmetic that LLVM vectorises (the CPU kernels' softmax and
activations).

Numba lowers ``math.exp`` and ``math.tanh`` to calls of the C library's scalar functions
unless Intel's SVML is installed (it is not, by default, and the shipped kernels are built
without it), so a loop over them runs one element at a time: about 5 ns an exp and 16 ns a
tanh in float64 on a Zen 4, most of a softmax loss's time and three quarters of a tanh
network's step. Here they are arithmetic only, and a loop over them becomes vector code
(about 1 ns an element with AVX-512):

    exp(x) = 2^k (1 + q),  k = round(x / ln 2),  r = x - k ln 2 (Cody and Waite: ln 2 in
    two parts, so r is exact to the last bits),  |r| <= ln 2 / 2,  q = exp(r) - 1

with q by its Taylor series (degree 13 in float64, 7 in float32: the first omitted term is
below half an ulp) and 2^k built in the exponent bits. k is rounded by adding and
subtracting 1.5 * 2^52 (2^23), whose low bits then hold k as an integer.
tanh(x) = sign(x) (-m) / (2 + m) with m = expm1(-2|x|) = 2^k q + (2^k - 1), which keeps its
relative accuracy for small |x|, where 1 - exp(-2|x|) would cancel.

Accuracy: exp within 2 ulps of NumPy's in float64 and 1 ulp in float32, tanh within 3 and 2
(tests check the whole range, subnormal results included: 2^k is built as two normal
factors); NaN gives NaN, exp beyond the largest float inf and below half the smallest
subnormal 0, and tanh keeps the sign of zero.

The functions are compiled without ``reassoc``: reassociation would fold the rounding trick
(x + c - c) and the two parts of ln 2 back into plain arithmetic (the tests fail with it).
LLVM still inlines them into the calling loop, where each instruction keeps its own flags.
`exp1` and `tanh1` are plain Python functions (math's) outside Numba, so scalar.py's code
still runs as Python in the CUDA simulator; gpu.py binds them to math's for the device.
"""
import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .prebuilt import cached

_FLAGS = {"nsz", "arcp", "contract", "afn"}       # the kernels' FASTMATH without reassoc

# lowest: below it exp rounds to 0 (half the smallest subnormal); highest: above it, inf;
# tanh_lowest: exp(-2|x|) below it leaves tanh at +-1 to the last bit (|x| > 19 in float64,
# 9 in float32)
_F64 = dict(log2e=1.4426950408889634, ln2_hi=0.6931471803691238,
            ln2_lo=1.9082149292705877e-10, shift=6755399441055744.0,   # 1.5 * 2**52
            lowest=-745.1332191019412, highest=709.782712893384, tanh_lowest=-80.0,
            bias=1023, mantissa=52)
_F32 = dict(log2e=1.4426950408889634, ln2_hi=0.693359375, ln2_lo=-2.12194440e-4,
            shift=12582912.0, lowest=-103.97208, highest=88.72283935546875,  # 1.5 * 2**23
            tanh_lowest=-80.0, bias=127, mantissa=23)


@intrinsic
def _float_bits(typingctx, x):
    """The bits of a float as a signed integer of its width."""
    width = x.bitwidth
    sig = types.int64(x) if width == 64 else types.int32(x)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(width))
    return sig, codegen


@intrinsic
def _bits_float(typingctx, i, like):
    """The float (of like's type) whose bits are the integer i."""
    sig = like(i, like)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(sig.return_type))
    return sig, codegen


def _functions(t, c, degree):
    """(exp, tanh) of one float of numpy type t (np.float64 or np.float32), from its
    constants `c` and Taylor degree (see the module docstring)."""
    coefs = [1.0]
    for n in range(1, degree + 1):
        coefs.append(coefs[-1] / n)
    coefs = tuple(t(a) for a in reversed(coefs))          # Horner: highest power first
    log2e, ln2_hi, ln2_lo, shift = (t(c[k]) for k in ("log2e", "ln2_hi", "ln2_lo", "shift"))
    lowest, highest, tanh_lowest = t(c["lowest"]), t(c["highest"]), t(c["tanh_lowest"])
    zero, one, two, inf = t(0), t(1), t(2), t(np.inf)
    bias, mantissa = c["bias"], c["mantissa"]
    itype = np.int64 if t is np.float64 else np.int32      # the float's width
    shift_bits = itype(np.array(shift).view(itype))

    @njit(fastmath=_FLAGS, error_model="numpy")
    def reduced(x):
        """(k, q) with exp(x) = 2^k (1 + q): k = round(x / ln 2) and q = exp(r) - 1 by its
        series, accurate relative to itself."""
        big = x * log2e + shift
        k = _float_bits(big) - shift_bits      # round(x / ln 2), from big's low bits
        kf = big - shift
        r = x - kf * ln2_hi
        r = r - kf * ln2_lo
        q = coefs[0]
        for a in coefs[1:-1]:
            q = q * r + a
        return k, q * r

    @njit(fastmath=_FLAGS, error_model="numpy")
    def power_of_two(k):
        """2^k for a normal exponent k."""
        return _bits_float(itype((k + bias) << mantissa), zero)

    @njit(fastmath=_FLAGS, error_model="numpy")
    def exp_(x):
        k, q = reduced(min(max(x, lowest), highest))
        # 2^k in two factors, each a normal float: k runs from below the smallest
        # subnormal's exponent to one past the largest normal one
        half = k >> 1
        s = power_of_two(half)
        y = (s + s * q) * power_of_two(k - half)
        if x < lowest:
            y = zero
        if x > highest:
            y = inf
        if x != x:
            y = x
        return y

    @njit(fastmath=_FLAGS, error_model="numpy")
    def tanh_(x):
        """sign(x) (1 - e) / (1 + e), e = exp(-2|x|), with 1 - e = -expm1(-2|x|) taken as
        s q + (s - 1) (exact for small |x|, where 1 - e would cancel)."""
        y = max(-two * abs(x), tanh_lowest)    # below: tanh is 1 to the last bit
        k, q = reduced(y)
        s = power_of_two(k)                    # k <= 0, a normal float
        m = s * q + (s - one)                  # expm1(y), in (-1, 0]
        result = math.copysign(-m / (two + m), x)
        if x != x:
            result = x
        return result
    return exp_, tanh_


_exp64, _tanh64 = _functions(np.float64, _F64, 13)
_exp32, _tanh32 = _functions(np.float32, _F32, 7)


def exp1(x):
    """exp of one float64 or float32 in vector code (see the module docstring); in
    Python (the CUDA simulator runs scalar.py's functions so), math.exp."""
    return math.exp(x)


def tanh1(x):
    """tanh of one float64 or float32 in vector code; in Python, math.tanh."""
    return math.tanh(x)


def _overload_by_dtype(stub, f64, f32):
    """Numba's implementation of the Python function `stub`: f64 or f32 by the argument's
    type (no other type is typed)."""
    @overload(stub, jit_options={"fastmath": _FLAGS, "error_model": "numpy"})
    def typed(x):
        if x == types.float64:
            return lambda x: f64(x)
        if x == types.float32:
            return lambda x: f32(x)


_overload_by_dtype(exp1, _exp64, _exp32)
_overload_by_dtype(tanh1, _tanh64, _tanh32)


@cached
@njit(fastmath=_FLAGS, error_model="numpy")
def exp_inplace(a):
    """a (n,) <- exp(a), float64 or float32, in a loop LLVM vectorises."""
    for i in range(a.shape[0]):
        a[i] = exp1(a[i])
