"""Data files for the command line: tables in, arrays out.

Formats, by extension:

- .csv, .tsv (.tab), optionally compressed (.csv.gz, .tsv.bz2, .csv.xz, .csv.zip): pandas,
  with its pyarrow engine where pyarrow is installed and pandas' C parser otherwise (also
  whenever the pyarrow engine refuses a file, so that the C parser's message, with its line
  number, is the one shown). The first row is a header when none of its cells is a number.
- .parquet (.pq), .feather (.arrow): pandas with pyarrow (`pip install "fastbp[parquet]"`).
- .npz (arrays X and y, optionally X_test and y_test) and .npy (one 2-D array: a table
  without a header).

`read_table` reads any of them into a `Table`, whose `features` and `labels` check the
cells and turn them into arrays; `class_codes` and `numeric_targets` check labels against a
loss. Every problem with a file is a DataFileError whose one-line message names the file and,
where there is one, the data row and the file column (counted from 1, with its name when the
file has a header).
"""
import os
from dataclasses import dataclass

import numpy as np


class DataFileError(ValueError):
    """A data file that cannot be used, and why (one line)."""


class LabelColumnError(DataFileError):
    """--label names no column of the file."""


class MissingReaderError(DataFileError):
    """An optional reader (pyarrow) is not installed; the message gives the pip command."""


FORMATS = (".csv, .tsv, .parquet, .feather, .npz or .npy, or sparse: .svm/.svmlight/.libsvm "
           "or a scipy.sparse.save_npz .npz")
_TEXT = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_COMPRESSED = (".gz", ".bz2", ".xz", ".zip")
_ARROW = {".parquet": "parquet", ".pq": "parquet", ".feather": "feather", ".arrow": "feather"}
MAX_CLASSES_BEFORE_CONTINUOUS = 20   # more distinct numeric labels may be a regression target


def one_line(e):
    """An exception's message as one line."""
    return " ".join(str(e).split()) or type(e).__name__


def _show(value, limit=40):
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_number(text):
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def file_format(path):
    """'text' (with its separator), 'parquet', 'feather', 'npz' or 'npy', from the name."""
    name = os.path.basename(os.fspath(path)).lower()
    stem, ext = os.path.splitext(name)
    if ext in _COMPRESSED:
        inner = os.path.splitext(stem)[1]
        if inner not in _TEXT:
            raise DataFileError(f"{path}: only .csv and .tsv files may be compressed "
                                f"(e.g. data.csv{ext})")
        return "text", _TEXT[inner]
    if ext in _TEXT:
        return "text", _TEXT[ext]
    if ext in _ARROW:
        return _ARROW[ext], None
    if ext in (".npz", ".npy"):
        return ext[1:], None
    if os.path.isdir(path):
        raise DataFileError(f"{path} is a directory; give a data file ({FORMATS}), or train "
                            "from a directory of Parquet files with `fastbp train DIR --stream`")
    raise DataFileError(f"{path}: unknown data format {ext or '(no extension)'!r}; "
                        f"use {FORMATS}")


def _pandas():
    try:
        import pandas
    except ImportError:
        raise MissingReaderError('reading tables needs pandas: pip install pandas') from None
    return pandas


def _has_pyarrow():
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------ tables

