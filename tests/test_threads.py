"""Threading-layer safety: fits from several threads at once, and the fallback to serial code
where Numba's `workqueue` layer would abort the process."""
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from fastbp import Trainer
from fastbp import kernels

TWO_THREADS = textwrap.dedent("""
    import threading
    import numpy as np
    from fastbp import Trainer
    from fastbp.kernels import threading_layer
    rng = np.random.default_rng(0)
    X = rng.standard_normal((512, 128)).astype(np.float32)
    y = rng.integers(0, 10, 512)
    results = {}
    def work(k):
        t = Trainer([128, 128, 128, 10], batch_size=64, target="parallel", seed=k)
        assert t.strategy == "chunks"
        t.fit(X, y, epochs=3, progress=False)
        results[k] = t.evaluate(X, y)["accuracy"]
    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    print(threading_layer(), len(results), min(results.values()))
""")


def _run(layer):
    env_code = f"import os; os.environ['NUMBA_THREADING_LAYER'] = {layer!r}\n"
    return subprocess.run([sys.executable, "-c", env_code + TWO_THREADS], capture_output=True,
                          text=True, timeout=600)


def test_two_threads_fitting_at_once_both_finish_on_workqueue():
    """workqueue aborts on concurrent parallel regions; fastbp runs serial code off the main
    thread there, so both fits finish."""
    run = _run("workqueue")
    assert run.returncode == 0, run.stderr[-2000:]
    layer, n, acc = run.stdout.split()
    assert layer == "workqueue" and n == "2" and float(acc) > 0.15


def test_two_threads_fitting_at_once_both_finish_on_the_default_layer():
    run = _run("default")
    assert run.returncode == 0, run.stderr[-2000:]
    layer, n, _ = run.stdout.split()
    assert layer in ("omp", "tbb") and n == "2"


def test_safe_plan_falls_back_only_off_the_main_thread_on_workqueue(monkeypatch):
    t = Trainer([128, 128, 128, 10], batch_size=64, target="parallel")
    assert t.engine.train_plan.chunks > 1
    monkeypatch.setattr(kernels, "threading_layer", lambda: "workqueue")
    assert kernels.safe_plan(t.engine.train_plan) is t.engine.train_plan          # main thread
    seen = []
    th = threading.Thread(target=lambda: seen.append(kernels.safe_plan(t.engine.train_plan)))
    th.start()
    th.join()
    assert seen[0].strategy == "serial" and seen[0].chunks == 1
    monkeypatch.setattr(kernels, "threading_layer", lambda: "omp")
    th = threading.Thread(target=lambda: seen.append(kernels.safe_plan(t.engine.train_plan)))
    th.start()
    th.join()
    assert seen[1] is t.engine.train_plan


def test_threaded_fit_from_the_main_process_matches():
    """Fitting from a worker thread gives the same model as from the main thread."""
    X = np.random.default_rng(0).standard_normal((64, 6))
    y = np.arange(64) % 3
    a = Trainer([6, 8, 3], seed=0)
    a.fit(X, y, epochs=2, progress=False)
    b = Trainer([6, 8, 3], seed=0)
    th = threading.Thread(target=lambda: b.fit(X, y, epochs=2, progress=False))
    th.start()
    th.join()
    np.testing.assert_array_equal(a.params, b.params)


def test_overlapping_fits_in_threads_restore_the_blas_thread_counts():
    """threadpoolctl limits are process-wide; fastbp's are shared and counted, so threads
    fitting at once leave NumPy's and SciPy's BLAS as they found them."""
    from threadpoolctl import threadpool_info

    from fastbp.engine import _blas_controller
    _blas_controller()                     # make sure SciPy's BLAS is loaded and seen
    before = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    X = np.random.default_rng(0).standard_normal((4000, 32))
    y = np.arange(4000) % 3

    def work(seed):
        Trainer([32, 64, 3], seed=seed).fit(X, y, epochs=3, progress=False)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    after = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert after == before


