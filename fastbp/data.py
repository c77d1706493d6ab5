"""Input checks: array-likes -> C-contiguous arrays of the Trainer's dtype (scipy sparse
matrices and arrays -> CSR with int64 indices and values of that dtype), or a clear error.

Nothing here changes the model; the Trainer calls these before any work.
"""
from typing import NamedTuple

import numpy as np
from scipy import sparse


class CSR(NamedTuple):
    """Checked CSR data: indptr (N + 1,) and indices (nnz,) int64, data (nnz,) values of the
    model's dtype, shape (N, n_features). (scipy would downcast the indices to int32.)"""
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    shape: tuple


def _as_numeric(a, name):
    if sparse.issparse(a):
        raise TypeError(f"{name} is a sparse matrix; it must be a dense array "
                        f"(use {name}.toarray())")
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name} could not be read as an array: {e}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers (bool, int or float); "
                        f"got dtype {arr.dtype}")
    return arr


def _first_bad(mask):
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _check_shape(shape, n_features, name):
    """X (dense or sparse) must be (n_samples >= 1, n_features)."""
    if len(shape) != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (n_samples, {n_features}); "
                         f"got shape {shape}")
    if shape[0] == 0:
        raise ValueError(f"{name} is empty (0 samples); at least 1 sample is needed")
    if shape[1] != n_features:
        raise ValueError(f"{name} has {shape[1]} features per sample but the network "
                         f"takes {n_features} (layers[0]); got shape {shape}")


def check_sparse_X(X, n_features, dtype, name="X"):
    """A scipy sparse matrix or array -> `CSR` with int64 indptr and indices and values of
    `dtype`, finite, N >= 1. CSR input is used as it is where its arrays
    already have those types (no copy); CSC, COO and the other formats are converted to CSR
    once (a copy of the stored entries). Duplicate entries, unsorted indices, explicit
    zeros and empty rows are left as they are: the kernels add every stored entry, which is
    what summing the duplicates (scipy's sum_duplicates) gives."""
    _check_shape(X.shape, n_features, name)
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers (bool, int or float); "
                        f"got dtype {X.dtype}")
    if X.format != "csr":
        X = X.tocsr()
    n = X.shape[0]
    indptr = np.ascontiguousarray(X.indptr, dtype=np.int64)
    indices = np.ascontiguousarray(X.indices, dtype=np.int64)
    with np.errstate(over="ignore", invalid="ignore"):
        values = np.ascontiguousarray(X.data, dtype=dtype)
    nnz = indptr[-1] if indptr.shape[0] == n + 1 else -1
    if (indptr.shape[0] != n + 1 or indptr[0] != 0 or nnz > indices.shape[0]
            or nnz > values.shape[0] or (n > 1 and np.any(indptr[1:] < indptr[:-1]))):
        raise ValueError(f"{name} is not a valid CSR matrix (its indptr is damaged)")
    indices, values = indices[:nnz], values[:nnz]
    if nnz and (indices.min() < 0 or indices.max() >= n_features):
        raise ValueError(f"{name} is not a valid sparse matrix: a column index lies outside "
                         f"[0, {n_features})")
    if nnz and not (np.isfinite(values.min()) and np.isfinite(values.max())):
        k = int(np.argmax(~np.isfinite(values)))
        row = int(np.searchsorted(indptr, k, side="right") - 1)
        what = "NaN" if np.isnan(values[k]) else "infinity"
        extra = ""
        if X.dtype.kind != "f" or np.isfinite(X.data[k]):
            extra = (f" after conversion to {np.dtype(dtype).name} "
                     f"({X.data[k].item()!r} is out of its range)")
        raise ValueError(f"{name} contains {what}{extra} at row {row}, column "
                         f"{int(indices[k])}; every value must be finite")
    return CSR(indptr, indices, values, X.shape)


def check_X(X, n_features, dtype, name="X"):
    """X -> (N, n_features) C-contiguous array of `dtype`, finite, N >= 1; a scipy sparse
    matrix or array -> CSR (check_sparse_X)."""
    if sparse.issparse(X):
        return check_sparse_X(X, n_features, dtype, name)
    arr = _as_numeric(X, name)
    _check_shape(arr.shape, n_features, name)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
        out = np.ascontiguousarray(arr, dtype=dtype)
    # one pass that allocates nothing the size of X: a sum is finite when every value is
    # (min and max were two passes, 0.3 ms a fit on the tiny workload's 4 MB); only a sum
    # that overflowed or met a NaN or infinity needs the mask
    with np.errstate(over="ignore", invalid="ignore"):
        total = out.sum()
    bad = None if np.isfinite(total) else ~np.isfinite(out)
    if bad is not None and bad.any():
        where = _first_bad(bad)
        what = "NaN" if np.isnan(out[where]) else "infinity"
        extra = ""
        if arr.dtype.kind != "f" or np.isfinite(arr[where]):
            extra = (f" after conversion to {np.dtype(dtype).name} "
                     f"({arr[where].item()!r} is out of its range)")
        raise ValueError(f"{name} contains {what}{extra} at row {where[0]}, "
                         f"column {where[1]}; every value must be finite")
    return out


