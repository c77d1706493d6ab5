"""Bad arguments and bad data: a clear ValueError/TypeError, raised before any work, with
the model unchanged."""
import numpy as np
import pytest
from scipy import sparse

from fastbp import Trainer

INVALID_ARGUMENTS = [
    (dict(layers=[4]), ValueError, "layers"),
    (dict(layers=[4, 0, 2]), ValueError, "layers"),
    (dict(layers=[4, 2.5, 2]), TypeError, "layers"),
    (dict(layers="4,2"), TypeError, "layers"),
    (dict(layers=[4, 1]), ValueError, "at least 2 outputs"),
    (dict(activation="softplus"), ValueError, "activation"),
    (dict(activation=["relu", "tanh", "relu"]), ValueError, "activation"),
    (dict(activation=3), TypeError, "activation"),
    (dict(loss="hinge"), ValueError, "loss"),
    (dict(optimizer="lbfgs"), ValueError, "optimizer"),
    (dict(lr=0), ValueError, "lr"),
    (dict(lr=-1e-3), ValueError, "lr"),
    (dict(lr=float("nan")), ValueError, "lr"),
    (dict(lr="0.1"), TypeError, "lr"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size=8.0), TypeError, "batch_size"),
    (dict(epochs=-1), ValueError, "epochs"),
    (dict(momentum=1.0), ValueError, "momentum"),
    (dict(momentum=-0.1), ValueError, "momentum"),
    (dict(nesterov=True, optimizer="sgd"), ValueError, "nesterov"),
    (dict(nesterov=True, optimizer="adam", momentum=0.9), ValueError, "nesterov"),
    (dict(nesterov=1), TypeError, "nesterov"),
    (dict(betas=(0.9,)), TypeError, "betas"),
    (dict(betas=(0.9, 1.0)), ValueError, "betas"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(alpha=1.5), ValueError, "alpha"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay"),
    (dict(clip_norm=0), ValueError, "clip_norm"),
    (dict(clip_norm=float("inf")), ValueError, "clip_norm"),
    (dict(init="orthogonal"), ValueError, "init"),
    (dict(dropout=1.0), ValueError, "dropout"),
    (dict(dropout=[0.1, 0.2]), ValueError, "dropout"),
    (dict(dropout="0.5"), TypeError, "dropout"),
    (dict(shuffle="yes"), TypeError, "shuffle"),
    (dict(decay_per_weight=1), TypeError, "decay_per_weight"),
    (dict(target="gpu"), ValueError, "target"),
    (dict(dtype="float16"), ValueError, "dtype"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(n_threads=0), ValueError, "n_threads"),
    (dict(n_threads=10_000, target="parallel"), ValueError, "n_threads"),
    # one thread runs target 'cpu', the GPU 'cuda': more threads would be silently ignored
    (dict(n_threads=2, target="cpu"), ValueError, "n_threads=2 .*target='cpu'"),
    (dict(n_threads=2), ValueError, "n_threads=2 .*target='cpu'"),
    (dict(n_threads=2, target="cuda"), ValueError, "n_threads=2 .*target='cuda'"),
    (dict(learning_rate=0.1), TypeError, "learning_rate"),
]


@pytest.mark.parametrize("kwargs,exc,match", INVALID_ARGUMENTS)
def test_invalid_constructor_arguments(kwargs, exc, match):
    kwargs = dict(kwargs)
    layers = kwargs.pop("layers", [4, 3, 2])
    with pytest.raises(exc, match=match):
        Trainer(layers, **kwargs)


def test_dtype_accepts_numpy_types():
    assert Trainer([2, 2], dtype=np.float64).dtype == np.float64


rng = np.random.default_rng(0)
X_GOOD = rng.normal(size=(10, 4))
Y_GOOD = rng.integers(0, 3, size=10)
X_NAN = X_GOOD.copy()
X_NAN[3, 2] = np.nan
X_INF = X_GOOD.copy()
X_INF[1, 0] = np.inf

BAD_DATA = [
    (X_NAN, Y_GOOD, ValueError, r"X contains NaN at row 3, column 2"),
    (X_INF, Y_GOOD, ValueError, r"X contains infinity at row 1"),
    (np.full((10, 4), 1e300), Y_GOOD, ValueError, "after conversion to float32"),
    (X_GOOD[:, :3], Y_GOOD, ValueError, "3 features per sample but the network takes 4"),
    (X_GOOD[0], Y_GOOD, ValueError, "2-D array"),
    (X_GOOD[:0], Y_GOOD[:0], ValueError, "empty"),
    (X_GOOD, Y_GOOD[:9], ValueError, "9 rows but X has 10"),
    (X_GOOD, np.where(Y_GOOD == 0, 3, Y_GOOD), ValueError, r"labels must be integers in \[0, 3\)"),
    (X_GOOD, np.where(Y_GOOD == 0, -1, Y_GOOD), ValueError, "class label -1"),
    (X_GOOD, Y_GOOD + 0.5, ValueError, "integer class labels"),
    (X_GOOD, np.where(Y_GOOD == 0, np.nan, Y_GOOD), ValueError, "integer class labels"),
    (X_GOOD, Y_GOOD.astype(str), TypeError, "y must hold real numbers"),
    (X_GOOD.astype(str), Y_GOOD, TypeError, "X must hold real numbers"),
    (X_GOOD.astype(complex), Y_GOOD, TypeError, "complex"),
    (X_GOOD, np.ones((10, 3)), ValueError, "1-D array of integer class labels"),
    (sparse.csr_matrix(np.where(X_GOOD > 0, np.nan, X_GOOD)), Y_GOOD, ValueError,
     "contains NaN at row 0"),
    (sparse.csr_matrix(X_GOOD[:, :3]), Y_GOOD, ValueError, "3 features per sample"),
    ([[1, 2], [3]], Y_GOOD, ValueError, "could not be read"),
]


