"""Out-of-core training over a stream of chunks: Parquet files and datasets read in record
batches with pyarrow (`fit_parquet`), and the epoch loop that `fastbp.distributed.
fit_incremental` shares for Dask blocks and iterables of chunks (`train_epochs`).

Each chunk is read, trained on with the compiled kernel (one `Trainer.fit` epoch, or
`partial_fit` for the estimators) and dropped, so memory stays at about one chunk. For a
Trainer, `history` gets one entry per pass over the data (the chunks' entries merged:
losses and accuracies weighted by rows, gradient norms by steps, maxima kept, times summed),
and the training-health checks run once per pass, each problem warned of once per call.
"""
import contextlib
import math
import os
import warnings

import numpy as np

from . import config as _config
from .health import TrainingHealthWarning, diagnose
from .trainer import Trainer

BATCH_ROWS = 65_536   # rows per Parquet record batch: the unit of memory and of training


# ----------------------------------------------------------------- the epoch loop

def model_rng(model, random_state):
    """The generator of the chunk order: from random_state, else the model's own seed (a
    Trainer's `seed`, an estimator's `random_state`), so that a seeded model trains the same
    way every run. A RandomState or Generator gives one draw of a seed, as scikit-learn."""
    if random_state is None:
        random_state = model.config["seed"] if isinstance(model, Trainer) else \
            getattr(model, "random_state", None)
    if isinstance(random_state, np.random.RandomState):
        random_state = random_state.randint(2**31)
    elif isinstance(random_state, np.random.Generator):
        random_state = int(random_state.integers(2**31))
    return np.random.default_rng(random_state)


def check_epochs(epochs, model):
    """epochs=None: a Trainer's `epochs`, 1 for an estimator (one partial_fit per chunk)."""
    if epochs is None:
        return model.config["epochs"] if isinstance(model, Trainer) else 1
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs={epochs!r} is not allowed: an integer >= 1")
    return int(epochs)


def train_epochs(model, chunks, epochs, *, classes=None, progress=None, total_rows=None,
                 restore_on_divergence=True):
    """`epochs` passes of `model` over `chunks(epoch)`, an iterable of (X, y) NumPy chunks
    for each pass (epoch counts from 0 in this call). restore_on_divergence: a Trainer's
    `fit` argument for every chunk (False: no roll-back copy). Returns model."""
    if not (isinstance(model, Trainer) or hasattr(model, "partial_fit")):
        raise TypeError("model must be a fastbp Trainer or an estimator with partial_fit")
    restore = _config._bool("restore_on_divergence", restore_on_divergence)
    from tqdm.auto import tqdm
    bar = tqdm(total=None if total_rows is None else epochs * total_rows, unit="row",
               unit_scale=True, disable=None if progress is None else not progress,
               leave=True, dynamic_ncols=True)
    warned = set()
    first = True
    # a Trainer's chunks reuse one roll-back file per call (each chunk is a fit of its own)
    one_file = model._one_rollback_file() if isinstance(model, Trainer) and restore else \
        contextlib.nullcontext()
    try:
        with one_file:
            for epoch in range(epochs):
                start = model.epochs_done if isinstance(model, Trainer) else None
                rows = []
                try:
                    for X, y in chunks(epoch):
                        _train_chunk(model, X, y, classes if first else None, restore)
                        first = False
                        rows.append(X.shape[0])       # (len() refuses scipy sparse chunks)
                        bar.update(X.shape[0])
                        del X, y              # released before the next chunk is read
                finally:       # also when a chunk diverged: the pass so far, as one entry
                    if isinstance(model, Trainer) and rows:
                        _merge_epoch(model, start, rows)
                if isinstance(model, Trainer) and rows:
                    _warn_of_health(model, warned)
                    bar.set_postfix(loss=f"{model.history['loss'][-1]:.4g}")
    finally:
        bar.close()
    return model


def _train_chunk(model, X, y, classes, restore):
    if isinstance(model, Trainer):
        with warnings.catch_warnings():      # health is judged per pass (_warn_of_health)
            warnings.simplefilter("ignore", TrainingHealthWarning)
            model.fit(X, y, epochs=1, progress=False, restore_on_divergence=restore)
    elif classes is not None:
        model.partial_fit(X, y, classes=classes)
    else:
        model.partial_fit(X, y)


