"""Which register block should gemm.py's panels use on this CPU? (issue 15 §2: blocking)

gemm.py computes C = A B (+ bias) in panels of MR rows by NV vectors of columns: MR x NV
accumulators in registers, each step of the depth loop loading NV vectors of B's row and
broadcasting MR elements of A. B's bytes read per multiply-add fall as MR grows (each
panel streams all of B), and the accumulators hide the FMA latency: a core that issues two
512-bit FMAs a cycle (Intel's AVX-512 server cores) needs twice the accumulators, and twice
B's bandwidth, of one that issues one (Zen 4). AVX-512 has 32 vector registers: MR x NV +
NV + 1 of them at most.

This times, on one thread, each product of the steps the kernels run in gemm's loops
(forward A W + b as nn, the weight gradient A^T dZ as tn, the input gradient as nn over W
transposed) through BLAS and through panels of each (MR, NV) below (the rows left over in
panels of 4, 2 and 1 rows, as gemm.panels does), checks each against NumPy, and
prints microseconds and the ratio to the block gemm.py uses on this host (gemm.block).

    python benchmarks/panel_probe.py [--rounds 5] [--blocks 6x2 8x3 6x4 14x2]
"""
import argparse
import os
import sys
import time

import numpy as np

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(BENCHMARKS), BENCHMARKS]     # this checkout's fastbp
from workloads import blas_products, cpu_model_and_flags  # noqa: E402

# (label, kind, M, K, N, dtype): kind "nn" C = A B + b, "tn" C = A^T B; the rows are one
# chunk's of the automatic plan on two threads (mnist and deep: 64 and 32 rows; digits at
# scikit-learn's defaults: batch 200 in two chunks of 100)
PRODUCTS = [
    ("mnist A W + b", "nn", 64, 784, 256, "float32"),
    ("mnist A^T dZ", "tn", 784, 64, 256, "float32"),
    ("mnist hidden A W + b", "nn", 64, 256, 128, "float32"),
    ("mnist hidden A^T dZ", "tn", 256, 64, 128, "float32"),
    ("mnist dZ W^T (transposed)", "nn", 64, 128, 256, "float32"),
    ("deep A W + b", "nn", 32, 128, 128, "float32"),
    ("deep A^T dZ", "tn", 128, 32, 128, "float32"),
    ("regression A W + b", "nn", 32, 64, 64, "float32"),
    ("digits A W + b", "nn", 100, 64, 100, "float64"),
    ("digits A^T dZ", "tn", 64, 100, 100, "float64"),
    ("digits dZ W^T (transposed)", "nn", 100, 10, 100, "float64"),
    ("mnist f64 A W + b", "nn", 64, 784, 256, "float64"),
    ("mnist f64 A^T dZ", "tn", 784, 64, 256, "float64"),
    ("mnist f64 hidden A W + b", "nn", 64, 256, 128, "float64"),
]
REST = (4, 2, 1)


def driver(MR, nv):
    """A jitted panels(C, A, sai, sap, B, K, bias, use_bias) with panels of MR rows by nv
    vectors, the rest in smaller panels (REST), as gemm.panels."""
    from fastbp.kernels import gemm
    from fastbp.kernels.codes import jit
    sizes = [MR] + [r for r in REST if r < MR]
    env = {f"_p{r}": gemm.panel_intrinsic(r, nv=nv) for r in sizes}
    lines = ["def panels(C, A, sai, sap, B, K, bias, use_bias):",
             "    M, N = C.shape", "    r = 0",
             f"    while r + {MR} <= M:",
             f"        _p{MR}(A, r * sai, sai, sap, B, C, r * N, K, N, bias, use_bias)",
             f"        r += {MR}"]
    for r in sizes[1:]:
        lines += [f"    {'while' if r == 1 else 'if'} r + {r} <= M:",
                  f"        _p{r}(A, r * sai, sai, sap, B, C, r * N, K, N, bias, use_bias)",
                  f"        r += {r}"]
    exec("\n".join(lines), env)
    panels = jit(env["panels"])

    @jit
    def run(kind, C, A, B, bias, n):
        for _ in range(n):
            if kind == 0:
                panels(C, A, A.shape[1], 1, B, A.shape[1], bias, True)
            else:
                panels(C, A, 1, A.shape[1], B, A.shape[0], C[0], False)
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--blocks", nargs="+", default=["6x2", "8x3", "6x4", "4x4", "14x2"])
    args = p.parse_args()
    from fastbp.engine import single_threaded_blas
    from fastbp.kernels.gemm import MR, NV, VECTOR_BYTES

    blocks = [tuple(map(int, b.split("x"))) for b in args.blocks]
    model, flags = cpu_model_and_flags()
    print(f"CPU: {model}; vectors of {VECTOR_BYTES} bytes; one thread; best of "
          f"{args.rounds} rounds; us per product\n")
    t0 = time.perf_counter()
    runs = {b: driver(*b) for b in blocks}

    blas = blas_products()

    rng = np.random.default_rng(0)
    head = " | ".join(f"{b[0]}x{b[1]}" for b in blocks)
    print(f"| product | kind | rows x depth x cols | dtype | BLAS | {head} | best/{MR}x{NV} |")
    print("|---|---|---|---|---:|" + "---:|" * len(blocks) + "---:|")
    with single_threaded_blas():
        for label, kind, M, K, N, dtype in PRODUCTS:
            k = 0 if kind == "nn" else 1
            A = rng.standard_normal((M, K) if k == 0 else (K, M)).astype(dtype)
            B = rng.standard_normal((K, N)).astype(dtype)
            bias = rng.standard_normal(N).astype(dtype)
            want = A @ B + bias if k == 0 else A.T @ B
            C = np.empty((M, N), dtype=dtype)
            reps = max(3, int(2e7 / (M * K * N)))
            best = {}
            contestants = [("blas", blas)] + [(b, runs[b]) for b in blocks]
            for name, fn in contestants:
                C[:] = np.nan
                fn(k, C, A, B, bias, 1)
                tol = 1e-4 if dtype == "float32" else 1e-10
                np.testing.assert_allclose(C, want, rtol=tol, atol=tol * np.abs(want).max(),
                                           err_msg=f"{name} {label}")
            for _ in range(args.rounds):
                for name, fn in contestants:
                    start = time.perf_counter()
                    fn(k, C, A, B, bias, reps)
                    t = (time.perf_counter() - start) / reps
                    best[name] = min(best.get(name, np.inf), t)
            ours = min(blocks, key=lambda b: best[b])
            cells = " | ".join(("**%.2f**" if b == ours else "%.2f") % (best[b] * 1e6)
                               for b in blocks)
            base = best.get((MR, NV), best[blocks[0]])
            print(f"| {label} | {kind} | {M} x {K} x {N} | {dtype} | {best['blas'] * 1e6:.2f}"
                  f" | {cells} | {best[ours] / base:.2f} |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s in all, compiling included")


if __name__ == "__main__":
    main()
