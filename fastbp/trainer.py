"""The Trainer: validates, schedules, handles divergence, records history and calls back;
its Engine (fastbp.engine) holds the buffers and runs the compiled epochs."""
import contextlib
import inspect
import time
import warnings

import numba
import numpy as np
import scipy.sparse

from . import config as _config, rollback
from .data import check_sample_weight, check_X, check_y
from .engine import SPARSE_CPU_ONLY, Engine, Hyper, NetworkSpec, make_rows, row_order
from .health import DivergenceError, TrainingHealthWarning, diagnose
from .initializers import init_params
from .kernels.bf16 import host_has_avx512_bf16
from .layout import Layout
from .scaling import scale_features, scaling_arrays
from .schedules import make_schedule


def _hyper(cfg):
    """The optimizer settings the kernels take, from a validated configuration."""
    return Hyper(lr=float(cfg["lr"]), momentum=float(cfg["momentum"]),
                 nesterov=float(cfg["nesterov"]), beta1=float(cfg["betas"][0]),
                 beta2=float(cfg["betas"][1]), eps=float(cfg["eps"]),
                 decay=float(cfg["weight_decay"]), clip=float(cfg["clip_norm"] or 0.0),
                 alpha=float(cfg["alpha"]), decay_per_weight=float(cfg["decay_per_weight"]),
                 lazy=float(cfg.get("sparse_update") == "lazy"))


def _amx_tiles_left_unused():
    from .kernels import amx           # not at import: only bf16 models need it
    return amx.tiles_left_unused()


def _check_callbacks(callbacks):
    if callbacks is None:
        return []
    callbacks = [callbacks] if callable(callbacks) else list(callbacks)
    for cb in callbacks:
        if isinstance(cb, type):
            raise TypeError(f"callbacks: got the class {cb.__name__}; pass an instance, "
                            f"{cb.__name__}(...)")
        if not callable(cb):
            raise TypeError(f"callbacks must be callables callback(trainer, epoch, logs); "
                            f"got {cb!r}")
        try:
            signature = inspect.signature(cb)
        except (TypeError, ValueError):      # (a builtin without one: taken on trust)
            continue
        try:
            signature.bind(None, 0, {})
        except TypeError:
            raise TypeError(f"callbacks: {cb!r} cannot be called as callback(trainer, epoch, "
                            f"logs): its signature is {signature}") from None
    return callbacks


def _check_monitors(callbacks, recorded):
    """A callback watching a metric this fit never records is refused before training."""
    for cb in callbacks:
        monitor = getattr(cb, "monitor", None) if getattr(cb, "needs_monitor", False) else None
        if monitor is not None and monitor not in recorded:
            raise ValueError(f"{type(cb).__name__} monitors {monitor!r}, which this fit "
                             f"does not record (it records {sorted(recorded)}); pass "
                             "validation_data or monitor another entry")


