"""bfloat16 products on AMX tiles, for precision="bf16" on CPUs with AMX-BF16 (Intel Xeons
since Sapphire Rapids).

An AMX core holds eight tile registers of up to 16 rows x 64 bytes; one TDPBF16PS multiplies
a 16 x 32 tile of bf16 A by a 16 x 16 tile of bf16 pairs of B and adds the 16 x 16 float32
products to a third tile: 8,192 multiply-adds an instruction, where VDPBF16PS (bf16.py's
panel) does 32. The operands are the ones bf16.py's entry points already make: A's rows as
pairs along the depth, B packed (K/2, N, 2), which is the layout a B tile wants. So this
module only brings a second panel of the same signature (`panels`), registered under bf16's
symbols where the CPU has the tiles and Linux lets the process use them (`mode`).

The panel keeps a block of 32 x 32 outputs in four tiles (2 A tiles x 2 B tiles) over the
depth in steps of 16 pairs, then stores them; a depth that is not a multiple of 16 pairs
ends with one more step over zero-padded copies of the pairs left, so one tile
configuration serves the whole call. The blocks go down A's rows for each 32 columns of B
where B is the larger (W, against a chunk's rows: wide's 2 MB W read from L3 once per row
block ran at half the speed), across B's columns for each row block otherwise. tn's left
operand, packed in pairs along its columns, is transposed into rows one block at a time
(gemm's 16 x 16 shuffles of 32-bit lanes move bf16 pairs as well as floats), and a last
block of fewer than 32 rows is copied, zero padded. Untransposed blocks are stored straight
into C; transposed ones, and those past C's last row, go through a 32 x 32 buffer. Buffers
stay small: a version with whole-output ones ran mnist's 784 x 128 x 256 six times slower
on the Xeon.

The tile instructions are LLVM intrinsics reached from Numba (`tile_load` and the like,
whose tile numbers must be literal constants). `panels(emulate=True)` builds the same panel
from plain-Numba stand-ins of them, which run anywhere: the tests check the panel's
blocking, padding and passes with it on CPUs without AMX.
"""
import ctypes
import os
import sys

import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic

from .codes import FASTMATH, hardware_features, target_features

TILE_ROWS = 16                  # rows of a tile; 64 bytes a row: 16 float32 or 16 bf16 pairs
BLOCK = 2 * TILE_ROWS           # outputs per block: 32 x 32, in four tiles
C00, C01, C10, C11, A0, A1, B0, B1 = range(8)    # the eight tile registers' roles

# Linux hands out AMX's 8 KB of tile state only to processes that ask (arch_prctl)
_SYS_ARCH_PRCTL, _ARCH_GET_XCOMP_PERM, _ARCH_REQ_XCOMP_PERM = 158, 0x1022, 0x1023
_XFEATURE_XTILEDATA = 18


