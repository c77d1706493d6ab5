"""Sparse data files for the command line: svmlight/libsvm text and scipy.sparse.save_npz.

`read_sparse(path)` returns (X, y): X a CSR matrix (float64, never densified; the Trainer
trains on it as it is) and y the labels of an svmlight/libsvm file, or None for a
save_npz file (which holds the matrix only: the labels come from elsewhere).
`is_sparse_file(path)` says whether a path is one of them, so a reader of dense tables can
hand such files here first.
"""
import os
import zipfile

import numpy as np

SVMLIGHT_EXTENSIONS = (".svm", ".svmlight", ".libsvm")
# the arrays scipy.sparse.save_npz writes (CSR, CSC, COO, BSR, DIA)
_SCIPY_NPZ_KEYS = {"format", "shape"}


def is_sparse_file(path):
    """An svmlight/libsvm file (by extension, also .gz/.bz2) or an .npz written by
    scipy.sparse.save_npz (by its arrays)."""
    name = os.fspath(path).lower()
    for comp in (".gz", ".bz2"):
        if name.endswith(comp):
            name = name[:-len(comp)]
    if name.endswith(SVMLIGHT_EXTENSIONS):
        return True
    if name.endswith(".npz") and os.path.isfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                keys = {n[:-4] for n in z.namelist() if n.endswith(".npy")}
        except (zipfile.BadZipFile, OSError, NotImplementedError):   # damaged headers
            return False
        return _SCIPY_NPZ_KEYS <= keys
    return False


def read_sparse(path, n_features=None):
    """(X, y) of a sparse data file: X a scipy CSR matrix, y a 1-D array (svmlight/libsvm)
    or None (save_npz). n_features: the model's input width, so a file whose highest
    feature index is lower still gives X that width (svmlight files do not store it).
    ValueError with the path on a damaged file."""
    from scipy import sparse
    name = os.fspath(path)
    try:
        if name.lower().endswith(".npz"):
            X = sparse.load_npz(name).tocsr()
            y = None
        else:
            from sklearn.datasets import load_svmlight_file
            X, y = load_svmlight_file(name, n_features=n_features)
    except (ValueError, OSError, KeyError, zipfile.BadZipFile, NotImplementedError) as e:
        if name.lower().endswith(".npz") and type(e) in (ValueError, KeyError):
            # NumPy's own words (allow_pickle, missing keys) would mislead here
            raise ValueError(f"{name}: not a sparse matrix written by scipy.sparse.save_npz "
                             "(a dense table's .npz holds arrays 'X' and 'y': read it as "
                             "one)") from None
        raise ValueError(f"{name}: not a readable sparse data file ({e})") from None
    if n_features is not None and X.shape[1] != n_features:
        if X.shape[1] > n_features:
            raise ValueError(f"{name} has {X.shape[1]} features; the model takes "
                             f"{n_features}")
        X = sparse.csr_matrix((X.data, X.indices, X.indptr), shape=(X.shape[0], n_features))
    return X, (None if y is None else np.asarray(y))