def check_y(y, n_samples, loss, n_outputs, dtype, name="y"):
    """y -> (labels, targets) for the kernels: labels (N,) int64 class indices for
    cross_entropy (targets empty), or targets (N, K) of `dtype` (labels empty)."""
    arr = _as_numeric(y, name)
    if arr.ndim == 2 and loss == "cross_entropy" and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 0 or arr.shape[0] != n_samples:
        got = "a scalar" if arr.ndim == 0 else f"{arr.shape[0]} rows"
        raise ValueError(f"{name} has {got} but X has {n_samples} samples; they must match")
    no_labels = np.empty(0, dtype=np.int64)
    if loss == "cross_entropy":
        if arr.ndim != 1:
            raise ValueError(f"{name} must be a 1-D array of integer class labels in "
                             f"[0, {n_outputs}) for loss='cross_entropy'; got shape {arr.shape}")
        if arr.dtype.kind == "f":
            bad = ~np.isfinite(arr) | (arr != np.round(arr))
            if bad.any():
                i = _first_bad(bad)[0]
                raise ValueError(f"{name} must hold integer class labels for "
                                 f"loss='cross_entropy'; got {arr[i].item()!r} at row {i}")
        bad = (arr < 0) | (arr >= n_outputs)
        if bad.any():
            i = _first_bad(bad)[0]
            raise ValueError(f"{name} holds class label {arr[i].item()!r} at row {i}; labels must be "
                             f"integers in [0, {n_outputs}) (layers[-1] = {n_outputs} classes)")
        return arr.astype(np.int64, copy=False), np.empty((0, n_outputs), dtype=dtype)

    if arr.ndim == 1 and n_outputs == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != n_outputs:
        raise ValueError(f"{name} must have shape (n_samples, {n_outputs}) for loss={loss!r}"
                         f" (a 1-D array is allowed for one output); got shape {arr.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        targets = np.ascontiguousarray(arr, dtype=dtype)
    bad = ~np.isfinite(targets)
    if bad.any():
        r, c = _first_bad(bad)
        raise ValueError(f"{name} contains a non-finite value ({targets[r, c].item()!r}) at row {r}, "
                         f"column {c}; every target must be finite")
    if loss == "poisson":
        bad = targets < 0
        if bad.any():
            r, c = _first_bad(bad)
            raise ValueError(f"{name} holds {targets[r, c].item()!r} at row {r}, column {c}; "
                             f"targets for loss='poisson' must be counts or rates >= 0")
    if loss == "binary_cross_entropy":
        bad = (targets < 0) | (targets > 1)
        if bad.any():
            r, c = _first_bad(bad)
            raise ValueError(f"{name} holds {targets[r, c].item()!r} at row {r}, column {c}; targets "
                             f"for loss='binary_cross_entropy' must lie in [0, 1]")
    return no_labels, targets


def check_sample_weight(sample_weight, n_samples, dtype, name="sample_weight",
                        negative=False):
    """None -> an empty array (unweighted); otherwise (N,) finite weights >= 0 of `dtype`
    with a positive sum; with `negative` (scikit-learn's estimators), any finite weights not
    all zero (a batch's loss is then sum(w l) / sum(w), as np.average's)."""
    if sample_weight is None:
        return np.empty(0, dtype=dtype)
    arr = _as_numeric(sample_weight, name)
    if arr.ndim != 1 or arr.shape[0] != n_samples:
        raise ValueError(f"{name} must be a 1-D array of {n_samples} weights (one per sample); "
                         f"got shape {arr.shape}")
    w = np.ascontiguousarray(arr, dtype=dtype)
    if negative:
        if not np.isfinite(w).all():
            raise ValueError(f"{name} must hold finite weights")
        if not w.any():
            raise ValueError("Sample weights must contain at least one non-zero number.")
        return w
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{name} must hold finite weights >= 0")
    if not w.sum() > 0:
        raise ValueError(f"{name} must have a positive sum")
    return w
