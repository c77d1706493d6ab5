"""Compile-time variants of the CPU kernels: dense rows, CSR rows, CSR rows with the lazy
update.

Where dense and CSR rows need different code, the kernels of ops.py, optim.py and cpu.py
branch on the module constants SPARSE and LAZY instead of on the data. Numba reads a global
as a compile-time constant and prunes the branches it rules out before typing, so a dense
fit neither types nor compiles the CSR code (about a sixth of a cold start) and a CSR fit
compiles none of the dense first layer.

`variant(mode)` builds, once per process, a copy of every compiled function of those
modules whose globals set SPARSE and LAZY for the mode and whose callees are the same
variant's copies. Each copy is named after its variant (``forward_backward__csr``), so
Numba's on-disk cache keeps the variants apart: its cache key covers a function's name,
file and bytecode, not its globals. The functions as written in the modules are templates
and are never compiled themselves.
"""
import threading
import types

from numba import njit
from numba.core.registry import CPUDispatcher

from . import cpu, ops, optim
from .prebuilt import cached

MODES = ("dense", "csr", "csr_lazy")
_SETTINGS = {"dense": {"SPARSE": False, "LAZY": False},
             "csr": {"SPARSE": True, "LAZY": False},
             "csr_lazy": {"SPARSE": True, "LAZY": True}}
_MODULES = (ops, optim, cpu)
_built = {}
_lock = threading.Lock()      # estimators fitted from joblib threads may ask at once


def mode(rows, lazy=0.0):
    """The variant a call needs: rows (args.Rows) dense or CSR, and the lazy update (hyper.lazy,
    training only)."""
    if not rows.sparse:
        return "dense"
    return "csr_lazy" if lazy != 0.0 else "csr"


def _templates(module):
    """The compiled functions defined in `module` (not those it imports; scalar.py's are
    inlined into their callers and need no copies)."""
    return {name: obj for name, obj in vars(module).items()
            if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == module.__name__}


def variant(name):
    """A namespace of every kernel function compiled for the mode `name` (one of MODES),
    e.g. ``variant("dense").train_epoch_serial``."""
    built = _built.get(name)
    if built is not None:
        return built
    with _lock:
        if name not in _built:
            _built[name] = _build(name)
    return _built[name]


def _build(name):
    settings = _SETTINGS[name]
    copies = {}                          # id(template) -> (name, the variant's copy)
    names = set()
    for module in _MODULES:
        namespace = dict(vars(module), **settings)
        for fn_name, template in _templates(module).items():
            py = template.py_func
            fn = types.FunctionType(py.__code__, namespace, f"{fn_name}__{name}",
                                    py.__defaults__, py.__closure__)
            fn.__qualname__ = f"{py.__qualname__}__{name}"
            fn.__doc__ = py.__doc__
            fn.__module__ = py.__module__
            assert fn_name not in names, f"two kernel functions named {fn_name}"
            names.add(fn_name)
            options = {k: v for k, v in template.targetoptions.items() if k != "nopython"}
            copies[id(template)] = (fn_name, cached(njit(**options)(fn)))
    # every copy's globals name the variant's copies of its callees, whichever module
    # defines them (cpu.py calls ops.py's and optim.py's functions)
    for _, copy in copies.values():
        namespace = copy.py_func.__globals__
        for key, value in list(namespace.items()):
            if id(value) in copies:
                namespace[key] = copies[id(value)][1]
    return types.SimpleNamespace(**{fn_name: copy for fn_name, copy in copies.values()})
