"""target='cuda' against target='cpu' (itself checked against the float64 reference): every
kernel through loss, gradient and predictions, and 2-epoch fits for every activation, loss
and optimizer. Runs under Numba's CUDA simulator (tests/test_cuda.py starts it) or on a GPU
(FASTBP_CUDA_TESTS=1); tests/conftest.py leaves this folder out of other runs.

Shapes are tiny, and the simulator's blocks smaller still (a 4x4 tile per 2x2 threads), so
every product spans several blocks in both directions and ends in partial tiles."""
import os
import pickle

import numpy as np
import pytest

from conftest import ACTIVATIONS, CUDA_SIMULATOR, LOSSES, make_data
from fastbp import DivergenceError, MLPClassifier, Trainer, callbacks
from fastbp.kernels import cuda_graphs, cuda_runner, gpu

SIZES = [5, 6, 4, 3]
BATCH = 5          # 11 rows: steps of 5, 5 and 1 rows
N = 11
SMALL = dict(tile=2, per_thread=2, threads=8)
OPTIMIZERS = [("sgd", {}), ("sgd", {"momentum": 0.9}),
              ("sgd", {"momentum": 0.9, "nesterov": True}), ("adam", {}), ("adamw", {}),
              ("rmsprop", {}), ("rmsprop", {"momentum": 0.5})]
SETTINGS = [{}, {"weight_decay": 0.05}, {"clip_norm": 0.05},
            {"weight_decay": 0.05, "clip_norm": 0.05}]


@pytest.fixture(autouse=True, params=[SMALL] if CUDA_SIMULATOR else
                [SMALL, gpu.DEFAULT_BLOCK_SIZES], ids=lambda p: "tile{tile}x{per_thread}".format(**p))
def block_sizes(request):
    before = gpu.block_sizes()
    gpu.set_block_sizes(**request.param)
    yield request.param
    gpu.set_block_sizes(**before)


def pair(sizes=SIZES, **kw):
    """The same model (same seed) on target='cpu' and target='cuda'."""
    kw = {"seed": 3, "dtype": "float64", "batch_size": BATCH, **kw}
    return Trainer(sizes, target="cpu", **kw), Trainer(sizes, target="cuda", **kw)


