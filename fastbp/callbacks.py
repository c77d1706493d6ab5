"""Callbacks for `Trainer.fit(callbacks=[...])`.

The protocol is one call: `callback(trainer, epoch, logs) -> stop?`, made after every epoch
with that epoch's history entries in `logs` (loss, accuracy, val_loss, val_accuracy,
grad_norm, layer_grad_norms, lr, time, ...). Returning True stops training after the epoch.
Any plain function with that signature is a callback; the classes below are the common ones.
"""
import csv
import math
import os

from . import config as _config
from .io import check_writable


def _improved(value, best, mode, min_delta):
    if mode == "min":
        return value < best - min_delta
    return value > best + min_delta


def _monitor(monitor, who):
    if not isinstance(monitor, str):
        raise TypeError(f"{who}: monitor={monitor!r} must be the name of a history entry "
                        "(e.g. 'val_loss')")
    return monitor


def _mode(monitor, mode):
    if mode in ("min", "max"):
        return mode
    if mode != "auto":
        raise ValueError(f"mode={mode!r} is not allowed: mode must be 'auto', 'min' or 'max'")
    return "max" if "accuracy" in monitor else "min"


class EarlyStopping:
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs;
    with restore_best, put back the parameters of the best epoch when stopping."""

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, mode="auto",
                 restore_best=True):
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience={patience!r} is not allowed: an integer >= 0")
        min_delta = _config._real("min_delta", min_delta, 0.0, math.inf, "a number >= 0")
        self.monitor = _monitor(monitor, "EarlyStopping")
        self.patience, self.min_delta = patience, float(min_delta)
        self.mode = _mode(monitor, mode)
        self.restore_best = _config._bool("restore_best", restore_best)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch, self.best_params, self.wait = None, None, 0
        self.stopped_epoch = None
        self.needs_monitor = True       # fit refuses to start when it would not record it

    def __call__(self, trainer, epoch, logs):
        value = logs[self.monitor]
        if _improved(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_params = trainer.params.copy()
            return False
        self.wait += 1
        if self.wait > self.patience:
            self.stopped_epoch = epoch
            if self.restore_best and self.best_params is not None:
                trainer.params = self.best_params
            return True
        return False


class Checkpoint:
    """Save the model with its optimizer state, step count, shuffling state and history
    (atomically: a checkpoint is never half-written) every `every` epochs, and/or whenever
    `monitor` improves (save_best). `path` may contain {epoch}.
    `Trainer.load(path).fit(X, y, epochs=remaining)` resumes the run."""

    def __init__(self, path, every=1, save_best=False, monitor="val_loss", mode="auto"):
        if every is not None and (not isinstance(every, int) or every < 1):
            raise ValueError(f"every={every!r} is not allowed: None or an integer >= 1")
        try:
            first = os.fspath(path).format(epoch=0)
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"Checkpoint: path={os.fspath(path)!r} may contain {{epoch}} and "
                             "no other {...} field") from None
        check_writable(first, "Checkpoint: path")
        self.path, self.every = os.fspath(path), every
        self.save_best = _config._bool("save_best", save_best)
        self.monitor = _monitor(monitor, "Checkpoint")
        self.mode = _mode(monitor, mode)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.saved = []
        self.needs_monitor = save_best

    def __call__(self, trainer, epoch, logs):
        due = self.every is not None and (epoch + 1) % self.every == 0
        if self.save_best and self.monitor in logs and _improved(
                logs[self.monitor], self.best, self.mode, 0.0):
            self.best = logs[self.monitor]
            due = True
        if due:
            path = self.path.format(epoch=epoch)
            trainer.save(path)
            self.saved.append(path)
        return False


class CSVLogger:
    """Append one row per epoch (the scalar entries of `logs`) to a CSV file."""

    def __init__(self, path, append=False):
        self.path = check_writable(path, "CSVLogger: path")
        self.append = append
        self._fields = None

    def __call__(self, trainer, epoch, logs):
        row = {"epoch": epoch, **{k: v for k, v in logs.items()
                                  if isinstance(v, (int, float))}}
        new_file = self._fields is None and not (self.append and os.path.exists(self.path))
        if self._fields is None:
            self._fields = list(row)
        with open(self.path, "w" if new_file else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._fields, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow(row)
        return False


class History:
    """Collect the logs of every epoch seen by this callback (e.g. across several fits)."""

    def __init__(self):
        self.epochs = []
        self.history = {}

    def __call__(self, trainer, epoch, logs):
        self.epochs.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)
        return False
