"""Data files for the command line: tables in, arrays out.

`load_training_data` reads X and y (and an optional test pair) from an .npz or a .csv;
`load_features` reads the feature columns for prediction; `digits` is scikit-learn's copy of
the digits dataset, split for the default `fastbp train`. Every problem with a file is a
DataFileError whose message names the file (and the row and column where there is one).
"""
import csv
import os

import numpy as np


class DataFileError(ValueError):
    """A data file that cannot be used, and why."""


def _read_csv(path):
    """-> (matrix of strings (rows, cols), header or None)."""
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    if not rows:
        raise DataFileError(f"{path} is empty")
    header = None
    if not any(_is_number(v) for v in rows[0]):   # a header row holds no number at all
        header, rows = [h.strip() for h in rows[0]], rows[1:]
    width = len(rows[0]) if rows else 0
    bad = [i for i, r in enumerate(rows) if len(r) != width]
    if not rows or bad:
        raise DataFileError(f"{path}: every row must have the same number of columns "
                            f"(row {bad[0] + 2 if bad else 1} differs)")
    return np.array(rows, dtype=str), header


def _column_index(label, header, width, path):
    if label is None:
        return width - 1
    if header is not None and label in header:
        return header.index(label)
    try:
        i = int(label)
    except ValueError:
        raise DataFileError(f"--label {label!r} is neither a column name of {path} "
                            f"({', '.join(header or [])}) nor a column number") from None
    if not -width <= i < width:
        raise DataFileError(f"--label {i} is out of range: {path} has {width} columns")
    return i % width


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def floats(table, what):
    """A table of strings -> floats, or an error naming the first cell that is not a number."""
    try:
        return table.astype(float)
    except ValueError:
        for (r, c), v in np.ndenumerate(table):
            if not _is_number(v):
                raise DataFileError(f"{what} must be numbers; got {str(v)!r} at data row "
                                    f"{r + 1}, column {c + 1}") from None
        raise


def load_training_data(path, label):
    """-> X (n, d), y (n,) or (n, k), test pair or None, feature names or None."""
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise DataFileError(f"no data file at {path}")
    if ext == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except Exception as e:  # noqa: BLE001 - any unreadable file is a user error here
            raise DataFileError(f"{path} could not be read as an .npz file: {e}") from None
        if "X" not in arrays or "y" not in arrays:
            raise DataFileError(f"{path} must hold arrays named 'X' and 'y' "
                                f"(it holds {sorted(arrays)})")
        test = (arrays["X_test"], arrays["y_test"]) if "X_test" in arrays else None
        return arrays["X"], arrays["y"], test, None
    if ext == ".csv":
        table, header = _read_csv(path)
        j = _column_index(label, header, table.shape[1], path)
        features = [i for i in range(table.shape[1]) if i != j]
        names = [header[i] for i in features] if header else None
        return floats(table[:, features], f"{path}: feature columns"), table[:, j], None, names
    raise DataFileError(f"{path}: unknown data format {ext!r}; use .npz (X, y) or .csv")


def load_features(path, n_features, feature_names):
    """Features for prediction: an .npz with X, or a .csv with the training columns (by
    name when it has a header; a label column, if present, is ignored)."""
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise DataFileError(f"no data file at {path}")
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as f:
            if "X" not in f.files:
                raise DataFileError(f"{path} must hold an array named 'X'")
            return f["X"]
    if ext == ".csv":
        table, header = _read_csv(path)
        if header is not None and feature_names and set(feature_names) <= set(header):
            table = table[:, [header.index(n) for n in feature_names]]
        elif table.shape[1] != n_features:
            raise DataFileError(f"{path} has {table.shape[1]} columns; the model takes "
                                f"{n_features} features")
        return floats(table, f"{path}: feature columns")
    raise DataFileError(f"{path}: unknown data format {ext!r}; use .npz (X) or .csv")


def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0,
                                                        stratify=y)
    return X_train, y_train, (X_test, y_test)