def _merge_epoch(trainer, start, rows):
    """The history entries of one pass's chunks (from `start`) as one entry."""
    h = trainer.history
    n = len(h.get("loss", [])) - start
    if n <= 1:
        return
    rows = np.asarray(rows[-n:], dtype=float)       # a diverged chunk left no entry
    steps = np.ceil(rows / trainer.config["batch_size"])
    for key, values in h.items():
        if key == "initial_loss" or len(values) != start + n:
            continue
        part = values[start:]
        if key == "time":
            merged = float(sum(part))
        elif key == "lr":
            merged = part[-1]
        elif key.endswith("_max"):
            merged = np.max(np.asarray(part, dtype=float), axis=0)
        elif key.startswith(("grad_norm", "layer_grad_norms")):
            merged = np.average(np.asarray(part, dtype=float), axis=0, weights=steps)
        else:                                        # loss, accuracy: per row
            merged = np.average(np.asarray(part, dtype=float), axis=0, weights=rows)
        values[start:] = [merged.tolist() if isinstance(merged, np.ndarray) else
                          float(merged) if isinstance(merged, np.floating) else merged]


def _warn_of_health(trainer, warned):
    dead = {layer for kind, layer in warned if kind == "dead"}
    for problem in diagnose(trainer.history, dead_before=dead):
        key = (problem["kind"], problem["layer"])
        if key not in warned:
            warned.add(key)
            warnings.warn(f"epoch {trainer.epochs_done - 1}: {problem['message']}",
                          TrainingHealthWarning, stacklevel=4)


# ----------------------------------------------------------------- Parquet

def _pyarrow():
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.dataset
        import pyarrow.parquet
    except ImportError:
        raise ImportError("reading Parquet needs pyarrow: pip install pyarrow") from None
    return pyarrow


def parquet_files(source):
    """The Parquet files of `source`: a file, a directory (searched recursively as
    pyarrow.dataset does, skipping names that start with '_' or '.'), or a list of them."""
    pa = _pyarrow()
    if isinstance(source, (str, os.PathLike)):
        source = [source]
    files = []
    for s in source:
        s = os.fspath(s)
        if not os.path.exists(s):
            raise FileNotFoundError(f"no such Parquet file or directory: {s}")
        files += sorted(pa.dataset.dataset(s, format="parquet").files) if os.path.isdir(s) \
            else [s]
    if not files:
        raise ValueError(f"no Parquet files in {source!r}")
    return files


def numeric_type(t):
    """Whether an Arrow column type holds numbers a model can take (integers, floats,
    booleans, decimals)."""
    pa = _pyarrow()
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            or pa.types.is_decimal(t))


def _columns(schema, label, features, path):
    """(feature names, label names) checked against a file's Arrow schema."""
    labels = [label] if isinstance(label, str) else list(label)
    if not labels:
        raise ValueError("label must name a column (or a list of columns)")
    names = schema.names
    for name in labels + list(features or []):
        if name not in names:
            raise ValueError(f"column {name!r} is not in {path} (its columns: "
                             f"{', '.join(names[:20])}{', ...' if len(names) > 20 else ''})")
    if features is None:
        features = [n for n in names if n not in labels]
    features = list(features)
    if not features:
        raise ValueError(f"{path} has no feature columns besides the label")
    for name in features:
        t = schema.field(name).type
        if not numeric_type(t):
            raise ValueError(f"feature column {name!r} of {path} has type {t}, not a number: "
                             "encode it as numbers, or leave it out with features=[...]")
    return features, labels


def _row_groups(files, label, features):
    """[(file, row group, rows)] of every file, the columns checked in each."""
    pq = _pyarrow().parquet
    units, columns = [], None
    for path in files:
        with pq.ParquetFile(path) as pf:
            cols = _columns(pf.schema_arrow, label, features, path)
            if columns is None:
                columns = cols
            elif features is None and cols != columns:
                raise ValueError(f"{path} has other columns than {files[0]}: "
                                 f"{cols[0]} vs {columns[0]}; pass features=[...]")
            md = pf.metadata
            units += [(path, g, md.row_group(g).num_rows) for g in range(md.num_row_groups)]
    return units, columns


