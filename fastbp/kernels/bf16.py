"""bfloat16 products with float32 sums, for Trainer(precision="bf16").

A product C (M, N) = A (M, K) @ B (K, N) in float32 is computed from A and B rounded to
bfloat16 (float32's sign, exponent and top 7 mantissa bits, rounded to nearest even), with
the products summed in float32: on a CPU with AVX512-BF16 one VDPBF16PS instruction
multiplies 16 pairs of bf16 values and adds them to 16 float32 sums, twice the float32
FMA's work per instruction. The parameters, the optimizer state and every other operation
stay float32.

The panel that does it is LLVM IR (`panel_ir`), compiled by llvmlite and reached by symbol
(PANEL_SYMBOL) from gemm.py's bf16 entry points, like those entry points themselves:
8 rows x 32 columns of float32 accumulators in 16 vector registers; each step of the depth
broadcasts a row's pair of A values (adjacent in a row-major bf16 A) and loads the pairs of
B's columns, packed (K/2, N, 2) so that each column's two values of a depth pair sit side by
side. It needs whole tiles: the entry points round and pack into buffers padded with zeros
to a multiple of 8 rows, 32 columns and an even depth (`rounded_rows`, `packed_pairs`). A
second build (`panel_t`) stores its output transposed, for gemm's nt product. `llvmlite.ir`
has no bfloat type, hence IR text; the same goes for `trampolines`, the stand-ins float32
kernels link against until a bf16 model needs the real entry points (gemm.enable_bf16).

Where the CPU has no AVX512-BF16 the same symbol is an emulation (`_emulated_panel`): the
same rounded operands and float32 sums, scalar, so precision="bf16" trains alike everywhere
(only slower than float32 there; the Trainer warns).
"""
import ctypes
import warnings

import llvmlite.binding as llvm_binding
import numpy as np
from llvmlite import ir
from numba import carray, types
from numba.core import cgutils
from numba.core.compiler_lock import global_compiler_lock
from numba.core.errors import TypingError
from numba.core.extending import intrinsic

from .codes import FASTMATH, host_has_avx512_bf16, jit
from .prebuilt import cfunc

PANEL_ROWS = 8                 # rows of a tile: 8 x 2 accumulators, 2 loads, 1 broadcast
PANEL_VECTORS = 2              # vectors of 16 float32 columns
TILE_COLS = 16 * PANEL_VECTORS
PANEL_SYMBOL = "fastbp_bf16_panel"
PANEL_T_SYMBOL = "fastbp_bf16_panel_t"        # the same, its output stored transposed