@pytest.mark.parametrize("X,y,exc,match", BAD_DATA)
@pytest.mark.parametrize("method", ["fit", "loss", "gradient", "evaluate"])
def test_bad_data_is_refused_and_model_unchanged(method, X, y, exc, match):
    t = Trainer([4, 5, 3], seed=0)
    t.fit(X_GOOD, Y_GOOD, epochs=1, progress=False)
    before = (t.params.copy(), t.step, {k: list(v) for k, v in t.history.items()})
    with pytest.raises(exc, match=match):
        getattr(t, method)(X, y)
    assert np.array_equal(t.params, before[0]) and t.step == before[1]
    assert t.history == before[2]


def test_large_finite_values_are_accepted():
    """X is checked for NaN and infinity by its sum first: values whose sum overflows are
    finite all the same (and the NaN or infinity among them is still found)."""
    big = np.full((10, 4), np.finfo(np.float32).max / 2, dtype=np.float32)
    t = Trainer([4, 3], seed=0)
    assert t.loss(big, Y_GOOD) >= 0
    with np.errstate(over="ignore"):
        assert not np.isfinite(big.sum())       # (what the test is about)
    big[7, 1] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN at row 7, column 1"):
        t.loss(big, Y_GOOD)


def test_bad_validation_data_refused_before_training():
    t = Trainer([4, 5, 3], seed=0)
    p = t.params.copy()
    with pytest.raises(ValueError, match=r"validation_data\[1\]"):
        t.fit(X_GOOD, Y_GOOD, validation_data=(X_GOOD, Y_GOOD + 5), progress=False)
    with pytest.raises(TypeError, match="validation_data must be a pair"):
        t.fit(X_GOOD, Y_GOOD, validation_data=X_GOOD, progress=False)
    with pytest.raises(TypeError, match="callbacks"):
        t.fit(X_GOOD, Y_GOOD, callbacks=[1], progress=False)
    with pytest.raises(ValueError, match="epochs"):
        t.fit(X_GOOD, Y_GOOD, epochs=-2, progress=False)
    assert np.array_equal(t.params, p) and t.step == 0 and t.history == {}


def test_targets_for_bce_and_mse():
    b = Trainer([4, 2], loss="binary_cross_entropy")
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        b.fit(X_GOOD, np.full((10, 2), 2.0), progress=False)
    with pytest.raises(ValueError, match=r"shape \(n_samples, 2\)"):
        b.fit(X_GOOD, np.zeros(10), progress=False)
    m = Trainer([4, 1], loss="mse")
    with pytest.raises(ValueError, match="non-finite"):
        m.fit(X_GOOD, np.full(10, np.inf), progress=False)
    m.fit(X_GOOD, np.zeros(10), epochs=1, progress=False)      # 1-D y for one output


def test_params_setter_checks():
    t = Trainer([4, 3, 2])
    with pytest.raises(ValueError, match="shape"):
        t.params = np.zeros(3)
    with pytest.raises(ValueError, match="finite"):
        t.params = np.full(t.n_params, np.nan)


def test_labels_as_whole_floats_and_column_vector_are_accepted():
    t = Trainer([4, 5, 3], seed=0, dtype="float64")
    assert t.loss(X_GOOD, Y_GOOD.astype(float)) == t.loss(X_GOOD, Y_GOOD[:, None])


def test_one_thread_is_accepted_with_the_single_threaded_targets():
    assert Trainer([4, 3, 2], target="cpu", n_threads=1).engine.threads == 1


def test_a_parallel_model_with_its_threads_loads_for_target_cpu(tmp_path):
    rng = np.random.default_rng(0)
    import numba
    t = Trainer([4, 3, 2], target="parallel", n_threads=min(2, numba.config.NUMBA_NUM_THREADS),
                seed=0)
    t.fit(rng.normal(size=(16, 4)), rng.integers(0, 2, 16), epochs=1, progress=False)
    t.save(tmp_path / "m.npz")
    u = Trainer.load(tmp_path / "m.npz", target="cpu")
    assert u.config["target"] == "cpu" and u.config["n_threads"] is None
    np.testing.assert_array_equal(u.params, t.params)
