"""The first layer leaves out the columns of dense X that are zero in all of a chunk's rows
(ops.skip_zero_columns): the same sums as without, against the float64 reference, and the
skip really taken."""
import warnings

import numpy as np
import pytest

import reference as ref
from fastbp import MLPClassifier, Trainer
from fastbp.kernels import ops
from fastbp.kernels.gemm import TRANSPOSE_MAX
from fastbp.layout import Layout

SIZES = [40, 16, 3]
ZERO = 30          # columns zero in every row


def _data(n=48, seed=0):
    """X (n, 40): columns 0-29 zero everywhere, 30-33 zero in the first half of the rows
    (so chunks differ), rows 16-23 all zero (a chunk of 8 of them has no nonzero column)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, SIZES[0]))
    X[:, :ZERO] = 0.0
    X[:n // 2, ZERO:ZERO + 4] = 0.0
    X[16:24] = 0.0
    return X, rng.integers(0, SIZES[-1], size=n)


def test_the_helpers():
    A = np.array([[0.0, 1.0, 0.0, 2.0, 0.0],
                  [0.0, 3.0, 0.0, 0.0, np.nan]])
    cols = np.full(5, -7, dtype=np.int64)
    assert ops.nonzero_columns(cols, A) == 3
    assert list(cols[:3]) == [1, 3, 4]                     # NaN counts as nonzero
    assert ops.nonzero_columns(cols, np.zeros((3, 5))) == 0
    dense = np.ones((40, 5))
    assert ops.nonzero_columns(cols, dense) == 5 and list(cols) == [0, 1, 2, 3, 4]
    late = np.zeros((40, 5))
    late[:, 1:] = 1.0
    late[37, 0] = -2.0                 # column 0's only nonzero, after the early checks
    assert ops.nonzero_columns(cols, late) == 5
    late[37, 0] = 0.0
    assert ops.nonzero_columns(cols, late) == 4 and list(cols[:4]) == [1, 2, 3, 4]

    flat = np.arange(12.0)                                 # a (3, 4) matrix
    cols = np.array([1, 3, 0, 0])
    ops.compact_columns(flat, 3, 4, cols, 2)
    np.testing.assert_array_equal(flat[:6].reshape(3, 2),
                                  np.arange(12.0).reshape(3, 4)[:, [1, 3]])

    W = np.arange(20.0).reshape(5, 4)
    out = np.empty((3, 4))
    ops.gather_rows(out, W, np.array([0, 2, 4, 0, 0]))
    np.testing.assert_array_equal(out, W[[0, 2, 4]])

    G = np.full((6, 3), -1.0)
    cols = np.array([1, 2, 5, 0, 0, 0])
    G[:3] = [[1, 1, 1], [2, 2, 2], [5, 5, 5]]
    ops.spread_rows(G, cols, 3)
    expected = np.zeros((6, 3))
    expected[[1, 2, 5]] = [[1, 1, 1], [2, 2, 2], [5, 5, 5]]
    np.testing.assert_array_equal(G, expected)
    G[:] = 9.0
    ops.spread_rows(G, cols, 0)                            # no nonzero column at all
    np.testing.assert_array_equal(G, 0.0)


def test_skip_pays_for_many_zero_columns_only():
    assert ops.skip_pays(100, 64, 55, 100)                 # digits' 9 of 64 in 100 rows
    assert not ops.skip_pays(100, 64, 63, 100)             # one column: moves cost more
    assert ops.skip_pays(8, 40, 10, 16)                    # the tests' data below


def test_the_workspace_makes_room_for_w0_only_where_the_skip_runs():
    small, large = Layout([64, 100, 10]), Layout([784, 256, 10])
    assert 64 * 100 <= TRANSPOSE_MAX < 784 * 256
    assert small.skips_zero_columns(2, 8, data_bytes=0)
    assert not small.skips_zero_columns(2, 8, 10**9, sparse=True)
    assert not small.skips_zero_columns(2, 8, 10**9, backward=False)
    # a large W_0 is copied where the copies take at most a tenth of the data's memory
    copies = 2 * 784 * 256 * 4
    assert large.skips_zero_columns(2, 4, data_bytes=copies * 10)
    assert not large.skips_zero_columns(2, 4, data_bytes=copies * 10 - 1)
    a_off, z_off, d_off, size = small.workspace(100, skip_zero_columns=True)
    assert size - d_off[2] >= 64 * 100                     # W_0's touched rows fit
    assert small.workspace(100)[3] < size
    assert small.workspace(100, backward=False)[3] == small.workspace(100)[2][2]


def _large_first_layer_data(n=8000):
    """n rows of 784 pixels, a fifth of them zero in every row."""
    rng = np.random.default_rng(0)
    X = rng.random((n, 784)).astype(np.float32)
    X[:, ::5] = 0.0
    return X, rng.integers(0, 10, size=n)


def test_a_large_first_layer_skips_where_the_data_pays_for_the_copies(monkeypatch):
    X, y = _large_first_layer_data()
    # two threads, so two chunks a step (with 16, the copies would be 12.8 MB: no skip)
    kw = dict(target="parallel", batch_size=128, seed=0, n_threads=2)
    t, plain = Trainer([784, 256, 10], **kw), Trainer([784, 256, 10], **kw)
    runner = _epoch_runner(t, X, y)
    assert runner.ws.touched.shape[1] == 784             # 1.6 MB of copies for 25 MB of data
    runner.run(t._hyper, 0)
    assert list(runner.ws.n_touched) == [784 - 157] * runner.ws.n_touched.size
    with monkeypatch.context() as m:
        m.setattr(Layout, "skips_zero_columns", lambda self, *a, **k: False)
        _epoch_runner(plain, X, y).run(plain._hyper, 0)
    np.testing.assert_array_equal(t.params, plain.params)
    few = _epoch_runner(Trainer([784, 256, 10], **kw), X[:1000], y[:1000])
    assert few.ws.touched.shape[1] == 0                  # 1.6 MB for 3.1 MB: no


def _epoch_runner(t, X, y):
    rows = t.check_data(X, y, None)
    order = np.arange(rows.n, dtype=np.int64)
    steps = -(-rows.n // t.engine.batch_size)
    return t.engine.epoch_runner(rows, order, np.zeros((steps, 3)), t._hyper)


@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_the_skip_is_taken_and_gives_the_same_epoch(target, monkeypatch):
    X, y = _data()
    kw = dict(optimizer="adam", lr=0.01, batch_size=16, target=target, seed=1)
    skipping, plain = Trainer(SIZES, **kw), Trainer(SIZES, **kw)
    runner = _epoch_runner(skipping, X, y)
    runner.run(skipping._hyper, 0)
    n_0 = SIZES[0]
    # the last step's chunks: rows 32-47, whose zero columns are 0-29
    assert runner.ws.touched.shape[1] == n_0
    assert all(runner.ws.n_touched[c] == n_0 - ZERO for c in range(runner.ws.n_touched.size))
    monkeypatch.setattr(Layout, "skips_zero_columns", lambda self, *a, **k: False)
    plain_runner = _epoch_runner(plain, X, y)
    assert plain_runner.ws.touched.shape[1] == 0
    plain_runner.run(plain._hyper, 0)
    np.testing.assert_array_equal(skipping.params, plain.params)     # exact zeros left out
    np.testing.assert_array_equal(runner.norms, plain_runner.norms)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_training_with_zero_columns_matches_reference(target, dtype):
    X, y = _data()
    t = Trainer(SIZES, activation="relu", optimizer="adam", lr=0.01, batch_size=16,
                target=target, dtype=dtype, seed=2)
    initial = t.params.copy()
    Ws, bs = ref.unflatten(t.params.astype(np.float64), SIZES)
    expected = ref.train(Ws, bs, X, y, ["relu"], "cross_entropy", ref.Optimizer("adam", lr=0.01),
                         batch_size=16, epochs=3)
    history = t.fit(X, y, epochs=3, shuffle=False, progress=False)
    rtol = 1e-10 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(history["loss"], expected, rtol=rtol)
    np.testing.assert_allclose(t.params, ref.flatten(Ws, bs), rtol=rtol * 10,
                               atol=1e-12 if dtype == "float64" else 1e-5)
    # the zero columns' rows of W_0 got no gradient: Adam left them as initialised
    rows = ZERO * SIZES[1]
    np.testing.assert_array_equal(t.params[:rows], initial[:rows])


def test_lbfgs_gradient_with_zero_columns_matches_reference():
    X, y = _data()
    t = Trainer(SIZES, activation="tanh", dtype="float64", seed=4)
    Ws, bs = ref.unflatten(t.params, SIZES)
    _, dWs, dbs = ref.loss_and_grad(Ws, bs, X, y, ["tanh"], "cross_entropy")
    grad = t.gradient(X, y)
    np.testing.assert_allclose(grad, ref.flatten(dWs, dbs), rtol=1e-10, atol=1e-13)
    assert not grad[:ZERO * SIZES[1]].any()


def test_digits_model_equals_scikit_learns_with_the_skip():
    """digits has 4-13 of its 64 pixels zero in a chunk of 100 rows: the skip runs (on each
    thread's chunk with target='parallel'), and the model is still scikit-learn's."""
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier as SkMLPClassifier
    from test_sklearn_equivalence import assert_same_model
    X, y = load_digits(return_X_y=True)
    X, y = X[:600] / 16.0, y[:600]
    for solver in ("adam", "lbfgs"):
        kw = dict(hidden_layer_sizes=(50,), solver=solver, max_iter=5, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sk = SkMLPClassifier(**kw).fit(X, y)
            for target in ("cpu", "parallel"):
                assert_same_model(sk, MLPClassifier(target=target, **kw).fit(X, y), X,
                                  rtol=1e-9)
