"""The `fastbp` command line: `fastbp train [DATA]`, `fastbp predict MODEL DATA` and
`fastbp warmup`.

With no DATA, `fastbp train` trains on scikit-learn's copy of the digits dataset (no
download). DATA is an .npz with arrays X and y (optionally X_test, y_test) or a .csv whose
last column is the label unless --label names one.
"""
import argparse
import sys
import time
import warnings

import numpy as np

from . import config as _config
from .datafiles import DataFileError, digits, floats, load_features, load_training_data
from .health import DivergenceError

DEFAULT_OUT = "fastbp-model.npz"


class CLIError(Exception):
    """A problem with the command line or the data, reported without a traceback."""


def _scaling(X, y, mode, loss):
    """Standardisation of the features (and of mse targets) fitted on the training rows:
    {"scale": {"mean", "std"}, "target_scale": ...} as saved in the model's metadata."""
    if mode == "standard":
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
    return (X - np.array(scale["mean"])) / np.array(scale["std"])


def _scale_targets(y, meta):
    ts = meta.get("target_scale")
    return y if ts is None else (y - np.array(ts["mean"])) / np.array(ts["std"])


def _unscale_targets(out, meta):
    ts = meta.get("target_scale")
    return out if ts is None else out * np.array(ts["std"]) + np.array(ts["mean"])


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
        X, y, test = digits()
        source, names = "digits (scikit-learn's copy)", None
    else:
        X, y, test, names = load_training_data(args.data, args.label)
        source = args.data
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
        y = floats(np.asarray(y), "labels for mse/binary_cross_entropy")
        n_out = 1 if y.ndim == 1 else y.shape[1]
    if test is None:
        X, y, test = _split(X, y, args.test_size, args.seed, args.loss == "cross_entropy")
    meta.update(_scaling(X, y, args.scale, args.loss))
    if args.data is None:                              # digits' pixels are 0..16
        meta["scale"] = {"mean": [0.0] * X.shape[1], "std": [16.0] * X.shape[1]}
    y = _scale_targets(y, meta)
    if test is not None and "target_scale" in meta:
        test = (test[0], _scale_targets(floats(np.asarray(test[1]), "test targets"), meta))

    layers = [X.shape[1], *args.layers, n_out]
    try:
        trainer = Trainer(layers, activation=args.activation, loss=args.loss,
                          optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size,
                          epochs=args.epochs, target=args.target, dtype=args.dtype,
                          seed=args.seed, clip_norm=args.clip_norm)
    except (TypeError, ValueError, RuntimeError) as e:     # RuntimeError: no GPU
        raise CLIError(str(e)) from None
    trainer.metadata = meta
    Xs = _scale_features(X, meta, X.shape[1])
    val = None if test is None else (_scale_features(np.asarray(test[0]), meta, X.shape[1]),
                                     test[1])
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
    try:
        X = _scale_features(np.asarray(X, dtype=float), meta, n_features)
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
    out = _unscale_targets(out, meta)
    lines = [",".join(str(v) for v in np.atleast_1d(row)) for row in out]
    text = "\n".join(lines) + "\n"
    if args.out in (None, "-"):
        sys.stdout.write(text)
    else:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {len(lines)} predictions to {args.out}", file=sys.stderr)
    return 0


def cmd_export(args):
    """Write a saved model as an ONNX graph (fastbp.export); exit 2 for a bad OUT path, 1
    when the model cannot be read or exported."""
    from .export import check_onnx_path, output_name, to_onnx
    from .trainer import Trainer

    try:
        check_onnx_path(args.out, who="fastbp export", name="OUT")
    except (TypeError, ValueError) as e:
        raise CLIError(str(e).removeprefix("fastbp export: ")) from None
    try:
        trainer = Trainer.load(args.model, target="cpu")
        to_onnx(trainer, args.out)
    except (ValueError, OSError, ImportError) as e:
        print(f"fastbp: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: input 'X' (n, {trainer.layers[0]}), output "
          f"'{output_name(trainer.config['loss'])}' (n, {trainer.layers[-1]})", file=sys.stderr)
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

    e = sub.add_parser("export", help="write a saved model as an ONNX graph (the onnx extra)")
    e.add_argument("model", metavar="MODEL",
                   help="a model file written by `fastbp train` or Trainer.save")
    e.add_argument("out", metavar="OUT", help="the .onnx file to write (it takes raw "
                   "features: the model's stored standardisation is part of the graph)")
    e.set_defaults(func=cmd_export)

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
    except (CLIError, DataFileError) as e:
        print(f"fastbp: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
