"""Would splitting a one-hidden-layer network's hidden units across the threads beat splitting
its batch? A measurement for issue 12 (digits at scikit-learn's defaults), not a kernel.

fastbp's "chunks" plan splits each step's rows across T threads: every thread computes a
whole gradient of its rows into its own slab, then one thread sums the slabs and updates
every parameter. On digits at scikit-learn's defaults (64-100-10, batch 200, float64, Adam)
that serial part and the parameters crossing between the cores take about a fifth of a step.

The alternative measured here gives thread t the hidden units [lo_t, hi_t) for the whole
batch: their columns of W_0 and b_0 and their rows of W_1, with their Adam state. The
threads then exchange only the output layer's partial logits (B x K):

  region 1 (T threads): Z_t = X W_0[:, lo:hi] + b_0[lo:hi]; A_t = relu(Z_t);
                        P_t = A_t W_1[lo:hi, :]
  serial:               logits = sum_t P_t + b_1; softmax loss; dZ = P - Y (B x K); db_1
  region 2 (T threads): dW_1[lo:hi] = A_t^T dZ; dA_t = dZ W_1[lo:hi]^T; relu';
                        dW_0[:, lo:hi] = X^T dA_t; db_0[lo:hi]; Adam on the thread's
                        parameters (thread 0 also b_1)

Each thread keeps its W_0 columns packed (n_in x H/T) between steps. It prints microseconds
per step for this layout and for fastbp's own epoch kernel ("serial" and "chunks" plans) on
the same data, side by side, with the machine's core sharing (workloads.core_sharing).

Usage: python benchmarks/hidden_split_probe.py [--hidden 100] [--batch 200] [--rounds 7]
"""
import argparse
import os
import sys
import time

import numba
import numpy as np
from numba import njit, prange

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workloads import core_sharing, cpu_model_and_flags  # noqa: E402

from fastbp import Trainer  # noqa: E402
from fastbp.kernels import codes, gemm, ops, optim, training_plan  # noqa: E402


@njit(parallel=True, cache=False)
def _epoch(X, labels, order, B, W0t, b0, W1, b1, m, v, dW0t, dW1, db0, db1, Z, A, P,
           logits, probs, dZ, dA, lr, steps_done):
    """One epoch in the hidden-unit split; W0t (T, n_in, H/T) the threads' packed columns
    of W_0; m, v (T + 1, size) Adam state per thread (the last row for b_1)."""
    T = W0t.shape[0]
    n_in, Ht = W0t.shape[1], W0t.shape[2]
    n, K = order.shape[0], W1.shape[1]
    t_ = X.dtype.type
    beta1, beta2, eps = t_(0.9), t_(0.999), t_(1e-8)
    Xb = np.empty((B, n_in))
    scratch = np.empty((T, Ht * (K + 1)))  # each thread's input-gradient scratch (gemm.nt)
    loss = 0.0
    step = steps_done
    for lo in range(0, n - B + 1, B):
        idx = order[lo:lo + B]
        for r in range(B):
            for j in range(n_in):
                Xb[r, j] = X[idx[r], j]
        for t in prange(T):
            h0 = t * Ht
            gemm.nn(Z[t], Xb, W0t[t], b0[h0:h0 + Ht])
            ops.activation_forward(A[t], Z[t], codes.RELU)
            gemm.nn(P[t], A[t], W1[h0:h0 + Ht], b1 * t_(0))
        for r in range(B):
            for k in range(K):
                s = b1[k]
                for t in range(T):
                    s += P[t, r, k]
                logits[r, k] = s
        ls, _ = ops.loss_forward(probs, logits, idx, labels, np.empty((0, 0)), np.empty(0),
                                 codes.CROSS_ENTROPY)
        loss += ls
        ops.loss_backward(dZ, probs, idx, labels, np.empty((0, 0)), np.empty(0),
                          codes.CROSS_ENTROPY, t_(1.0) / t_(B))
        for k in range(K):
            db1[k] = 0.0
        for r in range(B):
            for k in range(K):
                db1[k] += dZ[r, k]
        step += 1
        bc1, bc2 = 1.0 - 0.9 ** step, 1.0 - 0.999 ** step
        step_size, inv_sqrt_bc2 = t_(lr / bc1), t_(1.0 / np.sqrt(bc2))
        for t in prange(T):
            h0 = t * Ht
            gemm.tn(dW1[h0:h0 + Ht], A[t], dZ)
            gemm.nt(dA[t], dZ, W1[h0:h0 + Ht], scratch[t])
            ops.activation_backward(dA[t], Z[t], A[t], codes.RELU, False)
            gemm.tn(dW0t[t], Xb, dA[t])
            for j in range(Ht):
                db0[h0 + j] = 0.0
            for r in range(B):
                for j in range(Ht):
                    db0[h0 + j] += dA[t, r, j]
            # Adam on the thread's own parameters: W_0 columns, b_0 and W_1 rows
            W0flat, g0 = W0t[t].reshape(-1), dW0t[t].reshape(-1)
            mt, vt = m[t], v[t]
            n0 = W0flat.shape[0]
            optim.adam_update(W0flat, g0, mt[:n0], vt[:n0], 0, n0, step_size, beta1, beta2,
                              eps, inv_sqrt_bc2, t_(0), t_(1), t_(1))
            optim.adam_update(b0[h0:h0 + Ht], db0[h0:h0 + Ht], mt[n0:n0 + Ht],
                              vt[n0:n0 + Ht], 0, Ht, step_size, beta1, beta2, eps,
                              inv_sqrt_bc2, t_(0), t_(1), t_(1))
            W1flat, g1 = W1[h0:h0 + Ht].reshape(-1), dW1[h0:h0 + Ht].reshape(-1)
            n1 = W1flat.shape[0]
            optim.adam_update(W1flat, g1, mt[n0 + Ht:n0 + Ht + n1], vt[n0 + Ht:n0 + Ht + n1],
                              0, n1, step_size, beta1, beta2, eps, inv_sqrt_bc2, t_(0), t_(1),
                              t_(1))
            if t == 0:
                optim.adam_update(b1, db1, m[T, :K], v[T, :K], 0, K, step_size, beta1,
                                  beta2, eps, inv_sqrt_bc2, t_(0), t_(1), t_(1))
    return loss, step


