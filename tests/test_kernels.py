"""fastbp's compiled kernels against the float64 reference: loss, gradient, predictions and
training trajectories of every optimizer."""
import numba
import numpy as np
import pytest

from conftest import ACTIVATIONS, LOSSES, make_data
import reference as ref
from fastbp import Trainer
from fastbp.kernels import choose_strategy, training_plan
from fastbp.kernels.cpu import PARALLEL_UPDATE_MIN

SIZES = [5, 6, 4, 3]


def _trainer(act, loss, target="cpu", dtype="float64", sizes=SIZES, **kw):
    return Trainer(sizes, activation=act, loss=loss, target=target, dtype=dtype, seed=3, **kw)


@pytest.mark.parametrize("target", ["cpu", "parallel"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_loss_and_gradient_match_reference(act, loss, target, monkeypatch):
    from fastbp import engine
    monkeypatch.setattr(engine, "EVAL_THREADS_FROM_FLOPS", 0.0)   # the gradient's chunks
    t = _trainer(act, loss, target)
    X, y = make_data(loss, SIZES[0], SIZES[-1], n=23)
    t.params = t.params + np.random.default_rng(4).normal(scale=0.1, size=t.n_params)  # bias != 0
    Ws, bs = ref.unflatten(t.params, SIZES)
    value, dWs, dbs = ref.loss_and_grad(Ws, bs, X, y, [act, act], loss)
    assert t.loss(X, y) == pytest.approx(value, rel=1e-12)
    # the forward-only evaluation kernel sums as the gradient's does, in the same chunks and
    # blocks; fast-math lets LLVM order a block's sums differently in each kernel (seen at
    # 4 and 16 threads; equal at 2), so they agree to a few units in the last place
    assert t.engine.loss_grad(t.check_data(X, y, None), want_grad=True)[0] == \
        pytest.approx(t.loss(X, y), rel=1e-14, abs=1e-300)
    np.testing.assert_allclose(t.gradient(X, y), ref.flatten(dWs, dbs), rtol=1e-10, atol=1e-13)
    out = t.predict(X) if loss in ("mse", "poisson") else t.predict_proba(X)
    np.testing.assert_allclose(out, ref.output(Ws, bs, X, [act, act], loss), rtol=1e-12,
                               atol=1e-14)


def test_one_activation_per_hidden_layer_and_no_hidden_layer():
    acts = ["tanh", "gelu", "leaky_relu"]
    sizes = [4, 5, 6, 3, 2]
    t = _trainer(acts, "cross_entropy", sizes=sizes)
    X, y = make_data("cross_entropy", 4, 2, n=9)
    Ws, bs = ref.unflatten(t.params, sizes)
    _, dWs, dbs = ref.loss_and_grad(Ws, bs, X, y, acts, "cross_entropy")
    np.testing.assert_allclose(t.gradient(X, y), ref.flatten(dWs, dbs), rtol=1e-10, atol=1e-13)

    logistic = _trainer("relu", "binary_cross_entropy", sizes=[4, 1])   # no hidden layer
    X, y = make_data("binary_cross_entropy", 4, 1, n=9)
    Ws, bs = ref.unflatten(logistic.params, [4, 1])
    _, dWs, dbs = ref.loss_and_grad(Ws, bs, X, y, [], "binary_cross_entropy")
    np.testing.assert_allclose(logistic.gradient(X, y), ref.flatten(dWs, dbs), rtol=1e-10)


OPTIMIZER_SETTINGS = [
    dict(),
    dict(weight_decay=0.05),
    dict(clip_norm=0.05),
    dict(weight_decay=0.05, clip_norm=0.05),
]


@pytest.mark.parametrize("settings", OPTIMIZER_SETTINGS)
@pytest.mark.parametrize("optimizer,extra", [
    ("sgd", {}), ("sgd", {"momentum": 0.9}), ("sgd", {"momentum": 0.9, "nesterov": True}),
    ("adam", {}), ("adamw", {}), ("rmsprop", {}), ("rmsprop", {"momentum": 0.5}),
])
def test_training_trajectory_matches_reference(optimizer, extra, settings):
    """Three epochs of fit(shuffle=False) with a partial last batch, step for step."""
    loss = "cross_entropy"
    kw = dict(optimizer=optimizer, lr=0.05, batch_size=8, **extra, **settings)
    t = _trainer("tanh", loss, **kw)
    X, y = make_data(loss, SIZES[0], SIZES[-1], n=30)
    Ws, bs = ref.unflatten(t.params, SIZES)
    opt = ref.Optimizer(optimizer, lr=0.05, momentum=extra.get("momentum", 0.0),
                        nesterov=extra.get("nesterov", False),
                        weight_decay=settings.get("weight_decay", 0.0),
                        clip_norm=settings.get("clip_norm"))
    expected = ref.train(Ws, bs, X, y, ["tanh", "tanh"], loss, opt, batch_size=8, epochs=3)
    history = t.fit(X, y, epochs=3, shuffle=False, progress=False)
    np.testing.assert_allclose(history["loss"], expected, rtol=1e-10)
    np.testing.assert_allclose(t.params, ref.flatten(Ws, bs), rtol=1e-9, atol=1e-12)
    assert t.step == 3 * 4


@pytest.mark.parametrize("loss", ["binary_cross_entropy", "mse"])
def test_trajectory_other_losses(loss):
    t = _trainer("relu", loss, optimizer="adam", lr=0.01, batch_size=7)
    X, y = make_data(loss, SIZES[0], SIZES[-1], n=20)
    Ws, bs = ref.unflatten(t.params, SIZES)
    expected = ref.train(Ws, bs, X, y, ["relu", "relu"], loss, ref.Optimizer("adam", lr=0.01),
                         batch_size=7, epochs=2)
    np.testing.assert_allclose(t.fit(X, y, epochs=2, shuffle=False, progress=False)["loss"],
                               expected, rtol=1e-10)
    np.testing.assert_allclose(t.params, ref.flatten(Ws, bs), rtol=1e-9, atol=1e-12)


def _with_strategy(t, strategy):
    """Force one of target='parallel''s strategies (normally chosen from the sizes)."""
    cfg = t.config
    t.engine.train_plan = training_plan("parallel", cfg["layers"], cfg["batch_size"], 2, strategy)
    return t


@pytest.mark.parametrize("strategy", ["serial", "chunks"])
@pytest.mark.parametrize("optimizer,clip", [("sgd", None), ("adam", 0.1), ("rmsprop", None)])
def test_parallel_equals_cpu_to_rounding(optimizer, clip, strategy):
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=50)
    runs = {}
    for target in ("cpu", "parallel"):
        t = _trainer("relu", "cross_entropy", target, optimizer=optimizer, lr=0.01, batch_size=16,
                     clip_norm=clip)
        if target == "parallel":
            _with_strategy(t, strategy)
        t.fit(X, y, epochs=3, progress=False)
        runs[target] = t
    np.testing.assert_allclose(runs["parallel"].params, runs["cpu"].params, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(runs["parallel"].history["loss"], runs["cpu"].history["loss"],
                               rtol=1e-10)
    np.testing.assert_allclose(runs["parallel"].history["grad_norm"],
                               runs["cpu"].history["grad_norm"], rtol=1e-9)


@pytest.mark.parametrize("sizes", [[300, 256, 3], [64, 100, 10]])
def test_parallel_update_equals_cpu(sizes):
    """From PARALLEL_UPDATE_MIN parameters the per-step update runs on every thread, each
    on its group of blocks: a model of 77k parameters (blocks of layout.BLOCK) and one of
    digits' 7,510 (finer blocks)."""
    X, y = make_data("cross_entropy", sizes[0], sizes[-1], n=40)
    runs = []
    for target in ("cpu", "parallel"):
        t = _trainer("relu", "cross_entropy", target, sizes=sizes, optimizer="adamw",
                     weight_decay=0.1, lr=0.01, batch_size=16, clip_norm=0.5)
        if target == "parallel":
            _with_strategy(t, "chunks")
        t.fit(X, y, epochs=2, progress=False)
        runs.append(t.params)
    assert sizes[0] * sizes[1] > PARALLEL_UPDATE_MIN
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-8, atol=1e-11)


def test_update_blocks_share_the_parameters_evenly():
    """layout.update_blocks: the blocks starting in each thread's 1/T of the buffer
    (cpu.update_group's groups) hold nearly equal parameter counts, never straddle a W_l or
    b_l, and cover the buffer once; one thread keeps blocks of layout.BLOCK."""
    from fastbp.layout import BLOCK, Layout
    for sizes, T in (([64, 100, 10], 2), ([300, 256, 3], 2), ([64, 100, 10], 3),
                     ([784, 1024, 1024, 10], 2)):
        lay = Layout(sizes)
        lo, hi, layer = lay.update_blocks(T)
        P = lay.n_params
        assert lo[0] == 0 and hi[-1] == P and (lo[1:] == hi[:-1]).all()
        shares = [int((hi - lo)[lo * T // P == g].sum()) for g in range(T)]
        assert sum(shares) == P and max(shares) - min(shares) <= P // (2 * T), shares
        for k in range(lo.shape[0]):
            l = layer[k] % lay.n_layers
            start = lay.w_off[l] if layer[k] < lay.n_layers else lay.b_off[l]
            end = lay.b_off[l] if layer[k] < lay.n_layers else lay.b_off[l] + sizes[l + 1]
            assert start <= lo[k] < hi[k] <= end
    lo, hi, _ = Layout([300, 256, 3]).update_blocks(1)
    assert (hi - lo).max() == BLOCK


@pytest.mark.parametrize("threads", [1, 2])
def test_blocks_of_a_bf16_model_hold_whole_pairs_of_rows(threads):
    """update_blocks(row_pairs=True), a bf16 model's (its update writes W's bf16 copy in
    pairs of rows, bf16.copy_rows): every block of W_l starts at an even row and ends at
    one or at W_l's end (odd row counts included); the buffer is covered once."""
    from fastbp.layout import Layout
    for sizes in ([65, 256, 129, 10], [784, 1024, 1024, 10], [64, 100, 10]):
        lay = Layout(sizes)
        lo, hi, layer = lay.update_blocks(threads, row_pairs=True)
        assert lo[0] == 0 and hi[-1] == lay.n_params and (lo[1:] == hi[:-1]).all()
        for k in np.flatnonzero(layer < lay.n_layers):
            l = layer[k]
            pair = 2 * sizes[l + 1]
            assert (lo[k] - lay.w_off[l]) % pair == 0
            assert (hi[k] - lay.w_off[l]) % pair == 0 or hi[k] == lay.b_off[l]


def test_strategy_is_chosen_from_sizes():
    """Small steps serial, larger ones in batch chunks; one thread or cpu: serial."""
    import fastbp.kernels as kernels

    assert choose_strategy([64, 32, 10], 32, 2) == "serial"
    # the crossover follows the machine's vector width (kernels.SERIAL_BELOW_FLOPS)
    wide_vectors = kernels.host_has_avx512()
    assert kernels.SERIAL_BELOW_FLOPS == (10e6 if wide_vectors else 2e6)
    assert choose_strategy([16, 64, 64, 1], 32, 2) == "serial"
    assert choose_strategy([64, 64, 64, 10], 64, 2) == ("serial" if wide_vectors else "chunks")
    assert choose_strategy([64, 100, 10], 200, 2) == ("serial" if wide_vectors else "chunks")
    # a float64 step takes about as long as a float32 step of twice its FLOPs: digits at
    # scikit-learn's defaults (8.9 MFLOP, float64) runs in chunks on either machine
    assert choose_strategy([64, 100, 10], 200, 2, itemsize=8) == "chunks"
    assert choose_strategy([64, 64, 64, 10], 64, 2, itemsize=8) == (
        "serial" if wide_vectors else "chunks")
    assert choose_strategy([16, 64, 64, 1], 32, 2, itemsize=8) == "serial"
    assert choose_strategy([128] * 9 + [10], 64, 2) == "chunks"
    assert choose_strategy([784, 256, 128, 10], 128, 2) == "chunks"
    assert choose_strategy([784, 1024, 1024, 10], 256, 1) == "serial"
    with pytest.raises(ValueError, match="unknown strategy"):
        training_plan("parallel", [4, 3], 8, 2, "gpu")
    assert Trainer([4, 3], loss="binary_cross_entropy").strategy == "serial"


def test_engine_plans_with_its_dtype():
    """A step of 3/4 of the threshold's FLOPs runs serially in float32 and, counting twice
    in float64, in chunks: the engine passes its dtype's size to choose_strategy."""
    import fastbp.kernels as kernels

    if numba.get_num_threads() < 2:
        pytest.skip("one thread: every plan is serial")
    hidden = int(0.75 * kernels.SERIAL_BELOW_FLOPS / (6 * 74 * 200))   # [64, hidden, 10]
    plans = {dtype: Trainer([64, hidden, 10], batch_size=200, dtype=dtype, n_threads=2,
                            target="parallel").strategy for dtype in ("float32", "float64")}
    assert plans == {"float32": "serial", "float64": "chunks"}


def test_float32_stays_float32_and_is_close_to_float64():
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=40)
    t32 = _trainer("gelu", "cross_entropy", dtype="float32", batch_size=8)
    t64 = _trainer("gelu", "cross_entropy", dtype="float64", batch_size=8)
    assert t32.params.dtype == np.float32 and t64.params.dtype == np.float64
    np.testing.assert_allclose(t32.params, t64.params, rtol=1e-6)
    assert t32.gradient(X, y).dtype == np.float32
    np.testing.assert_allclose(t32.gradient(X, y), t64.gradient(X, y), rtol=1e-4, atol=1e-6)
    t32.fit(X, y, epochs=2, progress=False)
    t64.fit(X, y, epochs=2, progress=False)
    assert t32.params.dtype == np.float32
    assert t32.predict_proba(X).dtype == np.float32
    np.testing.assert_allclose(t32.params, t64.params, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("target", ["cpu", "parallel"])
@pytest.mark.parametrize("loss", LOSSES)
def test_sample_weights_match_reference_and_repeated_rows(loss, target):
    t = _trainer("tanh", loss, target)
    X, y = make_data(loss, SIZES[0], SIZES[-1], n=19)
    w = np.random.default_rng(5).integers(0, 4, size=19).astype(float)
    w[0] = 1.0
    Ws, bs = ref.unflatten(t.params, SIZES)
    value, dWs, dbs = ref.loss_and_grad(Ws, bs, X, y, ["tanh", "tanh"], loss, w)
    assert t.loss(X, y, sample_weight=w) == pytest.approx(value, rel=1e-12)
    g = t.gradient(X, y, sample_weight=w)
    np.testing.assert_allclose(g, ref.flatten(dWs, dbs), rtol=1e-10, atol=1e-13)
    rep = np.repeat(np.arange(19), w.astype(int))        # integer weight = repeated row
    np.testing.assert_allclose(g, t.gradient(X[rep], y[rep]), rtol=1e-10, atol=1e-13)


def test_weighted_training_trajectory_matches_reference():
    loss = "cross_entropy"
    t = _trainer("relu", loss, optimizer="sgd", momentum=0.9, lr=0.05, batch_size=8)
    X, y = make_data(loss, SIZES[0], SIZES[-1], n=30)
    w = np.random.default_rng(1).random(30) * 2
    w[8:16] = 0.0                                            # a batch of zero weight
    Ws, bs = ref.unflatten(t.params, SIZES)
    opt = ref.Optimizer("sgd", lr=0.05, momentum=0.9)
    expected = ref.train(Ws, bs, X, y, ["relu", "relu"], loss, opt, 8, 2, sample_weight=w)
    h = t.fit(X, y, sample_weight=w, epochs=2, shuffle=False, progress=False)
    np.testing.assert_allclose(h["loss"], expected, rtol=1e-10)
    np.testing.assert_allclose(t.params, ref.flatten(Ws, bs), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "gelu"])
def test_dropout_trajectory_matches_reference(act):
    """Inverted dropout in the kernel, mask for mask (the reference recomputes fastbp's
    counter-based masks), and the backward pass through it."""
    sizes = [5, 7, 6, 3]
    t = _trainer(act, "cross_entropy", sizes=sizes, optimizer="sgd", momentum=0.9, lr=0.05,
                 batch_size=8, dropout=[0.3, 0.5])
    X, y = make_data("cross_entropy", sizes[0], sizes[-1], n=30)
    Ws, bs = ref.unflatten(t.params, sizes)
    opt = ref.Optimizer("sgd", lr=0.05, momentum=0.9)
    expected = ref.train(Ws, bs, X, y, [act, act], "cross_entropy", opt, 8, 2,
                         dropout=([0.3, 0.5], t._dropout_seed))
    h = t.fit(X, y, epochs=2, shuffle=False, progress=False)
    np.testing.assert_allclose(h["loss"], expected, rtol=1e-10)
    np.testing.assert_allclose(t.params, ref.flatten(Ws, bs), rtol=1e-9, atol=1e-12)


def test_dropout_is_off_outside_training_and_parallel_equals_cpu():
    """After training with dropout (cpu and parallel), loss, gradient, evaluate, predict and
    predict_proba are the plain forward pass of the weights, with no mask: the float64
    reference computed from the trained parameters."""
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=64)
    with_drop = _trainer("relu", "cross_entropy", dropout=0.5)
    without = _trainer("relu", "cross_entropy")
    assert np.array_equal(with_drop.params, without.params)
    assert with_drop.loss(X, y) == without.loss(X, y)
    np.testing.assert_array_equal(with_drop.predict_proba(X), without.predict_proba(X))
    np.testing.assert_array_equal(with_drop.gradient(X, y), without.gradient(X, y))
    runs = []
    for target in ("cpu", "parallel"):
        t = _trainer("relu", "cross_entropy", target, dropout=[0.5, 0.3], batch_size=16)
        if target == "parallel":
            _with_strategy(t, "chunks")
        t.fit(X, y, epochs=2, progress=False)
        runs.append(t.params)
        Ws, bs = ref.unflatten(t.params, SIZES)
        value, dWs, dbs = ref.loss_and_grad(Ws, bs, X, y, ["relu", "relu"], "cross_entropy")
        proba = ref.output(Ws, bs, X, ["relu", "relu"], "cross_entropy")
        assert t.loss(X, y) == pytest.approx(value, rel=1e-12)
        np.testing.assert_allclose(t.gradient(X, y), ref.flatten(dWs, dbs), rtol=1e-10,
                                   atol=1e-13)
        np.testing.assert_allclose(t.predict_proba(X), proba, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(t.predict(X), proba.argmax(axis=1))
        scores = t.evaluate(X, y)
        assert scores["loss"] == pytest.approx(value, rel=1e-12)
        assert scores["accuracy"] == np.mean(proba.argmax(axis=1) == y)
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-9, atol=1e-12)
    plain = _trainer("relu", "cross_entropy", batch_size=16)
    plain.fit(X, y, epochs=2, progress=False)
    assert not np.allclose(runs[0], plain.params)        # dropout did change training


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop"])
def test_decay_per_unit_of_batch_weight_matches_reference(optimizer, weighted):
    """scikit-learn's L2 convention, which the estimators use: the decay divided by each
    batch's rows (the partial last batch its own) or total sample weight."""
    t = _trainer("tanh", "mse", optimizer=optimizer, lr=0.05, batch_size=8, weight_decay=0.3,
                 decay_per_weight=True)
    X, y = make_data("mse", SIZES[0], SIZES[-1], n=30)
    w = np.random.default_rng(5).random(30) * 2 if weighted else None
    Ws, bs = ref.unflatten(t.params, SIZES)
    opt = ref.Optimizer(optimizer, lr=0.05, weight_decay=0.3, decay_per_weight=True)
    expected = ref.train(Ws, bs, X, y, ["tanh", "tanh"], "mse", opt, batch_size=8, epochs=2,
                         sample_weight=w)
    history = t.fit(X, y, sample_weight=w, epochs=2, shuffle=False, progress=False)
    np.testing.assert_allclose(history["loss"], expected, rtol=1e-10)
    np.testing.assert_allclose(t.params, ref.flatten(Ws, bs), rtol=1e-9, atol=1e-12)


def test_a_dense_fit_compiles_none_of_the_csr_code(tmp_path):
    """Dense rows and CSR rows run separate compile-time variants (kernels/variants.py): a
    dense fit types and compiles none of the CSR first layer, and evaluating compiles the
    forward-only kernel, not the gradient's, which keeps a first fit's compile short. Run
    with an empty Numba cache (a cached kernel loads whole, with no record of its
    callees)."""
    import os
    import subprocess
    import sys

    script = """if True:
        import numpy as np
        from fastbp import Trainer
        from fastbp.kernels.variants import variant
        X = np.random.default_rng(0).normal(size=(20, 5))
        t = Trainer([5, 4, 2], batch_size=8, seed=0)
        t.fit(X, np.arange(20) % 2, epochs=1, progress=False)
        t.evaluate(X, np.arange(20) % 2)
        dense = variant("dense")
        # evaluation runs the forward-only kernel; the gradient's is not compiled
        assert dense.evaluate.signatures
        assert dense.loss_grad_serial.signatures == []
        assert dense.forward_backward.signatures, "callees compiled"
        assert dense.train_epoch_serial.signatures
        for name in ("sparse_linear_forward", "sparse_linear_backward", "gather_touched",
                     "touched_union", "update_rows"):
            assert getattr(dense, name).signatures == [], name
        assert variant("csr").train_epoch_serial.signatures == []
        print("ok")
    """
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), FASTBP_PREBUILT="0")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_parallel_kernel_compiles_its_callees_once(tmp_path):
    """Numba types a prange index as uint64 inside a parallel body and as int64 everywhere
    else, so a function called with the raw index compiled twice (2.4 s of a cold start):
    the kernels pass cpu.index(c), an int64. Run with an empty Numba cache, as the test
    above."""
    import os
    import subprocess
    import sys

    if numba.get_num_threads() < 2:
        pytest.skip("one thread: no parallel kernel to compile")
    script = """if True:
        import numpy as np
        from fastbp import Trainer
        from fastbp.kernels import training_plan
        from fastbp.kernels.variants import variant
        rng = np.random.default_rng(0)
        t = Trainer([8, 16, 3], batch_size=8, dtype="float64", target="parallel",
                    n_threads=2, seed=0)
        t.engine.train_plan = training_plan("parallel", [8, 16, 3], 8, 2, "chunks")
        t.fit(rng.standard_normal((32, 8)), rng.integers(0, 3, 32), epochs=1,
              progress=False)
        dense = variant("dense")
        assert dense.train_epoch_parallel.signatures
        # the chunk index is forward_backward's fourth argument
        print(sorted({str(sig[3]) for sig in dense.forward_backward.signatures}))
    """
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), FASTBP_PREBUILT="0")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['int64']", out.stdout