def _to_numpy(batch, names, dtype, what, where):
    out = np.empty((batch.num_rows, len(names)), dtype=dtype)
    for j, name in enumerate(names):
        col = batch.column(name)
        if col.null_count:
            raise ValueError(f"{what} column {name!r} has {col.null_count} missing value(s) "
                             f"in {where}: fill or drop them first")
        out[:, j] = col.to_numpy(zero_copy_only=False)
    return out


def _batches(units, columns, batch_rows, dtype, order):
    """(X, y, where) per record batch of the row groups `units` in `order`; y as stored."""
    pq = _pyarrow().parquet
    features, labels = columns
    for i in order:
        path, group, _ = units[i]
        with pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False) as pf:
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[group],
                                         columns=features + labels, use_threads=False):
                where = f"row group {group} of {path}"
                X = _to_numpy(batch, features, dtype, "feature", where)
                if len(labels) == 1:
                    col = batch.column(labels[0])
                    if col.null_count:
                        raise ValueError(f"label column {labels[0]!r} has {col.null_count} "
                                         f"missing value(s) in {where}")
                    # a copy: Arrow's zero-copy view is read-only, and Numba would compile
                    # the epoch kernel once more for read-only labels
                    y = np.array(col.to_numpy(zero_copy_only=False))
                else:
                    y = _to_numpy(batch, labels, dtype, "label", where)
                del batch                 # Arrow's buffers go before the model trains
                yield X, y, where
                del X, y


def _encode(y, classes, where):
    """Labels -> their positions in `classes` (a Trainer takes class indices)."""
    classes = np.asarray(classes)
    order = np.argsort(classes, kind="stable")
    pos = np.searchsorted(classes[order], y).clip(0, len(classes) - 1)
    bad = classes[order][pos] != y
    if bad.any():
        raise ValueError(f"label {y[np.argmax(bad)]!r} in {where} is not one of classes")
    return order[pos]


def fit_parquet(model, source, *, label, features=None, epochs=None, batch_rows=BATCH_ROWS,
                classes=None, shuffle=True, random_state=None, progress=None, transform=None,
                restore_on_divergence=True):
    """Train `model` on a Parquet file or dataset larger than memory: `epochs` passes, each
    over the row groups in a shuffled order (shuffle=True), read with pyarrow in record
    batches of at most `batch_rows` rows; each batch is converted, trained on (one
    `Trainer.fit` epoch, whose minibatches are shuffled within the batch; `partial_fit` for
    an estimator) and dropped. Memory: about one batch. Returns model.

    model: a Trainer or a fastbp estimator. source: a .parquet file, a directory of them
    (a dataset; files as pyarrow.dataset finds them) or a list of paths. label: the label
    column (a list of columns: a 2-D target, e.g. several mse outputs). features: the feature
    columns (default every other column, in file order; they must be numeric). epochs:
    default a Trainer's `epochs`, 1 for an estimator. classes: every class label; a Trainer
    with a classification loss is given each label's position in classes (labels of any
    type), an estimator gets classes at its first partial_fit. random_state: the row-group
    order (default the model's seed / random_state). progress: a tqdm bar over rows (None:
    when stderr is a terminal). transform: a callable X -> X applied to every batch's
    features (e.g. standardisation with statistics from `column_stats`).
    restore_on_divergence: as `Trainer.fit`'s, for every batch of a Trainer (False: no copy
    of the parameters and optimizer state is kept to undo a diverging batch; estimators,
    trained with partial_fit, keep none anyway)."""
    epochs = check_epochs(epochs, model)
    _config._bool("restore_on_divergence", restore_on_divergence)
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, (int, np.integer)) \
            or batch_rows < 1:
        raise ValueError(f"batch_rows={batch_rows!r} is not allowed: an integer >= 1")
    files = parquet_files(source)
    units, columns = _row_groups(files, label, features)
    total = sum(u[2] for u in units)
    if total == 0:
        raise ValueError(f"{source!r} has no rows")
    if isinstance(model, Trainer):
        dtype = model.dtype
        encode = classes is not None and model.config["loss"] == "cross_entropy"
        if classes is None:
            _refuse_text_labels(files[0], columns[1], model.config["loss"])
    else:
        dtype = np.float32 if getattr(model, "dtype", None) in ("float32", np.float32) \
            else np.float64
        encode = False
    rng = model_rng(model, random_state)

    def chunks(epoch):
        order = rng.permutation(len(units)) if shuffle else range(len(units))
        for X, y, where in _batches(units, columns, int(batch_rows), dtype, order):
            if transform is not None:
                X = transform(X)
            yield X, (_encode(y, classes, where) if encode else y)
            del X, y                      # (this frame would hold them while suspended)

    return train_epochs(model, chunks, epochs, classes=None if encode else classes,
                        progress=progress, total_rows=total,
                        restore_on_divergence=restore_on_divergence)


