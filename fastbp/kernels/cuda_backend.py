"""The one place fastbp imports Numba's CUDA target.

fastbp's CUDA kernels are written against ``numba.cuda`` as the `numba-cuda` package provides
it (the CUDA target built into Numba itself is deprecated). Everything else asks this module
for it, so moving to another Numba CUDA package is a change of the import in `_import_cuda`.
Nothing here runs at ``import fastbp``: the module is imported when a Trainer is built with
target='cuda'.

Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` in the environment before Numba is
first imported) the same kernels run as Python on the CPU, one thread per simulated GPU
thread: slow, but every kernel can be checked without a GPU.
"""
import functools
import os

# numba-cuda's warning of grids under 128 blocks, which the small networks fastbp is fast for
# always have. Its message is highlighted (it starts with an ANSI escape), so the pattern may
# not be anchored at "Grid"; seen unfiltered on an H200 with numba-cuda 0.30.4.
SMALL_GRID_WARNING = r".*Grid size \d+ will likely result in GPU under-utilization"
# FASTBP_CUDA_CACHE=0 in the environment: compile the GPU kernels in every process, as
# before they were cached on disk (benchmarks of the first-use compile time use it)
CACHE_ENV = "FASTBP_CUDA_CACHE"


class CudaUnavailableError(RuntimeError):
    """target='cuda' was asked for where it cannot run; the message says what is missing."""


def _import_cuda():
    from numba import cuda
    return cuda


def simulator_enabled():
    """Whether Numba's CUDA simulator is on (it must be set before Numba is imported)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def load():
    """The ``numba.cuda`` module, ready to launch kernels, or CudaUnavailableError saying
    which piece is missing: the numba-cuda package, or a GPU (and its driver)."""
    try:
        import numba_cuda  # noqa: F401  (the maintained CUDA target, not Numba's built-in)
    except ImportError:
        raise CudaUnavailableError(
            "target='cuda' needs the numba-cuda package, which is not installed: "
            "pip install 'fastbp[cuda]' (CUDA 12 drivers) or 'fastbp[cuda13]' (CUDA 13 "
            "drivers); NUMBA_ENABLE_CUDASIM=1 runs the kernels on Numba's CPU simulator "
            "without a GPU") from None
    cuda = _import_cuda()
    if simulator_enabled():
        return cuda
    try:
        available = cuda.is_available()
    except Exception as e:                      # a broken driver or toolkit install
        raise CudaUnavailableError(f"target='cuda' could not reach the CUDA driver: {e}") \
            from None
    if not available:
        raise CudaUnavailableError(
            "target='cuda' needs an NVIDIA GPU with a working driver, and numba-cuda found "
            "none (numba.cuda.is_available() is False; `python -c \"from numba import cuda; "
            "cuda.detect()\"` says why). Use target='cpu' or 'parallel', or set "
            "NUMBA_ENABLE_CUDASIM=1 before importing fastbp to run on Numba's CPU simulator")
    return cuda


def compile_kernel(fn, signature, cache_key):
    """``cuda.jit(signature)(fn)``: a kernel compiled for one signature, on a GPU also kept
    in numba-cuda's disk cache (in __pycache__ beside the kernel's module, or under
    NUMBA_CACHE_DIR), so that later processes load its machine code instead of compiling
    it. numba-cuda keys a cached kernel on its own code, the values it closes over, the
    signature and the GPU; `cache_key` (a string) and numba-cuda's version are added to
    that, for what Numba cannot see (such as the source of device functions in other
    modules) and for the releases whose keys leave the version out.
    The simulator, FASTBP_CUDA_CACHE=0, or a cache that cannot be set up (no writable
    folder): compiled as before, in this process only."""
    cuda = _import_cuda()
    cache = None if simulator_enabled() or os.environ.get(CACHE_ENV, "1") == "0" else \
        _keyed_cache(fn, cache_key)
    if cache is None:
        return cuda.jit(signature)(fn)
    # what cuda.jit(signature, cache=True) does, with the keyed cache in place of its own
    kernel = cuda.jit(fn)                  # a dispatcher, nothing compiled yet
    kernel._cache = cache
    kernel.compile(signature)
    kernel._specialized = True
    kernel.disable_compile()
    return kernel


def _keyed_cache(fn, cache_key):
    """numba-cuda's kernel cache for `fn` with `cache_key` and numba-cuda's version in every
    index key (its own keys hold the version only from some release after 0.20, which
    fastbp allows), or None where it cannot be made (no writable cache folder, another
    numba-cuda layout)."""
    try:
        import numba_cuda
        return _keyed_cache_class()(fn, (cache_key, numba_cuda.__version__))
    except (ImportError, AttributeError, RuntimeError, OSError):
        return None


@functools.cache
def _keyed_cache_class():
    from numba.cuda.dispatcher import CUDACache

    class KeyedCache(CUDACache):
        def __init__(self, py_func, cache_key):
            self._fastbp_key = cache_key
            super().__init__(py_func)

        def _index_key(self, sig, codegen):
            return super()._index_key(sig, codegen) + (("fastbp", self._fastbp_key),)

    return KeyedCache


def describe():
    """The GPU in use, in words (for benchmarks and error messages)."""
    cuda = load()
    if simulator_enabled():
        return "Numba CUDA simulator"
    device = cuda.get_current_device()
    name = device.name.decode() if isinstance(device.name, bytes) else device.name
    return f"{name} (compute capability {device.compute_capability[0]}." \
           f"{device.compute_capability[1]})"


def graph_builder():
    """A `cuda.core` GraphBuilder on numba-cuda's current device (its primary context, made
    current: a no-op when it is), not yet building. numba-cuda (0.30) takes one as the
    stream of a launch, `kernel[grid, block, builder](...)`, which records the launch
    instead of running it."""
    from cuda.core import Device

    device = Device(_import_cuda().get_current_device().id)
    device.set_current()
    return device.create_graph_builder()


def core_stream(stream=0):
    """The `cuda.core` Stream that numba-cuda launches on for `stream` (0: its default
    stream; or a stream from ``numba.cuda.stream()``): a graph launched there is ordered
    with numba-cuda's launches and copies as they are with each other."""
    from numba.cuda.cudadrv import driver

    return driver._to_core_stream(stream)
