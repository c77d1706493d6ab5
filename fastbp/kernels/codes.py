"""What the kernels of both targets share besides maths: the codes of activations, losses
and optimizers (fastbp/config.py maps the public names to them), the maths constants, and
how the CPU kernels are compiled."""
from numba import njit


def _host_has(feature):
    import llvmlite.binding as ll
    return bool(ll.get_host_cpu_features().get(feature, False))


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
jit = njit(cache=True, fastmath=FASTMATH, error_model="numpy")
# scalar.py's functions are inlined into their callers in Numba's IR instead of each going
# through a compile pipeline of its own (per dtype and signature)
jit_inline = njit(cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
