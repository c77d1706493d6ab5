"""Scale out on Dask: out-of-core training on one machine, and data-parallel local SGD across
the workers of a cluster. `pip install "fastbp[dask]"`.

- `fit_incremental(model, X, y)`: one pass per epoch over the row blocks of a Dask array or
  DataFrame (or over an iterable of chunks, or a Parquet file: fastbp.streaming), in a
  shuffled block order, each block computed, trained on with the compiled kernel
  (`partial_fit` semantics) and dropped: memory stays at about one block.
- `fit(trainer, X, y, client=...)`: synchronous local SGD with parameter averaging, `epochs`
  passes over the data as `Trainer.fit` (each worker's rows once per epoch). Each round every
  worker starts from the same flat parameter buffer (and optimizer state), runs up to
  `local_steps` minibatch steps on its own persisted partitions, and sends its buffers back;
  the driver averages them weighted by rows. Only flat buffers travel. A worker that dies
  mid-round is survived: Dask reruns its task from the same round's starting buffers.

Threads: each Dask worker runs one fastbp task at a time; give every worker
`nthreads=1` and let fastbp use `n_threads` = cores per worker (target='parallel'), or run
target='cpu' with as many single-threaded workers as cores. Never both, or threads
oversubscribe the cores. fastbp falls back to serial code off the main thread when Numba's
`workqueue` layer is the only one available (see README, "Threads").
"""
import math
import os
import time
import warnings

import numpy as np
from scipy import sparse

from . import config as _config
from .health import DivergenceError, TrainingHealthWarning
from .streaming import check_epochs, model_rng, train_epochs
from .trainer import Trainer, finish_epoch

LOCAL_STEPS = 50   # default minibatch steps per worker between two averages


def _dask():
    try:
        import dask
        import dask.array as da
    except ImportError:
        raise ImportError("fastbp.distributed needs Dask: pip install \"fastbp[dask]\"") from None
    return dask, da


def _is_dask(X):
    return hasattr(X, "dask") and hasattr(X, "to_delayed")


def _blocks(X, y):
    """(X block, y block) pairs of lazy Dask objects, one per row block / partition; what
    can be checked without computing anything (the types, a DataFrame's label column, the
    rows of X and y where Dask knows them) is, naming X or y."""
    dask, da = _dask()
    if not _is_dask(X):
        raise TypeError(f"X must be a Dask array or a Dask DataFrame; got "
                        f"{type(X).__module__}.{type(X).__name__} (in-memory data: "
                        "Trainer.fit, or dask.array.from_array(X, chunks=...))")
    if not hasattr(X, "chunks"):
        # a Dask DataFrame: y is a column name or a Dask Series with the same partitions
        if isinstance(y, str):
            if y not in X.columns:
                raise ValueError(f"y={y!r} is not a column of X (its columns: "
                                 f"{', '.join(map(str, X.columns))})")
            X, y = X.drop(columns=[y]), X[y]
        elif not _is_dask(y):
            raise TypeError("with a Dask DataFrame X, y must be one of its column names or "
                            f"a Dask Series; got {type(y).__name__}")
        return list(zip(X.to_delayed(), y.to_delayed()))
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D Dask array; got {X.ndim} dimension(s)")
    n_x, n_y = X.shape[0], np.shape(y)[0] if np.ndim(y) else None
    if n_y is not None and not (np.isnan(n_x) or np.isnan(n_y)) and n_x != n_y:
        raise ValueError(f"X has {n_x} rows and y {n_y}; they must match")
    if len(X.chunks[1]) != 1:
        X = X.rechunk({1: -1})
    y = da.asarray(y).rechunk({0: X.chunks[0]})
    if y.ndim == 2 and len(y.chunks[1]) != 1:
        y = y.rechunk({1: -1})
    xs = X.to_delayed().ravel()
    ys = y.to_delayed().ravel() if y.ndim == 1 else y.to_delayed()[:, 0]
    return list(zip(xs, ys))


def _n_features(X, y):
    """X's feature columns where Dask knows them (None where it does not)."""
    if hasattr(X, "chunks"):
        n = X.shape[1]
        return None if np.isnan(n) else int(n)
    return len(X.columns) - (1 if isinstance(y, str) else 0)


