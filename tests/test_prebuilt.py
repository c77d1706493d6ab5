"""Kernels compiled ahead of time for an x86-64 level and shipped in the package
(kernels/prebuilt.py, `python -m fastbp.prebuild`): a first fit with an empty Numba cache
loads them and compiles none of the kernels, and they train as the kernels compiled here."""
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastbp import Trainer, prebuild
from fastbp.kernels import codes, prebuilt

ROOT = Path(__file__).resolve().parent.parent

# A fit with the kernels of float32 / cpu: how many of fastbp's functions Numba compiled
# (its compile events, and the products' C entry points, which compile when made), and
# the per-epoch losses.
FIRST_FIT = """
import json
import numpy as np
from numba.core import event

compiled = []
class Listener(event.Listener):
    def on_start(self, ev):
        fn = getattr(ev.data["dispatcher"], "py_func", None)
        if fn is not None and fn.__module__.startswith("fastbp"):
            compiled.append(fn.__qualname__)
    def on_end(self, ev):
        pass
event.register("numba:compile", Listener())

from fastbp import Trainer
from fastbp.kernels import codes, gemm, prebuilt
rng = np.random.default_rng(0)
X, y = rng.standard_normal((96, 6)).astype(np.float32), rng.integers(0, 3, 96)
history = Trainer([6, 16, 3], target="cpu", batch_size=16, seed=0).fit(
    X, y, epochs=3, progress=False)
entries = [f.cache_hits for f in gemm._compiled.values()]
print(json.dumps({"compiled": compiled, "entries_loaded": entries,
                  "level": codes.target_level(), "loss": history["loss"],
                  "shipped": str(prebuilt.shipped_dir())}))
"""


