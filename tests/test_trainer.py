"""Trainer behaviour: seeds, views, continuation, reset, history, callbacks, predictions."""
import numpy as np
import pytest

from conftest import make_data
from fastbp import Trainer
from fastbp.kernels import training_plan

SIZES = [6, 8, 3]


def _data(n=48, loss="cross_entropy", k=3):
    return make_data(loss, SIZES[0], k, n=n)


@pytest.mark.parametrize("target,strategy", [("cpu", None), ("parallel", "chunks")])
def test_same_seed_bit_identical_different_seed_different(target, strategy):
    X, y = _data()
    runs = []
    for seed in (7, 7, 8):
        t = Trainer(SIZES, seed=seed, target=target, batch_size=10)
        if strategy:
            t.engine.train_plan = training_plan(target, SIZES, 10, 2, strategy)
        t.fit(X, y, epochs=3, progress=False)
        runs.append(t.params.copy())
    assert np.array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])


def test_weights_and_biases_are_writable_views_into_params():
    t = Trainer([3, 4, 2], seed=0)
    assert [w.shape for w in t.weights] == [(3, 4), (4, 2)]
    assert [b.shape for b in t.biases] == [(4,), (2,)]
    t.weights[1][:] = 0.5
    t.biases[0][:] = -1.0
    assert np.all(t.params[3 * 4:3 * 4 + 4] == -1.0)
    assert np.all(t.params[16:16 + 8] == 0.5)
    assert t.n_params == 3 * 4 + 4 + 4 * 2 + 2
    assert np.all(t.biases[1] == 0.0)       # biases start at zero


def test_init_schemes_bounds():
    t = Trainer([100, 50, 10], activation="relu", seed=0)
    assert np.abs(t.weights[0]).max() <= np.sqrt(6 / 100)
    assert np.abs(t.weights[0]).max() > 0.9 * np.sqrt(6 / 100)           # He uniform
    assert np.abs(t.weights[1]).max() <= np.sqrt(6 / 60)                   # Glorot (output)
    g = Trainer([100, 50, 10], activation="tanh", seed=0)
    assert np.abs(g.weights[0]).max() <= np.sqrt(6 / 150)
    assert np.abs(g.weights[0]).max() > 0.9 * np.sqrt(6 / 150)


def test_fit_continues_and_hand_set_params_stay():
    X, y = _data()
    a = Trainer(SIZES, seed=1, batch_size=8, shuffle=False)
    a.fit(X, y, epochs=4, progress=False)
    b = Trainer(SIZES, seed=1, batch_size=8, shuffle=False)
    b.fit(X, y, epochs=2, progress=False)
    b.fit(X, y, epochs=2, progress=False)            # continues: optimizer state kept
    assert np.array_equal(a.params, b.params)
    assert len(b.history["loss"]) == 4 and b.step == 4 * 6

    c = Trainer(SIZES, seed=1)
    c.params = np.full(c.n_params, 0.01)
    c.fit(X, y, epochs=0, progress=False)
    assert np.all(c.params == np.float32(0.01))


def test_reset_reinitialises_everything():
    X, y = _data()
    t = Trainer(SIZES, seed=2)
    first = t.params.copy()
    t.fit(X, y, epochs=2, progress=False)
    t.reset()
    assert np.array_equal(t.params, first) and t.step == 0 and t.history == {}
    t.fit(X, y, epochs=2, progress=False)
    u = Trainer(SIZES, seed=2)
    u.fit(X, y, epochs=2, progress=False)
    assert np.array_equal(t.params, u.params)


def test_history_and_validation_and_loss_decreases():
    X, y = make_data("cross_entropy", 6, 3, n=200)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0).astype(int)   # learnable labels
    t = Trainer(SIZES, seed=0, lr=0.01)
    h = t.fit(X[:150], y[:150], validation_data=(X[150:], y[150:]), epochs=15, progress=False)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "grad_norm", "time"):
        assert len(h[key]) == 15, key
    assert len(h["layer_grad_norms"][0]) == 2
    assert h["loss"][-1] < h["loss"][0] * 0.8
    assert h["val_accuracy"][-1] > 0.7
    ev = t.evaluate(X[150:], y[150:])
    assert ev["loss"] == pytest.approx(h["val_loss"][-1], rel=1e-6)
    assert ev["accuracy"] == pytest.approx(np.mean(t.predict(X[150:]) == y[150:]))


