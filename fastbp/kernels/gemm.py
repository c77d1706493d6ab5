"""Matrix products of small layers as register-blocked SIMD loops, without BLAS.

For the products of small layers (the tiny, regression and deep workloads: a few thousand
to half a million multiply-adds; up to 4 million with AVX2, and with AVX-512 up to mnist's
12.8 million), OpenBLAS spends
about as long copying ("packing") its operands as multiplying them: at 32 x 64 x 64 in
float32 it ran at 35-50 GFLOP/s on a 2-core AMD EPYC (AVX2) whose core peaks near 120.
These loops skip the packing and run 1.5-3x faster there (`python benchmarks/compare.py
--products` times each product of every workload both ways). Larger products, where BLAS's
packing keeps its operands in cache, and single-column ones (matrix-vector products) still
go to BLAS: the entry points choose by size (`small`, `nt_by_transpose`, `small_nt`), so
the choice is fixed for given shapes.

A product is computed in panels of MR rows of the output (then 4, 2 and 1 for the rest)
across its width: for each tile of NV vectors of columns, MR x NV accumulators stay in vector
registers while the depth loop adds a(i, p) * b(p, j0 : j0 + NV lanes), a(i, p) broadcast
and b's row loaded as vectors; the last, partial tile masks its last vector. With AVX2,
MR = 6, NV = 2: 12 accumulators, 2 loads and a broadcast, 15 of its 16 vector registers;
with AVX-512, MR = 8, NV = 3: 24 accumulators and 4 more of its 32 (`block`). The loops
are LLVM vector IR written in Numba intrinsics (`panel_intrinsic`): Numba's own loops of
the same maths were slower than BLAS (LLVM kept the accumulators in memory). Two products
fit this panel, the left operand read through strides and the rows of the right operand and
of the output contiguous:
  nn: C (M, N) = A (M, K) B (K, N) + bias, a(i, p) = A[i, p]: the forward product;
  tn: C (M, N) = A^T B for A (K, M),       a(i, p) = A[p, i]: the weight gradient.
The input gradient dZ W^T has neither operand contiguous along the output's rows:
  nt: C (M, N) = A B^T for B (N, K)
transposes B into a scratch (K, N) (`transpose_into`: blocks of a vector's lanes square,
swapped in registers by `transpose_block_intrinsic`) and runs nn's panels over it, as
nn's rule says (`nt_by_transpose`). Float64 products with at least 4 vectors of depth
instead run as dot products along both operands' rows (`dot_panel_intrinsic`, 3 x 3 at a
time), each ended by a horizontal sum (`small_nt`).

All arrays are C-contiguous 2-D (the kernels' views of their flat buffers). The sums run in
another order than BLAS's: results agree with it to rounding.
"""
import llvmlite.binding as llvm_binding
import numpy as np
from llvmlite import ir
from numba import carray
from numba.core import cgutils, types
from numba.core.compiler_lock import global_compiler_lock
from numba.core.errors import TypingError
from numba.core.extending import intrinsic

from . import bf16
from .codes import FASTMATH, host_has_avx512, jit
from .prebuilt import cfunc


# The width the LLVM vectors are built for: 32 bytes (AVX2: 8 float32 lanes) or 64 (AVX-512).
VECTOR_BYTES = 64 if host_has_avx512() else 32


def block(vector_bytes):
    """The register block (MR rows, NV vectors of columns) of the panels at a vector width.
    AVX-512's 32 registers hold 8 x 3 accumulators: an Intel core issuing two 512-bit FMAs a
    cycle needs more of them, and fewer loads of B per multiply-add, than 6 x 2 gives; the
    Zen 4 (one a cycle) runs both blocks at its FMA rate (measured: the comment at
    _panel_main). AVX2's 16 registers hold 6 x 2."""
    return (8, 3) if vector_bytes == 64 else (6, 2)


MR, NV = block(VECTOR_BYTES)

# Products of at most this many multiply-adds (rows x depth x columns) run as nt's dot
# products (small_nt) rather than through BLAS, and bf16_product takes the larger ones on
# every host. It was the AVX2 rule of nn and tn too, set on a 2-core AMD EPYC (AVX2,
# 2026-11-26) against BLAS on both cores, where the kernels run it on one.
SMALL_MACS = 1 << 19
# nn and tn on AVX2, measured again with BLAS on one thread (2026-11-27, fifth session,
# `compare.py --products` on a Zen 4 compiling for x86-64-v3, NUMBA_CPU_NAME=x86-64-v3
# NUMBA_CPU_FEATURES="", with OpenBLAS's AVX2 kernels, OPENBLAS_CORETYPE=Haswell: no AVX2
# machine was at hand): the loops took 0.45-0.94 of BLAS's time from 524k to 2.1M
# multiply-adds (digits' float64 100 x 64 x 100: 0.82-0.83; mnist's 64 x 256 x 128: 0.72
# in float32, 0.94 in float64; wide's 128 x 1024 x 10: 0.90-0.92), and at 12.8M (mnist's
# 64 x 784 x 256) 0.91 in float32 but 1.38 in float64. At 4.2M (64 x 256 x 256, 128 x 256 x
# 128, 100 x 200 x 200, 64 x 512 x 128, 128 x 128 x 256) float32 took 0.70-0.87, float64
# 0.94-1.16: float64 stops at 2^21.
SMALL_MACS_AVX2 = 1 << 22
SMALL_MACS_AVX2_FLOAT64 = 1 << 21
# With AVX-512 (a 2-core Zen 4 EPYC, 2026-11-27, BLAS on one thread as the kernels run
# it) the nn and tn loops took 0.74-0.91 of OpenBLAS's time on mnist's hidden products
# (up to 64 x 784 x 256, 12.8M, in float32 and float64; nt takes the same rule through
# nt_by_transpose) and 0.63 on wide's 128 x 1024 x 10, 1.05-1.13x on wide's products
# of 100M and more; and 1.34-1.48x on float64 outputs narrower than two vectors (digits'
# and mnist's 10 classes), which go to BLAS. Each panel of rows streams the whole right
# operand (K x N): at 2^24 the float32 loops still took 0.64-0.88 of BLAS's time with 1-8
# MB of it, but the float64 ones 1.11x at 2 MiB, 1.17x at 8 MiB and 2.28x at 16 MiB
# (mnist's 1.6 MB: 0.91), so float64 keeps it under 2 MiB.
SMALL_MACS_AVX512 = 1 << 24
FLOAT64_RIGHT_BYTES_AVX512 = 1 << 21
_LOOP_MACS = SMALL_MACS_AVX512 if VECTOR_BYTES == 64 else SMALL_MACS_AVX2


