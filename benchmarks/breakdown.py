"""Where a training step's time goes (issue 15 §1), on the mnist and wide workloads.

For a workload, float32, target="parallel" with its automatic plan, this times
  - the whole step, from `Trainer.fit` epochs (Python included) divided by the steps;
  - each part of the "chunks" plan as the kernel runs it, T threads each on its chunk of
    B / T rows in a prange: every layer's forward product (A W), weight-gradient product
    (A^T dZ) and input-gradient product (dZ W^T) as the kernels call
    it (gemm's entry points: its own loops or BLAS, by gemm.small's rule; the forward product
    adds the bias); the element-wise epilogues (activation and its derivative, the fused softmax
    loss); the sum of the T gradient slabs; the optimizer's update;
  - the same products as one whole-batch product each, multi-threaded by NumPy's BLAS on T
    threads: the "one multi-threaded product per layer" alternative.
Each part is reported in ms per step, its share of the step, and GFLOP/s for the products.
Last, the step inside the real epoch kernel with its own buffers: the whole kernel's time a
step, and that of its first region alone (the chunks' forward and backward passes), whose
difference is the second (the slabs' sum and the update).
The parts run one after another here, so their sum can differ from the step (caches are
colder, threads are woken per part): it is meant for the large workloads (mnist, wide);
on tiny and regression every part is a few microseconds and the parallel region's entry
around each one dominates what it measures.

With --precision bf16 the model is a bf16 one (precision="bf16") and its products are timed
as its epochs run them: W from the epoch's bf16 copies where it keeps one (gemm.nn_bf16_copy,
nt_bf16_copy), the other operand rounded and packed by each product.

Usage: python benchmarks/breakdown.py [--workloads mnist wide] [--optimizer sgd|adam]
       [--rounds 20] [--precision full|bf16]
"""
import argparse
import os
import sys
import time

import numba
import numpy as np
from numba import njit, prange
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workloads import WORKLOADS, cpu_model_and_flags, make_data  # noqa: E402

import fastbp  # noqa: E402
from fastbp.kernels import bf16, codes, cpu, gemm, ops, optim  # noqa: E402


# The products through gemm's entry points, as the kernels call them: its own loops or BLAS
# by gemm.small's rule (bias added in the forward product).
# bf16: Wp / Wr the epoch's copies of W (empty: none), as ops.linear_forward and
# linear_backward take them
@njit(parallel=True, cache=False)
def _forward_products(As, Ws, b, Zs, bf16, Wp, reps):
    for _ in range(reps):
        for c in prange(As.shape[0]):
            ops.linear_forward(Zs[c], As[c], Ws, b, bf16, Wp, 0 if Wp.shape[0] > 0 else -1)


@njit(parallel=True, cache=False)
def _weight_grad_products(As, dZs, dWs, bf16, reps):
    for _ in range(reps):
        for c in prange(As.shape[0]):
            if bf16:
                gemm.tn_bf16(dWs[c], As[c], dZs[c])
            else:
                gemm.tn(dWs[c], As[c], dZs[c])


@njit(parallel=True, cache=False)
def _input_grad_products(dZs, Ws, dAs, bf16, Wr, reps):
    scratch = np.empty((dZs.shape[0], Ws.size + Ws.shape[0]), dtype=Ws.dtype)   # as the kernels
    for _ in range(reps):
        for c in prange(dZs.shape[0]):
            dZ, dA = dZs[c], dAs[c]
            if bf16 and Wr.shape[0] > 0 and gemm.bf16_product(dZ.shape[0], dZ.shape[1],
                                                              dA.shape[1], dZ.shape[0]):
                gemm.nt_bf16_copy(dA, dZ, Wr, 0, scratch[c])
            elif bf16:
                gemm.nt_bf16(dA, dZ, Ws, scratch[c])
            else:
                gemm.nt(dA, dZ, Ws, scratch[c])


