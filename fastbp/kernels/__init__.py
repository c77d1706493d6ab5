"""Compiled kernels and how a target runs them.

A `Plan` says which compiled variant runs and over how many batch chunks (Numba threads);
BLAS inside the kernels always runs single-threaded. target='cpu' is always serial.
target='parallel' runs a training step in one of two ways, chosen from the layer sizes, the
batch size and the dtype alone (so a given seed and thread count always gives the same
result):

- "serial":  one chunk: for small steps, where entering a parallel region (about 1.2 us
             with the omp layer, twice per step) and splitting tiny matrix products cost
             more than they save (the tiny and regression workloads).
- "chunks":  the minibatch is cut into T chunks, each thread computes its chunk's gradient
             into its own slab, the slabs are summed in a fixed order and models of
             cpu.PARALLEL_UPDATE_MIN parameters or more are summed and updated by every
             thread, each on its own group of blocks.

Multi-threaded BLAS on whole-batch products was measured as a third way and dropped: it was
never clearly faster than "chunks" here (within noise on the wide workload, 1.1-3x slower
elsewhere), and Numba's spin-waiting threads fight BLAS's for the cores. The threshold comes
from `python benchmarks/compare.py --strategies` on the development machine (2 cores).
"""
import importlib
import threading
from typing import NamedTuple

import numba

from .codes import host_has_avx512


class Plan(NamedTuple):
    strategy: str
    kernels: object        # Kernels: train_epoch, loss_grad, evaluate, predict
    chunks: int            # batch chunks = Numba threads


# A step below this many FLOPs (6 x weights x batch; twice that for float64, whose products
# take about twice as long) runs serially under target='parallel'. Where the second thread
# starts to pay depends on how long a thread's half of the step takes, i.e. on the vector
# width: measured with `compare.py --strategies`, the crossover lay between 3.4 and 38.7
# MFLOP on a 2-core AMD EPYC with AVX-512 (2026-11-24); on a 2-core AMD EPYC with AVX2 only
# (2026-11-26) chunks won by 26% at 3.4 MFLOP and by 33% on digits at scikit-learn's
# defaults (8.9), while at 1.0 (the regression workload) two runs disagreed (chunks +11% in
# one, -26% in another), so 2 MFLOP keeps those serial. On a 2-core Zen 4 EPYC with AVX-512
# (2026-11-27, `--dtypes float32 float64`, two runs) float64 chunks won by 16-24% at 6.8
# MFLOP and 47-62% at 8.9 and tied at 3.4, where float32 (half the time a step) was split
# or worse: hence the float64 factor. Fixed per machine, so a given machine, sizes, dtype
# and thread count always choose the same plan.
SERIAL_BELOW_FLOPS = 10e6 if host_has_avx512() else 2e6


class Kernels:
    """The (train_epoch, loss_grad, evaluate, predict) kernels of a variant, "cpu" (serial) or
    "parallel" (evaluate and predict are the same serial kernels for both), each call routed
    to the compile-time variant its rows need (variants.py: dense or CSR rows, the lazy
    update), so a configuration compiles only its own code."""

    def __init__(self, target):
        if target not in ("cpu", "parallel"):
            raise ValueError(f"no kernels for target {target!r}")
        self.suffix = "serial" if target == "cpu" else "parallel"

    def _kernel(self, kind, rows, lazy=0.0, suffix=True):
        from . import gemm, variants
        gemm.register(rows.X.dtype.name)         # the products' symbols (see gemm.register)
        name = f"{kind}_{self.suffix}" if suffix else kind
        return getattr(variants.variant(variants.mode(rows, lazy)), name)

    def train_epoch(self, state, slabs, ws, rows, order, net, hyper, *rest):
        return self.train_epoch_for(rows, hyper.lazy)(state, slabs, ws, rows, order, net,
                                                      hyper, *rest)

    def train_epoch_for(self, rows, lazy):
        """The epoch kernel for these rows and update, resolved once for many epochs."""
        return self._kernel("train_epoch", rows, lazy)

    def loss_grad(self, params, gslab, acc, ws, rows, *rest):
        return self._kernel("loss_grad", rows)(params, gslab, acc, ws, rows, *rest)

    # serial kernels without the GIL for one chunk of rows: the engine runs the chunks
    # on its own threads (no parallel variant to compile)
    def evaluate(self, params, ws, c, rows, *rest):
        return self._kernel("evaluate", rows, suffix=False)(params, ws, c, rows, *rest)

    def predict(self, params, ws, c, rows, *rest):
        return self._kernel("predict", rows, suffix=False)(params, ws, c, rows, *rest)


_kernels = {}


def get_kernels(target):
    """The kernels of a variant: "cpu" (serial) or "parallel" (Kernels)."""
    if target not in _kernels:
        _kernels[target] = Kernels(target)
    return _kernels[target]


def choose_strategy(sizes, batch_size, threads, itemsize=4):
    """'serial' or 'chunks' for a training step of target='parallel' in a dtype of
    `itemsize` bytes."""
    weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    if threads <= 1 or 6 * weights * batch_size * (itemsize / 4) < SERIAL_BELOW_FLOPS:
        return "serial"
    return "chunks"


def training_plan(target, sizes, batch_size, threads, strategy=None, itemsize=4):
    """How fit runs: `strategy` overrides the automatic choice (tests, benchmarks)."""
    if target == "cpu":
        return Plan("serial", get_kernels("cpu"), 1)
    strategy = strategy or choose_strategy(sizes, batch_size, threads, itemsize)
    if strategy == "serial":
        return Plan(strategy, get_kernels("cpu"), 1)
    if strategy == "chunks":
        return Plan(strategy, get_kernels("parallel"), threads)
    raise ValueError(f"unknown strategy {strategy!r}; one of 'serial', 'chunks'")


def evaluation_plan(target, threads):
    """How loss, gradient and predict run: rows are independent, so split them in chunks."""
    if target == "cpu" or threads <= 1:
        return Plan("serial", get_kernels("cpu"), 1)
    return Plan("chunks", get_kernels("parallel"), threads)


def threading_layer():
    """The Numba threading layer parallel kernels run on: the one in use, or the one Numba
    will pick at its first parallel launch (the requested one, else the first available of
    its priority list)."""
    try:
        return numba.threading_layer()
    except ValueError:          # no parallel region has run yet
        pass
    requested = numba.config.THREADING_LAYER
    if requested in ("tbb", "omp", "workqueue"):
        return requested
    candidates = {"threadsafe": ["tbb", "omp"], "safe": ["tbb"],
                  "forksafe": ["tbb", "omp", "workqueue"]}.get(
        requested, list(numba.config.THREADING_LAYER_PRIORITY))
    for name in candidates:
        if name == "workqueue":
            return name
        try:
            importlib.import_module(f"numba.np.ufunc.{name}pool")
            return name
        except ImportError:
            continue
    return "workqueue"


def safe_plan(plan):
    """`plan`, or the serial plan where running it could crash: Numba's `workqueue` layer
    aborts the process when parallel code is entered from two threads at once, so off the
    main thread (joblib or Dask threads) a parallel plan falls back to serial code there."""
    if plan.chunks > 1 and threading.current_thread() is not threading.main_thread() \
            and threading_layer() == "workqueue":
        return Plan("serial", get_kernels("cpu"), 1)
    return plan
