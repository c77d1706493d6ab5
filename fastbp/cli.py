"""The `fastbp` command line: `fastbp train [DATA]`, `fastbp predict MODEL DATA` and
`fastbp warmup`.

With no DATA, `fastbp train` trains on scikit-learn's copy of the digits dataset (no
download). DATA is an .npz with arrays X and y (optionally X_test, y_test) or a .csv whose
last column is the label unless --label names one.
"""
import argparse
import csv
import os
import sys
import time
import warnings

import numpy as np

from . import config as _config
from .health import DivergenceError

DEFAULT_OUT = "fastbp-model.npz"


class CLIError(Exception):
    """A problem with the command line or the data, reported without a traceback."""


# ----------------------------------------------------------------- data files

def _read_csv(path):
    """-> (matrix of strings (rows, cols), header or None)."""
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    if not rows:
        raise CLIError(f"{path} is empty")
    header = None
    if not any(_is_number(v) for v in rows[0]):   # a header row holds no number at all
        header, rows = [h.strip() for h in rows[0]], rows[1:]
    width = len(rows[0]) if rows else 0
    bad = [i for i, r in enumerate(rows) if len(r) != width]
    if not rows or bad:
        raise CLIError(f"{path}: every row must have the same number of columns "
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
        raise CLIError(f"--label {label!r} is neither a column name of {path} "
                       f"({', '.join(header or [])}) nor a column number") from None
    if not -width <= i < width:
        raise CLIError(f"--label {i} is out of range: {path} has {width} columns")
    return i % width


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def _floats(table, what):
    """A table of strings -> floats, or an error naming the first cell that is not a number."""
    try:
        return table.astype(float)
    except ValueError:
        for (r, c), v in np.ndenumerate(table):
            if not _is_number(v):
                raise CLIError(f"{what} must be numbers; got {str(v)!r} at data row {r + 1}, "
                               f"column {c + 1}") from None
        raise


def load_training_data(path, label):
    """-> X (n, d), y (n,) or (n, k), test pair or None, feature names or None."""
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise CLIError(f"no data file at {path}")
    if ext == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except Exception as e:  # noqa: BLE001 - any unreadable file is a user error here
            raise CLIError(f"{path} could not be read as an .npz file: {e}") from None
        if "X" not in arrays or "y" not in arrays:
            raise CLIError(f"{path} must hold arrays named 'X' and 'y' "
                           f"(it holds {sorted(arrays)})")
        test = (arrays["X_test"], arrays["y_test"]) if "X_test" in arrays else None
        return arrays["X"], arrays["y"], test, None
    if ext == ".csv":
        table, header = _read_csv(path)
        j = _column_index(label, header, table.shape[1], path)
        features = [i for i in range(table.shape[1]) if i != j]
        names = [header[i] for i in features] if header else None
        return _floats(table[:, features], f"{path}: feature columns"), table[:, j], None, names
    raise CLIError(f"{path}: unknown data format {ext!r}; use .npz (X, y) or .csv")


def load_features(path, n_features, feature_names):
    """Features for prediction: an .npz with X, or a .csv with the training columns (by
    name when it has a header; a label column, if present, is ignored)."""
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise CLIError(f"no data file at {path}")
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as f:
            if "X" not in f.files:
                raise CLIError(f"{path} must hold an array named 'X'")
            return f["X"]
    if ext == ".csv":
        table, header = _read_csv(path)
        if header is not None and feature_names and set(feature_names) <= set(header):
            table = table[:, [header.index(n) for n in feature_names]]
        elif table.shape[1] != n_features:
            raise CLIError(f"{path} has {table.shape[1]} columns; the model takes "
                           f"{n_features} features")
        return _floats(table, f"{path}: feature columns")
    raise CLIError(f"{path}: unknown data format {ext!r}; use .npz (X) or .csv")


def _digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0,
                                                        stratify=y)
    return X_train, y_train, (X_test, y_test)


# -------------------------------------------------------------------- commands

def _split(X, y, test_size, seed, stratify):
    if test_size == 0:
        return X, y, None
    from sklearn.model_selection import train_test_split
    try:
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, random_state=seed,
                                                  stratify=y if stratify else None)
    except ValueError:  # e.g. a class with one sample: fall back to a plain split
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, random_state=seed)
    return X_tr, y_tr, (X_te, y_te)