def finish_epoch(trainer, epoch, logs, warned, bar, callbacks):
    """After an epoch's logs are in trainer.history (Trainer.fit, fastbp.distributed.fit):
    one TrainingHealthWarning per kind of problem and layer in the fit (`warned` holds those
    given), the progress bar moved, the callbacks called. True when one asks to stop."""
    dead = {layer for kind, layer in warned if kind == "dead"}
    for problem in diagnose(trainer.history, dead_before=dead):
        key = (problem["kind"], problem["layer"])
        if key not in warned:
            warned.add(key)
            warnings.warn(f"epoch {epoch}: {problem['message']}", TrainingHealthWarning,
                          stacklevel=3)                       # the user's fit call
    bar.update(1)
    bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()
                     if k in ("loss", "val_loss", "val_accuracy")})
    stop = False
    for cb in callbacks:
        stop = bool(cb(trainer, epoch, dict(logs))) or stop
    return stop


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
    sparse_update : {'dense', 'lazy'}
        With sparse X: 'dense' updates every parameter every step (the same model as on the
        dense copy of X); 'lazy' updates only the rows of W_0 (the input features) that the
        step's batch has stored entries in, as torch.optim.SparseAdam: much faster for wide
        inputs, a different optimizer (see the README's sparse section).
    dtype : {'float32', 'float64'}
    precision : {'full', 'bf16'}
        'bf16' (float32 models on the CPU targets): the large matrix products of training
        steps take their operands rounded to bfloat16 and sum in float32 (AVX512-BF16's
        dot products, about twice float32's work per instruction; emulated, slowly, on
        CPUs without them). Parameters, optimizer state, the other operations and every
        evaluation (predict, loss, gradient, validation) stay float32.
    n_threads : int or None
        Threads for target='parallel' (None: Numba's default, all cores).
    """


    def __init__(self, layers, activation="relu", loss="cross_entropy", optimizer="adam",
                 lr=1e-3, batch_size=32, epochs=10, *, momentum=0.0, nesterov=False,
                 betas=(0.9, 0.999), eps=1e-8, alpha=0.99, weight_decay=0.0,
                 decay_per_weight=False, clip_norm=None, dropout=0.0, init="auto",
                 sparse_update="dense", shuffle=True, target="cpu", dtype="float32",
                 precision="full", seed=None, n_threads=None):
        cfg = _config.validate(
            layers, activation=activation, loss=loss, optimizer=optimizer, lr=lr,
            batch_size=batch_size, epochs=epochs, momentum=momentum, nesterov=nesterov,
            betas=betas, eps=eps, alpha=alpha, weight_decay=weight_decay,
            decay_per_weight=decay_per_weight, clip_norm=clip_norm,
            dropout=dropout, init=init, sparse_update=sparse_update, shuffle=shuffle,
            target=target, dtype=dtype, precision=precision, seed=seed, n_threads=n_threads)
        if cfg["n_threads"] is not None and cfg["n_threads"] > numba.config.NUMBA_NUM_THREADS:
            raise ValueError(f"n_threads={cfg['n_threads']} is not allowed: at most "
                             f"{numba.config.NUMBA_NUM_THREADS} threads are available")
        self._cfg = cfg
        self._layout = Layout(cfg["layers"])
        self._dtype = np.dtype(cfg["dtype"])
        self._hyper = _hyper(cfg)
        self.engine = self._make_engine()
        self._weights = self._layout.weights(self.engine.params)
        self._biases = self._layout.biases(self.engine.params)
        self.metadata = {}   # JSON-able notes saved with the model (e.g. class names)
        self.reset()

    def _make_engine(self):
        cfg = self._cfg
        rates = _config.hidden_dropout(cfg)
        opt = cfg["optimizer"]
        network = NetworkSpec(
            layout=self._layout, dtype=self._dtype,
            act=np.array([_config.ACTIVATIONS[a] for a in _config.hidden_activations(cfg)],
                         dtype=np.int64),
            dropout=np.array(rates if any(rates) else [], dtype=np.float64),
            loss_code=_config.LOSSES[cfg["loss"]], opt_code=_config.OPTIMIZERS[opt],
            has_m=opt in ("adam", "adamw") or cfg["momentum"] > 0,
            has_v=opt in ("adam", "adamw", "rmsprop"), bf16=cfg["precision"] == "bf16")
        if cfg["precision"] == "bf16" and not host_has_avx512_bf16():
            warnings.warn("this CPU has no AVX512-BF16 instructions: precision='bf16' is "
                          "emulated here, slower than precision='full'", UserWarning,
                          stacklevel=3)
        elif cfg["precision"] == "bf16" and _amx_tiles_left_unused():
            warnings.warn("this CPU's AMX tiles are not available to this process (Linux "
                          "refused their state, or Numba compiles for other CPU features): "
                          "precision='bf16' runs on AVX512-BF16 instructions here, slower "
                          "than precision='full' on such CPUs", UserWarning, stacklevel=3)
        # a model saved or pickled on a larger machine uses at most the threads here
        threads = 1 if cfg["target"] != "parallel" else min(
            cfg["n_threads"] or numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS)
        return Engine(network, cfg["target"], threads, cfg["batch_size"])

    # ------------------------------------------------------------------ state

    def reset(self):
        """Re-initialise the parameters (from `seed`), the optimizer state, the shuffling
        generator and the history."""
        seed_seq = np.random.SeedSequence(self._cfg["seed"])
        init_ss, shuffle_ss, dropout_ss = seed_seq.spawn(3)
        self._dropout_seed = int(dropout_ss.generate_state(1, np.uint64)[0] >> np.uint64(1))
        params = self.engine.params        # drawn in place: no second params-sized buffer
        init_params(params, self._layout, _config.hidden_activations(self._cfg),
                    self._cfg["init"], np.random.default_rng(init_ss))
        self.engine.init(params)
        self._rng = np.random.default_rng(shuffle_ss)
        self._hyper = self._hyper._replace(lr=float(self._cfg["lr"]))
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
        return self.engine.params

    @params.setter
    def params(self, value):
        arr = np.asarray(value)
        shape = self.engine.params.shape
        if arr.shape != shape or arr.dtype.kind not in "biuf":
            raise ValueError(f"params must be a real array of shape {shape}; "
                             f"got {arr.dtype} of shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("params must be finite; got NaN or infinity")
        self.engine.params[:] = arr

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
        return self._hyper.lr

    @lr.setter
    def lr(self, value):
        # 0 is allowed here (a schedule may end there), not in the constructor
        lr = _config._real("lr", value, 0.0, np.inf, "a finite number >= 0")
        self._hyper = self._hyper._replace(lr=float(lr))

    def __getstate__(self):
        # views are rebuilt; the engine pickles its buffers, not its kernels; a stream's
        # open roll-back file stays with this process
        state = self.__dict__.copy()
        del state["_weights"], state["_biases"]
        state.pop("_shared_rollback", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if not isinstance(self._hyper, Hyper):     # pickled by a version with an array
            self._hyper = _hyper(self._cfg)._replace(lr=float(self._hyper[0]))
        if "engine" not in state:                  # ... and its buffers in the Trainer
            self.engine = self._make_engine()
            self.engine.set_state(state["_params"], state["_m"], state["_v"], state["_step"])
            for key in ("_params", "_m", "_v", "_step", "_act", "_dropout", "_no_dropout",
                        "_no_index", "_loss_code", "_opt_code"):
                self.__dict__.pop(key, None)
        self._weights = self._layout.weights(self.engine.params)
        self._biases = self._layout.biases(self.engine.params)

    @property
    def step(self):
        """Optimizer steps taken so far."""
        return self.engine.step

    @property
    def epochs_done(self):
        return len(self.history.get("loss", []))

    # --------------------------------------------------------------- helpers

    def check_data(self, X, y, sample_weight=None, names=("X", "y", "sample_weight"), *,
                   negative_weights=False):
        """(X, y, sample_weight) checked as `fit` checks them (ValueError/TypeError naming
        the argument) and converted once to the `Rows` the engine takes (X C-contiguous in
        the model's dtype, or CSR for scipy sparse X; labels or targets, row weights).
        `negative_weights`: accept negative weights, as scikit-learn's estimators do."""
        return self._rows(self._check_X(X, names[0]), y, sample_weight, names,
                          negative_weights)

    def _rows(self, Xc, y, sample_weight, names=("X", "y", "sample_weight"),
              negative_weights=False):
        """check_data for an X already checked (_check_X)."""
        labels, targets = check_y(y, Xc.shape[0], self._cfg["loss"], self._cfg["layers"][-1],
                                  self._dtype, names[1])
        weights = check_sample_weight(sample_weight, Xc.shape[0], self._dtype, names[2],
                                      negative_weights)
        return make_rows(Xc, labels, targets, weights, self._dtype)

    def _check_X(self, X, name="X"):
        Xc = check_X(X, self._cfg["layers"][0], self._dtype, name)
        if not isinstance(Xc, np.ndarray) and self._cfg["target"] == "cuda":
            raise ValueError(f"{name} is sparse: {SPARSE_CPU_ONLY}")
        return Xc

    @property
    def strategy(self):
        """How target='parallel' spreads a training step over threads: 'serial' (small
        steps) or 'chunks' (batch chunks, one gradient slab each); always 'serial' for
        target='cpu' and 'cuda' for target='cuda'."""
        return self.engine.strategy

    def get_state(self):
        """Copies of everything training changes: params, m and v (optimizer buffers; empty
        when the optimizer has none), step, lr, rng_state (the shuffling generator's) and
        dropout_seed. `set_state` takes them back (checkpoints, fastbp.distributed)."""
        return {**self.engine.state(), "lr": self.lr,
                "rng_state": self._rng.bit_generator.state,
                "dropout_seed": self._dropout_seed}

    def set_state(self, **state):
        """Set any of `get_state()`'s entries (arrays of the same shapes)."""
        unknown = set(state) - {"params", "m", "v", "step", "lr", "rng_state", "dropout_seed"}
        if unknown:
            raise TypeError(f"set_state got unknown entries {sorted(unknown)}")
        self.engine.set_state(**{k: state[k] for k in ("params", "m", "v", "step")
                                 if k in state})
        if "lr" in state:
            self.lr = state["lr"]
        if "rng_state" in state:
            self._rng.bit_generator.state = state["rng_state"]
        if "dropout_seed" in state:
            self._dropout_seed = int(state["dropout_seed"])

    def _accuracy(self, correct, n):
        loss = self._cfg["loss"]
        if loss in ("mse", "poisson"):
            return None
        return correct / (n if loss == "cross_entropy" else n * self._cfg["layers"][-1])

    # ------------------------------------------------------------- public API

    def fit(self, X, y, validation_data=None, *, sample_weight=None, epochs=None, shuffle=None,
            callbacks=None, progress=None, lr_schedule=None, on_divergence="raise",
            restore_on_divergence=True):
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
        returns ("warn"). restore_on_divergence: True keeps a copy of the parameters,
        optimizer state, step, shuffling state and lr at the start of every epoch for that
        roll-back (params and each optimizer buffer, written to a temporary file: see
        fastbp/rollback.py; in memory where no file can be written); False keeps none and
        puts nothing back: the model stays as the diverging epoch left it (its updates
        before the step whose loss was NaN or infinite; the parameters may then be
        non-finite), for models whose copy costs too much time or disk.
        Vanishing, exploding or dead gradients and a loss that blew up give one
        TrainingHealthWarning each (see `health()`).
        """
        rows = self.check_data(X, y, sample_weight)
        val = self._check_validation_data(validation_data)
        if epochs is None:
            epochs = self._cfg["epochs"]
        epochs = _config._int("epochs", epochs, 0, "an integer >= 0")
        shuffle = self._cfg["shuffle"] if shuffle is None else _config._bool("shuffle", shuffle)
        callbacks = _check_callbacks(callbacks)
        if progress is not None:
            progress = _config._bool("progress", progress)
        _config._choice("on_divergence", on_divergence, ("raise", "warn"))
        restore = _config._bool("restore_on_divergence", restore_on_divergence)
        if restore:
            rollback.chosen_folder()     # FASTBP_ROLLBACK_DIR, if set, must be a folder
        schedule = make_schedule(lr_schedule, self._cfg["lr"])
        note = schedule.check(self.epochs_done, epochs)
        if note:
            warnings.warn(note, UserWarning, stacklevel=2)
        recorded = self._recorded(val is not None)
        schedule.resume(self.history, self.lr, recorded)
        _check_monitors(callbacks, recorded)

        # every buffer of the fit is allocated here, once; the data moved to the GPU once
        n, L, B = rows.n, self._layout.n_layers, self._cfg["batch_size"]
        norms = np.empty((-(-n // B), L + 2))    # + each step's loss sum (cpu.train_epoch)
        order = row_order(n)
        epochs_runner = self.engine.epoch_runner(rows, order, norms, self._hyper)
        val_resident = None if val is None else self.engine.resident(val)
        shared = getattr(self, "_shared_rollback", None)     # (see _one_rollback_file)
        good = (shared or rollback.RollbackCopy()) if restore else None   # the last good epoch
        warned = set()
        fresh = epochs and not self.history.get("loss") and self.step == 0

        from tqdm.auto import tqdm
        bar = tqdm(total=epochs, unit="epoch", disable=None if progress is None else not progress,
                   leave=True, dynamic_ncols=True)
        try:
            with self.engine.compute(epochs_runner.plan):
                for _ in range(epochs):
                    epoch = self.epochs_done
                    if restore:
                        self._snapshot(good)     # before the schedule moves lr
                    step0 = self.step
                    if lr_schedule is not None:
                        self.lr = schedule.lr(epoch)
                    if shuffle:                  # a fresh permutation of 0..n-1, in place
                        _iota(order)             # (no (n,) temporary per epoch)
                        self._rng.shuffle(order)
                    t0 = time.perf_counter()
                    loss_sum, correct, bad_step = epochs_runner.run(self._hyper,
                                                                    self._dropout_seed)
                    seconds = time.perf_counter() - t0
                    params = self.engine.params
                    if bad_step < 0 and not (np.isfinite(params.min())
                                             and np.isfinite(params.max())):
                        bad_step = norms.shape[0] - 1      # the epoch's last update blew up
                    if bad_step >= 0:
                        unread = None
                        if restore:
                            try:
                                self._restore(good)
                            except OSError as e:       # the file could not be read back
                                unread = f"{type(e).__name__}: {e}"
                        self._diverged(epoch, bad_step, on_divergence,
                                       restore and unread is None, self.step - step0, unread)
                        break
                    logs = self._epoch_logs(rows, loss_sum, correct, norms, seconds)
                    if val is not None:
                        logs.update(self._validation_logs(val, val_resident))
                    for key, value in logs.items():
                        self.history.setdefault(key, []).append(value)
                    if fresh:
                        fresh = False
                        start = self._start_loss(rows, order, norms)
                        if start is not None:
                            self.history.setdefault("initial_loss", [start])
                    schedule.observe(logs)
                    if finish_epoch(self, epoch, logs, warned, bar, callbacks):
                        break
        finally:
            bar.close()
            if good is not None and good is not shared:
                good.close()
        return self.history

    @contextlib.contextmanager
    def _one_rollback_file(self):
        """Every fit inside reuses one roll-back copy, overwritten in place: a stream's
        chunks, each a fit of its own, open one temporary file per pass, not one each."""
        self._shared_rollback = rollback.RollbackCopy()
        try:
            yield
        finally:
            self._shared_rollback.close()
            self._shared_rollback = None

    def _start_loss(self, rows, order, norms):
        """The mean loss of the first epoch's first batch at the initial parameters (its
        step record, taken before its update): the reference of health()'s "loss blew
        up". None when it is not finite."""
        B = min(self._cfg["batch_size"], rows.n)
        if rows.weights.size:
            total = float(rows.weights[order[:B]].sum(dtype=np.float64))
        else:
            total = float(B)
        loss = float(norms[0, self._layout.n_layers + 1]) / total if total > 0 else np.nan
        return loss if np.isfinite(loss) else None

    def _check_validation_data(self, validation_data):
        if validation_data is None:
            return None
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise TypeError("validation_data must be a pair (X_val, y_val) or a triple "
                            "(X_val, y_val, sample_weight_val); got "
                            f"{type(validation_data).__name__}")
        return self.check_data(*validation_data, names=(
            "validation_data[0]", "validation_data[1]", "validation_data[2]"))

    def _recorded(self, validating):
        """The history entries every epoch of this fit records (schedules and callbacks may
        only watch these)."""
        recorded = {"loss", "grad_norm", "grad_norm_max", "lr", "time"}
        if self._accuracy(0, 1) is not None:
            recorded.add("accuracy")
        if validating:
            recorded |= {"val_loss"} | ({"val_accuracy"} if "accuracy" in recorded else set())
        return recorded

    def _epoch_logs(self, rows, loss_sum, correct, norms, seconds):
        L = self._layout.n_layers
        logs = {"loss": loss_sum / rows.weight_total}
        acc = self._accuracy(correct, rows.n)
        if acc is not None:
            logs["accuracy"] = acc
        logs["grad_norm"] = float(norms[:, L].mean())
        logs["grad_norm_max"] = float(norms[:, L].max())
        logs["layer_grad_norms"] = norms[:, :L].mean(axis=0).tolist()
        logs["layer_grad_norms_max"] = norms[:, :L].max(axis=0).tolist()
        logs["lr"] = self.lr
        logs["time"] = seconds
        return logs

    def _validation_logs(self, val, resident):
        vloss, vcorrect, _ = self.engine.loss_grad(val, want_grad=False, resident=resident)
        logs = {"val_loss": vloss}
        vacc = self._accuracy(vcorrect, val.n)
        if vacc is not None:
            logs["val_accuracy"] = vacc
        return logs

    def _snapshot(self, good):
        """What an epoch may change, saved in `good` (a RollbackCopy) to be restored when
        the epoch diverges: the engine's params, optimizer state and step, the shuffling
        generator and lr. Every bit of params, m and v can change in an epoch and an update
        cannot be undone exactly in floating point, so an exact roll-back needs the whole
        copy, (1 + optimizer buffers) x params bytes: it goes to a temporary file, not the
        process's memory (rollback.py; fit(..., restore_on_divergence=False) keeps none)."""
        try:
            good.save(self.engine)
        except MemoryError:                   # no file: the copy is allocated (once)
            eng = self.engine
            size = (eng.params.nbytes + eng.m.nbytes + eng.v.nbytes) / 1e6
            raise MemoryError(f"no memory for the copy of the parameters and optimizer "
                              f"state ({size:,.1f} MB) that fit keeps to undo a divergence; "
                              "fit(..., restore_on_divergence=False) trains without "
                              "it") from None
        good.rng_state, good.lr = self._rng.bit_generator.state, self.lr

    def _restore(self, good):
        good.restore(self.engine)
        self._rng.bit_generator.state = good.rng_state
        self.lr = good.lr

    def _diverged(self, epoch, bad_step, on_divergence, restored=True, updates=0,
                  unread=None):
        """Raise or warn after a divergence at step `bad_step` of `epoch`; `restored`: the
        last good epoch was put back; otherwise the epoch made `updates` updates, or (unread:
        the error) the copy to restore could not be read back."""
        cfg = self._cfg
        hints = [f"a smaller lr (now {self.lr:g})"]
        if cfg["clip_norm"] is None:
            hints.append("clip_norm=1.0")
        hints.append("standardised inputs (and targets, for mse)")
        if restored:
            what = (f"The parameters and optimizer state of the last good epoch "
                    f"({epoch - 1 if epoch else 'the start'}) are restored.")
        elif unread:
            what = (f"The copy of the last good epoch could not be read back from its "
                    f"temporary file ({unread}): the parameters and optimizer state may be "
                    "partly restored and should not be used; load a saved model.")
        else:
            params = self.engine.params
            finite = bool(np.isfinite(params.min()) and np.isfinite(params.max()))
            what = (f"Nothing was restored (restore_on_divergence=False): the model is as "
                    f"that epoch left it, after {updates} of its updates"
                    f"{'' if finite else ', with non-finite parameters'}.")
        message = (f"training diverged at epoch {epoch}, step {bad_step} of that epoch: the "
                   f"loss became NaN or infinite. {what} Try {', '.join(hints)}.")
        if on_divergence == "raise":
            raise DivergenceError(message, epoch, bad_step, restored)
        warnings.warn(message, TrainingHealthWarning, stacklevel=3)

    def health(self):
        """The diagnostics of the last epoch: {'ok': bool, 'problems': [...]} with each
        problem's kind ('vanishing', 'exploding', 'growing', 'dead', 'loss_blowup'), layer
        (None when not one layer's) and advice, and the per-layer gradient norms (mean and
        max over the epoch's steps)."""
        problems = diagnose(self.history)
        return {"ok": not problems, "problems": problems,
                "layer_grad_norms": (self.history.get("layer_grad_norms") or [None])[-1],
                "layer_grad_norms_max": (self.history.get("layer_grad_norms_max") or [None])[-1],
                "grad_norm": (self.history.get("grad_norm") or [None])[-1]}

    def loss(self, X, y, sample_weight=None):
        """Mean loss over (X, y) as one batch at the current parameters (weighted mean
        with sample_weight)."""
        rows = self.check_data(X, y, sample_weight)
        return float(self.engine.loss_grad(rows, want_grad=False)[0])

    def gradient(self, X, y, sample_weight=None):
        """Gradient of `loss(X, y)` with respect to `params` (a flat array, same layout)."""
        rows = self.check_data(X, y, sample_weight)
        return self.engine.loss_grad(rows, want_grad=True)[2]

    def evaluate(self, X, y, sample_weight=None, *, scaling=True):
        """{'loss': mean loss, 'accuracy': ...} (accuracy for the classification losses:
        the fraction of correct classes, or of correct 0/1 outputs for binary_cross_entropy;
        unweighted). scaling: as for predict_proba; mse targets are standardised too where
        `metadata` says how, so the loss is the one training reported."""
        Xc, y_scale, y_shift = self._inputs(X, scaling)
        rows = self._rows(Xc, y, sample_weight)
        if y_scale.size:
            rows = rows._replace(targets=(rows.targets - y_shift) / y_scale)
        loss, correct, _ = self.engine.loss_grad(rows, want_grad=False)
        out = {"loss": float(loss)}
        acc = self._accuracy(correct, rows.n)
        if acc is not None:
            out["accuracy"] = float(acc)
        return out

    def _inputs(self, X, scaling):
        """X checked and, with scaling, standardised as the model's metadata says
        (fastbp.scaling: a model saved by `fastbp train --scale standard`), and the
        (y_scale, y_shift) between the network's mse outputs and the targets' units."""
        Xc = self._check_X(X)
        x_shift, x_scale, y_scale, y_shift = scaling_arrays(self, scaling)
        if x_shift.size:       # sparse X is scaled as it came (checked: Xc, the kernels' CSR)
            Xc = self._check_X(scale_features(X if scipy.sparse.issparse(X) else Xc,
                                              x_shift, x_scale))
        return Xc, y_scale, y_shift

    def _output(self, X, scaling):
        Xc, y_scale, y_shift = self._inputs(X, scaling)
        return self.engine.predict(Xc), y_scale, y_shift

    def predict_proba(self, X, *, scaling=True):
        """Class probabilities (N, K): softmax (cross_entropy) or sigmoid per output
        (binary_cross_entropy). scaling: apply the feature standardisation stored in
        `metadata` by `fastbp train --scale standard`, as `fastbp predict`, the ONNX export
        and `compiled_forward` do (a model built in Python has none); False: X is what the
        network takes, as for `fit`."""
        if self._cfg["loss"] in ("mse", "poisson"):
            raise AttributeError("predict_proba is defined for the classification losses "
                                 f"only; this Trainer has loss={self._cfg['loss']!r} "
                                 "(use predict)")
        return self._output(X, scaling)[0]

    def predict(self, X, *, scaling=True):
        """Class indices (N,) for cross_entropy, 0/1 (N, K) for binary_cross_entropy,
        values (N, K) for mse and poisson. scaling: as for predict_proba; for mse, the
        outputs are also taken back to the targets' units where `metadata` holds their
        standardisation."""
        out, y_scale, y_shift = self._output(X, scaling)
        loss = self._cfg["loss"]
        if loss == "cross_entropy":
            return out.argmax(axis=1)
        if loss == "binary_cross_entropy":
            return (out >= 0.5).astype(np.int64)
        return out * y_scale + y_shift if y_scale.size else out

    def save(self, path, *, include_optimizer=True, metadata=None):
        """Write the model (and by default the optimizer state, step count, shuffling
        generator and history) to one .npz file, atomically. metadata: JSON-able dict."""
        from .io import save_trainer
        save_trainer(self, path, include_optimizer=include_optimizer, metadata=metadata)

    def to_onnx(self, path, *, scaling=True):
        """Write the model as an ONNX graph (the `onnx` extra: pip install "fastbp[onnx]"):
        input 'X' (N, n_0), output 'probabilities' (as predict_proba; classification losses)
        or 'predictions' (as predict; mse, poisson), N dynamic, in the model's dtype. The
        feature/target standardisation `fastbp train` saves in `metadata` is part of the
        graph unless scaling=False (see fastbp.export). Returns the path (must end in .onnx)."""
        from .export import to_onnx
        return to_onnx(self, path, scaling=scaling)

    def compiled_forward(self, *, scaling=True):
        """A Numba-compiled `forward(X) -> out` of the current parameters (a snapshot):
        X 2-D in the model's dtype, out as predict_proba (classification losses) or predict
        (mse, poisson). Call it from your own `@njit` functions with no Python per call
        (see fastbp.export)."""
        from .export import compiled_forward
        return compiled_forward(self, scaling=scaling)

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
                f"batch_size={c['batch_size']}, epochs={c['epochs']}, "
                f"target={c['target']!r}, dtype={c['dtype']!r}, seed={c['seed']!r})")


def _iota(order):
    """order[:] = 0, 1, ..., n-1 in place, in O(n) and without a temporary."""
    if order.shape[0]:
        order.fill(1)
        order[0] = 0
        np.cumsum(order, out=order)


def warmup(dtypes=("float32", "float64"), targets=("cpu", "parallel"), verbose=False,
           sparse=False):
    """Compile (or load from Numba's on-disk cache or the kernels the package ships) the
    kernels of every dtype and target for dense data ahead of time, so a later fit, loss,
    gradient or predict starts at once; the kernels serve every depth, activation, loss and
    optimizer. Sparse (CSR) data has kernels of its own (kernels/variants.py), compiled at
    the first sparse fit, or here with sparse=True (both sparse_update modes). targets may
    include 'cuda' (the GPU kernels at the current block sizes, both product tiles; a
    missing GPU raises CudaUnavailableError). Returns {(dtype, target): seconds}."""
    from .kernels import training_plan as _plan
    dtypes = (dtypes,) if isinstance(dtypes, str) else tuple(dtypes)
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if "cuda" in targets:                 # no GPU: say so before compiling anything
        from .kernels import cuda_backend
        cuda_backend.load()
    timings = {}
    rng = np.random.default_rng(0)
    for dtype in dtypes:
        X = rng.standard_normal((8, 3))
        y = np.arange(8) % 2
        for target in targets:
            t0 = time.perf_counter()
            runs = [(X, "dense")]
            if sparse and target != "cuda":   # CSR rows: variants of their own, each update
                import scipy.sparse
                runs += [(scipy.sparse.csr_matrix(X), update) for update in ("dense", "lazy")]
            for data, update in runs:
                t = Trainer([3, 4, 2], target=target, dtype=dtype, batch_size=4, seed=0,
                            sparse_update=update)
                if target == "parallel":      # the parallel variant runs the "chunks" plan
                    t.engine.train_plan = _plan(target, [3, 4, 2], 4,
                                                max(2, t.engine.eval_plan.chunks), "chunks")
                t.fit(data, y, validation_data=(data, y), epochs=1, progress=False)
                t.gradient(data, y)           # loss_grad: Trainer.gradient, lbfgs
                t.predict(data)
            if target == "cuda":          # the products' larger tiles (large layers only)
                t.engine.device().build_large_products()
            timings[(dtype, target)] = time.perf_counter() - t0
            if verbose:
                print(f"fastbp: kernels for {dtype}/{target} ready in "
                      f"{timings[(dtype, target)]:.1f} s", flush=True)
    return timings
