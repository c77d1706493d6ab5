"""The engine: the one owner of a network's numbers and the one caller of its kernels.

An `Engine` is built from a `NetworkSpec` (layer layout, dtype and the codes of its activations,
dropout, loss and optimizer) and a target. It holds the flat parameters, the optimizer state
and step count, allocates every workspace, and decides where data lives: on the host for the
CPU targets, on the GPU for target='cuda' (moved there once per fit, see `resident`). It
knows nothing of schedules, callbacks, history, shuffling or input checks: the Trainer, the
estimators and fastbp.distributed drive it, each supplying the initial parameters, the
hyperparameters and every epoch's row order.

Data reaches the kernels as `Rows` (X, dense or CSR, and its labels, targets and row
weights; `make_rows` builds them). With CSR rows the first layer reads each row's stored
entries directly and its weight gradient is gathered from the rows of W_0 the batch
touches: nothing of dense size (rows x features) is ever built. Every kernel argument is
one of the small NamedTuples of kernels/args.py, built here.
"""
import contextlib
import threading
from typing import NamedTuple

import numba
import numpy as np

from .kernels import Plan, bf16, evaluation_plan, gemm, safe_plan, training_plan
# Hyper and Rows are imported for the Trainer, which builds them
from .kernels.args import Hyper, Network, Rows, Slabs, State, Workspace  # noqa: F401
from .layout import (M_OFFSET, PAGE, PARAMS_OFFSET, V_OFFSET, Layout, free_offset,
                     page_placed)

# A bf16 model's training epochs keep W_l in bf16 beside the parameters (kernels/bf16.py,
# weight copies) instead of every chunk's products rounding and packing it again; False
# makes every product do that (the same results: tests compare the two).
BF16_WEIGHT_COPIES = True
EVAL_ROWS = 256  # rows per block when evaluating, predicting or taking a full-batch gradient
# Below this much forward work (2 x rows x weights FLOPs) predict and evaluate stay on the
# calling thread: waking the engine's pool thread cost 0.2-0.5 ms on a 2-core AMD EPYC VM
# (2026-11-26), about what 20 MFLOP take on one core.
EVAL_THREADS_FROM_FLOPS = 20e6


class NetworkSpec(NamedTuple):
    """What the kernels know of a network besides its numbers."""
    layout: Layout
    dtype: np.dtype
    act: np.ndarray          # (L - 1,) int64 activation codes of the hidden layers
    dropout: np.ndarray      # (L - 1,) float64 rates, or empty when no layer drops out
    loss_code: int
    opt_code: int
    has_m: bool              # the optimizer keeps a first moment (or momentum) buffer
    has_v: bool              # ... and a second moment buffer
    bf16: bool = False       # training steps' large products from bf16 operands


SPARSE_CPU_ONLY = ("sparse input is supported on the CPU targets only for now "
                   "(target='cpu' or 'parallel'); for target='cuda' densify it "
                   "(X.toarray()) or load the model with target='cpu'")


def make_rows(X, labels, targets, weights, dtype):
    """The `Rows` of checked data: X a C-contiguous (N, n_0) array of `dtype`, or a scipy
    CSR matrix/array with int64 indices and values of `dtype` (fastbp.data.check_X);
    labels (N,) int64 or empty, targets (N, K) of `dtype` or empty, weights (N,) of `dtype`
    or empty. Empty parts get the dtypes the kernels are compiled for."""
    no_index = np.empty(0, dtype=np.int64)
    if isinstance(X, np.ndarray):
        return Rows(X, labels, targets, weights, no_index, no_index, np.empty(0, dtype=dtype))
    return Rows(np.empty((X.shape[0], 0), dtype=dtype), labels, targets, weights, X.indptr,
                X.indices, X.data)


def input_rows(X, n_outputs, dtype):
    """Rows of checked X alone (predict: no labels, targets or weights)."""
    return make_rows(X, np.empty(0, dtype=np.int64), np.empty((0, n_outputs), dtype=dtype),
                     np.empty(0, dtype=dtype), dtype)