@dataclass
class Table:
    """A table read from `path`: `frame` (a pandas DataFrame; its columns are the file's
    columns) and `header` (whether the names come from the file)."""
    frame: object
    path: str
    header: bool

    @property
    def width(self):
        return self.frame.shape[1]

    @property
    def names(self):
        return [str(c) for c in self.frame.columns] if self.header else None

    def describe(self, j):
        """'column 3 ('price')': the file column j (0-based), counted from 1."""
        return f"column {j + 1}" + (f" ({self.names[j]!r})" if self.header else "")

    def column_index(self, label):
        """The 0-based position of --label: a column name, or a position (0 the first,
        -1 the last); None: the last column."""
        if label is None:
            return self.width - 1
        if isinstance(label, str):
            if self.header and label in self.names:
                return self.names.index(label)
            if self.header and label.strip() in self.names:
                return self.names.index(label.strip())
            try:
                label = int(label)
            except ValueError:
                names = ", ".join(self.names) if self.header else "it has no header row"
                raise LabelColumnError(f"--label {label!r} is neither a column name of {self.path} "
                                    f"({names}) nor a column position") from None
        if not -self.width <= label < self.width:
            raise LabelColumnError(f"--label {label} is out of range: {self.path} has "
                                f"{self.width} columns (positions 0..{self.width - 1}, or "
                                f"-1 for the last)")
        return label % self.width

    def _is_numeric(self, j):
        types = _pandas().api.types
        s = self.frame.iloc[:, j]
        return types.is_bool_dtype(s) or (types.is_numeric_dtype(s)
                                          and not types.is_complex_dtype(s))

    def _numbers(self, j):
        """Column j as float64 (NaN where a cell is missing), or (None, row, value) where a
        cell holds something that is not a number."""
        pd = _pandas()
        s = self.frame.iloc[:, j]
        if self._is_numeric(j):
            return s.to_numpy(dtype=np.float64, na_value=np.nan), None, None
        text = s.astype("string").str.strip()
        present = s.notna().to_numpy() & (text != "").fillna(False).to_numpy(dtype=bool)
        nums = pd.to_numeric(text.where(present), errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(present & np.isnan(nums) & ~text.str.lower().isin(
            ["nan", "+nan", "-nan"]).fillna(False).to_numpy(dtype=bool))
        if len(bad):
            return None, int(bad[0]), s.iloc[bad[0]]
        return nums, None, None

    def features(self, columns):
        """The float64 matrix of the given file columns; every cell must be a finite number."""
        columns = list(columns)
        if all(self._is_numeric(j) for j in columns):          # the usual case: one copy
            X = self.frame.iloc[:, columns].to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            X = np.empty((self.frame.shape[0], len(columns)), dtype=np.float64)
            for k, j in enumerate(columns):
                values, row, value = self._numbers(j)
                if values is None:
                    raise DataFileError(
                        f"{self.path}: feature {self.describe(j)} is not numeric "
                        f"({_show(value)} in data row {row + 1}); fastbp takes numbers only: "
                        "encode text columns as numbers (e.g. one-hot) or drop them")
                X[:, k] = values
        bad = np.argwhere(~np.isfinite(X))
        if len(bad):
            r, k = bad[0]
            what = "missing value (an empty, NA or NaN cell)" if np.isnan(X[r, k]) else \
                "infinite value"
            raise DataFileError(f"{self.path}: {what} in data row {r + 1}, "
                                f"{self.describe(columns[k])}; fill or drop that row")
        return X

    def labels(self, j):
        """Column j: float64 numbers, or an object array of text labels (stripped); no cell
        may be missing."""
        values, _, _ = self._numbers(j)
        if values is None:
            s = self.frame.iloc[:, j]
            missing = s.isna().to_numpy() | (s.astype("string").str.strip() == "").fillna(
                True).to_numpy(dtype=bool)
            labels = np.array([str(v).strip() for v in s.tolist()], dtype=object)
        else:
            missing = np.isnan(values)
            labels = values
        if missing.any():
            r = int(np.flatnonzero(missing)[0])
            raise DataFileError(f"{self.path}: missing label in data row {r + 1}, "
                                f"{self.describe(j)}; fill or drop that row")
        if values is not None and np.isinf(values).any():
            r = int(np.flatnonzero(np.isinf(values))[0])
            raise DataFileError(f"{self.path}: infinite label in data row {r + 1}, "
                                f"{self.describe(j)}")
        return labels


def _read_text(path, sep):
    pd = _pandas()
    kind = "TSV" if sep == "\t" else "CSV"
    try:
        first = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str,
                            keep_default_na=False, engine="c")
    except pd.errors.EmptyDataError:
        raise DataFileError(f"{path} is empty") from None
    except UnicodeDecodeError:
        raise DataFileError(f"{path} could not be read as a {kind} file: it is not UTF-8 "
                            "text") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's file problem
        raise DataFileError(f"{path} could not be read as a {kind} file: {one_line(e)}") \
            from None
    header = not any(_is_number(v) for v in first.iloc[0].tolist()) if len(first) else False
    frame = None
    if _has_pyarrow():
        try:
            frame = pd.read_csv(path, sep=sep, header=0 if header else None, engine="pyarrow")
        except Exception:  # noqa: BLE001 - the C parser below reads it or says what is wrong
            frame = None
    if frame is None:
        try:
            frame = pd.read_csv(path, sep=sep, header=0 if header else None, engine="c",
                                low_memory=False)
        except pd.errors.EmptyDataError:
            raise DataFileError(f"{path} is empty") from None
        except UnicodeDecodeError:
            raise DataFileError(f"{path} could not be read as a {kind} file: it is not UTF-8 "
                                "text") from None
        except Exception as e:  # noqa: BLE001
            raise DataFileError(f"{path} could not be read as a {kind} file: "
                                f"{one_line(e)}") from None
    if header:
        frame.columns = [str(c).strip() for c in frame.columns]
    else:
        frame.columns = range(frame.shape[1])
    return Table(frame, path, header)


