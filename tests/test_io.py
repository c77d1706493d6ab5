"""Model files: round trip, continuation, and refusal of damaged or foreign files."""
import os
import pickle

import numpy as np
import pytest

from conftest import make_data
from fastbp import Trainer

SIZES = [5, 7, 3]


@pytest.fixture
def trained():
    X, y = make_data("cross_entropy", 5, 3, n=40)
    t = Trainer(SIZES, activation=["tanh"], optimizer="adam", seed=0, batch_size=8)
    t.fit(X, y, epochs=2, progress=False)
    return t, X, y


def test_round_trip_identical_predictions_and_config(trained, tmp_path):
    t, X, y = trained
    path = tmp_path / "model.npz"
    t.save(path, metadata={"classes": ["a", "b", "c"]})
    u = Trainer.load(path)
    assert np.array_equal(u.params, t.params) and u.params.dtype == t.params.dtype
    assert np.array_equal(u.predict_proba(X), t.predict_proba(X))
    assert u.config == t.config and u.metadata == {"classes": ["a", "b", "c"]}
    assert u.history == t.history and u.step == t.step
    assert [f for f in os.listdir(tmp_path)] == ["model.npz"]   # no temporary left behind


def test_loaded_model_continues_like_the_original(trained, tmp_path):
    t, X, y = trained
    t.save(tmp_path / "m.npz")
    u = Trainer.load(tmp_path / "m.npz")
    t.fit(X, y, epochs=2, progress=False)
    u.fit(X, y, epochs=2, progress=False)      # same optimizer state and shuffling stream
    assert np.array_equal(u.params, t.params)


def test_history_of_fits_with_and_without_validation_and_lr_zero(trained, tmp_path):
    """A checkpoint after a fit without, then one with, validation data has lists of
    different lengths (val_loss only for the later epochs), and a schedule may have ended
    at lr 0: both load."""
    t, X, y = trained
    t.fit(X, y, validation_data=(X, y), epochs=1, progress=False)
    t.lr = 0.0
    assert len(t.history["val_loss"]) < len(t.history["loss"])
    t.save(tmp_path / "m.npz")
    u = Trainer.load(tmp_path / "m.npz")
    assert u.history == t.history and u.lr == 0.0


def test_history_of_non_numbers_is_refused(trained, tmp_path):
    t, _, _ = trained
    t.history["loss"][0] = "NaN please"
    t.save(tmp_path / "m.npz")
    with pytest.raises(ValueError, match="field 'history' must be"):
        Trainer.load(tmp_path / "m.npz")


def test_without_optimizer_state(trained, tmp_path):
    t, X, _ = trained
    t.save(tmp_path / "m.npz", include_optimizer=False)
    u = Trainer.load(tmp_path / "m.npz")
    assert u.step == 0 and u.history == {}
    assert np.array_equal(u.predict(X), t.predict(X))


def test_truncated_file_refused(trained, tmp_path):
    t, _, _ = trained
    t.save(tmp_path / "m.npz")
    data = (tmp_path / "m.npz").read_bytes()
    for cut in (10, len(data) // 2, len(data) - 30):
        (tmp_path / "cut.npz").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not a valid fastbp model file"):
            Trainer.load(tmp_path / "cut.npz")


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_pickles_are_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps(Boom()))
    np.savez(tmp_path / "obj.npz", params=np.array([Boom()], dtype=object), format="fastbp-model")
    for name in ("raw.pkl", "obj.npz"):
        with pytest.raises(ValueError, match="not a valid fastbp model file"):
            Trainer.load(tmp_path / name)
    assert not (tmp_path / "pwned.txt").exists()


