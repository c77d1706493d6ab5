"""Would the first layer's weight gradient pay for skipping ReLU's zeros? (issue 12 and 15,
measured first)

With ReLU hidden units, dZ_0 = dA_1 * (Z_0 > 0) is zero wherever a unit is off for a row
(about half of them). The weight gradient dW_0 = A_0^T dZ_0 (fan_in x hidden) is the
largest product of the backward pass on digits and mnist, and gemm.py runs it densely (tn:
panels of 6 rows of dW_0 by 2 vectors of hidden units; a whole vector of units is rarely off
together). Turned around, dW_0^T[j, :] = sum over the rows p where unit j is on of
dZ_0[p, j] A_0[p, :]: each term a broadcast times A_0's row, so only the non-zero terms
are computed. This times, on one thread, for one chunk's product:
  - dense: gemm's tn panels (what the kernels run now);
  - sparse: the lists of each unit's rows on (built from dZ_0 without branches), then per
    unit and per tile of 4 vectors of A_0's columns (the tile's rows stay in L1) the
    non-zero terms in 4 vector accumulators (LLVM vector IR, as gemm.py's panels), into
    dW_0^T, transposed into dW_0 at the end (gemm.transpose_into);
at densities of dZ_0 from 0.15 to 1, and prints each part's microseconds and the ratio.

    python benchmarks/relu_grad_probe.py [--rounds 7]
"""
import argparse
import os
import sys
import time

import numpy as np

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(BENCHMARKS), BENCHMARKS]     # this checkout's fastbp
from workloads import cpu_model_and_flags  # noqa: E402

# (label, rows of a chunk, fan_in, hidden, dtype)
SHAPES = [("digits, scikit-learn's defaults", 100, 64, 100, "float64"),
          ("mnist", 64, 784, 256, "float32"),
          ("mnist shapes, float64", 64, 784, 256, "float64")]
DENSITIES = (0.15, 0.3, 0.5, 0.7, 1.0)
TILE = 4                      # vectors of A_0's columns per accumulator set


