"""What a fit holds in memory (issue 15 section 5): the Trainer and the fit allocate their
params-sized buffers once, and the divergence roll-back's copy is kept in a temporary file,
not in the process (in memory only where no file can be written). Allocations are counted with tracemalloc (exact byte
counts of NumPy's buffers), on models whose parameters dwarf everything else, with margins of
a quarter of the parameters' size or more; the memory goals themselves are measured by
`python benchmarks/compare.py --memory`."""
import tracemalloc

import numpy as np
import pytest

from conftest import diverging_adam_run, make_data
from fastbp import DivergenceError, Trainer, rollback

LAYERS = [16, 256, 256, 4]          # 71,428 parameters: 571 KB in float64


def _data(n=48):
    return make_data("cross_entropy", LAYERS[0], LAYERS[-1], n=n)


def _trainer(optimizer="adam", batch_size=16):
    return Trainer(LAYERS, optimizer=optimizer, batch_size=batch_size, dtype="float64", seed=0)


@pytest.fixture(autouse=True)
def _compiled():
    """Compile (or load) the kernels before anything is traced."""
    X, y = _data(16)
    _trainer().fit(X, y, epochs=1, progress=False)


def _traced_fit(t, X, y, **kw):
    """The fit's peak of traced allocations, and the peak from the end of its first epoch
    to its end above what was allocated at the end of the first epoch."""
    after_first = {}

    def first_epoch_done(trainer, epoch, logs):
        if epoch == 0:
            after_first["current"] = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            after_first["peak"] = 0
    tracemalloc.start()
    try:
        t.fit(X, y, progress=False, callbacks=[first_epoch_done], **kw)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, peak - after_first["current"]


@pytest.mark.parametrize("restore", [True, False])
def test_epochs_after_the_first_allocate_nothing_of_params_size(restore):
    """The roll-back copy, the workspaces, slabs and row order are allocated once per fit:
    later epochs (snapshot, reshuffle, kernel, logs) add less than a quarter of params."""
    X, y = _data()
    t = _trainer()
    _, later = _traced_fit(t, X, y, epochs=4, shuffle=True, restore_on_divergence=restore)
    assert later < t.params.nbytes / 4, (later, t.params.nbytes)


def test_the_input_gradients_transposed_weights_live_in_the_workspace():
    """gemm.nt transposes W into a scratch at the end of each chunk's workspace, allocated
    with it once per fit: later epochs allocate none of it (one 128 x 128 float32 W is 85% of
    this model's parameters, so a scratch per call would show)."""
    from fastbp.kernels import gemm
    layers = [16, 128, 128, 4]
    assert gemm.nt_by_transpose(16, 128, 128, 4)          # the route this test covers
    X, y = make_data("cross_entropy", layers[0], layers[-1], n=48)
    def trainer():
        return Trainer(layers, optimizer="adam", batch_size=16, dtype="float32", seed=0)
    trainer().fit(X, y, epochs=1, progress=False)           # compiled before tracing
    t = trainer()
    _, later = _traced_fit(t, X, y, epochs=4, shuffle=True)
    assert later < t.params.nbytes / 4, (later, t.params.nbytes)
    a_off, z_off, d_off, size = t._layout.workspace(16)
    assert size - d_off[2] == 129 * 128          # the largest W_l (l >= 1) it takes, + a row
    assert t._layout.workspace(16, backward=False)[3] == d_off[2]    # none for evaluation


def test_building_a_trainer_holds_no_second_copy_of_params():
    """The initial parameters are drawn into the engine's buffer: the peak of building a
    Trainer is params, m and v plus one layer's float64 draws (9 equal layers here: 1/9 of
    params; a second copy of params would be 9/9)."""
    layers = [64] * 10
    Trainer(layers, dtype="float64", seed=0)         # the layout and config code imported
    tracemalloc.start()
    try:
        t = Trainer(layers, optimizer="adam", dtype="float64", seed=0)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    P = t.params.nbytes
    assert 3 * P <= current < 3.1 * P                 # params, m and v
    assert peak - current < P / 4, (peak - current, P)


@pytest.mark.parametrize("optimizer,buffers", [("sgd", 0), ("adam", 2)])
def test_the_roll_back_copy_is_written_to_a_file_not_held_in_memory(
        monkeypatch, optimizer, buffers):
    """The roll-back costs a fit no memory: its peak is the same with and without it. Where
    no temporary file can be made, the copy is held in memory instead: one more copy of
    params and of each optimizer buffer (plain SGD: params only; Adam: params, m, v)."""
    X, y = _data()
    peaks = {}
    for restore in (True, False):
        t = _trainer(optimizer)
        peaks[restore], _ = _traced_fit(t, X, y, epochs=2, restore_on_divergence=restore)
    P = t.params.nbytes
    assert abs(peaks[True] - peaks[False]) < P / 4, (peaks, P)

    real = rollback.tempfile.TemporaryFile

    def no_folder(*args, **kw):
        if kw.get("prefix") != rollback.PREFIX:       # (Numba's cache probes its folder)
            return real(*args, **kw)
        raise PermissionError("no writable temporary folder")
    monkeypatch.setattr(rollback.tempfile, "TemporaryFile", no_folder)
    t = _trainer(optimizer)
    in_memory, _ = _traced_fit(t, X, y, epochs=2)
    assert abs(in_memory - peaks[False] - (1 + buffers) * P) < P / 4, (in_memory, peaks, P)