def _read_arrow(path, fmt):
    pd = _pandas()
    ext = os.path.splitext(path)[1].lower()
    if not _has_pyarrow():
        raise MissingReaderError(f"{path}: reading {ext} files needs pyarrow: "
                                 'pip install "fastbp[parquet]"')
    try:
        frame = pd.read_parquet(path) if fmt == "parquet" else pd.read_feather(path)
    except ImportError as e:
        raise MissingReaderError(f"{path}: reading {ext} files needs a newer pyarrow "
                                 f'({one_line(e)}): pip install -U "fastbp[parquet]"') from None
    except Exception as e:  # noqa: BLE001
        raise DataFileError(f"{path} could not be read as a {fmt.capitalize()} file: "
                            f"{one_line(e)}") from None
    frame = frame.reset_index(drop=True)
    return Table(frame, path, True)


def _load_npz(path):
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataFileError(f"{path} holds a single array; an .npz file needs arrays "
                                "named X and y (save one table as .npy instead)")
        with loaded as f:
            return {k: f[k] for k in f.files}
    except DataFileError:
        raise
    except Exception as e:  # noqa: BLE001 - damaged archives, pickled objects, other files
        raise DataFileError(f"{path} could not be read as an .npz archive of plain arrays "
                            f"({type(e).__name__}; fastbp never loads pickled data)") from None


def _array_table(a, path, what):
    pd = _pandas()
    if a.ndim == 1 and what in ("y", "y_test"):
        a = a[:, None]
    if a.ndim != 2:
        raise DataFileError(f"{path}: {what} must be a 2-D table (rows, columns); "
                            f"got shape {a.shape}")
    if a.dtype.kind not in "biufUS":
        raise DataFileError(f"{path}: {what} must hold numbers or text; got dtype {a.dtype}")
    if a.dtype.kind == "S":
        a = a.astype(str)
    if a.shape[0] == 0:
        raise DataFileError(f"{path}: {what} has no rows")
    return Table(pd.DataFrame(a), f"{path} ({what})" if what != "table" else path, False)


