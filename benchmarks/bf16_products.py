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
  llvm bf16      a prototype of the panel fastbp.kernels.gemm would need: VDPBF16PS
                 (AVX512-BF16) on 8 rows x 32 columns of float32 accumulators, written as
                 LLVM IR and compiled by llvmlite as gemm.py's loops are, so reachable
                 from the kernels; the operands' rounding to bf16 and the packing of the
                 right one into pairs along the depth included. Only where this CPU has
                 AVX512-BF16, for products of whole tiles (rows a multiple of 8, columns
                 of 32, even depth); the others stay float32 in the totals;
  llvm bf16 panel  the same panel on operands already in bf16 and packed: the bound for
                 kernels that round each layer's activations once and pack the weights
                 once per step (not per product and chunk, as the line above does).

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


PANEL_ROWS, PANEL_VECTORS = 8, 2   # 16 zmm accumulators, 2 loads of B, 1 broadcast of A


def _panel_ir():
    """LLVM IR of bf16_nn(A, Bp, C, M, K2, N): C (M, N) float32 = A (M, 2 K2) @ B (2 K2, N)
    for bf16 A (row-major, so a row's pairs along the depth are adjacent 32-bit words) and
    B packed as Bp (K2, N, 2): for each pair of depths, each column's two values side by
    side, as VDPBF16PS multiplies them. The accumulators are allocas that LLVM's O3 keeps
    in registers."""
    dp = "@llvm.x86.avx512bf16.dpbf16ps.512"
    out = [f"declare <16 x float> {dp}(<16 x float>, <32 x bfloat>, <32 x bfloat>)",
           "define void @bf16_nn(i32* noalias %A, <32 x bfloat>* noalias %Bp, "
           "float* noalias %C, i64 %M, i64 %K2, i64 %N) {", "entry:"]
    tiles = [(r, v) for r in range(PANEL_ROWS) for v in range(PANEL_VECTORS)]
    out += [f"  %acc{r}_{v} = alloca <16 x float>" for r, v in tiles]
    out += ["  %nvec = udiv i64 %N, 16", "  br label %rows", "rows:",
            "  %i = phi i64 [0, %entry], [%inext, %cols_done]", "  br label %cols", "cols:",
            "  %j = phi i64 [0, %rows], [%jnext, %depth_done]", "  %jv = udiv i64 %j, 16"]
    out += [f"  store <16 x float> zeroinitializer, <16 x float>* %acc{r}_{v}"
            for r, v in tiles]
    out += ["  br label %depth", "depth:",
            "  %p = phi i64 [0, %cols], [%pnext, %depth]",
            "  %brow = mul i64 %p, %nvec", "  %bbase = add i64 %brow, %jv"]
    for v in range(PANEL_VECTORS):
        out += [f"  %bi{v} = add i64 %bbase, {v}",
                f"  %bp{v} = getelementptr <32 x bfloat>, <32 x bfloat>* %Bp, i64 %bi{v}",
                f"  %b{v} = load <32 x bfloat>, <32 x bfloat>* %bp{v}, align 2"]
    for r in range(PANEL_ROWS):
        out += [f"  %row{r} = add i64 %i, {r}", f"  %ao{r} = mul i64 %row{r}, %K2",
                f"  %ai{r} = add i64 %ao{r}, %p",
                f"  %ap{r} = getelementptr i32, i32* %A, i64 %ai{r}",
                f"  %as{r} = load i32, i32* %ap{r}",
                f"  %ains{r} = insertelement <16 x i32> undef, i32 %as{r}, i32 0",
                f"  %abc{r} = shufflevector <16 x i32> %ains{r}, <16 x i32> undef, "
                "<16 x i32> zeroinitializer",
                f"  %av{r} = bitcast <16 x i32> %abc{r} to <32 x bfloat>"]
        for v in range(PANEL_VECTORS):
            out += [f"  %c{r}_{v} = load <16 x float>, <16 x float>* %acc{r}_{v}",
                    f"  %d{r}_{v} = call <16 x float> {dp}(<16 x float> %c{r}_{v}, "
                    f"<32 x bfloat> %av{r}, <32 x bfloat> %b{v})",
                    f"  store <16 x float> %d{r}_{v}, <16 x float>* %acc{r}_{v}"]
    out += ["  %pnext = add i64 %p, 1", "  %pend = icmp eq i64 %pnext, %K2",
            "  br i1 %pend, label %depth_done, label %depth", "depth_done:"]
    for r, v in tiles:
        t = f"{r}_{v}"
        out += [f"  %s{t} = load <16 x float>, <16 x float>* %acc{t}",
                f"  %cr{t} = add i64 %i, {r}", f"  %co{t} = mul i64 %cr{t}, %N",
                f"  %cj{t} = add i64 %j, {16 * v}", f"  %cx{t} = add i64 %co{t}, %cj{t}",
                f"  %cp{t} = getelementptr float, float* %C, i64 %cx{t}",
                f"  %cv{t} = bitcast float* %cp{t} to <16 x float>*",
                f"  store <16 x float> %s{t}, <16 x float>* %cv{t}, align 4"]
    out += [f"  %jnext = add i64 %j, {16 * PANEL_VECTORS}", "  %jend = icmp uge i64 %jnext, %N",
            "  br i1 %jend, label %cols_done, label %cols", "cols_done:",
            f"  %inext = add i64 %i, {PANEL_ROWS}", "  %iend = icmp uge i64 %inext, %M",
            "  br i1 %iend, label %exit, label %rows", "exit:", "  ret void", "}"]
    return "\n".join(out)


