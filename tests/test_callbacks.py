"""Callbacks, checkpoints, and resuming a killed run bit for bit."""
import csv
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import make_data
from fastbp import Trainer
from fastbp.callbacks import Checkpoint, CSVLogger, EarlyStopping, History

SIZES = [6, 16, 3]


def _data():
    X, _ = make_data("cross_entropy", 6, 3, n=300)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)
    return X[:200], y[:200], X[200:], y[200:]


def test_early_stopping_stops_and_restores_the_best_parameters():
    X, y, Xv, yv = _data()
    t = Trainer(SIZES, seed=0, lr=0.05)
    seen = []
    es = EarlyStopping(monitor="val_loss", patience=2, restore_best=True)
    t.fit(X, y, validation_data=(Xv, yv), epochs=200, progress=False,
          callbacks=[es, lambda tr, e, logs: seen.append(tr.params.copy())])
    val = t.history["val_loss"]
    assert es.stopped_epoch is not None and len(val) == es.stopped_epoch + 1 < 200
    assert es.best_epoch == int(np.argmin(val)) and len(val) - 1 - es.best_epoch == 3
    np.testing.assert_array_equal(t.params, seen[es.best_epoch])
    fresh = Trainer(SIZES, seed=0)
    before = fresh.params.copy()
    with pytest.raises(ValueError, match="validation_data"):     # refused before any work
        fresh.fit(X, y, epochs=1, progress=False, callbacks=[EarlyStopping()])
    assert np.array_equal(fresh.params, before) and fresh.history == {}


def test_checkpoint_every_and_best_and_csv_logger_and_history(tmp_path):
    X, y, Xv, yv = _data()
    every = Checkpoint(tmp_path / "ck-{epoch}.npz", every=2)
    best = Checkpoint(tmp_path / "best.npz", every=None, save_best=True, monitor="val_accuracy")
    log = CSVLogger(tmp_path / "log.csv")
    hist = History()
    t = Trainer(SIZES, seed=0, lr=0.05)
    t.fit(X, y, validation_data=(Xv, yv), epochs=6, progress=False,
          callbacks=[every, best, log, hist])
    assert sorted(os.listdir(tmp_path)) == ["best.npz", "ck-1.npz", "ck-3.npz", "ck-5.npz",
                                            "log.csv"]
    assert Trainer.load(tmp_path / "ck-3.npz").epochs_done == 4
    best_epoch = int(np.argmax(t.history["val_accuracy"]))
    assert Trainer.load(tmp_path / "best.npz").epochs_done == best_epoch + 1
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(6))
    assert float(rows[-1]["loss"]) == pytest.approx(t.history["loss"][-1])
    assert hist.epochs == list(range(6)) and hist.history["loss"] == t.history["loss"]


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    X, y, _, _ = _data()
    full = Trainer(SIZES, seed=3, dropout=0.2, batch_size=16)
    full.fit(X, y, epochs=6, progress=False, lr_schedule=("step", 2, {"gamma": 0.5}))
    part = Trainer(SIZES, seed=3, dropout=0.2, batch_size=16)
    part.fit(X, y, epochs=4, progress=False, callbacks=[Checkpoint(tmp_path / "c.npz")],
             lr_schedule=("step", 2, {"gamma": 0.5}))
    resumed = Trainer.load(tmp_path / "c.npz")
    resumed.fit(X, y, epochs=2, progress=False, lr_schedule=("step", 2, {"gamma": 0.5}))
    assert np.array_equal(resumed.params, full.params)
    assert resumed.history["loss"] == full.history["loss"]


KILLED_RUN = textwrap.dedent("""
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_callbacks import _data
    from fastbp import Trainer
    from fastbp.callbacks import Checkpoint
    X, y, _, _ = _data()
    t = Trainer({sizes!r}, seed=3, dropout=0.2, batch_size=16)
    slow = lambda tr, epoch, logs: time.sleep(0.05)
    t.fit(X, y, epochs=200, progress=False, callbacks=[Checkpoint({path!r}), slow])
""")


def test_sigkill_mid_run_leaves_a_checkpoint_that_resumes_exactly(tmp_path):
    path = str(tmp_path / "ckpt.npz")
    code = KILLED_RUN.format(tests=os.path.dirname(__file__), sizes=SIZES, path=path)
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if os.path.exists(path) and Trainer.load(path).epochs_done >= 5:
                break
            assert proc.poll() is None, "the training process ended before it was killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    resumed = Trainer.load(path)                 # never half-written: it loads
    done = resumed.epochs_done
    assert 5 <= done < 200
    X, y, _, _ = _data()
    resumed.fit(X, y, epochs=3, progress=False)
    straight = Trainer(SIZES, seed=3, dropout=0.2, batch_size=16)
    straight.fit(X, y, epochs=done + 3, progress=False)
    assert np.array_equal(resumed.params, straight.params)
    assert resumed.history["loss"] == straight.history["loss"]


def test_callback_mistakes_are_refused_before_training(tmp_path):
    """before: each trained an epoch (the parameters changed) and then failed: a folder that
    does not exist or a path that is one, a {field} other than {epoch}, the class instead of
    an instance ("float() argument must be ... not 'dict'") and a function of two
    arguments."""
    X, y, _, _ = _data()
    (tmp_path / "d.npz").mkdir()
    for make, message in [
            (lambda: Checkpoint(tmp_path / "no" / "c.npz"), "directory .* does not exist"),
            (lambda: Checkpoint(tmp_path / "d.npz"), "is a directory"),
            (lambda: Checkpoint(tmp_path / "c_{step}.npz"), "may contain {epoch} and no other"),
            (lambda: Checkpoint(tmp_path / "c_{}.npz"), "may contain {epoch} and no other"),
            (lambda: CSVLogger(tmp_path / "no" / "log.csv"), "CSVLogger: .* does not exist")]:
        with pytest.raises(ValueError, match=message):
            make()
    t = Trainer(SIZES, seed=0)
    before = t.params.copy()
    for bad, message in [(EarlyStopping, "got the class EarlyStopping; pass an instance"),
                         (lambda trainer, epoch: False, "cannot be called as callback")]:
        with pytest.raises(TypeError, match=message):
            t.fit(X, y, epochs=2, progress=False, callbacks=[bad])
    assert np.array_equal(t.params, before) and t.epochs_done == 0
    t.fit(X, y, epochs=1, progress=False,                 # keyword and default arguments
          callbacks=[lambda trainer, epoch, logs=None, *rest: False, History()])


@pytest.mark.parametrize("make,exc,text", [
    (lambda: EarlyStopping(min_delta=-1), ValueError, "min_delta=-1"),
    (lambda: EarlyStopping(restore_best="no"), TypeError, "restore_best='no'"),
    (lambda: EarlyStopping(monitor=None), TypeError, "monitor=None must be the name"),
    (lambda: Checkpoint("c.npz", save_best="yes"), TypeError, "save_best='yes'"),
    (lambda: Checkpoint("c.npz", monitor=3), TypeError, "monitor=3")])
def test_callback_arguments_of_the_wrong_kind_are_refused(make, exc, text):
    # before: accepted (a negative min_delta, 'no' as true), or a TypeError about NoneType
    with pytest.raises(exc, match=text):
        make()
