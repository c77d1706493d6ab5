"""scikit-learn estimators over the Trainer: `MLPClassifier` and `MLPRegressor`.

Every constructor parameter of scikit-learn's MLPs keeps its name, default and meaning, and
for the same arguments and random_state the fitted model is scikit-learn's, to rounding:
the same initialisation, early-stopping split, shuffles, batches, optimizer rules, stopping
rules and reported losses (fastbp.sklearn_solvers runs scikit-learn's solvers on the
compiled kernels). Beyond scikit-learn: `class_weight`, `dropout`, `target`, `dtype` and
`n_threads`.
"""
import os
import threading
from numbers import Integral, Real

import numba
import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.metrics import accuracy_score, r2_score
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import (_check_partial_fit_first_call, type_of_target,
                                      unique_labels)
from sklearn.utils.validation import (_check_sample_weight, check_is_fitted, column_or_1d,
                                      validate_data)

from . import config as _config
from .data import check_sparse_X, check_X
from .engine import SPARSE_CPU_ONLY
from .sklearn_solvers import (NON_FINITE, StochasticSolver, fit_lbfgs, initial_params,
                              loss_scales)
from .trainer import Trainer

# scikit-learn's MLP takes these (others are converted to the first); fastbp converts CSC
# to CSR once per fit
SPARSE_FORMATS = ["csr", "csc"]
ACTIVATIONS = {"identity", "logistic", "tanh", "relu", "leaky_relu", "gelu"}


class _LayerArrays(list):
    """coefs_ / intercepts_: one view into the flat buffer per layer. Assigning an item
    copies into the model (its shape checked), as item assignment changes scikit-learn's
    lists of arrays; adding or removing layers is refused rather than silently lost."""

    def __init__(self, name, views):
        super().__init__(views)
        self._name = name

    def __setitem__(self, i, value):
        if isinstance(i, slice):
            at = range(*i.indices(len(self)))
            values = list(value)
            if len(values) != len(at):
                self._refuse()
            pairs = list(zip(at, values))
        else:
            pairs = [(range(len(self))[i], value)]
        arrays = []
        for j, v in pairs:          # all checked before any is written
            view, a = list.__getitem__(self, j), np.asarray(v)
            if a.shape != view.shape:
                raise ValueError(f"{self._name}[{j}] must have shape {view.shape}, got "
                                 f"{a.shape}")
            arrays.append((view, a))
        for view, a in arrays:
            view[...] = a

    def _refuse(self, *args, **kwargs):
        raise TypeError(f"{self._name} holds one array per layer of the fitted model: "
                        "layers cannot be added or removed (fit an estimator with other "
                        "hidden_layer_sizes)")

    append = extend = insert = pop = remove = clear = __delitem__ = _refuse
    __iadd__ = __imul__ = sort = reverse = _refuse

    def __reduce__(self):          # copies and pickles are plain lists (of copied arrays)
        return list, (list(self),)


def _stochastic(est):
    if est.solver not in ("sgd", "adam"):
        raise AttributeError(f"partial_fit is only available for stochastic optimizers. "
                             f"{est.solver} is not stochastic.")
    return True


def resolve_target(target, n_threads):
    """target='auto': 'parallel' (which itself runs small steps serially, see
    fastbp.kernels.choose_strategy) when more than one thread is available to this fit, else
    'cpu'. Off the main thread (joblib or Dask threads) and where OMP_NUM_THREADS limits
    this process to one thread (joblib's process workers), 'cpu': the workers already share
    the cores."""
    if target != "auto":
        return target
    threads = n_threads or numba.get_num_threads()
    limit = os.environ.get("OMP_NUM_THREADS", "")
    if limit.isdigit() and int(limit) > 0:
        threads = min(threads, int(limit))
    if threads <= 1 or threading.current_thread() is not threading.main_thread():
        return "cpu"
    return "parallel"