def bf16_panel():
    """The compiled prototype (a ctypes function) and its execution engine, or None where
    this CPU has no AVX512-BF16."""
    import llvmlite.binding as llvm
    features = llvm.get_host_cpu_features()
    if not features.get("avx512bf16", False):
        return None
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    module = llvm.parse_assembly(_panel_ir())
    module.verify()
    machine = llvm.Target.from_default_triple().create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=features.flatten(), opt=3)
    passes = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(3))
    passes.getModulePassManager().run(module, passes)
    engine = llvm.create_mcjit_compiler(module, machine)
    engine.finalize_object()
    fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 3, *[ctypes.c_int64] * 3)(
        engine.get_function_address("bf16_nn"))
    return fn, engine


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

    @njit(cache=True)
    def to_bf16(a, out):                 # round to nearest even, as the hardware does
        u, o = a.reshape(-1).view(np.uint32), out.reshape(-1)
        for i in range(u.size):
            x = u[i]
            o[i] = np.uint16((x + np.uint32(0x7FFF) + ((x >> np.uint32(16)) & np.uint32(1)))
                             >> np.uint32(16))

    @njit(cache=True)
    def pack_pairs(b, transposed, out):   # out (K/2, N, 2): b's pairs along the depth
        K2, N = out.shape[0], out.shape[1]
        u = b.view(np.uint32)
        for p in range(K2):
            for j in range(N):
                for h in range(2):
                    x = u[j, 2 * p + h] if transposed else u[2 * p + h, j]
                    out[p, j, h] = np.uint16((x + np.uint32(0x7FFF) + (
                        (x >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))

    return openblas, to_bf16, pack_pairs


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


def time_products(products, mkl, torch, panel, rounds):
    """{label: {library: seconds}} for each product."""
    openblas, to_bf16, pack_pairs = _kernels()
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
            Ab, Bb = np.empty(A.shape, np.uint16), np.empty(B.shape, np.uint16)
            t["mkl f32"] = _best(lambda: mkl.cblas_sgemm(
                ROW_MAJOR, ta, tb, M, N, K, 1.0, A.ctypes.data, lda, B.ctypes.data, ldb,
                0.0, C.ctypes.data, N), reps, rounds)

            def bf16():
                to_bf16(A, Ab)
                to_bf16(B, Bb)
                mkl.cblas_gemm_bf16bf16f32(ROW_MAJOR, ta, tb, M, N, K, 1.0, Ab.ctypes.data,
                                           lda, Bb.ctypes.data, ldb, 0.0, C.ctypes.data, N)
            t["mkl bf16"] = _best(bf16, reps, rounds)
        if torch is not None:
            a, b = torch.from_numpy(A), torch.from_numpy(B)
            a, b = (a.T if kind == 1 else a), (b.T if kind == 2 else b)
            a16, b16 = a.bfloat16(), b.bfloat16()
            t["onednn bf16"] = _best(lambda: torch.mm(a16, b16), reps, rounds)
        whole_tiles = (M % PANEL_ROWS == 0 and N % (16 * PANEL_VECTORS) == 0 and K % 2 == 0)
        if panel is not None and whole_tiles:
            # every product as the panel's nn: A^T dZ reads A (K, M) as its left operand
            # (rounded and transposed: pairs along the batch), dZ W^T packs W's rows
            left = np.ascontiguousarray(A.T) if kind == 1 else A
            Al = np.empty((M, K), np.uint16)
            Bp = np.empty((K // 2, N, 2), np.uint16)

            def llvm_bf16():
                to_bf16(left, Al)
                pack_pairs(B, kind == 2, Bp)
                panel(Al.ctypes.data, Bp.ctypes.data, C.ctypes.data, M, K // 2, N)
            t["llvm bf16"] = _best(llvm_bf16, reps, rounds)
            t["llvm bf16 panel"] = _best(lambda: panel(
                Al.ctypes.data, Bp.ctypes.data, C.ctypes.data, M, K // 2, N), reps, rounds)
            exact = (Al.astype(np.uint32) << 16).view(np.float32).astype(np.float64) @ (
                (Bp.astype(np.uint32) << 16).view(np.float32).transpose(0, 2, 1)
                .reshape(K, N).astype(np.float64))
            assert np.abs(C - exact).max() <= 1e-5 * np.abs(exact).max(), label
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
    compiled = bf16_panel()
    panel = compiled[0] if compiled else None
    print(f"AVX512-BF16: {'yes' if panel else 'no'}; MKL: {'found' if mkl is not None else 'not found (pip install mkl)'}; "
          f"PyTorch: {torch.__version__ if torch is not None else 'not installed'}")
    from fastbp.kernels import choose_strategy
    for name in args.workloads:
        layers, batch, loss = WORKLOADS[name]
        plan = choose_strategy(layers, batch, os.cpu_count())
        rows = batch if plan == "serial" else -(-batch // os.cpu_count())
        print(f"\n{name} {'-'.join(map(str, layers))}, batch {batch}: one chunk's "
              f"products ({rows} rows), one thread")
        chunk = time_products(step_products(layers, rows), mkl, torch, panel, args.rounds)
        libs = list(dict.fromkeys(lib for t in chunk.values() for lib in t))
        total = {lib: sum(t.get(lib, t["openblas f32"]) for t in chunk.values())
                 for lib in libs}
        print("  products of a chunk, speed-up over openblas f32: " + ", ".join(
            f"{lib} {total['openblas f32'] / total[lib]:.2f}x" for lib in libs[1:]))
        # the share of a whole serial step in products, for the bound
        print(f"  whole-batch products ({batch} rows), one thread:")
        whole = time_products(step_products(layers, batch), None, None, None, args.rounds)
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
