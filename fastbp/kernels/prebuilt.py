"""Kernels compiled ahead of time and shipped in the package, so that a first fit loads
machine code instead of compiling it (about 12 s on 2 cores).

Numba's own on-disk cache cannot be shipped: it keys each function on the exact CPU it was
compiled on (LLVM's CPU name and feature list), so a cache made on one machine misses on
nearly every other. The code here is compiled for an x86-64 microarchitecture level instead
(`python -m fastbp.prebuild`: x86-64-v3 is AVX2 and FMA, x86-64-v4 adds AVX-512) and keyed
on that level, and stamped with `sources_stamp` (every kernel source, the compiler's and
NumPy's versions, Numba's code-changing settings). A process uses the level its vector width
is tuned for (`codes.target_level`) when Numba compiles for every feature of that level there
and the CPU has them; the code is then what the process would have compiled, for a generic
CPU of the level rather than its own model.

Every kernel function's dispatcher gets a `KernelCache` (`cached`): it looks in Numba's
usual cache first (code compiled on this machine, e.g. by `fastbp warmup`), then in the
shipped one, and saves what it compiles in Numba's usual cache, whose stamp it extends with
`sources_stamp` too (Numba's covers the function's own file, not its callees'). Under
`python -m fastbp.prebuild` (the FASTBP_PREBUILD environment variable names the level's
folder) it reads and writes the shipped folder only.
"""
import functools
import hashlib
import os
import pickle
import sys
import warnings
from pathlib import Path

from numba.core import config, sigutils
from numba.core.ccallback import CFunc
from numba.core.caching import (CompileResultCacheImpl, FunctionCache, IndexDataCacheFile,
                                _CacheLocator)

from .codes import LEVELS, target_level

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "_prebuilt"   # one folder a level
BUILD_ENV = "FASTBP_PREBUILD"          # set by fastbp.prebuild for the compiling process
# "0": compile on this machine as without shipped code; a path: a folder of levels' folders
# to use instead of the package's (tests, and checking a build before shipping it)
USE_ENV = "FASTBP_PREBUILT"
KERNELS_DIR = Path(__file__).resolve().parent


def sources_stamp(folder=KERNELS_DIR):
    """What compiled code was compiled from: every source file of the kernels (a cached
    kernel holds its callees' code, which Numba's own cache does not notice change), the
    compiler's and NumPy's versions, and the Numba settings that change the code made
    (optimisation level, vectorisers, bounds checks, debug info). The Python version is in
    each cache file's name; the CPU in its index key."""
    import llvmlite
    import numba
    import numpy
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    settings = (str(config.OPT), config.LOOP_VECTORIZE, config.SLP_VECTORIZE,
                config.BOUNDSCHECK, config.DEBUGINFO_DEFAULT)
    return (digest.hexdigest(), numba.__version__, llvmlite.__version__,
            ".".join(numpy.__version__.split(".")[:2]), repr(settings))


_this_stamp = functools.lru_cache(maxsize=None)(sources_stamp)    # hashed once a process


@functools.lru_cache(maxsize=None)
def shipped_dir():
    """The folder of shipped code this process can run, or None: the level this process's
    kernels are built for, when the CPU has all of it and the package ships it."""
    if os.environ.get(BUILD_ENV):
        return Path(os.environ[BUILD_ENV])
    level = target_level()
    choice = os.environ.get(USE_ENV, "")
    if level is None or choice == "0":
        return None
    folder = (Path(choice) if choice else PACKAGE_DIR) / level
    return folder if folder.is_dir() else None


def python_files(folder):
    """This Python's cache files in a level's folder (Numba names them ...pyXY<abiflags>...)."""
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}{getattr(sys, 'abiflags', '')}"
    return sorted(Path(folder).glob(f"*.{tag}.*"))


def state(folder):
    """'current', 'stale' (built from other sources, settings or versions) or 'missing':
    this Python's code in a level's folder."""
    import numba
    indexes = [p for p in python_files(folder) if p.suffix == ".nbi"]
    for path in indexes:
        try:
            with open(path, "rb") as f:
                version = pickle.load(f)
                stamp = pickle.loads(f.read())[0] if version == numba.__version__ else None
        except Exception:  # noqa: BLE001 - a damaged index: never loaded either
            stamp = None
        if stamp != _this_stamp():
            return "stale"
    return "current" if indexes else "missing"


