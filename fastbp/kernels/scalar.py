"""The element-wise maths of training, written once for both targets.

Every function here is a pure function of scalars (plus one row of an array for the
softmax, which only the GPU uses now: the CPU's is ops.shifted_exp) that calls no other
compiled function but vexp's exp1 and tanh1 (so that its Python compiles for the GPU as it
is, with math.exp and math.tanh in their place). The CPU ops (ops.py, optim.py) call them in
their loops, compiled by Numba for the CPU (`jit`), where vexp's versions keep the loops
vector code (the C library's exp and tanh are scalar calls, about 5 and 16 ns each); gpu.py
compiles the same Python bodies (`fn.py_func`, their `vexp` bound to math's functions) as
CUDA device functions. So an activation, its derivative, a loss term or an optimizer rule
cannot drift apart between the targets, and the CUDA simulator suite checks the GPU's
copies against the CPU's.

Constants arrive in `k`, a tuple in the data's dtype built once per kernel (`constants` on
the CPU; gpu.py builds its own): a bare float literal would make float32 code compute in
float64. Index it with the names below.
"""
import math

from . import vexp
from .codes import BINARY_CROSS_ENTROPY, GELU_C, GELU_K, LEAKY_SLOPE, MSE, POISSON
from .codes import jit_inline as jit

# positions in the constants tuple `k`
ZERO, ONE, HALF, TWO, THREE, SLOPE, GC, GK = range(8)


def constant_values():
    """The values of `k`, in order (each target converts them to the data's dtype)."""
    return (0.0, 1.0, 0.5, 2.0, 3.0, LEAKY_SLOPE, GELU_C, GELU_K)


@jit
def constants(x):
    """`k` in the dtype of the array x."""
    t = x.dtype.type
    return (t(0.0), t(1.0), t(0.5), t(2.0), t(3.0), t(LEAKY_SLOPE), t(GELU_C), t(GELU_K))


# -------------------------------------------------------------------- activations

# One function per activation and per derivative, not one switch over the codes: the CPU
# loops run one code each, and a switch inlined into every loop added ~5 s to a cold start.
# The derivatives take what they need: relu and leaky_relu the sign of z (or of a = act(z),
# the same for relu), tanh and sigmoid a = act(z) (recomputed from z by the caller when
# dropout has rescaled a), gelu z.

@jit
def relu(z, k):
    return k[ZERO] if z < k[ZERO] else z      # NaN passes through


@jit
def relu_grad(g, a, k):
    return g if a > k[ZERO] else k[ZERO]


@jit
def leaky_relu(z, k):
    return k[SLOPE] * z if z < k[ZERO] else z


@jit
def leaky_relu_grad(g, z, k):
    return g if z > k[ZERO] else g * k[SLOPE]


@jit
def tanh(z, k):
    return vexp.tanh1(z)


@jit
def tanh_grad(g, a, k):
    return g * (k[ONE] - a * a)


@jit
def sigmoid(z, k):
    """1 / (1 + exp(-z)) without overflow and without a branch on the exp (loops
    vectorise)."""
    e = vexp.exp1(-abs(z))
    s = k[ONE] / (k[ONE] + e)
    return s if z >= k[ZERO] else e * s


@jit
def sigmoid_grad(g, a, k):
    return g * (a * (k[ONE] - a))


@jit
def gelu(z, k):
    """The tanh approximation."""
    return k[HALF] * z * (k[ONE] + vexp.tanh1(k[GC] * (z + k[GK] * z * z * z)))


@jit
def gelu_grad(g, z, k):
    t = vexp.tanh1(k[GC] * (z + k[GK] * z * z * z))
    return g * (k[HALF] * (k[ONE] + t)
                + k[HALF] * z * (k[ONE] - t * t) * k[GC] * (k[ONE] + k[THREE] * k[GK] * z * z))


# ------------------------------------------------------------------------- losses

@jit
def output_term(z, t, loss_code, k):
    """For one logit z and its target t of the element-wise losses: (the output activation
    p, the loss term, 1 if the 0/1 prediction is right else 0). The loss's delta is
    (p - t) times the row's scale (the canonical link). binary_cross_entropy: sigmoid and
    the stable log-loss; poisson: exp and exp(z) - t z (PyTorch's PoissonNLLLoss); mse:
    identity and (z - t)^2."""
    if loss_code == BINARY_CROSS_ENTROPY:
        e = math.exp(-abs(z))
        sg = k[ONE] / (k[ONE] + e)
        p = sg if z >= k[ZERO] else e * sg
        right = 1 if (z >= k[ZERO]) == (t >= k[HALF]) else 0
        return p, max(z, k[ZERO]) - z * t + math.log1p(e), right
    if loss_code == POISSON:
        p = math.exp(z)
        return p, p - t * z, 0
    d = z - t
    return z, d * d, 0


@jit
def output_scale(loss_code, n_outputs, inv_count, k):
    """The factor of an element-wise loss's delta per unit of row weight: inv_count / K,
    doubled for mse (the derivative of the square)."""
    per_output = inv_count / n_outputs
    return per_output * k[TWO] if loss_code == MSE else per_output


@jit
def softmax_row(Z, r, E, k):
    """E[r, j] = exp(Z[r, j] - max_j Z[r, j]) for one row of logits; returns (the max, its
    first index, the sum of E[r]): softmax is E / sum, the cross-entropy of label y is
    max + log(sum) - Z[r, y]."""
    K = Z.shape[1]
    mx = Z[r, 0]
    arg = 0
    for j in range(1, K):
        if Z[r, j] > mx:
            mx = Z[r, j]
            arg = j
    s = k[ZERO]
    for j in range(K):
        e = math.exp(Z[r, j] - mx)
        E[r, j] = e
        s += e
    return mx, arg, s


# ---------------------------------------------------------------- optimizer rules
# One element of PyTorch's update rules (torch.optim, foreach=False); g is the gradient
# already scaled by the clipping factor, with the weight decay added where it applies.

@jit
def sgd_rule(p, g, buf, lr, momentum, nesterov):
    """-> (p, buf): buf = mu*buf + g; p -= lr * (nesterov ? g + mu*buf : buf); plain
    p -= lr*g when momentum is 0 (buf unused)."""
    if momentum == 0:
        return p - lr * g, buf
    buf = momentum * buf + g
    return p - lr * (g + momentum * buf if nesterov else buf), buf


@jit
def adam_rule(p, g, m, v, step_size, beta1, beta2, eps, inv_sqrt_bc2, one):
    """-> (p, m, v): m = b1*m + (1-b1) g; v = b2*v + (1-b2) g^2;
    p -= step_size * m / (sqrt(v)/sqrt(bc2) + eps), step_size = lr / (1 - b1^t)."""
    m = beta1 * m + (one - beta1) * g
    v = beta2 * v + (one - beta2) * g * g
    return p - step_size * m / (math.sqrt(v) * inv_sqrt_bc2 + eps), m, v


@jit
def rmsprop_rule(p, g, buf, v, lr, alpha, eps, momentum, one):
    """-> (p, buf, v): v = alpha*v + (1-alpha) g^2; p -= lr * g / (sqrt(v) + eps), through
    the momentum buffer buf = mu*buf + g / (sqrt(v) + eps) when momentum > 0."""
    v = alpha * v + (one - alpha) * g * g
    if momentum == 0:
        return p - lr * g / (math.sqrt(v) + eps), buf, v
    buf = momentum * buf + g / (math.sqrt(v) + eps)
    return p - lr * buf, buf, v
