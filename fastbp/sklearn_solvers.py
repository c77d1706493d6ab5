"""scikit-learn's MLP solvers on fastbp's engine: the estimators' training, step for step.

scikit-learn's `BaseMultilayerPerceptron` (sklearn/neural_network/_multilayer_perceptron.py
and _stochastic_optimizers.py) fixes what a random_state gives: the initial weights, the
early-stopping split, every epoch's shuffle and the batch slicing. This module makes the
same calls on the same `RandomState` in the same order and runs each epoch in one compiled
call, so for the same arguments fastbp's model equals scikit-learn's to rounding.

What fastbp's kernels compute differently is mapped exactly:
- the losses: fastbp averages the element-wise losses over the K outputs and drops the 1/2
  of the squared error; its gradient is `scale` times scikit-learn's (1 for softmax, 1/K for
  K sigmoid or exp outputs, 2/K for squared error). SGD's learning rate is divided by it,
  Adam's eps multiplied by it (m and sqrt(v) scale with the gradient), the L2 decay
  multiplied by it; loss values are divided by `value_scale`;
- Adam: scikit-learn adds eps to sqrt(v) before the bias correction (Hyper.eps_hat);
- SGD momentum: scikit-learn's velocity carries the learning rate (v = mu v - lr g), fastbp's
  buffer does not (p -= lr buf): when the learning rate changes between epochs
  (invscaling, adaptive) the buffer is rescaled by old / new lr, which keeps lr * buf = -v;
- the reported loss: the mean of each batch's loss weighted by its rows, each with its L2
  term at the weights before its update, read from the kernel's step records.
"""
import warnings

import numpy as np
from scipy.optimize import minimize
from scipy.special import xlogy
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils.optimize import _check_optimize_result

from .engine import Hyper, row_order, single_threaded_blas

NON_FINITE = ("Solver produced non-finite parameter weights. The input data may contain "
              "large values and need to be preprocessed.")


def initial_params(random_state, layer_units, activation, layout, dtype):
    """The flat parameters scikit-learn's `_initialize` draws: per layer, Glorot's uniform
    bound sqrt(6 / (fan_in + fan_out)) (2 instead of 6 for logistic), the weights then the
    biases from the same RandomState."""
    params = np.empty(layout.n_params, dtype=dtype)
    factor = 2.0 if activation == "logistic" else 6.0
    for W, b, fan_in, fan_out in zip(layout.weights(params), layout.biases(params),
                                     layer_units[:-1], layer_units[1:]):
        bound = np.sqrt(factor / (fan_in + fan_out))
        W[...] = random_state.uniform(-bound, bound, (fan_in, fan_out))
        b[...] = random_state.uniform(-bound, bound, fan_out)
    return params


# What scikit-learn's SGDOptimizer / AdamOptimizer take when made (at every fit, or at a
# first partial_fit) and keep: set_params between partial_fit calls does not reach them
OPTIMIZER_SETTINGS = ("solver", "learning_rate_init", "learning_rate", "momentum",
                      "nesterovs_momentum", "power_t", "beta_1", "beta_2", "epsilon")


def optimizer_settings(est):
    """The settings of the optimizer `est` trains with: those it was made with, or (an
    estimator pickled before they were kept) its current ones."""
    kept = getattr(est, "_optimizer_settings", None)
    return kept if kept is not None else {k: getattr(est, k) for k in OPTIMIZER_SETTINGS}


def loss_scales(loss, n_outputs):
    """(gradient scale, loss value scale): fastbp's / scikit-learn's."""
    if loss == "cross_entropy":
        return 1.0, 1.0
    if loss in ("binary_cross_entropy", "poisson"):
        return 1.0 / n_outputs, 1.0 / n_outputs
    return 2.0 / n_outputs, 2.0


def poisson_offsets(Y):
    """Per row, scikit-learn's half Poisson deviance minus K times fastbp's exp(z) - y z:
    sum over outputs of y log y - y."""
    return np.sum(xlogy(Y, Y) - Y, axis=1)


