"""Scale out on Dask: out-of-core training on one machine, and data-parallel local SGD across
the workers of a cluster. `pip install "fastbp[dask]"`.

- `fit_incremental(model, X, y)`: one pass per epoch over the row blocks of a Dask array or
  DataFrame (or over an iterable of chunks), in a shuffled block order, each block computed,
  trained on with the compiled kernel (`partial_fit` semantics) and dropped: memory stays at
  about one block.
- `fit(trainer, X, y, client=...)`: synchronous local SGD with parameter averaging. Each round
  every worker starts from the same flat parameter buffer (and optimizer state), runs
  `local_steps` minibatch steps on its own persisted partitions, and sends its buffers back;
  the driver averages them weighted by samples. Only flat buffers travel. A worker that dies
  mid-round is survived: Dask reruns its task from the same round's starting buffers.

Threads: each Dask worker runs one fastbp task at a time; give every worker
`nthreads=1` and let fastbp use `n_threads` = cores per worker (target='parallel'), or run
target='cpu' with as many single-threaded workers as cores. Never both, or threads
oversubscribe the cores. fastbp falls back to serial code off the main thread when Numba's
`workqueue` layer is the only one available (see README, "Threads").
"""

import numpy as np
from scipy import sparse

from .trainer import Trainer


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
    """(X block, y block) pairs of lazy Dask objects, one per row block / partition."""
    dask, da = _dask()
    if not hasattr(X, "chunks"):
        # a Dask DataFrame: y is a column name or a Dask Series with the same partitions
        if isinstance(y, str):
            X, y = X.drop(columns=[y]), X[y]
        return list(zip(X.to_delayed(), y.to_delayed()))
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D Dask array; got {X.ndim} dimension(s)")
    if len(X.chunks[1]) != 1:
        X = X.rechunk({1: -1})
    y = da.asarray(y).rechunk({0: X.chunks[0]})
    if y.ndim == 2 and len(y.chunks[1]) != 1:
        y = y.rechunk({1: -1})
    xs = X.to_delayed().ravel()
    ys = y.to_delayed().ravel() if y.ndim == 1 else y.to_delayed()[:, 0]
    return list(zip(xs, ys))


def fit_incremental(model, X, y=None, *, epochs=1, classes=None, shuffle_blocks=True,
                    random_state=None):
    """Train `model` out of core: `epochs` passes over the row blocks of X, y, each block
    computed, trained on and released, in a shuffled block order per epoch.

    model: a fastbp MLPClassifier/MLPRegressor (trained with `partial_fit`) or a Trainer
    (trained with `fit(epochs=1)` per block). X, y: Dask arrays (row blocks), a Dask DataFrame
    with y a column name or a Dask Series, or X an iterable of (X_chunk, y_chunk) pairs, or a
    callable returning a fresh such iterable for each epoch. classes: all class labels, for a
    classifier's first partial_fit. Returns model."""
    if _is_dask(X):
        blocks = _blocks(X, y)
    elif callable(X) or hasattr(X, "__iter__"):
        blocks = None
    else:
        raise TypeError("X must be a Dask array, a Dask DataFrame, an iterable of "
                        "(X_chunk, y_chunk) pairs or a callable returning one")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r} is not allowed: an integer >= 1")
    rng = np.random.default_rng(random_state)
    first = True
    for _ in range(epochs):
        if blocks is not None:
            order = rng.permutation(len(blocks)) if shuffle_blocks else range(len(blocks))
            chunks = ((blocks[i][0], blocks[i][1]) for i in order)
        else:
            source = X() if callable(X) else X
            if not callable(X) and not first and iter(source) is source:
                raise TypeError("X is a one-shot iterator: pass a callable that returns a "
                                "fresh iterable of chunks for every epoch")
            chunks = iter(source)
        for xb, yb in chunks:
            if hasattr(xb, "compute"):
                xb, yb = _dask()[0].compute(xb, yb)    # this block only
            if not sparse.issparse(xb):          # scipy sparse chunks are trained as CSR
                xb = np.asarray(xb)
            _train_block(model, xb, np.asarray(yb), classes if first else None)
            first = False
    return model