def panel_ir(name=PANEL_SYMBOL, transposed=False, declare=True):
    """LLVM IR of name(A, Bp, C, M, K2, N, sai, sap): C (M, N) float32 = A (M, 2 K2) @
    B (2 K2, N) for bf16 A whose pair (a[i, 2p], a[i, 2p + 1]) is the i32 at A[i sai + p sap]
    (a row-major A: sai = K2, sap = 1; A packed in pairs as packed_pairs makes B: sai = 1,
    sap = its padded width) and Bp (K2, N, 2) bf16; M a multiple of PANEL_ROWS, N of
    TILE_COLS, K2 >= 1. The accumulators are allocas that LLVM's O3 keeps in registers.
    transposed: C is stored transposed, (N, M), element (i, j) at C[j M + i]: once per tile,
    after its whole depth, each of its 32 columns as one vector of PANEL_ROWS floats."""
    dp = "@llvm.x86.avx512bf16.dpbf16ps.512"
    out = [f"declare <16 x float> {dp}(<16 x float>, <32 x bfloat>, <32 x bfloat>)"] * declare
    out += [f"define void @{name}(i32* noalias %A, <32 x bfloat>* noalias %Bp, "
           "float* noalias %C, i64 %M, i64 %K2, i64 %N, i64 %sai, i64 %sap) {", "entry:"]
    tiles = [(r, v) for r in range(PANEL_ROWS) for v in range(PANEL_VECTORS)]
    out += [f"  %acc{r}_{v} = alloca <16 x float>" for r, v in tiles]
    out += ["  %nvec = udiv i64 %N, 16", "  br label %rows", "rows:",
            "  %i = phi i64 [0, %entry], [%inext, %cols_done]", "  br label %cols", "cols:",
            "  %j = phi i64 [0, %rows], [%jnext, %depth_done]", "  %jv = udiv i64 %j, 16"]
    out += [f"  store <16 x float> zeroinitializer, <16 x float>* %acc{r}_{v}"
            for r, v in tiles]
    out += ["  br label %depth", "depth:",
            "  %p = phi i64 [0, %cols], [%pnext, %depth]",
            "  %brow = mul i64 %p, %nvec", "  %bbase = add i64 %brow, %jv",
            "  %pa = mul i64 %p, %sap"]
    for v in range(PANEL_VECTORS):
        out += [f"  %bi{v} = add i64 %bbase, {v}",
                f"  %bp{v} = getelementptr <32 x bfloat>, <32 x bfloat>* %Bp, i64 %bi{v}",
                f"  %b{v} = load <32 x bfloat>, <32 x bfloat>* %bp{v}, align 2"]
    for r in range(PANEL_ROWS):
        out += [f"  %row{r} = add i64 %i, {r}", f"  %ao{r} = mul i64 %row{r}, %sai",
                f"  %ai{r} = add i64 %ao{r}, %pa",
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
        out += [f"  %s{t} = load <16 x float>, <16 x float>* %acc{t}"]
        if not transposed:
            out += [f"  %cr{t} = add i64 %i, {r}", f"  %cj{t} = add i64 %j, {16 * v}",
                    f"  %co{t} = mul i64 %cr{t}, %N", f"  %cx{t} = add i64 %co{t}, %cj{t}",
                    f"  %cp{t} = getelementptr float, float* %C, i64 %cx{t}",
                    f"  %cv{t} = bitcast float* %cp{t} to <16 x float>*",
                    f"  store <16 x float> %s{t}, <16 x float>* %cv{t}, align 4"]
    if transposed:
        # column j + 16 v + lane of the tile is PANEL_ROWS consecutive floats of C's row
        # j + 16 v + lane: gathered from the accumulators' lanes, stored as one vector
        R = PANEL_ROWS
        for v in range(PANEL_VECTORS):
            for lane in range(16):
                e = f"{v}_{lane}"
                prev = "undef"
                for r in range(R):
                    out += [f"  %x{e}_{r} = extractelement <16 x float> %s{r}_{v}, i32 {lane}",
                            f"  %w{e}_{r} = insertelement <{R} x float> {prev}, "
                            f"float %x{e}_{r}, i32 {r}"]
                    prev = f"%w{e}_{r}"
                out += [f"  %tj{e} = add i64 %j, {16 * v + lane}",
                        f"  %to{e} = mul i64 %tj{e}, %M", f"  %tx{e} = add i64 %to{e}, %i",
                        f"  %tp{e} = getelementptr float, float* %C, i64 %tx{e}",
                        f"  %tv{e} = bitcast float* %tp{e} to <{R} x float>*",
                        f"  store <{R} x float> {prev}, <{R} x float>* %tv{e}, align 4"]
    out += [f"  %jnext = add i64 %j, {TILE_COLS}", "  %jend = icmp uge i64 %jnext, %N",
            "  br i1 %jend, label %cols_done, label %cols", "cols_done:",
            f"  %inext = add i64 %i, {PANEL_ROWS}", "  %iend = icmp uge i64 %inext, %M",
            "  br i1 %iend, label %exit, label %rows", "exit:", "  ret void", "}"]
    return "\n".join(out)


def panel_module():
    """LLVM IR of both panels (PANEL_SYMBOL, PANEL_T_SYMBOL)."""
    return panel_ir() + "\n" + panel_ir(PANEL_T_SYMBOL, transposed=True, declare=False)


def compile_native_panels():
    """({symbol: address}, execution engine) of both panels compiled for this CPU
    (AVX512-BF16); the engine owns the code and must be kept."""
    engine = _jit_module(panel_module())
    return {name: engine.get_function_address(name)
            for name in (PANEL_SYMBOL, PANEL_T_SYMBOL)}, engine


@jit
def _emulated_product(a, bp, M, K2, N, sai, sap):
    """The panels' sums without the instruction: each pair of bf16 products (exact in
    float32) added to a float32 sum. -> C (M, N)."""
    n_pairs = (M - 1) * sai + (K2 - 1) * sap + 1
    A = widened(carray(a, (2 * n_pairs,)))
    Bp = widened(carray(bp, (K2, N, 2)))
    C = np.zeros((M, N), dtype=np.float32)
    for i in range(M):
        for p in range(K2):
            at = 2 * (i * sai + p * sap)
            a0, a1 = A[at], A[at + 1]
            for j in range(N):
                C[i, j] += a0 * Bp[p, j, 0] + a1 * Bp[p, j, 1]
    return C


def _emulated_panel(a, bp, c, M, K2, N, sai, sap):
    carray(c, (M, N))[:, :] = _emulated_product(a, bp, M, K2, N, sai, sap)


def _emulated_panel_t(a, bp, c, M, K2, N, sai, sap):
    carray(c, (N, M))[:, :] = _emulated_product(a, bp, M, K2, N, sai, sap).T


_owners = {}                   # what owns the code of the registered panel and stand-ins


def panel_kind():
    """Which panel bf16 products run on in this process: "amx", "avx512-bf16", "emulated",
    or "amx-emulated" (FASTBP_AMX=emulate); None before a bf16 model first trained."""
    return _owners.get("kind")


def register_panel():
    """Make the panels' symbols known to the JIT's linker (before gemm's bf16 entry points
    are compiled or loaded): AMX tiles' panels where the process may use them (amx.py;
    if they fail to compile, with a warning, the next choice), else the VDPBF16PS panels
    on a CPU with AVX512-BF16, else the emulation. Also the reload hook of the callers
    Numba loads from its cache."""
    if "panel" in _owners:
        return
    with global_compiler_lock:          # as gemm.register: runs inside compilations
        if "panel" in _owners:
            return
        from . import amx                    # only where a bf16 model trains
        amx_mode, owner = amx.mode(), None   # decided once per process
        if amx_mode is not None:
            try:
                owner = amx.panels(emulate=amx_mode == "emulate")
            except Exception as error:        # a Numba or LLVM that cannot build it
                warnings.warn(f"the AMX panel could not be compiled ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}); bf16 "
                              "products run without the tiles", RuntimeWarning)
        if owner is not None:
            addresses = dict(zip((PANEL_SYMBOL, PANEL_T_SYMBOL), (f.address for f in owner)))
            _owners["kind"] = "amx-emulated" if amx_mode == "emulate" else "amx"
        elif host_has_avx512_bf16():
            addresses, owner = compile_native_panels()
            _owners["kind"] = "avx512-bf16"
        else:
            u16p = types.CPointer(types.uint16)
            sig = types.void(u16p, u16p, types.CPointer(types.float32), *[types.intp] * 5)
            owner = [cfunc(sig, fastmath=FASTMATH, error_model="numpy")(body)
                     for body in (_emulated_panel, _emulated_panel_t)]
            addresses = dict(zip((PANEL_SYMBOL, PANEL_T_SYMBOL), (f.address for f in owner)))
            _owners["kind"] = "emulated"
        for name, address in addresses.items():
            llvm_binding.add_symbol(name, address)
        _owners["panel"] = owner


def _jit_module(text):
    """(MCJIT engine, which owns the code) of LLVM IR text, compiled for this CPU at O3."""
    llvm_binding.initialize_native_target()
    llvm_binding.initialize_native_asmprinter()
    module = llvm_binding.parse_assembly(text)
    module.verify()
    machine = llvm_binding.Target.from_default_triple().create_target_machine(
        cpu=llvm_binding.get_host_cpu_name(),
        features=llvm_binding.get_host_cpu_features().flatten(), opt=3)
    passes = llvm_binding.create_pass_builder(
        machine, llvm_binding.create_pipeline_tuning_options(3))
    passes.getModulePassManager().run(module, passes)
    engine = llvm_binding.create_mcjit_compiler(module, machine)
    engine.finalize_object()
    return engine


def trampolines(names):
    """{name: (address, pointer)}: for each name a C function of the entry points' signature
    (4 pointers, 3 int64) that calls whatever function `pointer` (a ctypes.c_void_p living
    in the compiled module) holds: the symbols float32 kernels link against for the bf16
    products, pointed at the real ones only once a bf16 model needs them (gemm.py)."""
    fn = "void (i8*, i8*, i8*, i8*, i64, i64, i64)"
    args = "i8* %c, i8* %a, i8* %b, i8* %d, i64 %m, i64 %k, i64 %n"
    text = []
    for name in names:
        text += [f"@{name}_target = global {fn}* null",
                 f"define void @{name}({args}) {{",
                 f"  %f = load {fn}*, {fn}** @{name}_target",
                 f"  tail call void %f({args})", "  ret void", "}"]
    engine = _jit_module("\n".join(text))
    _owners.setdefault("trampolines", []).append(engine)
    return {name: (engine.get_function_address(name), ctypes.c_void_p.from_address(
        engine.get_global_value_address(f"{name}_target"))) for name in names}


# ------------------------------------------------------------------ rounding and packing

@jit
def bf16_bits(u):
    """The bf16 bits (uint16) of the float32 whose bits are u (uint32), rounded to nearest
    even; a NaN stays a NaN (the rounding could carry it into the sign bit)."""
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16((u >> np.uint32(16)) | np.uint32(0x40))
    return np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
                     >> np.uint32(16))