@jit
def small(M, K, N, itemsize):
    """Whether an (M, K) x (K, N) product of `itemsize`-byte floats runs here (nn, tn)
    rather than through BLAS: small, and more than one column (a single one is a
    matrix-vector product, which BLAS does without packing; a tile here would compute a
    whole vector of columns for it)."""
    if N <= 1 or M * K * N > _LOOP_MACS:
        return False
    if VECTOR_BYTES == 64 and itemsize == 8:
        return N * itemsize >= 2 * VECTOR_BYTES and K * N * itemsize < FLOAT64_RIGHT_BYTES_AVX512
    if itemsize == 8:
        return M * K * N <= SMALL_MACS_AVX2_FLOAT64
    return True


@jit
def small_nt(M, K, N, itemsize):
    """Whether the (M, K) x (K, N) product A B^T runs here (nt): small, and its dot products
    at least 4 vectors long (the horizontal sum that ends each one costs about as much as
    4 vectors of it)."""
    return M * K * N <= SMALL_MACS and K * itemsize >= 4 * VECTOR_BYTES


# The largest B (N x K elements) of nt that is transposed: the caller's scratch (T: the
# kernels' workspace, layout.workspace) holds that many and N more (a zero bias) (128 KB of
# float32: mnist's 128 x 256; wide's 1024 x 1024 goes to BLAS anyway).
TRANSPOSE_MAX = 1 << 15


@jit
def nt_by_transpose(M, K, N, itemsize):
    """Whether the (M, K) x (K, N) product A B^T runs as nn's panels over B transposed into
    the caller's scratch (transpose_into): wherever nn's rule (small) takes the same
    product and B has at most TRANSPOSE_MAX elements, but for float64 dot products of at
    least 4 vectors (small_nt), which kept up with it. Measured on a 2-core Zen 4
    (2026-11-27, `compare.py --products`): the transposition costs 0.1-0.3 us at 64 x 64
    and nn's panels have no horizontal sums, so float32's 32 x 64 x 64 took 2.6 us against
    3.7-3.8 in dot products (deep's 32 x 128 x 128 10.6-11.5 against 12.7-12.9), and the
    short products behind an output layer, which went to BLAS (depth 10: digits' float64
    100 x 10 x 100, 4.1-4.2 against 5.8-5.9 us), took 0.56-0.83 of their BLAS time."""
    return (K * N <= TRANSPOSE_MAX and small(M, K, N, itemsize)
            and not (itemsize == 8 and small_nt(M, K, N, itemsize)))


class _Vectors:
    """LLVM vector IR for one dtype: loads and stores (whole or masked), broadcasts, fused
    multiply-adds and sums, at the vector width `vector_bytes`."""

    def __init__(self, context, builder, dtype, vector_bytes):
        self.builder = builder
        self.elt = context.get_value_type(dtype)
        self.itemsize = dtype.bitwidth // 8
        self.lanes = vector_bytes // self.itemsize
        self.vty = ir.VectorType(self.elt, self.lanes)
        self.vptr = self.vty.as_pointer()
        i32, i64 = ir.IntType(32), ir.IntType(64)
        mty = ir.VectorType(ir.IntType(1), self.lanes)
        suffix = f"v{self.lanes}f{dtype.bitwidth}"
        module = builder.module

        def declare(name, ret, *args):     # LLVM's intrinsics, named after their types
            return cgutils.get_or_insert_function(module, ir.FunctionType(ret, list(args)),
                                                  f"llvm.{name}")

        self._fma = declare(f"fma.{suffix}", self.vty, self.vty, self.vty, self.vty)
        self._mload = declare(f"masked.load.{suffix}.p0", self.vty, self.vptr, i32, mty,
                              self.vty)
        self._mstore = declare(f"masked.store.{suffix}.p0", ir.VoidType(), self.vty, self.vptr,
                               i32, mty)
        self._reduce = declare(f"vector.reduce.fadd.{suffix}", self.elt, self.elt, self.vty)
        self._align = ir.Constant(i32, self.itemsize)
        self.zero = ir.Constant(self.vty, [ir.Constant(self.elt, 0.0)] * self.lanes)
        self._lane_ids = ir.Constant(ir.VectorType(i64, self.lanes), list(range(self.lanes)))
        self._splat = ir.Constant(ir.VectorType(i32, self.lanes), [0] * self.lanes)

    @staticmethod
    def const(value):
        return ir.Constant(ir.IntType(64), value)

    def _at(self, ptr, index):
        return self.builder.bitcast(self.builder.gep(ptr, [index]), self.vptr)

    def _spread(self, scalar, vty):
        b = self.builder
        lane0 = ir.Constant(ir.IntType(32), 0)
        v = b.insert_element(ir.Constant(vty, ir.Undefined), scalar, lane0)
        return b.shuffle_vector(v, ir.Constant(vty, ir.Undefined), self._splat)

    def first(self, n):
        """The mask of the lanes below n (i64; all for n >= lanes, none for n <= 0)."""
        n = self._spread(n, ir.VectorType(ir.IntType(64), self.lanes))
        return self.builder.icmp_signed("<", self._lane_ids, n)

    def load(self, ptr, index, mask=None):
        """The vector at ptr[index:] (its masked-off lanes 0)."""
        if mask is None:
            return self.builder.load(self._at(ptr, index), align=self.itemsize)
        return self.builder.call(self._mload, [self._at(ptr, index), self._align, mask,
                                               self.zero])

    def store(self, value, ptr, index, mask=None):
        if mask is None:
            self.builder.store(value, self._at(ptr, index), align=self.itemsize)
        else:
            self.builder.call(self._mstore, [value, self._at(ptr, index), self._align, mask])

    def broadcast(self, scalar):
        return self._spread(scalar, self.vty)

    def fma_into(self, acc, a, b):
        """*acc += a * b (acc: an alloca of a vector, kept in a register by LLVM)."""
        self.builder.store(self.builder.call(self._fma, [a, b, self.builder.load(acc)]), acc)

    def sum(self, vector):
        return self.builder.call(self._reduce, [ir.Constant(self.elt, 0.0), vector],
                                 fastmath=("reassoc",))