@njit(parallel=True, cache=False)
def _epilogues(Zs, As, dAs, reps):
    """ReLU forward and ReLU backward over one hidden layer's chunks."""
    for _ in range(reps):
        for c in prange(Zs.shape[0]):
            Z, A = Zs[c], As[c]
            ops.activation_forward(A, Z, codes.RELU)
            ops.activation_backward(dAs[c], Z, A, codes.RELU, False)


@njit(parallel=True, cache=False)
def _loss(Ps, Zs, dZs, idx, labels, targets, weights, inv_count, reps):
    for _ in range(reps):
        for c in prange(Zs.shape[0]):
            ops.loss_forward(Ps[c], Zs[c], idx, labels, targets, weights, codes.CROSS_ENTROPY)
            ops.loss_backward(dZs[c], Ps[c], idx, labels, targets, weights,
                              codes.CROSS_ENTROPY, inv_count)


@njit(parallel=True, cache=False)
def _reduce(gslab, block_lo, block_hi, reps):
    for _ in range(reps):
        for k in prange(block_lo.shape[0]):
            cpu.reduce_block(gslab, block_lo[k], block_hi[k], gslab.shape[0])


@njit(parallel=True, cache=False)
def _sgd(params, grads, m, block_lo, block_hi, reps):
    one = params.dtype.type(1)
    for _ in range(reps):
        for k in prange(block_lo.shape[0]):
            optim.sgd_update(params, grads, m, block_lo[k], block_hi[k], params.dtype.type(0.01),
                             params.dtype.type(0.9), False, params.dtype.type(0), one)


@njit(parallel=True, cache=False)
def _adam(params, grads, m, v, block_lo, block_hi, reps):
    t = params.dtype.type
    for _ in range(reps):
        for k in prange(block_lo.shape[0]):
            optim.adam_update(params, grads, m, v, block_lo[k], block_hi[k], t(0.001), t(0.9),
                              t(0.999), t(1e-8), t(1.0), t(0), t(1), t(1))


@njit(parallel=True, cache=False)
def _chunk_passes(params, gslab, ws, rows, order, net, batch_size, n_steps):
    """The first region of each of n_steps training steps as cpu.train_epoch runs it: each
    chunk's forward and backward pass (ops.forward_backward) over its rows of the batch,
    into its gradient slab; no reduction, no update."""
    n_chunks = gslab.shape[0]
    inv_count = params.dtype.type(1) / params.dtype.type(batch_size)
    per_chunk = (batch_size + n_chunks - 1) // n_chunks
    for s in range(n_steps):
        for chunk in prange(n_chunks):
            c = cpu.index(chunk)
            lo = s * batch_size + c * per_chunk
            hi = min(lo + per_chunk, (s + 1) * batch_size)
            ops.forward_backward(params, gslab[c], ws, c, rows, order[lo:hi], net, 0, s + 1,
                                 inv_count)