def read_table(path):
    """Any supported table file -> Table (for .npz: the array X)."""
    path = os.fspath(path)
    fmt, sep = file_format(path)
    if not os.path.isfile(path):
        raise DataFileError(f"no data file at {path}")
    if fmt == "text":
        table = _read_text(path, sep)
    elif fmt in ("parquet", "feather"):
        table = _read_arrow(path, fmt)
    elif fmt == "npy":
        try:
            a = np.load(path, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise DataFileError(f"{path} could not be read as an .npy array "
                                f"({type(e).__name__}; fastbp never loads pickled data)") \
                from None
        if not isinstance(a, np.ndarray):
            raise DataFileError(f"{path} is an .npz archive, not an .npy array: rename it")
        table = _array_table(a, path, "table")
    else:
        arrays = _load_npz(path)
        if "X" not in arrays:
            raise DataFileError(f"{path} must hold an array named 'X' (it holds "
                                f"{sorted(arrays)})")
        table = _array_table(arrays["X"], path, "X")
    if table.width == 0:
        raise DataFileError(f"{path} has no columns")
    if table.frame.shape[0] == 0:
        raise DataFileError(f"{path} has a header row but no data rows" if table.header
                            else f"{path} has no data rows")
    return table


# ------------------------------------------------------------------ datasets

@dataclass
class Dataset:
    """X (n, d) float64; y (n,) or (n, k): numbers, or an object array of text labels;
    test: (X_test, y_test) or None; feature_names: the file's names of X's columns (or None);
    label: the label column's name (or None) and label_position its file position (or None
    for .npz files); width: the file's number of columns."""
    X: np.ndarray
    y: np.ndarray
    test: tuple = None
    feature_names: list = None
    label: str = None
    label_position: int = None
    width: int = None


def _npz_labels(y, path, n, what="y"):
    table = _array_table(np.asarray(y), path, what)
    if table.frame.shape[0] != n:
        raise DataFileError(f"{path}: {what} has {table.frame.shape[0]} rows and "
                            f"{'X' if what == 'y' else 'X_test'} {n}; they must match")
    cols = [table.labels(j) for j in range(table.width)]
    if any(c.dtype == object for c in cols):
        if len(cols) > 1:
            raise DataFileError(f"{path}: text labels must be one column; {what} has "
                                f"{len(cols)}")
        return cols[0]
    return cols[0] if np.asarray(y).ndim == 1 else np.column_stack(cols)


def _sparse_file(path):
    """Whether `path` is a sparse data file (fastbp.sparsefiles): read as scipy CSR."""
    from .sparsefiles import is_sparse_file
    return is_sparse_file(path)


def _read_sparse(path, n_features=None):
    from .sparsefiles import read_sparse
    if not os.path.isfile(path):
        raise DataFileError(f"no data file at {path}")
    try:
        return read_sparse(path, n_features)
    except ValueError as e:
        raise DataFileError(one_line(e)) from None


def _sparse_label_column(X, path, label):
    """A save_npz matrix holds no separate labels: its --label column (a position; None:
    the last) is the label, the other columns the features (X stays sparse)."""
    width = X.shape[1]
    if label is None:
        j = width - 1
    else:
        try:
            j = int(label)
        except (TypeError, ValueError):
            raise LabelColumnError(f"{path}: --label {label!r}: a sparse matrix's columns "
                                   "have no names; give a position") from None
        if not -width <= j < width:
            raise LabelColumnError(f"{path}: --label {label}: the matrix has {width} columns")
        j %= width
    if width < 2:
        raise DataFileError(f"{path} has {width} column; it needs feature columns and a "
                            "label column")
    keep = np.array([i for i in range(width) if i != j])
    return X[:, keep].tocsr(), X[:, j].toarray().ravel(), j


def read_labelled(path, label=None, feature_names=None, n_features=None):
    """Features and labels of a file: X, y (and X_test, y_test) of an .npz, or the columns
    of a table, the label being the --label column (name or position; None: the last).
    feature_names: take these columns as the features, by name, where the file's header has
    them all (a model's saved names); else every column but the label. A sparse file gives
    a scipy CSR X: svmlight/libsvm with its labels (no --label: refused; n_features, the
    model's width: a file whose highest feature index is lower still gives X that width),
    a save_npz matrix with its --label column as the label."""
    path = os.fspath(path)
    if _sparse_file(path):
        svmlight = not path.lower().endswith(".npz")
        if svmlight and label is not None:
            raise LabelColumnError(f"--label {label!r}: {path} is an svmlight/libsvm file, "
                                   "whose labels are the first field of each line; leave "
                                   "--label out")
        X, y = _read_sparse(path, n_features if svmlight else None)
        if y is not None:
            return Dataset(X, y)
        X, y, j = _sparse_label_column(X, path, label)
        return Dataset(X, y, None, None, None, j, X.shape[1] + 1)
    if file_format(path)[0] == "npz":
        if not os.path.isfile(path):
            raise DataFileError(f"no data file at {path}")
        arrays = _load_npz(path)
        if "X" not in arrays or "y" not in arrays:
            raise DataFileError(f"{path} must hold arrays named 'X' and 'y' "
                                f"(it holds {sorted(arrays)})")
        X = _array_table(arrays["X"], path, "X")
        X = X.features(range(X.width))
        y = _npz_labels(arrays["y"], path, X.shape[0])
        test = None
        if ("X_test" in arrays) != ("y_test" in arrays):
            raise DataFileError(f"{path}: give both X_test and y_test, or neither")
        if "X_test" in arrays:
            Xt = _array_table(arrays["X_test"], path, "X_test")
            if Xt.width != X.shape[1]:
                raise DataFileError(f"{path}: X_test has {Xt.width} columns and X "
                                    f"{X.shape[1]}; they must match")
            Xt = Xt.features(range(Xt.width))
            test = (Xt, _npz_labels(arrays["y_test"], path, Xt.shape[0], "y_test"))
        return Dataset(X, y, test)
    table = read_table(path)
    if table.width < 2:
        raise DataFileError(f"{path} has {table.width} column; it needs feature columns "
                            "and a label column")
    j = table.column_index(label)
    if feature_names and table.header and set(feature_names) <= set(table.names) \
            and table.names[j] not in feature_names:
        features = [table.names.index(n) for n in feature_names]
    else:
        features = [i for i in range(table.width) if i != j]
    names = [table.names[i] for i in features] if table.header else None
    return Dataset(table.features(features), table.labels(j), None, names,
                   table.names[j] if table.header else None, j, table.width)


def read_features(path, n_features, feature_names=None, label_position=None):
    """The feature columns of a file, for prediction: X of an .npz, or the columns of a
    table — by the model's `feature_names` where the header has them all (other columns, the
    label's among them, are ignored); else all columns when there are `n_features`, or all
    but the label's (`label_position`, else the last) when there is one more. A sparse
    file gives a scipy CSR X."""
    if _sparse_file(path):
        # svmlight files do not store their width (give the model's); a save_npz matrix
        # does, and may hold the label column too
        npz = os.fspath(path).lower().endswith(".npz")
        X, _ = _read_sparse(path, None if npz else n_features)
        if npz and X.shape[1] == n_features + 1:         # a save_npz matrix with its label column
            X, _, _ = _sparse_label_column(X, path, label_position)
        if X.shape[1] != n_features:
            raise DataFileError(f"{path} has {X.shape[1]} columns; the model takes "
                                f"{n_features} features")
        return X
    table = read_table(path)
    if feature_names and table.header and set(feature_names) <= set(table.names):
        columns = [table.names.index(n) for n in feature_names]
    elif table.width == n_features:
        columns = list(range(table.width))
    elif table.width == n_features + 1 and file_format(path)[0] != "npz":
        skip = table.width - 1 if label_position is None else label_position % table.width
        columns = [i for i in range(table.width) if i != skip]
    else:
        hint = ""
        if feature_names and table.header:
            missing = [n for n in feature_names if n not in table.names]
            hint = f" (and its header lacks the model's column(s) {', '.join(missing[:5])})"
        raise DataFileError(f"{table.path} has {table.width} columns; the model takes "
                            f"{n_features} features{hint}")
    return table.features(columns)


# ------------------------------------------------------------------ labels for a loss

def class_codes(y, where, classes=None):
    """Labels -> (classes, integer codes). A numeric label that looks continuous (more
    than MAX_CLASSES_BEFORE_CONTINUOUS distinct values, some not whole numbers or most of
    them distinct) is refused: it is almost surely a regression target. With `classes`
    (a trained model's), labels outside them are refused."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:          # one label column, as a 2-D array
        y = y[:, 0]
    if y.ndim != 1:
        raise DataFileError(f"{where}: cross_entropy takes one label column; got "
                            f"{y.shape[1]} (use --loss binary_cross_entropy for 0/1 "
                            "columns)")
    if classes is None:
        if y.dtype != object:
            distinct = np.unique(y)
            whole = bool(np.all(distinct == np.round(distinct)))
            if len(distinct) > MAX_CLASSES_BEFORE_CONTINUOUS and (
                    not whole or len(distinct) > len(y) / 2):
                raise DataFileError(
                    f"{where} looks continuous ({len(distinct)} distinct values in "
                    f"{len(y)} rows{'' if whole else ', not whole numbers'}): "
                    "--loss cross_entropy would make each value a class; for regression "
                    "use --loss mse")
            if whole:
                y = y.astype(np.int64)
        classes, codes = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise DataFileError(f"{where}: cross_entropy needs at least 2 classes; every "
                                f"label is {_show(classes[0])}")
        return classes.tolist(), codes.reshape(-1)
    index = {}
    for i, c in enumerate(classes):
        index.setdefault(c, i)
        index.setdefault(str(c), i)
    codes = np.empty(len(y), dtype=np.int64)
    for r, v in enumerate(y.tolist()):
        if isinstance(v, float) and v == int(v):
            v = int(v)
        i = index.get(v, index.get(str(v)))
        if i is None:
            raise DataFileError(f"{where}: label {_show(v)} in data row {r + 1} is not one "
                                f"of the model's classes ({', '.join(map(str, classes[:10]))}"
                                f"{', ...' if len(classes) > 10 else ''})")
        codes[r] = i
    return classes, codes


def numeric_targets(y, where, loss):
    """Targets for the regression and binary losses: numbers (mse), counts >= 0 (poisson),
    values in [0, 1] (binary_cross_entropy)."""
    y = np.asarray(y)
    if y.dtype == object:
        example = next(v for v in y.tolist())
        raise DataFileError(f"{where} holds text ({_show(example)} in data row 1): --loss "
                            f"{loss} needs numeric targets; for class labels use --loss "
                            "cross_entropy")
    y = y.astype(np.float64)
    bounds = {"binary_cross_entropy": (0.0, 1.0), "poisson": (0.0, np.inf)}.get(loss)
    if bounds is not None:
        bad = np.flatnonzero(((y < bounds[0]) | (y > bounds[1])).reshape(len(y), -1).any(1))
        if len(bad):
            allowed = "in [0, 1]" if loss == "binary_cross_entropy" else "counts >= 0"
            value = y.reshape(len(y), -1)[bad[0]]
            raise DataFileError(f"{where}: --loss {loss} needs targets {allowed}; got "
                                f"{_show(value.tolist() if value.size > 1 else value[0])} "
                                f"in data row {bad[0] + 1}")
    return y


def digits():
    """scikit-learn's digits: X (1797, 64) pixels 0..16, y (1797,) (`fastbp train` holds
    out --test-size of it, 20% stratified with seed 0 by default)."""
    from sklearn.datasets import load_digits
    return load_digits(return_X_y=True)
