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


@pytest.mark.skipif(CUDA_TESTS, reason="tests/cuda is collected directly in this run")
def test_cuda_suite_passes_under_the_simulator():
    """tests/cuda in its own process: NUMBA_ENABLE_CUDASIM must be set before Numba is
    imported, which in this process it already is."""
    out = subprocess.run([sys.executable, "-m", "pytest", "tests/cuda", "-q",
                          "-p", "no:cacheprovider"], capture_output=True, text=True,
                         env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}, timeout=1800,
                         cwd=ROOT)
    tail = out.stdout[-6000:] + out.stderr[-3000:]
    assert out.returncode == 0, tail          # 5 (nothing collected) fails here too
    passed = re.search(r"(\d+) passed", out.stdout)
    assert passed and int(passed.group(1)) >= 60, tail
    assert "failed" not in out.stdout.splitlines()[-1], tail


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


@pytest.mark.parametrize("bad,match", [
    (dict(tile=0), "tile=0 is not allowed"), (dict(threads=12), "power of two"),
    (dict(tile=64), "at most 1024 threads"), (dict(per_thread=1.5), "per_thread=1.5")])
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


# instructions operating on float64 (register names like %fd3 do not match)
F64_OP = re.compile(r"^\s*[a-z]+(\.[a-z0-9]+)*\.f64\b")


@pytest.mark.skipif(not _nvvm_available(),
                    reason="NVVM not installed (the test extra installs numba-cuda[cu13])")
def test_kernels_compile_to_ptx_and_float32_stays_float32():
    """Every kernel, both dtypes, compiled for an H100 (sm_90) by NVVM as on a GPU machine.
    float32 kernels compute in float32: float64 appears only where it is meant to (the
    per-row loss and reductions, the dropout hash's [0, 1) draw and rate)."""
    for dtype in ("float64", "float32"):
        ptx = gpu.compile_ptx(dtype, (9, 0))
        assert set(ptx) == {"linear_forward", "linear_backward", "loss_delta", "output_forward",
                            "grad_block_norms", "step_stats", "optimizer_update"}
        for name in ("linear_forward", "linear_backward"):
            assert ".shared" in ptx[name], name             # tiled through shared memory
    f64 = {name: [line.strip() for line in text.splitlines() if F64_OP.match(line)]
           for name, text in ptx.items()}
    for name in ("output_forward", "optimizer_update"):
        assert f64[name] == [], (name, f64[name][:5])
    assert [op.split()[0] for op in f64["loss_delta"]] == ["cvt.f64.f32", "st.global.f64"]


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
