"""What the kernels of both targets share besides maths: the codes of activations, losses
and optimizers (fastbp/config.py maps the public names to them), the maths constants, and
how the CPU kernels are compiled."""
from numba import njit
from numba.core import config

# x86-64 microarchitecture levels (llvmlite's feature names), as the shipped kernels are
# compiled for them (kernels/prebuilt.py).
_V2 = frozenset({"cmov", "cx8", "fxsr", "mmx", "sse", "sse2", "cx16", "sahf", "popcnt",
                 "sse3", "sse4.1", "sse4.2", "ssse3"})
_V3 = _V2 | {"avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave"}
LEVELS = {"x86-64-v3": _V3,
          "x86-64-v4": _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}}


def target_features():
    """The CPU features Numba compiles the kernels for in this process: a level's where it
    is told to compile for one (NUMBA_CPU_NAME=<level>, NUMBA_CPU_FEATURES="", as `python -m
    fastbp.prebuild` does), else NUMBA_CPU_FEATURES or the host's as Numba sees them
    (NUMBA_ENABLE_AVX=0, its default on CPUs that virtual machines misreport, turns AVX off)."""
    if config.CPU_NAME in LEVELS and config.CPU_FEATURES == "":
        return LEVELS[config.CPU_NAME]
    from numba.core.codegen import get_host_cpu_features
    text = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return frozenset(f[1:] for f in text.split(",") if f.startswith("+"))


def hardware_features():
    """The features the CPU itself reports (llvmlite's; none where LLVM cannot tell)."""
    import llvmlite.binding as ll
    try:
        return frozenset(name for name, has in ll.get_host_cpu_features().items() if has)
    except RuntimeError:
        return frozenset()


def target_level():
    """The level whose shipped kernels this process can use, or None: the one the kernels'
    vector width is tuned for (AVX-512 or AVX2), if Numba compiles for every feature of it
    here and the CPU itself has them all."""
    features = target_features()
    level = "x86-64-v4" if "avx512f" in features else "x86-64-v3"
    ok = LEVELS[level] <= features and LEVELS[level] <= hardware_features()
    return level if ok else None


def _host_has(feature):
    return feature in target_features()


def host_has_avx512():
    """Whether this CPU has AVX-512 (llvmlite's host features): the vector width the
    kernels are tuned for."""
    return _host_has("avx512f")


def host_has_avx512_bf16():
    """Whether this CPU has AVX512-BF16's dot products (kernels/bf16.py's panels)."""
    return _host_has("avx512bf16")


# Activation codes (hidden layers).
IDENTITY, RELU, LEAKY_RELU, TANH, SIGMOID, GELU = 0, 1, 2, 3, 4, 5
ACTIVATION_CODES = (IDENTITY, RELU, LEAKY_RELU, TANH, SIGMOID, GELU)
# Loss codes; each fixes the output activation it is fused with.
CROSS_ENTROPY, BINARY_CROSS_ENTROPY, MSE, POISSON = 0, 1, 2, 3
# Optimizer codes.
SGD, ADAM, ADAMW, RMSPROP = 0, 1, 2, 3

LEAKY_SLOPE = 0.01
GELU_C = 0.7978845608028654  # sqrt(2 / pi)
GELU_K = 0.044715

# The fast-math flags leave out ``nnan`` and ``ninf`` so NaN/inf still propagate, and
# ``error_model="numpy"`` makes x/0 give inf/NaN instead of a Python exception: the
# zero-divisor check it saves is what kept loops with a division (Adam, sigmoid) from
# vectorising.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


def jit(fn):
    """njit with the kernels' options, cached on disk (kernels/prebuilt.py's cache)."""
    from .prebuilt import cached
    return cached(njit(fastmath=FASTMATH, error_model="numpy")(fn))


def jit_inline(fn):
    """jit for scalar.py's functions: inlined into their callers in Numba's IR instead of
    each going through a compile pipeline of its own (per dtype and signature)."""
    from .prebuilt import cached
    return cached(njit(fastmath=FASTMATH, error_model="numpy", inline="always")(fn))
