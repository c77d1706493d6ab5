import os
import sys

import numpy as np
import pytest

# tests/cuda runs where Numba's CUDA target can: under its simulator (NUMBA_ENABLE_CUDASIM=1,
# which must be set before Numba is imported: tests/test_cuda.py starts that run in a
# subprocess) or on a GPU (FASTBP_CUDA_TESTS=1).
CUDA_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
CUDA_TESTS = CUDA_SIMULATOR or os.environ.get("FASTBP_CUDA_TESTS", "0") not in ("", "0")
collect_ignore = [] if CUDA_TESTS else ["cuda"]
if CUDA_SIMULATOR:
    # the simulator runs a GPU thread per Python thread and its launcher busy-waits on them:
    # a short GIL switch interval makes its kernels about 10x faster
    sys.setswitchinterval(1e-5)

    def _lock_simulated_shared_arrays():
        """The simulator finds a block's shared array by the line that declares it, with an
        unlocked look-up-or-create: two threads of a block can each create their own
        array, which then is not shared (seen as rare wrong results, more often with the
        short switch interval). Same look-up, under a lock."""
        import threading

        from numba.core import types
        from numba.cuda.simulator import kernelapi
        from numba.np import numpy_support

        lock = threading.Lock()
        unlocked = kernelapi.FakeCUDAShared.array

        def array(self, shape, dtype, alignment=None):
            if shape == 0 or alignment is not None:        # dynamic / unsupported: as before
                return unlocked(self, shape, dtype, alignment)
            frame = sys._getframe(1)
            caller = (frame.f_code.co_filename, frame.f_lineno)
            with lock:
                res = self._allocations.get(caller)
                if res is None:
                    if isinstance(dtype, types.Type):
                        dtype = numpy_support.as_dtype(dtype)
                    res = self._allocations[caller] = np.empty(shape, dtype)
            return res

        kernelapi.FakeCUDAShared.array = array

    _lock_simulated_shared_arrays()

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


def diverging_adam_run():
    """The divergence scenario of the roll-back tests: Adam on shuffled minibatches, and a
    callback that sets a huge lr after two good epochs, so the third epoch diverges after at
    least one update. Returns (X, y, the Trainer to fit, a twin fitted for the two good
    epochs only, the callback)."""
    from fastbp import Trainer

    X, y = make_data("cross_entropy", 6, 3, n=48)
    kw = dict(optimizer="adam", lr=1e-2, batch_size=8, shuffle=True, seed=0, dtype="float64")
    t = Trainer([6, 8, 3], **kw)
    twin = Trainer([6, 8, 3], **kw)
    twin.fit(X, y, epochs=2, progress=False)

    def blow_up_after_epoch_1(trainer, epoch, logs):
        if epoch == 1:
            trainer.lr = 1e300
    return X, y, t, twin, blow_up_after_epoch_1


@pytest.fixture
def data():
    return make_data


def cpu_activation(z, code, k):
    """act(z) by kernels/scalar.py's CPU-compiled function for an activation code."""
    from fastbp.kernels import codes, scalar
    fn = {codes.RELU: scalar.relu, codes.LEAKY_RELU: scalar.leaky_relu,
          codes.TANH: scalar.tanh, codes.SIGMOID: scalar.sigmoid, codes.GELU: scalar.gelu}
    return fn[code](z, k) if code in fn else z


def cpu_activation_grad(g, z, a, code, from_z, k):
    """g * act'(z) as ops.activation_backward takes it, through scalar.py's functions."""
    from fastbp.kernels import codes, scalar
    if code == codes.RELU:
        return scalar.relu_grad(g, z if from_z else a, k)
    if code == codes.LEAKY_RELU:
        return scalar.leaky_relu_grad(g, z, k)
    if code == codes.TANH:
        return scalar.tanh_grad(g, scalar.tanh(z, k) if from_z else a, k)
    if code == codes.SIGMOID:
        return scalar.sigmoid_grad(g, scalar.sigmoid(z, k) if from_z else a, k)
    if code == codes.GELU:
        return scalar.gelu_grad(g, z, k)
    return g
