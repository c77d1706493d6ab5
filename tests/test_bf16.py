"""precision="bf16": the large products of training steps from operands rounded to bfloat16,
float32 sums (kernels/bf16.py, gemm.py's bf16 entry points). The products are checked
against the exact product of the rounded operands (the maths they promise), the Trainer
against precision="full" (close, never equal; evaluation identical)."""
import warnings

import numba
import numpy as np
import pytest
from numba import njit

from fastbp import Trainer
from fastbp.kernels import bf16, gemm


def _round(x):
    """float32 x rounded to bf16, to nearest even, as float64 (NumPy, not the kernels')."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32).astype(np.float64)


@njit
def _bits(U):
    out = np.empty(U.shape, np.uint16)
    for i in range(U.shape[0]):
        out[i] = bf16.bf16_bits(U[i])
    return out


def test_rounding_is_to_nearest_even_and_keeps_nan_and_inf():
    bits = np.array([0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001,   # ties to even, else nearest
                     0x7F800000, 0xFF800000, 0x7F7FFFFF,               # inf, -inf, max -> inf
                     0x7FFFFFFF, 0xFFC00001, 0x7F800001], np.uint32)   # NaNs stay NaN
    out = _bits(bits)
    assert out[:7].tolist() == [0x3F80, 0x3F82, 0x3F80, 0x3F81, 0x7F80, 0xFF80, 0x7F80]
    back = (out.astype(np.uint32) << 16).view(np.float32)
    assert np.isnan(back[7:]).all()


def test_operands_are_padded_with_zeros_to_whole_tiles():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((13, 7)).astype(np.float32)         # odd depth, rows not of 8
    R = bf16.rounded_rows(A)
    assert R.shape == (16, 8)
    assert not R[13:].any() and not R[:, 7].any()
    assert np.array_equal((R[:13, :7].astype(np.uint32) << 16).view(np.float32),
                          _round(A).astype(np.float32))
    B = rng.standard_normal((7, 40)).astype(np.float32)         # K = 7, N = 40 -> (4, 64, 2)
    P = bf16.packed_pairs(B, False, bf16.TILE_COLS)
    assert P.shape == (4, 64, 2)
    expect = np.zeros((8, 64))
    expect[:7, :40] = _round(B)
    got = (P.astype(np.uint32) << 16).view(np.float32).transpose(0, 2, 1).reshape(8, 64)
    assert np.array_equal(got, expect)
    assert np.array_equal(bf16.packed_pairs(np.ascontiguousarray(B.T), True, bf16.TILE_COLS), P)
    assert bf16.packed_pairs(B, False, bf16.PANEL_ROWS).shape == (4, 40, 2)   # a left operand


@pytest.mark.parametrize("kind, M, K, N", [
    (0, 100, 130, 70), (0, 64, 784, 256),          # nn: partial tiles; mnist's first layer
    (1, 77, 129, 96), (1, 256, 64, 128), (1, 784, 64, 100),   # tn: odd depth (the batch)
    (2, 100, 65 + 64, 200), (2, 40, 256, 64),      # nt: runs as C^T, A packed transposed,
    (2, 64, 128, 256)])                            # ... stored transposed (whole tiles)
def test_bf16_products_equal_the_exact_product_of_the_rounded_operands(kind, M, K, N):
    gemm.enable_bf16()          # as a bf16 model's first training epoch does
    rng = np.random.default_rng(M * K + N)
    A = rng.standard_normal((K, M) if kind == 1 else (M, K)).astype(np.float32)
    B = rng.standard_normal((N, K) if kind == 2 else (K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) if kind == 0 else np.zeros(N, np.float32)
    assert gemm.bf16_product(M, K, N, M if kind == 2 else N)
    C = np.full((M, N), np.nan, np.float32)
    gemm.product(kind, C, A, B, bias, True)
    a, b = _round(A.T if kind == 1 else A), _round(B.T if kind == 2 else B)
    exact = a @ b + bias
    scale = np.abs(a) @ np.abs(b)           # float32 sums: rounding relative to sum of |terms|
    assert np.all(np.abs(C - exact) <= 4 * K * 2.0 ** -24 * scale + 1e-30)
    # and the rounding shows: not the float32 product
    full = np.empty_like(C)
    gemm.product(kind, full, A, B, bias, False)
    assert not np.allclose(C, full, rtol=1e-4, atol=0)


@pytest.mark.parametrize("N, K", [(128, 128), (37, 99), (1, 64), (100, 1), (64, 1024)])
def test_pairs_of_rows_packs_as_packed_pairs_does(N, K):
    """gemm.pairs_of_rows (rows rounded, then their pairs transposed in registers), which nt
    products use, is packed_pairs(A, True) bit for bit, NaN and padding included."""
    A = np.random.default_rng(N).standard_normal((N, K)).astype(np.float32)
    A[0, 0], A[-1, -1] = np.nan, -np.inf
    assert np.array_equal(gemm.pairs_of_rows(A, bf16.TILE_COLS),
                          bf16.packed_pairs(A, True, bf16.TILE_COLS))


@pytest.mark.parametrize("kind, M, K, N", [(0, 8, 16, 16), (0, 128, 10, 1024),
                                           (2, 16, 300, 300), (1, 128, 128, 10)])
def test_small_shallow_and_narrow_products_stay_full_precision(kind, M, K, N):
    gemm.enable_bf16()
    assert not gemm.bf16_product(M, K, N, M if kind == 2 else N)
    rng = np.random.default_rng(1)
    A = rng.standard_normal((K, M) if kind == 1 else (M, K)).astype(np.float32)
    B = rng.standard_normal((N, K) if kind == 2 else (K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    C, full = np.empty((M, N), np.float32), np.empty((M, N), np.float32)
    gemm.product(kind, C, A, B, bias, True)
    gemm.product(kind, full, A, B, bias, False)
    assert np.array_equal(C, full)


def test_the_panel_compiles_to_vdpbf16ps_for_an_avx512_bf16_cpu():
    """Cross-compiled for a Zen 4, so it runs on any host."""
    import llvmlite.binding as llvm
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    module = llvm.parse_assembly(bf16.panel_module())      # both panels
    module.verify()
    machine = llvm.Target.from_triple("x86_64-unknown-linux-gnu").create_target_machine(
        cpu="znver4", opt=3)
    passes = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(3))
    passes.getModulePassManager().run(module, passes)
    n = machine.emit_assembly(module).count("vdpbf16ps")
    assert n and n % (bf16.PANEL_ROWS * bf16.PANEL_VECTORS) == 0, n   # 16 per depth step


@pytest.mark.skipif(not bf16.host_has_avx512_bf16(),
                    reason="running the native panel needs AVX512-BF16 (the emulation, "
                           "which other CPUs register, is checked by the tests above)")
def test_the_native_panels_and_the_emulation_agree():
    import ctypes

    from numba import cfunc, types
    u16p = types.CPointer(types.uint16)
    sig = types.void(u16p, u16p, types.CPointer(types.float32), *[types.intp] * 5)
    addresses, _engine = bf16.compile_native_panels()
    rng = np.random.default_rng(2)
    A = bf16.rounded_rows(rng.standard_normal((24, 98)).astype(np.float32))
    Bp = bf16.packed_pairs(rng.standard_normal((98, 64)).astype(np.float32), False,
                           bf16.TILE_COLS)
    signature = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 3, *[ctypes.c_int64] * 5)
    for symbol, body, shape in ((bf16.PANEL_SYMBOL, bf16._emulated_panel, (24, 64)),
                                (bf16.PANEL_T_SYMBOL, bf16._emulated_panel_t, (64, 24))):
        outs = []
        for address in (addresses[symbol], cfunc(sig)(body).address):
            C = np.full(shape, np.nan, np.float32)
            signature(address)(A.ctypes.data, Bp.ctypes.data, C.ctypes.data, 24, 49, 64, 49, 1)
            outs.append(C)
        np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs[0].T, _round_product(A, Bp), rtol=1e-5, atol=1e-5)


def _round_product(A, Bp):
    """float64 product of bf16 bits A (M, K) and packed Bp (K/2, N, 2)."""
    K2, N = Bp.shape[:2]
    widen = lambda h: (h.astype(np.uint32) << 16).view(np.float32).astype(np.float64)  # noqa: E731
    return widen(A) @ widen(Bp.transpose(0, 2, 1).reshape(2 * K2, N))


def _data(n=512, n_in=64, k=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n_in)).astype(np.float32), rng.integers(0, k, n)


LAYERS = [64, 256, 128, 10]   # at batch 128 (64-row chunks) the hidden products take bf16


def _trainer(**kw):
    # two threads at most: more chunks of fewer rows make the products too small for bf16
    # (at 16 threads, 8-row chunks: the fits were equal to float32's)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)      # the emulation's, on other CPUs
        return Trainer(LAYERS, optimizer="sgd", lr=0.1, batch_size=128, seed=0,
                       n_threads=_threads(kw.get("target", "cpu")), **kw)


def _threads(target):
    """Two threads at most for 'parallel'; none to give for 'cpu' (one thread)."""
    return min(2, numba.config.NUMBA_NUM_THREADS) if target == "parallel" else None


@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_bf16_training_is_close_to_full_and_evaluation_is_full_precision(target):
    X, y = _data()
    full, half = _trainer(target=target), _trainer(target=target, precision="bf16")
    assert np.array_equal(full.engine.params, half.engine.params)   # same initialisation
    # evaluation is the same code in both: loss, gradient and predictions equal
    assert full.loss(X, y) == half.loss(X, y)
    assert np.array_equal(full.predict_proba(X), half.predict_proba(X))
    for t in (full, half):
        t.fit(X, y, epochs=2, shuffle=False, progress=False)
    a, b = full.engine.params, half.engine.params
    assert not np.array_equal(a, b)                            # bf16 products were used
    assert np.abs(a - b).max() <= 0.02 * np.abs(a).max()       # ... and are close
    assert abs(full.history["loss"][-1] - half.history["loss"][-1]) < 0.02


def test_parallel_bf16_matches_cpu_bf16_to_float32_rounding():
    X, y = _data()
    fits = []
    for target in ("cpu", "parallel"):
        t = _trainer(target=target, precision="bf16")
        t.fit(X, y, epochs=1, shuffle=False, progress=False)
        fits.append(t.engine.params.copy())
    np.testing.assert_allclose(fits[0], fits[1], rtol=0, atol=1e-5)


def _epoch_runners(monkeypatch):
    """The epoch runners (engine._CpuEpochs) that fits make from now on, in a list."""
    from fastbp import engine
    runners, made = [], engine._CpuEpochs.__init__

    def spy(self, *args, **kwargs):
        made(self, *args, **kwargs)
        runners.append(self)
    monkeypatch.setattr(engine._CpuEpochs, "__init__", spy)
    return runners


# odd sizes: W_0 has an odd row count (its nn copy's last pair is half zero), W_1 an odd
# column count (its nt copy's rows padded); batch 128 in two chunks of 64 rows: the hidden
# products take bf16
ODD = [65, 256, 129, 10]


@pytest.mark.parametrize("target", ["cpu", "parallel"])
@pytest.mark.parametrize("optimizer, clip", [("sgd", None), ("adam", 1.0)])
def test_the_epochs_bf16_copies_of_w_hold_the_updated_weights(monkeypatch, target,
                                                              optimizer, clip):
    """A bf16 model's epoch keeps W_l in bf16 (Workspace.packed): after it, each copy equals
    W rounded and packed as the products would have done it themselves, from the weights
    as the last update left them (the update writes them, block by block)."""
    runners = _epoch_runners(monkeypatch)
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((300, ODD[0])).astype(np.float32), rng.integers(0, 10, 300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        t = Trainer(ODD, optimizer=optimizer, lr=0.05, batch_size=128, seed=0, target=target,
                    n_threads=_threads(target), clip_norm=clip,
                    precision="bf16")
    t.fit(X, y, epochs=2, progress=False)
    ws = runners[-1].ws
    copies = ws.pack_off[:, :2].tolist()
    assert copies == [[0, -1], [ws.pack_off[1, 0], ws.pack_off[1, 1]], [-1, -1]]
    assert (ws.pack_off[1, :2] > 0).all()                   # the hidden layers' copies
    assert (ws.pack_off[:, 2] == 128 // runners[-1].plan.chunks).all()   # a chunk's rows
    for l, W in enumerate(t.weights[:2]):
        nn = bf16.packed_pairs(W, False, bf16.TILE_COLS).reshape(-1)
        at = ws.pack_off[l, 0]
        assert np.array_equal(ws.packed[at:at + nn.size], nn)
        if l > 0:
            nt = bf16.rounded_rows(W).reshape(-1)
            at = ws.pack_off[l, 1]
            assert np.array_equal(ws.packed[at:at + nt.size], nt)


# n_0 = 97 (odd): with 10 zero columns a chunk keeps 87 of them, deep enough for bf16, so
# its first layer reads a compact W_0 through nn_bf16 instead of the copy
WIDE_IN = [97, 256, 129, 10]


@pytest.mark.parametrize("target", ["cpu", "parallel"])
@pytest.mark.parametrize("zero_columns, clip", [(False, None), (True, None), (False, 0.3)])
def test_bf16_fits_from_the_copies_of_w_equal_those_that_round_w_in_every_product(
        monkeypatch, target, zero_columns, clip):
    """Reading W from the epoch's bf16 copies changes where W is rounded, not the sums: the
    fits equal, bit for bit, those whose every product rounds and packs W itself
    (engine.BF16_WEIGHT_COPIES False), also when the weights are changed between fits (the
    next epoch copies them again), with a last batch too small for bf16, with gradient
    clipping (its global norm sums the same blocks either way), and with zero columns in X
    (the first layer then reads a compact W_0 of the columns kept, not the copy)."""
    from fastbp import engine
    rng = np.random.default_rng(2)
    # 532 rows: a last batch of 20, whose chunks' products are too small for bf16 (the
    # copies, made for a full batch's chunks, must not serve them)
    X = rng.standard_normal((532, WIDE_IN[0])).astype(np.float32)
    y = rng.integers(0, 10, 532)
    if zero_columns:
        X[:, 5:15] = 0.0
        # the compact W_0 is deep enough for bf16: that path is the one taken
        assert gemm.bf16_product(64, WIDE_IN[0] - 10, WIDE_IN[1], WIDE_IN[1])
    fits, histories, runners = [], [], _epoch_runners(monkeypatch)
    for copies in (True, False):
        monkeypatch.setattr(engine, "BF16_WEIGHT_COPIES", copies)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            t = Trainer(WIDE_IN, optimizer="sgd" if clip else "adam", lr=0.05 if clip else 1e-3,
                        batch_size=128, seed=0, target=target, clip_norm=clip,
                        n_threads=_threads(target), precision="bf16")
        t.fit(X, y, epochs=2, progress=False)
        t.weights[1][:7] *= -2.0
        t.fit(X[:, ::-1].copy(), y, epochs=1, progress=False)
        fits.append(t.engine.params.copy())
        histories.append(t.history["grad_norm"])
    assert np.array_equal(fits[0], fits[1])
    assert histories[0] == histories[1]
    with_copies = runners[0].ws
    assert (with_copies.pack_off[:2, 0] >= 0).all() and with_copies.pack_off[1, 1] >= 0
    if zero_columns:        # a full batch's chunks were compacted (the last batch's not)
        from fastbp.kernels import ops
        rows = with_copies.pack_off[0, 2]
        assert ops.skip_pays(rows, WIDE_IN[0], WIDE_IN[0] - 10, WIDE_IN[1])
        assert with_copies.touched.shape[1] == WIDE_IN[0]       # the skip is on


def test_the_full_batch_gradient_of_a_bf16_model_keeps_no_weight_copies(monkeypatch):
    """Only training epochs read the copies: the full-batch gradient's workspace (the
    evaluation net, full precision) allocates none."""
    from fastbp import engine
    made = []
    workspace = engine.Engine._workspace

    def spy(self, *args, **kwargs):
        ws = workspace(self, *args, **kwargs)
        made.append(ws)
        return ws
    monkeypatch.setattr(engine.Engine, "_workspace", spy)
    X, y = _data()
    t = _trainer(precision="bf16", target="parallel")
    t.gradient(X, y)
    assert made and all(ws.packed.size == 0 for ws in made)
    t.fit(X, y, epochs=1, progress=False)
    assert made[-1].packed.size > 0


def test_precision_survives_save_and_load_and_training_resumes_alike(tmp_path):
    X, y = _data()
    t = _trainer(precision="bf16")
    t.fit(X, y, epochs=1, shuffle=False, progress=False)
    t.save(tmp_path / "m.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        u = Trainer.load(tmp_path / "m.npz")
    assert u.config["precision"] == "bf16"
    for m in (t, u):
        m.fit(X, y, epochs=1, shuffle=False, progress=False)
    assert np.array_equal(t.engine.params, u.engine.params)


@pytest.mark.parametrize("kw, message", [
    (dict(precision="bf16", dtype="float64"), "precision='bf16' is not allowed"),
    (dict(precision="bf16", target="cuda"), "precision='bf16' is not allowed"),
    (dict(precision="fp8"), "one of 'full', 'bf16'")])
def test_bad_precision_is_refused_before_any_work(kw, message):
    with pytest.raises(ValueError, match=message):
        Trainer(LAYERS, **kw)


def test_a_cpu_without_the_instructions_gets_a_warning(monkeypatch):
    import fastbp.trainer
    monkeypatch.setattr(fastbp.trainer, "host_has_avx512_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no AVX512-BF16.*emulated"):
        Trainer(LAYERS, precision="bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(LAYERS)                                  # precision='full': no warning


def test_the_command_line_trains_in_bf16(tmp_path, capsys):
    from fastbp.cli import main
    out = tmp_path / "m.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["train", "--precision", "bf16", "--epochs", "2", "--batch-size", "128",
                     "--layers", "128,64", "--out", str(out)]) in (0, None)
    assert "bf16 products" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert Trainer.load(out).config["precision"] == "bf16"


EMULATED = """
import numpy as np
from fastbp.kernels import bf16
bf16.host_has_avx512_bf16 = lambda: False       # as on a CPU without the instructions
from fastbp import Trainer
from fastbp.kernels import gemm
gemm.enable_bf16()
assert all(f.__class__.__name__ == "CFunc" for f in bf16._owners["panel"])  # emulated