def _refuse_text_labels(path, labels, loss):
    """A Trainer takes numeric labels only: label columns of text (or any other type that is
    not numbers) need `classes` (with cross_entropy), else they are refused before any
    work, naming the column."""
    with _pyarrow().parquet.ParquetFile(path) as pf:
        schema = pf.schema_arrow
    for name in labels:
        kind = schema.field(name).type
        if not numeric_type(kind):
            hint = ("pass classes=[...], every class label, and each row's label becomes "
                    "its position in it" if loss == "cross_entropy" else
                    f"loss={loss!r} needs numbers")
            raise ValueError(f"label column {name!r} of {path} holds {kind}, not numbers: "
                             f"{hint}")


def column_stats(source, columns=None, *, batch_rows=BATCH_ROWS):
    """{column: (mean, std)} of numeric columns of a Parquet file or dataset, in one
    streamed pass (Chan et al.'s pairwise update; population std). columns: default every
    numeric column (numeric_type: integers, floats, booleans, decimals), others (text
    labels) left out; a column named here that is not numeric, or not in a file, is a
    ValueError naming it."""
    pq = _pyarrow().parquet
    stats = {}
    for path in parquet_files(source):
        with pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False) as pf:
            schema = pf.schema_arrow
            numeric = [f.name for f in schema if numeric_type(f.type)]
            if columns is None:
                names = numeric
            else:
                names = list(columns)
                for name in names:
                    if name not in schema.names:
                        raise ValueError(f"column {name!r} is not in {path}")
                    if name not in numeric:
                        raise ValueError(f"column {name!r} of {path} is "
                                         f"{schema.field(name).type}, not numeric")
            for batch in pf.iter_batches(batch_size=batch_rows, columns=list(names),
                                         use_threads=False):
                for name in names:
                    x = batch.column(name).drop_null().to_numpy(zero_copy_only=False)
                    x = x.astype(np.float64)
                    n_b = x.size
                    if not n_b:
                        continue
                    mean_b = x.mean()
                    m2_b = ((x - mean_b) ** 2).sum()
                    n, mean, m2 = stats.get(name, (0, 0.0, 0.0))
                    delta = mean_b - mean
                    total = n + n_b
                    stats[name] = (total, mean + delta * n_b / total,
                                   m2 + m2_b + delta * delta * n * n_b / total)
    return {k: (mean, math.sqrt(m2 / n)) for k, (n, mean, m2) in stats.items()}


def distinct_values(source, column, *, batch_rows=BATCH_ROWS, limit=100_000):
    """The sorted distinct values of one column of a Parquet file or dataset (e.g. the
    classes of a label column), in one streamed pass over that column only; a ValueError
    when there are more than `limit` (a continuous column, not class labels)."""
    pa = _pyarrow()
    seen = None
    for path in parquet_files(source):
        with pa.parquet.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False) as pf:
            if column not in pf.schema_arrow.names:
                raise ValueError(f"column {column!r} is not in {path}")
            for batch in pf.iter_batches(batch_size=batch_rows, columns=[column],
                                         use_threads=False):
                values = pa.compute.unique(batch.column(0).drop_null())
                seen = values if seen is None else \
                    pa.compute.unique(pa.concat_arrays([seen, values]))
                if len(seen) > limit:
                    raise ValueError(f"column {column!r} has more than {limit} distinct "
                                     "values: not class labels")
    if seen is None:
        return np.array([])
    return np.sort(seen.to_numpy(zero_copy_only=False))
