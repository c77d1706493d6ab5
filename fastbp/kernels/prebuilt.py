"""Kernels compiled ahead of time and shipped in the package, so that a first fit loads
machine code instead of compiling it (about 12 s on 2 cores).

Numba's own on-disk cache cannot be shipped: it keys each function on the exact CPU it was
compiled on (LLVM's CPU name and feature list) and on its source file's modification time,
so a cache made on one machine misses on every other. The code here is compiled for an
x86-64 microarchitecture level instead (`python -m fastbp.prebuild`: x86-64-v3 is AVX2 and
FMA, x86-64-v4 adds AVX-512) and keyed on that level and on a hash of the kernels' sources
and of the Numba and llvmlite versions. A process uses the level its vector width is tuned
for (`codes.target_level`) when its CPU has every feature of that level; the code is then the
same the process would have compiled, for a generic CPU of the level rather than its own
model.

Every kernel function's dispatcher gets a `KernelCache` (`cached`): it looks in Numba's
usual cache first (code compiled on this machine, e.g. by `fastbp warmup`), then in the
shipped one, and saves what it compiles in Numba's usual cache. Under `python -m
fastbp.prebuild` (the FASTBP_PREBUILD environment variable names the level's folder) it
reads and writes the shipped folder only.
"""
import functools
import hashlib
import os
from pathlib import Path

from numba.core import config, sigutils
from numba.core.ccallback import CFunc
from numba.core.caching import FunctionCache, IndexDataCacheFile

from .codes import LEVELS, target_level

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "_prebuilt"   # one folder a level
BUILD_ENV = "FASTBP_PREBUILD"          # set by fastbp.prebuild for the compiling process
# "0": compile on this machine as without shipped code; a path: a folder of levels' folders
# to use instead of the package's (tests, and checking a build before shipping it)
USE_ENV = "FASTBP_PREBUILT"
KERNELS_DIR = Path(__file__).resolve().parent


def sources_stamp(folder=KERNELS_DIR):
    """What the shipped code was compiled from: every source file of the kernels (a cached
    kernel holds its callees' code, which Numba's own cache does not notice change) and the
    compiler's versions. The Python version is in each cache file's name."""
    import llvmlite
    import numba
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return (digest.hexdigest(), numba.__version__, llvmlite.__version__)


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


def _level_key(key):
    """Numba's index key (signature, CPU, bytecode) with the CPU replaced by the level."""
    sig, magic, code = key
    level = config.CPU_NAME if os.environ.get(BUILD_ENV) else target_level()
    return sig, ("fastbp-level", magic[0], level), code


class KernelCache(FunctionCache):
    """Numba's cache of a kernel function, with the shipped code as a second place to look."""

    def __init__(self, py_func):
        super().__init__(py_func)
        self._folder = folder = shipped_dir()
        self._shipped = None if folder is None else IndexDataCacheFile(
            cache_path=str(folder), filename_base=self._impl.filename_base,
            source_stamp=_this_stamp())
        self._building = bool(os.environ.get(BUILD_ENV))

    def _load_overload(self, sig, target_context):
        if not self._enabled:
            return None
        codegen = target_context.codegen()
        data = None if self._building else self._cache_file.load(self._index_key(sig, codegen))
        if data is None and self._shipped is not None:
            data = self._shipped.load(_level_key(self._index_key(sig, codegen)))
        return None if data is None else self._impl.rebuild(target_context, data)

    def _save_overload(self, sig, data):
        if not self._building:
            return super()._save_overload(sig, data)
        if not (self._enabled and self._impl.check_cachable(data)):
            return None
        self._folder.mkdir(parents=True, exist_ok=True)
        key = _level_key(self._index_key(sig, data.codegen))
        self._shipped.save(key, self._impl.reduce(data))
        return None


def cached(dispatcher):
    """Give an njit dispatcher the KernelCache: what ``cache=True`` does with Numba's
    FunctionCache."""
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