def cmd_train(args):
    from .trainer import Trainer

    if args.data is None:
        X, y, test = _digits()
        source, names = "digits (scikit-learn's copy)", None
        mean, std = np.zeros(X.shape[1]), np.full(X.shape[1], 16.0)   # pixels are 0..16
    else:
        X, y, test, names = load_training_data(args.data, args.label)
        source = args.data
        mean, std = None, None
    X = np.asarray(X)
    if X.ndim != 2:
        raise CLIError(f"X must be a 2-D table of features; got shape {X.shape}")
    meta = {"feature_names": names}
    if args.loss == "cross_entropy":
        classes, y_codes = np.unique(np.asarray(y), return_inverse=True)
        if len(classes) < 2:
            raise CLIError(f"{source}: cross_entropy needs at least 2 classes in the labels")
        y = y_codes.reshape(-1)
        if test is not None:
            index = {c: i for i, c in enumerate(classes.tolist())}
            missing = set(np.asarray(test[1]).tolist()) - set(index)
            if missing:
                raise CLIError(f"test labels {sorted(missing)[:5]} do not occur in training")
            test = (test[0], np.array([index[c] for c in np.asarray(test[1]).tolist()]))
        meta["classes"] = classes.tolist()
        n_out = len(classes)
    else:
        y = _floats(np.asarray(y), "labels for mse/binary_cross_entropy")
        n_out = 1 if y.ndim == 1 else y.shape[1]
    if test is None:
        X, y, test = _split(X, y, args.test_size, args.seed, args.loss == "cross_entropy")
    if mean is None:
        if args.scale == "standard":
            mean, std = X.mean(axis=0), X.std(axis=0)
            std[std == 0] = 1.0
        else:
            mean, std = np.zeros(X.shape[1]), np.ones(X.shape[1])
    meta["scale"] = {"mean": mean.tolist(), "std": std.tolist()}
    y_mean, y_std = 0.0, 1.0
    if args.loss == "mse" and args.scale == "standard":   # regression targets too
        y_mean, y_std = y.mean(axis=0), y.std(axis=0)
        y_std = np.where(y_std == 0, 1.0, y_std)
        meta["target_scale"] = {"mean": np.atleast_1d(y_mean).tolist(),
                                "std": np.atleast_1d(y_std).tolist()}
        y = (y - y_mean) / y_std
        if test is not None:
            test = (test[0], (_floats(np.asarray(test[1]), "test targets") - y_mean) / y_std)

    layers = [X.shape[1], *args.layers, n_out]
    try:
        trainer = Trainer(layers, activation=args.activation, loss=args.loss,
                          optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size,
                          epochs=args.epochs, target=args.target, dtype=args.dtype,
                          seed=args.seed, clip_norm=args.clip_norm)
    except (TypeError, ValueError, RuntimeError) as e:     # RuntimeError: no GPU
        raise CLIError(str(e)) from None
    trainer.metadata = meta
    Xs = (X - mean) / std
    val = None if test is None else ((np.asarray(test[0]) - mean) / std, test[1])
    print(f"fastbp: training {'-'.join(map(str, layers))} ({args.activation}, {args.loss}, "
          f"{args.optimizer} lr={args.lr}) on {source}: {Xs.shape[0]} training samples"
          f"{'' if val is None else f', {len(val[1])} test samples'}; "
          f"target={args.target}, {args.dtype}", flush=True)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            history = trainer.fit(Xs, y, validation_data=val, progress=args.progress,
                                  lr_schedule=_schedule(args.lr_schedule, args.epochs))
    except (TypeError, ValueError, DivergenceError) as e:
        raise CLIError(str(e)) from None
    wall = time.perf_counter() - t0
    times = history["time"]
    if val is not None:
        result = trainer.evaluate(*val)
        line = f"test loss: {result['loss']:.4f}"
        if "accuracy" in result:
            line = f"test accuracy: {result['accuracy']:.4f}   " + line
        if "target_scale" in meta:
            line += " (on standardised targets)"
        print(line)
    steady = times[1:] if len(times) > 1 else times
    print(f"training throughput: {Xs.shape[0] * len(steady) / sum(steady):,.0f} samples/s "
          f"(epochs after the first; the first, {times[0]:.2f} s, includes loading or "
          f"compiling the kernel). fit took {wall:.2f} s in all for {len(times)} epochs, "
          f"with the test evaluations and any one-time compilation")
    trainer.save(args.out)
    print(f"saved model to {args.out}")
    if args.report:
        from .plot import training_report
        try:
            training_report(history, args.report, title=f"fastbp train: {source}")
        except ImportError as e:
            raise CLIError(str(e)) from None
        print(f"wrote training report to {args.report}")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"fastbp: warning: {message}", file=sys.stderr)


def _schedule(name, epochs):
    if name == "cosine":
        return ("cosine", {"t_max": max(epochs, 2), "warmup": min(5, max(epochs, 2) - 1)})
    if name == "plateau":
        return ("plateau", {"factor": 0.5, "patience": 3})
    return None


