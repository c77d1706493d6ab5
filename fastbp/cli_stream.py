"""`fastbp train DATA --stream`: training from a Parquet file or dataset larger than memory.

The statistics a normal `fastbp train` takes from the loaded table (the class list, the
features' mean and std for `--scale standard`) come from streamed passes over the needed
columns (fastbp.streaming.distinct_values, column_stats); training then streams record
batches every epoch (fastbp.streaming.fit_parquet). The model file carries the same
metadata as a normal run's, so `fastbp predict` and `fastbp evaluate` use it unchanged.
Targets of `--loss mse` are not standardised when streaming (one more pass would be
needed per epoch to undo it; the model predicts in the target's units directly).
"""
import time

import numpy as np

from .cli import CLIError, UsageError, _diverged, _make_trainer, _save_model, one_line
from .datafiles import MAX_CLASSES_BEFORE_CONTINUOUS


def _columns(args):
    """(feature columns, label column, its position) of the Parquet source."""
    from .streaming import numeric_type, parquet_files
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CLIError('--stream reads Parquet with pyarrow: pip install "fastbp[parquet]"') \
            from None
    try:
        files = parquet_files(args.data)
        if not files:
            raise ValueError("no .parquet files found")
        schema = pq.ParquetFile(files[0]).schema_arrow
        names = schema.names
        n_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    except (OSError, ValueError) as e:
        raise CLIError(f"{args.data}: {one_line(e)} (--stream takes a .parquet file or a "
                       "directory of them)") from None
    label = args.label
    if label is None:
        label = names[-1]
    elif label not in names:
        try:
            label = names[int(label)]
        except (ValueError, IndexError):
            raise CLIError(f"--label {args.label!r}: not a column of {args.data} (its "
                           f"columns: {', '.join(names)})") from None
    features = [n for n in names if n != label]
    for i, name in enumerate(features):
        kind = schema.field(name).type
        if not numeric_type(kind):
            raise CLIError(f"{args.data}: feature column {name!r} (column "
                           f"{names.index(name) + 1}) is {kind}, not numeric; encode it as "
                           "numbers or choose it as --label")
    return features, label, names.index(label), n_rows


def _refuse_continuous(classes, label, data, n_rows):
    """The rule of datafiles.class_codes for a streamed label column: many distinct numeric
    values, some not whole or most rows distinct, are a regression target."""
    if classes.dtype.kind not in "iuf" or len(classes) <= MAX_CLASSES_BEFORE_CONTINUOUS:
        return
    whole = bool(np.all(classes == np.round(classes)))
    if not whole or len(classes) > n_rows / 2:
        raise CLIError(f"{data}: the label column {label!r} looks continuous ({len(classes)} "
                       f"distinct values in {n_rows} rows): --loss cross_entropy would make "
                       "each value a class; for regression use --loss mse")


def train_streamed(args):
    from .health import DivergenceError
    from .streaming import column_stats, distinct_values, fit_parquet

    if args.data is None:
        raise UsageError("--stream needs DATA: a .parquet file or a directory of them")
    features, label, position, n_rows = _columns(args)
    meta = {"feature_names": features, "label": label, "label_position": position}
    classes = None
    n_out = 1
    if args.loss == "cross_entropy":
        try:
            classes = distinct_values(args.data, label, limit=1000)
        except (TypeError, ValueError, OSError) as e:
            raise CLIError(f"{args.data}: {one_line(e)}; for regression use --loss mse") \
                from None
        if len(classes) < 2:
            raise CLIError(f"{args.data}: the label column {label!r} has fewer than 2 classes")
        _refuse_continuous(classes, label, args.data, n_rows)
        meta["classes"] = classes.tolist()
        n_out = len(classes)
    try:
        transform = None
        if args.scale == "standard":
            stats = column_stats(args.data, features)
            mean = np.array([stats[f][0] for f in features])
            std = np.array([stats[f][1] for f in features])
            std[std == 0] = 1.0
            meta["scale"] = {"mean": mean.tolist(), "std": std.tolist()}
            transform = lambda X: (X - mean) / std   # noqa: E731
    except (TypeError, ValueError, OSError) as e:       # e.g. a text feature column
        raise CLIError(f"{args.data}: {one_line(e)}") from None
    layers = [len(features), *args.layers, n_out]
    trainer = _make_trainer(args, layers)
    trainer.metadata = meta
    print(f"fastbp: training {'-'.join(map(str, layers))} ({args.activation}, {args.loss}, "
          f"{args.optimizer} lr={args.lr}) streamed from {args.data}; target={args.target}, "
          f"{args.dtype}", flush=True)
    t0 = time.perf_counter()
    try:
        fit_parquet(trainer, args.data, label=label, features=features, epochs=args.epochs,
                    classes=classes, random_state=args.seed, progress=args.progress,
                    transform=transform, restore_on_divergence=args.restore_on_divergence)
    except DivergenceError as e:
        raise _diverged(trainer, e, args.out) from None
    except (TypeError, ValueError, OSError) as e:
        raise CLIError(f"{args.data}: {one_line(e)}") from None
    saved = _save_model(trainer, args.out)
    loss = trainer.history.get("loss") or [float("nan")]
    print(f"trained {len(loss)} epochs in {time.perf_counter() - t0:.2f} s; last epoch's "
          f"training loss {loss[-1]:.4f}")
    print(f"saved model to {saved}")
    return 0
