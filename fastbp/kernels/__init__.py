"""Compiled kernels and how a target runs them.

A `Plan` says which compiled variant runs, over how many batch chunks (Numba threads) and
with how many BLAS threads. target='cpu' is always serial. target='parallel' spreads a
training step over T threads in one of three ways, chosen from the layer sizes, the batch
size and T alone (so a given seed and thread count always gives the same result):

- "serial":  one chunk, one BLAS thread: for small steps, where entering a parallel region
             costs more than it saves (the tiny and regression workloads).
- "chunks":  the minibatch is cut into T chunks, each thread computes its chunk's gradient
             into its own slab, the slabs are summed in a fixed order (medium layers).
- "blas":    one chunk, T BLAS threads on whole-batch matrix products (large layers, where
             BLAS's own partitioning beats T smaller products plus a slab reduction).

The thresholds come from `python benchmarks/compare.py --strategies` on the development
machine (2 cores, AVX-512); README "Speed" has the figures.
"""
from typing import NamedTuple


class Plan(NamedTuple):
    strategy: str
    kernels: object        # SimpleNamespace(train_epoch, loss_grad, predict)
    chunks: int            # Numba threads = batch chunks
    blas_threads: int


# A step below this many FLOPs (6 x weights x batch) runs serially under target='parallel'.
SERIAL_BELOW_FLOPS = 10e6
# Whole-batch BLAS threading once the largest weight matrix has this many entries.
BLAS_FROM_WEIGHTS = 500_000


def get_kernels(target):
    """The (train_epoch, loss_grad, predict) kernels of a variant: "cpu" (serial) or
    "parallel"."""
    from types import SimpleNamespace

    from . import cpu

    if target == "cpu":
        return SimpleNamespace(train_epoch=cpu.train_epoch_serial,
                               loss_grad=cpu.loss_grad_serial, predict=cpu.predict_serial)
    if target == "parallel":
        return SimpleNamespace(train_epoch=cpu.train_epoch_parallel,
                               loss_grad=cpu.loss_grad_parallel, predict=cpu.predict_parallel)
    raise ValueError(f"no kernels for target {target!r}")


def choose_strategy(sizes, batch_size, threads):
    """'serial', 'chunks' or 'blas' for a training step of target='parallel'."""
    if threads <= 1:
        return "serial"
    weights = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    if 6 * sum(weights) * batch_size < SERIAL_BELOW_FLOPS:
        return "serial"
    if max(weights) >= BLAS_FROM_WEIGHTS:
        return "blas"
    return "chunks"


def training_plan(target, sizes, batch_size, threads, strategy=None):
    """How fit runs: `strategy` overrides the automatic choice (tests, benchmarks)."""
    if target == "cpu":
        return Plan("serial", get_kernels("cpu"), 1, 1)
    strategy = strategy or choose_strategy(sizes, batch_size, threads)
    if strategy == "serial":
        return Plan(strategy, get_kernels("cpu"), 1, 1)
    if strategy == "chunks":
        return Plan(strategy, get_kernels("parallel"), threads, 1)
    if strategy == "blas":
        # serial kernel: Numba threads spinning next to BLAS's own would fight for the cores
        return Plan(strategy, get_kernels("cpu"), 1, threads)
    raise ValueError(f"unknown strategy {strategy!r}; one of 'serial', 'chunks', 'blas'")


def evaluation_plan(target, threads):
    """How loss, gradient and predict run: rows are independent, so split them in chunks."""
    if target == "cpu" or threads <= 1:
        return Plan("serial", get_kernels("cpu"), 1, 1)
    return Plan("chunks", get_kernels("parallel"), threads, 1)
