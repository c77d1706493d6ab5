"""The CUDA kernels: the CPU ops of ops.py and optim.py as GPU launches.

Each kernel mirrors a CPU op of the same name where one exists (``linear_forward`` with the
activation and dropout of its output fused, ``linear_backward`` with the dropout and the
activation derivative of its input gradient fused, ``loss_forward``/``loss_backward`` fused
as ``loss_delta``, ``output_forward``, ``update_segment`` as ``optimizer_update``), plus the
two reductions the CPU does inline (gradient norms, step statistics). cuda_runner.py launches
them; no kernel allocates. The element-wise maths is not written here: the activations and
their derivatives, the loss terms, the softmax of a row, the optimizer rules (scalar.py) and
the dropout hash (ops.keep_unit) are the CPU's own Python, compiled as device functions.

`build` compiles one set of kernels from small builders, one per kind of kernel (products,
loss, reductions, optimizer), each given a `_Context` of the dtype and block sizes. Block
sizes are parameters so that tests can use tiles small enough for tiny shapes to span
several blocks:
    tile        threads per side of a 2-D block (tile x tile threads)
    per_thread  outputs per side that each thread computes (a per_thread x per_thread patch);
                a block computes a (tile*per_thread)^2 tile of a matrix product, stepping
                through the summed dimension `tile` at a time through shared memory
    large_per_thread
                the same for the products' second build, with larger tiles (each thread
                reads fewer shared values per multiply-add); cuda_runner launches it where
                its grid still has a block for every multiprocessor (large layers, large
                batches). It sums the same products in the same order as the first build,
                so which one runs never changes a bit of the results
    threads     threads of a 1-D block (rows, reductions, the optimizer); a power of two

Products are plain sums in index order, in the parameters' dtype, so float32 results agree
with the CPU's (BLAS) to rounding. Constants are the dtype's own (F(...)): a bare float
literal would make a float32 kernel compute in float64.

Per-step scalars live in device memory, not in the launch arguments: a training step's
kernels read its row range, step number, batch weight, weight decay and Adam's step size
from per-step tables (`steps_i`, `steps_f`, one row per step, filled by the host once per
epoch) at row s = cursor[0] + shift, and the epoch's settings (learning rate, betas, ...,
dropout seed, clipping norm) from `epoch_f`, `epoch_i`, `epoch_d`. step_stats, the one-block
kernel in the middle of a step, advances the cursor; kernels launched after it in the same
step pass shift = -1. So every step is the same sequence of launches with the same
arguments, which cuda_runner captures once as a CUDA graph and replays. Evaluation passes
a cursor that stays 0 and the block's index as the shift.
"""
import functools
import hashlib
import math
from types import FunctionType, ModuleType, SimpleNamespace

import numpy as np

from . import codes, cuda_backend, ops, scalar
from .codes import ADAM, ADAMW, CROSS_ENTROPY, GELU, LEAKY_RELU, RELU, SGD, SIGMOID, TANH

cuda = None            # numba.cuda, set by build() (imported only when target='cuda' is used)
DEFAULT_BLOCK_SIZES = {"tile": 16, "per_thread": 2, "large_per_thread": 4, "threads": 256}
_block_sizes = dict(DEFAULT_BLOCK_SIZES)
_built = {}

# columns of the per-step tables and the epoch's scalars (see the module docstring)
LO, ROWS, STEP = 0, 1, 2                    # steps_i (S, 3) int64: first row, rows, step t
STEPS_I_COLS = 3
INV_COUNT, DECAY, SHRINK, STEP_SIZE, INV_SQRT_BC2 = 0, 1, 2, 3, 4     # steps_f (S, 5) F
STEPS_F_COLS = 5
LR, MOMENTUM, BETA1, BETA2, EPS, ALPHA = 0, 1, 2, 3, 4, 5             # epoch_f (6,) F
EPOCH_F_LEN = 6
SEED, NESTEROV = 0, 1                                                 # epoch_i (2,) int64
EPOCH_I_LEN = 2
CLIP_NORM = 0                                                         # epoch_d (1,) float64


