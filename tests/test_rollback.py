"""The divergence roll-back's copy (fastbp/rollback.py): written to an unnamed temporary
file, read back exactly after a divergence, kept in memory where no file can be written
(before the fit or in the middle of it), and closed (so deleted) when the fit ends."""
import errno
import tempfile

import numpy as np
import pytest

from conftest import diverging_adam_run
from fastbp import DivergenceError, rollback


def _files(monkeypatch, fail_after=None):
    """Record the temporary files the roll-back opens; with fail_after=k, every write after
    the k-th raises ENOSPC (a full disk)."""
    opened, writes = [], []
    real = tempfile.TemporaryFile

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            writes.append(len(data))
            if fail_after is not None and len(writes) > fail_after:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def temporary_file(*args, **kw):
        f = real(*args, **kw)
        if kw.get("prefix") != rollback.PREFIX:       # (Numba's cache probes its folder)
            return f
        opened.append(f)
        return FullDisk(f)
    monkeypatch.setattr(rollback.tempfile, "TemporaryFile", temporary_file)
    return opened, writes


def _diverge(t, X, y, callback):
    with pytest.raises(DivergenceError) as err:
        t.fit(X, y, epochs=5, progress=False, callbacks=[callback])
    assert err.value.restored


def _assert_equal_models(t, twin):
    assert t.step == twin.step == 2 * 6 and t.epochs_done == 2
    for key in ("params", "m", "v"):
        np.testing.assert_array_equal(getattr(t.engine, key), getattr(twin.engine, key))
    assert t._rng.bit_generator.state == twin._rng.bit_generator.state


@pytest.mark.parametrize("where", ["file", "memory", "disk full mid-fit"])
def test_the_roll_back_is_exact_from_the_file_and_from_memory(monkeypatch, where):
    """Adam, shuffled: the third epoch diverges after some updates. Wherever the copy was
    kept, the model is put back to the twin that trained the two good epochs only, bit for
    bit, and the temporary file is closed when fit ends."""
    X, y, t, twin, blow_up = diverging_adam_run()      # (the twin's fit before the patches)
    if where == "memory":
        real = tempfile.TemporaryFile

        def no_folder(*args, **kw):
            if kw.get("prefix") != rollback.PREFIX:   # (Numba's cache probes its folder)
                return real(*args, **kw)
            raise FileNotFoundError(errno.ENOENT, "no usable temporary directory found")
        monkeypatch.setattr(rollback.tempfile, "TemporaryFile", no_folder)
        opened = []
    else:        # params, m and v per save: the disk fills during the second epoch's save
        opened, writes = _files(monkeypatch, fail_after=4 if where != "file" else None)
    saves = []
    real_save = rollback.RollbackCopy.save

    def save(self, engine):
        real_save(self, engine)
        saves.append(self.where)
    monkeypatch.setattr(rollback.RollbackCopy, "save", save)
    _diverge(t, X, y, blow_up)
    _assert_equal_models(t, twin)
    expected = {"file": ["file"] * 3, "memory": ["memory"] * 3,
                "disk full mid-fit": ["file", "memory", "memory"]}[where]
    assert saves == expected
    assert all(f.closed for f in opened) and len(opened) == (where != "memory")


def test_the_file_holds_the_copy_and_is_rewritten_in_place(monkeypatch):
    """One file per fit, overwritten at every epoch: its size stays that of params, m and
    v; the process keeps no params-sized copy."""
    X, y, t, twin, blow_up = diverging_adam_run()
    opened, writes = _files(monkeypatch)
    sizes = []
    t.fit(X, y, epochs=3, progress=False,
          callbacks=[lambda tr, e, logs: sizes.append(opened[0].seek(0, 2))])
    eng = t.engine
    assert len(opened) == 1 and opened[0].closed
    assert sizes == [eng.params.nbytes + eng.m.nbytes + eng.v.nbytes] * 3
    assert sum(writes) == 3 * sizes[0]