def assert_same_fit(cpu, gpu_t, h_cpu, h_gpu, rtol=1e-10):
    for key in ("loss", "grad_norm", "grad_norm_max", "accuracy", "val_loss"):
        if key in h_cpu:
            np.testing.assert_allclose(h_gpu[key], h_cpu[key], rtol=rtol, atol=1e-12,
                                       err_msg=key)
    np.testing.assert_allclose(h_gpu["layer_grad_norms"], h_cpu["layer_grad_norms"],
                               rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(gpu_t.params, cpu.params, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(gpu_t.engine.m, cpu.engine.m, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(gpu_t.engine.v, cpu.engine.v, rtol=rtol, atol=1e-12)
    assert gpu_t.step == cpu.step


def test_small_blocks_leave_partial_tiles(block_sizes):
    if block_sizes is not SMALL:
        pytest.skip("only the small block sizes are chosen to split these shapes")
    tile = gpu.get_kernels("float64").block_tile
    assert tile < BATCH < 2 * tile and all(tile < n < 2 * tile for n in SIZES[:2])


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_loss_gradient_and_outputs_match_cpu(act, loss):
    cpu, cuda = pair(activation=act, loss=loss)
    X, y = make_data(loss, SIZES[0], SIZES[-1], n=N)
    params = cpu.params + np.random.default_rng(4).normal(scale=0.1, size=cpu.n_params)
    cpu.params = cuda.params = params                      # biases != 0
    assert cuda.loss(X, y) == pytest.approx(cpu.loss(X, y), rel=1e-12)
    np.testing.assert_allclose(cuda.gradient(X, y), cpu.gradient(X, y), rtol=1e-10,
                               atol=1e-13)
    assert cuda.evaluate(X, y) == pytest.approx(cpu.evaluate(X, y), rel=1e-12)
    if loss in ("mse", "poisson"):
        np.testing.assert_allclose(cuda.predict(X), cpu.predict(X), rtol=1e-12, atol=1e-14)
    else:
        np.testing.assert_allclose(cuda.predict_proba(X), cpu.predict_proba(X), rtol=1e-12,
                                   atol=1e-14)
        np.testing.assert_array_equal(cuda.predict(X), cpu.predict(X))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("optimizer,extra", OPTIMIZERS,
                         ids=[f"{o}{'-' if e else ''}{'-'.join(e)}" for o, e in OPTIMIZERS])
def test_two_epoch_fit_matches_cpu(optimizer, extra, loss):
    """Shuffled 2-epoch fits with a partial last batch; activations and the weight decay /
    clipping settings rotate over the cases so that each meets every optimizer."""
    i = [o for o, _ in OPTIMIZERS].index(optimizer) + len(extra) + LOSSES.index(loss)
    kw = dict(activation=ACTIVATIONS[i % len(ACTIVATIONS)], loss=loss, optimizer=optimizer,
              lr=0.05, **extra, **SETTINGS[i % len(SETTINGS)])
    cpu, cuda = pair(**kw)
    X, y = make_data(loss, SIZES[0], SIZES[-1], n=N)
    h_cpu = cpu.fit(X, y, epochs=2, progress=False)
    h_gpu = cuda.fit(X, y, epochs=2, progress=False)
    assert_same_fit(cpu, cuda, h_cpu, h_gpu)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_activation_fits_like_cpu(act):
    cpu, cuda = pair(activation=[act, "tanh"], optimizer="sgd", momentum=0.9, lr=0.1)
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=N)
    assert_same_fit(cpu, cuda, cpu.fit(X, y, epochs=2, progress=False),
                    cuda.fit(X, y, epochs=2, progress=False))


def test_float32_fit_matches_cpu_to_float_rounding():
    cpu, cuda = pair(dtype="float32", activation="gelu", lr=0.01)
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=N)
    h_cpu = cpu.fit(X, y, epochs=2, progress=False)
    h_gpu = cuda.fit(X, y, epochs=2, progress=False)
    assert cuda.params.dtype == np.float32
    np.testing.assert_allclose(h_gpu["loss"], h_cpu["loss"], rtol=1e-5)
    np.testing.assert_allclose(cuda.params, cpu.params, rtol=1e-4, atol=1e-6)


def test_dropout_masks_are_the_cpus():
    cpu, cuda = pair(activation="relu", dropout=[0.5, 0.25], lr=0.05)
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=N)
    assert_same_fit(cpu, cuda, cpu.fit(X, y, epochs=2, progress=False),
                    cuda.fit(X, y, epochs=2, progress=False))
    # dropout is off outside training: loss and outputs equal the CPU's
    assert cuda.loss(X, y) == pytest.approx(cpu.loss(X, y), rel=1e-12)


def test_sample_weight_matches_cpu():
    cpu, cuda = pair(loss="mse", optimizer="sgd", lr=0.1)
    X, y = make_data("mse", SIZES[0], SIZES[-1], n=N)
    w = np.random.default_rng(1).random(N)
    w[:5] = 0.0                                  # with shuffle=False, a weightless batch
    h_cpu = cpu.fit(X, y, sample_weight=w, epochs=2, shuffle=False, progress=False)
    h_gpu = cuda.fit(X, y, sample_weight=w, epochs=2, shuffle=False, progress=False)
    assert_same_fit(cpu, cuda, h_cpu, h_gpu)
    assert cuda.loss(X, y, w) == pytest.approx(cpu.loss(X, y, w), rel=1e-12)
    np.testing.assert_allclose(cuda.gradient(X, y, w), cpu.gradient(X, y, w), rtol=1e-10,
                               atol=1e-13)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_decay_per_unit_of_batch_weight_matches_cpu(optimizer):
    """The estimators' (scikit-learn's) L2 convention: decay / each batch's weight."""
    cpu, cuda = pair(optimizer=optimizer, lr=0.05, weight_decay=0.3, decay_per_weight=True)
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=N)
    w = np.random.default_rng(3).random(N) * 2
    assert_same_fit(cpu, cuda, cpu.fit(X, y, sample_weight=w, epochs=2, progress=False),
                    cuda.fit(X, y, sample_weight=w, epochs=2, progress=False))