def _check_arrays(*arrays):
    """Typing: C (and A, B) 2-D, a bias 1-D, all C-contiguous, of one float dtype."""
    for i, arr in enumerate(arrays):
        if not isinstance(arr, types.Array) or arr.layout != "C" or \
                arr.ndim != (1 if i == 3 else 2):
            raise TypingError("gemm products need C-contiguous 2-D arrays (and a 1-D bias)")
    dtypes = {arr.dtype for arr in arrays}
    if len(dtypes) != 1 or arrays[0].dtype not in (types.float32, types.float64):
        raise TypingError("gemm products need arrays of one float dtype")


def _data(context, builder, sig, args, positions):
    """The data pointers of the array arguments at `positions`."""
    return [cgutils.create_struct_proxy(sig.args[i])(context, builder, value=args[i]).data
            for i in positions]


def panel_intrinsic(MR, vector_bytes=None, nv=None):
    """The intrinsic computing MR rows of C (see the module docstring):
    panel(A, a0, sai, sap, B, C, c0, K, N, bias, use_bias), for i < MR, j < N:
        C[c0 + i N + j] = (bias[j] if use_bias else 0) + sum_p<K A[a0 + i sai + p sap] B[p N + j]
    over flat element offsets of the arrays' data, in tiles of `nv` vectors of columns.
    `vector_bytes` defaults to the host's, `nv` to its block's."""
    vector_bytes = vector_bytes or VECTOR_BYTES
    nv = nv or block(vector_bytes)[1]

    @intrinsic
    def panel(typingctx, A, a0, sai, sap, B, C, c0, K, N, bias, use_bias):
        _check_arrays(A, B, C, bias)
        sig = types.void(A, types.intp, types.intp, types.intp, B, C, types.intp, types.intp,
                         types.intp, bias, types.boolean)

        def codegen(context, builder, sig, args):
            vec = _Vectors(context, builder, sig.args[0].dtype, vector_bytes)
            _emit_panel(builder, vec, MR, nv, *_data(context, builder, sig, args, (0, 4, 5, 9)),
                        *(args[i] for i in (1, 2, 3, 6, 7, 8, 10)))
            return context.get_dummy_value()

        return sig, codegen

    return panel


def _emit_panel(builder, vec, MR, NV, pa, pb, pc, pbias, a0, sai, sap, c0, K, N, use_bias):
    const, lanes = vec.const, vec.lanes
    acc = [[cgutils.alloca_once_value(builder, vec.zero) for _ in range(NV)]
           for _ in range(MR)]

    def tile(j0, n_vectors, valid):
        """Columns j0 .. j0 + n_vectors * lanes of the panel; `valid` (None for all) is how
        many of them exist, more than (n_vectors - 1) * lanes: the last vector's lanes past
        it are masked (masked loads in the depth loop cost more than plain ones)."""
        masks = [None] * n_vectors
        if valid is not None:
            masks[-1] = vec.first(builder.sub(valid, const((n_vectors - 1) * lanes)))
        with builder.if_else(use_bias) as (with_bias, without):
            with with_bias:
                for v in range(n_vectors):
                    b = vec.load(pbias, builder.add(j0, const(v * lanes)), masks[v])
                    for i in range(MR):
                        builder.store(b, acc[i][v])
            with without:
                for v in range(n_vectors):
                    for i in range(MR):
                        builder.store(vec.zero, acc[i][v])
        with cgutils.for_range(builder, K) as loop:
            p = loop.index
            row = builder.add(builder.mul(p, N), j0)
            bs = [vec.load(pb, builder.add(row, const(v * lanes)), masks[v])
                  for v in range(n_vectors)]
            a_p = builder.add(a0, builder.mul(p, sap))
            for i in range(MR):
                a = builder.load(builder.gep(pa, [builder.add(a_p, builder.mul(const(i), sai))]))
                a = vec.broadcast(a)
                for v in range(n_vectors):
                    vec.fma_into(acc[i][v], a, bs[v])
        for i in range(MR):
            out = builder.add(c0, builder.add(builder.mul(const(i), N), j0))
            for v in range(n_vectors):
                vec.store(builder.load(acc[i][v]), pc, builder.add(out, const(v * lanes)),
                          masks[v])

    width = const(NV * lanes)
    full = builder.sdiv(N, width)
    with cgutils.for_range(builder, full) as loop:
        tile(builder.mul(loop.index, width), NV, None)
    done = builder.mul(full, width)
    rest = builder.sub(N, done)

    def last_tile(n_vectors):        # the rest's columns in n_vectors vectors, or fewer
        if n_vectors == 1:
            tile(done, 1, rest)
            return
        more = builder.icmp_signed(">", rest, const((n_vectors - 1) * lanes))
        with builder.if_else(more) as (whole, fewer):
            with whole:
                tile(done, n_vectors, rest)
            with fewer:
                last_tile(n_vectors - 1)

    with builder.if_then(builder.icmp_signed(">", rest, const(0))):
        last_tile(NV)


def dot_panel_intrinsic(MR, NJ, vector_bytes=None):
    """The intrinsic computing MR rows of C = A B^T (see nt), NJ columns at a time:
    dot_panel(A, a0, B, C, c0, K, N), for i < MR, j < N:
        C[c0 + i N + j] = sum_p<K A[a0 + i K + p] B[j K + p]."""
    vector_bytes = vector_bytes or VECTOR_BYTES

    @intrinsic
    def dot_panel(typingctx, A, a0, B, C, c0, K, N):
        _check_arrays(A, B, C)
        sig = types.void(A, types.intp, B, C, types.intp, types.intp, types.intp)

        def codegen(context, builder, sig, args):
            vec = _Vectors(context, builder, sig.args[0].dtype, vector_bytes)
            _emit_dot_panel(builder, vec, MR, NJ, *_data(context, builder, sig, args, (0, 2, 3)),
                            *(args[i] for i in (1, 4, 5, 6)))
            return context.get_dummy_value()

        return sig, codegen

    return dot_panel


