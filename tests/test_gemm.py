"""gemm.py's SIMD products of small layers against NumPy in float64, and the layers that use
them (or BLAS, where gemm.small says) against the float64 reference."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import njit

import reference as ref
from fastbp import Trainer
from fastbp.kernels import codes, gemm

DTYPES = [np.float32, np.float64]


@njit
def _nn(C, A, B, bias):
    gemm.nn(C, A, B, bias)


@njit
def _tn(C, A, B):
    gemm.tn(C, A, B)


@njit
def _nt(C, A, B):
    gemm.nt(C, A, B, np.empty((A.shape[1] + 1) * B.shape[0], dtype=C.dtype))


# rows (panels of 6, 4, 2, 1 and every remainder), depth, columns (whole tiles of 2 vectors,
# a partial last tile of one or two vectors, fewer columns than one vector)
ROWS = [1, 2, 3, 4, 5, 6, 7, 10, 11, 13]
DEPTHS = [1, 5, 17, 40, 67]        # nt's dot products from 4 vectors of AVX2 (40) and AVX-512 (67)
COLUMNS = [1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 40, 67]
SENTINEL = 7.0
ROOT = Path(__file__).resolve().parents[1]


def _tolerance(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


def _output(M, N, dtype):
    """A (M, N) output inside a larger buffer that holds SENTINEL before and after it, as the
    kernels' matrices are views of their flat buffers: a store past either end shows."""
    buf = np.full(M * N + 64, SENTINEL, dtype=dtype)
    out = buf[32:32 + M * N].reshape(M, N)
    out[:] = np.nan
    return buf, out


def _untouched(buf, M, N):
    return (buf[:32] == SENTINEL).all() and (buf[32 + M * N:] == SENTINEL).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_products_match_numpy(dtype):
    rng = np.random.default_rng(0)
    for M in ROWS:
        for K in DEPTHS:
            for N in COLUMNS:
                A = rng.standard_normal((M, K)).astype(dtype)
                At = rng.standard_normal((K, M)).astype(dtype)
                B = rng.standard_normal((K, N)).astype(dtype)
                Bt = rng.standard_normal((N, K)).astype(dtype)
                bias = rng.standard_normal(N).astype(dtype)
                expected = {
                    "nn": A.astype(np.float64) @ B + bias,
                    "tn": At.T.astype(np.float64) @ B,
                    "nt": A.astype(np.float64) @ Bt.T,
                }
                for name, run in (("nn", lambda C: _nn(C, A, B, bias)),
                                  ("tn", lambda C: _tn(C, At, B)),
                                  ("nt", lambda C: _nt(C, A, Bt))):
                    buf, C = _output(M, N, dtype)
                    run(C)
                    assert C.dtype == dtype
                    np.testing.assert_allclose(C, expected[name], **_tolerance(dtype),
                                               err_msg=f"{name} {M}x{K}x{N}")
                    assert _untouched(buf, M, N), f"{name} {M}x{K}x{N} wrote outside C"


def _wrappers(vector_bytes):
    """Compiled calls of one panel of every kind at `vector_bytes` (not the host's)."""
    main = gemm.block(vector_bytes)[0]
    panels = {MR: gemm.panel_intrinsic(MR, vector_bytes) for MR in (main, 4, 2, 1)}
    dots = {MR: gemm.dot_panel_intrinsic(MR, 3, vector_bytes) for MR in (3, 2, 1)}
    calls = {}
    for MR, panel in panels.items():
        calls["nn", MR] = njit(lambda C, A, B, bias, panel=panel: panel(
            A, 0, A.shape[1], 1, B, C, 0, A.shape[1], C.shape[1], bias, True))
        calls["tn", MR] = njit(lambda C, At, B, panel=panel: panel(
            At, 0, 1, At.shape[1], B, C, 0, At.shape[0], C.shape[1], C[0], False))
    for MR, dot in dots.items():
        calls["nt", MR] = njit(lambda C, A, Bt, dot=dot: dot(A, 0, Bt, C, 0, A.shape[1],
                                                             C.shape[1]))
    return calls


