"""Same arguments and random_state, same model as scikit-learn's MLP.

Every case fits scikit-learn's estimator and fastbp's on the same data with the same
arguments and compares everything a user can read: coefs_ and intercepts_ (float64: 1e-9
relative; only summation order differs), n_iter_, t_, loss_, loss_curve_, best_loss_,
validation_scores_, best_validation_score_, classes_, predictions and probabilities.
"""
import warnings

import numpy as np
import pytest
from sklearn import datasets
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier as SkMLPClassifier
from sklearn.neural_network import MLPRegressor as SkMLPRegressor
from scipy import sparse
from sklearn.utils.class_weight import compute_sample_weight

from fastbp import MLPClassifier, MLPRegressor

RTOL = 1e-9


def _iris():
    X, y = datasets.load_iris(return_X_y=True)
    return (X - X.mean(0)) / X.std(0), y


def _data(kind):
    X, y = _iris()
    if kind == "multiclass":
        return X, y
    if kind == "binary":
        return X, np.where(y == 1, "yes", "no")
    if kind == "multilabel":
        return X, np.stack([y == 0, y == 1, X[:, 0] > 0], axis=1).astype(int)
    if kind == "regression":
        return X[:, :3], X[:, 3]
    if kind == "regression2":
        return X[:, :2], X[:, 2:]
    if kind == "counts":
        return X[:, :3], np.round(np.exp(X[:, 3]))
    raise ValueError(kind)


def _sparse(X, fmt="csr"):
    """X with its small entries dropped, as a sparse matrix of format `fmt` with unsorted
    indices and a duplicated entry in its first row (summed, as scipy sums them)."""
    X = np.where(np.abs(X) < 0.6, 0.0, X)
    X[5] = 0.0                                            # an empty row
    S = sparse.csr_matrix(X)
    first = S.indptr[1]
    data = np.concatenate([S.data[:first][::-1] * 0.5, S.data[:first] * 0.5, S.data[first:]])
    indices = np.concatenate([S.indices[:first][::-1], S.indices[:first], S.indices[first:]])
    indptr = np.concatenate([[0], S.indptr[1:] + first])
    S = sparse.csr_matrix((data, indices, indptr), shape=X.shape)
    np.testing.assert_allclose(S.toarray(), X)
    return S.asformat(fmt)


def _fit_both(kind, fit=None, sparse_format=None, target="cpu", **kw):
    """(scikit-learn's estimator, fastbp's) fitted on the same data and arguments; with
    sparse_format, on the same sparse X; fastbp's on `target`."""
    X, y = _data(kind)
    if sparse_format:
        X = _sparse(X, sparse_format)
    sk_cls, fb_cls = ((SkMLPRegressor, MLPRegressor) if kind.startswith(("regression", "counts"))
                      else (SkMLPClassifier, MLPClassifier))
    fb_kw = dict(kw, target=target)
    pair = sk_cls(**kw), fb_cls(**fb_kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for est in pair:
            (fit or (lambda e: e.fit(X, y)))(est)
    return pair, X


def assert_same_model(sk, fb, X, rtol=RTOL):
    for name in ("coefs_", "intercepts_"):
        ours, theirs = getattr(fb, name), getattr(sk, name)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max(),
                                       err_msg=name)
    for name in ("n_iter_", "t_", "n_layers_", "n_outputs_", "out_activation_"):
        assert getattr(fb, name) == getattr(sk, name), name
    for name in ("loss_", "best_loss_", "best_validation_score_", "loss_curve_",
                 "validation_scores_"):
        if hasattr(sk, name) or hasattr(fb, name):
            a, b = getattr(fb, name), getattr(sk, name)
            if b is None:
                assert a is None, name
            else:
                np.testing.assert_allclose(a, b, rtol=rtol * 100, err_msg=name)
    if hasattr(sk, "classes_"):
        np.testing.assert_array_equal(fb.classes_, sk.classes_)
        np.testing.assert_allclose(fb.predict_proba(X), sk.predict_proba(X), rtol=1e-7,
                                   atol=1e-9)
    np.testing.assert_array_equal(fb.predict(X), sk.predict(X)) if hasattr(sk, "classes_") \
        else np.testing.assert_allclose(fb.predict(X), sk.predict(X), rtol=1e-7, atol=1e-9)


