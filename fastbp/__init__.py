"""fastbp: multi-layer perceptrons trained by backpropagation in one compiled call per epoch."""
from . import callbacks, schedules
from .estimators import MLPClassifier, MLPRegressor
from .health import DivergenceError, TrainingHealthWarning
from .kernels.cuda_backend import CudaUnavailableError
from .trainer import Trainer, warmup

__version__ = "0.1.0"
__all__ = ["CudaUnavailableError", "DivergenceError", "MLPClassifier", "MLPRegressor", "Trainer",
           "TrainingHealthWarning", "callbacks", "schedules", "warmup", "__version__"]