def probe(hidden, batch, rounds):
    T = numba.get_num_threads()
    if hidden % T:
        raise SystemExit(f"--hidden {hidden} must be a multiple of the {T} threads")
    n_in, K, n = 64, 10, 7 * batch
    rng = np.random.default_rng(0)
    X = rng.random((n, n_in))
    labels = rng.integers(0, K, size=n)
    order = np.arange(n)
    Ht = hidden // T
    W0t = rng.uniform(-0.1, 0.1, (T, n_in, Ht))
    W1 = rng.uniform(-0.1, 0.1, (hidden, K))
    b0, b1 = np.zeros(hidden), np.zeros(K)
    size = n_in * Ht + Ht + Ht * K
    m, v = np.zeros((T + 1, size)), np.zeros((T + 1, size))
    buffers = (np.empty((T, n_in, Ht)), np.empty((hidden, K)), np.empty(hidden),
               np.empty(K), np.empty((T, batch, Ht)), np.empty((T, batch, Ht)),
               np.empty((T, batch, K)), np.empty((batch, K)), np.empty((batch, K)),
               np.empty((batch, K)), np.empty((T, batch, Ht)))
    gemm.register("float64")

    def split():
        return _epoch(X, labels, order, batch, W0t, b0, W1, b1, m, v, *buffers, 1e-3, 0)

    def fastbp_epoch(strategy):
        t = Trainer([n_in, hidden, K], batch_size=batch, dtype="float64", optimizer="adam",
                    target="parallel", seed=0, n_threads=T)
        t.engine.train_plan = training_plan("parallel", [n_in, hidden, K], batch, T, strategy)
        t.fit(X, labels, epochs=1, progress=False)
        e = t.engine
        runner = e.epoch_runner(t.check_data(X, labels, None), order, np.empty((7, 5)))

        def run():
            with e.compute(runner.plan):
                runner.run(t._hyper, 0)
        return run

    contestants = {"fastbp serial plan": fastbp_epoch("serial"),
                   "fastbp chunks plan": fastbp_epoch("chunks"), "hidden-unit split": split}
    for run in contestants.values():
        run()
    best = {}
    for _ in range(rounds):
        for label, run in contestants.items():
            start = time.perf_counter()
            for _ in range(20):
                run()
            per_step = (time.perf_counter() - start) / 20 / (n // batch)
            best.setdefault(label, []).append(per_step)
    print(f"CPU: {cpu_model_and_flags()[0]}; {T} threads; 64-{hidden}-10, batch {batch}, "
          f"float64, Adam; {time.strftime('%Y-%m-%d')}\n")
    print("| layout | us per step (median of rounds) |")
    print("|---|---:|")
    for label, times in best.items():
        print(f"| {label} | {np.median(times) * 1e6:.1f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    sharing = core_sharing()
    probe(args.hidden, args.batch, args.rounds)
    print(f"\ntwo threads' FMA time over one's (1.0: cores of their own, 2.0: one shared "
          f"core): {sharing:.2f} before, {core_sharing():.2f} after")


if __name__ == "__main__":
    main()
