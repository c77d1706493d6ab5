"""Sparse input end to end: the first layer reads CSR rows, nothing of dense size is built,
and the result is the dense copy's to rounding (float64) on every target, with the awkward
layouts scipy allows (duplicates, unsorted indices, explicit zeros, empty rows, CSC/COO,
integer data); the opt-in lazy update follows torch.optim.SparseAdam's rule."""
import tracemalloc
import warnings

import numpy as np
import pytest
from scipy import sparse
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier as SkMLPClassifier

from conftest import ACTIVATIONS, LOSSES, OPTIMIZERS, make_data
from fastbp import MLPClassifier, MLPRegressor, Trainer
from fastbp.engine import touched_capacity
from fastbp.kernels import training_plan

N_IN, HIDDEN, N_OUT, N = 12, 5, 3, 30
RTOL = 1e-10


def awkward_csr(dense, seed=0):
    """A CSR matrix equal to `dense` (after summing duplicates) whose rows hold every
    layout scipy allows: entries split into duplicates, indices in random order, explicit
    zeros, and the empty rows of `dense` (callers make some)."""
    rng = np.random.default_rng(seed)
    indptr, indices, values = [0], [], []
    for row in dense:
        cols = list(np.flatnonzero(row))
        vals = [row[j] for j in cols]
        if cols and rng.random() < 0.7:            # one entry split in two
            k = int(rng.integers(len(cols)))
            half = vals[k] * 0.25
            vals[k] -= half
            cols.append(cols[k])
            vals.append(half)
        if rng.random() < 0.5:                     # an explicit zero
            cols.append(int(rng.integers(dense.shape[1])))
            vals.append(0.0)
        order = rng.permutation(len(cols))         # unsorted indices
        indices += [cols[i] for i in order]
        values += [vals[i] for i in order]
        indptr.append(len(indices))
    X = sparse.csr_matrix((np.array(values), np.array(indices, dtype=np.int32),
                           np.array(indptr, dtype=np.int32)), shape=dense.shape)
    assert not X.has_canonical_format
    np.testing.assert_array_equal(X.toarray(), dense)
    return X


def sparse_data(loss, n=N, n_in=N_IN, seed=0):
    """(dense X with ~75% zeros and two empty rows, its awkward CSR copy, y)."""
    X, y = make_data(loss, n_in, N_OUT, n=n, seed=seed)
    rng = np.random.default_rng(seed + 1)
    X[rng.random(X.shape) < 0.75] = 0.0
    X[[3, 17]] = 0.0
    return X, awkward_csr(X, seed), y


def trainer(target, **kw):
    t = Trainer([N_IN, HIDDEN, N_OUT], dtype="float64", batch_size=7, seed=0, target=target,
                **kw)
    if target == "parallel":           # chunks even at these tiny sizes
        t.engine.train_plan = training_plan("parallel", t.layers, 7, 2, "chunks")
    return t


