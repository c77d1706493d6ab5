"""fastbp.MLPClassifier / MLPRegressor: scikit-learn's estimator contract, accuracy against
scikit-learn's own MLP, and the behaviours its users rely on."""
import pickle
import warnings

import numpy as np
import pytest
from scipy import sparse
from sklearn import datasets
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.neural_network import MLPClassifier as SkMLPClassifier
from sklearn.neural_network import MLPRegressor as SkMLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import reference as ref
from fastbp import MLPClassifier, MLPRegressor


# Every check passes, check_sample_weight_equivalence_on_dense_data included for the
# minibatch solvers (scikit-learn expects its own MLPs to fail it there): the L2 term is
# taken per unit of batch weight, as scikit-learn's, so weights and repeated rows agree.
@parametrize_with_checks([MLPClassifier(max_iter=100), MLPRegressor(max_iter=100),
                          MLPClassifier(solver="lbfgs", max_iter=100),
                          MLPRegressor(solver="lbfgs", max_iter=100)])
def test_sklearn_estimator_contract(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def _split(loader):
    X, y = loader(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    return train_test_split(X, y, random_state=0,
                            stratify=y if loader is not datasets.load_diabetes else None)


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
@pytest.mark.parametrize("loader", [datasets.load_iris, datasets.load_wine,
                                    datasets.load_breast_cancer, datasets.load_digits])
def test_classification_accuracy_close_to_scikit_learn(loader, solver):
    X_tr, X_te, y_tr, y_te = _split(loader)
    kw = dict(hidden_layer_sizes=(64,), solver=solver, max_iter=300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPClassifier(**kw).fit(X_tr, y_tr).score(X_te, y_te)
        theirs = SkMLPClassifier(**kw).fit(X_tr, y_tr).score(X_te, y_te)
    assert ours >= theirs - 0.05, (ours, theirs)


@pytest.mark.parametrize("solver,lr,alpha,max_iter", [("adam", 0.01, 1.0, 500),
                                                      ("sgd", 0.001, 1.0, 500),
                                                      ("lbfgs", 0.001, 100.0, 100)])
def test_regression_close_to_scikit_learn(solver, lr, alpha, max_iter):
    """Diabetes is small and noisy: full-batch L-BFGS overfits both libraries' models unless
    it is regularised, hence its larger alpha."""
    X_tr, X_te, y_tr, y_te = _split(datasets.load_diabetes)
    kw = dict(hidden_layer_sizes=(32,), solver=solver, max_iter=max_iter, random_state=0,
              learning_rate_init=lr, alpha=alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPRegressor(**kw).fit(X_tr, y_tr)
        theirs = SkMLPRegressor(**kw).fit(X_tr, y_tr)
    assert ours.score(X_te, y_te) >= theirs.score(X_te, y_te) - 0.1
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=0.5)   # same units: half squared error


def test_fitted_attributes_are_views_and_shapes():
    X, y = datasets.load_iris(return_X_y=True)
    m = MLPClassifier(hidden_layer_sizes=(8, 5), max_iter=20, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m.fit(X, y)
    assert [c.shape for c in m.coefs_] == [(4, 8), (8, 5), (5, 3)]
    assert [b.shape for b in m.intercepts_] == [(8,), (5,), (3,)]
    assert m.n_layers_ == 4 and m.n_outputs_ == 3 and m.out_activation_ == "softmax"
    assert m.n_iter_ == 20 and m.t_ == 20 * 150 and len(m.loss_curve_) == 20
    assert m.n_features_in_ == 4 and m.best_loss_ <= m.loss_curve_[0]
    m.coefs_[0][:] = 0.0                            # a view: the model changes
    assert np.all(m._trainer.weights[0] == 0.0)


def test_binary_multilabel_string_labels_and_float32():
    X, y = datasets.load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X).astype(np.float32)
    labels = np.where(y == 1, "benign", "malignant")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = MLPClassifier(hidden_layer_sizes=(16,), max_iter=50, random_state=0).fit(X, labels)
        Y = np.column_stack([y, 1 - y, (X[:, 0] > 0).astype(int)])      # multilabel
        ml = MLPClassifier(hidden_layer_sizes=(16,), max_iter=80, random_state=0).fit(X, Y)
    assert m.out_activation_ == "logistic" and m.n_outputs_ == 1
    assert set(m.predict(X)) <= {"benign", "malignant"} and m.score(X, labels) > 0.95
    P = m.predict_proba(X)
    assert P.shape == (len(X), 2) and P.dtype == np.float32 and m.coefs_[0].dtype == np.float32
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(m.predict_log_proba(X), np.log(P), rtol=1e-6)

    assert ml.predict(X).shape == Y.shape and ml.score(X, Y) > 0.8


def test_multi_output_regression():
    X, y = datasets.make_regression(n_samples=200, n_features=5, n_targets=3, random_state=0)
    m = MLPRegressor(hidden_layer_sizes=(32,), solver="lbfgs", max_iter=300,
                     random_state=0).fit(X, y / 100)
    assert m.predict(X).shape == (200, 3) and m.score(X, y / 100) > 0.9


def test_partial_fit_chunks_equal_fit_on_the_concatenation():
    X, y = datasets.load_digits(return_X_y=True)
    X = X[:640] / 16.0
    y = y[:640]
    kw = dict(hidden_layer_sizes=(32,), batch_size=32, shuffle=False, random_state=0,
              max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        whole = MLPClassifier(**kw).fit(X, y)
    parts = MLPClassifier(**kw)
    for lo in range(0, 640, 160):
        parts.partial_fit(X[lo:lo + 160], y[lo:lo + 160], classes=np.arange(10))
    for a, b in zip(whole.coefs_ + whole.intercepts_, parts.coefs_ + parts.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    assert parts.n_iter_ == 1 and parts.t_ == 640     # n_iter_: the latest call's epochs
    with pytest.raises(ValueError, match="classes"):
        MLPClassifier().partial_fit(X, y)
    with pytest.raises(AttributeError, match="partial_fit"):
        MLPClassifier(solver="lbfgs").partial_fit(X, y, classes=np.arange(10))


def test_warm_start_continues():
    X, y = datasets.load_iris(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = MLPClassifier(max_iter=5, warm_start=True, random_state=0).fit(X, y)
        first = m.coefs_[0].copy()
        m.fit(X, y)
    # n_iter_ counts the latest call's epochs (scikit-learn's); loss_curve_ and t_ go on
    assert m.n_iter_ == 5 and len(m.loss_curve_) == 10 and m.t_ == 1500
    assert not np.array_equal(first, m.coefs_[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cold = MLPClassifier(max_iter=5, random_state=0).fit(X, y)
        cold.fit(X, y)
    assert cold.n_iter_ == 5


def test_early_stopping_restores_the_best_weights():
    """The restored weights are those of the best validation epoch: equal, bit for bit, to a
    twin fit (same random_state, so the same split and shuffling; target='cpu', so
    reproducible) that ran exactly to that epoch and was not allowed to stop earlier."""
    X, y = datasets.load_digits(return_X_y=True)
    X = X / 16.0
    kw = dict(hidden_layer_sizes=(16,), early_stopping=True, learning_rate_init=0.05,
              random_state=0, target="cpu", dtype="float64")
    m = MLPClassifier(n_iter_no_change=3, max_iter=200, **kw).fit(X, y)
    scores = m.validation_scores_
    best = int(np.argmax(scores))                  # the first epoch with the best score
    assert m.best_validation_score_ == scores[best] and m.best_loss_ is None
    assert len(scores) == m.n_iter_ > best + 3           # stopped after 3 epochs without gain
    assert 1 <= best and scores[-1] < scores[best]       # the last epoch is not the best
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        twin = MLPClassifier(n_iter_no_change=best + 1, max_iter=best + 1, **kw).fit(X, y)
    assert twin.n_iter_ == best + 1 and twin.validation_scores_ == scores[:best + 1]
    for a, b in zip(m.coefs_ + m.intercepts_, twin.coefs_ + twin.intercepts_):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(m.predict_proba(X), twin.predict_proba(X))


def test_convergence_warning_and_tol_stopping():
    X, y = datasets.load_iris(return_X_y=True)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        MLPClassifier(max_iter=3, random_state=0).fit(X, y)
    m = MLPClassifier(max_iter=5000, tol=1e-2, n_iter_no_change=2, random_state=0).fit(X, y)
    assert m.n_iter_ < 5000


def test_learning_rate_schedules_for_sgd():
    X, y = datasets.load_iris(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        inv = MLPClassifier(solver="sgd", learning_rate="invscaling", power_t=0.5, max_iter=4,
                            learning_rate_init=0.1, random_state=0).fit(X, y)
    assert inv._trainer.lr == pytest.approx(0.1 / (4 * 150 + 1) ** 0.5)
    ada = MLPClassifier(solver="sgd", learning_rate="adaptive", tol=10.0, n_iter_no_change=1,
                        learning_rate_init=0.1, max_iter=6, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ada.fit(X, y)
    assert ada._trainer.lr < 0.1 / 5 + 1e-12           # divided by 5 at least once


def test_pipeline_grid_search_cross_val_clone_pickle():
    X, y = datasets.load_iris(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=200, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(pipe, X, y, cv=3)
        grid = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-2]}, cv=3, n_jobs=2)
        grid.fit(X, y)
    assert scores.mean() > 0.85 and grid.best_score_ > 0.85
    c = clone(grid.best_estimator_[-1])
    assert c.get_params()["alpha"] == grid.best_params_["mlpclassifier__alpha"]
    fitted = grid.best_estimator_
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict_proba(X), fitted.predict_proba(X))


def test_dataframe_feature_names_and_sparse_accepted():
    pd = pytest.importorskip("pandas")
    X, y = datasets.load_iris(return_X_y=True, as_frame=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = MLPClassifier(max_iter=20, random_state=0).fit(X, y)
    assert list(m.feature_names_in_) == list(X.columns)
    assert isinstance(X, pd.DataFrame)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        s = MLPClassifier(max_iter=20, random_state=0).fit(sparse.csr_matrix(X.values), y)
    np.testing.assert_allclose(s.coefs_[0], m.coefs_[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kwargs", [dict(activation="softplus"), dict(solver="rmsprop"),
                                    dict(alpha=-1.0), dict(batch_size=0), dict(max_iter=0),
                                    dict(momentum=1.5), dict(learning_rate="cyclic"),
                                    dict(target="gpu"), dict(dtype="float16"),
                                    dict(hidden_layer_sizes=(10, 0))])
def test_invalid_parameters(kwargs):
    X, y = datasets.load_iris(return_X_y=True)
    with pytest.raises(ValueError):
        MLPClassifier(**kwargs).fit(X, y)


def test_class_weight_and_sample_weight_move_the_fit_the_expected_way():
    X, y = datasets.make_classification(n_samples=600, n_features=6, weights=[0.9, 0.1],
                                        class_sep=0.5, random_state=0)
    kw = dict(hidden_layer_sizes=(16,), max_iter=60, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain = MLPClassifier(**kw).fit(X, y)
        balanced = MLPClassifier(class_weight="balanced", **kw).fit(X, y)
        weighted = MLPClassifier(**kw).fit(X, y, sample_weight=np.where(y == 1, 9.0, 1.0))
        by_dict = MLPClassifier(class_weight={0: 1.0, 1: 9.0}, **kw).fit(X, y)
    minority = y == 1
    recall = [np.mean(m.predict(X)[minority] == 1) for m in (plain, balanced, weighted)]
    assert recall[1] > recall[0] + 0.1 and recall[2] > recall[0] + 0.1
    np.testing.assert_allclose(by_dict.predict_proba(X), weighted.predict_proba(X), rtol=1e-6)
    with pytest.raises(ValueError):
        MLPClassifier(**kw).fit(X, y, sample_weight=np.ones(5))


def test_poisson_regression_on_counts():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(800, 4))
    rate = np.exp(0.5 * X[:, 0] - 0.3 * X[:, 1] + 0.5)
    y = rng.poisson(rate)
    m = MLPRegressor(loss="poisson", hidden_layer_sizes=(16,), max_iter=200, random_state=0,
                     learning_rate_init=0.01).fit(X, y)
    pred = m.predict(X)
    assert m.out_activation_ == "exp" and np.all(pred > 0)
    assert np.corrcoef(pred, rate)[0, 1] > 0.9
    assert abs(pred.mean() - y.mean()) < 0.1 * y.mean()
    theirs = SkMLPRegressor(loss="poisson", hidden_layer_sizes=(16,), max_iter=200,
                            random_state=0, learning_rate_init=0.01).fit(X, y)
    assert m.loss_ == pytest.approx(theirs.loss_, rel=0.2)      # scikit-learn's units
    with pytest.raises(ValueError, match="negative"):
        MLPRegressor(loss="poisson").fit(X, y - 5.0)


def test_dropout_regularises_training_and_is_off_at_predict_time():
    """predict, predict_proba and score of a model trained with dropout are the plain
    forward pass of coefs_ and intercepts_ (the float64 reference), with no mask."""
    X, y = datasets.load_digits(return_X_y=True)
    X = X / 16.0
    kw = dict(hidden_layer_sizes=(64,), max_iter=30, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain = MLPClassifier(**kw).fit(X, y)
        dropped = MLPClassifier(dropout=0.5, **kw).fit(X, y)
    assert dropped.loss_ > plain.loss_               # noisier training loss
    expected = ref.output(dropped.coefs_, dropped.intercepts_, X, ["relu"], "cross_entropy")
    np.testing.assert_allclose(dropped.predict_proba(X), expected, rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(dropped.predict(X), dropped.classes_[expected.argmax(axis=1)])
    assert dropped.score(X, y) == np.mean(expected.argmax(axis=1) == y)
    assert dropped.score(X, y) > 0.9                   # still learns
    with pytest.raises(ValueError):
        MLPClassifier(dropout=1.0).fit(X, y)

    Xr, yr = datasets.make_regression(n_samples=120, n_features=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg = MLPRegressor(hidden_layer_sizes=(16, 8), activation="tanh", dropout=[0.5, 0.2],
                           max_iter=5, random_state=0).fit(Xr, yr / 100)
    expected = ref.output(reg.coefs_, reg.intercepts_, Xr, ["tanh", "tanh"], "mse")
    np.testing.assert_allclose(reg.predict(Xr), expected[:, 0], rtol=1e-10, atol=1e-14)


def test_warm_start_needs_the_same_classes_and_partial_fit_refuses_early_stopping():
    X, y = datasets.load_iris(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = MLPClassifier(max_iter=5, warm_start=True, random_state=0).fit(X, y)
        with pytest.raises(ValueError, match="same classes"):
            m.fit(X[y < 2], y[y < 2])
        with pytest.raises(ValueError, match="same classes"):
            m.fit(X, y + 10)
    assert list(m.classes_) == [0, 1, 2] and m.predict(X).shape == (150,)
    with pytest.raises(ValueError, match="early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(X, y, classes=[0, 1, 2])


def test_multi_output_squared_error_loss_in_scikit_learns_units():
    """Half the mean squared error (over outputs too): with noise of variance 1 on every
    output both libraries' loss_ settles near 0.5, not 0.5 x 3."""
    X, y = datasets.make_regression(n_samples=400, n_features=5, n_targets=3, random_state=0)
    y = y / 100 + np.random.default_rng(0).normal(size=y.shape)
    kw = dict(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=100, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPRegressor(**kw).fit(X, y)
        theirs = SkMLPRegressor(**kw).fit(X, y)
    assert 0.3 < theirs.loss_ < 0.7
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=0.2)


def test_n_threads_with_a_single_threaded_target_is_refused_before_training():
    """target='cpu' runs one thread and 'cuda' the GPU: n_threads=2 with them was silently
    ignored. It is refused at fit, before any work, and a fitted model is kept as it was;
    under target='auto' n_threads picks the plan (1: 'cpu')."""
    X, y = datasets.load_iris(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, warm_start=True,
                          target="cpu").fit(X, y)
        before = [c.copy() for c in m.coefs_]
        for target in ("cpu", "cuda"):
            with pytest.raises(ValueError, match=f"n_threads=2 .*target='{target}'"):
                MLPClassifier(target=target, n_threads=2).fit(X, y)
        with pytest.raises(ValueError, match="n_threads=2 .*target='cpu'"):
            m.set_params(n_threads=2).fit(X, y)
        assert m.n_iter_ == 2 and all(np.array_equal(a, b) for a, b in zip(m.coefs_, before))
        one = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, n_threads=1).fit(X, y)
    assert one._trainer.config["target"] == "cpu"


def test_target_auto_uses_the_threads_this_fit_may_have(monkeypatch):
    """target='auto' (the default): 'parallel' in the main thread with more than one Numba
    thread; 'cpu' in joblib's process workers (OMP_NUM_THREADS=1 there), off the main thread
    and with n_threads=1."""
    import os
    import threading

    import numba

    from fastbp.estimators import resolve_target
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(numba, "get_num_threads", lambda: 4)
    assert resolve_target("auto", None) == "parallel"
    assert resolve_target("auto", 1) == "cpu"
    assert resolve_target("cpu", None) == "cpu"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert resolve_target("auto", None) == "cpu"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    got = []
    thread = threading.Thread(target=lambda: got.append(resolve_target("auto", None)))
    thread.start()
    thread.join()
    assert got == ["cpu"] and resolve_target("auto", None) == "parallel"
    monkeypatch.undo()
    expected = "parallel" if resolve_target("auto", None) == "parallel" else "cpu"
    assert expected == ("parallel" if numba.get_num_threads() > 1 and
                        os.environ.get("OMP_NUM_THREADS", "2") != "1" else "cpu")
    X, y = datasets.load_iris(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2).fit(X, y)
    assert m.get_params()["target"] == "auto" and m._trainer.config["target"] == expected
