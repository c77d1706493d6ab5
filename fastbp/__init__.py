"""fastbp: multi-layer perceptrons trained by backpropagation in one compiled call per epoch."""
from .trainer import Trainer

__version__ = "0.1.0"
__all__ = ["Trainer", "__version__"]