def cmd_predict(args):
    from .trainer import Trainer

    try:
        trainer = Trainer.load(args.model, target=args.target)
    except (ValueError, FileNotFoundError, RuntimeError) as e:     # RuntimeError: no GPU
        raise CLIError(str(e)) from None
    meta = trainer.metadata or {}
    n_features = trainer.layers[0]
    X = load_features(args.data, n_features, meta.get("feature_names"))
    scale = meta.get("scale") or {"mean": [0.0] * n_features, "std": [1.0] * n_features}
    try:
        X = (np.asarray(X, dtype=float) - np.array(scale["mean"])) / np.array(scale["std"])
    except (TypeError, ValueError) as e:
        raise CLIError(f"{args.data}: X must be a table of {n_features} numeric features "
                       f"({e})") from None
    try:
        if args.proba:
            out = trainer.predict_proba(X)
        else:
            out = trainer.predict(X)
    except (TypeError, ValueError, AttributeError) as e:
        raise CLIError(str(e)) from None
    if not args.proba and "classes" in meta:
        out = np.asarray(meta["classes"], dtype=object)[out]
    if "target_scale" in meta:
        out = out * np.array(meta["target_scale"]["std"]) + np.array(meta["target_scale"]["mean"])
    lines = [",".join(str(v) for v in np.atleast_1d(row)) for row in out]
    text = "\n".join(lines) + "\n"
    if args.out in (None, "-"):
        sys.stdout.write(text)
    else:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {len(lines)} predictions to {args.out}", file=sys.stderr)
    return 0


def cmd_warmup(args):
    from .trainer import warmup
    warmup(dtypes=args.dtypes, targets=args.targets, verbose=True)
    return 0


def _layers(text):
    try:
        sizes = [int(s) for s in text.replace(" ", ",").split(",") if s]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give hidden sizes like 64,64") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: every hidden size must be >= 1")
    return sizes


def build_parser():
    p = argparse.ArgumentParser(prog="fastbp", description="Train and use multi-layer "
                                "perceptrons with fastbp's compiled backpropagation.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (no DATA: the digits dataset)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("data", nargs="?", help=".npz with X, y (optionally X_test, y_test) or .csv")
    t.add_argument("--label", help="label column of a .csv: name or number (default: last)")
    t.add_argument("--layers", type=_layers, default=[64], help="hidden sizes, e.g. 128,64")
    t.add_argument("--activation", default="relu", choices=list(_config.ACTIVATIONS))
    t.add_argument("--loss", default="cross_entropy", choices=list(_config.LOSSES))
    t.add_argument("--optimizer", default="adam", choices=list(_config.OPTIMIZERS))
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--target", default="cpu", choices=["cpu", "parallel", "cuda"],
                   help="compute target: one core, all cores, or an NVIDIA GPU "
                        "(needs the cuda extra)")
    t.add_argument("--dtype", default="float32", choices=list(_config.DTYPES))
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--scale", default="standard", choices=["standard", "none"],
                   help="standardise features (and mse targets); mean/std are saved with the model "
                   "and applied by `fastbp predict`")
    t.add_argument("--test-size", type=float, default=0.2,
                   help="fraction held out for the test accuracy (0: none)")
    t.add_argument("--out", default=DEFAULT_OUT, help=f"model file (default {DEFAULT_OUT})")
    t.add_argument("--report", help="write a training report figure (PNG) to this path")
    t.add_argument("--lr-schedule", choices=["constant", "cosine", "plateau"],
                   default="constant", help="per-epoch learning-rate schedule")
    t.add_argument("--clip-norm", type=float, default=None,
                   help="clip the global gradient norm to this value")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    t.set_defaults(func=cmd_train)

    q = sub.add_parser("predict", help="write predictions of a saved model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("model", help="a model file written by `fastbp train` or Trainer.save")
    q.add_argument("data", help=".npz with X, or .csv with the feature columns")
    q.add_argument("--out", help="output .csv (default: standard output)")
    q.add_argument("--proba", action="store_true", help="write class probabilities")
    q.add_argument("--target", choices=["cpu", "parallel", "cuda"],
                   help="compute target (default: the one the model was saved from)")
    q.set_defaults(func=cmd_predict)

    w = sub.add_parser("warmup", help="compile the kernels ahead of time (cached on disk)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    w.add_argument("--dtypes", nargs="+", default=list(_config.DTYPES),
                   choices=list(_config.DTYPES))
    w.add_argument("--targets", nargs="+", default=["cpu", "parallel"],
                   choices=["cpu", "parallel"])
    w.set_defaults(func=cmd_warmup)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "train" and not 0 <= args.test_size < 1:
        print("fastbp: error: --test-size must be in [0, 1)", file=sys.stderr)
        return 2
    if args.command == "train" and args.epochs < 1:
        print("fastbp: error: --epochs must be at least 1", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except CLIError as e:
        print(f"fastbp: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