def _same(a, b, rtol=RTOL):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("target", ["cpu", "parallel"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_sparse_fit_equals_dense_fit(activation, loss, optimizer, target):
    X, Xs, y = sparse_data(loss)
    kw = dict(activation=activation, loss=loss, optimizer=optimizer, lr=0.02,
              momentum=0.9 if optimizer in ("sgd", "rmsprop") else 0.0, weight_decay=0.01)
    dense, sp = trainer(target, **kw), trainer(target, **kw)
    hd = dense.fit(X, y, epochs=2, progress=False, validation_data=(X, y))
    hs = sp.fit(Xs, y, epochs=2, progress=False, validation_data=(Xs, y))
    _same(sp.params, dense.params)
    _same(hs["loss"], hd["loss"])
    _same(hs["val_loss"], hd["val_loss"])
    _same(hs["grad_norm"], hd["grad_norm"])
    _same(sp.engine.m, dense.engine.m)
    _same(sp.gradient(Xs, y), dense.gradient(X, y))
    assert sp.loss(Xs, y) == pytest.approx(dense.loss(X, y), rel=RTOL)
    _same(sp.predict(Xs), dense.predict(X))


@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_sparse_extras_equal_dense(target, monkeypatch):
    """Dropout (masks by data row), sample weights, clipping, evaluate, predict_proba,
    a partial last batch and empty rows."""
    X, Xs, y = sparse_data("cross_entropy", n=33)
    w = np.random.default_rng(3).random(33)
    kw = dict(activation="relu", dropout=0.3, clip_norm=0.5, optimizer="adam", lr=0.05)
    dense, sp = trainer(target, **kw), trainer(target, **kw)
    dense.fit(X, y, sample_weight=w, epochs=3, progress=False)
    sp.fit(Xs, y, sample_weight=w, epochs=3, progress=False)
    _same(sp.params, dense.params)
    _same(sp.predict_proba(Xs), dense.predict_proba(X))
    ed, es = dense.evaluate(X, y, sample_weight=w), sp.evaluate(Xs, y, sample_weight=w)
    assert es["loss"] == pytest.approx(ed["loss"], rel=RTOL)
    assert es["accuracy"] == ed["accuracy"]
    # CSR evaluation (forward-only kernel) sums as the CSR gradient kernel does, given the
    # same chunks (a forward pass this small otherwise stays on one thread); to a few units
    # in the last place, as fast-math may order a block's sums differently in each kernel
    from fastbp import engine
    monkeypatch.setattr(engine, "EVAL_THREADS_FROM_FLOPS", 0.0)
    rows = sp.check_data(Xs, y, w)
    assert sp.engine.loss_grad(rows, True)[0] == \
        pytest.approx(sp.engine.loss_grad(rows, False)[0], rel=1e-14)
    _same(sp.predict_proba(X[[3, 17]]), sp.predict_proba(Xs[[3, 17]]))   # empty rows


@pytest.mark.parametrize("fmt", ["csc", "coo", "lil", "dok", "bsr"])
def test_other_formats_and_dtypes_are_converted(fmt):
    X, Xs, y = sparse_data("cross_entropy")
    ref = trainer("cpu")
    ref.fit(X, y, epochs=1, progress=False)
    t = trainer("cpu")
    t.fit(sparse.csr_array(X).asformat(fmt), y, epochs=1, progress=False)   # sparse arrays too
    _same(t.params, ref.params)
    counts = sparse.csr_matrix((X != 0).astype(np.int8))                    # int and bool data
    for Xi in (counts, counts.astype(bool)):
        a, b = trainer("cpu"), trainer("cpu")
        a.fit(Xi, y, epochs=1, progress=False)
        b.fit(Xi.toarray().astype(float), y, epochs=1, progress=False)
        _same(a.params, b.params)


def test_float32_stays_float32_and_checks_name_the_row():
    X, Xs, y = sparse_data("cross_entropy")
    t = Trainer([N_IN, HIDDEN, N_OUT], dtype="float32", seed=0)
    rows = t.check_data(Xs.astype(np.float32), y)
    assert rows.values.dtype == np.float32 and rows.X.shape == (N, 0) and rows.X.nbytes == 0
    assert rows.indices.dtype == np.int64 and rows.indptr.dtype == np.int64
    before = t.params.copy()
    bad = Xs.copy()
    bad.data[bad.indptr[5] + 1] = np.nan
    with pytest.raises(ValueError, match="contains NaN at row 5, column"):
        t.fit(bad, y, progress=False)
    bad.data[bad.indptr[5] + 1] = -np.inf
    with pytest.raises(ValueError, match="infinity at row 5"):
        t.predict(bad)
    bad.data[bad.indptr[5] + 1] = 1e300           # finite in float64, not in float32
    with pytest.raises(ValueError, match="after conversion to float32"):
        t.evaluate(bad, y)
    with pytest.raises(ValueError, match=r"7 features per sample.*layers\[0\]"):
        t.fit(sparse.csr_matrix((N, 7)), y, progress=False)
    with pytest.raises(ValueError, match="empty"):
        t.fit(sparse.csr_matrix((0, N_IN)), y[:0], progress=False)
    with pytest.raises(ValueError, match=r"validation_data\[0\] contains NaN at row 5"):
        bad.data[bad.indptr[5] + 1] = np.nan
        t.fit(Xs, y, validation_data=(bad, y), progress=False)
    np.testing.assert_array_equal(t.params, before)
    assert t.step == 0


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_estimators_name_the_row_and_column_of_a_nan(fmt):
    """As the Trainer does (before: scikit-learn's "Input X contains NaN", naming neither),
    in fit, partial_fit and predict, before any work."""
    rng = np.random.default_rng(0)
    X = sparse.random(60, 8, density=0.4, format="csr", random_state=0)
    y = rng.integers(0, 3, 60)
    bad = X.copy()
    bad.data[5] = np.nan
    row = int(np.searchsorted(bad.indptr, 5, side="right") - 1)
    where = f"X contains NaN at row {row}, column {bad.indices[5]}"
    bad = bad.asformat(fmt)
    for call in (lambda: MLPClassifier(max_iter=2).fit(bad, y),
                 lambda: MLPRegressor(max_iter=2).fit(bad, y.astype(float)),
                 lambda: MLPClassifier().partial_fit(bad, y, classes=[0, 1, 2])):
        with pytest.raises(ValueError, match=where):
            call()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted = MLPClassifier(max_iter=2, random_state=0).fit(X, y)
    before = [c.copy() for c in fitted.coefs_]
    with pytest.raises(ValueError, match=where):
        fitted.predict(bad)
    assert all(np.array_equal(a, b) for a, b in zip(before, fitted.coefs_))


def test_lazy_update_touches_only_the_batch_rows():
    """sparse_update='lazy': a step updates only the rows of W_0 its batch has entries in,
    with the global step in Adam's bias corrections (torch.optim.SparseAdam); plain SGD is
    the same as the dense update."""
    rng = np.random.default_rng(0)
    X = np.zeros((8, 10))
    X[:4, :5] = rng.normal(size=(4, 5))           # batch 1 touches columns 0-4
    X[4:, 5:] = rng.normal(size=(4, 5))           # batch 2 touches columns 5-9
    y = rng.integers(0, 3, size=8)
    kw = dict(optimizer="adam", lr=0.1, batch_size=4, dtype="float64", seed=0, shuffle=False)
    lazy = Trainer([10, 4, 3], sparse_update="lazy", **kw)
    lazy.fit(sparse.csr_matrix(X), y, epochs=1, progress=False)
    dense = Trainer([10, 4, 3], **kw)
    dense.fit(sparse.csr_matrix(X), y, epochs=1, progress=False)
    first = Trainer([10, 4, 3], sparse_update="lazy", **kw)
    first.fit(sparse.csr_matrix(X[:4]), y[:4], epochs=1, progress=False)   # step 1 alone
    # rows 0-4 of W_0: step 2 left them as step 1 made them (dense Adam moves them again)
    np.testing.assert_array_equal(lazy.weights[0][:5], first.weights[0][:5])
    assert np.abs(dense.weights[0][:5] - first.weights[0][:5]).max() > 1e-3
    # rows 5-9: one Adam step at t = 2 from zero moments, with the gradient at step 1's end
    g = first.gradient(sparse.csr_matrix(X[4:]), y[4:])[:40].reshape(10, 4)[5:]
    b1, b2, eps = 0.9, 0.999, 1e-8
    m, v = (1 - b1) * g, (1 - b2) * g * g
    expected = first.weights[0][5:] - 0.1 * (m / (1 - b1 ** 2)) / (
        np.sqrt(v / (1 - b2 ** 2)) + eps)
    np.testing.assert_allclose(lazy.weights[0][5:], expected, rtol=1e-12)
    # untouched rows keep their moments
    np.testing.assert_array_equal(lazy.engine.v[:40].reshape(10, 4)[:5],
                                  first.engine.v[:40].reshape(10, 4)[:5])
    # plain SGD: the lazy and dense updates are the same
    X, Xs, y = sparse_data("cross_entropy")
    for target in ("cpu", "parallel"):
        a = trainer(target, optimizer="sgd", lr=0.1, sparse_update="lazy")
        b = trainer(target, optimizer="sgd", lr=0.1)
        a.fit(Xs, y, epochs=2, progress=False)
        b.fit(Xs, y, epochs=2, progress=False)
        _same(a.params, b.params)


def test_lazy_parallel_equals_lazy_cpu():
    X, Xs, y = sparse_data("cross_entropy")
    kw = dict(optimizer="adam", lr=0.05, sparse_update="lazy", clip_norm=1.0)
    a, b = trainer("cpu", **kw), trainer("parallel", **kw)
    ha = a.fit(Xs, y, epochs=3, progress=False)
    hb = b.fit(Xs, y, epochs=3, progress=False)
    _same(a.params, b.params)
    _same(ha["layer_grad_norms"], hb["layer_grad_norms"])


def test_touched_capacity_bounds_a_chunk():
    indptr = np.array([0, 3, 3, 10, 11])            # rows of 3, 0, 7 and 1 entries
    assert touched_capacity(indptr, 2, 100) == 10
    assert touched_capacity(indptr, 9, 100) == 11
    assert touched_capacity(indptr, 2, 6) == 6


def test_a_fit_never_allocates_anything_of_dense_size():
    """200 rows x 400k columns: the dense copy would be 640 MB (float64), a dense
    workspace batch x columns 102 MB; the fit's peak stays near params + optimizer state +
    gradient (4 x 6.4 MB)."""
    n, n_in = 200, 400_000
    rng = np.random.default_rng(0)
    X = sparse.random(n, n_in, density=20 / n_in, random_state=0, format="csr")
    y = rng.integers(0, 2, size=n)
    t = Trainer([n_in, 2, 2], optimizer="adam", batch_size=32, dtype="float64", seed=0)
    t.fit(X[:40], y[:40], epochs=1, progress=False)        # compile outside the trace
    tracemalloc.start()
    t.fit(X, y, epochs=1, progress=False, validation_data=(X, y))
    t.predict_proba(X)
    t.gradient(X, y)                      # the one dense-size output: a (P,) gradient
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    params_bytes = t.params.nbytes
    assert peak < 6 * params_bytes, (peak, params_bytes)


# ------------------------------------------------------------------ estimators

@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_estimators_on_sparse_equal_themselves_on_the_dense_copy(solver, target):
    X, Xs, y = sparse_data("cross_entropy", n=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        kw = dict(hidden_layer_sizes=(6,), solver=solver, max_iter=8, random_state=0,
                  target=target, early_stopping=solver != "lbfgs", validation_fraction=0.2)
        a = MLPClassifier(**kw).fit(Xs, y)
        b = MLPClassifier(**kw).fit(X, y)
        r = MLPRegressor(**kw).fit(Xs.tocsc(), X[:, 0] * 2 + 1)
        q = MLPRegressor(**kw).fit(X, X[:, 0] * 2 + 1)
    for u, v in zip(a.coefs_ + a.intercepts_ + r.coefs_, b.coefs_ + b.intercepts_ + q.coefs_):
        _same(u, v, 1e-9)
    _same(a.predict_proba(Xs), b.predict_proba(X), 1e-9)
    assert a.score(Xs, y) == b.score(X, y)
    assert r.score(Xs, X[:, 0] * 2 + 1) == pytest.approx(q.score(X, X[:, 0] * 2 + 1), rel=1e-9)


def test_estimator_partial_fit_on_sparse_chunks_equals_dense():
    X, Xs, y = sparse_data("cross_entropy", n=60)
    a = MLPClassifier(hidden_layer_sizes=(6,), random_state=0, target="cpu")
    b = MLPClassifier(hidden_layer_sizes=(6,), random_state=0, target="cpu")
    for lo in (0, 20, 40):
        a.partial_fit(Xs[lo:lo + 20], y[lo:lo + 20], classes=np.arange(N_OUT))
        b.partial_fit(X[lo:lo + 20], y[lo:lo + 20], classes=np.arange(N_OUT))
    _same(a.coefs_[0], b.coefs_[0], 1e-9)
    assert a.__sklearn_tags__().input_tags.sparse


def test_one_hot_encoder_pipeline_trains_and_scores():
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    rng = np.random.default_rng(0)
    n = 300
    cats = np.stack([rng.choice(list("abcdefgh"), n), rng.choice(["x", "y", "z"], n)], axis=1)
    num = rng.normal(size=(n, 2))
    X = np.concatenate([cats, num.astype(str)], axis=1).astype(object)
    X[:, 2:] = num
    y = ((np.isin(cats[:, 0], list("abcd")) & (cats[:, 1] != "z")) | (num[:, 0] > 1)).astype(int)

    def pipeline(mlp):
        enc = ColumnTransformer([("cat", OneHotEncoder(), [0, 1]),
                                 ("num", StandardScaler(), [2, 3])], sparse_threshold=1.0)
        return make_pipeline(enc, mlp(hidden_layer_sizes=(16,), max_iter=300, random_state=0))

    pipe, theirs = pipeline(MLPClassifier), pipeline(SkMLPClassifier)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe.fit(X[:240], y[:240])
        theirs.fit(X[:240], y[:240])
    assert sparse.issparse(pipe[0].transform(X[:5]))
    assert pipe.score(X[240:], y[240:]) > 0.9
    _same(pipe[-1].coefs_[0], theirs[-1].coefs_[0], 1e-9)     # scikit-learn's model


def test_tfidf_text_pipeline_trains_and_scores():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    rng = np.random.default_rng(0)
    topics = {0: "goal match team score league coach player season",
              1: "stock market price trade bank profit share invest",
              2: "gene cell protein virus dna lab study trial"}
    filler = "the a of and to in is it that on for with as was".split()
    docs, labels = [], []
    for i in range(300):
        k = i % 3
        words = rng.choice(topics[k].split(), 6).tolist() + rng.choice(filler, 10).tolist()
        docs.append(" ".join(rng.permutation(words)))
        labels.append(["sport", "money", "science"][k])
    pipe = make_pipeline(TfidfVectorizer(), MLPClassifier(hidden_layer_sizes=(8,),
                                                          max_iter=60, random_state=0,
                                                          sparse_update="lazy"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe.fit(docs[:240], labels[:240])
    assert pipe.score(docs[240:], labels[240:]) > 0.95
    assert set(pipe.predict(["the coach of the team", "a bank trade"])) <= {"sport", "money",
                                                                           "science"}


def test_fit_incremental_takes_sparse_chunks():
    """fastbp.distributed.fit_incremental over an iterable of sparse (X, y) chunks equals
    partial_fit over their dense copies (no Dask needed for an iterable)."""
    from fastbp.distributed import fit_incremental
    X, Xs, y = sparse_data("cross_entropy", n=60)
    chunks = [(Xs[lo:lo + 20], y[lo:lo + 20]) for lo in (0, 20, 40)]
    a = fit_incremental(MLPClassifier(hidden_layer_sizes=(6,), random_state=0, target="cpu"),
                        lambda: iter(chunks), epochs=2, classes=np.arange(N_OUT))
    b = MLPClassifier(hidden_layer_sizes=(6,), random_state=0, target="cpu")
    for _ in range(2):
        for lo in (0, 20, 40):
            b.partial_fit(X[lo:lo + 20], y[lo:lo + 20], classes=np.arange(N_OUT))
    _same(a.coefs_[0], b.coefs_[0], 1e-9)
    t = fit_incremental(trainer("cpu"), chunks, epochs=1)
    assert t.step == 9


def test_sparse_files_are_read_without_densifying(tmp_path):
    from sklearn.datasets import dump_svmlight_file

    from fastbp.sparsefiles import is_sparse_file, read_sparse
    X, Xs, y = sparse_data("cross_entropy")
    Xs = sparse.csr_matrix(Xs.toarray())
    dump_svmlight_file(Xs, y, str(tmp_path / "d.svm"))
    sparse.save_npz(tmp_path / "d.npz", Xs)
    np.savez(tmp_path / "arrays.npz", X=X, y=y)
    assert is_sparse_file(tmp_path / "d.svm") and is_sparse_file(tmp_path / "d.npz")
    assert not is_sparse_file(tmp_path / "arrays.npz")
    Xa, ya = read_sparse(tmp_path / "d.svm", n_features=N_IN)
    Xb, yb = read_sparse(tmp_path / "d.npz")
    assert sparse.isspmatrix_csr(Xa) and Xa.shape == X.shape and yb is None
    np.testing.assert_allclose(Xa.toarray(), X, rtol=1e-15)      # as text, 16 digits
    np.testing.assert_array_equal(ya, y)
    np.testing.assert_array_equal(Xb.toarray(), X)
    (tmp_path / "bad.svm").write_text("1 x:y\n")
    with pytest.raises(ValueError, match="bad.svm"):
        read_sparse(tmp_path / "bad.svm")
    # a damaged zip header that asks for a feature zipfile lacks (NotImplementedError)
    data = bytearray((tmp_path / "d.npz").read_bytes())
    data[data.index(b"PK\x01\x02") + 8] |= 0x40        # "strong encryption"
    (tmp_path / "damaged.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged.npz: not a readable sparse data file"):
        read_sparse(tmp_path / "damaged.npz")
    # a dense table's .npz: NumPy's words (allow_pickle=...) said nothing useful
    np.savez(tmp_path / "table.npz", X=np.zeros((2, 2)), y=np.array(["a", "b"], dtype=object))
    with pytest.raises(ValueError, match=r"table.npz: not a sparse matrix written by "
                                         r"scipy.sparse.save_npz \(a dense table"):
        read_sparse(tmp_path / "table.npz")