def batch_slices(n, batch_size):
    """(starts, rows) of scikit-learn's gen_batches(n, batch_size)."""
    starts = np.arange(0, n, batch_size)
    return starts, np.minimum(batch_size, n - starts)


def refuse_weightless_batch(sample_weight, order, starts):
    """scikit-learn's ZeroDivisionError for a batch whose weights sum to 0 (its weighted
    mean loss is 0/0), raised before the epoch that would meet it rather than in it."""
    totals = np.add.reduceat(sample_weight[order], starts)
    if not totals.all():
        i = int(np.flatnonzero(totals == 0)[0])
        raise ZeroDivisionError(f"Weights sum to zero, can't be normalized: the sample_weight "
                                f"of the rows of batch {i} (of {starts.shape[0]}) sums to 0")


class StochasticSolver:
    """scikit-learn's `_fit_stochastic` for one estimator: `est` provides the settings and
    receives the fitted attributes (n_iter_, t_, loss_, loss_curve_, best_loss_,
    validation_scores_, best_validation_score_) as scikit-learn's does."""

    def __init__(self, est):
        self.est = est

    def hyper(self, lr):
        est = self.est
        opt = optimizer_settings(est)
        sgd = opt["solver"] == "sgd"
        return Hyper(lr=lr / est._scale if sgd else lr,
                     momentum=min(opt["momentum"], 1 - 1e-12) if sgd else 0.0,
                     nesterov=float(sgd and opt["nesterovs_momentum"] and opt["momentum"] > 0),
                     beta1=opt["beta_1"], beta2=opt["beta_2"], eps=opt["epsilon"] * est._scale,
                     decay=est._scale * est.alpha, clip=0.0, alpha=0.99,
                     decay_per_weight=1.0, eps_hat=1.0,
                     lazy=float(getattr(est, "sparse_update", "dense") == "lazy"))

    def split(self, X, Y, sample_weight, rs):
        """The early-stopping split: train_test_split's call, stratified for single-output
        classifiers (scikit-learn does not stratify multiclass or multilabel targets: their
        binarised y has several columns)."""
        est = self.est
        stratify = Y if est._is_classifier and Y.shape[1] == 1 else None
        idx = np.arange(X.shape[0])
        tr, va = train_test_split(idx, random_state=rs, test_size=est.validation_fraction,
                                  stratify=stratify)
        if va.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase "
                             "'validation_fraction' or the size of your dataset.")
        sw = (None, None) if sample_weight is None else (sample_weight[tr], sample_weight[va])
        return (X[tr], Y[tr], sw[0]), (X[va], est._validation_targets(Y[va]), sw[1])

    def fit(self, X, Y, sample_weight, rs, incremental):
        est = self.est
        new_optimizer = not incremental or not hasattr(est, "_lr")
        if new_optimizer:
            est._optimizer_settings = {k: getattr(est, k) for k in OPTIMIZER_SETTINGS}
        opt = optimizer_settings(est)
        est._sync_trainer(opt)          # the optimizer's buffers, the current activation
        t = est._trainer
        engine = t.engine
        if new_optimizer:
            engine.init(engine.params.copy())
            est._lr = opt["learning_rate_init"]
        val = None
        if est.early_stopping:
            if incremental:
                raise ValueError("partial_fit does not support early_stopping=True")
            (X, Y, sample_weight), val = self.split(X, Y, sample_weight, rs)
        n = X.shape[0]
        if est.batch_size == "auto":
            batch = min(200, n)
        else:
            if est.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It "
                              "is going to be clipped")
            batch = int(np.clip(est.batch_size, 1, n))
        engine.set_batch_size(batch)
        rows = t.check_data(X, est._kernel_targets(Y), sample_weight,
                        negative_weights=True)
        starts, lens = batch_slices(n, batch)
        L = engine.network.layout.n_layers
        # step records (cpu.train_epoch): each step's loss sum, and the weights' sum of
        # squares (a pass over the weights every step) only where the L2 term needs it
        records = np.empty((starts.shape[0], L + (3 if est.alpha > 0 else 2)))
        order = row_order(n)
        hyper, hyper_lr = self.hyper(est._lr), est._lr
        runner = engine.epoch_runner(rows, order, records, hyper)
        offsets = poisson_offsets(Y) if est._loss == "poisson" else None
        diverged = False
        invscaling = opt["solver"] == "sgd" and opt["learning_rate"] == "invscaling"
        est.n_iter_ = 0
        try:
            with engine.compute(runner.plan):
                for _ in range(est.max_iter):
                    if est.shuffle:
                        # sample_idx = sklearn.utils.shuffle(sample_idx, random_state=rs),
                        # without its checks (3 ms a call, a third of a digits epoch): order
                        # holds the last sample_idx, and as the shuffle's swaps do not depend
                        # on the values, shuffling it in place equals indexing it by a
                        # shuffled arange
                        rs.shuffle(order)
                    if sample_weight is not None:
                        refuse_weightless_batch(sample_weight, order, starts)
                    if est._lr != hyper_lr:         # invscaling, adaptive
                        hyper, hyper_lr = self.hyper(est._lr), est._lr
                    if not diverged:
                        _, _, bad = runner.run(hyper, est._dropout_seed)
                        params = engine.params
                        diverged = bad >= 0 or not (np.isfinite(params.min())
                                                    and np.isfinite(params.max()))
                        if diverged:        # scikit-learn carries NaN weights to the end
                            engine.params[:] = np.nan
                    loss = np.float64(np.nan) if diverged else self.epoch_loss(
                        records, starts, lens, sample_weight, order, offsets)
                    est.n_iter_ += 1
                    est.loss_ = loss
                    est.t_ += n
                    est.loss_curve_.append(loss)
                    if est.verbose:
                        print("Iteration %d, loss = %.8f" % (est.n_iter_, loss))
                    self.update_no_improvement(val)
                    if invscaling:
                        self.set_lr(opt["learning_rate_init"] / (est.t_ + 1) ** opt["power_t"])
                    if est._no_improvement_count > est.n_iter_no_change:
                        if self.trigger_stopping():
                            break
                        est._no_improvement_count = 0
                    if incremental:
                        break
                    if est.n_iter_ == est.max_iter:
                        warnings.warn(f"Stochastic Optimizer: Maximum iterations "
                                      f"({est.max_iter}) reached and the optimization hasn't "
                                      "converged yet.", ConvergenceWarning)
        except KeyboardInterrupt:       # as scikit-learn: the model so far, best restored
            warnings.warn("Training interrupted by user.")
        t.lr = self.hyper(est._lr).lr
        if est.early_stopping:
            # scikit-learn's coefs_ then are its best copy itself: the next warm start trains
            # that copy, so until a better score the best weights are the live ones (None)
            if est._best_params is not None:
                engine.params[:] = est._best_params
            est._best_params = None

    def epoch_loss(self, records, starts, lens, sample_weight, order, offsets):
        """scikit-learn's loss_ of the epoch just run: each batch's loss (the weighted mean
        of its rows' losses plus alpha/2 ||W||^2 / its rows or weight, W before the batch's
        update) weighted by its rows."""
        est = self.est
        L = est._trainer.engine.network.layout.n_layers
        row_loss_sum = records[:, L + 1]
        if sample_weight is None and offsets is None:   # each batch weighted by its rows
            total = row_loss_sum.sum() / est._value_scale
            if est.alpha > 0:
                total += 0.5 * est.alpha * records[:, L + 2].sum()
            return np.float64(total / order.shape[0])
        if sample_weight is None:
            totals = lens.astype(np.float64)
        else:
            totals = np.add.reduceat(sample_weight[order].astype(np.float64), starts)
        batch_loss = row_loss_sum / totals / est._value_scale
        if offsets is not None:
            w = 1.0 if sample_weight is None else sample_weight[order]
            batch_loss = batch_loss + np.add.reduceat(w * offsets[order], starts) / totals
        if est.alpha > 0:
            batch_loss = batch_loss + 0.5 * est.alpha * records[:, L + 2] / totals
        return np.float64(np.sum(batch_loss * lens) / order.shape[0])

    def update_no_improvement(self, val):
        """scikit-learn's `_update_no_improvement_count`: on the validation score (a NaN
        score counts as no improvement and never as best) or the training loss."""
        est = self.est
        if val is not None:
            score = est._validation_score(*val)
            est.validation_scores_.append(score)
            if est.verbose:
                print("Validation score: %f" % score)
            if score < est.best_validation_score_ + est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                est._best_params = est._trainer.params.copy()
        else:
            if est.loss_curve_[-1] > est.best_loss_ - est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if est.loss_curve_[-1] < est.best_loss_:
                est.best_loss_ = est.loss_curve_[-1]

    def trigger_stopping(self):
        """The optimizer's `trigger_stopping`: adaptive SGD divides its learning rate by 5
        (and goes on) until it is at most 1e-6; everything else stops."""
        est = self.est
        what = "Validation score" if est.early_stopping else "Training loss"
        msg = (f"{what} did not improve more than tol={est.tol:f} for "
               f"{est.n_iter_no_change} consecutive epochs.")
        opt = optimizer_settings(est)
        if opt["solver"] != "sgd" or opt["learning_rate"] != "adaptive":
            if est.verbose:
                print(msg + " Stopping.")
            return True
        if est._lr <= 1e-6:
            if est.verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self.set_lr(est._lr / 5.0)
        if est.verbose:
            print(msg + " Setting learning rate to %f" % est._lr)
        return False

    def set_lr(self, lr):
        """A new SGD learning rate; the momentum buffer is rescaled so that the velocity
        lr * buf, which scikit-learn keeps, is unchanged."""
        est = self.est
        m = est._trainer.engine.m
        if m.shape[0] and lr != est._lr:
            m *= m.dtype.type(est._lr / lr)
        est._lr = lr


