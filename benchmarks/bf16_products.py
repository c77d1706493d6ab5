"""Would bfloat16 products make fastbp faster on this CPU? (issue 15, mixed precision)

Times each matrix product of a training step of the GEMM-bound workloads on one thread, as
the kernels run them (float32, the rows of one chunk of the automatic plan), through:

  openblas f32   SciPy's OpenBLAS, called as the kernels call it (np.dot inside Numba);
  mkl f32        MKL's cblas_sgemm                       } when MKL's runtime is found
  mkl bf16       MKL's cblas_gemm_bf16bf16f32 (bf16 operands, float32 sums and output),
                 the float32 -> bf16 rounding of both operands included;
  onednn bf16    torch.mm on bf16 tensors, one thread (PyTorch's CPU build runs them
                 through oneDNN): what this CPU's bf16 instructions give, conversion
                 not included (bf16 output) -- a bound, not a candidate (torch is no
                 dependency of fastbp);
  fastbp bf16    fastbp's own bf16 products (precision="bf16": kernels/amx.py's panel on
                 AMX tiles where the CPU has them, else kernels/bf16.py's VDPBF16PS
                 panel, reached through kernels/gemm.py's bf16 entry points as the
                 kernels call them), the operands' rounding and packing included; only
                 where this CPU has AVX512-BF16 (elsewhere the panel is emulated; the
                 first line says which panel runs; FASTBP_AMX=0 keeps VDPBF16PS's);
  fastbp bf16 panel  the panel alone on operands already rounded and packed: what
                 rounding once per layer and packing once per step could approach.

Then it bounds what bf16 products can give a whole step: it times fastbp's serial epoch
(target='cpu', one thread, whole-batch products) and the same step's products through
OpenBLAS; with f the products' share of the step and r a bf16 library's speed-up on them,
a step can at best run 1 / ((1 - f) + f / r) times faster (Amdahl; the rest of the step,
epilogues and the update, stays float32).

    python benchmarks/bf16_products.py                       # mnist and wide
    python benchmarks/bf16_products.py --mkl /path/to/libmkl_rt.so.3 --workloads wide

MKL: `pip install mkl` puts libmkl_rt.so.* in the environment's lib/ (found here through
the package's file list); --mkl names it where it is elsewhere. OpenBLAS in the NumPy and
SciPy wheels has no bf16 product (no sbgemm symbol).
"""
import argparse
import ctypes
import glob
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workloads import WORKLOADS, make_arrays  # noqa: E402

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
MKL_THREADING_SEQUENTIAL = 1


def find_mkl(path=None):
    """MKL's single dynamic library (libmkl_rt) loaded sequential, or None."""
    if path is None:
        try:
            from importlib.metadata import files
            found = [f.locate() for f in files("mkl") or () if "libmkl_rt.so" in f.name]
        except Exception:        # the mkl package is not installed
            found = []
        found += glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*"))
        path = next((str(p) for p in found if os.path.exists(p)), None)
        if path is None:
            return None
    lib = ctypes.CDLL(path)
    lib.MKL_Set_Threading_Layer.argtypes = [ctypes.c_int]
    lib.MKL_Set_Threading_Layer(MKL_THREADING_SEQUENTIAL)   # fastbp threads over chunks
    args = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int,
                                 ctypes.c_void_p, ctypes.c_int, ctypes.c_float,
                                 ctypes.c_void_p, ctypes.c_int]
    for fn in (lib.cblas_sgemm, lib.cblas_gemm_bf16bf16f32):
        fn.argtypes, fn.restype = args, None
    return lib