@jit
def widened(H):
    """float32 copy of the bf16 bits H (uint16, C-contiguous)."""
    U = np.empty(H.shape, dtype=np.uint32)
    u, h = U.reshape(-1), H.reshape(-1)
    for i in range(h.shape[0]):
        u[i] = np.uint32(h[i]) << np.uint32(16)
    return U.view(np.float32)


BLOCK = 16    # rows read side by side when transposing: 16 sequential streams, 64-byte writes


@jit
def rounded_rows(A, multiple=PANEL_ROWS):
    """A (M, K) rounded to bf16, padded with zeros to (M', K'): M' a multiple of `multiple`,
    K' even. Its rows' pairs along the depth are the panel's i32 (sai = K'/2, sap = 1)."""
    M, K = A.shape
    out = np.empty((-(-M // multiple) * multiple, K + K % 2), dtype=np.uint16)
    U = A.view(np.uint32)
    for i in range(M):
        row, u = out[i], U[i]
        for p in range(K):
            row[p] = bf16_bits(u[p])
        for p in range(K, out.shape[1]):
            row[p] = 0
    for i in range(M, out.shape[0]):
        for p in range(out.shape[1]):
            out[i, p] = 0
    return out


@jit
def packed_pairs(B, transposed, multiple):
    """An operand rounded to bf16 and packed in pairs along the depth: (K'/2, N', 2) with K'
    even and N' a multiple of `multiple` (TILE_COLS for the panel's right operand,
    PANEL_ROWS for a left one read with strides), zero padded; [p, j, h] holds B[2p + h, j]
    for B (K, N), or B[j, 2p + h] for B (N, K) given transposed (the product takes B^T).
    Each pair is written as one uint32, its first value in the low half (little-endian)."""
    K, N = (B.shape[1], B.shape[0]) if transposed else (B.shape[0], B.shape[1])
    K2, N_ = (K + 1) // 2, -(-N // multiple) * multiple
    out = np.empty((K2, N_, 2), dtype=np.uint16)
    pairs = out.reshape(K2, 2 * N_).view(np.uint32)          # (K2, N_)
    U = B.view(np.uint32)
    even = K // 2                            # pairs with both values (an odd K's last: one)
    sixteen = np.uint32(16)
    if transposed:
        for j0 in range(0, N, BLOCK):
            j1 = min(j0 + BLOCK, N)
            for p in range(even):
                for j in range(j0, j1):
                    pairs[p, j] = (np.uint32(bf16_bits(U[j, 2 * p]))
                                   | (np.uint32(bf16_bits(U[j, 2 * p + 1])) << sixteen))
        if K % 2:
            for j in range(N):
                pairs[even, j] = np.uint32(bf16_bits(U[j, K - 1]))
    else:
        for p in range(even):
            lo, hi, row = U[2 * p], U[2 * p + 1], pairs[p]
            for j in range(N):
                row[j] = (np.uint32(bf16_bits(lo[j]))
                          | (np.uint32(bf16_bits(hi[j])) << sixteen))
        if K % 2:
            last = U[K - 1]
            for j in range(N):
                pairs[even, j] = np.uint32(bf16_bits(last[j]))
    for p in range(K2):                     # the zero padding
        for j in range(N, N_):
            pairs[p, j] = 0
    return out


# ------------------------------------------------------------------ weight copies

# A bf16 model's training epoch keeps W_l in bf16 beside the float32 parameters, in the two
# layouts its products read (args.Workspace.packed, offsets in pack_off): for A W (nn) W's
# pairs along its rows, packed_pairs(W, False, TILE_COLS); for dZ W^T (nt) W's rows
# rounded, rounded_rows(W). The epoch writes them from the parameters when it starts and
# again where each update block changes W (cpu.block_pass: a bf16 model's blocks hold whole
# pairs of W's rows, so the thread that updated them writes their pairs whole, while they
# are in its cache), so each step's products read W rounded once, not rounded and packed
# again by every chunk's every product.
# Padding (to whole tiles) is zero from the allocation on and never written.

@jit
def nn_copy_cols(N):
    """Columns of the nn copy of a W with N columns: whole tiles."""
    return -(-N // TILE_COLS) * TILE_COLS


@jit
def nt_copy_rows(K):
    """Rows of the nt copy of a W with K rows (rounded_rows' padding)."""
    return -(-K // PANEL_ROWS) * PANEL_ROWS


def nn_copy_size(K, N):
    """bf16 values of W (K, N)'s nn copy: (K'/2, N', 2)."""
    return (K + 1) // 2 * 2 * (-(-N // TILE_COLS) * TILE_COLS)


def nt_copy_size(K, N):
    """bf16 values of W (K, N)'s nt copy: (K', N + N % 2), K' whole PANEL_ROWS."""
    return -(-K // PANEL_ROWS) * PANEL_ROWS * (N + N % 2)


@jit
def copy_rows(packed, nn_off, nt_off, W, k0, k1, N):
    """Rows k0:k1 of W (K, N), given flat (row-major), into its bf16 copies in `packed`: the
    nn copy at nn_off and the nt copy at nt_off (each -1: none). k0 is even, and k1 even
    or K: the nn copy holds rows in pairs (an update block's rows: Layout.blocks with
    row_pairs), and its pairs are written as packed_pairs writes them."""
    K = W.shape[0] // N
    U = W.view(np.uint32)
    sixteen = np.uint32(16)
    if nn_off >= 0:
        width = nn_copy_cols(N)
        pairs = packed[nn_off:nn_off + (K + 1) // 2 * 2 * width].view(np.uint32)
        for p in range(k0 // 2, (k1 + 1) // 2):
            lo, row = U[2 * p * N:(2 * p + 1) * N], pairs[p * width:(p + 1) * width]
            if 2 * p + 1 < K:
                hi = U[(2 * p + 1) * N:(2 * p + 2) * N]
                for j in range(N):
                    row[j] = (np.uint32(bf16_bits(lo[j]))
                              | (np.uint32(bf16_bits(hi[j])) << sixteen))
            else:                   # an odd K's last row: its pair's other value is zero
                for j in range(N):
                    row[j] = np.uint32(bf16_bits(lo[j]))
    if nt_off >= 0:
        width = N + N % 2
        for k in range(k0, k1):
            src, row = U[k * N:(k + 1) * N], packed[nt_off + k * width:nt_off + k * width + N]
            for j in range(N):
                row[j] = bf16_bits(src[j])


def _panel_call(symbol):
    def typer(typingctx, A, sai, sap, M, Bp, C):
        # the panel reads and writes raw memory: only the buffers rounded_rows and
        # packed_pairs make, and a C-contiguous float32 output (shapes: the callers')
        for name, arr, dtype, ndim in (("A", A, types.uint16, None), ("Bp", Bp, types.uint16, 3),
                                       ("C", C, types.float32, 2)):
            if (not isinstance(arr, types.Array) or arr.dtype != dtype or arr.layout != "C"
                    or (ndim is not None and arr.ndim != ndim)):
                raise TypingError(f"bf16 panel: {name} must be a C-contiguous {dtype} "
                                  f"array{f' of {ndim} dimensions' if ndim else ''}, not {arr}")

        def codegen(context, builder, sig, args):
            a, sai_, sap_, m, bp, c = args
            arrays = [cgutils.create_struct_proxy(t)(context, builder, value=v)
                      for t, v in ((sig.args[0], a), (sig.args[4], bp), (sig.args[5], c))]
            i8p, i64 = ir.IntType(8).as_pointer(), ir.IntType(64)
            data = [builder.bitcast(x.data, i8p) for x in arrays]
            K2, N = cgutils.unpack_tuple(builder, arrays[1].shape, 3)[:2]
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p] * 3 + [i64] * 5), symbol)
            builder.call(fn, data + [m, K2, N, sai_, sap_])
            context.active_code_library._reload_init.add(register_panel)
            return context.get_dummy_value()

        return types.void(A, types.intp, types.intp, types.intp, Bp, C), codegen
    return intrinsic(typer)


# callable from compiled code only:
# panel(A, sai, sap, M, Bp, C): C (M, N') float32 = A @ B for the panel's padded operands:
# A the left one's pairs (rounded_rows: sai = K'/2, sap = 1; packed_pairs: sai = 1, sap = its
# width), M its rows (a multiple of PANEL_ROWS), Bp (K'/2, N', 2) from packed_pairs
panel = _panel_call(PANEL_SYMBOL)
# panel_t(...): the same product stored transposed into C (N', M)
panel_t = _panel_call(PANEL_T_SYMBOL)