def _emit_dot_panel(builder, vec, MR, NJ, pa, pb, pc, a0, c0, K, N):
    const, lanes = vec.const, vec.lanes
    full = builder.sdiv(K, const(lanes))
    tail_at = builder.mul(full, const(lanes))
    rest = builder.sub(K, tail_at)
    tail_mask = vec.first(rest)
    acc = [[cgutils.alloca_once_value(builder, vec.zero) for _ in range(NJ)]
           for _ in range(MR)]

    def columns(j0, nj):
        """C[:, j0 : j0 + nj]: MR x nj dot products of length K."""
        for i in range(MR):
            for j in range(nj):
                builder.store(vec.zero, acc[i][j])
        a_rows = [builder.add(a0, builder.mul(const(i), K)) for i in range(MR)]
        b_rows = [builder.mul(builder.add(j0, const(j)), K) for j in range(nj)]

        def step(p, mask):
            bs = [vec.load(pb, builder.add(row, p), mask) for row in b_rows]
            for i in range(MR):
                a = vec.load(pa, builder.add(a_rows[i], p), mask)
                for j in range(nj):
                    vec.fma_into(acc[i][j], a, bs[j])

        with cgutils.for_range(builder, full) as loop:
            step(builder.mul(loop.index, const(lanes)), None)
        with builder.if_then(builder.icmp_signed(">", rest, const(0))):
            step(tail_at, tail_mask)
        for i in range(MR):
            out = builder.add(c0, builder.add(builder.mul(const(i), N), j0))
            for j in range(nj):
                builder.store(vec.sum(builder.load(acc[i][j])),
                              builder.gep(pc, [builder.add(out, const(j))]))

    groups = builder.sdiv(N, const(NJ))
    with cgutils.for_range(builder, groups) as loop:
        columns(builder.mul(loop.index, const(NJ)), NJ)
    done = builder.mul(groups, const(NJ))
    with cgutils.for_range(builder, builder.sub(N, done)) as loop:
        columns(builder.add(done, loop.index), 1)


def transpose_block_intrinsic(vector_bytes=None):
    """The intrinsic transposing one square block of V x V elements (V: a vector's lanes):
    transpose_block(B, b0, ldb, T, t0, ldt), for i, p < V: T[t0 + p ldt + i] = B[b0 + i ldb + p],
    over flat element offsets. V rows are loaded as vectors and swapped in log2(V) stages
    of two-vector shuffles (stage b exchanges the off-diagonal b x b blocks of every 2b x 2b
    block), then stored as V rows."""
    vector_bytes = vector_bytes or VECTOR_BYTES

    @intrinsic
    def transpose_block(typingctx, B, b0, ldb, T, t0, ldt):
        _check_arrays(B, T)
        sig = types.void(B, types.intp, types.intp, T, types.intp, types.intp)

        def codegen(context, builder, sig, args):
            vec = _Vectors(context, builder, sig.args[0].dtype, vector_bytes)
            pb, pt = _data(context, builder, sig, args, (0, 3))
            _emit_transpose_block(builder, vec, pb, pt, *(args[i] for i in (1, 2, 4, 5)))
            return context.get_dummy_value()

        return sig, codegen

    return transpose_block


def _emit_transpose_block(builder, vec, pb, pt, b0, ldb, t0, ldt):
    V, const = vec.lanes, vec.const
    rows = [vec.load(pb, builder.add(b0, builder.mul(const(i), ldb))) for i in range(V)]
    b = 1
    while b < V:
        low = ir.Constant(ir.VectorType(ir.IntType(32), V),
                          [j if j & b == 0 else V + j - b for j in range(V)])
        high = ir.Constant(ir.VectorType(ir.IntType(32), V),
                           [j + b if j & b == 0 else V + j for j in range(V)])
        for i in range(V):
            if i & b == 0:
                r0, r1 = rows[i], rows[i + b]
                rows[i] = builder.shuffle_vector(r0, r1, low)
                rows[i + b] = builder.shuffle_vector(r0, r1, high)
        b *= 2
    for p in range(V):
        vec.store(rows[p], pt, builder.add(t0, builder.mul(const(p), ldt)))


_transpose_block = transpose_block_intrinsic()


@jit
def transpose_into(T, B):
    """T (K, N) = B (N, K)^T: whole blocks of a vector's lanes square by shuffles
    (transpose_block), the edges element by element."""
    N, K = B.shape
    V = VECTOR_BYTES // B.itemsize
    N_full, K_full = N - N % V, K - K % V
    for i0 in range(0, N_full, V):
        for p0 in range(0, K_full, V):
            _transpose_block(B, i0 * K + p0, K, T, p0 * N + i0, N)
    for p in range(K_full, K):           # the last columns of B, the last rows of T
        for i in range(N):
            T[p, i] = B[i, p]
    for p in range(K_full):              # the last rows of B, the last columns of T
        for i in range(N_full, N):
            T[p, i] = B[i, p]


# Panels of MR rows, then one of 4, one of 2 and single rows for the rest. A single row's
# panel keeps only NV accumulators, too few to hide the FMA latency: with AVX-512 (Zen 4)
# the 4 rows left of 64, 100 or 784 in single rows made mnist's 64 x 784 x 256 take 261 us
# against 223 with a panel of 4 (on AVX2 the panels of 4 and 2 had made no difference).
# The block (`python benchmarks/panel_probe.py`, one thread, best of 7; README "Notes for
# kernel developers"): on a Zen 4 (one 512-bit FMA a cycle) 6 x 2, 8 x 2, 8 x 3, 6 x 4, 4 x 4
# and 4 x 6 ran at the same speed, panels of 10 or 12 rows 1.3-2.5x slower in nn. On an
# Intel Xeon with AMX (two a cycle; 2026-11-27, eighth session) 8 x 3 took 0.72-0.95 of
# 6 x 2's time on mnist's, deep's and digits' products (mnist's float32 64 x 784 x 256:
# 284 against 337 us forward, 188 against 230 weight gradient; float64 384 against 530),
# where 6 x 2 had been 1.0-1.4x slower than OpenBLAS; 14 x 2 gained as much but is the kind
# of tall panel the Zen 4 runs slower. So AVX-512 takes 8 x 3 on every CPU.
_panel_main = panel_intrinsic(MR)
_panel4 = panel_intrinsic(4)
_panel2 = panel_intrinsic(2)
_panel1 = panel_intrinsic(1)
_dot_panel3 = dot_panel_intrinsic(3, 3)
_dot_panel1 = dot_panel_intrinsic(1, 3)


