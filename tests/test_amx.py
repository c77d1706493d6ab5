"""The AMX panel of bf16 products (fastbp/kernels/amx.py): its blocking, padding and the
second pass over the depth's rest, checked on its plain-Numba stand-ins of the tile
instructions on any CPU; its compile to tile instructions, checked by compiling for a
Sapphire Rapids; and, on a CPU with AMX, the tiles themselves against the stand-ins."""
import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest

from fastbp.kernels import amx, bf16

SIGNATURE = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 3, *[ctypes.c_int64] * 5)


def _operands(M, K, N, left, seed=0):
    """(A's pairs, sai, sap, rows, Bp) as bf16.py's entry points make them: A row by row
    (nn, nt) or packed in pairs along its columns (tn's left operand)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((M, K)).astype(np.float32)
    Bp = bf16.packed_pairs(rng.standard_normal((K, N)).astype(np.float32), False,
                           bf16.TILE_COLS)
    if left == "rows":
        Al = bf16.rounded_rows(A)
        return Al, Al.shape[1] // 2, 1, Al.shape[0], Bp
    if left == "strided":
        # any layout the panel's contract allows: pair (i, p) at i sai + p sap, every other
        # 32 bits a NaN pair (a read of one shows in the sums)
        rows, K2 = bf16.rounded_rows(A).shape[0], Bp.shape[0]
        sai, sap = 3, 3 * rows + 1
        pairs = np.full((rows - 1) * sai + (K2 - 1) * sap + 1, 0x7FC07FC0, dtype=np.uint32)
        source = bf16.rounded_rows(A).view(np.uint32)
        for i in range(rows):
            pairs[i * sai + np.arange(K2) * sap] = source[i]
        return pairs.view(np.uint16), sai, sap, rows, Bp
    Al = bf16.packed_pairs(np.ascontiguousarray(A.T), False, bf16.PANEL_ROWS)
    return Al, 1, Al.shape[1], Al.shape[1], Bp


def _run(address, Al, sai, sap, rows, Bp, transposed):
    K2, N = Bp.shape[:2]
    C = np.full((N, rows) if transposed else (rows, N), np.nan, np.float32)
    SIGNATURE(address)(Al.ctypes.data, Bp.ctypes.data, C.ctypes.data, rows, K2, N, sai, sap)
    return C.T if transposed else C


def _exact(Al, sai, sap, rows, Bp):
    """float64 product of the rounded operands."""
    widen = lambda h: (h.astype(np.uint32) << 16).view(np.float32).astype(np.float64)  # noqa: E731
    K2, N = Bp.shape[:2]
    pairs = Al.reshape(-1).view(np.uint32)
    A = np.array([[pairs[i * sai + p * sap] for p in range(K2)] for i in range(rows)],
                 dtype=np.uint32).view(np.uint16).reshape(rows, 2 * K2)
    return widen(A) @ widen(Bp.transpose(0, 2, 1).reshape(2 * K2, N))


@pytest.fixture(scope="module")
def emulated():
    return amx.panels(emulate=True)


# rows: whole 32-row blocks and a part block; depth: whole steps of 16 pairs, a rest, and
# only a rest; columns: one or more blocks of 32
@pytest.mark.parametrize("M, K, N", [(64, 64, 64), (64, 784, 256), (40, 50, 96),
                                     (8, 10, 32), (72, 100, 64), (96, 32, 32)])
@pytest.mark.parametrize("left", ["rows", "pairs", "strided"])
@pytest.mark.parametrize("transposed", [False, True])
def test_the_panel_sums_every_block_and_the_depths_rest(emulated, M, K, N, left, transposed):
    operands = _operands(M, K, N, left)
    C = _run(emulated[transposed].address, *operands, transposed)
    exact = _exact(*operands)
    K2 = operands[4].shape[0]
    # float32 sums of K terms; the padding rows and columns are exact zeros
    bound = 2 * K2 * 2.0 ** -24 * (np.abs(_exact(*_abs(operands))) + 1e-30)
    assert not np.isnan(C).any()            # every output written (C starts as NaN)
    assert np.all(np.abs(C - exact) <= bound)


def _abs(operands):
    Al, sai, sap, rows, Bp = operands
    return (Al & np.uint16(0x7FFF), sai, sap, rows, Bp & np.uint16(0x7FFF))


def test_the_panel_compiles_to_tile_instructions_for_a_sapphire_rapids(tmp_path):
    """Compiled (not run) for a CPU with AMX, in a new process told to compile for one (with
    a Numba cache of its own: nothing compiled for that CPU is left for this one)."""
    features = ("+amx-tile,+amx-bf16,+avx512f,+avx512bw,+avx512vl,+avx512dq,+avx512cd,"
                "+avx512bf16,+avx2,+avx,+fma,+f16c,+bmi,+bmi2,+lzcnt,+popcnt,+sse4.2")
    code = ("from fastbp.kernels import amx\n"
            "asm = amx.panels()[0]._library.get_asm_str()\n"
            "print(*(asm.count(i) for i in ('tdpbf16ps', 'tileloadd', 'tilestored', "
            "'ldtilecfg', 'tilerelease')))")
    env = dict(os.environ, NUMBA_CPU_NAME="sapphirerapids", NUMBA_CPU_FEATURES=features,
               NUMBA_DISABLE_JIT="0", NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    dots, loads, stores, configs, releases = map(int, done.stdout.split()[-5:])
    assert dots >= 8 and dots % 4 == 0    # whole steps and the rest, four tiles each
    assert loads >= 4 and stores >= 4 and configs >= 1 and releases >= 1


@pytest.mark.skipif(not (amx.available() and not amx.emulated()),
                    reason="the tiles themselves need a CPU with AMX-BF16 and Linux's "
                           "permission (the panel's logic is checked on its stand-ins above)")
def test_the_panel_on_the_tiles_equals_its_stand_ins(emulated):
    tiles = amx.panels()
    for M, K, N in ((64, 784, 256), (40, 50, 96), (72, 100, 64), (8, 10, 32), (96, 32, 32)):
        for left in ("rows", "pairs", "strided"):
            for transposed in (False, True):
                operands = _operands(M, K, N, left, seed=3)
                on_tiles = _run(tiles[transposed].address, *operands, transposed)
                stand_in = _run(emulated[transposed].address, *operands, transposed)
                # the same float32 sums, up to their order inside an instruction
                bound = 4 * operands[4].shape[0] * 2.0 ** -24 * np.abs(
                    _exact(*_abs(operands)))
                assert np.all(np.abs(on_tiles - stand_in) <= bound + 1e-30)
                assert np.all(np.abs(on_tiles - _exact(*operands)) <= bound + 1e-30)


ON_TILES = """
import numpy as np
from fastbp import Trainer
from fastbp.kernels import bf16, gemm
gemm.enable_bf16()
print(bf16.panel_kind())
rng = np.random.default_rng(0)
for kind, M, K, N in ((0, 100, 130, 70), (0, 64, 256, 64), (1, 77, 129, 96),
                      (2, 100, 129, 200), (2, 64, 128, 256)):
    A = rng.standard_normal((K, M) if kind == 1 else (M, K)).astype(np.float32)
    B = rng.standard_normal((N, K) if kind == 2 else (K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) * (kind == 0)
    C = np.full((M, N), np.nan, np.float32)
    gemm.product(kind, C, A, B, bias, True)
    full = np.empty_like(C)
    gemm.product(kind, full, A, B, bias, False)
    assert np.abs(C - full).max() < 0.05 * np.abs(full).max(), (kind, M, K, N)
X = rng.standard_normal((256, 64)).astype(np.float32)
y = rng.integers(0, 10, 256)
for precision in ("full", "bf16"):
    t = Trainer([64, 256, 128, 10], batch_size=128, seed=0, precision=precision)
    t.fit(X, y, epochs=2, shuffle=False, progress=False)
    print(t.history["loss"][-1])
"""


HARDWARE = amx.available() and not amx.emulated()


@pytest.mark.parametrize("setting", [
    "emulate", pytest.param("1", marks=pytest.mark.skipif(
        not HARDWARE, reason="the tiles need a CPU with AMX-BF16 (the same run on their "
                             "stand-ins is the other case)"))])
def test_bf16_models_train_on_the_amx_panel(setting):
    """The kernels' bf16 products and a bf16 fit run through the AMX panel: on its stand-ins
    where FASTBP_AMX=emulate, else on the tiles where the CPU has them (a new process: the
    panel is chosen once per process)."""
    env = dict(os.environ, FASTBP_AMX=setting)
    done = subprocess.run([sys.executable, "-c", ON_TILES], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    kind, full, half = done.stdout.split()[-3:]
    assert kind == ("amx-emulated" if setting == "emulate" else "amx")
    assert float(full) != float(half) and abs(float(full) - float(half)) < 0.02 * float(full)


def test_tiles_the_process_cannot_use_get_a_warning(monkeypatch):
    """A CPU with AMX whose tiles this process may not use (an older Linux) would run bf16 on
    VDPBF16PS, slower than float32 on such CPUs: the Trainer says so. FASTBP_AMX=0 (the
    user's choice) and CPUs without the tiles stay silent."""
    import warnings

    from fastbp import Trainer
    monkeypatch.setattr(amx, "hardware_features", lambda: frozenset({"amx-tile", "amx-bf16"}))
    monkeypatch.setattr(amx, "available", lambda: False)
    monkeypatch.setattr(bf16, "host_has_avx512_bf16", lambda: True)
    monkeypatch.setattr("fastbp.trainer.host_has_avx512_bf16", lambda: True)
    monkeypatch.delenv("FASTBP_AMX", raising=False)
    with pytest.warns(UserWarning, match="AMX tiles are not available"):
        Trainer([64, 256, 10], precision="bf16")
    for setting, features in (("0", {"amx-tile", "amx-bf16"}), ("1", set())):
        monkeypatch.setenv("FASTBP_AMX", setting)
        monkeypatch.setattr(amx, "hardware_features", lambda f=features: frozenset(f))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            Trainer([64, 256, 10], precision="bf16")


UNBUILDABLE = """
import warnings
import numpy as np
from fastbp.kernels import amx, bf16, gemm


def unbuildable(emulate=False):
    raise RuntimeError("no tiles today")


amx.panels = unbuildable
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    gemm.enable_bf16()
rng = np.random.default_rng(0)
A = rng.standard_normal((64, 256)).astype(np.float32)
B = rng.standard_normal((256, 64)).astype(np.float32)
C, full = np.empty((64, 64), np.float32), np.empty((64, 64), np.float32)
gemm.product(0, C, A, B, np.zeros(64, np.float32), True)
gemm.product(0, full, A, B, np.zeros(64, np.float32), False)
assert np.abs(C - full).max() < 0.05 * np.abs(full).max()
print(bf16.panel_kind(), any("AMX panel could not be compiled" in str(w.message) for w in caught))
"""


def test_an_amx_panel_that_cannot_be_built_leaves_bf16_working():
    """If the AMX panel fails to compile (a Numba or LLVM that cannot build it), bf16
    products fall back to the next panel with a warning instead of failing every fit."""
    env = dict(os.environ, FASTBP_AMX="emulate")
    done = subprocess.run([sys.executable, "-c", UNBUILDABLE], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    kind, warned = done.stdout.split()[-2:]
    assert kind in ("avx512-bf16", "emulated") and warned == "True"