def build():
    from llvmlite import ir  # noqa: F401
    from numba.core import cgutils, types
    from numba.core.extending import intrinsic

    from fastbp.kernels import gemm
    from fastbp.kernels.codes import jit

    def rows_intrinsic(T):
        """acc(T vectors) = sum_q val[q0 + q] * X.flat[x0 + idx[q0 + q] ldx : + T lanes]
        for q < n, stored at out.flat[o0:]."""
        @intrinsic
        def rows(typingctx, X, x0, ldx, idx, val, q0, n, out, o0):
            sig = types.void(X, types.intp, types.intp, idx, val, types.intp, types.intp,
                             out, types.intp)

            def codegen(context, builder, sig, args):
                vec = gemm._Vectors(context, builder, sig.args[0].dtype, gemm.VECTOR_BYTES)
                px, pidx, pval, pout = gemm._data(context, builder, sig, args, (0, 3, 4, 7))
                x0, ldx, q0, n, o0 = (args[i] for i in (1, 2, 5, 6, 8))
                const = vec.const
                acc = [cgutils.alloca_once_value(builder, vec.zero) for _ in range(T)]
                with cgutils.for_range(builder, n) as loop:
                    q = builder.add(q0, loop.index)
                    p = builder.load(builder.gep(pidx, [q]))
                    a = vec.broadcast(builder.load(builder.gep(pval, [q])))
                    base = builder.add(x0, builder.mul(p, ldx))
                    for v in range(T):
                        vec.fma_into(acc[v], a, vec.load(px, builder.add(base,
                                                                         const(v * vec.lanes))))
                for v in range(T):
                    vec.store(builder.load(acc[v]), pout, builder.add(o0, const(v * vec.lanes)))
                return context.get_dummy_value()
            return sig, codegen
        return rows

    rows_t, rows_1 = rows_intrinsic(TILE), rows_intrinsic(1)

    @jit
    def lists(dZ, idx, val, count):
        """Each unit's rows on, in row order: idx[j * R + q], val[...] for q < count[j]."""
        R, H = dZ.shape
        count[:] = 0
        for p in range(R):
            for j in range(H):
                v = dZ[p, j]
                at = j * R + count[j]
                idx[at] = p
                val[at] = v
                count[j] += v != 0
        return count

    @jit
    def sparse_products(X, idx, val, count, outT):
        R, F = X.shape
        H = outT.shape[0]
        lanes = gemm.VECTOR_BYTES // X.itemsize
        width = TILE * lanes
        full = F - F % width
        for c0 in range(0, full, width):          # a tile of A_0's rows stays in L1
            for j in range(H):
                rows_t(X, c0, F, idx, val, j * R, count[j], outT, j * F + c0)
        for c0 in range(full, F, lanes):
            for j in range(H):
                rows_1(X, c0, F, idx, val, j * R, count[j], outT, j * F + c0)

    @jit
    def run_lists(dZ, idx, val, count, reps):
        for _ in range(reps):
            lists(dZ, idx, val, count)

    @jit
    def run_products(X, idx, val, count, outT, reps):
        for _ in range(reps):
            sparse_products(X, idx, val, count, outT)

    @jit
    def run_transpose(C, outT, reps):
        for _ in range(reps):
            gemm.transpose_into(C, outT)

    @jit
    def run_dense(C, X, dZ, reps):
        for _ in range(reps):
            gemm.panels(C, X, 1, X.shape[1], dZ, X.shape[0], C[0], False)

    return run_lists, run_products, run_transpose, run_dense


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    from fastbp.engine import single_threaded_blas
    from fastbp.kernels.gemm import VECTOR_BYTES

    model, _ = cpu_model_and_flags()
    print(f"CPU: {model}; vectors of {VECTOR_BYTES} bytes; one thread; best of {args.rounds} "
          "rounds; us per product\n")
    run_lists, run_products, run_transpose, run_dense = build()
    rng = np.random.default_rng(0)
    print("| product | rows x fan_in x hidden | dtype | dZ_0 density | dense tn | lists | "
          "sparse terms | transpose | sparse in all | dense / sparse |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    with single_threaded_blas():
        for label, R, F, H, dtype in SHAPES:
            X = rng.standard_normal((R, F)).astype(dtype)
            for density in DENSITIES:
                dZ = (rng.standard_normal((R, H)) * (rng.random((R, H)) < density)).astype(dtype)
                idx = np.empty(R * H, dtype=np.int64)
                val = np.empty(R * H, dtype=dtype)
                count = np.empty(H, dtype=np.int64)
                outT = np.empty((H, F), dtype=dtype)
                C, dense = np.empty((F, H), dtype=dtype), np.empty((F, H), dtype=dtype)
                run_lists(dZ, idx, val, count, 1)
                run_products(X, idx, val, count, outT, 1)
                run_transpose(C, outT, 1)
                run_dense(dense, X, dZ, 1)
                tol = 1e-4 if dtype == "float32" else 1e-10
                want = X.astype(np.float64).T @ dZ
                for got in (C, dense):
                    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
                reps = max(3, int(2e6 / (R * F * H * density)))
                parts = {"dense": lambda n: run_dense(dense, X, dZ, n),
                         "lists": lambda n: run_lists(dZ, idx, val, count, n),
                         "terms": lambda n: run_products(X, idx, val, count, outT, n),
                         "transpose": lambda n: run_transpose(C, outT, n)}
                best = {}
                for _ in range(args.rounds):
                    for name, fn in parts.items():
                        start = time.perf_counter()
                        fn(reps)
                        best[name] = min(best.get(name, np.inf),
                                         (time.perf_counter() - start) / reps)
                sparse = best["lists"] + best["terms"] + best["transpose"]
                print(f"| {label} | {R} x {F} x {H} | {dtype} | {density:.2f} | "
                      f"{best['dense'] * 1e6:.1f} | {best['lists'] * 1e6:.1f} | "
                      f"{best['terms'] * 1e6:.1f} | {best['transpose'] * 1e6:.1f} | "
                      f"{sparse * 1e6:.1f} | {best['dense'] / sparse:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