SOLVERS = {
    "adam": dict(solver="adam", learning_rate_init=0.01),
    "sgd": dict(solver="sgd", learning_rate_init=0.1),
    "sgd-no-nesterov": dict(solver="sgd", nesterovs_momentum=False, learning_rate_init=0.1),
    "sgd-no-momentum": dict(solver="sgd", momentum=0.0, learning_rate_init=0.1),
    "sgd-invscaling": dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.5),
    # the learning rate is divided by 5 several times (tol large): the momentum's velocity
    # must carry over as scikit-learn's does
    "sgd-adaptive": dict(solver="sgd", learning_rate="adaptive", tol=0.05,
                         n_iter_no_change=2, learning_rate_init=0.2),
    "lbfgs": dict(solver="lbfgs"),
}


@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel", "regression",
                                  "counts"])
def test_every_solver_and_problem_gives_scikit_learns_model(solver, kind):
    kw = dict(hidden_layer_sizes=(7,), max_iter=15, random_state=0, **SOLVERS[solver])
    if kind == "counts":
        kw.update(loss="poisson")
    (sk, fb), X = _fit_both(kind, **kw)
    assert_same_model(sk, fb, X)


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_every_activation(activation, solver):
    (sk, fb), X = _fit_both("multiclass", hidden_layer_sizes=(6, 5), activation=activation,
                            solver=solver, max_iter=12, random_state=1)
    assert_same_model(sk, fb, X)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel", "regression"])
@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_early_stopping_split_scores_and_restored_weights(kind, solver):
    """The split (stratified for binary targets only, as scikit-learn), the validation
    scores and the best weights restored; n_iter_no_change small so it stops early."""
    (sk, fb), X = _fit_both(kind, hidden_layer_sizes=(6,), solver=solver, max_iter=40,
                            early_stopping=True, n_iter_no_change=3, validation_fraction=0.2,
                            random_state=3, learning_rate_init=0.05)
    assert sk.n_iter_ < 40 or kind == "regression"
    assert_same_model(sk, fb, X)


@pytest.mark.parametrize("batch_size", ["auto", 1, 17, 64, 150, 500])
def test_batch_sizes_and_a_partial_last_batch(batch_size):
    (sk, fb), X = _fit_both("multiclass", hidden_layer_sizes=(5,), solver="sgd",
                            batch_size=batch_size, max_iter=5, random_state=0)
    assert_same_model(sk, fb, X)


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
@pytest.mark.parametrize("kind", ["multiclass", "regression"])
def test_sample_weight_and_alpha(solver, kind):
    X, _ = _data(kind)
    w = np.random.default_rng(0).uniform(0.2, 3.0, X.shape[0])
    X_, y = _data(kind)
    (sk, fb), X = _fit_both(kind, fit=lambda e: e.fit(X_, y, sample_weight=w),
                            hidden_layer_sizes=(6,), solver=solver, alpha=0.3, max_iter=10,
                            random_state=2, batch_size=32)
    assert_same_model(sk, fb, X)


def test_no_shuffle_multi_output_regression_and_random_state_instance():
    (sk, fb), X = _fit_both("regression2", hidden_layer_sizes=(6,), shuffle=False,
                            max_iter=8, random_state=None if False else 5)
    assert_same_model(sk, fb, X)
    # a RandomState instance is used (and advanced) as scikit-learn does
    X, y = _data("multiclass")
    rs_sk, rs_fb = np.random.RandomState(7), np.random.RandomState(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = SkMLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=rs_sk).fit(X, y)
        fb = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=rs_fb,
                           target="cpu").fit(X, y)
    assert_same_model(sk, fb, X)
    assert rs_sk.randint(1 << 30) == rs_fb.randint(1 << 30)


@pytest.mark.parametrize("solver", ["adam", "sgd-invscaling", "sgd-adaptive"])
def test_warm_start_sequences(solver):
    """fit, then fit again with warm_start: a new optimizer each call, t_, loss_curve_ and
    the stopping counters carried over, n_iter_ the latest call's epochs."""
    def three_fits(est):
        X, y = _data("multiclass")
        est.set_params(warm_start=True)
        for _ in range(3):
            est.fit(X, y)
    (sk, fb), X = _fit_both("multiclass", fit=three_fits, hidden_layer_sizes=(5,),
                            max_iter=4, random_state=0, **SOLVERS[solver])
    assert fb.n_iter_ == sk.n_iter_ == 4
    assert len(fb.loss_curve_) == 12
    assert_same_model(sk, fb, X)