def test_streamed_data_trains_like_resident_data(monkeypatch):
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=N)
    cpu, resident = pair(dropout=0.2)
    _, streamed = pair(dropout=0.2)
    h_res = resident.fit(X, y, epochs=2, progress=False)
    monkeypatch.setattr(cuda_runner, "MAX_RESIDENT_BYTES", 2 * BATCH * X.shape[1] * 8)
    data = streamed.engine.device().data(X, np.zeros(N, np.int64), np.zeros((0, 3)), np.zeros(0),
                                   BATCH)
    assert data.streamed and data.chunk_rows == 2 * BATCH       # chunks of 10 and 1 rows
    h_str = streamed.fit(X, y, epochs=2, progress=False)
    assert_same_fit(resident, streamed, h_res, h_str, rtol=1e-13)
    assert_same_fit(cpu, streamed, cpu.fit(X, y, epochs=2, progress=False), h_str)
    # evaluation streams too (chunk by chunk, a few rows per launch), and so does predict
    monkeypatch.setattr(cuda_runner, "EVAL_ROWS", 4)
    w = np.random.default_rng(2).random(N)
    assert streamed.loss(X, y, w) == pytest.approx(cpu.loss(X, y, w), rel=1e-12)
    np.testing.assert_allclose(streamed.gradient(X, y), cpu.gradient(X, y), rtol=1e-10,
                               atol=1e-13)
    np.testing.assert_allclose(streamed.predict_proba(X), cpu.predict_proba(X), rtol=1e-12)


def test_a_callback_changing_params_between_epochs_takes_effect():
    def halve(t, epoch, logs):
        t.params *= 0.5
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=N)
    cpu, cuda = pair(optimizer="sgd", momentum=0.9, lr=0.05)
    assert_same_fit(cpu, cuda, cpu.fit(X, y, epochs=3, callbacks=[halve], progress=False),
                    cuda.fit(X, y, epochs=3, callbacks=[halve], progress=False))


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")
def test_divergence_is_caught_on_the_device_like_on_the_cpu():
    """float32 overflows in the second epoch: the device's status flag stops the updates
    at the same step, and fit restores the state of the first epoch."""
    cpu, cuda = pair(loss="mse", optimizer="sgd", lr=1e3, dtype="float32")
    X, y = make_data("mse", SIZES[0], SIZES[-1], n=N)
    y = y * 1e3
    errors = []
    for t in (cpu, cuda):
        with pytest.raises(DivergenceError) as info:
            t.fit(X, y, epochs=6, progress=False)
        errors.append((info.value.epoch, info.value.step))
    assert errors[0] == errors[1] == (1, 0)
    np.testing.assert_allclose(cuda.params, cpu.params, rtol=1e-4)   # epoch 0's, restored
    assert cuda.step == cpu.step == 3 and cuda.epochs_done == 1