def _kernels():
    from numba import njit

    @njit(cache=True)
    def openblas(kind, C, A, B, n):      # as fastbp.kernels.gemm's entry points call BLAS
        for _ in range(n):
            if kind == 0:
                np.dot(A, B, C)
            elif kind == 1:
                np.dot(A.T, B, C)
            else:
                np.dot(A, B.T, C)

    from fastbp.kernels import bf16, gemm

    @njit(cache=True)
    def rounded(A):                              # bf16 bits of A, same shape (for MKL)
        return bf16.rounded_rows(A)[:A.shape[0], :A.shape[1]].copy()

    @njit(cache=True)
    def panel_operands(kind, A, B):
        """The operands of kind's panel as its entry point makes them: (left's pairs, flat;
        sai, sap, rows) and the packed right one."""
        if kind == 1:            # A (K, M) packed along its rows: sai = 1, sap = M'
            Ap = bf16.packed_pairs(A, False, bf16.PANEL_ROWS)
            Bp = bf16.packed_pairs(B, False, bf16.TILE_COLS)
            return Ap.reshape(-1), 1, Ap.shape[1], Ap.shape[1], Bp
        if kind == 0:
            Al, Bp = bf16.rounded_rows(A), bf16.packed_pairs(B, False, bf16.TILE_COLS)
        else:                    # nt: C^T = B A^T
            Al, Bp = bf16.rounded_rows(B), gemm.pairs_of_rows(A, bf16.TILE_COLS)
        return Al.reshape(-1), Al.shape[1] // 2, 1, Al.shape[0], Bp

    @njit(cache=True)
    def panel_alone(Al, sai, sap, rows, Bp, out, n):
        for _ in range(n):
            bf16.panel(Al, sai, sap, rows, Bp, out)

    return openblas, rounded, panel_operands, panel_alone


def _best(fn, reps, rounds):
    fn()
    best = np.inf
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - start) / reps)
    return best


def step_products(layers, rows):
    """(kind, label, (M, K, N)) of each product of a step over `rows` rows."""
    out = []
    for l, (n_in, n_out) in enumerate(zip(layers[:-1], layers[1:])):
        out.append((0, f"A W ({l})", (rows, n_in, n_out)))
        out.append((1, f"A^T dZ ({l})", (n_in, rows, n_out)))
        if l:
            out.append((2, f"dZ W^T ({l})", (rows, n_out, n_in)))
    return out


def measure_products(products, mkl, torch, panel, rounds):
    """{label: {library: seconds}} for each product."""
    from fastbp.kernels import gemm
    openblas, rounded, panel_operands, panel_alone = _kernels()
    if torch is not None:
        torch.set_num_threads(1)   # again: a fit's threadpoolctl restores OpenMP's count
    rng = np.random.default_rng(0)
    times = {}
    for kind, label, (M, K, N) in products:
        A = rng.standard_normal((K, M) if kind == 1 else (M, K)).astype(np.float32)
        B = rng.standard_normal((N, K) if kind == 2 else (K, N)).astype(np.float32)
        C = np.empty((M, N), np.float32)
        reps = max(3, int(2e8 / (M * K * N)))
        t = times[label] = {"openblas f32": _best(lambda: openblas(kind, C, A, B, 1),
                                                  reps, rounds)}
        # row-major operands as stored: A (M, K) or A (K, M) read transposed, B likewise
        ta, tb = (TRANS if kind == 1 else NO_TRANS), (TRANS if kind == 2 else NO_TRANS)
        lda, ldb = A.shape[1], B.shape[1]
        if mkl is not None:
            t["mkl f32"] = _best(lambda: mkl.cblas_sgemm(
                ROW_MAJOR, ta, tb, M, N, K, 1.0, A.ctypes.data, lda, B.ctypes.data, ldb,
                0.0, C.ctypes.data, N), reps, rounds)

            def bf16():
                Ab, Bb = rounded(A), rounded(B)
                mkl.cblas_gemm_bf16bf16f32(ROW_MAJOR, ta, tb, M, N, K, 1.0, Ab.ctypes.data,
                                           lda, Bb.ctypes.data, ldb, 0.0, C.ctypes.data, N)
            t["mkl bf16"] = _best(bf16, reps, rounds)
        if torch is not None:
            a, b = torch.from_numpy(A), torch.from_numpy(B)
            a, b = (a.T if kind == 1 else a), (b.T if kind == 2 else b)
            a16, b16 = a.bfloat16(), b.bfloat16()
            t["onednn bf16"] = _best(lambda: torch.mm(a16, b16), reps, rounds)
        cols = M if kind == 2 else N             # the panel's columns (nt runs as C^T)
        if panel and gemm.bf16_product(M, K, N, cols):
            bias = np.zeros(N, np.float32)
            # as a bf16 model's kernels call it
            t["fastbp bf16"] = _best(lambda: gemm.product(kind, C, A, B, bias, True), reps,
                                     rounds)
            Al, sai, sap, rows, Bp = panel_operands(kind, A, B)
            out = np.empty((rows, Bp.shape[1]), np.float32)
            t["fastbp bf16 panel"] = _best(lambda: panel_alone(Al, sai, sap, rows, Bp, out, 1),
                                           reps, rounds)
        print(f"  {label:14s} {M:5d} x {K:5d} x {N:5d}  " + "  ".join(
            f"{lib} {2 * M * K * N / s / 1e9:6.1f}" for lib, s in t.items()) + "  GFLOP/s",
            flush=True)
    return times


