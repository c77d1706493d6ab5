"""fastbp.distributed: out-of-core training over Dask arrays and data-parallel local SGD on a
LocalCluster, including a worker killed mid-run. (Parquet streaming: test_streaming.py.)"""
import contextlib
import os
import signal
import threading
import time
import tracemalloc

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

from fastbp import MLPClassifier, Trainer  # noqa: E402
from fastbp.distributed import fit, fit_incremental  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    return X_tr[:1344], y_tr[:1344], X_te, y_te


@contextlib.contextmanager
def local_cluster(n_workers):
    """A LocalCluster of single-threaded worker processes, and its client."""
    with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        with distributed.Client(cluster) as c:
            yield c


@pytest.fixture(scope="module")
def client():
    with local_cluster(2) as c:
        yield c


def test_fit_incremental_over_dask_blocks_trains_with_memory_of_about_one_block():
    n, d, blocks = 200_000, 32, 10
    rng = da.random.default_rng(0)
    X = rng.standard_normal((n, d), chunks=(n // blocks, d))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    block_bytes = (n // blocks) * d * 8
    t = Trainer([d, 16, 2], seed=0, dtype="float64", batch_size=256)
    t.fit(np.zeros((4, d)), np.zeros(4, dtype=int), epochs=1, progress=False)  # JIT outside
    tracemalloc.start()
    fit_incremental(t, X, y, epochs=1, random_state=0, progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3 * block_bytes < 10 * block_bytes       # about one block, not the data
    Xs, ys = X[:2000].compute(), y[:2000].compute()
    assert t.evaluate(Xs, ys)["accuracy"] > 0.95


def test_fit_incremental_with_estimators_chunks_and_dataframes(digits):
    X, y, X_te, y_te = digits
    clf = MLPClassifier(hidden_layer_sizes=(32,), batch_size=32, random_state=0)
    fit_incremental(clf, da.from_array(X, chunks=(168, 64)), da.from_array(y, chunks=168),
                    epochs=20, classes=np.arange(10), random_state=0)
    assert clf.score(X_te, y_te) > 0.9
    chunks = [(X[i:i + 336], y[i:i + 336]) for i in range(0, len(X), 336)]
    t = Trainer([64, 32, 10], seed=0)
    fit_incremental(t, lambda: iter(chunks), epochs=10)
    assert t.evaluate(X_te, y_te)["accuracy"] > 0.9
    with pytest.raises(TypeError, match="one-shot iterator"):
        fit_incremental(Trainer([64, 32, 10]), iter(chunks), epochs=2)
    # in-memory X is iterable over rows (or columns), not (X, y) pairs: it was unpacked as
    # pairs ("too many values to unpack")
    from scipy import sparse
    pd = pytest.importorskip("pandas")
    fresh = Trainer([64, 32, 10], seed=0)
    before = fresh.params.copy()
    for data in (X, sparse.csr_matrix(X), pd.DataFrame(X)):
        with pytest.raises(TypeError, match=r"X must be a Dask array.*got .*in memory: train "
                                            r"it with model.fit\(X, y\)"):
            fit_incremental(fresh, data, y)
    np.testing.assert_array_equal(fresh.params, before)
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(X, columns=[f"p{i}" for i in range(64)]).assign(label=y)
    ddf = dd.from_pandas(frame, npartitions=4)
    t2 = Trainer([64, 32, 10], seed=0)
    fit_incremental(t2, ddf, "label", epochs=10)
    assert t2.evaluate(X_te, y_te)["accuracy"] > 0.9
    assert len(t2.history["loss"]) == 10 == len(t2.history["layer_grad_norms"])  # per epoch


def test_fit_incremental_uses_the_estimators_random_state(digits):
    """Issue 14: two runs of one seeded estimator in one process differed (the block order
    came from a fresh generator); now from the model's random_state (a Trainer's seed)."""
    X, y, X_te, y_te = digits
    Xd, yd = da.from_array(X, chunks=(168, 64)), da.from_array(y, chunks=168)
    runs = [fit_incremental(MLPClassifier(hidden_layer_sizes=(16,), batch_size=32,
                                          random_state=0), Xd, yd, epochs=3,
                            classes=np.arange(10)) for _ in range(2)]
    for a, b in zip(runs[0].coefs_, runs[1].coefs_):
        np.testing.assert_array_equal(a, b)
    trainers = [fit_incremental(Trainer([64, 16, 10], seed=3), Xd, yd, epochs=2)
                for _ in range(2)]
    np.testing.assert_array_equal(trainers[0].params, trainers[1].params)


def test_dask_ml_incremental_wrapper(digits):
    wrappers = pytest.importorskip("dask_ml.wrappers")
    X, y, X_te, y_te = digits
    inc = wrappers.Incremental(MLPClassifier(hidden_layer_sizes=(32,), batch_size=32,
                                             random_state=0), scoring="accuracy")
    Xd, yd = da.from_array(X, chunks=(168, 64)), da.from_array(y, chunks=168)
    for _ in range(10):
        inc.partial_fit(Xd, yd, classes=np.arange(10))
    assert inc.score(da.from_array(X_te), da.from_array(y_te)) > 0.85


def test_data_parallel_fit_reaches_single_process_accuracy(client, digits):
    X, y, X_te, y_te = digits
    Xd, yd = da.from_array(X, chunks=(168, 64)), da.from_array(y, chunks=168)
    kw = dict(optimizer="sgd", momentum=0.9, lr=0.05, batch_size=32, seed=0)
    t = fit(Trainer([64, 64, 10], **kw), Xd, yd, client=client, epochs=48, local_steps=5,
            random_state=0, progress=False)
    single = Trainer([64, 64, 10], **kw)
    single.fit(X, y, epochs=48, progress=False)       # the same number of samples seen
    acc, acc_single = t.evaluate(X_te, y_te)["accuracy"], single.evaluate(X_te, y_te)["accuracy"]
    assert acc >= acc_single - 0.01, (acc, acc_single)
    stats = t.distributed_stats
    assert stats["workers"] == 2 and stats["bytes_per_round"] == 2 * 2 * t.params.nbytes * 2
    # 672 rows = 21 steps per worker and epoch: rounds of 5, 5, 5, 5 and 1 steps
    assert len(t.history["loss"]) == 48 and stats["rounds"] == 48 * 5
    # each worker's 672 rows an epoch, in 5 rounds (before: local_steps x batch x workers,
    # 320, as if every round were whole)
    assert stats["rows_per_round"] == pytest.approx(2 * 672 / 5)


def test_default_fit_does_what_trainer_fit_does(client, digits, capsys):
    """Issue 14: with default arguments, fit ran 10 rounds of one step (0.11 test accuracy
    here, 0.73 in the issue's run). Now: the Trainer's 30 epochs, a history entry per epoch
    with Trainer.fit's entries, a progress bar, and single-process accuracy."""
    X, y, X_te, y_te = digits
    Xd, yd = da.from_array(X, chunks=(168, 64)), da.from_array(y, chunks=168)
    t = fit(Trainer([64, 64, 10], epochs=30, seed=0), Xd, yd, client=client, progress=True)
    single = Trainer([64, 64, 10], epochs=30, seed=0)
    single.fit(X, y, progress=False)
    acc, acc_single = t.evaluate(X_te, y_te)["accuracy"], single.evaluate(X_te, y_te)["accuracy"]
    assert acc >= acc_single - 0.02 and acc > 0.94, (acc, acc_single)
    assert set(t.history) == set(single.history)
    assert all(len(v) == 30 for k, v in t.history.items() if k != "initial_loss")
    assert t.history["loss"][-1] < t.history["loss"][0] < t.history["initial_loss"][0] * 1.01
    assert t.distributed_stats["rounds"] == 30                 # 21 steps per worker: one round
    assert "30/30" in capsys.readouterr().err                  # the tqdm bar, over epochs
    # validation data and callbacks as in Trainer.fit
    stops = fit(Trainer([64, 64, 10], epochs=30, seed=0), Xd, yd, client=client,
                validation_data=(X_te, y_te), progress=False,
                callbacks=[lambda tr, epoch, logs: epoch == 2])
    assert len(stops.history["val_accuracy"]) == 3


def test_fit_refuses_bad_arguments_and_deprecates_rounds(client, digits):
    X, y, _, _ = digits
    Xd, yd = da.from_array(X, chunks=(336, 64)), da.from_array(y, chunks=336)
    t = Trainer([64, 8, 10], seed=0)
    for kw in ({"epochs": -1}, {"local_steps": 0}, {"epochs": 2, "rounds": 3},
               {"on_divergence": "ignore"}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            fit(t, Xd, yd, client=client, **kw)
    with pytest.warns(FutureWarning, match="rounds=.*deprecated.*epochs="):
        fit(t, Xd, yd, client=client, rounds=3, progress=False)
    assert len(t.history["loss"]) == 3 and t.step == 3         # one step per worker ...
    assert t.distributed_stats["rows_per_round"] == 2 * 32     # ... per round, as before


def test_bad_data_is_refused_before_any_work(client, digits, monkeypatch):
    """before: NumPy X gave AttributeError 'to_delayed', a missing label column pandas'
    KeyError, rows of X and y that differ Dask's 'Chunks do not add up', and a wrong feature
    count its ValueError only after every worker had logged its failed round."""
    import dask.dataframe as dd
    import fastbp.distributed as fd
    X, y, _, _ = digits
    Xd, yd = da.from_array(X, chunks=(336, 64)), da.from_array(y, chunks=336)
    frame = dd.from_pandas(__import__("pandas").DataFrame(X).assign(lab=y), npartitions=4)
    t = Trainer([64, 8, 10], seed=0)
    before = t.params.copy()
    monkeypatch.setattr(fd, "_persist", lambda *a: pytest.fail("persisted bad data"))
    cases = [((X, y), TypeError, "X must be a Dask array or a Dask DataFrame; got "
                                 "numpy.ndarray"),
             ((frame, "label"), ValueError, "y='label' is not a column of X"),
             ((Xd, yd[:1000]), ValueError, "X has 1344 rows and y 1000"),
             ((Xd[:, :32], yd), ValueError, "X has 32 feature columns; the Trainer's first "
                                            "layer takes 64"),
             ((frame.drop(columns=[0]), "lab"), ValueError, "X has 63 feature columns")]
    for (Xa, ya), error, message in cases:
        with pytest.raises(error, match=message):
            fit(t, Xa, ya, client=client, progress=False)
    with pytest.raises(ValueError, match="X has 1344 rows and y 1000"):
        fit_incremental(t, Xd, yd[:1000], progress=False)
    with pytest.raises(ValueError, match="y='lab2' is not a column"):
        fit_incremental(t, frame, "lab2", progress=False)
    assert np.array_equal(t.params, before)


def test_divergence_on_a_worker_restores_the_last_good_epoch(client, digits):
    from fastbp import DivergenceError
    X, y, _, _ = digits
    Xd, yd = da.from_array(X, chunks=(168, 64)), da.from_array(y, chunks=168)
    t = Trainer([64, 32, 10], optimizer="sgd", lr=0.01, seed=0)
    fit(t, Xd, yd, client=client, epochs=1, progress=False)
    good = (t.params.copy(), t.step)
    t.lr = 1e30
    with pytest.raises(DivergenceError, match="diverged in epoch 1"):
        fit(t, Xd, yd, client=client, epochs=2, progress=False)
    assert np.array_equal(t.params, good[0]) and t.step == good[1] and t.lr == 1e30
    assert len(t.history["loss"]) == 1


def test_divergence_without_restore_keeps_no_copy_and_says_so(client, digits, monkeypatch):
    """restore_on_divergence=False: the driver keeps no copy of the state per epoch (one
    engine.state() per round, to send, instead of one more per epoch) and the error says
    nothing was restored; the model is as the last good round left it."""
    from fastbp import DivergenceError
    from fastbp.engine import Engine
    X, y, _, _ = digits
    Xd, yd = da.from_array(X, chunks=(168, 64)), da.from_array(y, chunks=168)
    t = Trainer([64, 32, 10], optimizer="sgd", lr=0.01, seed=0)
    copies = []
    state = Engine.state
    monkeypatch.setattr(Engine, "state", lambda self: copies.append(1) or state(self))
    fit(t, Xd, yd, client=client, epochs=1, progress=False, restore_on_divergence=False)
    rounds_one_epoch = len(copies)
    copies.clear()
    fit(t, Xd, yd, client=client, epochs=1, progress=False)
    assert len(copies) == rounds_one_epoch + 1           # + the roll-back copy
    good = (t.params.copy(), t.step)
    t.lr = 1e30
    with pytest.raises(DivergenceError, match="Nothing was restored") as e:
        fit(t, Xd, yd, client=client, epochs=2, progress=False, restore_on_divergence=False)
    assert e.value.restored is False and e.value.epoch == 2
    # its first round diverged: the model is as the round before (the last epoch) left it
    assert np.array_equal(t.params, good[0]) and t.step == good[1]
    with pytest.raises(TypeError, match="restore_on_divergence"):
        fit(t, Xd, yd, client=client, progress=False, restore_on_divergence="no")


def test_one_worker_one_local_step_equals_single_process_training(digits):
    """README: with one worker and K=1 this is single-process training, bit for bit
    (shuffle=False): parameters, optimizer state and step count identical, for Adam and
    for SGD with Nesterov momentum, in float64 and in float32 (the driver averages in
    float64 and stores back)."""
    X, y, _, _ = digits
    settings = {"adam": {}, "sgd": {"momentum": 0.9, "nesterov": True}}
    runs = {}
    with local_cluster(1) as c:
        Xd, yd = da.from_array(X, chunks=(336, 64)), da.from_array(y, chunks=336)
        for optimizer, extra in settings.items():
            for dtype, epochs in (("float64", 2), ("float32", 1)):
                t = Trainer([64, 32, 10], optimizer=optimizer, lr=0.01, batch_size=32,
                            seed=0, dtype=dtype, **extra)
                runs[optimizer, dtype, epochs] = fit(t, Xd, yd, client=c, epochs=epochs,
                                                     local_steps=1, shuffle=False,
                                                     progress=False)
    for (optimizer, dtype, epochs), dist in runs.items():
        b = Trainer([64, 32, 10], optimizer=optimizer, lr=0.01, batch_size=32, seed=0,
                    dtype=dtype, **settings[optimizer])
        b.fit(X, y, epochs=epochs, shuffle=False, progress=False)
        assert dist.params.dtype == b.params.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(dist.params, b.params, err_msg=f"{optimizer} {dtype}")
        np.testing.assert_array_equal(dist.engine.m, b.engine.m, err_msg=f"{optimizer} {dtype}")
        np.testing.assert_array_equal(dist.engine.v, b.engine.v, err_msg=f"{optimizer} {dtype}")
        assert dist.step == b.step == 42 * epochs
        assert len(dist.history["loss"]) == epochs
        np.testing.assert_allclose(dist.history["loss"], b.history["loss"], rtol=1e-6)


def test_a_worker_killed_mid_run_is_survived(digits, tmp_path):
    """A worker process is SIGKILLed while it executes a round's task, after 4 of 30 epochs
    (5 rounds each): the round is rerun elsewhere (the scheduler's story of that task shows
    it processing twice) and training finishes all its epochs."""
    X, y, X_te, y_te = digits
    marker = tmp_path / "killed-task"
    # keep the scheduler's whole transition log (default: the last 1000 transitions)
    with dask.config.set({"distributed.admin.low-level-log-length": 100_000}), \
            local_cluster(2) as c:
        Xd, yd = da.from_array(X, chunks=(168, 64)), da.from_array(y, chunks=168)
        t = Trainer([64, 64, 10], optimizer="sgd", momentum=0.9, lr=0.05, batch_size=32,
                    seed=0)
        errors = []
        run = threading.Thread(target=lambda: _catch(errors, fit, t, Xd, yd, client=c,
                                                     epochs=30, local_steps=5,
                                                     progress=False))
        run.start()
        deadline = time.time() + 120
        while len(t.history.get("loss", [])) < 4 and time.time() < deadline:
            time.sleep(0.02)
        pids = c.run(os.getpid)
        victim = sorted(pids)[0]
        rounds_before = len(t.history.get("loss", []))
        while not marker.exists() and run.is_alive() and time.time() < deadline:
            # the worker kills itself while its executor runs a round task (c.run runs on
            # the worker's event loop, next to the task)
            with contextlib.suppress(Exception):
                c.run(_die_if_running_a_round, str(marker), workers=[victim])
        rounds_at_kill = len(t.history.get("loss", []))
        run.join(timeout=150)
        assert not run.is_alive() and not errors, errors
        assert marker.exists(), "the worker was never killed inside a round task"
        key = marker.read_text()
        story = c.run_on_scheduler(_story, key)
        pids_after = c.run(os.getpid)
    # the kill happened mid-run: rounds were done before it and after it
    assert 4 <= rounds_before <= rounds_at_kill < 30, (rounds_before, rounds_at_kill)
    assert pids[victim] not in pids_after.values()               # that process is gone
    moves = [(start, finish) for k, start, finish in story if k == key]
    lost = [m for m in moves if m[0] == "processing" and m[1] in ("released", "waiting")]
    assert lost, story                                           # lost with the worker ...
    assert sum(finish == "processing" for _, finish in moves) >= 2, story   # ... run again
    assert ("processing", "memory") in moves, story              # ... to completion
    assert len(t.history["loss"]) == 30 and np.all(np.isfinite(t.history["loss"]))
    assert t.evaluate(X_te, y_te)["accuracy"] > 0.93


def _die_if_running_a_round(marker, dask_worker=None):
    """On a worker: SIGKILL this process if it is executing a `_local_round` task, after
    writing that task's key to `marker`."""
    running = [ts.key for ts in dask_worker.state.executing
               if str(ts.key).startswith("_local_round")]
    if running:
        with open(marker, "w") as f:
            f.write(str(running[0]))
        os.kill(os.getpid(), signal.SIGKILL)
    return running


def _story(key, dask_scheduler=None):
    """The scheduler's transitions of task `key`: (key, start, finish, ...) tuples."""
    return [tuple(str(x) for x in entry[:3]) for entry in dask_scheduler.story(key)]


def _catch(errors, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - reported by the test
        errors.append(repr(e))