@pytest.mark.parametrize("kind", ["multiclass", "multilabel", "regression"])
@pytest.mark.parametrize("solver", ["adam", "sgd-invscaling"])
def test_partial_fit_sequences(kind, solver):
    """partial_fit on chunks of different sizes (so batch='auto' changes): the optimizer
    state carries over, each call reseeds its shuffle from random_state."""
    X, y = _data(kind)
    classes = {"multiclass": [0, 1, 2], "multilabel": [0, 1, 2]}.get(kind)

    def chunks(est):
        for lo, hi in ((0, 60), (60, 150), (0, 150), (30, 100)):
            if classes is None:
                est.partial_fit(X[lo:hi], y[lo:hi])
            else:
                est.partial_fit(X[lo:hi], y[lo:hi], classes=classes)
    (sk, fb), X = _fit_both(kind, fit=chunks, hidden_layer_sizes=(5,), random_state=4,
                            **SOLVERS[solver])
    assert fb.n_iter_ == sk.n_iter_ == 1
    assert_same_model(sk, fb, X)


def test_class_weight_equals_scikit_learn_with_the_same_sample_weight():
    """class_weight has no scikit-learn MLP counterpart; it is the sample weights of
    compute_sample_weight, which scikit-learn's MLP takes."""
    X, y = _data("multiclass")
    keep = np.r_[0:50, 50:70, 100:150]
    X, y = X[keep], y[keep]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = SkMLPClassifier(hidden_layer_sizes=(5,), max_iter=8, random_state=0).fit(
            X, y, sample_weight=compute_sample_weight("balanced", y))
        fb = MLPClassifier(hidden_layer_sizes=(5,), max_iter=8, random_state=0,
                           class_weight="balanced", target="cpu").fit(X, y)
    assert_same_model(sk, fb, X)