@pytest.mark.parametrize("dtype", DTYPES)
def test_panels_at_the_other_vector_width(dtype):
    """The AVX-512 width on an AVX2 host (LLVM splits the vectors) and AVX2's on an AVX-512
    host: both widths' IR computes the same products."""
    other = 32 if gemm.VECTOR_BYTES == 64 else 64
    rng = np.random.default_rng(1)
    for (kind, MR), call in _wrappers(other).items():
        for K, N in ((3, 5), (9, 33), (17, 70)):
            A = rng.standard_normal((MR, K)).astype(dtype)
            At = rng.standard_normal((K, MR)).astype(dtype)
            B = rng.standard_normal((K, N)).astype(dtype)
            Bt = rng.standard_normal((N, K)).astype(dtype)
            bias = rng.standard_normal(N).astype(dtype)
            buf, C = _output(MR, N, dtype)
            if kind == "nn":
                call(C, A, B, bias)
                expected = A.astype(np.float64) @ B + bias
            elif kind == "tn":
                call(C, At, B)
                expected = At.T.astype(np.float64) @ B
            else:
                call(C, A, Bt)
                expected = A.astype(np.float64) @ Bt.T
            np.testing.assert_allclose(C, expected, **_tolerance(dtype),
                                       err_msg=f"{kind} MR={MR} {K}x{N} at {other} bytes")
            assert _untouched(buf, MR, N)


_panel_4x3 = gemm.panel_intrinsic(4, nv=3)
_panel_2x4 = gemm.panel_intrinsic(2, nv=4)


