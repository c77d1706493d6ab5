"""The `fastbp` command line: `fastbp train [DATA]`, `fastbp predict MODEL DATA`,
`fastbp evaluate MODEL DATA` and `fastbp warmup`.

With no DATA, `fastbp train` trains on scikit-learn's copy of the digits dataset (no
download). DATA is a table (.csv, .tsv, .parquet, .feather, .npy: the label is the last
column unless --label names one) or an .npz with arrays X and y (optionally X_test, y_test);
fastbp.datafiles reads them.

Errors never show a traceback: the command line asking for something not allowed exits
with 2, a data file, model file, output path or missing optional package that cannot serve
exits with 1; either way with one line on stderr that names the file or option. Everything
that can be checked before training is (options, output paths, matplotlib for --report), and
outputs are written atomically (a temporary file, then a rename), so a failed run leaves no
partial file.
"""
import argparse
import csv
import io
import os
import sys
import tempfile
import time
import warnings

import numpy as np
from scipy import sparse

from . import config as _config
from .io import atomic_write, check_writable
from .datafiles import (DataFileError, LabelColumnError, class_codes, digits,
                        numeric_targets, one_line, read_features, read_labelled)
from .scaling import scale_features

DEFAULT_OUT = "fastbp-model.npz"
DEFAULT_TEST_SIZE = 0.2
TARGETS = ["cpu", "parallel", "cuda"]


class UsageError(Exception):
    """The command line asks for something that is not allowed (exit status 2)."""


class CLIError(Exception):
    """A file, the data or the environment cannot serve the command (exit status 1)."""


# -------------------------------------------------------------------- scaling

def _scaling(X, y, mode, loss):
    """Standardisation of the features (and of mse targets) fitted on the training rows:
    {"scale": {"mean", "std"}, "target_scale": ...} as saved in the model's metadata."""
    if mode == "standard" and sparse.issparse(X):
        # sparse features are scaled, not centred (centring would fill in every zero)
        mean = np.zeros(X.shape[1])
        std = np.sqrt(np.asarray(X.multiply(X).mean(axis=0)).ravel()
                      - np.asarray(X.mean(axis=0)).ravel() ** 2)
        std[std == 0] = 1.0
    elif mode == "standard":
        mean, std = X.mean(axis=0), X.std(axis=0)
        std[std == 0] = 1.0
    else:
        mean, std = np.zeros(X.shape[1]), np.ones(X.shape[1])
    meta = {"scale": {"mean": mean.tolist(), "std": std.tolist()}}
    if loss == "mse" and mode == "standard":
        y_mean, y_std = y.mean(axis=0), y.std(axis=0)
        y_std = np.where(y_std == 0, 1.0, y_std)
        meta["target_scale"] = {"mean": np.atleast_1d(y_mean).tolist(),
                                "std": np.atleast_1d(y_std).tolist()}
    return meta


def _scale_features(X, meta, n_features):
    scale = meta.get("scale") or {"mean": [0.0] * n_features, "std": [1.0] * n_features}
    return scale_features(X, np.array(scale["mean"]), np.array(scale["std"]))


def _scale_targets(y, meta):
    ts = meta.get("target_scale")
    if ts is None:
        return y
    return (y - np.array(ts["mean"])) / np.array(ts["std"])


def _unscale_targets(out, meta):
    ts = meta.get("target_scale")
    return out if ts is None else out * np.array(ts["std"]) + np.array(ts["mean"])


# -------------------------------------------------------------------- outputs

def _check_writable(path, option):
    """Fail now, before any work, where `path` cannot be written atomically."""
    try:
        check_writable(path, option)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _write_text(path, text):
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            f.write(text)
    atomic_write(path, write)


REPORT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg", "tif", "tiff", "webp", "eps", "ps")