def test_save_and_restore_round_trip_float32_and_empty_buffers():
    class Engine:
        def __init__(self, seed):
            rng = np.random.default_rng(seed)
            self.params = rng.normal(size=1001).astype(np.float32)
            self.m = np.empty(0, np.float32)            # plain SGD: no optimizer buffers
            self.v = np.empty(0, np.float32)
            self.step = seed

    engine, saved = Engine(1), Engine(1)
    copy = rollback.RollbackCopy()
    assert copy.where is None
    copy.save(engine)
    assert copy.where == "file"
    engine.params[:] = np.nan
    engine.step = 99
    copy.restore(engine)
    np.testing.assert_array_equal(engine.params, saved.params)
    assert engine.step == 1
    copy.close()


def test_a_copy_that_cannot_be_read_back_is_reported_not_restored(monkeypatch):
    """An I/O error while reading the copy back (after a divergence) gives the divergence's
    error with restored=False and says the model may be partly restored, not a bare
    OSError."""
    X, y, t, twin, blow_up = diverging_adam_run()

    def unreadable(self, engine):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(rollback.RollbackCopy, "restore", unreadable)
    with pytest.raises(DivergenceError, match=r"diverged at epoch 2.*could not be read back "
                                              r"from its temporary file \(OSError: .*Input/"
                                              r"output error\).*partly restored") as err:
        t.fit(X, y, epochs=5, progress=False, callbacks=[blow_up])
    assert not err.value.restored


def test_a_streams_chunks_share_one_roll_back_file(monkeypatch):
    """train_epochs (fit_parquet, fit_incremental) fits each chunk with a fit of its own:
    they reuse one temporary file per call, closed at its end; the Trainer still pickles."""
    import pickle

    from conftest import make_data
    from fastbp import Trainer
    from fastbp.streaming import train_epochs

    X, y = make_data("cross_entropy", 6, 3, n=48)
    opened, writes = _files(monkeypatch)
    t = Trainer([6, 8, 3], batch_size=8, seed=0)
    seen = []

    def chunks(epoch):
        for lo in range(0, 48, 16):
            seen.append(len(opened))
            yield X[lo:lo + 16], y[lo:lo + 16]
    train_epochs(t, chunks, 2, progress=False)
    assert len(seen) == 6 and len(opened) == 1 and opened[0].closed
    P = t.engine.params.nbytes + t.engine.m.nbytes + t.engine.v.nbytes
    assert sum(writes) == 6 * P               # one save per chunk's epoch, in place
    assert pickle.loads(pickle.dumps(t)).step == t.step


@pytest.mark.parametrize("where", ["missing", "a file"])
def test_a_rollback_dir_that_is_not_a_folder_is_refused_before_training(
        monkeypatch, tmp_path, where):
    """FASTBP_ROLLBACK_DIR set to a folder that does not exist, or to a file, is a one-line
    error before the first epoch (a typo would otherwise keep the copy in memory without a
    word); the model is unchanged. An existing folder holds the file while fit runs."""
    from conftest import make_data
    from fastbp import Trainer

    X, y = make_data("cross_entropy", 6, 3, n=48)
    t = Trainer([6, 8, 3], batch_size=8, seed=0)
    before = t.params.copy()
    bad = tmp_path / "nowhere"
    if where == "a file":
        bad.write_text("")
    monkeypatch.setenv(rollback.DIR_ENV, str(bad))
    with pytest.raises(ValueError, match=rf"^FASTBP_ROLLBACK_DIR='{bad}' is not a folder"):
        t.fit(X, y, epochs=2, progress=False)
    np.testing.assert_array_equal(t.params, before)
    assert t.step == 0
    t.fit(X, y, epochs=1, progress=False, restore_on_divergence=False)   # no copy: no folder
    folder = tmp_path / "copies"
    folder.mkdir()
    monkeypatch.setenv(rollback.DIR_ENV, str(folder))
    seen = []
    real = rollback.tempfile.TemporaryFile
    monkeypatch.setattr(rollback.tempfile, "TemporaryFile",
                        lambda *a, **kw: seen.append(kw.get("dir")) or real(*a, **kw))
    t.fit(X, y, epochs=1, progress=False)
    assert seen == [str(folder)]