def probe(script, tmp_path, shipped, level=None):
    """What `script` prints last (JSON), run in a new process with an empty Numba cache,
    using the shipped code in `shipped` ("0": none), as a CPU of `level` if given."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "empty-cache"),
               FASTBP_PREBUILT=str(shipped), PYTHONPATH=str(ROOT))
    if level is not None:
        env.update(NUMBA_CPU_NAME=level, NUMBA_CPU_FEATURES="")
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def first_fit(tmp_path, shipped, level=None):
    return probe(FIRST_FIT, tmp_path, shipped, level)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """float32 / cpu kernels built for every level this CPU can run, as a release would
    build them into the package (only one dtype and target, to keep the test short)."""
    out = tmp_path_factory.mktemp("prebuilt")
    levels = prebuild.runnable_levels()
    if not levels:
        pytest.skip("not an x86-64-v3 CPU: no level to build")
    for level in levels:
        prebuild.build(level, out, dtypes=("float32",), targets=("cpu",), sparse=False, bf16=False,
                       verbose=False)
    return out, levels


def host_losses():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((96, 6)).astype(np.float32), rng.integers(0, 3, 96)
    return Trainer([6, 16, 3], target="cpu", batch_size=16, seed=0).fit(
        X, y, epochs=3, progress=False)["loss"]


def test_a_first_fit_with_an_empty_cache_compiles_no_kernel(shipped, tmp_path):
    """Without the shipped code the same fit compiles the epoch kernel and its callees
    (about 12 s on 2 cores); with it, it loads them."""
    out, levels = shipped
    run = first_fit(tmp_path, out)
    assert run["level"] in levels and run["shipped"] == str(out / run["level"])
    assert run["compiled"] == []
    assert run["entries_loaded"] and all(hits == 1 for hits in run["entries_loaded"])
    # compiled for a generic CPU of the level instead of this one: the same maths
    np.testing.assert_allclose(run["loss"], host_losses(), rtol=1e-5)


def test_without_shipped_code_the_kernels_compile_as_before(shipped, tmp_path):
    """FASTBP_PREBUILT=0 turns the shipped code off (and a CPU short of a level's features
    never gets it: target_level)."""
    run = first_fit(tmp_path, "0")
    assert run["shipped"] == "None"
    assert "train_epoch_serial__dense" in run["compiled"]
    np.testing.assert_allclose(run["loss"], host_losses(), rtol=1e-5)


def test_each_level_runs_as_a_cpu_of_that_level(shipped, tmp_path):
    """The AVX2 level's code, built on this CPU, run in a process that compiles for that
    level (so the products are tuned for 32-byte vectors, as on an AVX2 CPU)."""
    out, levels = shipped
    for level in levels:
        run = first_fit(tmp_path / level, out, level=level)
        assert run["level"] == level
        assert run["compiled"] == [], level
        np.testing.assert_allclose(run["loss"], host_losses(), rtol=1e-5)


# The products' C entry points compile (or load) when registered: a quick probe of which
# code a process takes
ENTRIES = """
import json
from fastbp.kernels import gemm
gemm.register("float32")
print(json.dumps([f.cache_hits for f in gemm._compiled.values()]))
"""


def entries_loaded(tmp_path, shipped, level=None):
    """{cache hits} of the float32 entry points: {1} loaded, {0} compiled."""
    hits = probe(ENTRIES, tmp_path, shipped, level)
    assert hits
    return set(hits)


def restamp(folder, stamp):
    """Rewrite the stamp of every index in folder, as code built from other sources has."""
    for path in folder.glob("*.nbi"):
        with open(path, "rb") as f:
            version = pickle.load(f)
            _, overloads = pickle.loads(f.read())
        with open(path, "wb") as f:
            pickle.dump(version, f, protocol=-1)
            f.write(pickle.dumps((stamp, overloads), protocol=-1))


def test_stale_or_foreign_shipped_code_is_never_loaded(shipped, tmp_path):
    out, levels = shipped
    assert entries_loaded(tmp_path / "a", out) == {1}
    assert all(prebuild.check(out)[level] == "current" for level in levels)
    # built from other sources or settings: compiled here instead
    stale = tmp_path / "stale"
    shutil.copytree(out, stale)
    for level in levels:
        restamp(stale / level, ("another source",) + prebuilt.sources_stamp()[1:])
    assert entries_loaded(tmp_path / "b", stale) == {0}
    assert all(prebuild.check(stale)[level] == "stale" for level in levels)
    assert prebuild.check(tmp_path / "nothing") == {level: "missing" for level in codes.LEVELS}
    # one level's files under another level's name: their keys name their own level
    if len(levels) == 2:
        swapped = tmp_path / "swapped"
        shutil.copytree(out / levels[0], swapped / levels[1])
        shutil.copytree(out / levels[1], swapped / levels[0])
        for level in levels:
            assert entries_loaded(tmp_path / f"c{level}", swapped, level=level) == {0}
            assert entries_loaded(tmp_path / f"d{level}", out, level=level) == {1}


def test_damaged_shipped_code_is_compiled_here_with_a_warning(shipped, tmp_path):
    """A damaged installation costs the compile, not the fit: each damaged function warns
    once and compiles; a damaged index counts as stale."""
    out, levels = shipped
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    for path in damaged.glob("*/*.nbc"):
        path.write_bytes(b"not a pickle")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "empty-cache"),
               FASTBP_PREBUILT=str(damaged), PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-c", ENTRIES], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert set(json.loads(run.stdout.strip().splitlines()[-1])) == {0}
    assert "cannot be loaded" in run.stderr and "compiling it here" in run.stderr
    for path in damaged.glob("*/*.nbi"):
        path.write_bytes(b"not an index")
    assert all(prebuild.check(damaged)[level] == "stale" for level in levels)


def test_a_failed_build_changes_nothing_and_says_so(monkeypatch, tmp_path, capsys):
    level = prebuild.runnable_levels()[-1] if prebuild.runnable_levels() else None
    if level is None:
        pytest.skip("not an x86-64-v3 CPU: no level to build")
    (tmp_path / level).mkdir()
    python = f"py{sys.version_info[0]}{sys.version_info[1]}{getattr(sys, 'abiflags', '')}"
    kept = tmp_path / level / f"cpu.x-1.{python}.nbi"
    kept.write_bytes(b"the last good build")
    monkeypatch.setattr(prebuild.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 1))
    with pytest.raises(RuntimeError, match="is unchanged"):
        prebuild.build(level, tmp_path)
    assert kept.read_bytes() == b"the last good build"
    assert prebuild.main(["--levels", level, "--out", str(tmp_path)]) == 2
    assert "failed (exit status 1" in capsys.readouterr().err
    monkeypatch.setattr(prebuild, "runnable_levels", lambda: [])
    assert prebuild.main(["--out", str(tmp_path)]) == 2
    assert "this CPU has none of the levels" in capsys.readouterr().err


def test_warmup_says_which_kernels_a_process_uses(shipped, monkeypatch, tmp_path):
    out, levels = shipped
    stale = tmp_path / "stale"
    shutil.copytree(out, stale)
    for level in levels:
        restamp(stale / level, ("another source",) + prebuilt.sources_stamp()[1:])
    cases = [(str(out), "kernels shipped compiled for"), (str(stale), "are stale"),
             (str(tmp_path / "none"), "ships no kernels for"), ("0", "turned off")]
    try:
        for setting, said in cases:
            monkeypatch.setenv("FASTBP_PREBUILT", setting)
            prebuilt.shipped_dir.cache_clear()
            assert said in prebuilt.describe(), setting
    finally:
        prebuilt.shipped_dir.cache_clear()      # recomputed from the restored environment


def test_numba_without_avx_gets_no_shipped_code(monkeypatch):
    """NUMBA_ENABLE_AVX=0 (Numba's default on CPUs that virtual machines misreport) and
    NUMBA_CPU_FEATURES are what Numba compiles for: the shipped AVX code must not run."""
    from numba.core import config
    monkeypatch.setattr(config, "ENABLE_AVX", 0)
    assert codes.target_level() is None and not codes.host_has_avx512()
    monkeypatch.setattr(config, "ENABLE_AVX", 1)
    monkeypatch.setattr(config, "CPU_FEATURES", "+sse2,+sse4.2")
    assert codes.target_level() is None
    # where LLVM cannot tell the CPU's features (Numba then compiles for none): nothing
    import llvmlite.binding as ll

    def unknown():
        raise RuntimeError("no features")
    monkeypatch.setattr(config, "CPU_FEATURES", None)
    monkeypatch.setattr(ll, "get_host_cpu_features", unknown)
    assert codes.hardware_features() == frozenset() and codes.target_level() is None


def test_numba_s_own_cache_is_stamped_with_every_kernel_source():
    """Editing a callee's file (ops.py, scalar.py) used to leave its callers' cached code in
    place; the kernels' own cache now follows every kernel source too."""
    cache = prebuilt.KernelCache(prebuilt.sources_stamp)
    assert cache._cache_file._source_stamp[1] == prebuilt.sources_stamp()


def test_with_no_writable_cache_folder_nothing_is_saved(monkeypatch):
    """Numba raises at import where no cache folder is writable; the kernels' cache then
    saves nothing (and can still load shipped code)."""
    monkeypatch.setattr(prebuilt._KernelCacheImpl, "_locator_classes",
                        [prebuilt._NowhereToWrite])
    cache = prebuilt.KernelCache(prebuilt.sources_stamp)
    assert not cache._writable
    assert cache._save_overload(None, object()) is None
    assert cache._cache_file.load(("any", "key")) is None


def test_importing_without_the_jit_and_building_outside_prebuild(tmp_path):
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-c", "import fastbp"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    # the build's switch alone, without Numba compiling for a level: refused
    env = dict(os.environ, FASTBP_PREBUILD=str(tmp_path), PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-c", "import fastbp"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "must compile for a level" in run.stderr


def test_the_stamp_follows_every_kernel_source(tmp_path):
    """A kernel's cached code holds its callees' code: a change in any kernel source file
    (not only the function's own, which is all Numba's cache looks at) makes the shipped
    code stale."""
    copy = tmp_path / "kernels"
    copy.mkdir()
    for path in prebuilt.KERNELS_DIR.glob("*.py"):
        (copy / path.name).write_bytes(path.read_bytes())
    assert prebuilt.sources_stamp(copy) == prebuilt.sources_stamp()
    scalar = copy / "scalar.py"
    scalar.write_text(scalar.read_text() + "\n# edited\n")
    assert prebuilt.sources_stamp(copy)[0] != prebuilt.sources_stamp()[0]


def test_the_level_is_the_vector_width_the_kernels_are_tuned_for(monkeypatch):
    v3, v4 = codes.LEVELS["x86-64-v3"], codes.LEVELS["x86-64-v4"]
    monkeypatch.setattr(codes, "target_features", lambda: v4 | {"avx512bf16"})
    assert codes.target_level() == "x86-64-v4" and codes.host_has_avx512()
    monkeypatch.setattr(codes, "target_features", lambda: v3)
    assert codes.target_level() == "x86-64-v3" and not codes.host_has_avx512()
    # an AVX-512 CPU short of a v4 feature must not run AVX2 code tuned for other widths
    monkeypatch.setattr(codes, "target_features", lambda: v4 - {"avx512vl"})
    assert codes.target_level() is None
    monkeypatch.setattr(codes, "target_features", lambda: v3 - {"fma"})
    assert codes.target_level() is None


def test_numba_told_to_compile_for_a_level_makes_it_the_target(monkeypatch):
    from numba.core import config
    monkeypatch.setattr(config, "CPU_NAME", "x86-64-v3")
    monkeypatch.setattr(config, "CPU_FEATURES", "")
    assert codes.target_features() == codes.LEVELS["x86-64-v3"]
    assert codes.target_level() == "x86-64-v3"


def test_building_a_level_this_cpu_lacks_is_refused(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="level must be one of"):
        prebuild.build("x86-64-v9", tmp_path)
    monkeypatch.setattr(prebuild, "runnable_levels", lambda: ["x86-64-v3"])
    with pytest.raises(ValueError, match="'x86-64-v4': this CPU lacks"):
        prebuild.build("x86-64-v4", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_wheel_with_shipped_code_is_tagged_for_its_python_and_platform(tmp_path):
    """setup.py: the wheel carries machine code for one CPython on x86-64 Linux only when
    the prebuild ran; otherwise it stays the plain py3-none-any wheel."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "_prebuilt", "*.nbi", "*.nbc", "*.egg-info")
    shutil.copytree(ROOT / "fastbp", source / "fastbp", ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)

    def wheel(out):
        # built as users build it: pip installs pyproject's build requirements apart
        run = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
                              "-q", "-w", str(out)],
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        shutil.rmtree(source / "build", ignore_errors=True)
        (built,) = out.glob("*.whl")
        return built.name

    assert wheel(tmp_path / "plain").endswith("-py3-none-any.whl")
    level = source / "fastbp" / "_prebuilt" / "x86-64-v4"
    level.mkdir(parents=True)
    python = f"py{sys.version_info[0]}{sys.version_info[1]}{getattr(sys, 'abiflags', '')}"
    (level / f"cpu.train_epoch_serial-1.{python}.nbi").write_bytes(b"index")
    (level / f"cpu.train_epoch_serial-1.{python}.1.nbc").write_bytes(b"code")
    name = wheel(tmp_path / "shipped")
    assert name.endswith(f"-cp{sys.version_info[0]}{sys.version_info[1]}-none-"
                         "manylinux2014_x86_64.whl"), name
    import zipfile
    with zipfile.ZipFile(tmp_path / "shipped" / name) as whl:
        assert f"fastbp/_prebuilt/x86-64-v4/cpu.train_epoch_serial-1.{python}.nbi" in whl.namelist()
