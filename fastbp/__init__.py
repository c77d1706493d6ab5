"""fastbp: multi-layer perceptrons trained by backpropagation in one compiled call per epoch."""
import importlib

from . import callbacks, schedules
from .estimators import MLPClassifier, MLPRegressor
from .health import DivergenceError, TrainingHealthWarning
from .kernels.cuda_backend import CudaUnavailableError
from .patch import patch_sklearn, unpatch_sklearn
from .trainer import Trainer, warmup

__version__ = "0.1.0"
__all__ = ["CudaUnavailableError", "DivergenceError", "MLPClassifier", "MLPRegressor", "Trainer",
           "TrainingHealthWarning", "callbacks", "patch_sklearn", "schedules", "unpatch_sklearn",
           "warmup", "__version__"]

# submodules with optional dependencies, imported on first use: `fastbp.plot.training_report`
# works after `import fastbp` (matplotlib, Dask and pyarrow are imported only when called)
_LAZY = ("distributed", "plot", "streaming")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
