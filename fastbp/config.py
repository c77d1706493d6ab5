"""The Trainer's hyperparameters, declared once, validated in one place.

`validate(**kwargs)` returns the normalised configuration (a plain dict of JSON-able
values) or raises a ValueError/TypeError naming the argument, the value and what is allowed.
The same function checks the configuration stored in a model file.
"""
import numbers

import numpy as np

from .kernels.ops import (BINARY_CROSS_ENTROPY, CROSS_ENTROPY, GELU, IDENTITY, LEAKY_RELU,
                          MSE, POISSON, RELU, SIGMOID, TANH)
from .kernels.optim import ADAM, ADAMW, RMSPROP, SGD

ACTIVATIONS = {"identity": IDENTITY, "relu": RELU, "leaky_relu": LEAKY_RELU, "tanh": TANH,
               "sigmoid": SIGMOID, "logistic": SIGMOID, "gelu": GELU}
LOSSES = {"cross_entropy": CROSS_ENTROPY, "binary_cross_entropy": BINARY_CROSS_ENTROPY,
          "mse": MSE, "poisson": POISSON}
OPTIMIZERS = {"sgd": SGD, "adam": ADAM, "adamw": ADAMW, "rmsprop": RMSPROP}
TARGETS = ("cpu", "parallel", "cuda")
DTYPES = ("float32", "float64")
INITS = ("auto", "he", "glorot")
SPARSE_UPDATES = ("dense", "lazy")
PRECISIONS = ("full", "bf16")

DEFAULTS = dict(activation="relu", loss="cross_entropy", optimizer="adam", lr=1e-3,
                batch_size=32, epochs=10, momentum=0.0, nesterov=False, betas=(0.9, 0.999),
                eps=1e-8, alpha=0.99, weight_decay=0.0, decay_per_weight=False, clip_norm=None,
                dropout=0.0, init="auto", sparse_update="dense",
                shuffle=True, target="cpu", dtype="float32", precision="full", seed=None,
                n_threads=None)


def _fail(name, value, allowed, exc=ValueError):
    raise exc(f"{name}={value!r} is not allowed: {name} must be {allowed}")


def _is_int(x):
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x):
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _int(name, value, low, allowed):
    if not _is_int(value):
        _fail(name, value, allowed, TypeError)
    if value < low:
        _fail(name, value, allowed)
    return int(value)


def _real(name, value, low, high, allowed, low_open=False, high_open=True):
    if not _is_real(value):
        _fail(name, value, allowed, TypeError)
    value = float(value)
    if not np.isfinite(value):
        _fail(name, value, allowed)
    if value < low or (low_open and value == low) or value > high or (high_open and value == high):
        _fail(name, value, allowed)
    return value


def _choice(name, value, choices):
    allowed = "one of " + ", ".join(repr(c) for c in choices)
    if not isinstance(value, str):
        _fail(name, value, allowed, TypeError)
    if value not in choices:
        _fail(name, value, allowed)
    return value


def _bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        _fail(name, value, "True or False", TypeError)
    return bool(value)