def fit_lbfgs(est, X, Y, sample_weight):
    """scikit-learn's `_fit_lbfgs`: SciPy's L-BFGS-B on the full-batch loss and gradient in
    scikit-learn's units, one compiled pass per evaluation."""
    t = est._trainer
    rows = t.check_data(X, est._kernel_targets(Y), sample_weight,
                        negative_weights=True)
    n = X.shape[0] if sample_weight is None else float(sample_weight.sum())
    offset = 0.0
    if est._loss == "poisson":
        offset = float(np.average(poisson_offsets(Y), weights=sample_weight))
    weight_mask = np.zeros(t.n_params, dtype=bool)      # the weights (L2 applies), not biases
    for W in t.engine.network.layout.weights(weight_mask):
        W[...] = True
    # target='cuda': the data goes to the GPU once, not at every function evaluation
    resident = t.engine.resident(rows)

    def loss_and_grad(theta):
        t.params[:] = theta
        value, _, grad = t.engine.loss_grad(rows, want_grad=True, resident=resident)
        grad = grad.astype(np.float64) / est._scale
        W = theta[weight_mask]
        grad[weight_mask] += est.alpha * W / n
        return value / est._value_scale + offset + 0.5 * est.alpha * (W @ W) / n, grad

    # L-BFGS-B's own BLAS calls stay on one thread: idle BLAS threads spin-waiting next to
    # the kernel's threads made target='parallel' 8x slower on digits
    with single_threaded_blas():
        result = minimize(loss_and_grad, t.params.astype(np.float64), method="L-BFGS-B",
                          jac=True, options={"maxfun": est.max_fun, "maxiter": est.max_iter,
                                             "gtol": est.tol})
    est.n_iter_ = _check_optimize_result("lbfgs", result, est.max_iter)
    est.loss_ = result.fun
    t.params[:] = result.x
