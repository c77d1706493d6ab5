"""fastbp: multi-layer perceptrons trained by backpropagation in one compiled call per epoch."""
from .estimators import MLPClassifier, MLPRegressor
from .trainer import Trainer, warmup

__version__ = "0.1.0"
__all__ = ["MLPClassifier", "MLPRegressor", "Trainer", "warmup", "__version__"]
