"""Optimizer updates: one elementwise loop over a segment [lo, hi) of the flat buffers.

PyTorch's update rules (torch.optim, foreach=False), with the gradient already clipped by
``clip`` (1 when no clipping applies) and the weight decay ``decay`` (0 for biases).
The per-step scalars (learning rate, bias corrections) are computed once per step by the
caller and arrive here in the parameters' dtype.

Buffers: params, grads (P,); m (P,) is the momentum buffer (sgd, rmsprop) or Adam's first
moment; v (P,) Adam's second moment or RMSprop's square average. Unused ones may be empty.
"""
import numpy as np

from .ops import jit

SGD, ADAM, ADAMW, RMSPROP = 0, 1, 2, 3

# Layout of the float64 `hyper` array handed to the epoch kernel.
H_LR, H_MOMENTUM, H_NESTEROV, H_BETA1, H_BETA2, H_EPS, H_DECAY, H_CLIP, H_ALPHA = range(9)
N_HYPER = 9


@jit
def sgd_update(params, grads, m, lo, hi, lr, momentum, nesterov, decay, clip):
    """p -= lr * (nesterov ? g + mu*buf : buf), buf = mu*buf + g, g = clip*grad + decay*p."""
    zero = params.dtype.type(0)
    if momentum == zero:
        for i in range(lo, hi):
            g = clip * grads[i] + decay * params[i]
            params[i] -= lr * g
    elif nesterov:
        for i in range(lo, hi):
            g = clip * grads[i] + decay * params[i]
            buf = momentum * m[i] + g
            m[i] = buf
            params[i] -= lr * (g + momentum * buf)
    else:
        for i in range(lo, hi):
            g = clip * grads[i] + decay * params[i]
            buf = momentum * m[i] + g
            m[i] = buf
            params[i] -= lr * buf


@jit
def adam_update(params, grads, m, v, lo, hi, step_size, beta1, beta2, eps, inv_sqrt_bc2,
                decay, decoupled_shrink, clip):
    """Adam (decay added to the gradient) or AdamW (decay decoupled: params are first
    multiplied by decoupled_shrink = 1 - lr*decay, and decay is 0 here).
    m = b1*m + (1-b1) g; v = b2*v + (1-b2) g^2; p -= step_size * m / (sqrt(v)/sqrt(bc2) + eps)."""
    one = params.dtype.type(1)
    for i in range(lo, hi):
        p = params[i] * decoupled_shrink
        g = clip * grads[i] + decay * p
        mi = beta1 * m[i] + (one - beta1) * g
        vi = beta2 * v[i] + (one - beta2) * g * g
        m[i] = mi
        v[i] = vi
        params[i] = p - step_size * mi / (np.sqrt(vi) * inv_sqrt_bc2 + eps)


@jit
def rmsprop_update(params, grads, m, v, lo, hi, lr, alpha, eps, momentum, decay, clip):
    """v = alpha*v + (1-alpha) g^2; p -= lr * g / (sqrt(v) + eps), through a momentum
    buffer m when momentum > 0."""
    zero = params.dtype.type(0)
    one = params.dtype.type(1)
    for i in range(lo, hi):
        g = clip * grads[i] + decay * params[i]
        vi = alpha * v[i] + (one - alpha) * g * g
        v[i] = vi
        step = g / (np.sqrt(vi) + eps)
        if momentum != zero:
            step = momentum * m[i] + step
            m[i] = step
        params[i] -= lr * step


@jit
def update_segment(params, grads, m, v, lo, hi, opt_code, hyper, step, is_weight, clip):
    """Apply the optimizer `opt_code` to params[lo:hi] for optimizer step `step` (1-based).
    is_weight selects weight decay (weights only); clip scales the gradient."""
    t = params.dtype.type
    lr = hyper[H_LR]
    decay = hyper[H_DECAY] if is_weight else 0.0
    if opt_code == SGD:
        sgd_update(params, grads, m, lo, hi, t(lr), t(hyper[H_MOMENTUM]),
                   hyper[H_NESTEROV] != 0.0, t(decay), clip)
    elif opt_code == ADAM or opt_code == ADAMW:
        beta1 = hyper[H_BETA1]
        beta2 = hyper[H_BETA2]
        bc1 = 1.0 - beta1 ** step
        bc2 = 1.0 - beta2 ** step
        shrink = 1.0
        if opt_code == ADAMW:
            shrink = 1.0 - lr * decay
            decay = 0.0
        adam_update(params, grads, m, v, lo, hi, t(lr / bc1), t(beta1), t(beta2),
                    t(hyper[H_EPS]), t(1.0 / np.sqrt(bc2)), t(decay), t(shrink), clip)
    else:
        rmsprop_update(params, grads, m, v, lo, hi, t(lr), t(hyper[H_ALPHA]), t(hyper[H_EPS]),
                       t(hyper[H_MOMENTUM]), t(decay), clip)