def test_the_in_place_reshuffle_draws_the_same_permutations():
    """Each epoch's row order is the shuffling generator's shuffle of 0..n-1 (now reset by
    sorting in place): a shuffled fit equals an unshuffled fit on rows permuted by those
    shuffles, bit for bit."""
    X, y = _data(40)
    t = _trainer(batch_size=8)
    t.fit(X, y, epochs=3, shuffle=True, progress=False)
    twin = _trainer(batch_size=8)
    rng = np.random.default_rng(np.random.SeedSequence(0).spawn(3)[1])  # Trainer.reset's
    for _ in range(3):
        order = np.arange(X.shape[0])
        rng.shuffle(order)
        twin.fit(X[order], y[order], epochs=1, shuffle=False, progress=False)
    np.testing.assert_array_equal(t.params, twin.params)
    np.testing.assert_array_equal(t.engine.m, twin.engine.m)
    assert t._rng.bit_generator.state == rng.bit_generator.state


def test_restore_on_divergence_must_be_a_bool():
    X, y = _data(16)
    t = _trainer()
    with pytest.raises(TypeError, match=r"^restore_on_divergence='no' is not allowed: "
                                        r"restore_on_divergence must be True or False$"):
        t.fit(X, y, epochs=1, progress=False, restore_on_divergence="no")
    assert t.step == 0


def test_no_memory_for_the_roll_back_copy_names_the_way_out(monkeypatch):
    X, y = _data(16)
    t = _trainer()

    def no_memory(self, engine):
        raise MemoryError
    monkeypatch.setattr(rollback.RollbackCopy, "save", no_memory)
    with pytest.raises(MemoryError, match=r"copy of the parameters and optimizer state "
                                          r"\(1\.7 MB\).*restore_on_divergence=False"):
        t.fit(X, y, epochs=1, progress=False)
    t.fit(X, y, epochs=1, progress=False, restore_on_divergence=False)   # trains without it
    assert t.step == 1


@pytest.mark.parametrize("on_divergence", ["raise", "warn"])
def test_without_the_roll_back_the_model_stays_as_the_diverging_epoch_left_it(
        on_divergence):
    """A callback sets a huge lr after two good epochs; the third diverges after at least one
    update. Without the roll-back, nothing is put back: the step count includes the
    diverging epoch's updates before the bad step, the history ends at the last good epoch,
    and the message (or DivergenceError.restored) says so."""
    X, y, t, twin, blow_up_after_epoch_1 = diverging_adam_run()

    def fit():
        t.fit(X, y, epochs=5, progress=False, callbacks=[blow_up_after_epoch_1],
              on_divergence=on_divergence, restore_on_divergence=False)
    if on_divergence == "raise":
        with pytest.raises(DivergenceError) as err:
            fit()
        message, step, restored = str(err.value), err.value.step, err.value.restored
    else:
        with pytest.warns(Warning, match="diverged") as caught:
            fit()
        message = next(str(w.message) for w in caught if "diverged" in str(w.message))
        step, restored = int(message.split("step ")[1].split()[0]), False
    assert not restored and step >= 1
    assert "Nothing was restored (restore_on_divergence=False)" in message
    assert f"after {step} of its updates" in message
    finite = np.isfinite(t.params).all()
    assert ("non-finite parameters" in message) == (not finite)
    assert t.epochs_done == 2 and t.history["loss"] == twin.history["loss"]
    assert t.step == twin.step + step                  # the kernel stopped before step `step`
    assert t.lr == 1e300                               # as the epoch left it, too
    assert not np.array_equal(t.params, twin.params)


def test_large_buffers_start_at_their_own_offsets_in_a_page():
    """mmap starts every large array 16 bytes past a page boundary, so Adam's params, m, v
    and gradient slabs shared their L1 cache sets (an mnist epoch 1.3x slower): the engine
    places each at its own offset (layout.page_placed, free_offset)."""
    from fastbp.layout import LINE, PAGE, free_offset, page_placed
    a = page_placed((3, 5), np.float32, 192, zero=True)
    assert a.ctypes.data % PAGE == 192 and a.flags.c_contiguous and not a.any()
    assert free_offset([0, 1024, 2048], 1, 100) == 3072
    assert free_offset([0, 2048], 2, 1024) == 512    # rows at 512 and 1536: 512 from all

    X, y = make_data("cross_entropy", 784, 10, n=256)
    # two threads (two slab rows): with 16, the slab's rows fall where their length puts
    # them (only a buffer's start is chosen), 40 bytes apart at the closest for this network
    t = Trainer([784, 256, 10], optimizer="adam", batch_size=128, target="parallel", seed=0,
                n_threads=2)
    rows = t.check_data(X.astype(np.float32), y, None)
    runner = t.engine.epoch_runner(rows, np.arange(rows.n), np.zeros((2, 3)), t._hyper)
    update = [b.ctypes.data % PAGE for b in (t.params, t.engine.m, t.engine.v)]
    update += [row.ctypes.data % PAGE for row in runner.slabs.gslab]   # one thread's streams
    work = [row.ctypes.data % PAGE for row in runner.ws.work]         # a chunk's, with them

    def gap(a, b):
        return min((a - b) % PAGE, (b - a) % PAGE)
    assert min(gap(a, b) for i, a in enumerate(update) for b in update[i + 1:]) >= 4 * LINE
    assert min(gap(a, b) for a in work for b in update) >= 4 * LINE, (update, work)
