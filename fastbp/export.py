"""Getting a trained model out: an ONNX graph (`to_onnx`) and a Numba-compiled forward
function for users' own `@njit` code (`compiled_forward`).

Both compute what `predict_proba` (cross_entropy, binary_cross_entropy) or `predict` (mse,
poisson) returns, from the same parameters, and both take the raw features a model saved by
`fastbp train` was trained on: the standardisation that command stores in the model's
metadata ("scale": feature mean and std; "target_scale": mse target mean and std, see
fastbp/cli.py and fastbp/scaling.py) is part of the exported function, as `fastbp predict`
and `Trainer.predict` apply it (`scaling=False` leaves it out). A Trainer built in Python
has no such metadata.

The ONNX graph uses only standard operators of opset 17 (MatMul, Add, Relu, Tanh, Sigmoid,
Softmax, Exp, Mul, Sub, Div, Max), in the model's dtype; gelu is written out as the kernel's
tanh approximation and leaky_relu as max(z, 0.01 z).
"""
import json
import os

import numpy as np

from . import config as _config
from .io import atomic_write
from .kernels.codes import GELU_C, GELU_K, LEAKY_SLOPE
from .scaling import scaling_arrays

ONNX_OPSET = 17
INPUT_NAME = "X"
CLASSIFICATION = ("cross_entropy", "binary_cross_entropy")
_INSTALL = 'pip install "fastbp[onnx]"'


def output_name(loss):
    """The graph's output: 'probabilities' (classification losses) or 'predictions'."""
    return "probabilities" if loss in CLASSIFICATION else "predictions"


def _check_trainer(trainer, who):
    from .trainer import Trainer
    if not isinstance(trainer, Trainer):
        raise TypeError(f"{who}: trainer must be a fastbp.Trainer; got {type(trainer).__name__}")
    params = trainer.params
    if not (np.isfinite(params.min()) and np.isfinite(params.max())):
        raise ValueError(f"{who}: the model's params contain NaN or infinity; there is no "
                         "model to export")


# ----------------------------------------------------------------- compiled_forward

def compiled_forward(trainer, *, scaling=True):
    """A Numba-compiled `forward(X) -> out` of the trainer's current parameters (a
    snapshot: call again after more training). X: 2-D, the model's dtype, n_0 columns
    (C-contiguous X is compiled ahead; other layouts compile on first use). out (N, K): as
    `predict_proba` (classification losses) or `predict` (mse, poisson). Call it from Python
    or from your own `@njit` functions."""
    from .kernels.forward import make_forward
    _check_trainer(trainer, "compiled_forward")
    lay = trainer._layout
    acts = [_config.ACTIVATIONS[a] for a in _config.hidden_activations(trainer.config)]
    return make_forward(trainer.params, lay.sizes, lay.w_off, lay.b_off, np.array(acts),
                        _config.LOSSES[trainer.config["loss"]], *scaling_arrays(trainer, scaling))


# --------------------------------------------------------------------------- ONNX

def _import_onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ImportError(f"exporting to ONNX needs the onnx package: {_INSTALL}") from None
    return onnx, helper, numpy_helper


def check_onnx_path(path, who="to_onnx", name="path"):
    """path as a str, refused (ValueError naming the argument `name`) unless it ends in
    .onnx and its directory exists and is writable: checked before any work."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"{who}: {name} must be a file path (str or os.PathLike); "
                        f"got {type(path).__name__}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path.lower().endswith(".onnx"):
        raise ValueError(f"{who}: {name}={path!r} must end in .onnx")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"{who}: {name}={path!r}: directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(f"{who}: {name}={path!r}: directory {directory!r} is not writable")
    if os.path.isdir(path):
        raise ValueError(f"{who}: {name}={path!r} is a directory")
    return path


class _Graph:
    """Nodes and constants of a graph under construction, named in order."""

    def __init__(self, helper, numpy_helper, dtype):
        self.helper, self.numpy_helper, self.dtype = helper, numpy_helper, dtype
        self.nodes, self.initializers = [], []
        self.count = 0

    def const(self, name, value):
        """A named constant in the model's dtype (added once per name)."""
        if not any(t.name == name for t in self.initializers):
            arr = np.asarray(value, dtype=self.dtype)
            self.initializers.append(self.numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type, inputs, out=None, **attrs):
        self.count += 1
        out = out or f"{op_type.lower()}_{self.count}"
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out],
                                                name=f"{op_type}_{self.count}", **attrs))
        return out


