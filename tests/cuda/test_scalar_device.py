"""The element-wise maths of kernels/scalar.py compiled as CUDA device functions (under the
simulator, or on a GPU) against the same functions compiled for the CPU: one copy of the
maths, equal on both targets."""
import numpy as np
import pytest
from numba import cuda   # a module global: the simulator swaps it while a kernel runs

from conftest import cpu_activation, cpu_activation_grad
from fastbp.kernels import gpu, scalar
from fastbp.kernels.codes import ACTIVATION_CODES, BINARY_CROSS_ENTROPY, MSE, POISSON

Z = np.array([-30.0, -2.5, -0.3, -0.0, 0.0, 0.2, 1.7, 40.0, np.nan])


def _device(dtype):
    gpu.get_kernels(dtype)                    # loads numba-cuda (simulator or driver)
    c = gpu._Context(np.dtype(dtype).name, 2, 2, 8, None)
    return c, gpu._device_functions(c)


def _close(a, b, dtype):
    tol = 1e-13 if dtype == "float64" else 2e-6
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_activations_and_derivatives_equal_the_cpus(dtype):
    c, dev = _device(dtype)
    consts = c.k
    act, grad = dev.activation, dev.activation_grad

    @cuda.jit
    def run(z, code, out, dout):
        i = cuda.grid(1)
        if i < z.shape[0]:
            a = act(z[i], code, consts)
            out[i] = a
            dout[i, 0] = grad(z[i] + z[i], z[i], a, code, False, consts)
            dout[i, 1] = grad(z[i] + z[i], z[i], a, code, True, consts)

    z = Z.astype(dtype)
    k = scalar.constants(z)
    for code in ACTIVATION_CODES:
        out, dout = np.empty_like(z), np.empty((z.size, 2), dtype)
        run[1, 16](z, code, out, dout)
        cpu = np.array([cpu_activation(v, code, k) for v in z])
        cpu_d = np.array([[cpu_activation_grad(v + v, v, a, code, f, k) for f in (0, 1)]
                          for v, a in zip(z, cpu)])
        _close(out, cpu, dtype)
        _close(dout, cpu_d, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_loss_terms_and_optimizer_rules_equal_the_cpus(dtype):
    c, dev = _device(dtype)
    consts, one = c.k, c.k[scalar.ONE]
    term, sgd, adam, rms = dev.output_term, dev.sgd_rule, dev.adam_rule, dev.rmsprop_rule
    F = c.NPF

    @cuda.jit
    def run(z, t, code, out):
        i = cuda.grid(1)
        if i < z.shape[0]:
            p, value, right = term(z[i], t[i], code, consts)
            out[i, 0], out[i, 1], out[i, 2] = p, value, right
            g = z[i] * F(0.01)       # t >= 0 is also the second moments
            out[i, 3], out[i, 4] = sgd(t[i], g, z[i], F(0.1), F(0.9), True)
            out[i, 5], out[i, 6], out[i, 7] = adam(t[i], g, z[i], t[i], F(0.2), F(0.9),
                                                   F(0.999), F(1e-7), F(3.0), one)
            out[i, 8], out[i, 9], out[i, 10] = rms(t[i], g, z[i], t[i], F(0.1),
                                                   F(0.99), F(1e-7), F(0.5), one)

    z = Z[1:-2].astype(dtype)
    t = np.linspace(0.0, 3.0, z.size).astype(dtype)
    k = scalar.constants(z)
    for code in (BINARY_CROSS_ENTROPY, POISSON, MSE):
        out = np.empty((z.size, 11), dtype)
        run[1, 16](z, t, code, out)
        for i, (zi, ti) in enumerate(zip(z, t)):
            p, value, right = scalar.output_term(zi, ti, code, k)
            g = zi * F(0.01)
            expected = [p, value, right, *scalar.sgd_rule(ti, g, zi, F(0.1), F(0.9), True),
                        *scalar.adam_rule(ti, g, zi, ti, F(0.2), F(0.9), F(0.999), F(1e-7),
                                          F(3.0), F(1.0)),
                        *scalar.rmsprop_rule(ti, g, zi, ti, F(0.1), F(0.99), F(1e-7),
                                             F(0.5), F(1.0))]
            _close(out[i], np.array(expected, dtype=dtype), dtype)
