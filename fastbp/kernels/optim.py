"""Optimizer updates: one elementwise loop over a segment [lo, hi) of the flat buffers.

PyTorch's update rules (torch.optim, foreach=False), with the gradient already clipped by
``clip`` (1 when no clipping applies) and the weight decay ``decay`` (0 for biases).
The per-step scalars (learning rate, bias corrections) are computed once per step by the
caller and arrive here in the parameters' dtype.

Buffers: params, grads (P,); m (P,) is the momentum buffer (sgd, rmsprop) or Adam's first
moment; v (P,) Adam's second moment or RMSprop's square average. Unused ones may be empty.

Each loop runs over views sliced to [lo, hi) and indexed from 0: with `range(lo, hi)` Numba
cannot prove the index non-negative, and its negative-index handling stops LLVM from
vectorising the loop (4-8x slower for Adam).
"""
import numpy as np

from .ops import jit

SGD, ADAM, ADAMW, RMSPROP = 0, 1, 2, 3

# Layout of the float64 `hyper` array handed to the epoch kernel. H_DECAY_PER_WEIGHT (0/1):
# weight decay per unit of batch weight, decay / (the batch's rows or total sample weight),
# which is scikit-learn's L2 term alpha/2 ||W||^2 / n_batch; 0 is PyTorch's constant decay.
(H_LR, H_MOMENTUM, H_NESTEROV, H_BETA1, H_BETA2, H_EPS, H_DECAY, H_CLIP, H_ALPHA,
 H_DECAY_PER_WEIGHT) = range(10)
N_HYPER = 10


@jit
def sgd_update(params, grads, m, lo, hi, lr, momentum, nesterov, decay, clip):
    """p -= lr * (nesterov ? g + mu*buf : buf), buf = mu*buf + g, g = clip*grad + decay*p."""
    P = params[lo:hi]
    G = grads[lo:hi]
    if momentum == params.dtype.type(0):
        for i in range(P.shape[0]):
            P[i] -= lr * (clip * G[i] + decay * P[i])
        return
    M = m[lo:hi]
    if nesterov:
        for i in range(P.shape[0]):
            g = clip * G[i] + decay * P[i]
            buf = momentum * M[i] + g
            M[i] = buf
            P[i] -= lr * (g + momentum * buf)
    else:
        for i in range(P.shape[0]):
            g = clip * G[i] + decay * P[i]
            buf = momentum * M[i] + g
            M[i] = buf
            P[i] -= lr * buf


@jit
def adam_update(params, grads, m, v, lo, hi, step_size, beta1, beta2, eps, inv_sqrt_bc2,
                decay, decoupled_shrink, clip):
    """Adam (decay added to the gradient) or AdamW (decay decoupled: params are first
    multiplied by decoupled_shrink = 1 - lr*decay, and decay is 0 here).
    m = b1*m + (1-b1) g; v = b2*v + (1-b2) g^2; p -= step_size * m / (sqrt(v)/sqrt(bc2) + eps)."""
    one = params.dtype.type(1)
    P = params[lo:hi]
    G = grads[lo:hi]
    M = m[lo:hi]
    V = v[lo:hi]
    for i in range(P.shape[0]):
        p = P[i] * decoupled_shrink
        g = clip * G[i] + decay * p
        mi = beta1 * M[i] + (one - beta1) * g
        vi = beta2 * V[i] + (one - beta2) * g * g
        M[i] = mi
        V[i] = vi
        P[i] = p - step_size * mi / (np.sqrt(vi) * inv_sqrt_bc2 + eps)


@jit
def rmsprop_update(params, grads, m, v, lo, hi, lr, alpha, eps, momentum, decay, clip):
    """v = alpha*v + (1-alpha) g^2; p -= lr * g / (sqrt(v) + eps), through a momentum
    buffer m when momentum > 0."""
    one = params.dtype.type(1)
    P = params[lo:hi]
    G = grads[lo:hi]
    V = v[lo:hi]
    if momentum == params.dtype.type(0):
        for i in range(P.shape[0]):
            g = clip * G[i] + decay * P[i]
            vi = alpha * V[i] + (one - alpha) * g * g
            V[i] = vi
            P[i] -= lr * g / (np.sqrt(vi) + eps)
        return
    M = m[lo:hi]
    for i in range(P.shape[0]):
        g = clip * G[i] + decay * P[i]
        vi = alpha * V[i] + (one - alpha) * g * g
        V[i] = vi
        buf = momentum * M[i] + g / (np.sqrt(vi) + eps)
        M[i] = buf
        P[i] -= lr * buf


@jit
def bias_corrections(hyper, step):
    """Adam's 1 - beta1^t and 1 - beta2^t for step t (1-based), once per step."""
    t = np.float64(step)
    return 1.0 - hyper[H_BETA1] ** t, 1.0 - hyper[H_BETA2] ** t


@jit
def step_decay(hyper, inv_count):
    """This step's weight decay: hyper's, or per unit of batch weight (inv_count: 1 / the
    batch's rows or total weight) under H_DECAY_PER_WEIGHT."""
    if hyper[H_DECAY_PER_WEIGHT] != 0.0:
        return hyper[H_DECAY] * np.float64(inv_count)
    return hyper[H_DECAY]


@jit
def update_segment(params, grads, m, v, lo, hi, opt_code, hyper, bc1, bc2, is_weight, clip,
                   decay):
    """Apply the optimizer `opt_code` to params[lo:hi]. bc1, bc2: this step's Adam bias
    corrections; is_weight selects weight decay `decay` (weights only, this step's, see
    step_decay); clip scales the gradient."""
    t = params.dtype.type
    lr = hyper[H_LR]
    decay = decay if is_weight else 0.0
    if opt_code == SGD:
        sgd_update(params, grads, m, lo, hi, t(lr), t(hyper[H_MOMENTUM]),
                   hyper[H_NESTEROV] != 0.0, t(decay), clip)
    elif opt_code == ADAM or opt_code == ADAMW:
        shrink = 1.0
        if opt_code == ADAMW:
            shrink = 1.0 - lr * decay
            decay = 0.0
        adam_update(params, grads, m, v, lo, hi, t(lr / bc1), t(hyper[H_BETA1]),
                    t(hyper[H_BETA2]), t(hyper[H_EPS]), t(1.0 / np.sqrt(bc2)), t(decay),
                    t(shrink), clip)
    else:
        rmsprop_update(params, grads, m, v, lo, hi, t(lr), t(hyper[H_ALPHA]), t(hyper[H_EPS]),
                       t(hyper[H_MOMENTUM]), t(decay), clip)
