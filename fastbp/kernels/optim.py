"""Optimizer updates: one elementwise loop over a segment [lo, hi) of the flat buffers.

PyTorch's update rules (torch.optim, foreach=False; each element's rule is scalar.py's,
shared with the GPU's optimizer kernel), with the gradient already clipped by
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

from .codes import ADAM, ADAMW, RMSPROP, SGD, jit  # noqa: F401
from .scalar import adam_rule, rmsprop_rule, sgd_rule


@jit
def sgd_update(params, grads, m, lo, hi, lr, momentum, nesterov, decay, clip):
    """scalar.sgd_rule with g = clip*grad + decay*p (m unused and may be empty without
    momentum)."""
    P = params[lo:hi]
    G = grads[lo:hi]
    if momentum == params.dtype.type(0):
        for i in range(P.shape[0]):
            P[i] = sgd_rule(P[i], clip * G[i] + decay * P[i], P[i], lr, momentum, nesterov)[0]
        return
    M = m[lo:hi]
    for i in range(P.shape[0]):
        P[i], M[i] = sgd_rule(P[i], clip * G[i] + decay * P[i], M[i], lr, momentum, nesterov)


@jit
def adam_update(params, grads, m, v, lo, hi, step_size, beta1, beta2, eps, inv_sqrt_bc2,
                decay, decoupled_shrink, clip):
    """Adam (decay added to the gradient) or AdamW (decay decoupled: params are first
    multiplied by decoupled_shrink = 1 - lr*decay, and decay is 0 here): scalar.adam_rule."""
    one = params.dtype.type(1)
    P = params[lo:hi]
    G = grads[lo:hi]
    M = m[lo:hi]
    V = v[lo:hi]
    for i in range(P.shape[0]):
        p = P[i] * decoupled_shrink
        P[i], M[i], V[i] = adam_rule(p, clip * G[i] + decay * p, M[i], V[i], step_size, beta1,
                                     beta2, eps, inv_sqrt_bc2, one)


@jit
def rmsprop_update(params, grads, m, v, lo, hi, lr, alpha, eps, momentum, decay, clip):
    """scalar.rmsprop_rule, through the momentum buffer m when momentum > 0 (else m is
    unused and may be empty)."""
    one = params.dtype.type(1)
    P = params[lo:hi]
    G = grads[lo:hi]
    V = v[lo:hi]
    if momentum == params.dtype.type(0):
        for i in range(P.shape[0]):
            P[i], _, V[i] = rmsprop_rule(P[i], clip * G[i] + decay * P[i], P[i], V[i], lr,
                                         alpha, eps, momentum, one)
        return
    M = m[lo:hi]
    for i in range(P.shape[0]):
        P[i], M[i], V[i] = rmsprop_rule(P[i], clip * G[i] + decay * P[i], M[i], V[i], lr,
                                        alpha, eps, momentum, one)


@jit
def bias_corrections(hyper, step):
    """Adam's 1 - beta1^t and 1 - beta2^t for step t (1-based), once per step."""
    t = np.float64(step)
    return 1.0 - hyper.beta1 ** t, 1.0 - hyper.beta2 ** t


@jit
def adam_step_size(hyper, bc1, bc2):
    """Adam's (step_size, inv_sqrt_bc2) for scalar.adam_rule: (lr / bc1, 1 / sqrt(bc2)),
    PyTorch's eps on sqrt(v_hat); under hyper.eps_hat (lr sqrt(bc2) / bc1, 1), eps on the
    uncorrected sqrt(v), as scikit-learn's AdamOptimizer."""
    if hyper.eps_hat != 0.0:
        return hyper.lr * np.sqrt(bc2) / bc1, 1.0
    return hyper.lr / bc1, 1.0 / np.sqrt(bc2)


@jit
def step_decay(hyper, inv_count):
    """This step's weight decay: hyper.decay, or per unit of batch weight (inv_count: 1 /
    the batch's rows or total weight) under hyper.decay_per_weight."""
    if hyper.decay_per_weight != 0.0:
        return hyper.decay * np.float64(inv_count)
    return hyper.decay


@jit
def update_segment(params, grads, m, v, lo, hi, opt_code, hyper, bc1, bc2, is_weight, clip,
                   decay):
    """Apply the optimizer `opt_code` with the settings `hyper` (args.Hyper) to
    params[lo:hi]. bc1, bc2: this step's Adam bias
    corrections; is_weight selects weight decay `decay` (weights only, this step's, see
    step_decay); clip scales the gradient."""
    t = params.dtype.type
    lr = hyper.lr
    decay = decay if is_weight else 0.0
    if opt_code == SGD:
        sgd_update(params, grads, m, lo, hi, t(lr), t(hyper.momentum), hyper.nesterov != 0.0,
                   t(decay), clip)
    elif opt_code == ADAM or opt_code == ADAMW:
        shrink = 1.0
        if opt_code == ADAMW:
            shrink = 1.0 - lr * decay
            decay = 0.0
        step_size, inv_sqrt_bc2 = adam_step_size(hyper, bc1, bc2)
        adam_update(params, grads, m, v, lo, hi, t(step_size), t(hyper.beta1),
                    t(hyper.beta2), t(hyper.eps), t(inv_sqrt_bc2), t(decay), t(shrink), clip)
    else:
        rmsprop_update(params, grads, m, v, lo, hi, t(lr), t(hyper.alpha), t(hyper.eps),
                       t(hyper.momentum), t(decay), clip)
