"""scikit-learn estimators over the Trainer: `MLPClassifier` and `MLPRegressor`.

Every constructor parameter of scikit-learn's MLPs keeps its name, default and meaning, and
the estimators follow its semantics where they differ from the Trainer's:

- the L2 term alpha/2 * ||W||^2 / n_samples (n_samples of the batch, or its total sample
  weight): the Trainer's `weight_decay` is alpha times the loss scale below, with
  `decay_per_weight=True`;
- scikit-learn's losses: log-loss summed over the outputs of a multilabel problem and half
  the squared error, where the Trainer averages over the outputs (and drops the 1/2). The
  gradients differ by a constant factor `scale` (1 for softmax, 1/K for K sigmoid outputs,
  2/K for squared error), which the SGD learning rate and the decay absorb; Adam and L-BFGS
  are invariant to it; `loss_` and `loss_curve_` are reported in scikit-learn's units;
- the stopping rule: `tol` and `n_iter_no_change` on the training loss, or on the validation
  score with `early_stopping` (best weights restored); `learning_rate` 'invscaling' and
  'adaptive' for SGD; a ConvergenceWarning when `max_iter` is reached.

`solver='lbfgs'` minimises the full-batch loss with scipy.optimize.minimize(method="L-BFGS-B",
jac=True), one compiled forward/backward pass per function evaluation.
"""
import warnings
from numbers import Integral, Real

import numpy as np
from scipy.optimize import minimize
from scipy.special import xlogy
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import type_of_target, unique_labels
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.validation import (_check_sample_weight, check_is_fitted, column_or_1d,
                                      validate_data)

from .engine import single_threaded_blas
from .trainer import Trainer

ACTIVATIONS = {"identity", "logistic", "tanh", "relu", "leaky_relu", "gelu"}


