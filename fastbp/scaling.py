"""The standardisation `fastbp train --scale standard` stores with a model, in its metadata:
"scale" (the features' mean and std: the network takes (X - mean) / std) and, for mse,
"target_scale" (the targets' mean and std: the network's outputs times std plus mean are in
the targets' own units). Read here once for everything that takes a model's raw features:
`Trainer.predict`, `predict_proba` and `evaluate`, `compiled_forward`, the ONNX graph and the
CLI."""
import numpy as np
from scipy import sparse


def scaling_arrays(trainer, scaling=True):
    """(x_shift, x_scale, y_scale, y_shift) in the model's dtype from the standardisation
    `fastbp train` stores in trainer.metadata ((X - x_shift) / x_scale in, out * y_scale +
    y_shift out), each empty where there is none or scaling is False."""
    dtype = trainer.dtype
    n_in, n_out = trainer.layers[0], trainer.layers[-1]
    empty = np.empty(0, dtype=dtype)
    if not isinstance(scaling, (bool, np.bool_)):
        raise TypeError(f"scaling must be True or False; got {scaling!r}")
    meta = trainer.metadata or {}
    if not scaling:
        return empty, empty, empty, empty

    def pair(key, n):
        entry = meta.get(key)
        if entry is None:
            return empty, empty
        try:
            mean = np.asarray(entry["mean"], dtype=np.float64).reshape(-1)
            std = np.asarray(entry["std"], dtype=np.float64).reshape(-1)
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"the model's metadata[{key!r}] is not a {{'mean': [...], "
                             "'std': [...]}} pair of number lists") from None
        if mean.shape != (n,) or std.shape != (n,) or not (
                np.isfinite(mean).all() and np.isfinite(std).all() and (std != 0).all()):
            raise ValueError(f"the model's metadata[{key!r}] must hold {n} finite means and "
                             f"{n} finite, non-zero stds")
        return mean.astype(dtype), std.astype(dtype)

    x_shift, x_scale = pair("scale", n_in)
    y_shift, y_scale = pair("target_scale", n_out)
    return x_shift, x_scale, y_scale, y_shift


def scale_features(X, shift, scale):
    """(X - shift) / scale for dense X; sparse X is only divided by scale where every shift
    is 0 (as `fastbp train` standardises sparse features: centring would fill in every
    zero), else densified first (a model trained on centred dense data)."""
    if sparse.issparse(X):
        if not np.any(shift != 0):
            return (X @ sparse.diags((1 / scale).astype(scale.dtype))).tocsr()
        X = X.toarray()
    return (X - shift) / scale
