"""fastbp: multi-layer perceptrons trained by backpropagation in one compiled call per epoch."""
import importlib

from . import callbacks, schedules
from .health import DivergenceError, TrainingHealthWarning
from .kernels.cuda_backend import CudaUnavailableError
from .trainer import Trainer, warmup

__version__ = "0.1.0"
__all__ = ["CudaUnavailableError", "DivergenceError", "MLPClassifier", "MLPRegressor", "Trainer",
           "TrainingHealthWarning", "callbacks", "patch_sklearn", "schedules", "unpatch_sklearn",
           "warmup", "__version__"]

# submodules with optional dependencies, imported on first use: `fastbp.plot.training_report`
# works after `import fastbp` (matplotlib, Dask and pyarrow are imported only when called)
_LAZY = ("distributed", "plot", "streaming")
# the scikit-learn side, also on first use: importing scikit-learn takes about 2 s, which a
# script that only uses the Trainer should not pay
_LAZY_NAMES = {"MLPClassifier": "estimators", "MLPRegressor": "estimators",
               "patch_sklearn": "patch", "unpatch_sklearn": "patch"}


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_LAZY_NAMES))