def _check_report(path):
    """--report needs a figure format, matplotlib, and a place to write."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in REPORT_FORMATS:
        raise UsageError(f"--report {path}: unknown figure format {ext or '(no extension)'!r}; "
                         f"use one of {', '.join(REPORT_FORMATS)} (e.g. report.png)")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError(f'--report {path}: drawing the report needs matplotlib: '
                       'pip install "fastbp[plot]"') from None
    _check_writable(path, "--report")


def _save_model(trainer, path):
    """Save to `path`; where that fails after all, to a fresh file in the temporary
    directory, so the trained model is never lost. Returns the path written."""
    try:
        trainer.save(path)
        return path
    except OSError as e:
        fd, rescue = tempfile.mkstemp(prefix="fastbp-model-", suffix=".npz")
        os.close(fd)
        trainer.save(rescue)
        raise CLIError(f"--out {path}: could not be written ({e.strerror or one_line(e)}); "
                       f"the trained model was saved to {rescue} instead") from None


# -------------------------------------------------------------------- train

def _split(X, y, test_size, seed, stratify):
    if test_size == 0:
        return X, y, None
    from sklearn.model_selection import train_test_split
    n_test = int(np.ceil(test_size * X.shape[0]))
    if n_test < 1 or X.shape[0] - n_test < 1:
        raise CLIError(f"--test-size {test_size}: {X.shape[0]} rows are too few to hold "
                       "out a test set (use --test-size 0)")
    try:
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, random_state=seed,
                                                  stratify=y if stratify else None)
    except ValueError:  # e.g. a class with one sample: fall back to a plain split
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, random_state=seed)
    return X_tr, y_tr, (X_te, y_te)


def _check_options(args):
    """The hyperparameters, checked by the Trainer's own table before any data is read."""
    try:
        _config.validate([1, *args.layers, 2], activation=args.activation, loss=args.loss,
                         optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size,
                         epochs=args.epochs, target=args.target, dtype=args.dtype,
                         precision=args.precision, seed=args.seed, clip_norm=args.clip_norm)
    except (TypeError, ValueError) as e:
        raise UsageError(one_line(e)) from None


def _labels_for_loss(y, test, loss, where):
    """-> y, test, n_out, classes (or None): labels as the loss takes them."""
    if loss == "cross_entropy":
        classes, y = class_codes(y, where)
        if test is not None:
            test = (test[0], class_codes(test[1], f"{where} (y_test)", classes)[1])
        return y, test, len(classes), classes
    y = numeric_targets(y, where, loss)
    if test is not None:
        test = (test[0], numeric_targets(test[1], f"{where} (y_test)", loss))
    return y, test, 1 if y.ndim == 1 else y.shape[1], None


def _make_trainer(args, layers):
    from .trainer import Trainer
    try:
        return Trainer(layers, activation=args.activation, loss=args.loss,
                       optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size,
                       epochs=args.epochs, target=args.target, dtype=args.dtype,
                       precision=args.precision, seed=args.seed, clip_norm=args.clip_norm)
    except (TypeError, ValueError) as e:
        raise UsageError(one_line(e)) from None
    except RuntimeError as e:                          # CudaUnavailableError: no GPU here
        raise CLIError(f"--target {args.target}: {one_line(e)}") from None
    except MemoryError:
        raise CLIError(f"--layers: a {'-'.join(map(str, layers))} network does not fit in "
                       "memory") from None


def _diverged(trainer, error, out):
    """The CLIError of a fit that diverged, after saving the model of its last good epoch
    (the fit restored it) when there was one. Without the roll-back
    (--no-restore-on-divergence) the model as the diverging epoch left it is saved when its
    parameters are finite."""
    hint = "try a smaller --lr or --clip-norm 1"
    if not error.restored:
        params = trainer.params
        if not (np.isfinite(params.min()) and np.isfinite(params.max())):
            return CLIError(f"training diverged ({one_line(error)}); with "
                            "--no-restore-on-divergence its parameters were left non-finite, "
                            f"so no model was saved; {hint}")
        saved = _save_model(trainer, out)
        return CLIError(f"training diverged ({one_line(error)}); saved the model as the "
                        f"diverging epoch left it (--no-restore-on-divergence) to {saved}; "
                        f"{hint}")
    if not trainer.history.get("loss"):
        return CLIError(f"training diverged in its first epoch ({one_line(error)}); {hint}")
    saved = _save_model(trainer, out)
    return CLIError(f"training diverged ({one_line(error)}); saved the model of the last good "
                    f"epoch ({len(trainer.history['loss'])}) to {saved}; {hint}")