def r(x):
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32)
            .view(np.float32).astype(np.float64))

rng = np.random.default_rng(0)
for kind, M, K, N in ((0, 100, 130, 70), (0, 64, 256, 64), (1, 77, 129, 96),
                      (1, 256, 64, 128), (2, 100, 129, 200), (2, 64, 128, 256)):
    assert gemm.bf16_product(M, K, N, M if kind == 2 else N)
    A = rng.standard_normal((K, M) if kind == 1 else (M, K)).astype(np.float32)
    B = rng.standard_normal((N, K) if kind == 2 else (K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) * (kind == 0)
    C = np.full((M, N), np.nan, np.float32)
    gemm.product(kind, C, A, B, bias, True)
    a, b = r(A.T if kind == 1 else A), r(B.T if kind == 2 else B)
    assert np.all(np.abs(C - (a @ b + bias)) <= 4 * K * 2.0 ** -24 * (np.abs(a) @ np.abs(b)))
X = rng.standard_normal((256, 64)).astype(np.float32)
y = rng.integers(0, 10, 256)
losses = []
for precision in ("full", "bf16"):
    t = Trainer([64, 256, 128, 10], batch_size=128, seed=0, precision=precision)
    t.fit(X, y, epochs=2, shuffle=False, progress=False)
    losses.append(t.history["loss"][-1])
print(*losses)
"""


def test_without_avx512_bf16_the_emulation_computes_the_same_products():
    """A CPU without AVX512-BF16 (CI's may be one) registers the emulated panel: the same
    products to float32 rounding, and a bf16 fit runs on it (a new process: the panel's
    symbol is chosen once per process)."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", EMULATED], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    full, half = map(float, done.stdout.split()[-2:])
    assert full != half and abs(full - half) < 0.02 * full


FRESH = """
import pickle, sys
import numpy as np
from fastbp import Trainer
rng = np.random.default_rng(0)
X = rng.standard_normal((256, 64)).astype(np.float32)
y = rng.integers(0, 10, 256)
if sys.argv[1] == "fit":          # no explicit gemm.enable_bf16(): the Trainer's fit does it
    t = Trainer([64, 256, 128, 10], batch_size=128, seed=0, precision="bf16")
    with open(sys.argv[2], "wb") as f:
        pickle.dump(t, f)
    fits = {}
    for precision in ("full", "bf16"):
        u = Trainer([64, 256, 128, 10], batch_size=128, seed=0, precision=precision)
        u.fit(X, y, epochs=1, shuffle=False, progress=False)
        fits[precision] = u.engine.params
    np.savez(sys.argv[3], **fits)
else:                             # a new process: the unpickled model trains in bf16 too
    with open(sys.argv[2], "rb") as f:
        t = pickle.load(f)
    t.fit(X, y, epochs=1, shuffle=False, progress=False)
    np.save(sys.argv[3], t.engine.params)
"""


def test_a_bf16_model_trains_in_bf16_in_a_new_process_also_when_unpickled(tmp_path):
    import subprocess
    import sys
    model, fits, again = tmp_path / "t.pkl", tmp_path / "fits.npz", tmp_path / "again.npy"
    for args in (["fit", model, fits], ["unpickle", model, again]):
        done = subprocess.run([sys.executable, "-c", FRESH, *map(str, args)],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    fits = np.load(fits)
    assert not np.array_equal(fits["full"], fits["bf16"])
    assert np.array_equal(np.load(again), fits["bf16"])


def test_loading_a_bf16_model_for_the_gpu_falls_back_to_full_precision(tmp_path):
    from fastbp.kernels.cuda_backend import CudaUnavailableError
    _trainer(precision="bf16").save(tmp_path / "m.npz")
    with pytest.warns(UserWarning, match="precision='bf16'.*precision='full'"):
        try:
            t = Trainer.load(tmp_path / "m.npz", target="cuda")
        except CudaUnavailableError:      # no GPU here: the precision was not the problem
            return
    assert t.config["precision"] == "full"