def test_validation_callbacks_files_and_pickles(tmp_path):
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=N)
    Xv, yv = make_data("cross_entropy", SIZES[0], SIZES[-1], n=7, seed=1)
    cpu, cuda = pair(lr=0.05)
    logs = []
    h_cpu = cpu.fit(X, y, validation_data=(Xv, yv), epochs=3, progress=False)
    h_gpu = cuda.fit(X, y, validation_data=(Xv, yv), epochs=3, progress=False,
                     callbacks=[lambda t, e, l: logs.append(t.params.copy()),
                                callbacks.Checkpoint(tmp_path / "best.npz")])
    assert_same_fit(cpu, cuda, h_cpu, h_gpu)
    np.testing.assert_allclose(h_gpu["val_accuracy"], h_cpu["val_accuracy"])
    assert len(logs) == 3 and not np.array_equal(logs[0], logs[2])   # params every epoch

    path = tmp_path / "model.npz"
    cuda.save(path)
    again = Trainer.load(path)
    on_cpu = Trainer.load(path, target="cpu")
    assert again.config["target"] == "cuda" and on_cpu.config["target"] == "cpu"
    np.testing.assert_allclose(again.predict_proba(X), on_cpu.predict_proba(X), rtol=1e-12)
    copy = pickle.loads(pickle.dumps(cuda))
    for t in (cuda, copy, cpu):
        t.fit(X, y, epochs=1, progress=False)
    np.testing.assert_allclose(copy.params, cuda.params, rtol=1e-13)
    np.testing.assert_allclose(cuda.params, cpu.params, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_estimator_on_cuda_matches_cpu(solver):
    """The estimators' scikit-learn solvers (Adam's eps_hat, SGD's rescaled momentum under
    invscaling, the loss from the step records with its L2 term) on the GPU."""
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=N)
    kw = dict(hidden_layer_sizes=(6,), solver=solver, batch_size=BATCH, max_iter=3,
              random_state=0, dtype="float64", alpha=0.01)
    if solver == "sgd":
        kw.update(learning_rate="invscaling", learning_rate_init=0.5)
    cpu = MLPClassifier(target="cpu", **kw).fit(X, y)
    cuda = MLPClassifier(target="cuda", **kw).fit(X, y)
    for a, b in zip(cuda.coefs_ + cuda.intercepts_, cpu.coefs_ + cpu.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cuda.predict_proba(X), cpu.predict_proba(X), rtol=1e-9)
    if solver != "lbfgs":
        np.testing.assert_allclose(cuda.loss_curve_, cpu.loss_curve_, rtol=1e-9)


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_estimator_negative_sample_weights_on_cuda_match_cpu(solver):
    """Negative sample weights (as scikit-learn takes them): a batch of negative total
    weight has the negative inverse, on the GPU as on the CPU (it had none: no gradient)."""
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=N)
    w = -np.ones(N)
    w[: N // 4] = 0.5
    kw = dict(hidden_layer_sizes=(6,), solver=solver, batch_size=BATCH, max_iter=3,
              random_state=0, dtype="float64", shuffle=False)
    cpu = MLPClassifier(target="cpu", **kw).fit(X, y, sample_weight=w)
    cuda = MLPClassifier(target="cuda", **kw).fit(X, y, sample_weight=w)
    for a, b in zip(cuda.coefs_ + cuda.intercepts_, cpu.coefs_ + cpu.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_sparse_input_is_refused_as_cpu_only_for_now():
    """Sparse X trains on the CPU targets only: target='cuda' says so (a ValueError) before
    any work, in the Trainer and the estimators, with the model unchanged."""
    from scipy import sparse
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=N)
    S = sparse.csr_matrix(np.where(np.abs(X) < 0.5, 0.0, X))
    t = Trainer(SIZES, target="cuda", seed=0)
    before = t.params.copy()
    for call in (lambda: t.fit(S, y, progress=False), lambda: t.predict(S),
                 lambda: t.loss(S, y), lambda: t.fit(X, y, validation_data=(S, y))):
        with pytest.raises(ValueError, match="CPU targets only"):
            call()
    np.testing.assert_array_equal(t.params, before)
    with pytest.raises(ValueError, match="CPU targets only"):
        MLPClassifier(hidden_layer_sizes=(4,), target="cuda").fit(S, y)
    m = MLPClassifier(hidden_layer_sizes=(4,), target="cuda", max_iter=2).fit(X, y)
    with pytest.raises(ValueError, match="CPU targets only"):
        m.predict(S)


# ------------------------------------------------------- device-side step scalars, graphs

def _weighted_fit(t, epochs=3, **kw):
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=N)
    w = np.random.default_rng(5).random(N) * 2
    return t.fit(X, y, sample_weight=w, epochs=epochs, progress=False, **kw)