def _request_tiles():
    """Ask Linux for the tile state (once per process; it holds for every thread)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
        syscall.restype = ctypes.c_long
        if syscall(ctypes.c_long(_SYS_ARCH_PRCTL), ctypes.c_long(_ARCH_REQ_XCOMP_PERM),
                   ctypes.c_long(_XFEATURE_XTILEDATA)) != 0:
            return False
        granted = ctypes.c_uint64(0)
        syscall(ctypes.c_long(_SYS_ARCH_PRCTL), ctypes.c_long(_ARCH_GET_XCOMP_PERM),
                ctypes.byref(granted))
        return bool(granted.value & (1 << _XFEATURE_XTILEDATA))
    except (OSError, AttributeError):
        return False


_FEATURES = {"amx-tile", "amx-bf16", "avx512bf16"}
_mode = []           # decided once per process: "tiles", "emulate" or None


def _setting():
    value = os.environ.get("FASTBP_AMX", "").strip().lower()
    return "off" if value in ("0", "false", "no", "off") else value


def mode():
    """How bf16 products use the AMX panel in this process, decided at the first call:
    "tiles" where Numba compiles for AMX-BF16, the CPU reports it and Linux granted the
    tile state; "emulate" where FASTBP_AMX=emulate (the panel on its stand-ins, on any CPU,
    for tests); None otherwise, and where FASTBP_AMX=0 (bf16.py's VDPBF16PS panel, to
    compare the two)."""
    if not _mode:
        setting = _setting()
        if setting == "emulate":
            _mode.append("emulate")
        elif (setting != "off" and _FEATURES <= target_features()
              and _FEATURES <= hardware_features() and _request_tiles()):
            _mode.append("tiles")
        else:
            _mode.append(None)
    return _mode[0]


def available():
    """Whether bf16 products run on the AMX panel in this process (mode())."""
    return mode() is not None


def emulated():
    """Whether that panel runs on its stand-ins (FASTBP_AMX=emulate at the first mode())."""
    return mode() == "emulate"


def tiles_left_unused():
    """Whether the CPU has AMX-BF16 tiles that this process will not use, other than by
    FASTBP_AMX=0 (Linux refused their state, or Numba compiles for other features): its
    bf16 products then take VDPBF16PS, slower than float32 on such (Intel) CPUs."""
    return (_setting() != "off" and not available()
            and {"amx-tile", "amx-bf16"} <= hardware_features())


# ------------------------------------------------------------------ the tile instructions

_i8, _i64 = ir.IntType(8), ir.IntType(64)


def _literal(t):
    return ir.Constant(_i8, t.literal_value) if isinstance(t, types.IntegerLiteral) else None


def _call(builder, name, argument_types, args):
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), argument_types), name)
    builder.call(fn, args)


def _address(context, builder, array_type, array, offset):
    data = cgutils.create_struct_proxy(array_type)(context, builder, value=array).data
    return builder.bitcast(builder.gep(data, [offset]), _i8.as_pointer())


@intrinsic
def tile_config(typingctx, state, config):
    """LDTILECFG from config (64 uint8: palette 1, bytes per row and rows of each tile);
    clears every tile."""
    def codegen(context, builder, sig, args):
        address = _address(context, builder, sig.args[1], args[1], ir.Constant(_i64, 0))
        _call(builder, "llvm.x86.ldtilecfg", [_i8.as_pointer()], [address])
        return context.get_dummy_value()
    return types.void(state, config), codegen


def _memory_op(name):
    def typer(typingctx, state, t, array, offset, stride):
        tile = _literal(t)
        if tile is None:
            return None                   # Numba retries with the literal tile number

        def codegen(context, builder, sig, args):
            address = _address(context, builder, sig.args[2], args[2], args[3])
            _call(builder, name, [_i8, _i8.as_pointer(), _i64], [tile, address, args[4]])
            return context.get_dummy_value()
        return types.void(state, t, array, types.intp, types.intp), codegen
    return intrinsic(typer)


# tile_load(state, t, array, offset, stride): tile t's rows from array's element `offset`
# on, `stride` bytes apart; tile_store the reverse
tile_load = _memory_op("llvm.x86.tileloadd64")
tile_store = _memory_op("llvm.x86.tilestored64")


@intrinsic
def tile_zero(typingctx, state, t):
    tile = _literal(t)
    if tile is None:
        return None

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilezero", [_i8], [tile])
        return context.get_dummy_value()
    return types.void(state, t), codegen


@intrinsic
def tile_dot(typingctx, state, c, a, b):
    """TDPBF16PS: tile c (float32) += tile a (bf16 rows) @ tile b (bf16 pairs)."""
    tiles = [_literal(t) for t in (c, a, b)]
    if None in tiles:
        return None

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tdpbf16ps", [_i8] * 3, tiles)
        return context.get_dummy_value()
    return types.void(state, c, a, b), codegen


@intrinsic
def tile_release(typingctx, state):
    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilerelease", [], [])
        return context.get_dummy_value()
    return types.void(state), codegen


@njit
def hardware_state():
    return np.empty(0, dtype=np.uint8)        # the tiles live in the core


# ------------------------------------------------------------------ their stand-ins

_CFG = 8 * 1024                                # the emulated state: 8 tiles, then config


@njit
def emulated_state():
    return np.zeros(_CFG + 64, dtype=np.uint8)


@njit
def _shape(state, t):
    cfg = state[_CFG:]
    return np.int64(cfg[48 + t]), np.int64(cfg[16 + 2 * t]) | (np.int64(cfg[17 + 2 * t]) << 8)


@njit
def emulated_config(state, config):
    state[:] = 0
    state[_CFG:] = config


@njit
def emulated_load(state, t, array, offset, stride):
    rows, colsb = _shape(state, t)
    source = array.view(np.uint8)
    base = offset * array.itemsize
    state[t * 1024:(t + 1) * 1024] = 0
    for r in range(rows):
        state[t * 1024 + r * 64:t * 1024 + r * 64 + colsb] = \
            source[base + r * stride:base + r * stride + colsb]


@njit
def emulated_store(state, t, array, offset, stride):
    rows, colsb = _shape(state, t)
    target = array.view(np.uint8)
    base = offset * array.itemsize
    for r in range(rows):
        target[base + r * stride:base + r * stride + colsb] = \
            state[t * 1024 + r * 64:t * 1024 + r * 64 + colsb]


@njit
def emulated_zero(state, t):
    state[t * 1024:(t + 1) * 1024] = 0


@njit
def _widen(h):
    return np.uint32(h) << np.uint32(16)


@njit
def emulated_dot(state, c, a, b):
    """The sums TDPBF16PS makes: each pair of bf16 products (exact in float32) added to the
    float32 sum, pair by pair along the depth (as bf16.py's emulated panel)."""
    rows, colsb = _shape(state, c)
    pairs = _shape(state, a)[1] // 4
    C = state[c * 1024:(c + 1) * 1024].view(np.float32)
    A = state[a * 1024:(a + 1) * 1024].view(np.uint16)
    B = state[b * 1024:(b + 1) * 1024].view(np.uint16)
    wide = np.empty(2, dtype=np.uint32)
    for m in range(rows):
        for n in range(colsb // 4):
            s = C[m * 16 + n]
            for p in range(pairs):
                wide[0] = _widen(A[m * 32 + 2 * p])
                wide[1] = _widen(B[p * 32 + 2 * n])
                x = wide.view(np.float32)
                t0 = x[0] * x[1]
                wide[0] = _widen(A[m * 32 + 2 * p + 1])
                wide[1] = _widen(B[p * 32 + 2 * n + 1])
                x = wide.view(np.float32)
                s += t0 + x[0] * x[1]
            C[m * 16 + n] = s


@njit
def emulated_release(state):
    state[:] = 0


# ------------------------------------------------------------------ the panel

@njit
def _config():
    """Tile configuration (palette 1): all eight tiles 16 rows of 64 bytes: 16 x 16 float32
    (C), 16 rows x 16 bf16 pairs (A), 16 pairs x 16 columns (B)."""
    config = np.zeros(64, dtype=np.uint8)
    config[0] = 1
    for t in range(8):
        config[16 + 2 * t] = 64                            # bytes a row (uint16, low byte)
        config[48 + t] = TILE_ROWS                         # rows
    return config


def _panel(new_state, config, zero, load, store, dot, release, transpose_block, transposed):
    """The panel (bf16.py's signature) from the tile operations given and gemm's 16 x 16
    transposition of 32-bit lanes (64-byte vectors; it moves bits: bf16 pairs as well as
    floats)."""
    @njit(inline="always")
    def block(state, A, a0, ab, B, j0, N, main, R, r0, S, rest):
        """Tiles C00..C11 = the 32 x 32 block of A's rows from a0 (ab bytes apart) times B's
        columns from j0: whole steps of 16 pairs, then the rest's zero-padded copies (R, S)."""
        a1 = a0 + TILE_ROWS * (ab // 4)
        nb = 4 * N
        zero(state, C00)
        zero(state, C01)
        zero(state, C10)
        zero(state, C11)
        for p in range(0, main, TILE_ROWS):
            load(state, A0, A, a0 + p, ab)
            load(state, A1, A, a1 + p, ab)
            load(state, B0, B, p * N + j0, nb)
            load(state, B1, B, p * N + j0 + TILE_ROWS, nb)
            dot(state, C00, A0, B0)
            dot(state, C01, A0, B1)
            dot(state, C10, A1, B0)
            dot(state, C11, A1, B1)
        if rest > 0:
            load(state, A0, R, r0, 4 * TILE_ROWS)
            load(state, A1, R, r0 + TILE_ROWS * TILE_ROWS, 4 * TILE_ROWS)
            load(state, B0, S, j0, nb)
            load(state, B1, S, j0 + TILE_ROWS, nb)
            dot(state, C00, A0, B0)
            dot(state, C01, A0, B1)
            dot(state, C10, A1, B0)
            dot(state, C11, A1, B1)

    @njit(inline="always")
    def put(state, C, i0, j0, M, N, out):
        """The tiles' block into C at rows i0, columns j0: stored straight into C where it
        has 32 rows from i0 (untransposed), else through `out` (32 x 32)."""
        if not transposed and i0 + BLOCK <= M:
            o, ob = i0 * N + j0, 4 * N
            store(state, C00, C, o, ob)
            store(state, C01, C, o + TILE_ROWS, ob)
            store(state, C10, C, o + TILE_ROWS * N, ob)
            store(state, C11, C, o + TILE_ROWS * N + TILE_ROWS, ob)
            return
        store(state, C00, out, 0, 4 * BLOCK)
        store(state, C01, out, TILE_ROWS, 4 * BLOCK)
        store(state, C10, out, TILE_ROWS * BLOCK, 4 * BLOCK)
        store(state, C11, out, TILE_ROWS * BLOCK + TILE_ROWS, 4 * BLOCK)
        rows = min(BLOCK, M - i0)
        if not transposed:
            for r in range(rows):
                C[(i0 + r) * N + j0:(i0 + r) * N + j0 + BLOCK] = out[r * BLOCK:(r + 1) * BLOCK]
        elif rows == BLOCK:                            # C (N, M): 16 x 16 blocks swapped
            for r0 in range(0, BLOCK, TILE_ROWS):
                for c0 in range(0, BLOCK, TILE_ROWS):
                    transpose_block(out.reshape(1, -1), r0 * BLOCK + c0, BLOCK,
                                    C.reshape(1, -1), (j0 + c0) * M + i0 + r0, M)
        else:
            for j in range(BLOCK):
                for r in range(rows):
                    C[(j0 + j) * M + i0 + r] = out[r * BLOCK + j]

    def panel(a, bp, c, M, K2, N, sai, sap):
        state = new_state()
        A = carray(a, (2 * ((M - 1) * sai + (K2 - 1) * sap + 1),)).view(np.uint32)
        B = carray(bp, (2 * K2 * N,)).view(np.uint32)                  # (K2, N) pairs
        C = carray(c, (M * N,))
        Mp = -(-M // BLOCK) * BLOCK
        main = K2 - K2 % TILE_ROWS                     # pairs in whole steps of 16
        rest = K2 - main
        # the rest's pairs, zero padded to a whole step: R (Mp, 16) of A, S (16, N) of B
        R = np.zeros(Mp * TILE_ROWS if rest > 0 else 0, dtype=np.uint32)
        S = np.zeros(TILE_ROWS * N if rest > 0 else 0, dtype=np.uint32)
        if rest > 0:
            for i in range(M):
                for q in range(rest):
                    R[i * TILE_ROWS + q] = A[i * sai + (main + q) * sap]
            S[:rest * N] = B[main * N:]
        out = np.empty(BLOCK * BLOCK, dtype=np.float32)
        copied = sap != 1 or M % BLOCK != 0            # A's rows of a block, (32, K2)
        blk = np.zeros(BLOCK * K2 if copied else 0, dtype=np.uint32)
        blk_f = blk.view(np.float32).reshape(1, -1)    # 2-D, as gemm's intrinsics take them
        A_f = A.view(np.float32).reshape(1, -1)
        config(state, _config())
        if sap != 1:
            # tn's left operand, pairs along columns ((K2, sap), sai = 1): each row block
            # transposed into blk once, B (a chunk's dZ, the smaller) read again for each
            for i0 in range(0, Mp, BLOCK):
                rows = min(BLOCK, M - i0)
                if sai == 1 and rows == BLOCK:
                    for r0 in range(0, BLOCK, TILE_ROWS):
                        for p0 in range(0, main, TILE_ROWS):
                            transpose_block(A_f, p0 * sap + i0 + r0, sap, blk_f,
                                            r0 * K2 + p0, K2)
                        for p in range(main, K2):
                            for r in range(r0, r0 + TILE_ROWS):
                                blk[r * K2 + p] = A[p * sap + i0 + r]
                else:
                    blk[:] = 0
                    for r in range(rows):
                        for p in range(K2):
                            blk[r * K2 + p] = A[(i0 + r) * sai + p * sap]
                for j0 in range(0, N, BLOCK):
                    block(state, blk, 0, 4 * K2, B, j0, N, main, R, i0 * TILE_ROWS, S, rest)
                    put(state, C, i0, j0, M, N, out)
        else:
            last = M - M % BLOCK                       # a part block's rows, zero padded
            for r in range(M - last):
                blk[r * K2:(r + 1) * K2] = A[(last + r) * sai:(last + r) * sai + K2]
            # B's 32 columns stay in cache while A's row blocks pass, where B is the larger
            # (W, for a chunk's rows: wide's 2 MB W was read from L3 once per row block)
            columns_outer = N > M                      # B (K2 x N) larger than A (M x K2)
            for outer in range(0, N if columns_outer else Mp, BLOCK):
                for inner in range(0, Mp if columns_outer else N, BLOCK):
                    i0, j0 = (inner, outer) if columns_outer else (outer, inner)
                    if i0 < last:
                        block(state, A, i0 * sai, 4 * sai, B, j0, N, main, R,
                              i0 * TILE_ROWS, S, rest)
                    else:
                        block(state, blk, 0, 4 * K2, B, j0, N, main, R, i0 * TILE_ROWS, S,
                              rest)
                    put(state, C, i0, j0, M, N, out)
        release(state)
    return panel


_SIGNATURE = types.void(types.CPointer(types.uint16), types.CPointer(types.uint16),
                        types.CPointer(types.float32), *[types.intp] * 5)


def panels(emulate=False):
    """[panel, panel_t] as compiled C functions (bf16.py's signature; `.address`): on the
    tiles, or, emulate=True, on their stand-ins. Not cached on disk: the tile instructions
    compile only for a CPU that has them, and the panel takes about a second."""
    from .gemm import transpose_block_intrinsic   # not at the top: gemm imports bf16 (this)
    ops = ((emulated_state, emulated_config, emulated_zero, emulated_load, emulated_store,
            emulated_dot, emulated_release) if emulate else
           (hardware_state, tile_config, tile_zero, tile_load, tile_store, tile_dot,
            tile_release))
    return [cfunc(_SIGNATURE, fastmath=FASTMATH, error_model="numpy")(
        _panel(*ops, transpose_block_intrinsic(64), t)) for t in (False, True)]
