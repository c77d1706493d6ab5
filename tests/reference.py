"""A plain-NumPy float64 MLP: forward, loss, backward and PyTorch's optimizers.

Short and obviously correct, independent of fastbp's kernels; it is the oracle of the tests
and is itself checked against central finite differences (tests/test_reference.py).
Weights W[l] have shape (fan_in, fan_out); params are lists [W_0, ..., W_{L-1}], [b_0, ...].
"""
import numpy as np

GELU_C = np.sqrt(2.0 / np.pi)


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _gelu(z):
    return 0.5 * z * (1.0 + np.tanh(GELU_C * (z + 0.044715 * z**3)))


def _gelu_prime(z):
    t = np.tanh(GELU_C * (z + 0.044715 * z**3))
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t**2) * GELU_C * (1.0 + 3 * 0.044715 * z**2)


# name: (f(z), f'(z))
ACTIVATIONS = {
    "identity": (lambda z: z, lambda z: np.ones_like(z)),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(float)),
    "leaky_relu": (lambda z: np.where(z > 0, z, 0.01 * z), lambda z: np.where(z > 0, 1.0, 0.01)),
    "tanh": (np.tanh, lambda z: 1.0 - np.tanh(z) ** 2),
    "sigmoid": (_sigmoid, lambda z: _sigmoid(z) * (1.0 - _sigmoid(z))),
    "gelu": (_gelu, _gelu_prime),
}
ACTIVATIONS["logistic"] = ACTIVATIONS["sigmoid"]


def loss_and_delta(Z, y, loss, sample_weight=None):
    """Mean loss of logits Z (n, K) against y (weighted mean with sample_weight), and
    dLoss/dZ."""
    n, K = Z.shape
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    if loss == "cross_entropy":
        m = Z.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(Z - m).sum(axis=1))
        rows = np.arange(n)
        row_loss = lse - Z[rows, y]
        dZ = np.exp(Z - lse[:, None])
        dZ[rows, y] -= 1.0
    else:
        y = np.asarray(y, dtype=float).reshape(n, K)
        if loss == "binary_cross_entropy":
            row_loss = np.mean(np.maximum(Z, 0) - Z * y + np.log1p(np.exp(-np.abs(Z))), axis=1)
            dZ = (_sigmoid(Z) - y) / K
        elif loss == "mse":
            row_loss = np.mean((Z - y) ** 2, axis=1)
            dZ = 2.0 * (Z - y) / K
        elif loss == "poisson":     # PyTorch's PoissonNLLLoss(log_input=True)
            row_loss = np.mean(np.exp(Z) - y * Z, axis=1)
            dZ = (np.exp(Z) - y) / K
        else:
            raise ValueError(loss)
    inv = 1.0 / w.sum() if w.sum() > 0 else 0.0     # a batch of zero weight adds nothing
    return (w @ row_loss) * inv, dZ * (w * inv)[:, None]


def keep_mask(seed, step, rows, layer, n_units, keep):
    """fastbp's dropout mask (kernels/ops.py keep_unit), written out with NumPy's uint64."""
    u = np.uint64
    with np.errstate(over="ignore"):
        x = (u(seed) ^ (u(step) * u(0x9E3779B97F4A7C15))
             ^ (np.asarray(rows, dtype=u)[:, None] * u(0xC2B2AE3D27D4EB4F))
             ^ ((u(layer * 65536) + np.arange(n_units, dtype=u))[None, :]
                * u(0x165667B19E3779F9)))
        x = (x ^ (x >> u(30))) * u(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> u(27))) * u(0x94D049BB133111EB)
        x = x ^ (x >> u(31))
    return (x >> u(11)).astype(float) / 2.0**53 < keep


def forward(Ws, bs, X, acts, dropout=None):
    """Pre-activations Z_l and activations A_l (A_0 = X; the last Z is the logits).
    dropout: (rates, seed, step, rows) for training with inverted dropout; masks returned."""
    A, Zs, As, masks = X, [], [X], []
    for l, (W, b) in enumerate(zip(Ws, bs)):
        Z = A @ W + b
        Zs.append(Z)
        if l < len(Ws) - 1:
            A = ACTIVATIONS[acts[l]][0](Z)
            if dropout is not None and dropout[0][l] > 0:
                rates, seed, step, rows = dropout
                mask = keep_mask(seed, step, rows, l, Z.shape[1], 1 - rates[l]) / (1 - rates[l])
                A = A * mask
                masks.append(mask)
            else:
                masks.append(np.ones_like(Z))
            As.append(A)
    return Zs, As, masks


def loss_and_grad(Ws, bs, X, y, acts, loss, sample_weight=None, dropout=None):
    """Mean loss over (X, y) and its gradient (dWs, dbs), by the chain rule."""
    Zs, As, masks = forward(Ws, bs, X, acts, dropout)
    value, dZ = loss_and_delta(Zs[-1], y, loss, sample_weight)
    dWs, dbs = [None] * len(Ws), [None] * len(Ws)
    for l in range(len(Ws) - 1, -1, -1):
        dWs[l] = As[l].T @ dZ
        dbs[l] = dZ.sum(axis=0)
        if l > 0:
            dZ = (dZ @ Ws[l].T) * masks[l - 1] * ACTIVATIONS[acts[l - 1]][1](Zs[l - 1])
    return value, dWs, dbs