@pytest.mark.parametrize("optimizer,extra", [
    ("adam", {"weight_decay": 0.05, "clip_norm": 0.5}),
    ("adamw", {"weight_decay": 0.3, "decay_per_weight": True}),
    ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.05}),
    ("rmsprop", {"momentum": 0.5, "clip_norm": 0.05})])
def test_per_step_scalars_on_the_device_match_cpu(optimizer, extra):
    """Every per-step scalar comes from the device tables the host fills once per epoch
    (rows and row range of each step, the step number for Adam's bias corrections and the
    dropout masks, the batch weight, the decay; the epoch's lr under a schedule): several
    epochs with a partial last batch, dropout and sample weights equal the CPU's."""
    cpu, cuda = pair(optimizer=optimizer, lr=0.05, dropout=[0.3, 0.2], activation="relu",
                     **extra)
    halving = lambda epoch: 0.05 * 0.5 ** epoch                    # noqa: E731
    h_cpu, h_gpu = (_weighted_fit(t, lr_schedule=halving) for t in (cpu, cuda))
    assert_same_fit(cpu, cuda, h_cpu, h_gpu)
    assert cuda.step == 9 and cuda.engine.device().launch_path in ("plain", "graph")


def test_launches_are_the_same_for_every_step_and_epoch(monkeypatch):
    """One list of launches serves the whole fit: nothing in it changes with the step (the
    property that lets a CUDA graph capture it once). Plain launches, to see each step."""
    monkeypatch.setenv(cuda_graphs.GRAPHS_ENV, "0")
    cpu, cuda = pair(optimizer="adam", lr=0.05, dropout=0.2)
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=N)
    net = cuda.engine.device()
    seen = []
    real = net._run

    def spy(launches):
        seen.append([(kernel, grid, block, tuple(id(a) if hasattr(a, "copy_to_host") else a
                                                 for a in args))
                     for kernel, grid, block, args in launches])
        return real(launches)
    net._run = spy
    h_gpu = cuda.fit(X, y, epochs=2, progress=False)
    net._run = real
    assert len(seen) == 2 * 3 and all(s == seen[0] for s in seen)     # 2 epochs of 3 steps
    assert len(seen[0]) == 2 * (len(SIZES) - 1) + 4
    assert_same_fit(cpu, cuda, cpu.fit(X, y, epochs=2, progress=False), h_gpu)


class _ReplayedGraph:
    """Stands in for a CUDA graph under the simulator: `repeats` times the captured
    launches, replayed through the network's plain launcher."""

    def __init__(self, net, launches, repeats):
        self.net, self.launches, self.repeats = net, list(launches), repeats

    def launch(self, stream=None):
        for _ in range(self.repeats):
            self.net._run(self.launches)


def _fake_graphs(monkeypatch, net, fail=False):
    captured = []

    def capture(launches, repeats):
        captured.append(repeats)
        if fail:
            raise RuntimeError("capture refused (test)")
        return _ReplayedGraph(net, launches, repeats), None
    monkeypatch.setattr(cuda_graphs, "graphs_wanted", lambda: True)
    monkeypatch.setattr(cuda_graphs, "capture_graph", capture)
    monkeypatch.setattr(cuda_graphs, "launch_graph", lambda graph, net: graph.launch())
    return captured