def set_block_sizes(tile=None, per_thread=None, threads=None, large_per_thread=None):
    """Change the block sizes of kernels built from now on (see the module docstring);
    None keeps a size. large_per_thread <= per_thread: every product uses per_thread.
    Returns the sizes in force."""
    new = dict(_block_sizes)
    for name, value in (("tile", tile), ("per_thread", per_thread), ("threads", threads),
                        ("large_per_thread", large_per_thread)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r} is not allowed: {name} must be an integer >= 1")
        new[name] = int(value)
    if new["threads"] & (new["threads"] - 1):
        raise ValueError(f"threads={new['threads']} is not allowed: threads must be a power "
                         "of two (tree reductions)")
    if new["tile"] ** 2 > 1024 or new["threads"] > 1024:
        raise ValueError("a CUDA block holds at most 1024 threads: tile**2 and threads must "
                         "be <= 1024")
    for name in ("per_thread", "large_per_thread"):
        block_tile = new["tile"] * new[name]
        shared = (2 * block_tile + 1) * new["tile"] * 8     # two float64 tiles, one padded
        if shared > 48 * 1024:
            raise ValueError(f"tile={new['tile']}, {name}={new[name]} needs {shared} bytes "
                             "of shared memory per block for float64; at most 49152 are "
                             f"allowed (lower tile or {name})")
    _block_sizes.update(new)
    return dict(_block_sizes)


def block_sizes():
    return dict(_block_sizes)


@functools.cache
def source_digest():
    """A hash of the source the kernels are compiled from: this module, the element-wise
    maths (scalar.py, ops.py) and the codes they compare with (codes.py). Part of the key
    of the kernels' disk cache, which otherwise changes only with this file and the
    closures' values: an edit of scalar.py alone would load stale machine code."""
    digest = hashlib.sha256()
    for path in (__file__, scalar.__file__, ops.__file__, codes.__file__):
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def get_kernels(dtype):
    """The kernels for `dtype` ('float32' or 'float64') at the current block sizes, built
    (and compiled for the GPU) on first use."""
    key = (np.dtype(dtype).name, _block_sizes["tile"], _block_sizes["per_thread"],
           _block_sizes["threads"])
    if key not in _built:
        _built[key] = build(*key)
    return _built[key]


def get_products(dtype, tile, per_thread):
    """linear_forward and linear_backward alone, for `dtype` at `tile` x `tile` threads
    computing per_thread x per_thread outputs each, built on first use (the runner's larger
    tiles; get_kernels holds the first build's)."""
    key = ("products", np.dtype(dtype).name, tile, per_thread)
    if key not in _built:
        _built[key] = build_products(*key[1:])
    return _built[key]


def _signature(text, F):
    """An explicit kernel signature: 'F' is the parameters' dtype, F1/F2 its C-contiguous
    1-D/2-D arrays, I1/I2 int64 arrays, D1/D2 float64 arrays, I int64, B boolean."""
    names = {"F2": f"{F}[:, ::1]", "F1": f"{F}[::1]", "I1": "int64[::1]",
             "I2": "int64[:, ::1]", "D1": "float64[::1]",
             "D2": "float64[:, ::1]", "F": F, "I": "int64", "B": "boolean", "D": "float64"}
    args = [names[a.strip()] for a in text.split(",")]
    return f"void({', '.join(args)})"


def compile_ptx(dtype, cc, tile=None, per_thread=None, threads=None, large_per_thread=None):
    """{kernel name: PTX} of every kernel for compute capability cc = (major, minor),
    compiled by NVVM without a GPU (tests and reviews of the generated code); the products'
    larger-tile build as 'linear_forward_large' and 'linear_backward_large'. Device
    functions are compiled for the current device's capability, so it is stood in for."""
    from numba.cuda import dispatcher

    given = (("tile", tile), ("per_thread", per_thread), ("threads", threads),
             ("large_per_thread", large_per_thread))
    sizes = {**_block_sizes, **{k: v for k, v in given if v is not None}}
    real = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=tuple(cc))
    try:
        dtype = np.dtype(dtype).name
        ptx = build(dtype, sizes["tile"], sizes["per_thread"], sizes["threads"],
                    ptx_cc=tuple(cc)).ptx
        if sizes["large_per_thread"] > sizes["per_thread"]:
            large = build_products(dtype, sizes["tile"], sizes["large_per_thread"],
                                   ptx_cc=tuple(cc)).ptx
            ptx.update({f"{name}_large": text for name, text in large.items()})
        return ptx
    finally:
        dispatcher.get_current_device = real


def build(dtype, tile, per_thread, threads, *, ptx_cc=None):
    """Compile every kernel for `dtype` with these block sizes. Returns a namespace of
    kernels (not yet configured with a grid) and the block sizes; with ptx_cc=(major,
    minor), only {kernel name: PTX} for that compute capability (needs NVVM, not a GPU)."""
    _set_cuda(ptx_cc)
    c = _Context(dtype, tile, per_thread, threads, ptx_cc)
    dev = _device_functions(c)
    kernels = {**_products(c, dev), **_loss(c, dev), **_reductions(c), **_optimizer(c, dev)}
    return SimpleNamespace(**kernels, tile=c.T, per_thread=c.R, threads=c.NT,
                           block_tile=c.BT, dtype=dtype, ptx=c.ptx)