def fastbp_step(layers, batch, loss, rounds):
    """Seconds per step of fastbp's serial epoch (target='cpu', SGD with momentum)."""
    from fastbp import Trainer
    n = 16 * batch
    X, y = make_arrays(layers, loss, n)
    t = Trainer(layers, loss=loss, optimizer="sgd", lr=0.01, momentum=0.9,
                batch_size=batch, target="cpu", seed=0)
    t.fit(X, y, epochs=1, progress=False)
    best = np.inf
    for _ in range(rounds):
        start = time.perf_counter()
        t.fit(X, y, epochs=1, progress=False)
        best = min(best, time.perf_counter() - start)
    return best / (n // batch)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", nargs="+", default=["mnist", "wide"], choices=list(WORKLOADS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--mkl", help="path of libmkl_rt.so (default: the mkl package's)")
    args = p.parse_args()
    mkl = find_mkl(args.mkl)
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    openblas = _kernels()[0]                 # loads SciPy's BLAS, for threadpoolctl to see
    a = np.ones((2, 2), np.float32)
    openblas(0, a, a, a, 1)
    from threadpoolctl import threadpool_info, threadpool_limits
    threadpool_limits(1)                     # one thread, as each chunk's products run
    assert all(p["num_threads"] == 1 for p in threadpool_info()), threadpool_info()
    if torch is not None:
        torch.set_num_threads(1)             # again: threadpoolctl's limit resets PyTorch's
    from fastbp.kernels import bf16, gemm
    gemm.enable_bf16()
    panel = bf16.host_has_avx512_bf16()
    print(f"bf16 panel: {bf16.panel_kind()}; AVX512-BF16: {'yes' if panel else 'no'}; MKL: {'found' if mkl is not None else 'not found (pip install mkl)'}; "
          f"PyTorch: {torch.__version__ if torch is not None else 'not installed'}")
    from fastbp.kernels import choose_strategy
    for name in args.workloads:
        layers, batch, loss = WORKLOADS[name]
        plan = choose_strategy(layers, batch, len(os.sched_getaffinity(0)))
        rows = batch if plan == "serial" else -(-batch // len(os.sched_getaffinity(0)))
        print(f"\n{name} {'-'.join(map(str, layers))}, batch {batch}: one chunk's "
              f"products ({rows} rows), one thread")
        chunk = measure_products(step_products(layers, rows), mkl, torch, panel, args.rounds)
        libs = list(dict.fromkeys(lib for t in chunk.values() for lib in t))
        total = {lib: sum(t.get(lib, t["openblas f32"]) for t in chunk.values())
                 for lib in libs}
        print("  products of a chunk, speed-up over openblas f32: " + ", ".join(
            f"{lib} {total['openblas f32'] / total[lib]:.2f}x" for lib in libs[1:]))
        # the share of a whole serial step in products, for the bound
        print(f"  whole-batch products ({batch} rows), one thread:")
        whole = measure_products(step_products(layers, batch), None, None, None, args.rounds)
        products = sum(t["openblas f32"] for t in whole.values())
        step = fastbp_step(layers, batch, loss, args.rounds)
        f = min(products / step, 1.0)
        print(f"  fastbp cpu step {step * 1e3:.2f} ms, of which products {products * 1e3:.2f} "
              f"ms (f = {f:.2f})")
        for lib in libs[1:]:
            r = total["openblas f32"] / total[lib]
            print(f"  bound with {lib} products: {1 / ((1 - f) + f / r):.2f}x a step")


if __name__ == "__main__":
    main()
