"""target='cuda' where there is no GPU: the simulator run of tests/cuda, the kernels compiled
to PTX by NVVM, and the errors a user gets when a piece is missing."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CUDA_TESTS
from fastbp import CudaUnavailableError, Trainer
from fastbp.kernels import cuda_backend, gpu

ROOT = Path(__file__).resolve().parents[1]


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600, cwd=ROOT)


# tests of tests/cuda that may be skipped under the simulator, as {test id (JUnit's
# "tests.cuda.test_cuda_target::test_name[params]"): regex of the skip reason}: only the
# CUDA graph and disk-cache tests, which need a GPU (the block-size fixture runs only the
# small sizes there, so no other test skips itself)
EXPECTED_SIMULATOR_SKIPS = {
    **{f"tests.cuda.test_cuda_target::test_cuda_graphs_run_and_equal_plain_launches_bit_for"
       f"_bit[tile2x2-{data}]": r"needs a GPU: the simulator has no CUDA graphs"
       for data in ("resident", "streamed")},
    "tests.cuda.test_cuda_target::test_the_kernels_are_cached_on_disk_for_the_next_process"
    "[tile2x2]": r"needs a GPU: the simulator compiles nothing"}


@pytest.mark.skipif(CUDA_TESTS, reason="tests/cuda is collected directly in this run")
def test_cuda_suite_passes_under_the_simulator(tmp_path):
    """tests/cuda in its own process: NUMBA_ENABLE_CUDASIM must be set before Numba is
    imported, which in this process it already is. Every collected test must pass, except
    the skips expected under the simulator (with their reasons): nothing fails, errors or
    is skipped unexpectedly."""
    report = tmp_path / "cuda.xml"
    out = subprocess.run([sys.executable, "-m", "pytest", "tests/cuda", "-p", "no:cacheprovider",
                          "--junitxml", str(report), "-o", "junit_family=xunit2"],
                         capture_output=True, text=True,
                         env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}, timeout=1800,
                         cwd=ROOT)
    tail = out.stdout[-6000:] + out.stderr[-3000:]
    assert out.returncode == 0, tail          # 5 (nothing collected) fails here too
    collected = re.search(r"^collected (\d+) items?", out.stdout, re.MULTILINE)
    assert collected, tail
    collected = int(collected.group(1))
    outcomes = _junit_outcomes(report)
    assert len(outcomes) == collected >= 60, (collected, len(outcomes), tail)
    failed = {name: o for name, o in outcomes.items() if o[0] in ("failure", "error")}
    assert not failed, failed
    skipped = {name: o[1] for name, o in outcomes.items() if o[0] == "skipped"}
    unexpected = {name: why for name, why in skipped.items()
                  if not re.search(EXPECTED_SIMULATOR_SKIPS.get(name, r"(?!)"), why)}
    assert not unexpected, unexpected
    passed = [name for name, o in outcomes.items() if o[0] == "passed"]
    assert len(passed) == collected - len(skipped), tail
    assert re.search(rf"\b{len(passed)} passed\b", out.stdout.splitlines()[-1]), tail


def _junit_outcomes(path):
    """{test id: (outcome, message)} from a pytest JUnit XML report; outcome 'passed',
    'skipped', 'failure' or 'error' (the worst one a test reported)."""
    import xml.etree.ElementTree as ET

    rank = {"passed": 0, "skipped": 1, "failure": 2, "error": 3}
    outcomes = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        result = outcomes.get(name, ("passed", ""))
        for child in case:
            if child.tag in rank and rank[child.tag] > rank[result[0]]:
                result = (child.tag, child.get("message") or "")
        outcomes[name] = result
    return outcomes


def test_no_gpu_is_a_clear_error():
    out = _run("from fastbp import Trainer, CudaUnavailableError\n"
               "try:\n    Trainer([3, 2], target='cuda')\n"
               "except CudaUnavailableError as e:\n    print('ERROR', e)\n",
               CUDA_VISIBLE_DEVICES="", NUMBA_ENABLE_CUDASIM="0")
    assert out.returncode == 0, out.stderr
    assert "ERROR target='cuda' needs an NVIDIA GPU" in out.stdout
    assert "NUMBA_ENABLE_CUDASIM=1" in out.stdout and "target='cpu'" in out.stdout


def test_missing_numba_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba_cuda", None)        # as if not installed
    with pytest.raises(CudaUnavailableError, match=r"pip install 'fastbp\[cuda\]'"):
        Trainer([3, 2], target="cuda")


def test_a_gpu_model_file_loads_elsewhere_with_a_target(tmp_path, monkeypatch):
    t = Trainer([3, 4, 2], seed=0)
    t._cfg["target"] = "cuda"                 # as saved on a GPU machine
    path = tmp_path / "gpu.npz"
    t.save(path)

    def no_gpu():
        raise CudaUnavailableError("no GPU here")
    monkeypatch.setattr(cuda_backend, "load", no_gpu)
    with pytest.raises(CudaUnavailableError, match="saved from target='cuda'.*Pass "
                                                   "target='cpu'"):
        Trainer.load(path)
    cpu_path = tmp_path / "cpu.npz"
    Trainer([3, 4, 2], seed=0).save(cpu_path)
    with pytest.raises(CudaUnavailableError, match="cannot be loaded for target='cuda' here"):
        Trainer.load(cpu_path, target="cuda")       # not "saved from target='cuda'"
    again = Trainer.load(path, target="cpu")
    assert again.config["target"] == "cpu"
    np.testing.assert_array_equal(again.params, t.params)
    with pytest.raises(ValueError, match="target='gpu' is not allowed"):
        Trainer.load(path, target="gpu")


def test_cli_without_gpu_exits_with_the_message(monkeypatch, capsys):
    from fastbp.cli import main

    def no_gpu():
        raise CudaUnavailableError("no GPU here")
    monkeypatch.setattr(cuda_backend, "load", no_gpu)
    assert main(["train", "--target", "cuda", "--epochs", "1"]) != 0
    assert "no GPU here" in capsys.readouterr().err


def test_warmup_of_the_gpu_kernels_without_gpu_says_so_before_any_work(monkeypatch, capsys):
    from fastbp import trainer
    from fastbp.cli import main

    def no_gpu():
        raise CudaUnavailableError("no GPU here")
    monkeypatch.setattr(cuda_backend, "load", no_gpu)
    built = []
    monkeypatch.setattr(trainer, "Trainer", lambda *a, **k: built.append(a))
    assert main(["warmup", "--targets", "cpu", "cuda"]) == 1
    assert capsys.readouterr().err.strip() == "fastbp warmup: error: --targets cuda: no GPU here"
    assert built == []                 # the CPU kernels were not compiled first


@pytest.mark.parametrize("bad,match", [
    (dict(tile=0), "tile=0 is not allowed"), (dict(threads=12), "power of two"),
    (dict(tile=64), "at most 1024 threads"), (dict(per_thread=1.5), "per_thread=1.5"),
    (dict(large_per_thread=0), "large_per_thread=0 is not allowed"),
    (dict(large_per_thread=32), "large_per_thread=32 needs 131200 bytes")])
def test_block_sizes_are_checked(bad, match):
    before = gpu.block_sizes()
    with pytest.raises(ValueError, match=match):
        gpu.set_block_sizes(**bad)
    assert gpu.block_sizes() == before


def _nvvm_available():
    try:
        from numba.cuda.cudadrv import nvvm
        nvvm.NVVM()
        return True
    except Exception:
        return False


# instructions operating on float64 / float32 (register names like %fd3 do not match)
F64_OP = re.compile(r"^\s*[a-z]+(\.[a-z0-9]+)*\.f64\b")
F32_OP = re.compile(r"^\s*[a-z]+(\.[a-z0-9]+)*\.f32\b")
PRODUCTS = ("linear_forward", "linear_backward", "linear_forward_large",
            "linear_backward_large")
KERNELS = {*PRODUCTS, "loss_delta", "output_forward", "grad_block_norms", "step_stats",
           "optimizer_update"}
# float64 in a float32 product kernel: the dropout hash's [0, 1) draw (u64 -> f64, scaled,
# compared with the keep rate) and the rate's 1 / (1 - rate), converted to float32 once;
# never a float64 load, store, multiply-add or sum
DROPOUT_DRAW_F64 = {"ld.param.f64", "mov.f64", "sub.f64", "rcp.rn.f64", "cvt.rn.f32.f64",
                    "cvt.rn.f64.u64", "mul.f64"}
# float32 in a float64 kernel: only libdevice's own range checks and exponent rounding
# inside its float64 exp/tanh/log (seen on the high word as float32); never a float32
# load, store, multiply-add or sum
LIBDEVICE_F32 = {"abs.f32", "cvt.rn.f32.f64", "cvt.f64.f32", "mul.f32", "cvt.rni.f32.f32"}


def _ops(text, pattern):
    """The opcodes (e.g. 'fma.rn.f32') of the PTX instructions matching `pattern`."""
    return [line.split()[0] for line in text.splitlines() if pattern.match(line)]


def _outside(ops, allowed):
    return sorted({op for op in ops if op not in allowed and not op.startswith("setp.")})


@pytest.mark.skipif(not _nvvm_available(),
                    reason="NVVM not installed (the test extra installs numba-cuda[cu13])")
def test_kernels_compile_to_ptx_and_float32_stays_float32():
    """Every kernel, both dtypes, compiled for an H100 (sm_90) by NVVM as on a GPU machine.
    float32 kernels compute in float32: float64 appears only where it is meant to (the
    per-row loss and reductions, the dropout hash's [0, 1) draw and rate); float64 kernels
    compute in float64 throughout."""
    ptx = {dtype: gpu.compile_ptx(dtype, (9, 0)) for dtype in ("float64", "float32")}
    for dtype, kernels in ptx.items():
        assert set(kernels) == KERNELS, dtype
        for name in PRODUCTS:
            assert ".shared" in kernels[name], name             # tiled through shared memory
            assert ".local" not in kernels[name], name          # accumulators in registers

    # float32 kernels: {name: (float64 opcodes, float32 opcodes)}
    f32 = {name: (_ops(text, F64_OP), _ops(text, F32_OP))
           for name, text in ptx["float32"].items()}
    for name in PRODUCTS:
        f64_ops, f32_ops = f32[name]
        extra = _outside(f64_ops, DROPOUT_DRAW_F64)
        assert extra == [], (name, extra)
        # the tiles and their products are float32
        for op in ("ld.shared.f32", "st.shared.f32", "fma.rn.f32", "ld.global.f32",
                   "st.global.f32"):
            assert op in f32_ops, (name, op)
    for name in ("output_forward", "optimizer_update"):
        assert f32[name][0] == [], (name, f32[name][0][:5])
        assert "ld.global.f32" in f32[name][1] and "st.global.f32" in f32[name][1], name
    assert f32["loss_delta"][0] == ["cvt.f64.f32", "st.global.f64"]   # the per-row loss
    assert "fma.rn.f32" in f32["loss_delta"][1]
    # the reductions are float64 by design, over float32 gradients ...
    assert "ld.global.f32" in f32["grad_block_norms"][1]
    assert "ld.global.f64" not in f32["grad_block_norms"][0]
    assert "cvt.f64.f32" in f32["grad_block_norms"][0]
    # ... and the clipping factor they make is stored for the float32 update
    assert _outside(f32["step_stats"][1], {"mov.f32", "cvt.rn.f32.f64", "st.global.f32"}) == []
    assert "st.global.f32" in f32["step_stats"][1]

    for name, text in ptx["float64"].items():
        f64_ops, f32_ops = _ops(text, F64_OP), _ops(text, F32_OP)
        extra = _outside(f32_ops, LIBDEVICE_F32)
        assert extra == [], (name, extra)
        assert "ld.global.f64" in f64_ops or "ld.shared.f64" in f64_ops, name
    for name in PRODUCTS:
        f64_ops = _ops(ptx["float64"][name], F64_OP)
        for op in ("ld.shared.f64", "st.shared.f64", "fma.rn.f64", "st.global.f64"):
            assert op in f64_ops, (name, op)


def test_small_grid_warnings_are_kept_from_users():
    """numba-cuda warns of every grid under 128 blocks, highlighted with an ANSI escape
    (which an anchored filter missed on a real H200): configuring a launch stays quiet."""
    import warnings

    from numba.core.errors import NumbaPerformanceWarning

    from fastbp.kernels.cuda_runner import configure_quietly

    class Kernel:
        def __getitem__(self, config):
            warnings.warn(NumbaPerformanceWarning(
                f"Grid size {config[0]} will likely result in GPU under-utilization due to "
                "low occupancy."))
            return config

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert configure_quietly(Kernel(), 4, 256) == (4, 256)
    with pytest.warns(NumbaPerformanceWarning, match="Grid size 4"):   # the real message
        Kernel()[4, 256]


def test_kernels_are_compiled_into_numba_cudas_disk_cache_with_fastbps_key(monkeypatch):
    """compile_kernel does what cuda.jit(signature, cache=True) does, with a cache whose
    index keys also hold fastbp's key (the source digest: an edit of scalar.py changes no
    kernel's own code); FASTBP_CUDA_CACHE=0 compiles without a cache. (A GPU test loads the
    kernels from the cache in a second process.)"""
    calls = []

    class Dispatcher:
        _cache = None
        _specialized = False

        def compile(self, argtypes):
            calls.append(("compile", argtypes, type(self._cache).__name__))

        def disable_compile(self):
            calls.append(("disable_compile",))

    class FakeCuda:
        @staticmethod
        def jit(arg):
            if isinstance(arg, str):                # cuda.jit(signature)(fn)
                return lambda fn: ("uncached", arg, fn)
            return Dispatcher()                     # cuda.jit(fn): lazy

    def kernel(x, y):
        pass

    monkeypatch.setattr(cuda_backend, "_import_cuda", lambda: FakeCuda)
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    monkeypatch.setenv(cuda_backend.CACHE_ENV, "0")
    assert cuda_backend.compile_kernel(kernel, "void(float32[::1], int64)", "k") == \
        ("uncached", "void(float32[::1], int64)", kernel)
    monkeypatch.delenv(cuda_backend.CACHE_ENV)
    d = cuda_backend.compile_kernel(kernel, "void(float32[::1], int64)", gpu.source_digest())
    assert [c[0] for c in calls] == ["compile", "disable_compile"]
    assert calls[0][1] == "void(float32[::1], int64)"
    assert calls[0][2] == "KeyedCache" and d._specialized
    codegen = type("Codegen", (), {"magic_tuple": staticmethod(lambda: ("sm_90",))})()
    key = d._cache._index_key("sig", codegen)
    import numba_cuda
    assert key[-1] == ("fastbp", (gpu.source_digest(), numba_cuda.__version__))
    other = cuda_backend._keyed_cache(kernel, "another digest")._index_key("sig", codegen)
    assert other[:-1] == key[:-1] and other != key
