"""The Trainer: validates, allocates the flat buffers, calls one compiled kernel per epoch,
records history. All numerical work happens in fastbp.kernels."""
import contextlib
import threading
import time
import warnings

import numba
import numpy as np

from . import config as _config
from .data import check_sample_weight, check_X, check_y
from .health import DivergenceError, TrainingHealthWarning, diagnose
from .initializers import init_params
from .kernels import Plan, evaluation_plan, safe_plan, training_plan
from .kernels.optim import N_HYPER, H_ALPHA, H_BETA1, H_BETA2, H_CLIP, H_DECAY, \
    H_DECAY_PER_WEIGHT, H_EPS, H_LR, H_MOMENTUM, H_NESTEROV
from .layout import Layout
from .schedules import make_schedule

EVAL_ROWS = 256  # rows per block when evaluating, predicting or taking a full-batch gradient

_blas = None


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter = None


@contextlib.contextmanager
def single_threaded_blas():
    """BLAS limited to one thread while any fastbp kernel runs, in any thread. threadpoolctl's
    limits are process-wide: the first user applies the limit and the last one restores the
    original thread counts (overlapping per-thread limits would restore each other's)."""
    global _blas_users, _blas_limiter
    with _blas_lock:
        if _blas_users == 0:
            _blas_limiter = _blas_controller().limit(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


def _row_order(n):
    """Rows 0..n-1 as the kernels' row-index array (int64: with int32 indices the parallel
    kernel ran at half speed on the mnist workload, 70k vs 137k samples/s)."""
    return np.arange(n, dtype=np.int64)


def _blas_controller():
    """threadpoolctl's handle on the BLAS libraries loaded (SciPy's, used by the kernels)."""
    global _blas
    if _blas is None:
        import scipy.linalg.cython_blas  # noqa: F401  (make sure the kernels' BLAS is loaded)
        from threadpoolctl import ThreadpoolController
        _blas = ThreadpoolController()
    return _blas


class Trainer:
    """A multi-layer perceptron and its optimizer over flat buffers.

    Parameters
    ----------
    layers : sequence of int
        Layer sizes (n_inputs, hidden..., n_outputs).
    activation : str or sequence of str
        Hidden activation(s): 'relu', 'leaky_relu', 'tanh', 'sigmoid' (or 'logistic'),
        'gelu', 'identity'. One name for all hidden layers or one per hidden layer.
    loss : {'cross_entropy', 'binary_cross_entropy', 'mse'}
        Fixes the output activation: softmax, sigmoid or identity.
    optimizer : {'sgd', 'adam', 'adamw', 'rmsprop'}
        PyTorch's update rules; `momentum`, `nesterov` (sgd, rmsprop momentum), `betas`,
        `eps` (adam, adamw, rmsprop), `alpha` (rmsprop), `weight_decay` (decoupled for adamw).
    decay_per_weight : bool
        False: `weight_decay` is the same every step (PyTorch's). True: it is divided by
        each batch's rows, or its total sample weight (scikit-learn's L2 term of a batch,
        alpha/2 ||W||^2 / n; the estimators use this).
    lr, batch_size, epochs, clip_norm, init, shuffle, seed
        Learning rate; minibatch rows; default epochs of `fit`; global gradient-norm clip
        (None = off); 'auto' | 'he' | 'glorot'; reshuffle rows every epoch; int or None.
    dropout : float or sequence of float
        Inverted dropout rate of the hidden layers while training (one rate, or one per
        hidden layer), applied in the compiled kernel; off in loss, gradient and predict.
    target : {'cpu', 'parallel', 'cuda'}
        One core (bit-for-bit reproducible), all cores (reproducible per thread count), or
        an NVIDIA GPU through numba-cuda (the `cuda` extra): params, optimizer state and
        the training data stay on the GPU for the whole fit (see the README's CUDA section).
    dtype : {'float32', 'float64'}
    n_threads : int or None
        Threads for target='parallel' (None: Numba's default, all cores).
    """

    def __init__(self, layers, activation="relu", loss="cross_entropy", optimizer="adam",
                 lr=1e-3, batch_size=32, epochs=10, *, momentum=0.0, nesterov=False,
                 betas=(0.9, 0.999), eps=1e-8, alpha=0.99, weight_decay=0.0,
                 decay_per_weight=False, clip_norm=None, dropout=0.0, init="auto",
                 shuffle=True, target="cpu", dtype="float32", seed=None, n_threads=None):
        cfg = _config.validate(
            layers, activation=activation, loss=loss, optimizer=optimizer, lr=lr,
            batch_size=batch_size, epochs=epochs, momentum=momentum, nesterov=nesterov,
            betas=betas, eps=eps, alpha=alpha, weight_decay=weight_decay,
            decay_per_weight=decay_per_weight, clip_norm=clip_norm,
            dropout=dropout, init=init, shuffle=shuffle, target=target, dtype=dtype, seed=seed,
            n_threads=n_threads)
        if cfg["n_threads"] is not None and cfg["n_threads"] > numba.config.NUMBA_NUM_THREADS:
            raise ValueError(f"n_threads={cfg['n_threads']} is not allowed: at most "
                             f"{numba.config.NUMBA_NUM_THREADS} threads are available")
        self._cfg = cfg
        self._layout = Layout(cfg["layers"])
        self._dtype = np.dtype(cfg["dtype"])
        self._act = np.array([_config.ACTIVATIONS[a] for a in _config.hidden_activations(cfg)],
                             dtype=np.int64)
        rates = _config.hidden_dropout(cfg)
        self._dropout = np.array(rates if any(rates) else [], dtype=np.float64)
        self._no_dropout = np.empty(0, dtype=np.float64)
        self._no_index = np.empty(0, dtype=np.int64)
        self._loss_code = _config.LOSSES[cfg["loss"]]
        self._opt_code = _config.OPTIMIZERS[cfg["optimizer"]]
        self._hyper = np.zeros(N_HYPER)
        self._hyper[[H_LR, H_MOMENTUM, H_NESTEROV, H_BETA1, H_BETA2, H_EPS, H_DECAY, H_CLIP,
                     H_ALPHA, H_DECAY_PER_WEIGHT]] = [
            cfg["lr"], cfg["momentum"], float(cfg["nesterov"]), cfg["betas"][0], cfg["betas"][1],
            cfg["eps"], cfg["weight_decay"], cfg["clip_norm"] or 0.0, cfg["alpha"],
            float(cfg["decay_per_weight"])]
        self._make_plans()
        P = self._layout.n_params
        self._params = np.zeros(P, dtype=self._dtype)
        opt, mom = cfg["optimizer"], cfg["momentum"] > 0
        needs_m = opt in ("adam", "adamw") or mom
        needs_v = opt in ("adam", "adamw", "rmsprop")
        self._m = np.zeros(P if needs_m else 0, dtype=self._dtype)
        self._v = np.zeros(P if needs_v else 0, dtype=self._dtype)
        self._weights = self._layout.weights(self._params)
        self._biases = self._layout.biases(self._params)
        self.metadata = {}   # JSON-able notes saved with the model (e.g. class names)
        self.reset()

    def _make_plans(self):
        cfg = self._cfg
        if cfg["target"] == "cuda":
            from .kernels import cuda_backend
            cuda_backend.load()      # CudaUnavailableError now, not at the first fit
            self._train_plan = self._eval_plan = Plan("cuda", None, 1)
            return
        # a model saved or pickled on a larger machine uses at most the threads here
        threads = 1 if cfg["target"] == "cpu" else min(
            cfg["n_threads"] or numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS)
        self._train_plan = training_plan(cfg["target"], cfg["layers"], cfg["batch_size"],
                                         threads)
        self._eval_plan = evaluation_plan(cfg["target"], threads)

    # ------------------------------------------------------------------ state

    def reset(self):
        """Re-initialise the parameters (from `seed`), the optimizer state, the shuffling
        generator and the history."""
        seed_seq = np.random.SeedSequence(self._cfg["seed"])
        init_ss, shuffle_ss, dropout_ss = seed_seq.spawn(3)
        self._dropout_seed = int(dropout_ss.generate_state(1, np.uint64)[0] >> np.uint64(1))
        init_params(self._params, self._layout, _config.hidden_activations(self._cfg),
                    self._cfg["init"], np.random.default_rng(init_ss))
        self._rng = np.random.default_rng(shuffle_ss)
        self._m[:] = 0
        self._v[:] = 0
        self._step = 0
        self._hyper[H_LR] = self._cfg["lr"]
        self.history = {}
        return self

    @property
    def config(self):
        """The validated constructor arguments (a copy)."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._cfg.items()}

    @property
    def layers(self):
        return list(self._cfg["layers"])

    @property
    def dtype(self):
        return self._dtype

    @property
    def n_params(self):
        return self._layout.n_params

    @property
    def params(self):
        """The flat parameter buffer (a writable array; W_0, b_0, W_1, b_1, ...)."""
        return self._params

    @params.setter
    def params(self, value):
        arr = np.asarray(value)
        if arr.shape != self._params.shape or arr.dtype.kind not in "biuf":
            raise ValueError(f"params must be a real array of shape {self._params.shape}; "
                             f"got {arr.dtype} of shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("params must be finite; got NaN or infinity")
        self._params[:] = arr

    @property
    def weights(self):
        """W_l (n_l, n_{l+1}) as writable views into `params`."""
        return list(self._weights)

    @property
    def biases(self):
        """b_l (n_{l+1},) as writable views into `params`."""
        return list(self._biases)

    @property
    def lr(self):
        """The current learning rate; settable between epochs. (`config['lr']` keeps the
        constructor's, the base of `fit(lr_schedule=...)`.)"""
        return float(self._hyper[H_LR])

    @lr.setter
    def lr(self, value):
        # 0 is allowed here (a schedule may end there), not in the constructor
        self._hyper[H_LR] = _config._real("lr", value, 0.0, np.inf, "a finite number >= 0")

    def __getstate__(self):
        # the compiled kernels are not pickled: the plans are rebuilt from the configuration
        state = self.__dict__.copy()
        del state["_train_plan"], state["_eval_plan"], state["_weights"], state["_biases"]
        state.pop("_cuda_net", None)        # device buffers: rebuilt on first use
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self._hyper.shape[0] < N_HYPER:            # pickled by a version with fewer
            self._hyper = np.concatenate([self._hyper,
                                          np.zeros(N_HYPER - self._hyper.shape[0])])
        self._make_plans()
        self._weights = self._layout.weights(self._params)
        self._biases = self._layout.biases(self._params)

    @property
    def step(self):
        """Optimizer steps taken so far."""
        return self._step

    @property
    def epochs_done(self):
        return len(self.history.get("loss", []))

    # --------------------------------------------------------------- helpers

    def _check_data(self, X, y, sample_weight=None, names=("X", "y", "sample_weight")):
        """-> (X, labels, targets, weights) as the kernels take them."""
        Xc = check_X(X, self._cfg["layers"][0], self._dtype, names[0])
        labels, targets = check_y(y, Xc.shape[0], self._cfg["loss"], self._cfg["layers"][-1],
                                  self._dtype, names[1])
        weights = check_sample_weight(sample_weight, Xc.shape[0], self._dtype, names[2])
        return Xc, labels, targets, weights

    @property
    def strategy(self):
        """How target='parallel' spreads a training step over threads: 'serial' (small
        steps) or 'chunks' (batch chunks, one gradient slab each); always 'serial' for
        target='cpu' and 'cuda' for target='cuda'."""
        return self._train_plan.strategy

    def _device(self):
        """The network's buffers on the GPU (target='cuda'), built on first use."""
        net = getattr(self, "_cuda_net", None)
        if net is None:
            from .kernels.cuda_runner import CudaNetwork
            net = self._cuda_net = CudaNetwork(
                self._layout, self._dtype, self._act, self._dropout, self._loss_code,
                self._opt_code, self._m.size > 0, self._v.size > 0)
        return net

    @contextlib.contextmanager
    def _compute(self, plan):
        """Run kernels with single-threaded BLAS (parallelism is over batch chunks) and
        Numba's thread count set to the plan's chunk count."""
        previous = numba.get_num_threads()
        with single_threaded_blas():
            if plan.chunks > 1:
                numba.set_num_threads(plan.chunks)
            try:
                yield
            finally:
                numba.set_num_threads(previous)

    def _workspace(self, rows, n_chunks):
        a_off, z_off, d_off, size = self._layout.workspace(rows)
        return np.empty((n_chunks, size), dtype=self._dtype), a_off, z_off, d_off

    def _loss_grad(self, X, labels, targets, weights, want_grad, device_data=None):
        if self._cfg["target"] == "cuda":
            net = self._device()
            net.params.copy_to_device(self._params)
            data = device_data or net.data(X, labels, targets, weights)
            loss_sum, correct, grad = net.loss_grad(data, want_grad)
            total = weights.sum(dtype=np.float64) if weights.size else X.shape[0]
            return loss_sum / total, correct, grad
        plan = safe_plan(self._eval_plan)
        C = plan.chunks
        rows = min(EVAL_ROWS, -(-X.shape[0] // C))
        work, a_off, z_off, d_off = self._workspace(rows, C)
        P = self._layout.n_params if want_grad else 0
        gslab = np.empty((C, P), dtype=self._dtype)
        acc = np.empty((C, P), dtype=self._dtype)
        order = _row_order(X.shape[0])
        lay = self._layout
        with self._compute(plan):
            loss_sum, correct = plan.kernels.loss_grad(
                self._params, gslab, acc, work, X, labels, targets, weights, order, rows,
                lay.sizes, lay.w_off, lay.b_off, self._act, self._no_dropout, self._loss_code,
                a_off, z_off, d_off, want_grad)
        total = weights.sum(dtype=np.float64) if weights.size else X.shape[0]
        return loss_sum / total, correct, (acc[0].copy() if want_grad else None)

    def _accuracy(self, correct, n):
        loss = self._cfg["loss"]
        if loss in ("mse", "poisson"):
            return None
        return correct / (n if loss == "cross_entropy" else n * self._cfg["layers"][-1])

    # ------------------------------------------------------------- public API

    def fit(self, X, y, validation_data=None, *, sample_weight=None, epochs=None, shuffle=None,
            callbacks=None, progress=None, lr_schedule=None, on_divergence="raise"):
        """Train for `epochs` (default: the constructor's) more epochs from the current
        parameters and optimizer state. Returns `history`.

        validation_data: (X_val, y_val[, sample_weight_val]), evaluated after every epoch
        (val_loss, val_accuracy). callbacks: callables `callback(trainer, epoch, logs)` called
        after every epoch (see fastbp.callbacks); one returning True stops training.
        progress: None shows a tqdm bar over epochs when stderr is a terminal; True/False
        force it. lr_schedule: a name, (name, {params}) or callable epoch -> lr (see
        fastbp.schedules), applied per epoch. on_divergence: when a loss becomes NaN or
        infinite, the parameters and optimizer state of the last good epoch are restored and
        fastbp.DivergenceError is raised ("raise") or a TrainingHealthWarning is given and fit
        returns ("warn"). Vanishing or exploding gradients give one TrainingHealthWarning
        each (see `health()`).
        """
        Xc, labels, targets, weights = self._check_data(X, y, sample_weight)
        val = None
        if validation_data is not None:
            if (not isinstance(validation_data, (tuple, list))
                    or len(validation_data) not in (2, 3)):
                raise TypeError("validation_data must be a pair (X_val, y_val) or a triple "
                                "(X_val, y_val, sample_weight_val); got "
                                f"{type(validation_data).__name__}")
            val = self._check_data(*validation_data, names=(
                "validation_data[0]", "validation_data[1]", "validation_data[2]"))
        if epochs is None:
            epochs = self._cfg["epochs"]
        epochs = _config._int("epochs", epochs, 0, "an integer >= 0")
        shuffle = self._cfg["shuffle"] if shuffle is None else _config._bool("shuffle", shuffle)
        if callbacks is None:
            callbacks = []
        elif callable(callbacks):
            callbacks = [callbacks]
        callbacks = list(callbacks)
        for cb in callbacks:
            if not callable(cb):
                raise TypeError(f"callbacks must be callables callback(trainer, epoch, logs);"
                                f" got {cb!r}")
        if progress is not None:
            progress = _config._bool("progress", progress)
        _config._choice("on_divergence", on_divergence, ("raise", "warn"))
        schedule = make_schedule(lr_schedule, self._cfg["lr"])
        recorded = {"loss", "grad_norm", "grad_norm_max", "lr", "time"}
        if self._accuracy(0, 1) is not None:
            recorded.add("accuracy")
        if val is not None:
            recorded |= {"val_loss"} | ({"val_accuracy"} if "accuracy" in recorded else set())
        schedule.resume(self.history, self.lr, recorded)
        for cb in callbacks:            # a callback watching a metric this fit never records
            monitor = getattr(cb, "monitor", None) if getattr(cb, "needs_monitor", False) \
                else None
            if monitor is not None and monitor not in recorded:
                raise ValueError(f"{type(cb).__name__} monitors {monitor!r}, which this fit "
                                 f"does not record (it records {sorted(recorded)}); pass "
                                 "validation_data or monitor another entry")

        n = Xc.shape[0]
        lay = self._layout
        L = lay.n_layers
        B = self._cfg["batch_size"]
        plan = safe_plan(self._train_plan)
        norms = np.empty((-(-n // B), L + 1))
        order = _row_order(n)
        weight_total = weights.sum(dtype=np.float64) if weights.size else n
        warned = set()
        good = None                      # the last good epoch's state (see _snapshot)
        run_epoch = self._epoch_runner(plan, Xc, labels, targets, weights, order, norms)
        val_device = None
        if val is not None and self._cfg["target"] == "cuda":
            val_device = self._device().data(*val)     # moved to the GPU once per fit

        from tqdm.auto import tqdm
        bar = tqdm(total=epochs, unit="epoch", disable=None if progress is None else not progress,
                   leave=True, dynamic_ncols=True)
        try:
            with self._compute(plan):
                for _ in range(epochs):
                    epoch = self.epochs_done
                    good = self._snapshot(good)  # before the schedule moves lr
                    if lr_schedule is not None:
                        self.lr = schedule.lr(epoch)
                    if shuffle:                  # a fresh permutation of 0..n-1, in place
                        order[:] = np.arange(n, dtype=order.dtype)
                        self._rng.shuffle(order)
                    t0 = time.perf_counter()
                    loss_sum, correct, self._step, bad_step = run_epoch()
                    seconds = time.perf_counter() - t0
                    if bad_step < 0 and not (np.isfinite(self._params.min())
                                             and np.isfinite(self._params.max())):
                        bad_step = norms.shape[0] - 1      # the epoch's last update blew up
                    if bad_step >= 0:
                        self._restore(good)
                        self._diverged(epoch, bad_step, on_divergence)
                        break
                    logs = {"loss": loss_sum / weight_total}
                    acc = self._accuracy(correct, n)
                    if acc is not None:
                        logs["accuracy"] = acc
                    logs["grad_norm"] = float(norms[:, L].mean())
                    logs["grad_norm_max"] = float(norms[:, L].max())
                    logs["layer_grad_norms"] = norms[:, :L].mean(axis=0).tolist()
                    logs["layer_grad_norms_max"] = norms[:, :L].max(axis=0).tolist()
                    logs["lr"] = self.lr
                    logs["time"] = seconds
                    if val is not None:
                        vloss, vcorrect, _ = self._loss_grad(*val, want_grad=False,
                                                             device_data=val_device)
                        logs["val_loss"] = vloss
                        vacc = self._accuracy(vcorrect, val[0].shape[0])
                        if vacc is not None:
                            logs["val_accuracy"] = vacc
                    for key, value in logs.items():
                        self.history.setdefault(key, []).append(value)
                    schedule.observe(logs)
                    for problem in diagnose(self.history):
                        key = (problem["kind"], problem["layer"])
                        if key not in warned:
                            warned.add(key)
                            warnings.warn(f"epoch {epoch}: {problem['message']}",
                                          TrainingHealthWarning, stacklevel=2)
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()
                                     if k in ("loss", "val_loss", "val_accuracy")})
                    stop = False
                    for cb in callbacks:
                        stop = bool(cb(self, epoch, dict(logs))) or stop
                    if stop:
                        break
        finally:
            bar.close()
        return self.history

    def _epoch_runner(self, plan, X, labels, targets, weights, order, norms):
        """A function running one epoch over the rows in `order` (filled by fit): returns
        (loss sum, correct, step after the epoch, -1 or the diverged step) and fills
        `norms`. Buffers are allocated here, once per fit."""
        lay = self._layout
        B = self._cfg["batch_size"]
        if plan.strategy == "cuda":
            net = self._device()
            data = net.data(X, labels, targets, weights, B)
            buffers = net.epoch_buffers(norms.shape[0])

            def run_cuda():
                # every epoch: a callback may have changed params (or lr) between epochs
                net.upload(self._params, self._m, self._v)
                out = net.train_epoch(data, order, B, self._hyper, self._step,
                                      self._dropout_seed, norms, buffers)
                net.download(self._params, self._m, self._v)   # once per epoch
                return out
            return run_cuda

        C = plan.chunks
        work, a_off, z_off, d_off = self._workspace(-(-min(B, X.shape[0]) // C), C)
        gslab = np.zeros((C, lay.n_params), dtype=self._dtype)
        block_lo, block_hi, block_layer = lay.blocks()
        block_sq = np.empty(block_lo.shape[0])
        chunk_loss, chunk_correct = np.empty(C), np.empty(C, dtype=np.int64)

        def run_cpu():
            return plan.kernels.train_epoch(
                self._params, gslab, self._m, self._v, work, X, labels, targets, weights,
                order, B, lay.sizes, lay.w_off, lay.b_off, self._act, self._dropout,
                self._dropout_seed, self._loss_code, a_off, z_off, d_off, self._opt_code,
                self._hyper, self._step, block_lo, block_hi, block_layer, block_sq, norms,
                chunk_loss, chunk_correct)
        return run_cpu

    def _snapshot(self, snap=None):
        """What an epoch may change, copied into `snap` (buffers allocated once per fit,
        not per epoch): restored when the epoch diverges."""
        if snap is None:
            snap = {"params": np.empty_like(self._params), "m": np.empty_like(self._m),
                    "v": np.empty_like(self._v)}
        for key in ("params", "m", "v"):
            np.copyto(snap[key], getattr(self, "_" + key))
        snap.update(step=self._step, rng_state=self._rng.bit_generator.state, lr=self.lr)
        return snap

    def _restore(self, snap):
        for key in ("params", "m", "v"):
            np.copyto(getattr(self, "_" + key), snap[key])
        self._step = snap["step"]
        self._rng.bit_generator.state = snap["rng_state"]
        self.lr = snap["lr"]

    def _diverged(self, epoch, bad_step, on_divergence):
        cfg = self._cfg
        hints = [f"a smaller lr (now {self.lr:g})"]
        if cfg["clip_norm"] is None:
            hints.append("clip_norm=1.0")
        hints.append("standardised inputs (and targets, for mse)")
        message = (f"training diverged at epoch {epoch}, step {bad_step} of that epoch: the "
                   f"loss became NaN or infinite. The parameters and optimizer state of the "
                   f"last good epoch ({epoch - 1 if epoch else 'the start'}) are restored. "
                   f"Try {', '.join(hints)}.")
        if on_divergence == "raise":
            raise DivergenceError(message, epoch, bad_step)
        warnings.warn(message, TrainingHealthWarning, stacklevel=3)

    def health(self):
        """The gradient diagnostics of the last epoch: {'ok': bool, 'problems': [...]} with
        each problem's kind ('vanishing', 'exploding', 'growing'), layer and advice, and the
        per-layer gradient norms (mean and max over the epoch's steps)."""
        problems = diagnose(self.history)
        return {"ok": not problems, "problems": problems,
                "layer_grad_norms": (self.history.get("layer_grad_norms") or [None])[-1],
                "layer_grad_norms_max": (self.history.get("layer_grad_norms_max") or [None])[-1],
                "grad_norm": (self.history.get("grad_norm") or [None])[-1]}

    def loss(self, X, y, sample_weight=None):
        """Mean loss over (X, y) as one batch at the current parameters (weighted mean
        with sample_weight)."""
        data = self._check_data(X, y, sample_weight)
        return float(self._loss_grad(*data, want_grad=False)[0])

    def gradient(self, X, y, sample_weight=None):
        """Gradient of `loss(X, y)` with respect to `params` (a flat array, same layout)."""
        data = self._check_data(X, y, sample_weight)
        return self._loss_grad(*data, want_grad=True)[2]

    def evaluate(self, X, y, sample_weight=None):
        """{'loss': mean loss, 'accuracy': ...} (accuracy for the classification losses:
        the fraction of correct classes, or of correct 0/1 outputs for binary_cross_entropy;
        unweighted)."""
        Xc, labels, targets, weights = self._check_data(X, y, sample_weight)
        loss, correct, _ = self._loss_grad(Xc, labels, targets, weights, want_grad=False)
        out = {"loss": float(loss)}
        acc = self._accuracy(correct, Xc.shape[0])
        if acc is not None:
            out["accuracy"] = float(acc)
        return out

    def _output(self, X):
        Xc = check_X(X, self._cfg["layers"][0], self._dtype)
        if self._cfg["target"] == "cuda":
            net = self._device()
            net.params.copy_to_device(self._params)
            return net.predict(Xc)
        plan = safe_plan(self._eval_plan)
        C = plan.chunks
        rows = min(EVAL_ROWS, Xc.shape[0])
        work, a_off, z_off, _ = self._workspace(rows, C)
        out = np.empty((Xc.shape[0], self._cfg["layers"][-1]), dtype=self._dtype)
        lay = self._layout
        with self._compute(plan):
            plan.kernels.predict(self._params, work, Xc, out, rows, lay.sizes, lay.w_off,
                                  lay.b_off, self._act, self._no_dropout, self._no_index,
                                  self._loss_code, a_off, z_off)
        return out

    def predict_proba(self, X):
        """Class probabilities (N, K): softmax (cross_entropy) or sigmoid per output
        (binary_cross_entropy)."""
        if self._cfg["loss"] in ("mse", "poisson"):
            raise AttributeError("predict_proba is defined for the classification losses "
                                 f"only; this Trainer has loss={self._cfg['loss']!r} "
                                 "(use predict)")
        return self._output(X)

    def predict(self, X):
        """Class indices (N,) for cross_entropy, 0/1 (N, K) for binary_cross_entropy,
        values (N, K) for mse."""
        out = self._output(X)
        loss = self._cfg["loss"]
        if loss == "cross_entropy":
            return out.argmax(axis=1)
        if loss == "binary_cross_entropy":
            return (out >= 0.5).astype(np.int64)
        return out

    def save(self, path, *, include_optimizer=True, metadata=None):
        """Write the model (and by default the optimizer state, step count, shuffling
        generator and history) to one .npz file, atomically. metadata: JSON-able dict."""
        from .io import save_trainer
        save_trainer(self, path, include_optimizer=include_optimizer, metadata=metadata)

    @classmethod
    def load(cls, path, target=None):
        """Read a file written by `save`; a damaged or foreign file raises ValueError.
        target: run the model on another target than the one it was saved from (a model
        trained on a GPU loads on a machine without one with target='cpu')."""
        from .io import load_trainer
        return load_trainer(cls, path, target)

    def __repr__(self):
        c = self._cfg
        return (f"Trainer(layers={c['layers']}, activation={c['activation']!r}, "
                f"loss={c['loss']!r}, optimizer={c['optimizer']!r}, lr={c['lr']}, "
                f"target={c['target']!r}, dtype={c['dtype']!r})")


def warmup(dtypes=("float32", "float64"), targets=("cpu", "parallel"), verbose=False):
    """Compile (or load from Numba's on-disk cache) the kernels of every dtype and target
    ahead of time, so a later fit, loss or predict starts at once; the kernels serve every
    depth, activation, loss and optimizer. Returns {(dtype, target): seconds}."""
    from .kernels import training_plan as _plan
    timings = {}
    rng = np.random.default_rng(0)
    for dtype in dtypes:
        X = rng.standard_normal((8, 3))
        y = np.arange(8) % 2
        for target in targets:
            t0 = time.perf_counter()
            t = Trainer([3, 4, 2], target=target, dtype=dtype, batch_size=4, seed=0)
            if target == "parallel":      # the parallel variant runs the "chunks" plan
                t._train_plan = _plan(target, [3, 4, 2], 4, max(2, t._eval_plan.chunks),
                                      "chunks")
            t.fit(X, y, validation_data=(X, y), epochs=1, progress=False)
            t.predict(X)
            timings[(dtype, target)] = time.perf_counter() - t0
            if verbose:
                print(f"fastbp: kernels for {dtype}/{target} ready in "
                      f"{timings[(dtype, target)]:.1f} s", flush=True)
    return timings