def output(Ws, bs, X, acts, loss):
    """Output activation: softmax, sigmoid or identity of the logits."""
    Z = forward(Ws, bs, X, acts)[0][-1]
    if loss == "cross_entropy":
        e = np.exp(Z - Z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if loss == "poisson":
        return np.exp(Z)
    return _sigmoid(Z) if loss == "binary_cross_entropy" else Z


def flatten(Ws, bs):
    """Lists of W_l, b_l -> fastbp's flat layout [W_0, b_0, W_1, b_1, ...]."""
    return np.concatenate([np.concatenate([W.ravel(), b]) for W, b in zip(Ws, bs)])


def unflatten(flat, sizes):
    Ws, bs, o = [], [], 0
    for a, b in zip(sizes[:-1], sizes[1:]):
        Ws.append(flat[o:o + a * b].reshape(a, b).astype(float))
        o += a * b
        bs.append(flat[o:o + b].astype(float))
        o += b
    return Ws, bs


class Optimizer:
    """torch.optim.{SGD, Adam, AdamW, RMSprop} (foreach=False), written out per tensor,
    plus torch.nn.utils.clip_grad_norm_ before the step. Weight decay on weights only."""

    def __init__(self, name, lr, momentum=0.0, nesterov=False, betas=(0.9, 0.999), eps=1e-8,
                 alpha=0.99, weight_decay=0.0, clip_norm=None, decay_per_weight=False):
        self.__dict__.update(name=name, lr=lr, momentum=momentum, nesterov=nesterov,
                             betas=betas, eps=eps, alpha=alpha, wd=weight_decay,
                             clip_norm=clip_norm, decay_per_weight=decay_per_weight)
        self.t = 0
        self.state = {}

    def step(self, tensors, grads, is_weight, batch_weight=1.0):
        """batch_weight: the batch's rows or total sample weight; with decay_per_weight the
        decay is weight_decay / batch_weight (scikit-learn's L2 term of a batch)."""
        if self.clip_norm is not None:
            total = np.sqrt(sum(np.sum(g * g) for g in grads))
            coef = self.clip_norm / (total + 1e-6)
            if coef < 1.0:
                grads = [g * coef for g in grads]
        self.t += 1
        for i, (p, g, w) in enumerate(zip(tensors, grads, is_weight)):
            wd = (self.wd / batch_weight if self.decay_per_weight else self.wd) if w else 0.0
            s = self.state.setdefault(i, {})
            if self.name == "sgd":
                g = g + wd * p
                if self.momentum:
                    buf = s["buf"] = g.copy() if "buf" not in s else self.momentum * s["buf"] + g
                    g = g + self.momentum * buf if self.nesterov else buf
                p -= self.lr * g
            elif self.name in ("adam", "adamw"):
                if self.name == "adamw":
                    p *= 1.0 - self.lr * wd
                else:
                    g = g + wd * p
                b1, b2 = self.betas
                s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
                s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
                bc1, bc2 = 1 - b1**self.t, 1 - b2**self.t
                denom = np.sqrt(s["v"]) / np.sqrt(bc2) + self.eps
                p -= (self.lr / bc1) * s["m"] / denom
            elif self.name == "rmsprop":
                g = g + wd * p
                s["v"] = self.alpha * s.get("v", 0.0) + (1 - self.alpha) * g * g
                step = g / (np.sqrt(s["v"]) + self.eps)
                if self.momentum:
                    step = s["buf"] = self.momentum * s.get("buf", 0.0) + step
                p -= self.lr * step
            else:
                raise ValueError(self.name)


def train(Ws, bs, X, y, acts, loss, opt, batch_size, epochs, sample_weight=None,
          dropout=None):
    """Minibatch training with rows in order (shuffle=False); each batch's loss is the
    (weighted) mean over its rows. dropout: (rates, seed) for inverted dropout, step counted
    from 1. Updates Ws, bs in place and returns the (weighted) mean training loss of each
    epoch."""
    n, history = X.shape[0], []
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    step = 0
    for _ in range(epochs):
        total = 0.0
        for lo in range(0, n, batch_size):
            sl = slice(lo, lo + batch_size)
            step += 1
            drop = None if dropout is None else (dropout[0], dropout[1], step,
                                                   np.arange(n)[sl])
            value, dWs, dbs = loss_and_grad(Ws, bs, X[sl], y[sl], acts, loss, w[sl], drop)
            total += value * w[sl].sum()
            opt.step(Ws + bs, dWs + dbs, [True] * len(Ws) + [False] * len(bs), w[sl].sum())
        history.append(total / w.sum())
    return history