@pytest.mark.parametrize("streamed", [False, True], ids=["resident", "streamed"])
def test_graph_replay_orchestration_matches_cpu(monkeypatch, streamed):
    """The graph path's bookkeeping under the simulator, with a stand-in graph that replays
    the captured launches: the fit's first step runs plainly, then graphs of GRAPH_STEPS
    steps and one of the remainder (each captured once per fit), within each chunk of
    streamed rows; results equal the CPU's."""
    monkeypatch.setattr(cuda_graphs, "GRAPH_STEPS", 2)
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=N)
    cpu, cuda = pair(optimizer="adam", lr=0.05, dropout=0.2)
    net = cuda.engine.device()
    captured = _fake_graphs(monkeypatch, net)
    if streamed:        # chunks of 2 batches: 10 rows (2 steps) and 1 row (1 step)
        monkeypatch.setattr(cuda_runner, "MAX_RESIDENT_BYTES", 2 * BATCH * X.shape[1] * 8)
    h_gpu = cuda.fit(X, y, epochs=3, progress=False)
    assert_same_fit(cpu, cuda, cpu.fit(X, y, epochs=3, progress=False), h_gpu)
    assert net.launch_path == "graph" and net.graph_error is None
    # 3 steps an epoch: warm-up + a graph of 2 first, then 2 + 1 (resident) or, streamed,
    # a graph of 2 for the first chunk and one of 1 for the second
    assert sorted(set(captured)) == [1, 2] and len(captured) == 2
    assert net.launch_counts == {"graph_steps": 3, "plain_steps": 0, "warmup_steps": 0,
                                 "graph_launches": 2, "graphs_captured": 2}


def test_a_failed_capture_falls_back_to_plain_launches(monkeypatch):
    """A capture that fails (on real hardware, for any reason) never stops training: the
    step runs launch by launch, the reason is kept, and no later epoch tries again."""
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=N)
    cpu, cuda = pair(optimizer="sgd", momentum=0.9, lr=0.05)
    net = cuda.engine.device()
    captured = _fake_graphs(monkeypatch, net, fail=True)
    h_gpu = cuda.fit(X, y, epochs=3, progress=False)
    assert_same_fit(cpu, cuda, cpu.fit(X, y, epochs=3, progress=False), h_gpu)
    assert net.launch_path == "plain" and "capture refused (test)" in net.graph_error
    assert len(captured) == 1


@pytest.mark.skipif(CUDA_SIMULATOR, reason="needs a GPU: the simulator has no CUDA graphs")
@pytest.mark.parametrize("streamed", [False, True], ids=["resident", "streamed"])
def test_cuda_graphs_run_and_equal_plain_launches_bit_for_bit(monkeypatch, streamed):
    """On a GPU: training replays captured CUDA graphs (no fallback) and gives the same
    params, optimizer state and history as the plain launches (FASTBP_CUDA_GRAPHS=0) bit
    for bit; several graphs per epoch (GRAPH_STEPS lowered), a partial last batch, Adam,
    dropout, sample weights and decay."""
    monkeypatch.setattr(cuda_graphs, "GRAPH_STEPS", 2)
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=N)
    if streamed:
        monkeypatch.setattr(cuda_runner, "MAX_RESIDENT_BYTES", 2 * BATCH * X.shape[1] * 8)
    kw = dict(optimizer="adam", lr=0.05, dropout=[0.3, 0.2], weight_decay=0.05, clip_norm=0.5)
    runs = {}
    for graphs in ("1", "0"):
        monkeypatch.setenv(cuda_graphs.GRAPHS_ENV, graphs)
        t = Trainer(SIZES, target="cuda", seed=3, dtype="float32", batch_size=BATCH, **kw)
        h = _weighted_fit(t, epochs=3)
        net = t.engine.device()
        runs[graphs] = (t, h, net.launch_path, net.graph_error, dict(net.launch_counts))
    (tg, hg, path_g, err_g, counts_g), (tp, hp, path_p, _, _) = runs["1"], runs["0"]
    assert err_g is None and path_g == "graph", (path_g, err_g)
    assert counts_g["graph_steps"] == 3 and counts_g["plain_steps"] == 0, counts_g
    assert path_p == "plain"
    for key in ("loss", "grad_norm", "layer_grad_norms", "accuracy"):
        np.testing.assert_array_equal(np.asarray(hg[key]), np.asarray(hp[key]), err_msg=key)
    np.testing.assert_array_equal(tg.params, tp.params)
    np.testing.assert_array_equal(tg.engine.m, tp.engine.m)
    np.testing.assert_array_equal(tg.engine.v, tp.engine.v)
    cpu = Trainer(SIZES, target="cpu", seed=3, dtype="float32", batch_size=BATCH, **kw)
    _weighted_fit(cpu, epochs=3)
    np.testing.assert_allclose(tg.params, cpu.params, rtol=1e-4, atol=1e-6)