def _blas_threads():
    """{BLAS library path: its thread count} of every BLAS loaded in this process."""
    from threadpoolctl import threadpool_info
    return {lib["filepath"]: lib["num_threads"] for lib in threadpool_info()
            if lib["user_api"] == "blas"}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_blas_is_single_threaded_inside_the_kernels_and_restored_after(monkeypatch):
    """BLAS (SciPy's OpenBLAS, which Numba's np.dot in the kernels calls) runs on one thread
    while fastbp's kernels run -- in fit's epoch kernel and callbacks, in predict and loss,
    and around the estimators' L-BFGS-B -- and gets its thread count back afterwards."""
    from threadpoolctl import threadpool_limits

    from fastbp import MLPClassifier, sklearn_solvers
    from fastbp.engine import _blas_controller
    _blas_controller()                     # make sure SciPy's BLAS is loaded and seen
    with threadpool_limits(limits=2, user_api="blas"):     # a known count above one
        before = _blas_threads()
        import scipy
        bundled = Path(scipy.__file__).parent.with_name("scipy.libs")   # a wheel's OpenBLAS
        if bundled.is_dir():
            assert any(Path(path).parent == bundled for path in before), before
        if max(before.values()) < 2:
            pytest.skip(f"BLAS cannot run two threads here: {before}")
        seen = []

        def spy(kind, fn):
            def wrapped(*args):
                seen.append((kind, _blas_threads()))
                return fn(*args)
            return wrapped

        t = Trainer([8, 16, 3], seed=0)
        kernels = t.engine.train_plan.kernels
        train_epoch_for = kernels.train_epoch_for     # resolved once per fit, then called
        monkeypatch.setattr(kernels, "train_epoch_for", lambda *key: spy(
            "train_epoch", train_epoch_for(*key)))
        kernels = t.engine.eval_plan.kernels
        for name in ("predict", "evaluate", "loss_grad"):
            monkeypatch.setattr(kernels, name, spy(name, getattr(kernels, name)))
        X = np.random.default_rng(0).standard_normal((64, 8))
        y = np.arange(64) % 3
        t.fit(X, y, epochs=2, progress=False,
              callbacks=[lambda tr, epoch, logs: seen.append(("callback", _blas_threads()))])
        t.predict(X)
        t.loss(X, y)
        t.gradient(X, y)
        assert _blas_threads() == before                     # restored after each call

        real_minimize = sklearn_solvers.minimize

        def minimize(fun, x0, **kw):
            seen.append(("lbfgs", _blas_threads()))
            return real_minimize(spy("lbfgs loss", fun), x0, **kw)
        monkeypatch.setattr(sklearn_solvers, "minimize", minimize)
        MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=5).fit(X, y)
        assert _blas_threads() == before

    kinds = {kind for kind, _ in seen}
    assert kinds == {"train_epoch", "callback", "predict", "evaluate", "loss_grad", "lbfgs",
                     "lbfgs loss"}, kinds
    for kind, threads in seen:
        assert set(threads) == set(before), (kind, threads)
        assert all(n == 1 for n in threads.values()), (kind, threads)


def test_parallel_evaluation_runs_its_chunks_on_threads_and_equals_cpu(monkeypatch):
    """target='parallel' predicts and evaluates in chunks on the engine's own threads, each
    running the serial kernel without the GIL (no parallel variant to compile): the same
    predictions as 'cpu' (the same blocks of rows) and the same loss to rounding. A small
    forward pass (under engine.EVAL_THREADS_FROM_FLOPS) stays on the calling thread."""
    from fastbp import engine
    from fastbp.kernels import evaluation_plan
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((600, 8)), rng.integers(0, 3, 600)
    cpu = Trainer([8, 16, 3], seed=0, dtype="float64")
    par = Trainer([8, 16, 3], seed=0, dtype="float64", target="parallel")
    par.engine.eval_plan = evaluation_plan("parallel", 2)
    where = []
    for name in ("predict", "evaluate"):
        fn = getattr(par.engine.eval_plan.kernels, name)
        monkeypatch.setattr(par.engine.eval_plan.kernels, name, lambda *a, fn=fn, name=name: (
            where.append((name, threading.current_thread().name)), fn(*a))[1])
    par.predict(X)                                   # 0.2 MFLOP: one chunk, this thread
    assert where == [("predict", threading.current_thread().name)]
    where.clear()
    monkeypatch.setattr(engine, "EVAL_THREADS_FROM_FLOPS", 0.0)
    np.testing.assert_array_equal(par.predict_proba(X), cpu.predict_proba(X))
    assert par.loss(X, y) == pytest.approx(cpu.loss(X, y), rel=1e-12)
    for name in ("predict", "evaluate"):
        threads = [t for n, t in where if n == name]
        assert len(threads) == 2 and len(set(threads)) == 2, where
        assert threading.current_thread().name in threads        # chunk 0 on the caller's
    from scipy import sparse                         # CSR rows too
    Xs = sparse.csr_matrix(np.where(X > 0.5, X, 0.0))
    np.testing.assert_allclose(par.predict_proba(Xs), cpu.predict_proba(Xs), rtol=1e-13)
    assert par.loss(Xs, y) == pytest.approx(cpu.loss(Xs, y), rel=1e-12)