def describe():
    """One line: which shipped code this process loads, or why none."""
    folder = shipped_dir()
    if folder is not None:
        status = state(folder)
        if status == "current":
            return f"kernels shipped compiled for {folder.name} are used ({folder})"
        return (f"the shipped kernels for {folder.name} are {status} ({folder}): kernels "
                "compile on first use")
    if os.environ.get(USE_ENV) == "0":
        return f"shipped kernels turned off ({USE_ENV}=0): kernels compile on first use"
    level = target_level()
    if level is None:
        return "no shipped kernels for this CPU: kernels compile on first use"
    return f"this installation ships no kernels for {level}: kernels compile on first use"


def _level_key(key):
    """Numba's index key (signature, CPU, bytecode) with the CPU replaced by the level."""
    sig, magic, code = key
    level = config.CPU_NAME if os.environ.get(BUILD_ENV) else target_level()
    return sig, ("fastbp-level", magic[0], level), code


class _NowhereToWrite(_CacheLocator):
    """The last resort of KernelCache's locators: no cache folder is writable (a read-only
    installation and home, as in some containers). Nothing is saved; the shipped code can
    still be loaded. (Numba's FunctionCache raises instead.)"""

    def __init__(self, py_func, py_file):
        self._lineno = py_func.__code__.co_firstlineno

    def ensure_cache_path(self):
        raise OSError("no writable folder for Numba's cache")

    def get_cache_path(self):
        return str(KERNELS_DIR / "__nowhere__")          # never created: every lookup misses

    def get_source_stamp(self):
        return None

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        return cls(py_func, py_file)


class _KernelCacheImpl(CompileResultCacheImpl):
    _locator_classes = CompileResultCacheImpl._locator_classes + [_NowhereToWrite]


class KernelCache(FunctionCache):
    """Numba's cache of a kernel function, with the shipped code as a second place to look."""
    _impl_class = _KernelCacheImpl

    def __init__(self, py_func):
        super().__init__(py_func)
        # Numba's stamp covers the function's own file only, not its callees' code
        self._cache_file._source_stamp = (self._cache_file._source_stamp, _this_stamp())
        self._writable = not isinstance(self._impl.locator, _NowhereToWrite)
        self._folder = folder = shipped_dir()
        self._shipped = None if folder is None else IndexDataCacheFile(
            cache_path=str(folder), filename_base=self._impl.filename_base,
            source_stamp=_this_stamp())
        self._building = bool(os.environ.get(BUILD_ENV))
        if self._building and not (config.CPU_NAME in LEVELS and config.CPU_FEATURES == ""):
            raise RuntimeError(f"{BUILD_ENV} is set: Numba must compile for a level "
                               "(NUMBA_CPU_NAME=<level>, NUMBA_CPU_FEATURES=''); run "
                               "python -m fastbp.prebuild")

    def _load_overload(self, sig, target_context):
        if not self._enabled:
            return None
        codegen = target_context.codegen()
        data = None if self._building else self._cache_file.load(self._index_key(sig, codegen))
        if data is not None:
            return self._impl.rebuild(target_context, data)
        if self._shipped is None:
            return None
        try:
            data = self._shipped.load(_level_key(self._index_key(sig, codegen)))
            return None if data is None else self._impl.rebuild(target_context, data)
        except Exception as e:  # noqa: BLE001 - a damaged installation: compile instead
            warnings.warn(f"fastbp: the shipped code of {self._py_func.__qualname__} in "
                          f"{self._folder} cannot be loaded ({type(e).__name__}: {e}); "
                          "compiling it here", RuntimeWarning, stacklevel=2)
            return None

    def _save_overload(self, sig, data):
        if not self._building:
            return super()._save_overload(sig, data) if self._writable else None
        if not (self._enabled and self._impl.check_cachable(data)):
            return None
        self._folder.mkdir(parents=True, exist_ok=True)
        key = _level_key(self._index_key(sig, data.codegen))
        self._shipped.save(key, self._impl.reduce(data))
        return None


def cached(dispatcher):
    """Give an njit dispatcher the KernelCache: what ``cache=True`` does with Numba's
    FunctionCache. (Under NUMBA_DISABLE_JIT=1 njit gives back the Python function.)"""
    if hasattr(dispatcher, "py_func"):
        dispatcher._cache = KernelCache(dispatcher.py_func)
    return dispatcher


def cfunc(sig, **options):
    """numba.cfunc(sig, cache=True, **options) with the KernelCache: a cfunc compiles (or
    loads) when it is made, so its cache must be in place before."""
    def wrapper(fn):
        callback = CFunc(fn, sigutils.normalize_signature(sig), locals={}, options=options)
        callback._cache = KernelCache(fn)
        callback.compile()
        return callback
    return wrapper