def cmd_train(args):
    _check_options(args)                               # usage errors first (status 2),
    if args.stream:           # what a streamed run cannot do is refused, not ignored
        for given, option in ((args.report, "--report"),
                              (args.test_size not in (None, 0), "--test-size (evaluate "
                               "on a separate file)"),
                              (args.lr_schedule != "constant", "--lr-schedule")):
            if given:
                raise UsageError(f"{option} is not available with --stream")
    if args.report:                                    # then the environment (status 1)
        _check_report(args.report)
    _check_writable(args.out, "--out")
    if args.stream:
        from .cli_stream import train_streamed
        return train_streamed(args)

    if args.data is None:
        (X, y), test = digits(), None
        source, meta = "digits (scikit-learn's copy)", {"feature_names": None}
        where = "digits"
    else:
        data = read_labelled(args.data, args.label)
        X, y, test, source = data.X, data.y, data.test, args.data
        meta = {"feature_names": data.feature_names, "label": data.label,
                "label_position": data.label_position}
        where = (f"{args.data}: the label column" +
                 (f" {data.label!r}" if data.label is not None else
                  f" (column {data.label_position + 1})" if data.label_position is not None
                  else " y"))
    y, test, n_out, classes = _labels_for_loss(y, test, args.loss, where)
    if classes is not None:
        meta["classes"] = classes
    if test is None:
        test_size = DEFAULT_TEST_SIZE if args.test_size is None else args.test_size
        X, y, test = _split(X, y, test_size, args.seed, args.loss == "cross_entropy")
    meta.update(_scaling(X, y, args.scale, args.loss))
    if args.data is None and args.scale == "standard":  # digits' pixels are 0..16
        meta["scale"] = {"mean": [0.0] * X.shape[1], "std": [16.0] * X.shape[1]}
    y = _scale_targets(y, meta)
    if test is not None:
        test = (test[0], _scale_targets(test[1], meta))

    layers = [X.shape[1], *args.layers, n_out]
    trainer = _make_trainer(args, layers)
    trainer.metadata = meta
    Xs = _scale_features(X, meta, X.shape[1])
    val = None if test is None else (_scale_features(test[0], meta, X.shape[1]), test[1])
    print(f"fastbp: training {'-'.join(map(str, layers))} ({args.activation}, {args.loss}, "
          f"{args.optimizer} lr={args.lr}) on {source}: {Xs.shape[0]} training samples"
          f"{'' if val is None else f', {len(val[1])} test samples'}; "
          f"target={args.target}, {args.dtype}"
          f"{', bf16 products' if args.precision == 'bf16' else ''}", flush=True)
    t0 = time.perf_counter()
    from .health import DivergenceError
    try:
        history = trainer.fit(Xs, y, validation_data=val, progress=args.progress,
                              lr_schedule=_schedule(args.lr_schedule, args.epochs),
                              restore_on_divergence=args.restore_on_divergence)
    except DivergenceError as e:
        raise _diverged(trainer, e, args.out) from None
    except (TypeError, ValueError) as e:
        raise CLIError(f"{source}: {one_line(e)}") from None
    wall = time.perf_counter() - t0
    saved = _save_model(trainer, args.out)             # first, so nothing below can lose it
    times = history["time"]
    if val is not None:
        result = trainer.evaluate(*val, scaling=False)     # val is standardised already
        line = f"test loss: {result['loss']:.4f}"
        if "accuracy" in result:
            line = f"test accuracy: {result['accuracy']:.4f}   " + line
        if "target_scale" in meta:
            line += " (on standardised targets)"
        print(line)
    steady = times[1:] if len(times) > 1 else times
    print(f"training throughput: {Xs.shape[0] * len(steady) / max(sum(steady), 1e-9):,.0f} "
          f"samples/s (epochs after the first; the first, {times[0]:.2f} s, includes loading "
          f"or compiling the kernel). fit took {wall:.2f} s in all for {len(times)} epochs, "
          f"with the test evaluations and any one-time compilation")
    print(f"saved model to {saved}")
    if args.report:
        from .plot import training_report
        ext = os.path.splitext(args.report)[1]
        atomic_write(args.report, lambda tmp: training_report(
            history, tmp, title=f"fastbp train: {source}"), suffix=ext)
        print(f"wrote training report to {args.report}")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"fastbp: warning: {one_line(message)}", file=sys.stderr)


