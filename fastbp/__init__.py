"""fastbp: multi-layer perceptrons trained by backpropagation in one compiled call per epoch."""
from .trainer import Trainer, warmup

__version__ = "0.1.0"
__all__ = ["Trainer", "warmup", "__version__"]