def build_products(dtype, tile, per_thread, *, ptx_cc=None):
    """Compile linear_forward and linear_backward alone (see build)."""
    _set_cuda(ptx_cc)
    c = _Context(dtype, tile, per_thread, 1, ptx_cc)      # (1-D blocks: none here)
    return SimpleNamespace(**_products(c, _device_functions(c)), tile=c.T, per_thread=c.R,
                           block_tile=c.BT, dtype=dtype, ptx=c.ptx)


def _set_cuda(ptx_cc):
    """numba.cuda as this module's global `cuda` (for PTX alone, without a GPU): a module
    global, not a local, because the simulator swaps the kernels' global `cuda` for its
    fake module while a kernel runs."""
    global cuda
    cuda = cuda_backend._import_cuda() if ptx_cc else cuda_backend.load()


class _Context:
    """The dtype, block sizes, typed constants and decorators every builder uses."""

    def __init__(self, dtype, tile, per_thread, threads, ptx_cc):
        import numba
        self.F = getattr(numba, dtype)
        self.NPF = np.dtype(dtype).type
        self.T, self.R, self.NT = tile, per_thread, threads
        self.BT = tile * per_thread
        self.k = tuple(self.NPF(v) for v in scalar.constant_values())
        self.dtype, self.ptx_cc, self.ptx = dtype, ptx_cc, {}
        # the simulator's jit knows no forceinline
        self.device = cuda.jit(device=True, **({} if cuda_backend.simulator_enabled()
                                               else {"forceinline": True}))

    def kernel(self, sig):
        """A kernel compiled for an explicit signature (see _signature), or only to PTX."""
        signature = _signature(sig, self.dtype)

        def decorate(fn):
            if self.ptx_cc is not None:
                self.ptx[fn.__name__] = cuda.compile_ptx(fn, signature, cc=self.ptx_cc)[0]
                return fn
            return cuda_backend.compile_kernel(fn, signature, source_digest())
        return decorate


# scalar.py's `vexp` on the GPU: its vector-code exp and tanh are the CPU's (built from
# LLVM intrinsics); the device has its own exp and tanh
_DEVICE_MATH = ModuleType("vexp_on_device")
_DEVICE_MATH.exp1, _DEVICE_MATH.tanh1 = math.exp, math.tanh


def _with_math(fn):
    """A copy of scalar.py's function fn whose `vexp` is _DEVICE_MATH."""
    env = dict(fn.__globals__, vexp=_DEVICE_MATH)
    return FunctionType(fn.__code__, env, fn.__name__, fn.__defaults__, fn.__closure__)


def _device_functions(c):
    """The element-wise maths of scalar.py and ops.keep_unit, as device functions."""
    device = c.device
    names = ("relu", "relu_grad", "leaky_relu", "leaky_relu_grad", "tanh", "tanh_grad",
             "sigmoid", "sigmoid_grad", "gelu", "gelu_grad", "output_term", "output_scale",
             "softmax_row", "sgd_rule", "adam_rule", "rmsprop_rule")
    dev = SimpleNamespace(**{n: device(_with_math(getattr(scalar, n).py_func)) for n in names})
    relu, leaky_relu, tanh, sigmoid, gelu = dev.relu, dev.leaky_relu, dev.tanh, dev.sigmoid, \
        dev.gelu
    relu_grad, leaky_relu_grad, tanh_grad, sigmoid_grad, gelu_grad = \
        dev.relu_grad, dev.leaky_relu_grad, dev.tanh_grad, dev.sigmoid_grad, dev.gelu_grad

    # the GPU's epilogues take the layer's code at run time: a switch to scalar.py's
    # functions (the CPU's loops run one code each, ops.activation_forward/backward)
    @device
    def activation(z, code, k):
        if code == RELU:
            return relu(z, k)
        if code == LEAKY_RELU:
            return leaky_relu(z, k)
        if code == TANH:
            return tanh(z, k)
        if code == SIGMOID:
            return sigmoid(z, k)
        if code == GELU:
            return gelu(z, k)
        return z

    @device
    def activation_grad(g, z, a, code, from_z, k):
        if code == RELU:
            return relu_grad(g, z if from_z else a, k)
        if code == LEAKY_RELU:
            return leaky_relu_grad(g, z, k)
        if code == TANH:
            return tanh_grad(g, tanh(z, k) if from_z else a, k)
        if code == SIGMOID:
            return sigmoid_grad(g, sigmoid(z, k) if from_z else a, k)
        if code == GELU:
            return gelu_grad(g, z, k)
        return g

    dev.activation, dev.activation_grad = activation, activation_grad
    # the CPU's own hash: the dropout masks are the same by construction
    keep_unit = device(ops.keep_unit.py_func)
    zero, NPF = c.k[scalar.ZERO], c.NPF

    @device
    def dropout_scale(rate, seed, step, row, layer, unit):
        """mask / (1 - rate) for one unit (ops.dropout_forward's factor)."""
        keep = 1.0 - rate
        return NPF(1.0 / keep) if keep_unit(seed, step, row, layer, unit, keep) else zero

    dev.dropout_scale = dropout_scale
    return dev