def _schedule(name, epochs):
    if name == "cosine":
        return ("cosine", {"t_max": max(epochs, 2), "warmup": min(5, max(epochs, 2) - 1)})
    if name == "plateau":
        return ("plateau", {"factor": 0.5, "patience": 3})
    return None


# -------------------------------------------------------------------- predict, evaluate

def _load_model(args):
    from .trainer import Trainer
    try:
        trainer = Trainer.load(args.model, target=args.target)
    except (ValueError, OSError) as e:
        raise CLIError(one_line(e)) from None
    except RuntimeError as e:                          # CudaUnavailableError: no GPU here
        raise CLIError(f"--target {args.target}: {one_line(e)}") from None
    return trainer, trainer.metadata or {}


def _class_names(trainer, meta):
    """Header names of predict_proba's columns."""
    n_out = trainer.layers[-1]
    if trainer.config["loss"] == "cross_entropy":
        return [str(c) for c in meta.get("classes", range(n_out))]
    if n_out == 1 and meta.get("label") is not None:
        return [str(meta["label"])]
    return [f"output_{k}" for k in range(n_out)]


def cmd_predict(args):
    trainer, meta = _load_model(args)
    if args.proba and trainer.config["loss"] in ("mse", "poisson"):
        raise UsageError(f"--proba: {args.model} is a regression model (loss "
                         f"{trainer.config['loss']}); it has no class probabilities")
    if args.out not in (None, "-"):
        _check_writable(args.out, "--out")
    n_features = trainer.layers[0]
    X = read_features(args.data, n_features, meta.get("feature_names"),
                      meta.get("label_position"))
    X = _scale_features(X, meta, n_features)
    if args.proba:
        out, header = trainer.predict_proba(X, scaling=False), _class_names(trainer, meta)
    else:
        out, header = trainer.predict(X, scaling=False), None
        if "classes" in meta:
            out = np.asarray(meta["classes"], dtype=object)[out]
        out = _unscale_targets(out, meta)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    for row in out:
        writer.writerow(np.atleast_1d(row).tolist())
    if args.out in (None, "-"):
        sys.stdout.write(buf.getvalue())
    else:
        _write_text(args.out, buf.getvalue())
        print(f"wrote {len(out)} predictions to {args.out}", file=sys.stderr)
    return 0