def _stochastic(est):
    if est.solver not in ("sgd", "adam"):
        raise AttributeError(f"partial_fit is only available for stochastic optimizers; "
                             f"{est.solver!r} is not stochastic")
    return True


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
        "target": [StrOptions({"cpu", "parallel", "cuda"})],
        "dtype": [None, StrOptions({"float32", "float64"})],
        "n_threads": [None, Interval(Integral, 1, None, closed="left")],
    }

    # ------------------------------------------------------------ subclass hooks
    # _encode(y, incremental) -> (loss, n_outputs, y for the Trainer)
    # _score_for_stopping(X, y) -> float (higher is better)

    def _hidden(self):
        sizes = self.hidden_layer_sizes
        if not hasattr(sizes, "__iter__"):
            sizes = [sizes]
        sizes = list(sizes)
        if any(not isinstance(s, Integral) or s < 1 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        return [int(s) for s in sizes]

    def _dtype_for(self, X):
        if self.dtype is not None:
            return self.dtype
        return "float32" if X.dtype == np.float32 else "float64"

    def _loss_scale(self, loss, n_outputs):
        """Trainer's gradient / scikit-learn's gradient for the same loss."""
        if loss == "cross_entropy":
            return 1.0
        if loss in ("binary_cross_entropy", "poisson"):
            return 1.0 / n_outputs
        return 2.0 / n_outputs

    def _build(self, n_features, loss, n_outputs, n_samples, dtype):
        batch = min(200, n_samples) if self.batch_size == "auto" else self.batch_size
        if self.batch_size != "auto" and not 1 <= self.batch_size <= n_samples:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                          "going to be clipped", UserWarning)
            batch = int(np.clip(self.batch_size, 1, n_samples))
        scale = self._loss_scale(loss, n_outputs)
        solver = self.solver
        dropout = self.dropout if isinstance(self.dropout, Real) else list(self.dropout)
        kw = dict(loss=loss, batch_size=batch, epochs=1, shuffle=self.shuffle, dropout=dropout,
                  target=self.target, dtype=dtype, n_threads=self.n_threads,
                  seed=int(self._random_state.randint(np.iinfo(np.int32).max)))
        if solver == "sgd":
            kw.update(optimizer="sgd", lr=self.learning_rate_init / scale,
                      momentum=min(self.momentum, 1 - 1e-12),
                      nesterov=bool(self.nesterovs_momentum and self.momentum > 0))
        else:   # adam (lbfgs uses no optimizer: any will do)
            kw.update(optimizer="adam", lr=self.learning_rate_init,
                      betas=(self.beta_1, self.beta_2), eps=self.epsilon)
        # scikit-learn's L2 term of a batch is alpha/2 ||W||^2 / (its rows, or its total
        # sample weight): the decay is taken per unit of batch weight
        kw.update(weight_decay=scale * self.alpha, decay_per_weight=True)
        layers = [n_features, *self._hidden(), n_outputs]
        self._trainer = Trainer(layers, activation=self.activation, **kw)
        self._scale = scale
        # scikit-learn's loss value / the Trainer's: as the gradients, except for squared
        # error, whose value is half the mean over outputs while its gradient is not /K
        self._value_scale = 2.0 if loss == "mse" else scale
        self._batch = batch
        self.n_layers_ = len(layers)
        self.n_outputs_ = n_outputs
        self.out_activation_ = {"cross_entropy": "softmax", "binary_cross_entropy": "logistic",
                                "mse": "identity", "poisson": "exp"}[loss]
        self.n_iter_ = 0
        self.t_ = 0
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

    @property
    def coefs_(self):
        check_is_fitted(self, "_trainer")
        return self._trainer.weights

    @property
    def intercepts_(self):
        check_is_fitted(self, "_trainer")
        return self._trainer.biases

    def _l2(self, n):
        return 0.5 * self.alpha * sum(float(np.dot(w.ravel(), w.ravel()))
                                      for w in self._trainer.weights) / n

    # ------------------------------------------------------------------- fitting

    def _fit(self, X, y, sample_weight, incremental):
        first = not hasattr(self, "_trainer") or not (self.warm_start or incremental)
        X, y = validate_data(self, X, y, reset=first, dtype=(np.float64, np.float32),
                             multi_output=True, y_numeric=not isinstance(self, ClassifierMixin))
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)    # DataConversionWarning, as scikit-learn
        loss, n_outputs, y_t = self._encode(y, not first)
        sample_weight = self._row_weights(X, y, sample_weight)
        if first:
            self._random_state = check_random_state(self.random_state)
            self._build(X.shape[1], loss, n_outputs, X.shape[0], self._dtype_for(X))
        elif self.n_outputs_ != n_outputs:
            raise ValueError(f"y has {n_outputs} outputs but the model was fitted with "
                             f"{self.n_outputs_}")
        Xc = np.ascontiguousarray(X, dtype=self._trainer.dtype)
        if self.solver == "lbfgs":
            self._fit_lbfgs(Xc, y_t, sample_weight)
        else:
            self._fit_stochastic(Xc, y_t, y, sample_weight, incremental)
        return self

    def _row_weights(self, X, y, sample_weight):
        """sample_weight (checked as scikit-learn does) times the class weights, or None."""
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=X.dtype)
        class_weight = getattr(self, "class_weight", None)
        if class_weight is not None:
            cw = compute_sample_weight(class_weight, y).astype(X.dtype)
            sample_weight = cw if sample_weight is None else sample_weight * cw
        return sample_weight

    def _fit_lbfgs(self, X, y, sample_weight):
        t = self._trainer
        rows = t.check_data(X, y, sample_weight)
        n = X.shape[0] if sample_weight is None else float(sample_weight.sum())
        W_mask = np.zeros(t.n_params, dtype=bool)      # the weights (L2 applies), not biases
        for W in t.engine.network.layout.weights(W_mask):
            W[...] = True
        # target='cuda': the data goes to the GPU once, not at every function evaluation
        resident = t.engine.resident(rows)

        def loss_and_grad(theta):
            t.params[:] = theta
            value, _, grad = t.engine.loss_grad(rows, want_grad=True, resident=resident)
            grad = grad.astype(np.float64) / self._scale
            grad[W_mask] += self.alpha * theta[W_mask] / n
            value = value / self._value_scale + self._loss_offset
            return value + 0.5 * self.alpha * theta[W_mask] @ theta[W_mask] / n, grad

        # L-BFGS-B's own BLAS calls stay on one thread: idle BLAS threads spin-waiting next to
        # the kernel's threads made target='parallel' 8x slower on digits
        with single_threaded_blas():
            result = minimize(loss_and_grad, t.params.astype(np.float64), method="L-BFGS-B",
                              jac=True, options={"maxfun": self.max_fun,
                                                 "maxiter": self.max_iter, "gtol": self.tol})
        if result.status != 0:
            warnings.warn(f"lbfgs failed to converge after {result.nit} iteration(s) "
                          f"(status={result.status}): {result.message}. Increase the number "
                          "of iterations (max_iter) or scale the data.", ConvergenceWarning)
        t.params[:] = result.x
        self.n_iter_ = int(result.nit)
        self.t_ = self.n_iter_ * n
        self.loss_ = float(result.fun)
        self.best_loss_ = self.loss_

    def _fit_stochastic(self, X, y_t, y_orig, sample_weight, incremental):
        t = self._trainer
        X_val = y_val = sw_val = None
        X_tr, y_tr, sw_tr = X, y_t, sample_weight
        if self.early_stopping and not incremental:
            stratify = y_orig if (isinstance(self, ClassifierMixin) and
                                  type_of_target(y_orig) in ("binary", "multiclass")) else None
            idx = np.arange(X.shape[0])
            tr, va = train_test_split(idx, random_state=self._random_state,
                                      test_size=self.validation_fraction, stratify=stratify)
            if va.size < 2:
                raise ValueError(f"The validation set is too small ({va.size} samples): "
                                 "increase validation_fraction or the number of samples.")
            X_tr, y_tr, X_val, y_val = X[tr], y_t[tr], X[va], y_orig[va]
            if sample_weight is not None:
                sw_tr, sw_val = sample_weight[tr], sample_weight[va]
        n = X_tr.shape[0]
        stopped = []

        def end_of_epoch(trainer, epoch, logs):
            """scikit-learn's bookkeeping and stopping rules after each epoch; True stops."""
            self.n_iter_ += 1
            self.t_ += n
            self.loss_ = (logs["loss"] / self._value_scale + self._loss_offset +
                          self._l2(self._batch))
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
            if self.solver == "sgd" and self.learning_rate == "invscaling":
                t.lr = self.learning_rate_init / self._scale / (self.t_ + 1) ** self.power_t
            self._update_no_improvement(X_val, y_val, sw_val)
            if incremental or self._no_improvement_count <= self.n_iter_no_change:
                return False
            what = ("Validation score" if self.early_stopping else "Training loss")
            if (self.solver == "sgd" and self.learning_rate == "adaptive"
                    and t.lr * self._scale > 1e-6):
                t.lr = t.lr / 5.0
                self._no_improvement_count = 0
                if self.verbose:
                    print(f"{what} did not improve more than tol={self.tol} for "
                          f"{self.n_iter_no_change} consecutive epochs. Setting "
                          f"learning rate to {t.lr * self._scale:f}")
                return False
            if self.verbose:
                print(f"{what} did not improve more than tol={self.tol} for "
                      f"{self.n_iter_no_change} consecutive epochs. Stopping.")
            stopped.append(epoch)
            return True

        # one fit for all epochs: X checked, buffers allocated (and on the GPU, X moved)
        # once, not once per epoch
        t.fit(X_tr, y_tr, sample_weight=sw_tr, epochs=1 if incremental else self.max_iter,
              progress=False, callbacks=[end_of_epoch])
        if not incremental and not stopped:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) "
                          "reached and the optimization hasn't converged yet.",
                          ConvergenceWarning)
        if self.early_stopping and not incremental and self._best_params is not None:
            t.params[:] = self._best_params

    def _update_no_improvement(self, X_val, y_val, sw_val):
        if self.early_stopping and X_val is not None:
            score = self._score_for_stopping(X_val, y_val, sw_val)
            self.validation_scores_.append(score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_params = self._trainer.params.copy()
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def fit(self, X, y, sample_weight=None):
        """Fit the model to data matrix X and target(s) y (rows weighted by sample_weight, and
        by class_weight for the classifier). Returns self."""
        self._validate_params()
        self._best_params = None
        self._in_partial_fit = False
        return self._fit(X, y, sample_weight, incremental=False)

    def _output(self, X):
        check_is_fitted(self, "_trainer")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return self._trainer.engine.predict(np.ascontiguousarray(X, dtype=self._trainer.dtype))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier: scikit-learn's MLPClassifier, trained by fastbp's
    compiled kernels. Same parameters, attributes and behaviour; plus `class_weight` (None,
    'balanced' or {label: weight}), `dropout` (inverted dropout of the hidden layers while
    training: one rate or one per hidden layer), `target` ('cpu', 'parallel' or 'cuda'), `dtype`
    (None: float32 for float32 X, else float64) and `n_threads`. Binary and multilabel problems use sigmoid
    outputs, multiclass a softmax."""

    _parameter_constraints = {**_BaseMLP._parameter_constraints,
                              "class_weight": [None, StrOptions({"balanced"}), dict]}

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 class_weight=None, dropout=0.0, target="cpu", dtype=None, n_threads=None):
        self.class_weight = class_weight
        self.dropout = dropout
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

    def _encode(self, y, incremental):
        self._loss_offset = 0.0
        if not incremental:
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start and not getattr(self, "_in_partial_fit", False) and \
                    not np.array_equal(classes, self.classes_):
                raise ValueError("warm_start can only be used where `y` has the same classes "
                                 f"as in the previous call to fit. Previously got "
                                 f"{self.classes_}, `y` has {classes}")
            if not set(classes) <= set(self.classes_):
                raise ValueError(f"`y` has classes not in `self.classes_`. "
                                 f"`self.classes_` has {self.classes_}. 'y' has {classes}.")
        kind = type_of_target(y)
        if kind == "multilabel-indicator":
            Y = self._label_binarizer.transform(y).astype(float)
            return "binary_cross_entropy", Y.shape[1], Y
        if len(self.classes_) <= 2:
            # one sigmoid output, as scikit-learn (a single class trains towards it)
            pos = (y == self.classes_[-1]).astype(float).reshape(-1, 1)
            if len(self.classes_) == 1:
                pos = np.ones_like(pos)
            return "binary_cross_entropy", 1, pos
        return "cross_entropy", len(self.classes_), np.searchsorted(self.classes_, y)

    def _score_for_stopping(self, X, y, sample_weight):
        return accuracy_score(y, self._predict_raw(X), sample_weight=sample_weight)

    def _predict_raw(self, X):
        P = self._trainer.engine.predict(np.ascontiguousarray(X, dtype=self._trainer.dtype))
        return self._decode(P)

    def _decode(self, P):
        if self.out_activation_ == "softmax":
            return self.classes_[P.argmax(axis=1)]
        if self.n_outputs_ == 1:
            return self.classes_[(P[:, 0] >= 0.5).astype(int) if len(self.classes_) > 1
                                 else np.zeros(len(P), dtype=int)]
        return (P >= 0.5).astype(int)

    def predict(self, X):
        """Predicted class labels (or 0/1 indicator rows for multilabel)."""
        return self._decode(self._output(X))

    def predict_proba(self, X):
        """Class probabilities, columns in the order of `classes_`."""
        P = self._output(X)
        if self.out_activation_ == "logistic" and self.n_outputs_ == 1 and \
                len(self.classes_) > 1:
            return np.hstack([1 - P, P])
        return P

    def predict_log_proba(self, X):
        return np.log(self.predict_proba(X))

    @available_if(_stochastic)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y) from the current state; the first call needs `classes`."""
        if self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        self._in_partial_fit = True
        first = not hasattr(self, "_trainer")
        if first:
            self._validate_params()
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self._label_binarizer = LabelBinarizer().fit(classes)
            self.classes_ = self._label_binarizer.classes_
            X, y = validate_data(self, X, y, reset=True, dtype=(np.float64, np.float32),
                                 multi_output=True)
            loss, n_outputs, y_t = self._encode(y, incremental=True)
            self._random_state = check_random_state(self.random_state)
            self._build(X.shape[1], loss, n_outputs, X.shape[0], self._dtype_for(X))
            self._best_params = None
            Xc = np.ascontiguousarray(X, dtype=self._trainer.dtype)
            self._fit_stochastic(Xc, y_t, y, self._row_weights(X, y, sample_weight),
                                 incremental=True)
            return self
        if classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"`classes={list(classes)}` is not the same as on the first "
                             f"call to partial_fit, was: {list(self.classes_)}")
        return self._fit(X, y, sample_weight, incremental=True)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor: scikit-learn's MLPRegressor (loss 'squared_error',
    or 'poisson' with an exp output for counts), trained by fastbp's compiled kernels; plus
    `dropout`, `target`, `dtype` and `n_threads` (as MLPClassifier)."""

    _parameter_constraints = {**_BaseMLP._parameter_constraints,
                              "loss": [StrOptions({"squared_error", "poisson"})]}

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dropout=0.0, target="cpu", dtype=None, n_threads=None):
        self.dropout = dropout
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

    def _encode(self, y, incremental):
        Y = np.asarray(y, dtype=float)
        if Y.ndim == 1:
            Y = Y.reshape(-1, 1)
        self._y_1d = np.ndim(y) == 1
        self._loss_offset = 0.0
        if self.loss == "poisson":
            if (Y < 0).any():
                raise ValueError("Some value(s) of y are negative which is not allowed for "
                                 "Poisson regression.")
            # scikit-learn's poisson loss = K x (exp(z) - y z, averaged) + this constant
            self._loss_offset = float(np.sum(np.mean(xlogy(Y, Y) - Y, axis=0)))
            return "poisson", Y.shape[1], Y
        return "mse", Y.shape[1], Y

    def _score_for_stopping(self, X, y, sample_weight):
        P = self._trainer.engine.predict(np.ascontiguousarray(X, dtype=self._trainer.dtype))
        return r2_score(y, P.ravel() if self._y_1d else P, sample_weight=sample_weight)

    def predict(self, X):
        """Predicted values: shape (n,) for one output, (n, n_outputs) otherwise."""
        P = self._output(X)
        return P.ravel() if self.n_outputs_ == 1 and self._y_1d else P

    @available_if(_stochastic)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y) from the current state."""
        if self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        if not hasattr(self, "_trainer"):
            self._validate_params()
            self._best_params = None
        return self._fit(X, y, sample_weight, incremental=True)