def fit_incremental(model, X, y=None, *, epochs=1, classes=None, shuffle_blocks=True,
                    random_state=None, progress=None, restore_on_divergence=True):
    """Train `model` out of core: `epochs` passes over the row blocks of X, y, each block
    computed, trained on and released, in a shuffled block order per epoch.

    model: a fastbp MLPClassifier/MLPRegressor (trained with `partial_fit`) or a Trainer
    (trained with `fit(epochs=1)` per block; its `history` gets one entry per epoch). X, y:
    Dask arrays (row blocks), a Dask DataFrame with y a column name or a Dask Series, X an
    iterable of (X_chunk, y_chunk) pairs, or a callable returning a fresh such iterable for
    each epoch; or X a Parquet file or directory and y its label column (streamed with
    pyarrow: `fastbp.streaming.fit_parquet`). classes: all class labels, for a classifier's
    first partial_fit. random_state: the block order (default the model's seed or
    random_state, so a seeded model trains the same way every run). progress: a tqdm bar
    over rows (None: when stderr is a terminal). restore_on_divergence: a Trainer's `fit`
    argument for every block (False: no roll-back copy of its state; estimators, trained
    with partial_fit, keep none anyway). Returns model."""
    if isinstance(X, (str, os.PathLike)):
        from .streaming import fit_parquet
        return fit_parquet(model, X, label=y, epochs=epochs, classes=classes,
                           shuffle=shuffle_blocks, random_state=random_state,
                           progress=progress, restore_on_divergence=restore_on_divergence)
    if _is_dask(X):
        blocks = _blocks(X, y)
        total = sum(int(c) for c in X.chunks[0]) if hasattr(X, "chunks") else None
    elif isinstance(X, np.ndarray) or sparse.issparse(X) or hasattr(X, "iloc"):
        # iterable, but over rows or columns, not (X_chunk, y_chunk) pairs
        raise TypeError(f"X must be a Dask array, a Dask DataFrame, an iterable of "
                        f"(X_chunk, y_chunk) pairs, a callable returning one, or a Parquet "
                        f"path; got {type(X).__module__}.{type(X).__name__}, which is in "
                        f"memory: train it with model.fit(X, y), or pass [(X, y)]")
    elif callable(X) or hasattr(X, "__iter__"):
        blocks, total = None, None
    else:
        raise TypeError("X must be a Dask array, a Dask DataFrame, an iterable of "
                        "(X_chunk, y_chunk) pairs, a callable returning one, or a Parquet "
                        "path")
    epochs = check_epochs(epochs, model)
    rng = model_rng(model, random_state)

    def chunks(epoch):
        if blocks is not None:
            order = rng.permutation(len(blocks)) if shuffle_blocks else range(len(blocks))
            for i in order:
                xb, yb = _dask()[0].compute(*blocks[i])    # this block only
                yield np.asarray(xb), np.asarray(yb)
                del xb, yb                # released before the next block is computed
            return
        source = X() if callable(X) else X
        if not callable(X) and epoch and iter(source) is source:
            raise TypeError("X is a one-shot iterator: pass a callable that returns a "
                            "fresh iterable of chunks for every epoch")
        for xb, yb in source:
            if hasattr(xb, "compute"):
                xb, yb = _dask()[0].compute(xb, yb)
            # scipy sparse chunks are trained as CSR
            yield (xb if sparse.issparse(xb) else np.asarray(xb)), np.asarray(yb)

    return train_epochs(model, chunks, epochs, classes=classes, progress=progress,
                        total_rows=total, restore_on_divergence=restore_on_divergence)


# ----------------------------------------------------------------- data parallel

def _join(parts):
    return np.concatenate([np.asarray(p) for p in parts])


_ROUND_LOGS = ("loss", "accuracy", "grad_norm", "grad_norm_max", "layer_grad_norms",
               "layer_grad_norms_max")