def cmd_evaluate(args):
    trainer, meta = _load_model(args)
    n_features = trainer.layers[0]
    names, position = meta.get("feature_names"), meta.get("label_position")
    if args.label is not None:
        feature = "column {!r} is one of the model's feature columns, not a label"
        if names and args.label in names:       # before reading: the label may be text
            raise UsageError(f"--label {args.label!r}: " + feature.format(args.label))
        try:
            data = read_labelled(args.data, args.label, names, n_features)
        except DataFileError as e:
            trained = meta.get("label")
            if trained is None or str(trained) == str(args.label):
                raise
            raise CLIError(f"{one_line(e)} (the model's label column is {trained!r}: was "
                           f"--label {args.label!r} meant to name it?)") from None
        if names and data.label in names:
            raise UsageError(f"--label {args.label!r}: " + feature.format(data.label))
    elif meta.get("label") is None and position is None:   # an .npz, or a model without notes
        data = read_labelled(args.data, None, names, n_features)
    else:
        label = meta["label"] if meta.get("label") is not None else position
        try:                                           # the training label: by name, else
            data = read_labelled(args.data, label, names, n_features)
        except LabelColumnError:                       # by position
            try:
                data = read_labelled(args.data, position, names, n_features)
            except LabelColumnError:
                raise CLIError(f"{args.data} has no column {label!r} (the model's label "
                               "column); name it with --label") from None
    if data.X.shape[1] != n_features:
        raise CLIError(f"{args.data} has {data.X.shape[1]} feature columns (besides the "
                       f"label); the model takes {n_features}")
    X = _scale_features(data.X, meta, n_features)
    where = f"{args.data}: the labels"
    loss = trainer.config["loss"]
    n = X.shape[0]
    if loss == "cross_entropy":
        classes = meta.get("classes", list(range(trainer.layers[-1])))
        _, codes = class_codes(data.y, where, classes)
        result = trainer.evaluate(X, codes, scaling=False)
        print(f"accuracy: {result['accuracy']:.4f}   loss: {result['loss']:.4f}   "
              f"({n} samples of {args.data})")
        return 0
    y = numeric_targets(data.y, where, loss)
    if y.ndim == 1 and trainer.layers[-1] > 1 or y.ndim == 2 and y.shape[1] != trainer.layers[-1]:
        raise CLIError(f"{args.data}: the model has {trainer.layers[-1]} outputs; the data "
                       f"{1 if y.ndim == 1 else y.shape[1]} target column(s)")
    if loss == "binary_cross_entropy":
        result = trainer.evaluate(X, y, scaling=False)
        print(f"accuracy: {result['accuracy']:.4f}   loss: {result['loss']:.4f}   "
              f"({n} samples of {args.data})")
        return 0
    pred = _unscale_targets(trainer.predict(X, scaling=False), meta).reshape(y.shape)
    rmse = float(np.sqrt(np.mean((pred - y) ** 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sklearn.metrics import r2_score
        r2 = float(r2_score(y, pred)) if n >= 2 else float("nan")
    print(f"R2: {r2:.4f}   RMSE: {rmse:.6g} (in the target's units)   "
          f"({n} samples of {args.data})")
    return 0


def cmd_export(args):
    """Write a saved model as an ONNX graph (fastbp.export); exit 2 for an OUT that is not
    an .onnx name, 1 where it cannot be written or the model cannot be read or exported (as
    train's --out)."""
    from .export import output_name, to_onnx
    from .trainer import Trainer

    if not os.fspath(args.out).lower().endswith(".onnx"):
        raise UsageError(f"OUT={args.out!r} must end in .onnx")
    _check_writable(args.out, "OUT")
    try:
        trainer = Trainer.load(args.model, target="cpu")
        to_onnx(trainer, args.out)
    except (ValueError, OSError, ImportError) as e:
        raise CLIError(str(e)) from None
    print(f"wrote {args.out}: input 'X' (n, {trainer.layers[0]}), output "
          f"'{output_name(trainer.config['loss'])}' (n, {trainer.layers[-1]})", file=sys.stderr)
    return 0


def cmd_warmup(args):
    from .kernels.cuda_backend import CudaUnavailableError
    from .kernels.prebuilt import describe
    from .trainer import warmup
    print(f"fastbp: {describe()}", flush=True)
    try:
        warmup(dtypes=args.dtypes, targets=args.targets, verbose=True, sparse=args.sparse)
    except CudaUnavailableError as e:
        raise CLIError(f"--targets cuda: {one_line(e)}") from None
    return 0


# -------------------------------------------------------------------- parser

def _layers(text):
    parts = text.replace(",", " ").split()
    if not parts or text.strip().endswith(",") or ",," in text.replace(" ", ""):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more hidden sizes, like 64,64")
    try:
        sizes = [int(s) for s in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give hidden sizes like 64,64") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: every hidden size must be >= 1")
    return sizes


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be in [0, 1)")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (and exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} "
                     f"(see `{self.prog} --help`)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default once, from the parser: options whose default is None or False
    (nothing to show, or a flag) say what happens in their help text instead."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        if isinstance(action.default, list):
            return f"{action.help} (default: {' '.join(map(str, action.default))})"
        return super()._get_help_string(action)


def _add_train(sub):
    t = sub.add_parser("train", help="train a model (no DATA: the digits dataset)",
                       formatter_class=_Help,
                       description="Train a model on DATA and save it (with the scaling and "
                                   "class names) to --out.")
    t.add_argument("data", nargs="?", help="a table (.csv, .tsv, .parquet, .feather, .npy) "
                   "or an .npz with X, y (optionally X_test, y_test); none: the digits dataset")
    t.add_argument("--label", help="the label column of a table: its name, or its position "
                   "(0 the first, -1 the last); none given: the last column")
    t.add_argument("--layers", type=_layers, default="64", help="hidden sizes, e.g. 128,64")
    t.add_argument("--activation", default="relu", choices=list(_config.ACTIVATIONS),
                   help="hidden activation")
    t.add_argument("--loss", default="cross_entropy", choices=list(_config.LOSSES),
                   help="loss (cross_entropy: class labels; mse: regression)")
    t.add_argument("--optimizer", default="adam", choices=list(_config.OPTIMIZERS),
                   help="optimizer")
    t.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    t.add_argument("--batch-size", type=_positive_int, default=32, help="minibatch rows")
    t.add_argument("--epochs", type=_positive_int, default=40, help="passes over the data")
    t.add_argument("--target", default="cpu", choices=TARGETS,
                   help="compute target: one core, all cores, or an NVIDIA GPU "
                        "(needs the cuda extra)")
    t.add_argument("--dtype", default="float32", choices=list(_config.DTYPES),
                   help="floating-point type of the model")
    t.add_argument("--precision", default="full", choices=list(_config.PRECISIONS),
                   help="bf16: training's large matrix products from bfloat16 operands "
                        "with float32 sums (float32 on the CPU; fast with AVX512-BF16)")
    t.add_argument("--seed", type=int, default=0, help="random seed")
    t.add_argument("--scale", default="standard", choices=["standard", "none"],
                   help="standardise features (and mse targets); mean/std are saved with the "
                   "model and applied by `fastbp predict`")
    t.add_argument("--test-size", type=_fraction,
                   help=f"fraction held out for the test accuracy (default "
                   f"{DEFAULT_TEST_SIZE}; 0: none; an .npz's X_test, y_test take its place)")
    t.add_argument("--out", default=DEFAULT_OUT, help="model file to write")
    t.add_argument("--report", help="also draw a training report figure (e.g. report.png; "
                   "needs matplotlib)")
    t.add_argument("--lr-schedule", choices=["constant", "cosine", "plateau"],
                   default="constant", help="per-epoch learning-rate schedule")
    t.add_argument("--clip-norm", type=float, help="clip the global gradient norm to this "
                   "value (none given: no clipping)")
    t.add_argument("--stream", action="store_true",
                   help="train from a Parquet file or directory without loading it: record "
                   "batches are read from disk every epoch (memory: about one batch); no "
                   "held-out test split, no --report, no --lr-schedule")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction,
                   help="progress bar (none given: when stderr is a terminal)")
    t.add_argument("--restore-on-divergence", action=argparse.BooleanOptionalAction,
                   default=True, help="keep a copy of the parameters and optimizer state to "
                   "put back the last good epoch when training diverges; the --no- form keeps "
                   "none, for a model whose copy would not fit in memory")
    t.set_defaults(func=cmd_train)


def _add_model_input(q, data_help):
    q.add_argument("model", help="a model file written by `fastbp train` or Trainer.save")
    q.add_argument("data", help=data_help)
    q.add_argument("--target", choices=TARGETS,
                   help="compute target (none given: the one the model was saved from)")


def _add_predict(sub):
    q = sub.add_parser("predict", help="write predictions of a saved model",
                       formatter_class=_Help)
    _add_model_input(q, "a table with the feature columns (by name where the model has "
                     "names; a label column is ignored) or an .npz with X")
    q.add_argument("--out", help="output .csv (none given: standard output)")
    q.add_argument("--proba", action="store_true", help="write class probabilities, under "
                   "a header row naming the classes")
    q.set_defaults(func=cmd_predict)


def _add_evaluate(sub):
    e = sub.add_parser("evaluate", help="score a saved model on labelled data",
                       formatter_class=_Help,
                       description="Print the accuracy (classification losses), or R2 and "
                                   "the RMSE in the target's units (regression), of MODEL "
                                   "on DATA.")
    _add_model_input(e, "a table with the feature and label columns, or an .npz with X, y")
    e.add_argument("--label", help="the label column: name or position (none given: the "
                   "column the model was trained on, else the last)")
    e.set_defaults(func=cmd_evaluate)


def _add_export(sub):
    e = sub.add_parser("export", help="write a saved model as an ONNX graph (the onnx extra)",
                       formatter_class=_Help)
    e.add_argument("model", metavar="MODEL",
                   help="a model file written by `fastbp train` or Trainer.save")
    e.add_argument("out", metavar="OUT", help="the .onnx file to write (it takes raw "
                   "features: the model's stored standardisation is part of the graph)")
    e.set_defaults(func=cmd_export)


def _add_warmup(sub):
    w = sub.add_parser("warmup", help="compile the kernels ahead of time (cached on disk)",
                       formatter_class=_Help)
    w.add_argument("--dtypes", nargs="+", default=list(_config.DTYPES),
                   choices=list(_config.DTYPES), help="floating-point types")
    w.add_argument("--targets", nargs="+", default=["cpu", "parallel"],
                   choices=["cpu", "parallel", "cuda"],
                   help="targets ('cuda': the GPU kernels, which need a GPU)")
    w.add_argument("--sparse", action="store_true",
                   help="also the kernels of sparse (CSR) data (both sparse_update modes)")
    w.set_defaults(func=cmd_warmup)


def _version():
    try:
        from importlib.metadata import version
        return version("fastbp")
    except Exception:  # noqa: BLE001 - not installed (a source checkout on PYTHONPATH)
        from . import __version__
        return __version__


def build_parser():
    p = _Parser(prog="fastbp", description="Train and use multi-layer perceptrons with "
                "fastbp's compiled backpropagation.")
    p.add_argument("--version", action="version", version=f"fastbp {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_predict, _add_evaluate, _add_export, _add_warmup):
        add(sub)
    return p


def main(argv=None):
    """Run one command; returns the exit status (0 ok, 1 a file, data or environment
    problem, 2 a usage error), printing one line on stderr for any error."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:                        # --help, --version, usage errors
            return e.code if isinstance(e.code, int) else 2
        try:
            return args.func(args)
        except UsageError as e:
            print(f"fastbp {args.command}: error: {e}", file=sys.stderr)
            return 2
        except (CLIError, DataFileError) as e:
            print(f"fastbp {args.command}: error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"fastbp {args.command}: interrupted", file=sys.stderr)
            return 130
        except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback on request
            if os.environ.get("FASTBP_TRACEBACK"):
                raise
            print(f"fastbp {args.command}: internal error: {type(e).__name__}: {one_line(e)} "
                  "(a bug in fastbp: please report it; FASTBP_TRACEBACK=1 shows where)",
                  file=sys.stderr)
            return 1


if __name__ == "__main__":
    # run the package's module, not this __main__ copy: the commands in other modules
    # (cli_stream) raise fastbp.cli's UsageError and CLIError, which main must recognise
    from fastbp.cli import main as package_main
    sys.exit(package_main())
