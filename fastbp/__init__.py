"""fastbp: multi-layer perceptrons trained by backpropagation in one compiled call per epoch."""
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