def _local_round(config, state, X, y, offset, n_rows, shuffle, seed):
    """On a worker: `n_rows` rows of its data X, y (its partitions, joined) from position
    `offset` of an endless sequence of passes over them (each pass in a fresh seeded order
    when shuffle), trained from `state` as consecutive minibatches. Returns the new state,
    n_rows, the round's logs (as one Trainer.fit epoch's) and, for a fresh model, its
    initial loss; or {"diverged": message, "step": ...} when the loss became NaN/inf."""
    size = X.shape[0]
    positions = offset + np.arange(n_rows)
    passes = positions // size
    idx = np.empty(n_rows, dtype=np.int64)
    for p in np.unique(passes):
        sel = passes == p
        order = np.random.default_rng([seed, int(p)]).permutation(size) if shuffle \
            else np.arange(size)
        idx[sel] = order[positions[sel] % size]
    t = _worker_trainer(config)
    t.set_state(**state)
    t.history = {}
    with warnings.catch_warnings():          # the driver judges health, per epoch
        warnings.simplefilter("ignore", TrainingHealthWarning)
        try:
            t.fit(X[idx], y[idx], epochs=1, shuffle=False, progress=False)
        except DivergenceError as e:
            return {"diverged": str(e), "step": e.step}
    return {**t.engine.state(), "rows": n_rows,
            "logs": {k: t.history[k][-1] for k in _ROUND_LOGS if k in t.history},
            "initial_loss": (t.history.get("initial_loss") or [None])[0]}


_TRAINERS = {}


def _worker_trainer(config):
    """One Trainer per configuration per worker process, reused across rounds (its buffers
    are overwritten from the round's state; building one costs an initialisation)."""
    key = repr(sorted(config.items()))
    if key not in _TRAINERS:
        cfg = dict(config)
        _TRAINERS.clear()
        _TRAINERS[key] = Trainer(cfg.pop("layers"), **cfg)
    return _TRAINERS[key]


def _persist(client, blocks):
    """The partitions computed and kept on the workers, spread round-robin (each partition
    lives on one worker) and joined once per worker: {worker: (X future, y future)}."""
    from distributed import wait
    workers = sorted(client.scheduler_info()["workers"])
    if not workers:
        raise ValueError("the Dask client has no workers")
    assignment = {w: [] for w in workers}
    for i, (xb, yb) in enumerate(blocks):
        assignment[workers[i % len(workers)]].append((xb, yb))
    persisted = {}
    for w, parts in assignment.items():
        if not parts:
            continue
        # futures held by the driver keep the computed partitions in the workers' memory
        # (loose placement: if w dies, Dask recomputes them on another worker)
        xs = client.compute([p[0] for p in parts], workers=[w], allow_other_workers=True)
        ys = client.compute([p[1] for p in parts], workers=[w], allow_other_workers=True)
        persisted[w] = (client.submit(_join, xs, workers=[w], allow_other_workers=True),
                        client.submit(_join, ys, workers=[w], allow_other_workers=True))
    wait([f for pair in persisted.values() for f in pair])
    return persisted


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}={value!r} is not allowed: an integer >= {low}")
    return int(value)