def validate(layers, **kwargs):
    """Check every argument of Trainer(layers, **kwargs); return the normalised config."""
    unknown = set(kwargs) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown argument(s) {sorted(unknown)}; "
                        f"allowed: layers, {', '.join(DEFAULTS)}")
    kw = {**DEFAULTS, **kwargs}
    cfg = {}

    allowed = "a sequence of at least 2 positive integers (input size, ..., output size)"
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__len__"):
        _fail("layers", layers, allowed, TypeError)
    if len(layers) < 2:
        _fail("layers", layers, allowed)
    if not all(_is_int(n) for n in layers):
        _fail("layers", layers, allowed, TypeError)
    if not all(n >= 1 for n in layers):
        _fail("layers", layers, allowed)
    cfg["layers"] = [int(n) for n in layers]
    n_hidden = len(layers) - 2

    act = kw["activation"]
    names = ", ".join(repr(a) for a in ACTIVATIONS)
    if isinstance(act, str):
        _choice("activation", act, ACTIVATIONS)
        acts = [act] * n_hidden
    elif hasattr(act, "__len__") and all(isinstance(a, str) for a in act):
        if len(act) != n_hidden:
            _fail("activation", act, f"one name or a sequence of {n_hidden} names "
                  f"(one per hidden layer) from {names}")
        acts = [_choice("activation", a, ACTIVATIONS) for a in act]
    else:
        _fail("activation", act, f"a name or a sequence of names from {names}", TypeError)
    cfg["activation"] = act if isinstance(act, str) else list(acts)

    cfg["loss"] = _choice("loss", kw["loss"], LOSSES)
    if cfg["loss"] == "cross_entropy" and layers[-1] < 2:
        _fail("layers", layers, "a network with at least 2 outputs for loss='cross_entropy' "
              "(use loss='binary_cross_entropy' for one output)")
    cfg["optimizer"] = _choice("optimizer", kw["optimizer"], OPTIMIZERS)
    cfg["lr"] = _real("lr", kw["lr"], 0.0, np.inf, "a finite number > 0", low_open=True)
    cfg["batch_size"] = _int("batch_size", kw["batch_size"], 1, "an integer >= 1")
    cfg["epochs"] = _int("epochs", kw["epochs"], 0, "an integer >= 0")
    cfg["momentum"] = _real("momentum", kw["momentum"], 0.0, 1.0, "a number in [0, 1)")
    cfg["nesterov"] = _bool("nesterov", kw["nesterov"])
    if cfg["nesterov"] and (cfg["optimizer"] != "sgd" or cfg["momentum"] == 0.0):
        _fail("nesterov", True, "False unless optimizer='sgd' with momentum > 0")
    betas = kw["betas"]
    if (isinstance(betas, str) or not hasattr(betas, "__len__") or len(betas) != 2
            or not all(_is_real(b) for b in betas)):
        _fail("betas", betas, "a pair of numbers in [0, 1)", TypeError)
    cfg["betas"] = [_real("betas", b, 0.0, 1.0, "a pair of numbers in [0, 1)") for b in betas]
    cfg["eps"] = _real("eps", kw["eps"], 0.0, np.inf, "a finite number > 0", low_open=True)
    cfg["alpha"] = _real("alpha", kw["alpha"], 0.0, 1.0, "a number in [0, 1)")
    cfg["weight_decay"] = _real("weight_decay", kw["weight_decay"], 0.0, np.inf,
                                "a finite number >= 0")
    cfg["decay_per_weight"] = _bool("decay_per_weight", kw["decay_per_weight"])
    clip = kw["clip_norm"]
    cfg["clip_norm"] = None if clip is None else _real(
        "clip_norm", clip, 0.0, np.inf, "None or a finite number > 0", low_open=True)
    drop = kw["dropout"]
    allowed = (f"a rate in [0, 1) or a sequence of {n_hidden} rates (one per hidden layer)")
    if _is_real(drop):
        cfg["dropout"] = _real("dropout", drop, 0.0, 1.0, allowed)
    elif hasattr(drop, "__len__") and not isinstance(drop, str) and all(_is_real(d) for d in drop):
        if len(drop) != n_hidden:
            _fail("dropout", drop, allowed)
        cfg["dropout"] = [_real("dropout", d, 0.0, 1.0, allowed) for d in drop]
    else:
        _fail("dropout", drop, allowed, TypeError)
    cfg["init"] = _choice("init", kw["init"], INITS)
    cfg["sparse_update"] = _choice("sparse_update", kw["sparse_update"], SPARSE_UPDATES)
    cfg["shuffle"] = _bool("shuffle", kw["shuffle"])
    cfg["target"] = _choice("target", kw["target"], TARGETS)
    dtype = kw["dtype"]
    if isinstance(dtype, (type, np.dtype)):
        dtype = np.dtype(dtype).name
    cfg["dtype"] = _choice("dtype", dtype, DTYPES)
    cfg["precision"] = _choice("precision", kw["precision"], PRECISIONS)
    if cfg["precision"] == "bf16" and (cfg["dtype"] != "float32" or cfg["target"] == "cuda"):
        _fail("precision", "bf16", "'full' unless dtype='float32' and target='cpu' or "
              "'parallel' (bf16 products need float32 sums, and exist on the CPU only)")
    seed = kw["seed"]
    if seed is not None and (not _is_int(seed) or seed < 0):
        _fail("seed", seed, "None or an integer >= 0", TypeError if not _is_int(seed) else ValueError)
    cfg["seed"] = None if seed is None else int(seed)
    n_threads = kw["n_threads"]
    cfg["n_threads"] = None if n_threads is None else _int(
        "n_threads", n_threads, 1, "None (all cores) or an integer >= 1")
    check_threads_for_target(cfg["n_threads"], cfg["target"])
    return cfg


def check_threads_for_target(n_threads, target):
    """More than one thread only where they are used: target 'cpu' runs one thread and
    'cuda' the GPU, so n_threads > 1 with them would be silently ignored ('auto', the
    estimators', picks by n_threads)."""
    if n_threads is not None and n_threads > 1 and target in ("cpu", "cuda"):
        runs = "on the GPU" if target == "cuda" else "one thread"
        _fail("n_threads", n_threads, f"None or 1 with target={target!r}, which runs {runs} "
              "(target='parallel' runs several threads)")


def hidden_activations(cfg):
    """The activation name of every hidden layer."""
    act = cfg["activation"]
    n_hidden = len(cfg["layers"]) - 2
    return [act] * n_hidden if isinstance(act, str) else list(act)


def hidden_dropout(cfg):
    """The dropout rate of every hidden layer."""
    drop = cfg.get("dropout", 0.0)
    n_hidden = len(cfg["layers"]) - 2
    return [drop] * n_hidden if not isinstance(drop, list) else list(drop)
