"""Which matrix products could the kernels reach on this CPU? (issue 15 §2-3, measured first)

Times, single-threaded, the float32 products of the mnist and wide workloads' steps with
  - OpenBLAS's sgemm (NumPy's matmul under threadpoolctl(1); SciPy's, which the kernels call,
    is the same OpenBLAS build),
  - Intel MKL's cblas_sgemm and cblas_gemm_bf16bf16f32 (bfloat16 inputs, float32 accumulation
    and output), when the `mkl` package is installed (`pip install mkl`: an optional probe,
    never a dependency of fastbp),
and prints GFLOP/s with the bf16 product's error against float32, and the CPU's model and
bf16/AMX flags. Usage: python benchmarks/blas_probe.py [--reps 20]
"""
import argparse
import ctypes
import glob
import os
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workloads import cpu_model_and_flags  # noqa: E402

# (rows, fan-in, fan-out) of the products of a chunk of 128 rows (one of two threads at
# batch 256 for wide, batch 128 for mnist run whole on one thread)
SHAPES = [(128, 784, 1024), (128, 1024, 1024), (128, 784, 256), (128, 256, 128)]
ROW_MAJOR, NO_TRANS = 101, 111


def cpu_model():
    model, flags = cpu_model_and_flags()
    wanted = [f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16",
                                        "amx_tile", "avx512_fp16")]
    return model, wanted


def load_mkl():
    """libmkl_rt from the `mkl` wheel, sequential; None when it is not installed."""
    prefix = os.path.dirname(os.path.dirname(os.path.dirname(os.__file__)))
    candidates = (glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*"))
                  + glob.glob(os.path.join(prefix, "libmkl_rt.so*")))
    for path in candidates:
        try:
            lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        lib.MKL_Set_Threading_Layer(1)          # MKL_THREADING_SEQUENTIAL
        return lib
    return None


def to_bf16(x):
    """float32 -> bfloat16 bits (truncation; the kernels would round to nearest)."""
    return (x.view(np.uint32) >> 16).astype(np.uint16)


def timed(fn, reps):
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args(argv)
    model, flags = cpu_model()
    print(f"CPU: {model}; flags: {' '.join(flags) or 'none of avx2/avx512/bf16/amx'}")
    mkl = load_mkl()
    if mkl is None:
        print("(MKL columns need `pip install mkl`)")
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)        # noqa: E731
    one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
    print("| rows x fan-in x fan-out | OpenBLAS sgemm | MKL sgemm | MKL bf16 | bf16 rel. error |")
    print("|---|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for M, K, N in SHAPES:
        A = rng.standard_normal((M, K)).astype(np.float32)
        B = rng.standard_normal((K, N)).astype(np.float32)
        C = np.empty((M, N), np.float32)
        flops = 2.0 * M * K * N
        with threadpool_limits(1):
            openblas = flops / timed(lambda: np.matmul(A, B, out=C), args.reps) / 1e9
        row = f"| {M} x {K} x {N} | {openblas:.0f} GFLOP/s |"
        if mkl is None:
            print(row + " | | |")
            continue
        C1, C2 = np.empty_like(C), np.empty_like(C)
        A16, B16 = to_bf16(A), to_bf16(B)
        sgemm = flops / timed(lambda: mkl.cblas_sgemm(
            ROW_MAJOR, NO_TRANS, NO_TRANS, M, N, K, one, ptr(A), K, ptr(B), N, zero, ptr(C1),
            N), args.reps) / 1e9
        bf16 = flops / timed(lambda: mkl.cblas_gemm_bf16bf16f32(
            ROW_MAJOR, NO_TRANS, NO_TRANS, M, N, K, one, ptr(A16), K, ptr(B16), N, zero,
            ptr(C2), N), args.reps) / 1e9
        error = np.abs(C2 - C).max() / np.abs(C).max()
        print(row + f" {sgemm:.0f} | {bf16:.0f} | {error:.1e} |")


if __name__ == "__main__":
    main()