def _name_nonfinite_sparse(X):
    """Sparse X with a NaN or infinity stored: the ValueError that names its row and column
    (fastbp.data.check_sparse_X), before scikit-learn's validation, whose message names
    neither. Formats without a data array (LIL, DOK) are left to scikit-learn."""
    data = getattr(X, "data", None) if sparse.issparse(X) else None
    if isinstance(data, np.ndarray) and data.dtype.kind == "f" and X.shape[0] > 0 \
            and not np.isfinite(data).all():
        check_sparse_X(X.tocsr(), X.shape[1], data.dtype)


class _BaseMLP(BaseEstimator):
    _parameter_constraints = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(ACTIVATIONS)],
        "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"),
                             Options(Real, {np.inf})],
        "max_fun": [Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left"), "array-like"],
        "sparse_update": [StrOptions({"dense", "lazy"})],
        "target": [StrOptions({"auto", "cpu", "parallel", "cuda"})],
        "dtype": [None, StrOptions({"float32", "float64"})],
        "n_threads": [None, Interval(Integral, 1, None, closed="left")],
    }

    # ------------------------------------------------------------ subclass hooks
    # _validate_input(X, y, incremental, reset) -> (X, y, Y 2-D targets, row weights of
    #     class_weight or None); _kernel_targets(Y); _validation_targets(Y); _score_function

    def _hidden(self):
        sizes = self.hidden_layer_sizes
        if not hasattr(sizes, "__iter__"):
            sizes = [sizes]
        sizes = list(sizes)
        if not all(isinstance(s, Integral) and not isinstance(s, (bool, np.bool_))
                   for s in sizes):
            raise TypeError(f"hidden_layer_sizes must hold integers, got {sizes}.")
        if np.any(np.array(sizes) <= 0):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        return [int(s) for s in sizes]

    def _initialize(self, Y, layer_units, dtype, random_state):
        """scikit-learn's `_initialize`: the fitted attributes reset and the weights drawn
        from `random_state`, then the Trainer that holds them."""
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = Y.shape[1]
        self.n_layers_ = len(layer_units)
        loss = self._loss_for(Y)
        self._loss = loss
        self.out_activation_ = {"cross_entropy": "softmax", "binary_cross_entropy": "logistic",
                                "mse": "identity", "poisson": "exp"}[loss]
        self._scale, self._value_scale = loss_scales(loss, self.n_outputs_)
        self._trainer = self._new_trainer(layer_units, loss, self.dtype or dtype,
                                          resolve_target(self.target, self.n_threads),
                                          self.solver, self.momentum)
        params = initial_params(random_state, layer_units, self.activation,
                                self._trainer.engine.network.layout, self._trainer.dtype)
        self._trainer.engine.init(params)
        self._best_params = params.copy()
        # dropout has no scikit-learn counterpart: its masks' seed is drawn only when used
        self._dropout_seed = (int(random_state.randint(np.iinfo(np.int32).max))
                              if np.any(np.asarray(self._dropout(), dtype=float) > 0) else 0)
        if self.solver in ("sgd", "adam"):
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None

    def _dropout(self):
        """`dropout` as the Trainer takes it: one rate, or a list of one per hidden layer."""
        return self.dropout if isinstance(self.dropout, Real) else list(self.dropout)

    def _new_trainer(self, layer_units, loss, dtype, target, solver, momentum):
        """A Trainer for these sizes with the estimator's activation, dropout and
        sparse_update, and the buffers of `solver`'s optimizer: a momentum buffer for SGD
        with momentum, m and v for Adam, none for L-BFGS (the optimizer's numbers come from
        sklearn_solvers' Hyper at every epoch)."""
        sgd = solver == "sgd"
        return Trainer(
            layer_units, activation=self.activation, loss=loss,
            optimizer="adam" if solver == "adam" else "sgd", lr=self.learning_rate_init,
            batch_size=200, epochs=1, momentum=min(momentum, 1 - 1e-12) if sgd else 0.0,
            nesterov=bool(sgd and self.nesterovs_momentum and momentum > 0),
            betas=(self.beta_1, self.beta_2), eps=self.epsilon,
            weight_decay=self._scale * self.alpha, decay_per_weight=True,
            dropout=self._dropout(), sparse_update=self.sparse_update, shuffle=self.shuffle,
            target=target,
            dtype=dtype, seed=0, n_threads=self.n_threads if target == "parallel" else None)

    def _sync_trainer(self, optimizer=None):
        """scikit-learn reads `activation` at every forward pass and builds its optimizer
        from `solver` and `momentum` at every fit (or first partial_fit): when the Trainer
        was built for other settings (or for another dropout or explicit target), a new one
        replaces it with the same parameters, and the same optimizer state where the
        optimizer is unchanged. `optimizer`: the settings of the optimizer in use
        (sklearn_solvers.optimizer_settings), or None to keep the Trainer's."""
        t = self._trainer
        cfg = t.config
        if optimizer is None:
            solver = cfg["optimizer"]
            momentum = cfg["momentum"]
        else:
            solver, momentum = optimizer["solver"], optimizer["momentum"]
        wanted_opt = "adam" if solver == "adam" else "sgd"
        wanted_m = solver == "sgd" and momentum > 0
        target = cfg["target"] if self.target == "auto" else self.target
        dropout = _config.hidden_dropout({"layers": cfg["layers"], "dropout": self._dropout()})
        if (cfg["activation"] == self.activation and cfg["optimizer"] == wanted_opt
                and (cfg["momentum"] > 0) == wanted_m and cfg["target"] == target
                and _config.hidden_dropout(cfg) == dropout
                and cfg["sparse_update"] == self.sparse_update):
            return
        new = self._new_trainer(cfg["layers"], cfg["loss"], cfg["dtype"], target, solver,
                                momentum)
        state = t.engine.state()
        same = new.engine.m.shape == t.engine.m.shape and new.engine.v.shape == t.engine.v.shape \
            and new.config["optimizer"] == cfg["optimizer"]
        new.engine.set_state(**(state if same else {"params": state["params"]}))
        new.lr = t.lr
        self._trainer = new

    @property
    def coefs_(self):
        """Weight matrices (n_l, n_{l+1}): views into the flat buffer, so writing into them
        changes the model; assigning a list of arrays of the same shapes copies it in."""
        check_is_fitted(self, "_trainer")
        return _LayerArrays("coefs_", self._trainer.weights)

    @coefs_.setter
    def coefs_(self, values):
        self._assign("coefs_", self.coefs_, values)

    @property
    def intercepts_(self):
        """Bias vectors (n_{l+1},): views into the flat buffer (see coefs_)."""
        check_is_fitted(self, "_trainer")
        return _LayerArrays("intercepts_", self._trainer.biases)

    @intercepts_.setter
    def intercepts_(self, values):
        self._assign("intercepts_", self.intercepts_, values)

    @staticmethod
    def _assign(name, views, values):
        values = list(values)
        if len(values) != len(views):
            raise ValueError(f"{name} needs {len(views)} arrays, got {len(values)}")
        arrays = [np.asarray(v) for v in values]
        for i, (view, a) in enumerate(zip(views, arrays)):
            if a.shape != view.shape:
                raise ValueError(f"{name}[{i}] must have shape {view.shape}, got {a.shape}")
        for view, a in zip(views, arrays):     # all checked before any is written
            view[...] = a

    # ------------------------------------------------------------------- fitting

    def _fit(self, X, y, sample_weight, incremental):
        """scikit-learn's `_fit`: validate, (re)initialise on a first pass from a fresh
        check_random_state(random_state), run the solver, refuse non-finite weights."""
        hidden = self._hidden()
        _config.check_threads_for_target(self.n_threads, self.target)   # before any work
        first_pass = not hasattr(self, "_trainer") or (not self.warm_start and not incremental)
        X, y, Y, class_weights = self._validate_input(X, y, incremental, reset=first_pass)
        if sparse.issparse(X) and resolve_target(self.target, self.n_threads) == "cuda":
            raise ValueError(f"X is sparse: {SPARSE_CPU_ONLY}")
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X)
        if class_weights is not None:
            sample_weight = class_weights if sample_weight is None else \
                sample_weight * class_weights
        random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(Y, [X.shape[1], *hidden, Y.shape[1]], X.dtype.name, random_state)
        elif Y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {Y.shape[1]} outputs but the model was fitted with "
                             f"{self.n_outputs_}")
        if sparse.issparse(X):       # CSR (row slices: the early-stopping split), once
            X = X.tocsr().astype(self._trainer.dtype, copy=False)
        else:
            X = np.ascontiguousarray(X, dtype=self._trainer.dtype)
        if sample_weight is not None:
            sample_weight = sample_weight.astype(self._trainer.dtype, copy=False)
        if self.solver == "lbfgs":
            self._sync_trainer()
            fit_lbfgs(self, X, Y, sample_weight)
        else:
            StochasticSolver(self).fit(X, Y, sample_weight, random_state, incremental)
        if not np.isfinite(self._trainer.params).all():
            raise ValueError(NON_FINITE)
        return self

    def _validation_score(self, X, y, sample_weight):
        """scikit-learn's `_score_with_function`: NaN when the predictions are not finite."""
        y_pred = self._predict(X)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return self._score_function(y, y_pred, sample_weight=sample_weight)

    def fit(self, X, y, sample_weight=None):
        """Fit the model to data matrix X and target(s) y (rows weighted by sample_weight, and
        by class_weight for the classifier). Returns self."""
        self._validate_params()
        return self._fit(X, y, sample_weight, incremental=False)

    def _forward(self, X, check_input=True):
        """The output layer's activations (n, n_outputs)."""
        check_is_fitted(self, "_trainer")
        self._sync_trainer()            # set_params(activation=...) after fit, as scikit-learn
        if check_input:
            _name_nonfinite_sparse(X)
            X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32),
                              accept_sparse=SPARSE_FORMATS)
        t = self._trainer
        if sparse.issparse(X):
            return t.engine.predict(check_X(X, X.shape[1], t.dtype))
        return t.engine.predict(np.ascontiguousarray(X, dtype=t.dtype))

    def to_onnx(self, path):
        """Write the fitted model as an ONNX graph (the onnx extra; see fastbp.export) whose
        output equals `predict_proba` (classifier) or `predict` (regressor). Returns path."""
        check_is_fitted(self, "_trainer")
        from .export import to_onnx
        single = self.n_outputs_ == 1
        return to_onnx(self._trainer, path, two_class=self._is_classifier and single,
                       squeeze=not self._is_classifier and single)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier: scikit-learn's MLPClassifier, trained by fastbp's
    compiled kernels. Same parameters, attributes and behaviour; plus `class_weight` (None,
    'balanced' or {label: weight}), `dropout` (inverted dropout of the hidden layers while
    training: one rate or one per hidden layer), `sparse_update` ('dense', or 'lazy': with
    sparse X update only the first-layer rows of the features a batch has, as
    torch.optim.SparseAdam), `target` ('auto', 'cpu', 'parallel' or 'cuda'), `dtype` (None:
    float32 for float32 X, else float64) and `n_threads`. Binary and multilabel problems use
    sigmoid outputs, multiclass a softmax. For the same arguments and random_state the fitted
    model is scikit-learn's, to rounding."""

    _parameter_constraints = {**_BaseMLP._parameter_constraints,
                              "class_weight": [None, StrOptions({"balanced"}), dict]}

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 class_weight=None, dropout=0.0, sparse_update="dense", target="auto",
                 dtype=None, n_threads=None):
        self.class_weight = class_weight
        self.dropout = dropout
        self.sparse_update = sparse_update
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.target = target
        self.dtype = dtype
        self.n_threads = n_threads

    _is_classifier = True
    _score_function = staticmethod(accuracy_score)

    def _validate_input(self, X, y, incremental, reset):
        """scikit-learn's: labels binarised by the LabelBinarizer of the first pass (checked
        against its classes on later passes), as a boolean (n, n_outputs) Y."""
        _name_nonfinite_sparse(X)
        X, y = validate_data(self, X, y, multi_output=True, dtype=(np.float64, np.float32),
                             reset=reset, accept_sparse=SPARSE_FORMATS)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same "
                                     "classes as in the previous call to fit. Previously "
                                     f"got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError("`y` has classes not in `self.classes_`. `self.classes_` "
                                 f"has {self.classes_}. 'y' has {classes}.")
        class_weights = None
        if self.class_weight is not None:
            class_weights = compute_sample_weight(self.class_weight, y).astype(X.dtype)
        return X, y, self._label_binarizer.transform(y).astype(bool), class_weights

    def _loss_for(self, Y):
        return ("cross_entropy" if self._label_binarizer.y_type_ == "multiclass"
                else "binary_cross_entropy")

    def _kernel_targets(self, Y):
        """Class indices for the softmax, 0/1 floats for sigmoid outputs."""
        return Y.argmax(axis=1) if self._loss == "cross_entropy" else Y.astype(np.float64)

    def _validation_targets(self, Y):
        return self._label_binarizer.inverse_transform(Y)

    def _predict(self, X, check_input=False):
        y_pred = self._forward(X, check_input)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    def predict(self, X):
        """Predicted class labels (or 0/1 indicator rows for multilabel)."""
        return self._predict(X, check_input=True)

    def predict_proba(self, X):
        """Class probabilities, columns in the order of `classes_`."""
        y_pred = self._forward(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def predict_log_proba(self, X):
        """Logarithm of `predict_proba`."""
        return np.log(self.predict_proba(X))

    @available_if(_stochastic)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y) from the current state; the first call needs `classes`
        (for a multilabel indicator y, the column indices)."""
        self._validate_params()
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight, incremental=True)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor: scikit-learn's MLPRegressor (loss 'squared_error',
    or 'poisson' with an exp output for counts), trained by fastbp's compiled kernels; plus
    `dropout`, `sparse_update`, `target`, `dtype` and `n_threads` (as MLPClassifier)."""

    _parameter_constraints = {**_BaseMLP._parameter_constraints,
                              "loss": [StrOptions({"squared_error", "poisson"})]}

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dropout=0.0, sparse_update="dense", target="auto", dtype=None,
                 n_threads=None):
        self.dropout = dropout
        self.sparse_update = sparse_update
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.target = target
        self.dtype = dtype
        self.n_threads = n_threads

    _is_classifier = False
    _score_function = staticmethod(r2_score)

    def _validate_input(self, X, y, incremental, reset):
        _name_nonfinite_sparse(X)
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True,
                             dtype=(np.float64, np.float32), reset=reset,
                             accept_sparse=SPARSE_FORMATS)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        Y = y.reshape(-1, 1) if y.ndim == 1 else y
        if self.loss == "poisson" and (Y < 0).any():
            raise ValueError("Some value(s) of y are negative which is not allowed for "
                             "Poisson regression.")
        return X, y, Y, None

    def _loss_for(self, Y):
        return "poisson" if self.loss == "poisson" else "mse"

    def _kernel_targets(self, Y):
        return Y.astype(np.float64)

    def _validation_targets(self, Y):
        return Y

    def _predict(self, X, check_input=False):
        y_pred = self._forward(X, check_input)
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred

    def predict(self, X):
        """Predicted values: shape (n,) for one output, (n, n_outputs) otherwise."""
        return self._predict(X, check_input=True)

    # Always there, as scikit-learn's MLPRegressor.partial_fit (whose availability check
    # tests the method `_check_solver` itself, not its result): with solver='lbfgs' it runs
    # an L-BFGS fit from the current weights, as scikit-learn's does.
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y) from the current state (solver 'lbfgs': an L-BFGS fit from
        the current weights, as scikit-learn)."""
        self._validate_params()
        return self._fit(X, y, sample_weight, incremental=True)