def inside_step(name, optimizer, precision="full", rounds=5):
    """(ms per step of the whole epoch kernel, ms per step of its chunks' forward-backward
    region), best of `rounds` epochs each, alternating: the step timed inside the real
    kernel with the real buffers, where the parts above are timed apart (warmer caches,
    a parallel region each). The difference is the second region, the slabs' sum and the
    update, with the step's bookkeeping."""
    layers, batch, loss = WORKLOADS[name]
    n = batch * 16
    X, y = make_data(name, n)
    t = fastbp.Trainer(layers, loss=loss, optimizer=optimizer, batch_size=batch, lr=1e-4,
                       target="parallel", dtype="float32", seed=0, precision=precision)
    t.fit(X, y, epochs=1, progress=False)
    rows = t.check_data(X, y)
    order = np.arange(n, dtype=np.int64)
    runner = t.engine.epoch_runner(rows, order, np.zeros((n // batch, len(layers))), t._hyper)
    e, steps = t.engine, n // batch
    whole, passes = [], []
    with threadpool_limits(1):
        _chunk_passes(e.params, runner.slabs.gslab, runner.ws, rows, order, e._net, batch, 1)
        runner.run(t._hyper, 0)
        for _ in range(rounds):
            start = time.perf_counter()
            runner.run(t._hyper, 0)
            whole.append((time.perf_counter() - start) / steps)
            start = time.perf_counter()
            _chunk_passes(e.params, runner.slabs.gslab, runner.ws, rows, order, e._net, batch,
                          steps)
            passes.append((time.perf_counter() - start) / steps)
    return min(whole), min(passes)


def timed(fn, *args, reps, blas_threads=1):
    """Seconds per repetition of fn(*args, reps); BLAS on one thread inside the kernels'
    threads, as the kernels run it (Engine.compute)."""
    with threadpool_limits(blas_threads):
        fn(*args, 1)
        start = time.perf_counter()
        fn(*args, reps)
        return (time.perf_counter() - start) / reps


def whole_step(name, optimizer, precision="full", epochs=3):
    layers, batch, loss = WORKLOADS[name]
    n = batch * 64
    X, y = make_data(name, n)
    t = fastbp.Trainer(layers, loss=loss, optimizer=optimizer, batch_size=batch,
                       target="parallel", dtype="float32", seed=0, precision=precision)
    t.fit(X, y, epochs=1, progress=False)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        t.fit(X, y, epochs=1, progress=False)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / (n // batch), t.engine.train_plan


def breakdown(name, optimizer, reps, precision="full"):
    layers, batch, _ = WORKLOADS[name]
    T = numba.get_num_threads()
    step, plan = whole_step(name, optimizer, precision)
    gemm.register("float32")                 # (the fit above has; the products below need it)
    use_bf16 = precision == "bf16"
    chunks = plan.chunks
    rows = -(-batch // chunks)
    rng = np.random.default_rng(0)
    f32 = np.float32
    parts = []                               # (part, seconds per step, flops per step)
    whole = []                               # the whole-batch NumPy products
    for l, (n_in, n_out) in enumerate(zip(layers[:-1], layers[1:])):
        W = rng.standard_normal((n_in, n_out)).astype(f32)
        As = rng.standard_normal((chunks, rows, n_in)).astype(f32)
        Zs = np.empty((chunks, rows, n_out), f32)
        dZs = rng.standard_normal((chunks, rows, n_out)).astype(f32)
        dWs = np.empty((chunks, n_in, n_out), f32)
        dAs = np.empty((chunks, rows, n_in), f32)
        b = rng.standard_normal(n_out).astype(f32)
        flops = 2.0 * batch * n_in * n_out
        # the epoch's bf16 copies of W where it keeps them (engine._weight_copies' rule)
        no_copy = np.empty(0, np.uint16)
        Wp = (bf16.packed_pairs(W, False, bf16.TILE_COLS).reshape(-1) if use_bf16
              and gemm.bf16_product(rows, n_in, n_out, n_out) else no_copy)
        Wr = (bf16.rounded_rows(W).reshape(-1) if use_bf16 and l > 0
              and gemm.bf16_product(rows, n_out, n_in, rows) else no_copy)
        parts.append((f"layer {l} forward A W + b ({n_in}x{n_out})",
                      timed(_forward_products, As, W, b, Zs, use_bf16, Wp, reps=reps), flops))
        parts.append((f"layer {l} weight grad A^T dZ",
                      timed(_weight_grad_products, As, dZs, dWs, use_bf16, reps=reps), flops))
        if l > 0:
            parts.append((f"layer {l} input grad dZ W^T",
                          timed(_input_grad_products, dZs, W, dAs, use_bf16, Wr, reps=reps),
                          flops))
        A, dZ = As.reshape(-1, n_in)[:batch], dZs.reshape(-1, n_out)[:batch]
        Z, dW, dA = np.empty((batch, n_out), f32), np.empty((n_in, n_out), f32), \
            np.empty((batch, n_in), f32)
        t_whole = (timed(lambda k: [np.matmul(A, W, out=Z) for _ in range(k)], reps=reps,
                         blas_threads=T)
                   + timed(lambda k: [np.matmul(A.T, dZ, out=dW) for _ in range(k)],
                           reps=reps, blas_threads=T))
        n_products = 2
        if l > 0:
            t_whole += timed(lambda k: [np.matmul(dZ, W.T, out=dA) for _ in range(k)],
                             reps=reps, blas_threads=T)
            n_products = 3
        whole.append((l, t_whole, n_products * flops))
        if l < len(layers) - 2:
            parts.append((f"layer {l} ReLU, ReLU'",
                          timed(_epilogues, Zs, np.empty_like(Zs), dZs.copy(), reps=reps),
                          0.0))
    K = layers[-1]
    Zs = rng.standard_normal((chunks, rows, K)).astype(f32)
    labels = rng.integers(0, K, size=rows)
    parts.append(("softmax cross-entropy and its delta",
                  timed(_loss, np.empty_like(Zs), Zs, np.empty_like(Zs), np.arange(rows),
                        labels, np.empty((0, 0), f32), np.empty(0, f32), f32(1.0 / batch),
                        reps=reps), 0.0))
    P = sum(a * b + b for a, b in zip(layers[:-1], layers[1:]))
    n_blocks = max(1, -(-P // 65536)) if chunks > 1 else 1
    edges = np.linspace(0, P, n_blocks + 1).astype(np.int64)
    gslab = rng.standard_normal((chunks, P)).astype(f32)
    if chunks > 1:
        parts.append((f"sum of {chunks} gradient slabs ({P:,} params)",
                      timed(_reduce, gslab, edges[:-1], edges[1:], reps=reps), 0.0))
    params, m, v = (rng.standard_normal(P).astype(f32) for _ in range(3))
    v = np.abs(v)
    if optimizer == "sgd":
        parts.append(("SGD momentum update",
                      timed(_sgd, params, gslab[0], m, edges[:-1], edges[1:], reps=reps), 0.0))
    else:
        parts.append(("Adam update",
                      timed(_adam, params, gslab[0], m, v, edges[:-1], edges[1:], reps=reps),
                      0.0))
    total = sum(p[1] for p in parts)
    print(f"\n### {name} {layers}, batch {batch}, float32, precision {precision}, {optimizer}, "
          f"plan {plan.strategy} "
          f"({chunks} chunk(s) of {rows} rows), {T} threads\n")
    print(f"whole step (Trainer.fit): {step * 1e3:.3f} ms; sum of the parts: "
          f"{total * 1e3:.3f} ms\n")
    print("| part | ms per step | share of the parts | GFLOP/s |")
    print("|---|---:|---:|---:|")
    for part, seconds, flops in parts:
        rate = f"{flops / seconds / 1e9:.0f}" if flops else ""
        print(f"| {part} | {seconds * 1e3:.3f} | {seconds / total:.0%} | {rate} |")
    products = sum(p[1] for p in parts if p[2])
    gemm_flops = sum(p[2] for p in parts)
    t_numpy = sum(w[1] for w in whole)
    print(f"\nproducts as the kernel runs them: {products * 1e3:.3f} ms "
          f"({gemm_flops / products / 1e9:.0f}"
          f" GFLOP/s); as whole-batch NumPy products on {T} threads: {t_numpy * 1e3:.3f} ms "
          f"({gemm_flops / t_numpy / 1e9:.0f} GFLOP/s)")
    kernel, passes = inside_step(name, optimizer, precision)
    print(f"inside the epoch kernel (best of 5 epochs): {kernel * 1e3:.3f} ms a step, of which "
          f"the chunks' forward and backward passes {passes * 1e3:.3f} ms and the rest (the "
          f"slabs' sum, the update, the step's records) {(kernel - passes) * 1e3:.3f} ms")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", nargs="+", default=["mnist", "wide"], choices=list(WORKLOADS))
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    p.add_argument("--rounds", type=int, default=20, help="repetitions of each part")
    p.add_argument("--precision", default="full", choices=["full", "bf16"])
    args = p.parse_args(argv)
    print(f"CPU: {cpu_model_and_flags()[0]}; {numba.get_num_threads()} threads; "
          f"{time.strftime('%Y-%m-%d')}")
    for name in args.workloads:
        breakdown(name, args.optimizer, args.rounds, args.precision)


if __name__ == "__main__":
    main()