def _tile_choices(monkeypatch):
    """Record the per_thread of every product launch the runner builds."""
    chosen = []
    real = cuda_runner.CudaNetwork._products

    def products(net, blocks):
        p = real(net, blocks)
        chosen.append(p.per_thread)
        return p
    monkeypatch.setattr(cuda_runner.CudaNetwork, "_products", products)
    return chosen


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_large_and_small_product_tiles_give_the_same_bits(monkeypatch, optimizer):
    """The runner picks the products' tile per launch. Every launch on the larger tiles and
    every launch on the smaller ones give the same fit bit for bit (history, params and
    optimizer state), equal to the CPU's; evaluation, gradient and predictions too. Shapes
    span at least two of the larger tiles, and end in partial ones."""
    sizes = gpu.block_sizes()
    large_tile = sizes["tile"] * sizes["large_per_thread"]
    layers = [large_tile + 5, 2 * large_tile + 1, large_tile - 1, 3]
    batch = large_tile + 3
    X, y = make_data("cross_entropy", layers[0], layers[-1], n=2 * batch + 1)
    kw = dict(seed=3, dtype="float64", batch_size=batch, optimizer=optimizer, lr=0.05,
              activation="tanh", dropout=[0.25, 0.0], weight_decay=0.01)
    chosen = _tile_choices(monkeypatch)
    runs = {}
    for min_blocks, per_thread in ((0, sizes["large_per_thread"]),
                                   (10**9, sizes["per_thread"])):
        monkeypatch.setattr(cuda_runner, "LARGE_TILE_MIN_BLOCKS", min_blocks)
        del chosen[:]
        t = Trainer(layers, target="cuda", **kw)
        h = t.fit(X, y, epochs=2, progress=False)
        outputs = (t.loss(X, y), t.gradient(X, y), t.predict_proba(X))
        assert chosen and set(chosen) == {per_thread}, (min_blocks, set(chosen))
        runs[min_blocks] = (t, h, outputs)
    (large, h_large, out_large), (small, h_small, out_small) = runs[0], runs[10**9]
    for key in ("loss", "grad_norm", "layer_grad_norms", "accuracy"):
        np.testing.assert_array_equal(np.asarray(h_large[key]), np.asarray(h_small[key]),
                                      err_msg=key)
    np.testing.assert_array_equal(large.params, small.params)
    np.testing.assert_array_equal(large.engine.m, small.engine.m)
    np.testing.assert_array_equal(large.engine.v, small.engine.v)
    assert out_large[0] == out_small[0]
    np.testing.assert_array_equal(out_large[1], out_small[1])
    np.testing.assert_array_equal(out_large[2], out_small[2])
    cpu = Trainer(layers, target="cpu", **kw)
    assert_same_fit(cpu, large, cpu.fit(X, y, epochs=2, progress=False), h_large)


