"""The bf16 product prototype of benchmarks/bf16_products.py (issue 15, mixed precision):
the figures it reports are only worth something if its products are right."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import bf16_products as bf  # noqa: E402


def _bf16_to_f64(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def test_rounding_to_bf16_is_to_nearest_even_and_the_pairs_are_packed_along_the_depth():
    _, to_bf16, pack_pairs = bf._kernels()
    # exact ties (0x8000 below the kept bits) go to the even neighbour, others to nearest
    bits = np.array([0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0xBF80C000],
                    dtype=np.uint32)
    out = np.empty((1, bits.size), np.uint16)
    to_bf16(bits.view(np.float32).reshape(1, -1), out)
    assert out.ravel().tolist() == [0x3F80, 0x3F82, 0x3F80, 0x3F81, 0xBF80 + 1]
    B = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    rounded = np.empty_like(B, dtype=np.uint16)
    to_bf16(B, rounded)
    packed = np.empty((3, 5, 2), np.uint16)
    pack_pairs(B, False, packed)
    assert np.array_equal(packed, rounded.reshape(3, 2, 5).transpose(0, 2, 1))
    pack_pairs(np.ascontiguousarray(B.T), True, packed)      # B given as B^T (N, K)
    assert np.array_equal(packed, rounded.reshape(3, 2, 5).transpose(0, 2, 1))


def test_the_panel_compiles_to_one_vdpbf16ps_per_accumulator_and_depth_step():
    """Cross-compiled for an AVX512-BF16 CPU, so it runs on any host: 16 accumulators of
    16 float32 each, so 16 VDPBF16PS per pair of depths (LLVM may unroll the depth loop)."""
    import llvmlite.binding as llvm
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    module = llvm.parse_assembly(bf._panel_ir())
    module.verify()
    machine = llvm.Target.from_triple("x86_64-unknown-linux-gnu").create_target_machine(
        cpu="znver4", opt=3)
    passes = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(3))
    passes.getModulePassManager().run(module, passes)
    asm = machine.emit_assembly(module)
    n = asm.count("vdpbf16ps")
    assert n and n % (bf.PANEL_ROWS * bf.PANEL_VECTORS) == 0, n


def _has_avx512_bf16():
    import llvmlite.binding as llvm
    return bool(llvm.get_host_cpu_features().get("avx512bf16", False))


@pytest.mark.skipif(not _has_avx512_bf16(), reason="executing the panel needs AVX512-BF16")
@pytest.mark.parametrize("M, K, N", [(8, 2, 32), (16, 130, 64), (64, 784, 96)])
def test_the_panel_equals_the_exact_product_of_the_rounded_operands(M, K, N):
    panel, _engine = bf.bf16_panel()
    _, to_bf16, pack_pairs = bf._kernels()
    rng = np.random.default_rng(M + K + N)
    A = rng.standard_normal((M, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    Ab, Bp = np.empty((M, K), np.uint16), np.empty((K // 2, N, 2), np.uint16)
    to_bf16(A, Ab)
    pack_pairs(B, False, Bp)
    C = np.full((M, N), np.nan, np.float32)
    panel(Ab.ctypes.data, Bp.ctypes.data, C.ctypes.data, M, K // 2, N)
    exact = _bf16_to_f64(Ab) @ _bf16_to_f64(Bp.transpose(0, 2, 1).reshape(K, N))
    # float32 sums of exact bf16 x bf16 products: float32 rounding only
    np.testing.assert_allclose(C, exact, rtol=0, atol=2e-6 * K * np.abs(exact).max())