def _train_block(model, X, y, classes):
    if isinstance(model, Trainer):
        model.fit(X, y, epochs=1, progress=False)
    elif hasattr(model, "partial_fit"):
        if classes is not None:
            model.partial_fit(X, y, classes=classes)
        else:
            model.partial_fit(X, y)
    else:
        raise TypeError("model must be a fastbp Trainer or an estimator with partial_fit")


# ----------------------------------------------------------------- data parallel

def _join(parts):
    return np.concatenate([np.asarray(p) for p in parts])


def _local_round(config, state, X, y, offset, n_rows, shuffle, seed):
    """On a worker: `n_rows` rows of its data X, y (its partitions, joined) from position
    `offset` of an endless sequence of passes over them (each pass in a fresh seeded order
    when shuffle), trained from `state` as consecutive minibatches. Returns the new state
    and n_rows."""
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
    t.fit(X[idx], y[idx], epochs=1, shuffle=False, progress=False)
    return {**t.engine.state(), "loss": t.history["loss"][-1], "rows": n_rows}


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


def fit(trainer, X, y, *, client=None, rounds=10, local_steps=1, shuffle=True,
        random_state=None):
    """Data-parallel local SGD on a Dask cluster: `rounds` rounds of `local_steps` minibatch
    steps per worker from the same starting buffers, then a sample-weighted average of the
    parameters (and of the optimizer state: momentum, Adam moments). With one worker and
    local_steps=1 this is single-process minibatch training (shuffle=False: bit for bit).

    trainer: a fastbp Trainer (its configuration, parameters and optimizer state are the
    starting point; it holds the result). X, y: Dask arrays partitioned by rows; partitions
    are persisted on the workers and never gathered. Returns trainer, with
    `trainer.history['loss']` one entry per round and `trainer.distributed_stats`."""
    _dask()                               # a clear message when Dask is missing
    from distributed import get_client, wait
    if not isinstance(trainer, Trainer):
        raise TypeError("fastbp.distributed.fit takes a fastbp Trainer")
    for name, value, low in (("rounds", rounds, 1), ("local_steps", local_steps, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} is not allowed: an integer >= {low}")
    client = client or get_client()
    workers = sorted(client.scheduler_info()["workers"])
    if not workers:
        raise ValueError("the Dask client has no workers")
    blocks = _blocks(X, y)
    if blocks is None:
        raise TypeError("X, y must be Dask arrays or a Dask DataFrame")
    # persist the partitions, spread over the workers (each partition lives on one worker)
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
        # one array per worker, joined once (not every round)
        persisted[w] = (client.submit(_join, xs, workers=[w], allow_other_workers=True),
                        client.submit(_join, ys, workers=[w], allow_other_workers=True))
    wait([f for pair in persisted.values() for f in pair])
    sizes = {w: client.submit(len, xs, workers=[w]).result()
             for w, (xs, ys) in persisted.items()}
    config = dict(trainer.config)
    n_rows = local_steps * config["batch_size"]
    seed = int(np.random.default_rng(random_state).integers(2**31))
    offset = 0
    engine = trainer.engine
    state_bytes = engine.params.nbytes + engine.m.nbytes + engine.v.nbytes
    for _ in range(rounds):
        state = {**engine.state(), "lr": trainer.lr}
        # the buffers travel inside each round's task (not scattered): if a worker dies,
        # Dask reruns its task elsewhere from the same starting state
        futures = [client.submit(_local_round, config, state, xs, ys, offset, n_rows,
                                 shuffle, [seed, k], workers=[w], allow_other_workers=True,
                                 pure=False, retries=3)
                   for k, (w, (xs, ys)) in enumerate(persisted.items())]
        results = client.gather(futures)
        offset += n_rows
        total = sum(r["rows"] for r in results)
        engine.set_state(step=max(r["step"] for r in results), **{
            key: sum(r[key].astype(np.float64) * (r["rows"] / total) for r in results)
            for key in ("params", "m", "v") if results[0][key].size})   # weighted averages
        trainer.history.setdefault("loss", []).append(
            sum(r["loss"] * r["rows"] for r in results) / total)
    trainer.distributed_stats = {
        "workers": len(persisted), "rounds": rounds, "local_steps": local_steps,
        "bytes_per_round": 2 * state_bytes * len(persisted),
        "rows_per_round": n_rows * len(persisted), "rows_per_worker": sizes}
    return trainer