def test_callback_receives_logs_and_can_stop():
    X, y = _data()
    seen = []

    def cb(trainer, epoch, logs):
        seen.append((epoch, logs["loss"]))
        return epoch == 2

    t = Trainer(SIZES, seed=0)
    t.fit(X, y, epochs=10, callbacks=[cb], progress=False)
    assert [e for e, _ in seen] == [0, 1, 2]
    assert t.epochs_done == 3
    t.fit(X, y, epochs=1, callbacks=cb, progress=False)      # epochs count on
    assert seen[-1][0] == 3


def test_progress_bar_writes_to_stderr_when_forced(capsys):
    X, y = _data()
    Trainer(SIZES, seed=0).fit(X, y, epochs=2, progress=True)
    assert "2/2" in capsys.readouterr().err
    Trainer(SIZES, seed=0).fit(X, y, epochs=2, progress=False)
    assert capsys.readouterr().err == ""


def test_predictions_per_loss():
    X, y = make_data("binary_cross_entropy", 6, 2, n=20)
    t = Trainer([6, 5, 2], loss="binary_cross_entropy", seed=0)
    p = t.predict_proba(X)
    assert p.shape == (20, 2) and np.all((p > 0) & (p < 1))
    assert np.array_equal(t.predict(X), (p >= 0.5).astype(int))
    ev = t.evaluate(X, y)
    assert ev["accuracy"] == pytest.approx(np.mean(t.predict(X) == y))

    X, y = make_data("mse", 6, 2, n=20)
    r = Trainer([6, 5, 2], loss="mse", seed=0)
    assert r.predict(X).shape == (20, 2)
    assert "accuracy" not in r.evaluate(X, y)
    with pytest.raises(AttributeError, match="predict_proba"):
        r.predict_proba(X)
    assert r.evaluate(X, y)["loss"] == pytest.approx(np.mean((r.predict(X) - y) ** 2), rel=1e-5)


def test_predict_many_rows_in_blocks_matches_row_by_row():
    X, _ = make_data("cross_entropy", 6, 3, n=1000)
    for target in ("cpu", "parallel"):
        t = Trainer(SIZES, seed=0, dtype="float64", target=target)
        whole = t.predict_proba(X)
        assert np.allclose(whole[::97], np.vstack([t.predict_proba(X[i:i + 1]) for i in
                                                   range(0, 1000, 97)]), rtol=1e-12)


def test_predictions_apply_the_standardisation_stored_in_metadata():
    """metadata's "scale" (and mse's "target_scale"), as `fastbp train --scale standard`
    stores them: predict and predict_proba take raw features (dense or sparse; sparse
    features with non-zero means are densified first) and give mse targets in their own
    units; scaling=False gives the network's own outputs; anything but True/False for it
    is refused by name."""
    import scipy.sparse
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 6)) * 5 + 3
    X[X < 4] = 0.0                                     # sparse-looking
    std = rng.random(6) + 0.5
    t = Trainer(SIZES, seed=0, dtype="float64")
    plain = t.predict_proba(X / std)
    t.metadata = {"scale": {"mean": [0.0] * 6, "std": std.tolist()}}
    np.testing.assert_allclose(t.predict_proba(X), plain, rtol=1e-12)
    np.testing.assert_allclose(t.predict_proba(scipy.sparse.csr_matrix(X)), plain, rtol=1e-12)
    np.testing.assert_array_equal(t.predict_proba(X / std, scaling=False), plain)
    mean = X.mean(axis=0)
    t.metadata["scale"]["mean"] = mean.tolist()
    centred = t.predict_proba((X - mean) / std, scaling=False)
    np.testing.assert_allclose(t.predict_proba(scipy.sparse.csr_matrix(X)), centred, rtol=1e-12)

    r = Trainer([6, 5, 2], loss="mse", seed=0, dtype="float64")
    out = r.predict((X - mean) / std)
    r.metadata = {"scale": {"mean": mean.tolist(), "std": std.tolist()},
                  "target_scale": {"mean": [100.0, -3.0], "std": [30.0, 0.5]}}
    np.testing.assert_allclose(r.predict(X), out * [30.0, 0.5] + [100.0, -3.0], rtol=1e-12)
    y = rng.normal(size=(30, 2)) * [30.0, 0.5] + [100.0, -3.0]     # in the targets' units
    network = r.evaluate((X - mean) / std, (y - [100.0, -3.0]) / [30.0, 0.5], scaling=False)
    assert r.evaluate(X, y)["loss"] == pytest.approx(network["loss"], rel=1e-12)
    assert t.evaluate(X, np.zeros(30, dtype=int))["accuracy"] == np.mean(t.predict(X) == 0)
    with pytest.raises(TypeError, match="scaling must be True or False"):
        r.predict(X, scaling="yes")
    with pytest.raises(TypeError, match="scaling must be True or False"):
        t.evaluate(X, np.zeros(30, dtype=int), scaling=None)