def test_float32_is_close():
    """float32 data trains in float32 in both libraries: the same model to float32
    rounding, amplified over 20 epochs (stated tolerance: 1e-4 relative)."""
    X, y = _data("multiclass")
    X = X.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = SkMLPClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=0).fit(X, y)
        fb = MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=0,
                           target="cpu").fit(X, y)
    assert fb.coefs_[0].dtype == np.float32
    for a, b in zip(fb.coefs_ + fb.intercepts_, sk.coefs_ + sk.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
    np.testing.assert_allclose(fb.loss_curve_, sk.loss_curve_, rtol=1e-5)


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_parallel_target_equals_cpu(solver):
    X, y = datasets.load_digits(return_X_y=True)
    X = X / 16.0
    kw = dict(hidden_layer_sizes=(64,), solver=solver, max_iter=3, random_state=0,
              batch_size=128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cpu = MLPClassifier(target="cpu", **kw).fit(X, y)
        par = MLPClassifier(target="parallel", n_threads=2, **kw).fit(X, y)
        sk = SkMLPClassifier(**kw).fit(X, y)
    assert_same_model(cpu, par, X, rtol=1e-9)
    assert_same_model(sk, par, X, rtol=1e-9)


@pytest.mark.parametrize("activation", ["leaky_relu", "gelu"])
def test_fastbp_only_activations_and_dropout_have_no_scikit_learn_counterpart(activation):
    """leaky_relu, gelu and dropout are fastbp's own: nothing to compare against; they
    train (dropout=0 is the model above)."""
    X, y = _data("multiclass")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = MLPClassifier(hidden_layer_sizes=(16,), activation=activation, dropout=0.1,
                          max_iter=60, random_state=0, learning_rate_init=0.01).fit(X, y)
    assert m.score(X, y) > 0.85


# ------------------------------------------------- behaviours that differed from scikit-learn

def test_n_iter_counts_the_latest_calls_epochs():
    X, y = _data("multiclass")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = MLPClassifier(solver="sgd", warm_start=True, max_iter=3, target="cpu").fit(X, y)
        m.fit(X, y)
    assert m.n_iter_ == 3 and m.t_ == 6 * X.shape[0]
    p = MLPRegressor(hidden_layer_sizes=(4,), target="cpu")
    for _ in range(3):
        p.partial_fit(X[:, :3], X[:, 3])
    assert p.n_iter_ == 1 and p.t_ == 3 * X.shape[0]


def test_non_finite_weights_raise_a_value_error():
    rng = np.random.RandomState(0)
    X = np.finfo(float).max * rng.uniform(size=(10, 2))
    y = rng.uniform(size=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for est in (SkMLPRegressor(), MLPRegressor()):
            with pytest.raises(ValueError, match="non-finite parameter weights"):
                est.fit(X, y)


def test_early_stopping_with_a_diverging_loss_restores_the_best_finite_weights():
    X, y = datasets.load_iris(return_X_y=True)
    kw = dict(activation="identity", solver="sgd", learning_rate_init=1, max_iter=20,
              early_stopping=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SkMLPRegressor(**kw).fit(X, y)
        fb = MLPRegressor(target="cpu", **kw).fit(X, y)
    assert np.isnan(fb.validation_scores_).any()
    assert fb.n_iter_ == sk.n_iter_ == 20
    assert all(np.isfinite(c).all() for c in fb.coefs_)
    np.testing.assert_allclose(fb.best_validation_score_, sk.best_validation_score_,
                               rtol=1e-9)
    for a, b in zip(fb.coefs_ + fb.intercepts_, sk.coefs_ + sk.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-9)
    np.testing.assert_array_equal(np.isnan(fb.validation_scores_),
                                  np.isnan(sk.validation_scores_))


def test_multilabel_partial_fit():
    X, Y = datasets.make_multilabel_classification(n_samples=60, n_classes=5, random_state=0)
    sk = SkMLPClassifier(solver="sgd", random_state=0).partial_fit(X, Y, classes=[0, 1, 2, 3, 4])
    fb = MLPClassifier(solver="sgd", random_state=0, target="cpu").partial_fit(
        X, Y, classes=[0, 1, 2, 3, 4])
    assert fb.predict(X).shape == (60, 5)
    assert_same_model(sk, fb, X)


def test_coefs_and_intercepts_can_be_assigned():
    X, y = _data("multiclass")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, target="cpu").fit(X, y)
    new = [np.full_like(c, 0.5) for c in m.coefs_]
    m.coefs_ = new
    m.intercepts_ = [np.zeros_like(b) for b in m.intercepts_]
    assert all(np.all(c == 0.5) for c in m.coefs_)
    np.testing.assert_allclose(m.predict_proba(X), 1 / 3)
    with pytest.raises(ValueError, match=r"coefs_\[1\] must have shape \(4, 3\)"):
        m.coefs_ = [new[0], np.zeros((3, 3))]
    assert np.all(m.coefs_[0] == 0.5)          # nothing written when a shape is wrong
    # item assignment changes the model too, as in scikit-learn's list (it was lost: each
    # access gave a new list)
    m.coefs_[1] = np.ones((4, 3))
    m.intercepts_[1] = np.full(3, 2.0)
    assert np.all(m.coefs_[1] == 1) and np.all(m.intercepts_[1] == 2)
    m.coefs_[0:1] = [np.full((4, 4), 0.25)]
    assert np.all(m.coefs_[0] == 0.25)
    with pytest.raises(ValueError, match=r"coefs_\[1\] must have shape \(4, 3\)"):
        m.coefs_[-1] = np.zeros((3, 3))
    with pytest.raises(TypeError, match="layers cannot be added or removed"):
        m.coefs_.append(np.zeros((3, 3)))
    assert np.all(m.coefs_[1] == 1)
    import copy
    import pickle
    for saved in (copy.deepcopy(m.coefs_), pickle.loads(pickle.dumps(m.coefs_))):
        assert type(saved) is list and np.all(saved[1] == 1)
        saved.append(None)                  # a plain list, apart from the model
        m.coefs_[1][...] = 3
        assert np.all(saved[1] == 1)


def test_error_messages_list_the_users_labels():
    X, _ = _data("multiclass")
    y = np.where(X[:, 0] > 0, "True", "False")
    m = MLPClassifier(hidden_layer_sizes=(3,), target="cpu")
    m.partial_fit(X, y, classes=["False", "True"])
    with pytest.raises(ValueError, match=r"'True'") as info:
        m.partial_fit(X, np.where(y == "True", "Maybe", y))
    assert "Maybe" in str(info.value)
    w = MLPClassifier(hidden_layer_sizes=(3,), warm_start=True, max_iter=2, target="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        w.fit(X, y)
        with pytest.raises(ValueError, match=r"'False' 'True'"):
            w.fit(X, np.full(X.shape[0], "True"))


def test_regressor_passes_check_regressors_train_as_scikit_learns_does():
    from sklearn.utils.estimator_checks import check_regressors_train
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check_regressors_train("MLPRegressor", MLPRegressor(max_iter=50))


@pytest.mark.parametrize("solver", ["adam", "sgd", "sgd-invscaling", "lbfgs"])
@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel", "regression",
                                  "counts"])
@pytest.mark.parametrize("sparse_format", ["csr", "csc"])
def test_sparse_X_gives_scikit_learns_model_on_the_same_sparse_X(sparse_format, kind,
                                                                   solver):
    """scikit-learn's MLP takes CSR and CSC: fastbp's fit on the same sparse X (an empty
    row, unsorted indices, a duplicate entry) is its model to rounding."""
    kw = dict(hidden_layer_sizes=(7,), max_iter=15, random_state=0, **SOLVERS[solver])
    if kind == "counts":
        kw.update(loss="poisson")
    (sk, fb), X = _fit_both(kind, sparse_format=sparse_format, **kw)
    assert sparse.issparse(X)
    assert_same_model(sk, fb, X)


@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_sparse_X_early_stopping_weights_and_partial_fit(target):
    X, y = _data("multiclass")
    S = _sparse(X)
    w = np.random.default_rng(0).random(X.shape[0]) + 0.5
    kw = dict(hidden_layer_sizes=(6,), max_iter=30, early_stopping=True, n_iter_no_change=3,
              validation_fraction=0.2, random_state=3, learning_rate_init=0.05)
    (sk, fb), _ = _fit_both("multiclass", fit=lambda e: e.fit(S, y, sample_weight=w),
                            target=target, **kw)
    assert_same_model(sk, fb, S)

    def chunks(e):
        for lo in range(0, 150, 50):
            e.partial_fit(S[lo:lo + 50], y[lo:lo + 50], classes=[0, 1, 2])

    (sk, fb), _ = _fit_both("multiclass", fit=chunks, hidden_layer_sizes=(5,),
                            random_state=0, target=target)
    assert_same_model(sk, fb, S)


def test_sparse_float32_X_trains_in_float32_as_scikit_learn():
    X, y = _data("multiclass")
    S = _sparse(X).astype(np.float32)
    (sk, fb), _ = _fit_both("multiclass", fit=lambda e: e.fit(S, y), hidden_layer_sizes=(6,),
                            max_iter=20, random_state=0)
    assert fb.coefs_[0].dtype == sk.coefs_[0].dtype == np.float32
    for a, b in zip(fb.coefs_ + fb.intercepts_, sk.coefs_ + sk.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
    np.testing.assert_allclose(fb.loss_curve_, sk.loss_curve_, rtol=1e-5)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_no_l2_term(solver):
    """alpha=0: the kernel records no weight norms (nothing to add to the loss)."""
    (sk, fb), X = _fit_both("multiclass", hidden_layer_sizes=(6,), solver=solver, alpha=0.0,
                            max_iter=6, random_state=0)
    assert_same_model(sk, fb, X)


# ---------------------------------------------------------------- settings changed between calls

@pytest.mark.parametrize("first,second", [
    (dict(solver="adam"), dict(solver="sgd")),
    (dict(solver="sgd", learning_rate_init=0.1), dict(solver="adam")),
    (dict(solver="sgd", momentum=0.0, learning_rate_init=0.1), dict(momentum=0.9)),
    (dict(solver="adam", learning_rate_init=0.01), dict(activation="tanh")),
    (dict(solver="lbfgs"), dict(activation="logistic")),
])
def test_a_warm_start_trains_with_the_settings_of_its_own_call(first, second):
    """scikit-learn makes a new optimizer at every fit, from the solver and momentum set
    then, and reads `activation` at every forward pass: fastbp kept the first fit's
    optimizer (Adam after a switch to SGD; no momentum buffer after momentum 0 -> 0.9) and
    activation."""
    def two_fits(est):
        X, y = _data("multiclass")
        est.fit(X, y)
        est.set_params(warm_start=True, **second)
        est.fit(X, y)
    (sk, fb), X = _fit_both("multiclass", fit=two_fits, hidden_layer_sizes=(5,), max_iter=4,
                            random_state=0, **first)
    assert_same_model(sk, fb, X)


def test_predictions_follow_an_activation_set_after_fitting():
    (sk, fb), X = _fit_both("multiclass", hidden_layer_sizes=(5,), max_iter=4, random_state=0)
    for est in (sk, fb):
        est.set_params(activation="tanh")
    assert_same_model(sk, fb, X)


@pytest.mark.parametrize("change", [dict(momentum=0.2), dict(nesterovs_momentum=False),
                                    dict(learning_rate_init=0.3), dict(power_t=0.1),
                                    dict(beta_1=0.5, solver="adam"), dict(epsilon=1e-3,
                                                                          solver="adam")])
def test_partial_fit_keeps_the_optimizer_it_made(change):
    """scikit-learn's optimizer keeps the settings it was made with across partial_fit
    calls; fastbp read them anew at every call."""
    change = dict(change)
    solver = change.pop("solver", "sgd")
    X, y = _data("multiclass")

    def calls(est):
        est.partial_fit(X, y, classes=[0, 1, 2])
        est.set_params(**change)
        est.partial_fit(X, y)
        est.partial_fit(X[:70], y[:70])
    kw = dict(learning_rate="invscaling", learning_rate_init=0.2) if solver == "sgd" else {}
    (sk, fb), X = _fit_both("multiclass", fit=calls, hidden_layer_sizes=(5,), random_state=0,
                            solver=solver, **kw)
    assert_same_model(sk, fb, X)


@pytest.mark.parametrize("kind", ["regression", "multiclass"])
def test_warm_starts_with_early_stopping_continue_from_the_restored_weights(kind):
    """After early stopping, scikit-learn's coefs_ are its best copy itself, so a warm start
    that never beats the best score ends with its last weights (fastbp restored the
    earlier fit's best copy)."""
    def three_fits(est):
        X, y = _data(kind)
        for _ in range(3):
            est.fit(X, y)
    (sk, fb), X = _fit_both(kind, fit=three_fits, hidden_layer_sizes=(5,), random_state=0,
                            max_iter=5, early_stopping=True, warm_start=True,
                            learning_rate_init=0.05)
    assert_same_model(sk, fb, X)


def test_an_interrupted_fit_keeps_the_epochs_done_as_scikit_learn(monkeypatch):
    """Ctrl-C during fit: scikit-learn warns "Training interrupted by user.", stops and
    restores the best weights (early stopping); fastbp's KeyboardInterrupt escaped fit.
    Both are interrupted as their fourth epoch starts."""
    from fastbp import engine
    X, y = _data("multiclass")
    kw = dict(hidden_layer_sizes=(5,), max_iter=20, random_state=0, early_stopping=True,
              learning_rate_init=0.02)
    sk_calls, fb_calls = [], []
    n_batches = 1                              # 135 training rows: one batch of 'auto'
    backprop = SkMLPClassifier._backprop
    run = engine._CpuEpochs.run

    def sk_interrupted(self, *args):
        sk_calls.append(1)
        if len(sk_calls) > 3 * n_batches:
            raise KeyboardInterrupt
        return backprop(self, *args)

    def fb_interrupted(self, *args):
        fb_calls.append(1)
        if len(fb_calls) > 3:
            raise KeyboardInterrupt
        return run(self, *args)
    monkeypatch.setattr(SkMLPClassifier, "_backprop", sk_interrupted)
    monkeypatch.setattr(engine._CpuEpochs, "run", fb_interrupted)
    sk, fb = SkMLPClassifier(**kw), MLPClassifier(target="cpu", **kw)
    for est in (sk, fb):
        with pytest.warns(UserWarning, match="Training interrupted by user"):
            try:
                assert est.fit(X, y) is est
            except KeyboardInterrupt:        # (re-raised, it would stop the test run)
                pytest.fail(f"KeyboardInterrupt escaped {type(est).__module__}'s fit")
    assert fb.n_iter_ == sk.n_iter_ == 3
    assert_same_model(sk, fb, X)


def test_a_batch_of_zero_weight_raises_scikit_learns_zero_division_error():
    """A batch whose rows all weigh 0: scikit-learn raises ZeroDivisionError; fastbp
    trained on with NaN losses. Without shuffling it is found before any training."""
    X, y = _data("regression")
    w = np.r_[np.zeros(10), np.ones(140)]
    kw = dict(solver="sgd", batch_size=10, shuffle=False, max_iter=2)
    with pytest.raises(ZeroDivisionError, match="Weights sum to zero"):
        SkMLPRegressor(**kw).fit(X, y, sample_weight=w)
    m = MLPRegressor(**kw)
    with pytest.raises(ZeroDivisionError, match="Weights sum to zero.*batch 0"):
        m.fit(X, y, sample_weight=w)
    assert m.loss_curve_ == []


def test_the_regressors_partial_fit_runs_lbfgs_as_scikit_learns():
    """scikit-learn's MLPRegressor.partial_fit exists for every solver (its check tests the
    method, not its result) and with 'lbfgs' fits from the current weights."""
    def calls(est):
        X, y = _data("regression")
        est.partial_fit(X, y)
        est.partial_fit(X[:100], y[:100])
    (sk, fb), X = _fit_both("regression", fit=calls, solver="lbfgs", hidden_layer_sizes=(5,),
                            max_iter=5, random_state=0)
    assert_same_model(sk, fb, X)
    assert hasattr(MLPRegressor(solver="lbfgs"), "partial_fit")
    assert not hasattr(MLPClassifier(solver="lbfgs"), "partial_fit")


@pytest.mark.parametrize("sizes", [(3.5,), (3.0,), (True,), np.array([2.7])])
def test_hidden_layer_sizes_must_be_integers(sizes):
    X, y = _data("multiclass")
    with pytest.raises(TypeError):
        SkMLPClassifier(hidden_layer_sizes=sizes, max_iter=1).fit(X, y)
    with pytest.raises(TypeError, match="hidden_layer_sizes must hold integers"):
        MLPClassifier(hidden_layer_sizes=sizes, max_iter=1).fit(X, y)


def test_losses_are_numpy_floats_as_scikit_learns():
    (sk, fb), X = _fit_both("multiclass", hidden_layer_sizes=(5,), max_iter=3, random_state=0)
    for name in ("loss_", "best_loss_"):
        assert type(getattr(fb, name)) is type(getattr(sk, name)) is np.float64
    assert all(type(v) is np.float64 for v in fb.loss_curve_)


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
@pytest.mark.parametrize("weights", ["all negative", "some negative"])
def test_negative_sample_weights_as_scikit_learn(solver, weights):
    """scikit-learn's estimators take negative sample weights (a batch's loss is then
    sum(w l) / sum(w), as np.average's); fastbp refused them, and its kernel gave a batch
    of negative total weight no gradient. (The Trainer still refuses them.)"""
    X, y = _data("multiclass")
    w = -np.ones(150) if weights == "all negative" else np.r_[-np.ones(10), np.ones(140)]
    kw = dict(solver=solver, max_iter=5, random_state=0, hidden_layer_sizes=(5,))
    (sk, fb), X = _fit_both("multiclass", fit=lambda e: e.fit(X, y, sample_weight=w), **kw)
    assert_same_model(sk, fb, X)
    if solver != "lbfgs":
        (sk, fb), X = _fit_both("multiclass", fit=lambda e: e.fit(X, y, sample_weight=w),
                                early_stopping=True, **kw)
        assert_same_model(sk, fb, X)
    for est in (SkMLPClassifier(**kw), MLPClassifier(**kw)):
        with pytest.raises(ValueError, match="at least one non-zero"):
            est.fit(X, y, sample_weight=np.zeros(150))
    from fastbp import Trainer
    with pytest.raises(ValueError, match="sample_weight must hold finite weights >= 0"):
        Trainer([4, 5, 3]).fit(X, y, sample_weight=w, epochs=1, progress=False)