@jit
def panels(C, A, sai, sap, B, K, bias, use_bias):
    """C (M, N) = a B [+ bias], a(i, p) = A.flat[i sai + p sap]: panels of MR rows, then of
    4, 2 and 1 for the rest."""
    M, N = C.shape
    r = 0
    while r + MR <= M:
        _panel_main(A, r * sai, sai, sap, B, C, r * N, K, N, bias, use_bias)
        r += MR
    if r + 4 <= M:
        _panel4(A, r * sai, sai, sap, B, C, r * N, K, N, bias, use_bias)
        r += 4
    if r + 2 <= M:
        _panel2(A, r * sai, sai, sap, B, C, r * N, K, N, bias, use_bias)
        r += 2
    while r < M:
        _panel1(A, r * sai, sai, sap, B, C, r * N, K, N, bias, use_bias)
        r += 1


@jit
def dot_panels(C, A, B):
    """C (M, N) = A @ B^T for A (M, K), B (N, K): dot products along both operands' rows,
    3 x 3 of them at a time (9 accumulators, 6 loads), then single rows."""
    M, N = C.shape
    K = A.shape[1]
    r = 0
    while r + 3 <= M:
        _dot_panel3(A, r * K, B, C, r * N, K, N)
        r += 3
    while r < M:
        _dot_panel1(A, r * K, B, C, r * N, K, N)
        r += 1


# ------------------------------------------------------------------ entry points
# The kernels reach these products through three entry points per dtype, compiled once as
# C functions (numba.cfunc, cached) and called by symbol name, like a BLAS routine. Numba
# otherwise links a callee's code into every caller and LLVM optimises it again at each
# level (linear_forward, forward, forward_backward, the epoch kernel, ...): inlined, these
# loops made a first fit 6-9 s slower; behind the symbols, BLAS's np.dot lowering is
# compiled once too. Each entry point picks this module's loops or BLAS by size.

def _nn_entry(c, a, b, bias, M, K, N):
    """C (M, N) = A (M, K) @ B (K, N) + bias (N,)."""
    C, A, B = carray(c, (M, N)), carray(a, (M, K)), carray(b, (K, N))
    bias_ = carray(bias, (N,))
    if small(M, K, N, C.itemsize):
        panels(C, A, K, 1, B, K, bias_, True)
        return
    np.dot(A, B, C)
    for r in range(M):
        for j in range(N):
            C[r, j] += bias_[j]


def _tn_entry(c, a, b, unused, M, K, N):
    """C (M, N) = A^T @ B for A (K, M), B (K, N)."""
    C, A, B = carray(c, (M, N)), carray(a, (K, M)), carray(b, (K, N))
    if small(M, K, N, C.itemsize):
        panels(C, A, 1, M, B, K, C[0], False)
    else:
        np.dot(A.T, B, C)


def _nt_entry(c, a, b, t, M, K, N):
    """C (M, N) = A @ B^T for A (M, K), B (N, K): B transposed into the scratch t (K N + N
    elements where nt_by_transpose) and nn's entry point over it, with the scratch's last N
    elements as a zero bias; else dot products (small_nt) or BLAS."""
    C, A, B = carray(c, (M, N)), carray(a, (M, K)), carray(b, (N, K))
    if nt_by_transpose(M, K, N, C.itemsize):
        scratch = carray(t, (K * N + N,))
        T = scratch[:K * N].reshape((K, N))
        zero = scratch[K * N:]
        transpose_into(T, B)
        for j in range(N):
            zero[j] = 0
        nn(C, A, T, zero)      # by symbol: the panels' code is compiled once, in nn's entry
    elif small_nt(M, K, N, C.itemsize):
        dot_panels(C, A, B)
    else:
        np.dot(A, B.T, C)


# precision="bf16" (kernels/bf16.py): the products BLAS would take, where they have a whole
# tile's columns, from operands rounded to bf16 into padded buffers; float32 sums. The
# small products and the narrow ones (the output layer's) stay as above.

# The depth below which a bf16 product's rounding and packing (~ M K + K N + M N) cost more
# than its faster sums save: wide's 128 x 10 x 1024 input gradient ran at 24 GFLOP/s in
# bf16 against BLAS's 34 on a Zen 4 (`benchmarks/bf16_products.py`).
BF16_MIN_DEPTH = 64


@jit
def bf16_product(M, K, N, cols):
    """Whether the (M, K) x (K, N) product of a bf16 model runs in bf16 (kernels/bf16.py):
    over SMALL_MACS (on AVX-512 the float32 loops take products up to SMALL_MACS_AVX512,
    which bf16 runs faster still; without AVX512-BF16 the panel is emulated, slowly, and
    takes the same products), deep enough, whose panel has at least a tile's `cols`
    columns."""
    return M * K * N > SMALL_MACS and K >= BF16_MIN_DEPTH and cols >= bf16.TILE_COLS


@jit
def _whole_tiles(M, N):
    """Whether an (M, N) output is the panel's own shape, so it can write C directly."""
    return M % bf16.PANEL_ROWS == 0 and N % bf16.TILE_COLS == 0


def _nn_bf16_entry(c, a, b, bias, M, K, N):
    """nn with bf16 operands (see bf16_product)."""
    C, A, B = carray(c, (M, N)), carray(a, (M, K)), carray(b, (K, N))
    bias_ = carray(bias, (N,))
    if not bf16_product(M, K, N, N):
        nn(C, A, B, bias_)
        return
    _nn_bf16_of_packed(C, A, bf16.packed_pairs(B, False, bf16.TILE_COLS), bias_)