def touched_capacity(indptr, rows, n_features):
    """The most distinct columns `rows` rows of a CSR matrix can touch: the stored entries
    of its `rows` fullest rows, at most n_features."""
    nnz = np.diff(indptr)
    if nnz.shape[0] > rows:
        nnz = np.partition(nnz, nnz.shape[0] - rows)[nnz.shape[0] - rows:]
    return int(min(nnz.sum(), n_features))


def row_order(n):
    """Rows 0..n-1 as the kernels' row-index array (int64: with int32 indices the parallel
    kernel ran at half speed on the mnist workload, 70k vs 137k samples/s)."""
    return np.arange(n, dtype=np.int64)


# ------------------------------------------------------------------ BLAS threads

_blas = None
_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter = None


def _blas_controller():
    """threadpoolctl's handle on the BLAS libraries loaded (SciPy's, used by the kernels)."""
    global _blas
    if _blas is None:
        import scipy.linalg.cython_blas  # noqa: F401  (make sure the kernels' BLAS is loaded)
        from threadpoolctl import ThreadpoolController
        _blas = ThreadpoolController()
    return _blas


@contextlib.contextmanager
def single_threaded_blas():
    """BLAS limited to one thread while any fastbp kernel runs, in any thread. threadpoolctl's
    limits are process-wide: the first user applies the limit and the last one restores the
    original thread counts (overlapping per-thread limits would restore each other's)."""
    global _blas_users, _blas_limiter
    with _blas_lock:
        if _blas_users == 0:
            _blas_limiter = _blas_controller().limit(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


# ------------------------------------------------------------------------ engine

class Engine:
    """The parameters and optimizer state of one network on one target, and every kernel
    call over them.

    params (P,), m and v (P, or 0 when the optimizer has no such buffer) are the flat
    buffers (layout: fastbp.layout); `step` counts optimizer steps. `threads` is the
    parallel target's thread count (1 for 'cpu'; ignored for 'cuda')."""

    def __init__(self, network, target, threads, batch_size):
        self.network = network
        self.target = target
        self.threads = threads
        self.batch_size = batch_size
        P = network.layout.n_params
        # each at its own offset in a page (layout.page_placed: mmap would start them all
        # at the same one)
        self.params = page_placed(P, network.dtype, PARAMS_OFFSET, zero=True)
        self.m = page_placed(P if network.has_m else 0, network.dtype, M_OFFSET, zero=True)
        self.v = page_placed(P if network.has_v else 0, network.dtype, V_OFFSET, zero=True)
        self.step = 0
        lay = network.layout
        self._net = Network(lay.sizes, lay.w_off, lay.b_off, network.act, network.dropout,
                            network.loss_code, network.opt_code, int(network.bf16))
        # evaluation (loss, gradient, predictions) in full precision
        self._net_eval = self._net._replace(dropout=np.empty(0, dtype=np.float64), bf16=0)
        self._make_plans()

    def _make_plans(self):
        if self.target == "cuda":
            from .kernels import cuda_backend
            cuda_backend.load()      # CudaUnavailableError now, not at the first fit
            self.train_plan = self.eval_plan = Plan("cuda", None, 1)
        else:
            self.train_plan = self._training_plan([int(s) for s in self.network.layout.sizes])
            self.eval_plan = evaluation_plan(self.target, self.threads)
        self._auto_plan = self.train_plan
        self._gpu = None

    def plan_for(self, rows, hyper):
        """The training plan for `rows`: the automatic plan chooses from the layer sizes;
        with sparse rows and the lazy update a step's work grows with the stored entries
        per row, not the columns, so the choice takes the mean stored entries per row as
        the first layer's width. A plan set by hand (tests, benchmarks) is kept."""
        plan = self.train_plan
        if (plan is not self._auto_plan or self.target != "parallel" or not rows.sparse
                or hyper.lazy == 0.0):
            return plan
        sizes = [int(s) for s in self.network.layout.sizes]
        sizes[0] = max(1, -(-int(rows.indptr[-1]) // rows.n))
        return self._training_plan(sizes)

    def _training_plan(self, sizes):
        """The automatic training plan for these layer sizes, this batch size, thread count
        and dtype."""
        return training_plan(self.target, sizes, self.batch_size, self.threads,
                             itemsize=np.dtype(self.network.dtype).itemsize)

    def __getstate__(self):
        # compiled kernels and device buffers are not pickled: rebuilt from the configuration
        state = self.__dict__.copy()
        for key in ("train_plan", "eval_plan", "_auto_plan", "_gpu"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._place_buffers(self.params, self.m, self.v)
        self._make_plans()

    def _place_buffers(self, params, m, v):
        """params, m and v (unpickled) copied into buffers placed as __init__ places them."""
        self.params, self.m, self.v = (
            page_placed(a.shape, a.dtype, offset)
            for a, offset in ((params, PARAMS_OFFSET), (m, M_OFFSET), (v, V_OFFSET)))
        for buf, a in ((self.params, params), (self.m, m), (self.v, v)):
            buf[:] = a

    def _placed(self, shape, zero=False, avoid=()):
        """An empty (or zeroed) buffer of the network's dtype of a 2-D `shape`, its rows
        starting as far as can be from params, m, v and the rows of the 2-D arrays `avoid`
        in the page (layout.free_offset)."""
        dtype = np.dtype(self.network.dtype)
        taken = [PARAMS_OFFSET, M_OFFSET, V_OFFSET]
        taken += [(a.ctypes.data + i * a.strides[0]) % PAGE for a in avoid
                  for i in range(a.shape[0])]
        offset = free_offset(taken, shape[0], shape[1] * dtype.itemsize)
        return page_placed(shape, dtype, offset, zero)

    def set_batch_size(self, batch_size):
        """Train with `batch_size` rows per step from now on (the plan follows it)."""
        if batch_size != self.batch_size:
            self.batch_size = batch_size
            self._make_plans()

    @property
    def strategy(self):
        return self.train_plan.strategy

    # ------------------------------------------------------------------ state

    def init(self, params):
        """Start from `params` (the caller's initialisation): optimizer state and step
        count back to zero."""
        self.params[:] = params
        self.m[:] = 0
        self.v[:] = 0
        self.step = 0

    def state(self):
        """Copies of everything training changes: params, m, v and step."""
        return {"params": self.params.copy(), "m": self.m.copy(), "v": self.v.copy(),
                "step": self.step}

    def set_state(self, params=None, m=None, v=None, step=None):
        """Copy the given parts of a `state()` into the buffers (shapes must match)."""
        for buf, value in ((self.params, params), (self.m, m), (self.v, v)):
            if value is not None:
                np.copyto(buf, value)
        if step is not None:
            self.step = int(step)

    # ------------------------------------------------------------ running

    @contextlib.contextmanager
    def compute(self, plan):
        """Run kernels with single-threaded BLAS (parallelism is over batch chunks) and
        Numba's thread count set to the plan's chunk count."""
        previous = numba.get_num_threads()
        with single_threaded_blas():
            if plan.chunks > 1:
                numba.set_num_threads(plan.chunks)
            try:
                yield
            finally:
                numba.set_num_threads(previous)

    def device(self):
        """The network's buffers on the GPU (target='cuda'), built on first use."""
        if self._gpu is None:
            from .kernels.cuda_runner import CudaNetwork
            net = self.network
            self._gpu = CudaNetwork(net.layout, net.dtype, net.act, net.dropout,
                                    net.loss_code, net.opt_code, net.has_m, net.has_v)
        return self._gpu

    def resident(self, rows, batch_size=None):
        """`rows` where the kernels read them: the GPU's copy (moved once; streamed in
        chunks when too large) for target='cuda', the rows themselves otherwise."""
        if self.target != "cuda":
            return rows
        _dense_only(rows)
        if batch_size is None:
            return self.device().data(*rows[:4])
        return self.device().data(*rows[:4], batch_size)

    def _workspace(self, block_rows, n_chunks, rows, backward=True, weight_copies=False):
        """Per chunk: the activations of block_rows rows, and for a backward pass the input
        gradient's scratch and the touched rows of W_0: for CSR `rows`, and for dense ones
        where the first layer skips zero columns (args.Workspace); with weight_copies (a
        training epoch's workspace) a bf16 model's copies of W_l in bf16."""
        lay, dtype = self.network.layout, self.network.dtype
        skip = lay.skips_zero_columns(n_chunks, np.dtype(dtype).itemsize, rows.X.nbytes,
                                      rows.sparse, backward)
        a_off, z_off, d_off, size = lay.workspace(block_rows, rows.sparse, backward, skip)
        R, n_0, n_1 = 0, 0, int(lay.sizes[1])
        touched = 0
        if rows.sparse and backward:
            n_0 = int(lay.sizes[0])
            R = touched = touched_capacity(rows.indptr, block_rows, n_0)
        elif skip:
            touched = int(lay.sizes[0])   # dense: the chunk's nonzero columns, W_0's rows
        packed, pack_off = np.empty(0, dtype=np.uint16), np.empty((0, 3), dtype=np.int64)
        if weight_copies and self._net.bf16 and BF16_WEIGHT_COPIES:
            packed, pack_off = self._weight_copies(block_rows, rows.sparse)
        return Workspace(self._placed((n_chunks, size)), a_off, z_off, d_off,
                         np.empty((n_chunks, touched), dtype=np.int64),
                         np.zeros(n_chunks, dtype=np.int64),
                         np.empty((n_chunks, R * n_1), dtype=dtype),
                         np.full((n_chunks, n_0), -1, dtype=np.int32), packed, pack_off)

    def _weight_copies(self, block_rows, sparse):
        """A bf16 model's bf16 copies of W_l (args.Workspace.packed, pack_off) for the
        products that chunks of block_rows rows take in bf16 (gemm.bf16_product; a chunk of
        fewer rows, in a smaller last batch, leaves its products to round and pack W
        themselves, ops.copy_offset): A W's where the first layer is dense, dZ W^T's beyond
        the first layer. Zero-filled: the padding stays zero."""
        assert np.dtype(self.network.dtype) == np.float32      # (bf16 models are float32)
        # the products that read them exist from now on: before, their symbols' stand-ins
        # would take a copy for a float32 W of twice its size
        gemm.enable_bf16()
        sizes = [int(n) for n in self.network.layout.sizes]
        pack_off = np.full((len(sizes) - 1, 3), -1, dtype=np.int64)
        pack_off[:, 2] = block_rows                    # the rows of the products they serve
        total = 0
        for l, (K, N) in enumerate(zip(sizes[:-1], sizes[1:])):
            wanted = (not (sparse and l == 0) and gemm.bf16_product(block_rows, K, N, N),
                      l > 0 and gemm.bf16_product(block_rows, N, K, block_rows))
            lengths = (bf16.nn_copy_size(K, N), bf16.nt_copy_size(K, N))
            for which in (0, 1):
                if wanted[which]:
                    pack_off[l, which] = total
                    total += -(-lengths[which] // 32) * 32     # 64-byte aligned copies
        return page_placed(total, np.uint16, 0, zero=True), pack_off

    def epoch_runner(self, rows, order, norms, hyper=None):
        """An `EpochRunner` over `rows` in the row order `order` (N,) int64, which the caller
        refills before each epoch; `norms` (steps, L + 1) receives each step's gradient
        norms; `hyper` (args.Hyper), when given, lets sparse rows under the lazy update
        choose their plan (plan_for). Workspaces are allocated here, once, and the data
        moved to the GPU once."""
        if self.target == "cuda":
            return _CudaEpochs(self, rows, order, norms)
        return _CpuEpochs(self, rows, order, norms, hyper)

    def loss_grad(self, rows, want_grad, resident=None):
        """(mean loss, correct predictions, gradient or None) of `rows` as one batch at the
        current params; `resident`: the rows' GPU copy from `resident(rows)`, if kept."""
        if self.target == "cuda":
            _dense_only(rows)
            net = self.device()
            net.params.copy_to_device(self.params)
            data = resident if resident is not None else net.data(*rows[:4])
            loss_sum, correct, grad = net.loss_grad(data, want_grad)
            return loss_sum / rows.weight_total, correct, grad
        plan = safe_plan(self.eval_plan)
        C = plan.chunks if want_grad else self._eval_chunks(plan, rows.n)
        block_rows = min(EVAL_ROWS, -(-rows.n // C))
        ws = self._workspace(block_rows, C, rows, backward=want_grad)
        if not want_grad:            # forward only (its own kernel: half the compile)
            per_chunk = -(-rows.n // C)        # _loss_grad's chunks, so the same sums

            def chunk(c):
                lo = min(c * per_chunk, rows.n)
                return plan.kernels.evaluate(self.params, ws, c, rows, lo,
                                             min(lo + per_chunk, rows.n), block_rows,
                                             self._net_eval)
            with self.compute(plan):
                sums = in_threads(chunk, C)
            loss_sum = sum(s[0] for s in sums)             # in chunk order
            return loss_sum / rows.weight_total, sum(s[1] for s in sums), None
        P = self.network.layout.n_params
        gslab = self._placed((C, P), avoid=(ws.work,))
        acc = self._placed((C, P), avoid=(ws.work, gslab))
        with self.compute(plan):
            loss_sum, correct = plan.kernels.loss_grad(
                self.params, gslab, acc, ws, rows, row_order(rows.n), block_rows,
                self._net_eval)
        return loss_sum / rows.weight_total, correct, acc[0].copy()

    def _eval_chunks(self, plan, n):
        """How many threads predict and evaluate use for n rows: the plan's chunks, or one
        for a small forward pass (EVAL_THREADS_FROM_FLOPS)."""
        sizes = self.network.layout.sizes
        weights = sum(int(a) * int(b) for a, b in zip(sizes[:-1], sizes[1:]))
        return plan.chunks if 2.0 * n * weights >= EVAL_THREADS_FROM_FLOPS else 1

    def predict(self, X):
        """The output activation (N, K) of the network for checked X (N, n_0): an array or
        CSR matrix from fastbp.data.check_X, or `Rows`."""
        K = int(self.network.layout.sizes[-1])
        rows = X if isinstance(X, Rows) else input_rows(X, K, self.network.dtype)
        if self.target == "cuda":
            _dense_only(rows)
            net = self.device()
            net.params.copy_to_device(self.params)
            return net.predict(rows.X)
        plan = safe_plan(self.eval_plan)
        C = self._eval_chunks(plan, rows.n)
        block_rows = min(EVAL_ROWS, rows.n)
        ws = self._workspace(block_rows, C, rows, backward=False)
        out = np.empty((rows.n, K), dtype=self.network.dtype)
        if rows.n == 0:
            return out
        per_chunk = -(-rows.n // (C * block_rows)) * block_rows   # whole blocks per chunk
        C = -(-rows.n // per_chunk)                               # the chunks with rows

        def chunk(c):
            lo = min(c * per_chunk, rows.n)
            plan.kernels.predict(self.params, ws, c, rows, out, lo,
                                 min(lo + per_chunk, rows.n), block_rows, self._net_eval)
        with self.compute(plan):
            in_threads(chunk, C)
        return out


_pool, _pool_size = None, 0
_pool_lock = threading.Lock()


def in_threads(fn, n):
    """[fn(0), ..., fn(n - 1)], fn(0) on this thread and the others at once on a pool of
    threads kept for the process (for kernels that release the GIL)."""
    global _pool, _pool_size
    if n == 1:
        return [fn(0)]
    with _pool_lock:
        if _pool_size < n - 1:
            from concurrent.futures import ThreadPoolExecutor
            _pool = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="fastbp")
            _pool_size = n - 1
        pool = _pool
    futures = [pool.submit(fn, c) for c in range(1, n)]
    first = fn(0)
    return [first] + [f.result() for f in futures]


def _dense_only(rows):
    if rows.sparse:
        raise ValueError(SPARSE_CPU_ONLY)


class _CpuEpochs:
    """Training epochs of the CPU targets over one data set, buffers allocated once."""

    def __init__(self, engine, rows, order, norms, hyper=None):
        self.engine, self.rows, self.order, self.norms = engine, rows, order, norms
        self.plan = safe_plan(engine.train_plan if hyper is None
                              else engine.plan_for(rows, hyper))
        self.lazy = 0.0 if hyper is None else hyper.lazy
        # resolved here, not at every epoch: an estimator's digits epoch is 2 ms
        self.kernel = self.plan.kernels.train_epoch_for(rows, self.lazy)
        lay, dtype = engine.network.layout, engine.network.dtype
        C = self.plan.chunks
        self.ws = engine._workspace(-(-min(engine.batch_size, rows.n) // C), C, rows,
                                    weight_copies=True)
        # a bf16 model's blocks hold whole pairs of W's rows (its copies are written in
        # pairs), with or without the copies: the blocks' sums of squares, and so the
        # clipping and the recorded norms, are the same either way
        block_lo, block_hi, block_layer = lay.update_blocks(C, bool(engine._net.bf16))
        R = 0
        if rows.sparse:          # the lazy update's list of the step's touched rows
            R = min(self.ws.touched.shape[0] * self.ws.touched.shape[1], int(lay.sizes[0]))
        self.slabs = Slabs(engine._placed((C, lay.n_params), zero=True, avoid=(self.ws.work,)),
                           block_lo, block_hi,
                           block_layer, np.empty(block_lo.shape[0]), np.empty(C),
                           np.empty(C, dtype=np.int64), np.empty(R, dtype=np.int64))

    def run(self, hyper, dropout_seed):
        """One epoch in the current row order with the optimizer settings `hyper`
        (args.Hyper): (sum of the rows' losses, correct predictions, -1 or the step that
        diverged)."""
        e = self.engine
        if hyper.lazy != self.lazy:      # the lazy update leaves its own data in the slabs
            raise ValueError("an epoch runner serves the sparse_update it was made for")
        if e._net.bf16:    # the only kernels that run the training net (Network.bf16): the
            gemm.enable_bf16()   # bf16 products' code, compiled in the first epoch's time
        loss_sum, correct, e.step, bad_step = self.kernel(
            State(e.params, e.m, e.v), self.slabs, self.ws, self.rows, self.order, e._net,
            hyper, e.batch_size, e.step, dropout_seed, self.norms)
        return loss_sum, correct, bad_step


class _CudaEpochs:
    """Training epochs on the GPU: the data moved there once; params and optimizer state
    sent every epoch (a callback may change them between epochs) and read back after it."""

    def __init__(self, engine, rows, order, norms):
        self.engine, self.order, self.norms = engine, order, norms
        self.plan = engine.train_plan
        _dense_only(rows)
        self.net = engine.device()
        self.data = self.net.data(*rows[:4], engine.batch_size)
        self.buffers = self.net.epoch_buffers(norms.shape[0])

    def run(self, hyper, dropout_seed):
        e = self.engine
        self.net.upload(e.params, e.m, e.v)
        loss_sum, correct, e.step, bad_step = self.net.train_epoch(
            self.data, self.order, e.batch_size, hyper, e.step, dropout_seed, self.norms,
            self.buffers)
        self.net.download(e.params, e.m, e.v)
        return loss_sum, correct, bad_step
