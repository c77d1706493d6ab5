import numpy as np
import pytest

ACTIVATIONS = ["identity", "relu", "leaky_relu", "tanh", "sigmoid", "gelu"]
LOSSES = ["cross_entropy", "binary_cross_entropy", "mse", "poisson"]
OPTIMIZERS = ["sgd", "adam", "adamw", "rmsprop"]


def make_data(loss, n_in, n_out, n=40, seed=0):
    """Synthetic (X, y) for a loss: labels, 0/1 targets or real targets."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in))
    if loss == "cross_entropy":
        y = rng.integers(0, n_out, size=n)
    elif loss == "binary_cross_entropy":
        y = (rng.random((n, n_out)) < 0.5).astype(float)
    elif loss == "poisson":
        y = rng.poisson(2.0, size=(n, n_out)).astype(float)
    else:
        y = rng.normal(size=(n, n_out))
    return X, y


@pytest.fixture
def data():
    return make_data