def test_the_larger_tiles_run_where_their_grid_fills_the_gpu(monkeypatch):
    """A launch takes the larger tiles when their grid has a block per multiprocessor
    (the simulator stands in a count), else the smaller ones; large_per_thread <=
    per_thread turns the larger tiles off."""
    t = Trainer(SIZES, target="cuda", seed=3, batch_size=BATCH)
    net = t.engine.device()
    need = net.large_tile_min_blocks
    sizes = gpu.block_sizes()
    assert need >= 1
    assert net._products(lambda bt: need).per_thread == sizes["large_per_thread"]
    assert net._products(lambda bt: need - 1).per_thread == sizes["per_thread"]
    chosen = _tile_choices(monkeypatch)
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=N)
    t.fit(X, y, epochs=1, progress=False)
    # these tiny layers leave the larger tiles' grids with too few blocks
    assert chosen and set(chosen) == {sizes["per_thread"]}
    before = gpu.block_sizes()
    gpu.set_block_sizes(large_per_thread=sizes["per_thread"])
    try:
        off = Trainer(SIZES, target="cuda", seed=3, batch_size=BATCH).engine.device()
    finally:
        gpu.set_block_sizes(**before)
    assert off._products(lambda bt: 10**9).per_thread == sizes["per_thread"]


def test_warmup_builds_both_product_tiles(capsys):
    from fastbp import warmup
    from fastbp.cli import main

    sizes = gpu.block_sizes()
    large = ("products", "float64", sizes["tile"], sizes["large_per_thread"])
    gpu._built.pop(large, None)           # (built by an earlier test of this process)
    timings = warmup(dtypes=["float64"], targets=["cuda"])
    assert list(timings) == [("float64", "cuda")]
    assert ("float64", sizes["tile"], sizes["per_thread"], sizes["threads"]) in gpu._built
    assert large in gpu._built
    assert main(["warmup", "--dtypes", "float64", "--targets", "cuda"]) == 0
    assert "float64/cuda ready" in capsys.readouterr().out


@pytest.mark.skipif(CUDA_SIMULATOR, reason="needs a GPU: the simulator compiles nothing")
def test_the_kernels_are_cached_on_disk_for_the_next_process(tmp_path, block_sizes):
    """A first process compiles the kernels and saves them; a second loads every one from
    the disk cache (no compile) and fits to the same bits; FASTBP_CUDA_CACHE=0 compiles
    without the cache."""
    if block_sizes is SMALL:
        pytest.skip("one block size is enough (each run compiles in a new process)")
    import json
    import subprocess
    import sys
    from pathlib import Path

    code = """if True:
        import json, time
        import numpy as np
        t0 = time.perf_counter()
        from fastbp import Trainer
        from fastbp.kernels import gpu
        X = np.random.default_rng(0).normal(size=(300, 70))
        y = np.arange(300) % 3
        t = Trainer([70, 130, 3], target="cuda", dtype="float64", seed=3, batch_size=200)
        t.fit(X, y, epochs=2, progress=False)
        kernels = [k for ns in gpu._built.values() for k in vars(ns).values()
                   if hasattr(k, "stats")]
        print(json.dumps({"seconds": time.perf_counter() - t0,
                          "kernels": len(kernels),
                          "hits": sum(sum(k.stats.cache_hits.values()) for k in kernels),
                          "misses": sum(sum(k.stats.cache_misses.values()) for k in kernels),
                          "params": t.params.tolist()}))
    """
    root = Path(__file__).resolve().parents[2]

    def run(**env):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=root, timeout=600,
                             env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), **env})
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    first, second, uncached = run(), run(), run(FASTBP_CUDA_CACHE="0")
    print({k: v for k, v in first.items() if k != "params"},
          {k: v for k, v in second.items() if k != "params"},
          {k: v for k, v in uncached.items() if k != "params"})
    assert first["kernels"] >= 7 and first["misses"] == first["kernels"], first
    assert first["hits"] == 0
    assert second["hits"] == second["kernels"] == first["kernels"], second
    assert second["misses"] == 0
    assert uncached["hits"] == 0
    assert first["params"] == second["params"] == uncached["params"]