def _nn_bf16_copy_entry(c, a, b, bias, M, K, N):
    """nn in bf16 from the step's copy of W (kernels/bf16.py, weight copies): b points at
    W's pairs, packed (K'/2, N', 2) as packed_pairs packs them; only for products that
    bf16_product sends to bf16 (a copy exists only for those: ops.copy_offset)."""
    C, A, bias_ = carray(c, (M, N)), carray(a, (M, K)), carray(bias, (N,))
    K2, N_ = (K + 1) // 2, bf16.nn_copy_cols(N)
    Bp = carray(b, (K2 * N_,)).view(np.uint16).reshape(K2, N_, 2)
    _nn_bf16_of_packed(C, A, Bp, bias_)


@jit
def _nn_bf16_of_packed(C, A, Bp, bias):
    """C (M, N) = A (M, K) @ B + bias from A rounded here and B's packed pairs Bp."""
    M, N = C.shape
    Ab = bf16.rounded_rows(A)
    if _whole_tiles(M, N):
        bf16.panel(Ab, Ab.shape[1] // 2, 1, M, Bp, C)
        for r in range(M):
            for j in range(N):
                C[r, j] += bias[j]
        return
    out = np.empty((Ab.shape[0], Bp.shape[1]), dtype=np.float32)
    bf16.panel(Ab, Ab.shape[1] // 2, 1, Ab.shape[0], Bp, out)
    for r in range(M):
        for j in range(N):
            C[r, j] = out[r, j] + bias[j]


def _tn_bf16_entry(c, a, b, unused, M, K, N):
    """tn with bf16 operands: A (K, M) packed in pairs along its rows, as B is, gives A^T's
    pairs along the depth without a transposition."""
    C, A, B = carray(c, (M, N)), carray(a, (K, M)), carray(b, (K, N))
    if not bf16_product(M, K, N, N):
        tn(C, A, B)
        return
    Ap = bf16.packed_pairs(A, False, bf16.PANEL_ROWS)
    Bp = bf16.packed_pairs(B, False, bf16.TILE_COLS)
    rows = Ap.shape[1]
    if _whole_tiles(M, N):
        bf16.panel(Ap, 1, rows, M, Bp, C)
        return
    out = np.empty((rows, Bp.shape[1]), dtype=np.float32)
    bf16.panel(Ap, 1, rows, rows, Bp, out)
    C[:, :] = out[:M, :N]


@jit
def pairs_of_rows(A, multiple):
    """bf16.packed_pairs(A, True, multiple) made faster: A's rows rounded (bf16.rounded_rows,
    padded to whole `multiple`s of rows), then their pairs, 32 bits each, transposed by
    transpose_into's shuffles (which move bits: bf16 pairs as well as floats). 0.2 against
    0.9 ns an element on a Zen 4 (packed_pairs reads A's columns element by element)."""
    R = bf16.rounded_rows(A, multiple)                       # (N', K') bf16
    rows, K2 = R.shape[0], R.shape[1] // 2
    out = np.empty((K2, rows, 2), dtype=np.uint16)
    transpose_into(out.reshape(K2, 2 * rows).view(np.float32), R.view(np.float32))
    return out


def _nt_bf16_entry(c, a, b, t, M, K, N):
    """nt with bf16 operands, as C^T (N, M) = B (N, K) A^T: B's rows are pairs along the depth
    as they are, and A (M, K), the smaller (a chunk's rows), is the one packed transposed
    (packing B^T, all of W, took as long as the product; measured on a Zen 4)."""
    C, A, B = carray(c, (M, N)), carray(a, (M, K)), carray(b, (N, K))
    if not bf16_product(M, K, N, M):
        nt(C, A, B, carray(t, (K * N + N,)))
        return
    _nt_bf16_of_rounded(C, A, bf16.rounded_rows(B))


def _nt_bf16_copy_entry(c, a, b, t, M, K, N):
    """nt in bf16 from the step's copy of W (kernels/bf16.py, weight copies): b points at
    B's rows rounded (N', K'), as rounded_rows rounds them; only for products that
    bf16_product sends to bf16 (a copy exists only for those: ops.copy_offset)."""
    C, A = carray(c, (M, N)), carray(a, (M, K))
    N_, K_ = bf16.nt_copy_rows(N), K + K % 2
    _nt_bf16_of_rounded(C, A, carray(b, (N_ * K_ // 2,)).view(np.uint16).reshape(N_, K_))


@jit
def _nt_bf16_of_rounded(C, A, Bb):
    """C (M, N) = A (M, K) @ B^T from B's rows rounded (Bb) and A packed here."""
    M, N = C.shape
    Ap = pairs_of_rows(A, bf16.TILE_COLS)
    if _whole_tiles(N, M):
        bf16.panel_t(Bb, Bb.shape[1] // 2, 1, N, Ap, C)                 # C^T stored as C
        return
    out = np.empty((Bb.shape[0], Ap.shape[1]), dtype=np.float32)      # C^T, padded
    bf16.panel(Bb, Bb.shape[1] // 2, 1, Bb.shape[0], Ap, out)
    for j0 in range(0, N, bf16.BLOCK):                                  # C = out^T
        for r in range(M):
            for j in range(j0, min(j0 + bf16.BLOCK, N)):
                C[r, j] = out[j, r]


def _copy_nn_entry(c, a, b, d, k0, k1, N):
    """Rows k0:k1 of W (N columns, flat at a) into its nn copy at c (bf16.copy_rows)."""
    copy = carray(c, ((k1 + 1) // 2 * bf16.nn_copy_cols(N),)).view(np.uint16)
    bf16.copy_rows(copy, 0, -1, carray(a, (k1 * N,)), k0, k1, N)


def _copy_nt_entry(c, a, b, d, k0, k1, N):
    """Rows k0:k1 of W (N columns, flat at a) into its nt copy at c (bf16.copy_rows)."""
    copy = carray(c, (k1 * (N + N % 2) // 2,)).view(np.uint16)
    bf16.copy_rows(copy, -1, 0, carray(a, (k1 * N,)), k0, k1, N)


_ENTRIES = {"nn": _nn_entry, "tn": _tn_entry, "nt": _nt_entry}
_BF16_ENTRIES = {"nn_bf16": _nn_bf16_entry, "tn_bf16": _tn_bf16_entry,
                 "nt_bf16": _nt_bf16_entry,     # float32 only: see enable_bf16
                 "nn_bf16_copy": _nn_bf16_copy_entry, "nt_bf16_copy": _nt_bf16_copy_entry,
                 "copy_nn": _copy_nn_entry, "copy_nt": _copy_nt_entry}
# the plain entry point each bf16 one's stand-in calls until enable_bf16 (those of the
# weight copies are never reached before: only a bf16 model's epochs call them, and its
# workspace enables bf16 first) and the one a float64 kernel's (never taken) bf16 branch
# calls (a float64 kernel calls no copy_ entry: copy_call emits nothing there)
_PLAIN = {"nn_bf16": "nn", "tn_bf16": "tn", "nt_bf16": "nt", "nn_bf16_copy": "nn",
          "nt_bf16_copy": "nt", "copy_nn": "nn", "copy_nt": "nn"}
_compiled = {}                 # (kind, dtype name) -> its cfunc (kept: its code must stay)
_registered = set()            # dtype names whose entry points' symbols are known
_registering = set()           # ... being compiled, by the thread holding the compiler lock
_bf16_targets = []             # the bf16 stand-ins' pointers (ctypes.c_void_p), _PLAIN's order
_bf16_enabled = []             # [True] once they point at the bf16 entry points


def _symbol(kind, dtype_name):
    # Callers cached by Numba call this name with the C signature of register(): changes
    # inside this module recompile the entry points alone, but a changed signature needs
    # the cache deleted (Numba's cache follows each function's own file, not its callees')
    return f"fastbp_gemm_{kind}_{dtype_name}"


def _compile_entry(kind, dtype_name, body):
    ptr = types.CPointer(getattr(types, dtype_name))
    sig = types.void(ptr, ptr, ptr, ptr, types.intp, types.intp, types.intp)
    entry = cfunc(sig, fastmath=FASTMATH, error_model="numpy")(body)
    _compiled[kind, dtype_name] = entry
    return entry


def register(dtype_name):
    """Compile (or load from Numba's cache) the entry points of a dtype ('float32',
    'float64') and make their symbols known to the JIT's linker. It must run before any
    kernel that calls them is compiled or loaded from the cache: their typing does it; the
    engine (kernels.Kernels) and compiled_forward do it before running a kernel of a dtype,
    and a kernel loaded from the cache runs a reload hook (_register_float32/64) that does
    it, where Numba kept the hook (a caller compiled against callees that came from the
    cache loses it, hence the engine's call).

    float32 kernels also call the bf16 entry points (in a branch only bf16 models take):
    their symbols are stand-ins (bf16.trampolines) that call the plain entry points until
    enable_bf16 compiles the real ones (seconds, cold: README) and points the stand-ins at them, so
    only a process that trains a bf16 model pays for them."""
    if dtype_name in _registered:
        return
    # Numba's compiler lock, not one of ours: this runs inside compilations (typing), which
    # hold it already, and compiles itself; a second lock taken in the other order by
    # another thread would deadlock
    with global_compiler_lock:
        if dtype_name in _registered or dtype_name in _registering:
            # done meanwhile by another thread, or under way in this one: nt's entry point
            # calls nn's, compiled and its symbol added before it (the lock is reentrant)
            return
        _registering.add(dtype_name)
        try:
            _register_entries(dtype_name)
        finally:
            _registering.discard(dtype_name)


def _register_entries(dtype_name):
    for kind, body in _ENTRIES.items():         # nn first: nt calls it
        entry = _compile_entry(kind, dtype_name, body)
        llvm_binding.add_symbol(_symbol(kind, dtype_name), entry.address)
    if dtype_name == "float32":
        for kind, (address, target) in bf16.trampolines(
                [_symbol(k, "float32") for k in _PLAIN]).items():
            llvm_binding.add_symbol(kind, address)
            _bf16_targets.append(target)
        for target, plain in zip(_bf16_targets, _PLAIN.values()):
            target.value = _compiled[plain, "float32"].address
    _registered.add(dtype_name)


def enable_bf16():
    """Compile (or load) the bf16 entry points and point their stand-ins at them: before a
    bf16 model's first training kernel runs (engine._CpuEpochs does it)."""
    if _bf16_enabled:
        return
    register("float32")
    with global_compiler_lock:
        if _bf16_enabled:
            return
        bf16.register_panel()                       # the bf16 entry points call it
        addresses = [_compile_entry(kind, "float32", _BF16_ENTRIES[kind]).address
                     for kind in _PLAIN]
        for target, address in zip(_bf16_targets, addresses):
            target.value = address
        _bf16_enabled.append(True)                  # only now: every stand-in points right


def _register_float32():
    register("float32")


def _register_float64():
    register("float64")


_RELOAD = {"float32": _register_float32, "float64": _register_float64}


def _entry_call(kind, with_bias):
    """The intrinsic calling entry point `kind` on C-contiguous 2-D arrays: (C, A, B, bias)
    (nt: its scratch T in bias's place) or (C, A, B), shapes as its docstring says, taken
    from C and A. Like a BLAS call, the shapes of B and bias are the caller's to get right
    (they are not checked)."""

    def typer(operands):
        _check_arrays(*operands)
        dtype_name = str(operands[0].dtype)
        register(dtype_name)

        def codegen(context, builder, sig, args):
            arrays = [cgutils.create_struct_proxy(t)(context, builder, value=v)
                      for t, v in zip(sig.args, args)]
            i8p, i64 = ir.IntType(8).as_pointer(), ir.IntType(64)
            data = [builder.bitcast(a.data, i8p) for a in arrays]
            data += [data[0]] * (4 - len(data))                 # (no bias)
            M, N = cgutils.unpack_tuple(builder, arrays[0].shape, 2)
            a_rows, a_cols = cgutils.unpack_tuple(builder, arrays[1].shape, 2)
            # bf16 products exist for float32 only: a float64 kernel's (never taken)
            # bf16 branch calls the plain entry point
            name = kind if dtype_name == "float32" else _PLAIN.get(kind, kind)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p] * 4 + [i64] * 3),
                _symbol(name, dtype_name))
            builder.call(fn, data + [M, a_rows if kind.startswith("tn") else a_cols, N])
            # a kernel loaded from the cache in a new process registers the symbols first
            context.active_code_library._reload_init.add(_RELOAD[dtype_name])
            return context.get_dummy_value()

        return types.void(*operands), codegen

    if with_bias:
        @intrinsic
        def call(typingctx, C, A, B, bias):
            return typer((C, A, B, bias))
    else:
        @intrinsic
        def call(typingctx, C, A, B):
            return typer((C, A, B))
    return call


def _copy_product_call(kind):
    """The intrinsic calling entry point `kind` (nn_bf16_copy, nt_bf16_copy) as
    (C, A, packed, offset, bias or T): the weight copy at element `offset` of `packed` (1-D
    uint16, args.Workspace.packed) in B's place; float32 only (register's stand-ins; a
    float64 kernel's never taken branch calls the plain entry point)."""

    @intrinsic
    def call(typingctx, C, A, packed, offset, bias):
        _check_arrays(C, A, C, bias)
        if not (isinstance(packed, types.Array) and packed.dtype == types.uint16
                and packed.ndim == 1 and packed.layout == "C"):
            raise TypingError("a bf16 product's weight copies are bf16 bits (1-D uint16)")
        dtype_name = str(C.dtype)
        register(dtype_name)

        def codegen(context, builder, sig, args):
            c, a, pk, off, bs = args
            i8p, i64 = ir.IntType(8).as_pointer(), ir.IntType(64)
            data = [cgutils.create_struct_proxy(t)(context, builder, value=v).data
                    for t, v in ((sig.args[0], c), (sig.args[1], a), (sig.args[2], pk),
                                 (sig.args[4], bs))]
            data[2] = builder.gep(data[2], [off])            # the copy's first element
            data = [builder.bitcast(x, i8p) for x in data]
            M, N = cgutils.unpack_tuple(builder, cgutils.create_struct_proxy(sig.args[0])(
                context, builder, value=c).shape, 2)
            K = cgutils.unpack_tuple(builder, cgutils.create_struct_proxy(sig.args[1])(
                context, builder, value=a).shape, 2)[1]
            name = kind if dtype_name == "float32" else _PLAIN[kind]
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p] * 4 + [i64] * 3),
                _symbol(name, dtype_name))
            builder.call(fn, data + [M, K, N])
            context.active_code_library._reload_init.add(_RELOAD[dtype_name])
            return context.get_dummy_value()

        return types.void(C, A, packed, types.intp, bias), codegen
    return call


@intrinsic
def copy_call(typingctx, which, packed, at, flat, start, k0, k1, N):
    """copy_call(which, packed, at, flat, start, k0, k1, N): rows k0:k1 of W, N columns
    flat at element `start` of `flat` (the parameters), into its bf16 copy at element `at`
    of `packed` (1-D uint16): nn's copy (which 0, a literal) or nt's (1), through entry
    points copy_nn / copy_nt (bf16.copy_rows). The copy code is compiled once, when a bf16
    model first trains, not into every kernel; for float64 parameters (never a bf16 model)
    it emits nothing."""
    if not isinstance(which, types.IntegerLiteral):
        raise TypingError("copy_call's `which` must be a literal 0 or 1")
    kind = ("copy_nn", "copy_nt")[which.literal_value]
    dtype_name = str(flat.dtype)
    if dtype_name == "float32":
        register(dtype_name)

    def codegen(context, builder, sig, args):
        if dtype_name != "float32":
            return context.get_dummy_value()
        _, pk, pk_at, fl, fl_at, lo, hi, n = args
        i8p, i64 = ir.IntType(8).as_pointer(), ir.IntType(64)
        dst = builder.gep(cgutils.create_struct_proxy(sig.args[1])(
            context, builder, value=pk).data, [pk_at])
        src = builder.gep(cgutils.create_struct_proxy(sig.args[3])(
            context, builder, value=fl).data, [fl_at])
        dst, src = builder.bitcast(dst, i8p), builder.bitcast(src, i8p)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p] * 4 + [i64] * 3),
            _symbol(kind, dtype_name))
        builder.call(fn, [dst, src, dst, dst, lo, hi, n])
        context.active_code_library._reload_init.add(_RELOAD[dtype_name])
        return context.get_dummy_value()

    return (types.void(which, packed, types.intp, flat, types.intp, types.intp, types.intp,
                       types.intp), codegen)


# callable from jit code only
nn = _entry_call("nn", True)     # nn(C, A, B, bias): C (M, N) = A (M, K) @ B (K, N) + bias (N,)
tn = _entry_call("tn", False)    # tn(C, A, B): C (M, N) = A^T @ B for A (K, M), B (K, N)
nt = _entry_call("nt", True)     # nt(C, A, B, T): C (M, N) = A @ B^T for A (M, K), B (N, K),
#                                  T a 1-D scratch of K N + N elements (K N up to TRANSPOSE_MAX)
nn_bf16 = _entry_call("nn_bf16", True)    # the same three with bf16 operands (float32;
tn_bf16 = _entry_call("tn_bf16", False)   # float64 arrays take the plain ones)
nt_bf16 = _entry_call("nt_bf16", True)
# nn_bf16_copy(C, A, packed, offset, bias) and nt_bf16_copy(C, A, packed, offset, T):
# nn_bf16 and nt_bf16 with W taken from the epoch's copy of it in bf16 at element `offset`
# of `packed` (bf16.py: nn's copy W's packed pairs, nt's its rounded rows) instead of
# rounding and packing W at every call; for products that bf16_product sends to bf16 (a
# copy is made and offered only for those: engine._weight_copies, ops.copy_offset)
nn_bf16_copy = _copy_product_call("nn_bf16_copy")
nt_bf16_copy = _copy_product_call("nt_bf16_copy")


@jit
def product(kind, C, A, B, bias, use_bf16):
    """One product by kind (0: nn with bias, 1: tn, 2: nt; shapes as above), plain or bf16
    (enable_bf16 first): the kernels call the intrinsics themselves (ops.py); tests and
    benchmarks call this from Python."""
    if kind == 0:
        if use_bf16:
            nn_bf16(C, A, B, bias)
        else:
            nn(C, A, B, bias)
    elif kind == 1:
        if use_bf16:
            tn_bf16(C, A, B)
        else:
            tn(C, A, B)
    else:
        T = np.empty((A.shape[1] + 1) * B.shape[0], dtype=C.dtype)     # nt's scratch
        if use_bf16:
            nt_bf16(C, A, B, T)
        else:
            nt(C, A, B, T)