def _products(c, dev):
    """linear_forward and linear_backward: tiled matrix products with fused epilogues.

    Shared tiles are flat 1-D arrays indexed with uint32 offsets: with 2-D arrays and
    signed indices Numba emits negative-index wrap-around code for every shared-memory
    access, and the inner loop issued ~9 instructions per multiply-add instead of ~2
    (counted in the PTX). Block index x runs over rows (up to 2^31 - 1 blocks), y over
    columns."""
    F, T, R, BT, consts = c.F, c.T, c.R, c.BT, c.k    # (k is the kernels' summed index)
    zero = consts[scalar.ZERO]
    activation, activation_grad = dev.activation, dev.activation_grad
    dropout_scale = dev.dropout_scale
    U = np.uint32
    PAD = BT + 1             # row stride of a transposed tile: no shared-memory bank conflicts
    TILE = BT * T            # elements of a shared tile (a constant: Numba needs one)
    PADDED_TILE = T * PAD

    @c.kernel("F2, F2, F2, I1, B, I, F2, F1, B, I, D, I, I2, I1, I1, I")
    def linear_forward(Z, A_out, A, idx, gather, a_mod, W, b, hidden, act, rate, layer,
                       steps_i, epoch_i, cursor, shift):
        """Z (n_rows, n_out) = A (n_rows, n_in) @ W + b, and for a hidden layer also
        A_out = act(Z) with dropout at `rate` (0: none) (ops.linear_forward +
        activation_forward + dropout_forward). The step's lo, n_rows and step number are
        row cursor[0] + shift of steps_i, the dropout seed epoch_i[SEED] (module docstring).
        Row r of A is A[idx[lo + r]] when `gather` (the shuffled rows of X), else
        A[r + lo % a_mod] (a_mod > 0: a chunk of streamed rows that holds this step's) or
        A[r]. Grid (ceil(rows/BT), ceil(n_out/BT)) for at least n_rows rows: blocks past
        n_rows (a partial last batch) do nothing."""
        srow = cursor[0] + shift
        lo = steps_i[srow, LO]
        n_rows = steps_i[srow, ROWS]
        a_off = lo % a_mod if a_mod > 0 else 0
        sA = cuda.shared.array(TILE, F)          # [row][k], row stride T
        sW = cuda.shared.array(TILE, F)          # [k][col], row stride BT
        acc = cuda.local.array((R, R), F)
        tx = U(cuda.threadIdx.x)
        ty = U(cuda.threadIdx.y)
        r0 = cuda.blockIdx.x * BT
        c0 = cuda.blockIdx.y * BT
        n_in = W.shape[0]
        n_out = W.shape[1]
        for a in range(R):
            for c in range(R):
                acc[a, c] = zero
        for k0 in range(0, n_in, T):
            for a in range(R):            # A tile: rows r0 + ty + a*T, columns k0 + tx
                r = r0 + ty + a * T
                k = k0 + tx
                val = zero
                if r < n_rows and k < n_in:
                    val = A[idx[lo + r] if gather else r + a_off, k]
                sA[(ty + U(a * T)) * U(T) + tx] = val
                c = c0 + tx + a * T       # W tile: rows k0 + ty, columns c0 + tx + a*T
                k = k0 + ty
                val = zero
                if c < n_out and k < n_in:
                    val = W[k, c]
                sW[ty * U(BT) + tx + U(a * T)] = val
            cuda.syncthreads()
            for k in range(T):
                ku = U(k)
                for a in range(R):
                    av = sA[(ty + U(a * T)) * U(T) + ku]
                    for c in range(R):
                        acc[a, c] += av * sW[ku * U(BT) + tx + U(c * T)]
            cuda.syncthreads()
        # two passes: the first, short enough to be unrolled, reads the accumulators with
        # constant indices, so that they stay in registers; the second applies the
        # activation (a large switch, not unrolled) to Z as stored
        for a in range(R):
            r = r0 + ty + a * T
            for c in range(R):
                j = c0 + tx + c * T
                if r < n_rows and j < n_out:
                    Z[r, j] = acc[a, c] + b[j]
        if not hidden:
            return
        for a in range(R):
            r = r0 + ty + a * T
            if r >= n_rows:
                continue
            for c in range(R):
                j = c0 + tx + c * T
                if j < n_out:
                    h = activation(Z[r, j], act, consts)
                    if rate > 0.0:
                        h *= dropout_scale(rate, epoch_i[SEED], steps_i[srow, STEP],
                                           idx[lo + r], layer, j)
                    A_out[r, j] = h

    @c.device
    def weight_gradient_tile(sA, sD, bx, by, dW, db, A, idx, lo, gather, a_off, dZ, n_rows,
                             accumulate):
        """Tile (by, bx) of dW (n_in, n_out) = A^T dZ, and for by == 0 the matching part of
        db = column sums of dZ (n_rows, n_out) summed from the dZ tiles it loads; written,
        or added (accumulate). A's rows as in linear_forward (a_off: lo % a_mod or 0)."""
        acc = cuda.local.array((R, R), F)
        bacc = cuda.local.array(R, F)
        tx = U(cuda.threadIdx.x)
        ty = U(cuda.threadIdx.y)
        i0 = by * BT
        c0 = bx * BT
        n_in = dW.shape[0]
        n_out = dW.shape[1]
        does_bias = by == 0 and ty == 0
        for a in range(R):
            bacc[a] = zero
            for c in range(R):
                acc[a, c] = zero
        for k0 in range(0, n_rows, T):
            r = k0 + ty                    # batch row of this thread's loads
            for a in range(R):
                i = i0 + tx + a * T
                val = zero
                if r < n_rows and i < n_in:
                    val = A[idx[lo + r] if gather else r + a_off, i]
                sA[ty * U(BT) + tx + U(a * T)] = val          # [batch row][i]
                j = c0 + tx + a * T
                val = zero
                if r < n_rows and j < n_out:
                    val = dZ[r, j]
                sD[ty * U(BT) + tx + U(a * T)] = val          # [batch row][j]
            cuda.syncthreads()
            for k in range(T):
                row = U(k) * U(BT)
                for a in range(R):
                    av = sA[row + ty + U(a * T)]
                    for c in range(R):
                        acc[a, c] += av * sD[row + tx + U(c * T)]
                if does_bias:
                    for c in range(R):
                        bacc[c] += sD[row + tx + U(c * T)]
            cuda.syncthreads()
        for a in range(R):
            i = i0 + ty + a * T
            if i >= n_in:
                continue
            for c in range(R):
                j = c0 + tx + c * T
                if j < n_out:
                    if accumulate:
                        dW[i, j] += acc[a, c]
                    else:
                        dW[i, j] = acc[a, c]
        if does_bias:
            for c in range(R):
                j = c0 + tx + c * T
                if j < n_out:
                    if accumulate:
                        db[j] += bacc[c]
                    else:
                        db[j] = bacc[c]

    @c.device
    def input_gradient_tile(sD, sW, bx, by, dA, dZ, W, Z_prev, A_prev, idx, lo, n_rows, act,
                            rate, seed, step, layer):
        """Tile (bx: rows, by: inputs) of dA (n_rows, n_in) = (dZ (n_rows, n_out) @ W^T),
        times the dropout mask of the layer below (rate > 0) and its activation's
        derivative at Z_prev / A_prev."""
        acc = cuda.local.array((R, R), F)
        tx = U(cuda.threadIdx.x)
        ty = U(cuda.threadIdx.y)
        r0 = bx * BT
        i0 = by * BT
        n_in = W.shape[0]
        n_out = W.shape[1]
        for a in range(R):
            for c in range(R):
                acc[a, c] = zero
        for k0 in range(0, n_out, T):
            for a in range(R):
                r = r0 + ty + a * T
                k = k0 + tx
                val = zero
                if r < n_rows and k < n_out:
                    val = dZ[r, k]
                sD[(ty + U(a * T)) * U(T) + tx] = val       # [row][k], row stride T
                i = i0 + ty + a * T        # W[i, k0 + tx]: consecutive threads, consecutive k
                val = zero
                if i < n_in and k < n_out:
                    val = W[i, k]
                sW[tx * U(PAD) + ty + U(a * T)] = val        # [k][i], row stride BT + 1
            cuda.syncthreads()
            for k in range(T):
                ku = U(k)
                for a in range(R):
                    dv = sD[(ty + U(a * T)) * U(T) + ku]
                    for c in range(R):
                        acc[a, c] += dv * sW[ku * U(PAD) + tx + U(c * T)]
            cuda.syncthreads()
        # two passes, as in linear_forward: dZ W^T as stored, then the mask and derivative
        for a in range(R):
            r = r0 + ty + a * T
            for c in range(R):
                i = i0 + tx + c * T
                if r < n_rows and i < n_in:
                    dA[r, i] = acc[a, c]
        dropped = rate > 0.0
        for a in range(R):
            r = r0 + ty + a * T
            if r >= n_rows:
                continue
            for c in range(R):
                i = i0 + tx + c * T
                if i < n_in:
                    g = dA[r, i]
                    if dropped:
                        g *= dropout_scale(rate, seed, step, idx[lo + r], layer, i)
                    dA[r, i] = activation_grad(g, Z_prev[r, i], A_prev[r, i], act, dropped,
                                               consts)

    @c.kernel("F2, F2, F1, F2, F2, F2, F2, F2, I1, B, I, B, I, D, I, I2, I1, I1, I")
    def linear_backward(dA, dW, db, dZ, A, W, Z_prev, A_prev, idx, gather, a_mod,
                        accumulate, act, rate, layer, steps_i, epoch_i, cursor, shift):
        """ops.linear_backward (+ dropout_backward + activation_backward of the layer below)
        in one launch: the parameter gradients dW = A^T dZ and db (written; added when
        accumulate and lo > 0, i.e. after the first block of rows of an evaluation), and
        the input gradient dA = (dZ W^T) * mask * act'(Z_prev) when the grid has blocks for
        it (not for the first layer: its dA, Z_prev, A_prev are unused). The step's scalars
        and A's rows as in linear_forward. 1-D grid: the first ceil(n_out/BT) *
        ceil(n_in/BT) blocks make dW's tiles, the next (at least ceil(n_rows/BT) *
        ceil(n_in/BT), launched for the largest batch) dA's; blocks past the tiles of a
        partial batch find no rows or inputs and write nothing."""
        srow = cursor[0] + shift
        lo = steps_i[srow, LO]
        n_rows = steps_i[srow, ROWS]
        a_off = lo % a_mod if a_mod > 0 else 0
        s1 = cuda.shared.array(TILE, F)
        s2 = cuda.shared.array(PADDED_TILE, F)
        b = cuda.blockIdx.x
        n_in = dW.shape[0]
        gx = (dW.shape[1] + BT - 1) // BT
        n_weight = gx * ((n_in + BT - 1) // BT)
        if b < n_weight:
            weight_gradient_tile(s1, s2, b % gx, b // gx, dW, db, A, idx, lo, gather, a_off,
                                 dZ, n_rows, accumulate and lo > 0)
        else:
            b -= n_weight
            gx = (n_rows + BT - 1) // BT
            input_gradient_tile(s1, s2, b % gx, b // gx, dA, dZ, W, Z_prev, A_prev, idx, lo,
                                n_rows, act, rate, epoch_i[SEED], steps_i[srow, STEP], layer)

    return {"linear_forward": linear_forward, "linear_backward": linear_backward}


def _loss(c, dev):
    """loss_delta (training and evaluation) and output_forward (prediction): one thread per
    row of logits."""
    NPF, k = c.NPF, c.k
    zero, one = k[scalar.ZERO], k[scalar.ONE]
    softmax_row, output_term, output_scale = dev.softmax_row, dev.output_term, dev.output_scale

    @c.kernel("F2, F2, I1, I1, F2, F1, B, I, D1, I1, B, B, I2, F2, I1, I")
    def loss_delta(dZ, Z, idx, labels, targets, row_weight, weighted, loss_code, row_loss,
                   row_correct, out_at_lo, want_grad, steps_i, steps_f, cursor, shift):
        """Per row r < n_rows of the logits Z (n_rows, K), data row idx[lo + r]: its loss
        (times its row_weight when `weighted`; kernels take no empty arrays, so a flag says
        whether labels/targets/row_weight are real) into row_loss[o] and its correct
        predictions into row_correct[o], o = lo + r when out_at_lo (evaluation) else r
        (ops.loss_forward), and when want_grad its delta into dZ (ops.loss_backward),
        scaled by inv_count: the output activation fused with the loss, one exp per logit.
        dZ is also the softmax's scratch. lo, n_rows and inv_count are row cursor[0] +
        shift of steps_i and steps_f."""
        srow = cursor[0] + shift
        lo = steps_i[srow, LO]
        r = cuda.grid(1)
        if r >= steps_i[srow, ROWS]:
            return
        inv_count = steps_f[srow, INV_COUNT]
        K = Z.shape[1]
        row = idx[lo + r]
        weight = row_weight[row] if weighted else one
        total = zero
        correct = 0
        if loss_code == CROSS_ENTROPY:
            y = labels[row]
            mx, arg, s = softmax_row(Z, r, dZ, k)
            total = mx + math.log(s) - Z[r, y]      # log-sum-exp minus the true logit
            if arg == y:
                correct = 1
            if want_grad:
                scale = inv_count * weight
                inv = one / s
                for j in range(K):
                    dZ[r, j] = dZ[r, j] * inv * scale
                dZ[r, y] -= scale
        else:
            scale = output_scale(loss_code, NPF(K), inv_count, k) * weight
            for j in range(K):
                t = targets[row, j]
                p, term, right = output_term(Z[r, j], t, loss_code, k)
                total += term
                correct += right
                if want_grad:
                    dZ[r, j] = (p - t) * scale
            total *= one / NPF(K)
        o = lo + r if out_at_lo else r
        row_loss[o] = np.float64(total * weight)
        row_correct[o] = correct

    @c.kernel("F2, F2, I, I")
    def output_forward(P, Z, n_rows, loss_code):
        """P (n_rows, K) = the output activation of the logits Z: softmax, sigmoid, exp or
        identity (ops.output_forward)."""
        r = cuda.grid(1)
        if r >= n_rows:
            return
        K = Z.shape[1]
        if loss_code == CROSS_ENTROPY:
            _, _, s = softmax_row(Z, r, P, k)
            inv = one / s
            for j in range(K):
                P[r, j] *= inv
        else:
            for j in range(K):
                P[r, j] = output_term(Z[r, j], zero, loss_code, k)[0]

    return {"loss_delta": loss_delta, "output_forward": output_forward}


def _reductions(c):
    """grad_block_norms and step_stats: gradient norms, clipping factor, step loss and the
    divergence status, without a round trip to the host; step_stats also advances the step
    cursor."""
    import numba
    NPF, NT = c.NPF, c.NT

    @c.device
    def block_sum(buf, tid):
        """Tree-sum buf (NT,) in shared memory; buf[0] ends with the total."""
        width = NT // 2
        while width > 0:
            cuda.syncthreads()
            if tid < width:
                buf[tid] += buf[tid + width]
            width //= 2
        cuda.syncthreads()

    @c.kernel("F1, F1, I1, I1, D1, D2, B, I1, I")
    def grad_block_norms(grads, params, block_lo, block_hi, block_sq, wsq, with_params,
                         cursor, shift):
        """block_sq[k] = sum of squares of grads[block_lo[k]:block_hi[k]], one CUDA block per
        layout block (cpu.reduce_block's norm). Blocks never straddle a W_l or b_l. With
        `with_params` (the estimators' step records) the same of params, the weights before
        the step's update, into wsq[cursor[0] + shift, k] in the same launch."""
        buf = cuda.shared.array(NT, numba.float64)
        pbuf = cuda.shared.array(NT, numba.float64)
        k = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        acc = 0.0
        pacc = 0.0
        for i in range(block_lo[k] + tid, block_hi[k], NT):
            g = np.float64(grads[i])
            acc += g * g
            if with_params:
                p = np.float64(params[i])
                pacc += p * p
        buf[tid] = acc
        block_sum(buf, tid)
        if with_params:                      # the same condition in every thread of the block
            pbuf[tid] = pacc
            block_sum(pbuf, tid)
        if tid == 0:
            block_sq[k] = buf[0]
            if with_params:
                wsq[cursor[0] + shift, k] = pbuf[0]

    @c.kernel("D1, I1, D1, I1, D2, D1, F1, I1, D1, I1, I2, I1")
    def step_stats(row_loss, row_correct, block_sq, block_layer, norms, epoch_d, clip, status,
                   step_loss, step_correct, steps_i, cursor):
        """After the gradient of step s = cursor[0] (its n_rows from steps_i): its loss and
        correct count (summed over rows in a fixed order) into step_loss[s],
        step_correct[s]; each weight gradient's L2 norm and the global norm into norms[s]
        (cpu.record_norms); the clipping factor into clip[0]
        (torch.nn.utils.clip_grad_norm_; 1 when clip_norm = epoch_d[CLIP_NORM] is 0). A NaN
        or infinite loss sets status = (1, s) and every later launch of the epoch leaves
        params alone: the divergence check of cpu._train_epoch, without a round trip to the
        host. Then the cursor moves to s + 1, always (the launches after this one in the
        step read s as cursor[0] - 1). One block: every thread has read the cursor before
        the block_sum barriers, so thread 0 may then advance it."""
        lbuf = cuda.shared.array(NT, numba.float64)
        cbuf = cuda.shared.array(NT, numba.float64)
        tid = cuda.threadIdx.x
        s = cursor[0]
        n_rows = steps_i[s, ROWS]
        acc = 0.0
        cnt = 0.0
        for r in range(tid, n_rows, NT):
            acc += row_loss[r]
            cnt += row_correct[r]
        lbuf[tid] = acc
        cbuf[tid] = cnt
        block_sum(lbuf, tid)
        block_sum(cbuf, tid)
        if tid != 0:
            return
        cursor[0] = s + 1
        if status[0] != 0:
            return
        total_loss = lbuf[0]
        if not math.isfinite(total_loss):
            status[0] = 1
            status[1] = s
            return
        step_loss[s] = total_loss
        step_correct[s] = np.int64(cbuf[0])
        # the layout's blocks come layer by layer (W_0's, b_0's, W_1's, ...): each weight's
        # sum of squares is kept in a register and stored once, summed in the CPU's order
        L = norms.shape[1] - 1
        total = 0.0
        acc = 0.0
        current = block_layer[0]
        for k in range(block_sq.shape[0]):
            sq = block_sq[k]
            total += sq
            if block_layer[k] != current:
                if current < L:
                    norms[s, current] = math.sqrt(acc)
                acc = 0.0
                current = block_layer[k]
            acc += sq
        if current < L:
            norms[s, current] = math.sqrt(acc)
        total = math.sqrt(total)
        norms[s, L] = total
        coef = 1.0
        clip_norm = epoch_d[CLIP_NORM]
        if clip_norm > 0.0:
            coef = min(clip_norm / (total + 1e-6), 1.0)
        clip[0] = NPF(coef)

    return {"grad_block_norms": grad_block_norms, "step_stats": step_stats}


def _optimizer(c, dev):
    """optimizer_update: every element's rule (scalar.py) in one grid-stride loop."""
    k = c.k
    zero, one = k[scalar.ZERO], k[scalar.ONE]
    sgd_rule, adam_rule, rmsprop_rule = dev.sgd_rule, dev.adam_rule, dev.rmsprop_rule

    @c.kernel("F1, F1, F1, F1, I1, I1, I, F1, I1, F2, F1, I1, I1, I")
    def optimizer_update(params, grads, m, v, b_off, sizes, opt_code, epoch_f, epoch_i,
                         steps_f, clip, status, cursor, shift):
        """One optimizer step over the whole flat buffers as one grid-stride loop
        (optim.update_segment, element by element), the gradient scaled by clip[0]. The
        epoch's lr, momentum, nesterov, betas, eps and alpha come from epoch_f/epoch_i, the
        step's from row cursor[0] + shift of steps_f (shift -1: after step_stats): decay
        (0 for adamw) and shrink (adamw's 1 - lr*decay, else 1) apply to weights only
        (elements of a b_l get 0 and 1); step_size = lr / (1 - beta1^t) and inv_sqrt_bc2 =
        1 / sqrt(1 - beta2^t) are Adam's. Skipped entirely once status[0] is set (the epoch
        diverged at an earlier step)."""
        if status[0] != 0:
            return
        srow = cursor[0] + shift
        lr = epoch_f[LR]
        momentum = epoch_f[MOMENTUM]
        nesterov = epoch_i[NESTEROV] != 0
        beta1 = epoch_f[BETA1]
        beta2 = epoch_f[BETA2]
        eps = epoch_f[EPS]
        alpha = epoch_f[ALPHA]
        decay = steps_f[srow, DECAY]
        shrink = steps_f[srow, SHRINK]
        step_size = steps_f[srow, STEP_SIZE]
        inv_sqrt_bc2 = steps_f[srow, INV_SQRT_BC2]
        cl = clip[0]
        L = b_off.shape[0]
        adam = opt_code == ADAM or opt_code == ADAMW
        has_m = momentum != zero          # m is a 1-element placeholder otherwise
        for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
            is_weight = True
            for l in range(L):
                if b_off[l] <= i and i < b_off[l] + sizes[l + 1]:
                    is_weight = False
            d = decay if is_weight else zero
            p = params[i]
            if adam:
                p *= shrink if is_weight else one
                params[i], m[i], v[i] = adam_rule(p, cl * grads[i] + d * p, m[i], v[i],
                                                  step_size, beta1, beta2, eps, inv_sqrt_bc2,
                                                  one)
            elif opt_code == SGD:
                buf = m[i] if has_m else zero
                params[i], buf = sgd_rule(p, cl * grads[i] + d * p, buf, lr, momentum, nesterov)
                if has_m:
                    m[i] = buf
            else:                                                  # rmsprop
                buf = m[i] if has_m else zero
                params[i], buf, v[i] = rmsprop_rule(p, cl * grads[i] + d * p, buf, v[i], lr,
                                                    alpha, eps, momentum, one)
                if has_m:
                    m[i] = buf

    return {"optimizer_update": optimizer_update}
