"""The named workloads of DESIGN.md section 6, with seeded synthetic data."""
import numpy as np

WORKLOADS = {
    # name: (layers, batch size, loss)
    "tiny": ([64, 32, 10], 32, "cross_entropy"),
    "mnist": ([784, 256, 128, 10], 128, "cross_entropy"),
    "wide": ([784, 1024, 1024, 10], 256, "cross_entropy"),
    "deep": ([128] + [128] * 8 + [10], 64, "cross_entropy"),
    "regression": ([16, 64, 64, 1], 32, "mse"),
}


def make_data(name, n, dtype="float32"):
    """X (n, n_in) and y for a workload, from np.random.default_rng(0)."""
    layers, _, loss = WORKLOADS[name]
    return make_arrays(layers, loss, n, dtype)


def make_arrays(layers, loss, n, dtype="float32"):
    """Seeded synthetic data for any network: X (n, layers[0]); class labels for
    cross_entropy, real targets (n, layers[-1]) otherwise."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, layers[0])).astype(dtype)
    if loss == "cross_entropy":
        y = rng.integers(0, layers[-1], size=n)
    else:
        y = rng.standard_normal((n, layers[-1])).astype(dtype)
    return X, y


def flops_per_sample(layers):
    """~6 x weights: forward 2, backward 4 FLOPs per weight and sample."""
    return 6 * sum(a * b for a, b in zip(layers[:-1], layers[1:]))