def test_foreign_and_tampered_files_refused(trained, tmp_path):
    t, _, _ = trained
    (tmp_path / "text.npz").write_text("hello")
    np.save(tmp_path / "single.npy", np.zeros(3))
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    cases = {"text.npz": "archive", "single.npy": "single array", "other.npz": "missing field"}
    t.save(tmp_path / "good.npz")
    good = dict(np.load(tmp_path / "good.npz"))
    tampered = {
        "format": dict(good, format=np.array("keras")),
        "version": dict(good, version=np.array(99)),
        "config": dict(good, config=np.array('{"layers": [5, 7, 3], "lr": -1}')),
        "json": dict(good, config=np.array("{not json")),
        "params": dict(good, params=good["params"][:-1]),
        "nan": dict(good, params=np.full_like(good["params"], np.nan)),
        "dtype": dict(good, params=good["params"].astype(np.float64)),
        "optimizer": dict(good, opt_m=good["opt_m"][:3]),
    }
    for name, arrays in tampered.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        cases[f"{name}.npz"] = ""
    for name, match in cases.items():
        with pytest.raises(ValueError, match="not a valid fastbp model file.*" + match):
            Trainer.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        Trainer.load(tmp_path / "missing.npz")


def _fail_in_savez(monkeypatch):
    """np.savez writes the start of an archive to the temporary file, then the disk fills."""
    def savez(file, *args, **kwds):
        file.write(b"PK\x03\x04" + b"\0" * 4096)
        file.flush()
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "savez", savez)


def _fail_in_fsync(monkeypatch):
    """The whole archive is written to the temporary file; syncing it to disk fails."""
    def fsync(fd):
        assert os.fstat(fd).st_size > 1000             # the bytes are there
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "fsync", fsync)


def _fail_in_replace(monkeypatch):
    """The temporary file is complete; the rename onto the old file fails."""
    def replace(src, dst, **kw):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(os, "replace", replace)


def _interrupt_in_savez(monkeypatch):
    """Ctrl-C part-way through writing the archive."""
    real = np.savez

    def savez(file, *args, **kwds):
        real(file, *args, **kwds)
        file.seek(file.tell() // 2)
        file.truncate()
        raise KeyboardInterrupt
    monkeypatch.setattr(np, "savez", savez)


@pytest.mark.parametrize("failure,exc", [(None, TypeError), (_fail_in_savez, OSError),
                                         (_fail_in_fsync, OSError),
                                         (_fail_in_replace, PermissionError),
                                         (_interrupt_in_savez, KeyboardInterrupt)])
def test_failed_write_leaves_old_file_intact(trained, tmp_path, monkeypatch, failure, exc):
    """Writes are atomic: whether the save fails before writing (bad metadata), part-way
    through the archive, at the sync or at the rename, the old file is untouched and loads
    as the old model, and no temporary file is left in the folder."""
    t, X, y = trained
    path = tmp_path / "m.npz"
    t.save(path)
    before = path.read_bytes()
    old_params = t.params.copy()
    t.fit(X, y, epochs=1, progress=False)             # the model changes: a new file differs
    assert not np.array_equal(t.params, old_params)
    metadata = {"bad": object()} if failure is None else None
    with monkeypatch.context() as patch:
        if failure is not None:
            failure(patch)
        with pytest.raises(exc):
            t.save(path, metadata=metadata)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]
    u = Trainer.load(path)
    np.testing.assert_array_equal(u.params, old_params)
    t.save(path)                                      # and a later save goes through
    np.testing.assert_array_equal(Trainer.load(path).params, t.params)
    assert os.listdir(tmp_path) == ["m.npz"]


def test_save_to_a_bad_path_names_the_path(trained, tmp_path):
    # before: FileNotFoundError / IsADirectoryError naming a temporary '.fastbp-....tmp'
    trained = trained[0]
    missing = tmp_path / "no" / "m.npz"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        trained.save(missing)
    assert info.value.filename == str(missing) and ".fastbp-" not in str(info.value)
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory") as info:
        trained.save(tmp_path / "d.npz")
    assert info.value.filename == str(tmp_path / "d.npz") and ".fastbp-" not in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["d.npz"] and os.listdir(tmp_path / "d.npz") == []