def fit(trainer, X, y, *, client=None, epochs=None, local_steps=None, validation_data=None,
        callbacks=None, shuffle=True, random_state=None, progress=None,
        on_divergence="raise", restore_on_divergence=True, rounds=None):
    """Data-parallel training on a Dask cluster, as `Trainer.fit` on one machine: `epochs`
    passes over the data (default the Trainer's `epochs`), every worker's rows once per
    epoch. Synchronous local SGD: each round every worker starts from the same buffers, runs
    up to `local_steps` minibatch steps on its own rows (default 50, and never past the end of
    its rows' epoch), and the driver averages the parameters and the optimizer state
    (momentum, Adam moments) weighted by rows. With one worker and local_steps=1 this is
    `Trainer.fit` (shuffle=False: bit for bit).

    trainer: a fastbp Trainer (its configuration, parameters and optimizer state are the
    starting point; it holds the result). X, y: Dask arrays partitioned by rows or a Dask
    DataFrame (y a column name); partitions are persisted on the workers and never gathered.
    validation_data, callbacks, progress (a tqdm bar over epochs; None: when stderr is a
    terminal) and on_divergence as in `Trainer.fit`. restore_on_divergence: True keeps the
    driver's copy of the state at the start of every epoch and puts it back when a round
    diverges; False keeps none, and the model stays as the last round before the diverging
    one left it (for states whose extra copy would not fit in the driver's memory). Returns
    trainer, whose `history` gets
    one entry per epoch as from `Trainer.fit` (loss, accuracy, gradient norms, lr, time,
    val_loss, val_accuracy) and `trainer.distributed_stats` (workers, epochs, rounds,
    local_steps, bytes_per_round: the state sent to and from the workers in a round,
    rows_per_round: the rows trained in a round by all workers together, on average,
    rows_per_worker: {worker: its rows}).

    rounds (deprecated): run exactly `rounds` rounds of `local_steps` (default 1) steps per
    worker instead of epochs, with one history entry per round: fastbp 0.1's behaviour."""
    _dask()                               # a clear message when Dask is missing
    from distributed import get_client
    from tqdm.auto import tqdm
    from .trainer import _check_callbacks
    if not isinstance(trainer, Trainer):
        raise TypeError("fastbp.distributed.fit takes a fastbp Trainer")
    if rounds is not None:
        if epochs is not None:
            raise ValueError("give epochs= (passes over the data) or the deprecated rounds=, "
                             "not both")
        warnings.warn("fastbp.distributed.fit(rounds=...) is deprecated: give epochs= "
                      "(passes over the data, default the Trainer's epochs) and local_steps= "
                      "(steps between averages, default 50)", FutureWarning, stacklevel=2)
        rounds = _check_int("rounds", rounds, 1)
        local_steps = _check_int("local_steps", 1 if local_steps is None else local_steps, 1)
    else:
        epochs = _check_int("epochs", trainer.config["epochs"] if epochs is None else epochs,
                            0)
        local_steps = _check_int("local_steps",
                                 LOCAL_STEPS if local_steps is None else local_steps, 1)
    if on_divergence not in ("raise", "warn"):
        raise ValueError(f"on_divergence={on_divergence!r} is not allowed: 'raise' or 'warn'")
    restore = _config._bool("restore_on_divergence", restore_on_divergence)
    callbacks = _check_callbacks(callbacks)
    val = None if validation_data is None else tuple(validation_data)
    if val is not None:
        trainer.check_data(*val, names=("validation_data[0]", "validation_data[1]",
                                        "validation_data[2]"))
    client = client or get_client()
    blocks = _blocks(X, y)
    n_features = _n_features(X, y)
    if n_features is not None and n_features != trainer.layers[0]:
        raise ValueError(f"X has {n_features} feature columns; the Trainer's first layer "
                         f"takes {trainer.layers[0]}")
    persisted = _persist(client, blocks)
    sizes = {w: client.submit(len, xs, workers=[w]).result()
             for w, (xs, ys) in persisted.items()}
    if not sum(sizes.values()):
        raise ValueError("X has no rows")
    config = dict(trainer.config)
    B = config["batch_size"]
    seed = int(model_rng(trainer, random_state).integers(2**31))
    seeds = {w: [seed, k] for k, w in enumerate(persisted)}
    engine = trainer.engine
    state_bytes = engine.params.nbytes + engine.m.nbytes + engine.v.nbytes
    fresh = trainer.step == 0 and not trainer.history.get("loss")

    def plan_of_epoch(e):
        """[{worker: (offset, rows)}] for the rounds of pass `e` over every worker's rows."""
        per_round = local_steps * B
        n_rounds = max(math.ceil(n / per_round) for n in sizes.values())
        return [{w: (e * n + r * per_round, min(per_round, n - r * per_round))
                 for w, n in sizes.items() if n > r * per_round} for r in range(n_rounds)]

    def plan_of_round(r):                 # deprecated: the same rows for every worker
        return [{w: (r * local_steps * B, local_steps * B) for w in sizes}]

    units = range(rounds) if rounds is not None else range(epochs)
    plans = plan_of_round if rounds is not None else \
        (lambda i: plan_of_epoch(trainer.epochs_done))
    bar = tqdm(total=len(units), unit="round" if rounds is not None else "epoch",
               disable=None if progress is None else not progress, leave=True,
               dynamic_ncols=True)
    warned, n_rounds, rows_trained = set(), 0, 0
    try:
        for i in units:
            epoch = trainer.epochs_done
            good = {**engine.state(), "lr": trainer.lr} if restore else None
            t0 = time.perf_counter()
            results = []
            for plan in plans(i):
                state = {**engine.state(), "lr": trainer.lr}
                # the buffers travel inside each round's task (not scattered): if a worker
                # dies, Dask reruns its task elsewhere from the same starting state
                futures = [client.submit(_local_round, config, state, *persisted[w], offset,
                                         n_rows, shuffle, seeds[w], workers=[w],
                                         allow_other_workers=True, pure=False, retries=3)
                           for w, (offset, n_rows) in plan.items()]
                done = client.gather(futures)
                n_rounds += 1
                bad = [r for r in done if "diverged" in r]
                if bad:
                    if restore:
                        trainer.set_state(**good)
                        what = ("The parameters and optimizer state from before that epoch "
                                "are restored.")
                    else:
                        what = ("Nothing was restored (restore_on_divergence=False): the "
                                "model is as the last round before the diverging one left "
                                "it.")
                    message = (f"training diverged in epoch {epoch} (round {n_rounds} of this "
                               f"fit, a worker's step {bad[0]['step']} of it): the loss became "
                               f"NaN or infinite. {what} Try a smaller lr (now "
                               f"{trainer.lr:g}), clip_norm=1.0, or standardised inputs (and "
                               "targets, for mse).")
                    if on_divergence == "raise":
                        raise DivergenceError(message, epoch, bad[0]["step"], restore)
                    warnings.warn(message, TrainingHealthWarning, stacklevel=2)
                    return trainer
                total = sum(r["rows"] for r in done)
                rows_trained += total
                engine.set_state(step=max(r["step"] for r in done), **{
                    key: sum(r[key].astype(np.float64) * (r["rows"] / total) for r in done)
                    for key in ("params", "m", "v") if done[0][key].size})   # weighted means
                results += done
            logs = _epoch_logs(results, B, trainer.lr, time.perf_counter() - t0)
            if val is not None:
                logs.update({"val_" + k: v for k, v in   # the network's inputs, as fit's
                             trainer.evaluate(*val, scaling=False).items()})
            for key, value in logs.items():
                trainer.history.setdefault(key, []).append(value)
            starts = [r["initial_loss"] for r in results if r["initial_loss"] is not None]
            if fresh and starts:
                trainer.history.setdefault("initial_loss", [float(np.mean(starts))])
            if finish_epoch(trainer, epoch, logs, warned, bar, callbacks):
                break
    finally:
        bar.close()
        trainer.distributed_stats = {
            "workers": len(persisted), "epochs": None if rounds is not None else epochs,
            "rounds": n_rounds, "local_steps": local_steps,
            "bytes_per_round": 2 * state_bytes * len(persisted),
            # the rows trained in a round, all workers together, on average over the run
            "rows_per_round": rows_trained / n_rounds if n_rounds else 0.0,
            "rows_per_worker": sizes}
    return trainer


def _epoch_logs(results, batch_size, lr, seconds):
    """One epoch's history entries from its rounds' worker logs: loss and accuracy weighted
    by rows, mean gradient norms by steps, maxima of the maxima."""
    rows = np.array([r["rows"] for r in results], dtype=float)
    steps = np.ceil(rows / batch_size)
    logs = {}
    for key in _ROUND_LOGS:
        if key not in results[0]["logs"]:
            continue
        values = np.array([r["logs"][key] for r in results], dtype=float)
        if key.endswith("_max"):
            value = values.max(axis=0)
        else:
            value = np.average(values, axis=0, weights=steps if "grad" in key else rows)
        logs[key] = value.tolist() if value.ndim else float(value)
    logs["lr"] = lr
    logs["time"] = seconds
    return logs
