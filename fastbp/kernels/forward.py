"""The forward pass as a function of X alone, for users' own Numba code
(`Trainer.compiled_forward`).

Size legend: N rows of X, n_0 its features, K outputs, L layers (as ops.py).

`network_forward` is one cached kernel for every depth, activation and loss: it runs ops.py's
linear_forward, activation_forward and output_forward (scalar.py's maths, the same code as
training and `predict`) over freshly allocated per-layer arrays. `make_forward` closes a tiny
`@njit` function over one model's numbers: Numba freezes closed-over arrays into the compiled
code as constants, so `forward(X)` takes X alone, is a snapshot of the parameters when it was
made, and costs no Python when a user's `@njit` function calls it.
"""
import numpy as np
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import overload
from numba.np import numpy_support

from . import gemm
from .codes import jit
from .ops import activation_forward, layer_bias, layer_weight, linear_forward, output_forward


@jit
def network_forward(X, params, sizes, w_off, b_off, act, loss_code, x_shift, x_scale,
                    y_scale, y_shift):
    """out (N, K) = the network's output activation for X (N, n_0): softmax, sigmoid,
    identity or exp by loss_code, as `predict_proba`/`predict`. x_shift, x_scale (n_0,) (or
    empty): X is first standardised, (X - x_shift) / x_scale; y_scale, y_shift (K,) (or
    empty): the output then becomes out * y_scale + y_shift (a model's stored scaling)."""
    N = X.shape[0]
    L = sizes.shape[0] - 1
    A = np.ascontiguousarray(X)
    if x_shift.shape[0] > 0:
        A = np.empty((N, sizes[0]), X.dtype)
        for r in range(N):
            for j in range(sizes[0]):
                A[r, j] = (X[r, j] - x_shift[j]) / x_scale[j]
    Z = np.empty((N, sizes[1]), X.dtype)
    no_copy = np.empty(0, dtype=np.uint16)       # (full precision: no bf16 copy of W)
    linear_forward(Z, A, layer_weight(params, w_off, sizes, 0), layer_bias(params, b_off, sizes, 0),
                   False, no_copy, -1)
    for l in range(1, L):
        H = np.empty_like(Z)                     # act(Z_{l-1}), the input of layer l
        activation_forward(H, Z, act[l - 1])
        Z = np.empty((N, sizes[l + 1]), X.dtype)
        linear_forward(Z, H, layer_weight(params, w_off, sizes, l),
                       layer_bias(params, b_off, sizes, l), False, no_copy, -1)
    out = np.empty_like(Z)
    output_forward(out, Z, loss_code)
    if y_scale.shape[0] > 0:
        K = out.shape[1]
        for r in range(N):
            for j in range(K):
                out[r, j] = out[r, j] * y_scale[j] + y_shift[j]
    return out


def _check_X(X, like):
    """Compile-time check (see its overload): X is a 2-D array of like's dtype."""


@overload(_check_X)
def _check_X_typed(X, like):
    if not (isinstance(X, types.Array) and X.ndim == 2 and X.dtype == like.dtype):
        raise TypingError(f"forward(X): X must be a 2-D array of {like.dtype} (the model's "
                          f"dtype), shape (n_samples, n_features); got {X}")
    return lambda X, like: None


def make_forward(params, sizes, w_off, b_off, act, loss_code, x_shift, x_scale, y_scale,
                 y_shift):
    """An `@njit` function forward(X) -> out over copies of these arrays (see the module
    docstring), compiled here for C-contiguous X. The arrays must share params' dtype
    (sizes, offsets and activation codes int64); the scalings may be empty."""
    params = np.array(params)
    dtype = params.dtype
    gemm.register(dtype.name)          # the products' symbols, before network_forward loads
    sizes, w_off, b_off, act = (np.array(a, dtype=np.int64) for a in (sizes, w_off, b_off, act))
    x_shift, x_scale, y_scale, y_shift = (np.array(a, dtype=dtype)
                                          for a in (x_shift, x_scale, y_scale, y_shift))
    loss_code = int(loss_code)
    n_features = int(sizes[0])
    wrong_width = f"forward(X): X must have {n_features} columns (the model's features)"

    @njit(fastmath=False, error_model="numpy")
    def forward(X):
        _check_X(X, params)
        if X.shape[1] != n_features:
            raise ValueError(wrong_width)
        # np.int64: a closed-over int would be typed as a literal, one more cached
        # specialisation of network_forward per loss
        return network_forward(X, params, sizes, w_off, b_off, act, np.int64(loss_code),
                               x_shift, x_scale, y_scale, y_shift)

    forward.compile((types.Array(numpy_support.from_dtype(dtype), 2, "C"),))
    return forward