@njit
def _wide_tiles(C, A, B, bias, nv):
    if nv == 3:
        _panel_4x3(A, 0, A.shape[1], 1, B, C, 0, A.shape[1], C.shape[1], bias, True)
    else:
        _panel_2x4(A, 0, A.shape[1], 1, B, C, 0, A.shape[1], C.shape[1], bias, True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_panels_of_more_vectors_per_tile(dtype):
    """Tiles of 3 and 4 vectors of columns (benchmarks/panel_probe.py's other blocks): whole
    tiles, and a last tile of each possible number of vectors, its last one partial or whole."""
    lanes = gemm.VECTOR_BYTES // np.dtype(dtype).itemsize
    rng = np.random.default_rng(2)
    for MR, nv in ((4, 3), (2, 4)):
        for N in sorted({1, lanes - 1, lanes, lanes + 1, 2 * lanes + 3, 3 * lanes,
                         nv * lanes, nv * lanes + 1, (nv + 2) * lanes - 1, 2 * nv * lanes}):
            A = rng.standard_normal((MR, 7)).astype(dtype)
            B = rng.standard_normal((7, N)).astype(dtype)
            bias = rng.standard_normal(N).astype(dtype)
            buf, C = _output(MR, N, dtype)
            _wide_tiles(C, A, B, bias, nv)
            np.testing.assert_allclose(C, A.astype(np.float64) @ B + bias, **_tolerance(dtype),
                                       err_msg=f"{MR}x{nv}, {N} columns")
            assert _untouched(buf, MR, N)


@njit
def _transpose(T, B):
    gemm.transpose_into(T, B)


@pytest.mark.parametrize("dtype", DTYPES)
def test_transpose_matches_numpy(dtype):
    """transpose_into (nt's scratch for nn's panels): whole blocks of a vector's lanes,
    partial ones at either edge, and operands smaller than one block; nothing written
    outside T."""
    rng = np.random.default_rng(2)
    for N in (1, 3, 8, 10, 16, 17, 33, 64, 100):
        for K in (1, 2, 8, 10, 16, 31, 32, 64, 67):
            B = rng.standard_normal((N, K)).astype(dtype)
            buf, T = _output(K, N, dtype)
            _transpose(T, B)
            np.testing.assert_array_equal(T, B.T, err_msg=f"{N}x{K}")
            assert _untouched(buf, K, N), f"{N}x{K} wrote outside T"


@pytest.mark.parametrize("dtype", DTYPES)
def test_transpose_block_at_both_vector_widths(dtype):
    """One block of V x V (V: the lanes of 32- and of 64-byte vectors) inside larger
    matrices, at offsets, as transpose_into calls it."""
    rng = np.random.default_rng(3)
    for vector_bytes in (32, 64):
        V = vector_bytes // np.dtype(dtype).itemsize
        block = gemm.transpose_block_intrinsic(vector_bytes)
        call = njit(lambda B, T, i0, p0, block=block: block(
            B, i0 * B.shape[1] + p0, B.shape[1], T, p0 * T.shape[1] + i0, T.shape[1]))
        B = rng.standard_normal((V + 5, V + 3)).astype(dtype)
        T = np.zeros((V + 3, V + 5), dtype=dtype)
        call(B, T, 4, 2)
        expected = np.zeros_like(T)
        expected[2:2 + V, 4:4 + V] = B[4:4 + V, 2:2 + V].T
        np.testing.assert_array_equal(T, expected, err_msg=f"{vector_bytes} bytes")


def test_input_gradient_rule():
    """Which route dZ W^T takes (`compare.py --products`): nn's panels over W transposed
    wherever nn's rule takes the product, but float64 dot products of 4 vectors or more;
    dot products or BLAS otherwise."""
    assert gemm.nt_by_transpose(32, 64, 64, 4) is True        # regression's hidden layer
    assert gemm.nt_by_transpose(32, 128, 128, 4) is True      # deep's
    assert gemm.nt_by_transpose(100, 10, 100, 8) is True      # digits' output layer
    assert gemm.nt_by_transpose(128, 10, 1024, 4) is True     # wide's output layer
    assert gemm.nt_by_transpose(32, 1, 64, 4) is True         # one output
    assert gemm.nt_by_transpose(32, 128, 128, 8) is False     # float64 dot products
    assert gemm.small_nt(32, 128, 128, 8) is True
    assert gemm.nt_by_transpose(64, 128, 256, 4) is True      # mnist's (2^21), as nn's rule
    assert gemm.nt_by_transpose(128, 1024, 1024, 4) is False  # wide's hidden layer: BLAS
    assert gemm.small_nt(128, 1024, 1024, 4) is False


def test_panels_refuse_other_arrays():
    with pytest.raises(Exception, match="C-contiguous 2-D"):
        _nn(np.zeros((3, 4)), np.zeros((5, 3)).T, np.zeros((5, 4)), np.zeros(4))
    with pytest.raises(Exception, match="one float dtype"):
        _nn(np.zeros((3, 4)), np.zeros((3, 5), np.float32), np.zeros((5, 4)), np.zeros(4))


def test_size_rule_follows_the_vector_width():
    """Which products the loops take (`compare.py --products`): with AVX-512 every hidden
    product of mnist's shapes (64 x 784 x 256 at most) in either dtype, not wide's products
    of 100M multiply-adds, and not float64 outputs narrower than 16 columns or right
    operands of 2 MiB; with AVX2 up to 2^22 multiply-adds (float64: 2^21). Never a single
    column."""
    wide_vectors = gemm.VECTOR_BYTES == 64
    for itemsize in (4, 8):
        assert gemm.small(64, 784, 256, itemsize) == wide_vectors
        assert gemm.small(784, 64, 256, itemsize) == wide_vectors
        assert gemm.small(128, 1024, 1024, itemsize) is False
        assert gemm.small(32, 128, 128, itemsize) is True
        assert gemm.small(32, 64, 1, itemsize) is False
    assert gemm.small(100, 100, 10, 8) == (not wide_vectors)
    assert gemm.small(100, 100, 10, 4) is True
    assert gemm.small(100, 100, 16, 8) is True
    # a right operand (K x N) of 2 MiB or more: float64 to BLAS with AVX-512, float32 not
    assert gemm.small(64, 512, 512, 8) is False
    assert gemm.small(16, 1024, 1024, 4) == wide_vectors
    # bf16 keeps the products over 2^19 (the loops' float32 rule would take mnist's)
    assert gemm.bf16_product(64, 784, 256, 256) is True
    assert gemm.bf16_product(32, 128, 128, 128) is False


@pytest.mark.skipif("avx2" not in codes.hardware_features(),
                    reason="code for x86-64-v3 needs a CPU with AVX2")
def test_size_rule_of_an_avx2_cpu():
    """The AVX2 rule, in a process compiling for x86-64-v3 (as on a CPU without AVX-512):
    the loops take products up to 2^22 multiply-adds in float32 and 2^21 in float64
    (digits' 100 x 64 x 100, mnist's 64 x 256 x 128, wide's 128 x 1024 x 10), not mnist's
    64 x 784 x 256; nt's dot products and bf16 keep 2^19."""
    code = ("from fastbp.kernels import gemm\n"
            "assert gemm.VECTOR_BYTES == 32, gemm.VECTOR_BYTES\n"
            "for itemsize in (4, 8):\n"
            "    assert gemm.small(100, 64, 100, itemsize)\n"
            "    assert gemm.small(64, 256, 128, itemsize)\n"
            "    assert gemm.small(128, 1024, 10, itemsize)\n"
            "    assert not gemm.small(64, 784, 256, itemsize)\n"
            "    assert not gemm.small(32, 64, 1, itemsize)\n"
            "assert gemm.small(64, 256, 256, 4) and not gemm.small(64, 256, 256, 8)\n"
            "assert not gemm.small_nt(64, 128, 256, 8)\n"
            "print('ok')\n")
    env = {**os.environ, "NUMBA_CPU_NAME": "x86-64-v3", "NUMBA_CPU_FEATURES": "",
           "FASTBP_PREBUILT": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("sizes, batch, paths", [
    # every product small: nn, tn; nt over W transposed, but float64's dot products where
    # the layer's outputs are >= 4 vectors long (64 float64 are 4 vectors of AVX2, 8 of
    # AVX-512)
    ([20, 48, 64, 3], 23, {"small": True, "nt": {"float32": {"transposed"},
                                                 "float64": {"dots", "transposed"}}}),
    # the hidden layers' products over gemm.small's threshold (2^24 multiply-adds with
    # AVX-512, 2^22 without): BLAS (the output layer's are small)
    ([40, 1200, 800, 2], 23, {"small": False, "nt": {"float32": {"BLAS", "transposed"},
                                                     "float64": {"BLAS", "transposed"}}}),
])
def test_layers_match_reference_on_both_sides_of_the_threshold(sizes, batch, paths, dtype):
    itemsize = np.dtype(dtype).itemsize
    hidden = list(zip(sizes[1:-1], sizes[2:]))         # (n_in, n_out) of layers with dA

    def route(M, K, N):
        return ("transposed" if gemm.nt_by_transpose(M, K, N, itemsize) else
                "dots" if gemm.small_nt(M, K, N, itemsize) else "BLAS")

    # the test covers the paths it names (so it cannot silently stop covering them)
    assert gemm.small(batch, sizes[1], sizes[2], itemsize) == paths["small"]
    assert {route(batch, n_out, n_in) for n_in, n_out in hidden} == paths["nt"][dtype]
    t = Trainer(sizes, activation="tanh", loss="cross_entropy", dtype=dtype, seed=3,
                batch_size=batch)
    t.params = t.params + np.random.default_rng(4).normal(scale=0.1, size=t.n_params)
    rng = np.random.default_rng(5)
    X = rng.standard_normal((batch, sizes[0]))
    y = rng.integers(0, sizes[-1], size=batch)
    Ws, bs = ref.unflatten(t.params.astype(np.float64), sizes)
    value, dWs, dbs = ref.loss_and_grad(Ws, bs, X.astype(dtype).astype(np.float64), y,
                                        ["tanh", "tanh"], "cross_entropy")
    tol = dict(rtol=1e-10, atol=1e-13) if dtype == "float64" else dict(rtol=2e-3, atol=2e-5)
    assert t.loss(X, y) == pytest.approx(value, rel=tol["rtol"])
    np.testing.assert_allclose(t.gradient(X, y), ref.flatten(dWs, dbs), **tol)


CALLER = '''
import sys
import numpy as np
from numba import njit
from fastbp.kernels import gemm


@njit(cache=True)
def forward(C, A, B, bias):
    gemm.nn(C, A, B, bias)


rng = np.random.default_rng(0)
A, B, bias = rng.random((7, 5)), rng.random((5, 9)), rng.random(9)
C = np.zeros((7, 9))
forward(C, A, B, bias)
assert np.allclose(C, A @ B + bias)
print(forward.stats.cache_hits.get(forward.signatures[0], 0))
'''


def test_a_kernel_loaded_from_the_cache_finds_the_entry_points(tmp_path):
    """The entry points are C functions called by symbol: a cached caller loaded in a new
    process has its reload hook register them first (without it, loading the caller's code
    aborts the process: the JIT's linker cannot resolve the symbol)."""
    import os
    import subprocess
    import sys
    (tmp_path / "caller.py").write_text(CALLER)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT),
               FASTBP_PREBUILT="0")
    hits = []
    for _ in range(2):
        run = subprocess.run([sys.executable, str(tmp_path / "caller.py")], env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        hits.append(int(run.stdout.split()[-1]))
    assert hits == [0, 1]          # compiled, then loaded from the cache


STEP = """
import sys
import numpy as np
from fastbp import Trainer
rng = np.random.default_rng(0)
X, y = rng.standard_normal((40, 4)), rng.integers(0, 3, 40)
t = Trainer([4, 8, 3], target="cpu", seed=0)
if sys.argv[1] == "gradient":
    t.gradient(X, y)
else:
    t.fit(X, y, epochs=1, progress=False)
"""


def test_kernels_compiled_against_cached_callees_find_the_entry_points(tmp_path):
    """A kernel compiled in a process where its callees came from the cache does not get
    their reload hook from Numba (it is not kept in a cached library): the engine registers
    the products' symbols before running any kernel. Without it the third process, which
    loads the epoch kernel compiled by the second, crashed (SIGSEGV)."""
    import os
    import subprocess
    import sys
    (tmp_path / "step.py").write_text(STEP)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT),
               FASTBP_PREBUILT="0")
    for what in ("gradient", "fit", "fit"):
        run = subprocess.run([sys.executable, str(tmp_path / "step.py"), what], env=env,
                             capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, (what, run.returncode, run.stderr[-2000:])