def _hidden_activation(g, name, z):
    """The node(s) of scalar.py's activation `name` on tensor z."""
    if name == "identity":
        return z
    if name == "relu":
        return g.op("Relu", [z])
    if name == "leaky_relu":           # z < 0 ? slope z : z  ==  max(z, slope z), slope < 1
        return g.op("Max", [z, g.op("Mul", [z, g.const("leaky_slope", LEAKY_SLOPE)])])
    if name == "tanh":
        return g.op("Tanh", [z])
    if name in ("sigmoid", "logistic"):
        return g.op("Sigmoid", [z])
    if name == "gelu":                 # 0.5 z (1 + tanh(c (z + k z^3))): the kernel's
        cube = g.op("Mul", [g.op("Mul", [z, z]), z])
        inner = g.op("Add", [z, g.op("Mul", [cube, g.const("gelu_k", GELU_K)])])
        t = g.op("Tanh", [g.op("Mul", [inner, g.const("gelu_c", GELU_C)])])
        half_z = g.op("Mul", [z, g.const("half", 0.5)])
        return g.op("Mul", [half_z, g.op("Add", [t, g.const("one", 1.0)])])
    raise ValueError(f"no ONNX form for activation {name!r}")     # pragma: no cover


def onnx_model(trainer, *, scaling=True, two_class=False, squeeze=False):
    """The trainer as an onnx.ModelProto (see the module docstring); input 'X' (N, n_0),
    output 'probabilities' or 'predictions' (N, K), N dynamic, in the model's dtype.
    two_class: a 1-output binary_cross_entropy model outputs (N, 2) = [1 - p, p]
    (scikit-learn's predict_proba of a binary classifier); squeeze: a 1-output model
    outputs (N,) (a regressor fitted on 1-D y)."""
    onnx, helper, numpy_helper = _import_onnx()
    _check_trainer(trainer, "to_onnx")
    cfg = trainer.config
    loss, dtype = cfg["loss"], trainer.dtype
    n_in, n_out = trainer.layers[0], trainer.layers[-1]
    if two_class and not (loss == "binary_cross_entropy" and n_out == 1):
        raise ValueError("two_class=True needs a 1-output binary_cross_entropy model; this "
                         f"one has loss={loss!r} and {n_out} outputs")
    if squeeze and n_out != 1:
        raise ValueError(f"squeeze=True needs a 1-output model; this one has {n_out} outputs")
    x_shift, x_scale, y_scale, y_shift = scaling_arrays(trainer, scaling)
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    g = _Graph(helper, numpy_helper, dtype)

    a = INPUT_NAME
    if x_shift.size:
        a = g.op("Div", [g.op("Sub", [a, g.const("x_mean", x_shift)]), g.const("x_std", x_scale)])
    hidden = _config.hidden_activations(cfg)
    weights, biases = trainer.weights, trainer.biases
    for l, (W, b) in enumerate(zip(weights, biases)):
        z = g.op("Add", [g.op("MatMul", [a, g.const(f"W_{l}", W)]), g.const(f"b_{l}", b)])
        a = _hidden_activation(g, hidden[l], z) if l < len(hidden) else z
    if loss == "cross_entropy":
        a = g.op("Softmax", [a], axis=-1)
    elif loss == "binary_cross_entropy":
        a = g.op("Sigmoid", [a])
    elif loss == "poisson":
        a = g.op("Exp", [a])
    if y_scale.size:
        a = g.op("Add", [g.op("Mul", [a, g.const("y_std", y_scale)]), g.const("y_mean", y_shift)])
    width = n_out
    if two_class:
        a = g.op("Concat", [g.op("Sub", [g.const("one", 1.0), a]), a], axis=1)
        width = 2
    if squeeze:
        g.initializers.append(numpy_helper.from_array(np.array([1], np.int64), "squeeze_axes"))
        a = g.op("Squeeze", [a, "squeeze_axes"])
    out = output_name(loss)
    g.op("Identity", [a], out=out)

    out_shape = ["N"] if squeeze else ["N", width]
    graph = helper.make_graph(
        g.nodes, "fastbp_mlp",
        [helper.make_tensor_value_info(INPUT_NAME, elem, ["N", n_in])],
        [helper.make_tensor_value_info(out, elem, out_shape)],
        initializer=g.initializers,
        doc_string=f"fastbp MLP {'-'.join(map(str, trainer.layers))}, "
                   f"activation={cfg['activation']}, loss={loss}: {out} as "
                   f"{'predict_proba' if loss in CLASSIFICATION else 'predict'}")
    opset = [helper.make_opsetid("", ONNX_OPSET)]
    model = helper.make_model(graph, opset_imports=opset, producer_name="fastbp",
                              producer_version=_version(),
                              ir_version=helper.find_min_ir_version_for(opset))
    meta = trainer.metadata or {}
    props = {"fastbp_version": _version(), "layers": json.dumps(trainer.layers),
             "activation": json.dumps(cfg["activation"]), "loss": loss,
             "output": out, "scaling_included": json.dumps(bool(x_shift.size or y_scale.size))}
    for key in ("classes", "feature_names"):
        if meta.get(key) is not None:
            props[key] = json.dumps(meta[key])
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model


def to_onnx(trainer, path, *, scaling=True, two_class=False, squeeze=False):
    """Write `onnx_model(trainer, ...)` to path (must end in .onnx), atomically. Returns
    the path."""
    path = check_onnx_path(path)
    _import_onnx()
    data = onnx_model(trainer, scaling=scaling, two_class=two_class,
                      squeeze=squeeze).SerializeToString()

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write(path, write)
    return path


def _version():
    from . import __version__
    return __version__
