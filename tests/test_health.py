"""Training health: gradient diagnostics, vanishing/exploding warnings, divergence handling,
learning-rate schedules."""
import math
import warnings

import numpy as np
import pytest

from conftest import diverging_adam_run, make_data
import reference as ref
from fastbp import DivergenceError, Trainer, TrainingHealthWarning
from fastbp.schedules import make_schedule


def _reference_norms(t, X, y, acts, loss, batch_size, epochs, opt):
    """Per epoch, an array (steps, L + 1): each step's weight-gradient L2 norms and the global
    norm of the loss gradient (all weights and biases), taken at the parameters of that step
    by the float64 reference (rows in order), which then takes the optimizer's step; and the
    reference's parameters after those epochs (flat)."""
    sizes = t.layers
    Ws, bs = ref.unflatten(t.params, sizes)
    L = len(Ws)
    per_epoch = []
    for _ in range(epochs):
        steps = []
        for lo in range(0, X.shape[0], batch_size):
            sl = slice(lo, lo + batch_size)
            _, dWs, dbs = ref.loss_and_grad(Ws, bs, X[sl], y[sl], acts, loss)
            steps.append([np.linalg.norm(dW) for dW in dWs] +
                         [np.sqrt(sum(np.sum(g * g) for g in dWs + dbs))])
            opt.step(Ws + bs, dWs + dbs, [True] * L + [False] * L)
        per_epoch.append(np.array(steps))
    return per_epoch, ref.flatten(Ws, bs)


@pytest.mark.parametrize("batch_size,epochs,settings", [
    (30, 1, {}),                                     # full batch: one step at the initial params
    (30, 1, {"clip_norm": 1e-3}),                    # recorded before clipping, not clip_norm
    (8, 2, {}),                                      # mean and max over 4 steps (last partial)
    (8, 2, {"clip_norm": 0.05, "weight_decay": 0.1}),   # the loss gradient's norm, unclipped
])
def test_recorded_gradient_norms_are_the_reference_gradients_norms(batch_size, epochs, settings):
    X, y = make_data("cross_entropy", 6, 3, n=30)
    sizes, acts = [6, 8, 5, 3], ["tanh", "tanh"]
    t = Trainer(sizes, activation=acts, optimizer="adam", lr=0.05, batch_size=batch_size,
                seed=0, dtype="float64", **settings)
    opt = ref.Optimizer("adam", lr=0.05, weight_decay=settings.get("weight_decay", 0.0),
                        clip_norm=settings.get("clip_norm"))
    expected, params = _reference_norms(t, X, y, acts, "cross_entropy", batch_size, epochs, opt)
    if batch_size >= X.shape[0]:                     # and the same as Trainer.gradient's norm
        g = t.gradient(X, y)
        assert np.linalg.norm(g) == pytest.approx(expected[0][0, -1], rel=1e-12)
    h = t.fit(X, y, epochs=epochs, shuffle=False, progress=False)
    L = len(sizes) - 1
    assert [len(v) for v in h["layer_grad_norms"]] == [L] * epochs
    for key, reduce in (("", np.mean), ("_max", np.max)):
        np.testing.assert_allclose(h["grad_norm" + key], [reduce(e[:, L]) for e in expected],
                                   rtol=1e-10)
        np.testing.assert_allclose(h["layer_grad_norms" + key],
                                   [reduce(e[:, :L], axis=0) for e in expected], rtol=1e-10)
    if "clip_norm" in settings:                      # clipping was active in every step
        assert min(e[:, L].min() for e in expected) > 5 * settings["clip_norm"]
    np.testing.assert_allclose(t.params, params, rtol=1e-9, atol=1e-12)   # same trajectory
    assert t.health()["ok"] and t.health()["layer_grad_norms"] == h["layer_grad_norms"][-1]
    assert t.health()["grad_norm"] == h["grad_norm"][-1]


def test_deep_sigmoid_network_with_a_bad_init_warns_of_vanishing_gradients():
    X, y = make_data("cross_entropy", 16, 4, n=256)
    t = Trainer([16] + [32] * 10 + [4], activation="sigmoid", seed=0, lr=1e-3)
    for W in t.weights:              # a bad init: far too small weights
        W *= 0.05
    with pytest.warns(TrainingHealthWarning, match=r"vanishing gradient in layer 0.*init"):
        t.fit(X, y, epochs=1, progress=False)
    kinds = {(p["kind"], p["layer"]) for p in t.health()["problems"]}
    assert ("vanishing", 0) in kinds and not t.health()["ok"]
    assert all(kind == "vanishing" for kind, _ in kinds)      # no contradictory "exploding"
    with warnings.catch_warnings():                 # a healthy network: no warning
        warnings.simplefilter("error", TrainingHealthWarning)
        Trainer([16, 32, 32, 4], activation="relu", seed=0).fit(X, y, epochs=2, progress=False)


def _exploding_setup():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 8)) * 30.0               # unscaled inputs ...
    y = X @ rng.normal(size=(8, 1)) * 10.0
    return X, y


def test_high_learning_rate_explodes_then_diverges_and_restores_the_model():
    X, y = _exploding_setup()
    t = Trainer([8, 32, 32, 1], loss="mse", optimizer="sgd", lr=0.05, seed=0)  # ... a high lr
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DivergenceError, match="diverged at epoch 0.*clip_norm") as err:
            t.fit(X, y, epochs=20, progress=False)
    assert err.value.epoch == 0 and err.value.step >= 0
    t2 = Trainer([8, 32, 32, 1], loss="mse", optimizer="sgd", lr=0.05, seed=0)
    assert np.array_equal(t.params, t2.params) and t.step == 0 and t.history == {}
    assert np.all(np.isfinite(t.params))

    # with more epochs of history: the good epochs stay, the bad one is undone
    t3 = Trainer([8, 32, 32, 1], loss="mse", optimizer="sgd", lr=1e-5, seed=0)
    t3.fit(X, y, epochs=2, progress=False)
    good = (t3.params.copy(), t3.step, len(t3.history["loss"]))
    t3.lr = 0.05
    with pytest.warns(TrainingHealthWarning, match="diverged"):
        t3.fit(X, y, epochs=5, progress=False, on_divergence="warn")
    assert np.array_equal(t3.params, good[0]) and t3.step == good[1]
    assert len(t3.history["loss"]) == good[2]
    del caught


def test_rising_learning_rate_warns_of_exploding_gradients_then_diverges():
    """Without clipping: first the exploding-gradient warning, then DivergenceError with the
    last good epoch restored; with clip_norm the same run goes on."""
    X, y = _exploding_setup()
    ramp = ("exponential", {"gamma": 2.0})
    t = Trainer([8, 32, 32, 1], loss="mse", optimizer="sgd", lr=1e-6, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DivergenceError) as err:
            t.fit(X, y, epochs=30, progress=False, lr_schedule=ramp)
    messages = [str(w.message) for w in caught if w.category is TrainingHealthWarning]
    assert any("exploding gradients: the global gradient norm reached" in m for m in messages)
    first = int(messages[0].split(":")[0].split()[1])
    assert first < err.value.epoch                      # the warning came first
    assert len(t.history["loss"]) == err.value.epoch and np.all(np.isfinite(t.params))
    clipped = Trainer([8, 32, 32, 1], loss="mse", optimizer="sgd", lr=1e-6, seed=0,
                      clip_norm=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrainingHealthWarning)
        h = clipped.fit(X, y, epochs=30, progress=False, lr_schedule=ramp)
    assert len(h["loss"]) == 30 and np.all(np.isfinite(h["loss"]))


def test_the_same_run_trains_with_clip_norm():
    X, y = _exploding_setup()
    t = Trainer([8, 32, 32, 1], loss="mse", optimizer="sgd", lr=0.05, seed=0, clip_norm=1.0)
    h = t.fit(X, y, epochs=20, progress=False)
    assert np.isfinite(h["loss"][-1]) and h["loss"][-1] < h["loss"][0]


@pytest.mark.parametrize("spec,formula", [
    ("constant", lambda e: 0.1),
    (("step", 3, {"gamma": 0.5}), lambda e: 0.1 * 0.5 ** (e // 3)),
    (("exponential", {"gamma": 0.9}), lambda e: 0.1 * 0.9 ** e),
    (("cosine", {"t_max": 10, "eta_min": 0.01, "warmup": 2}),
     lambda e: 0.1 * (e + 1) / 2 if e < 2 else
     0.01 + 0.09 * (1 + math.cos(math.pi * min(e - 2, 8) / 8)) / 2),
    (lambda e: 0.1 / (1 + e), lambda e: 0.1 / (1 + e)),
])
def test_schedules_follow_their_formulas(spec, formula):
    s = make_schedule(spec, 0.1)
    for e in range(14):
        assert s.lr(e) == pytest.approx(formula(e), rel=1e-12)
    X, y = make_data("cross_entropy", 6, 3, n=32)
    t = Trainer([6, 5, 3], lr=0.1, seed=0, optimizer="sgd")
    h = t.fit(X, y, epochs=6, progress=False, lr_schedule=spec)
    np.testing.assert_allclose(h["lr"], [formula(e) for e in range(6)], rtol=1e-12)


def test_reduce_on_plateau():
    s = make_schedule(("plateau", {"factor": 0.5, "patience": 1, "monitor": "val_loss"}), 0.1)
    lrs = []
    for v in [1.0, 0.9, 0.95, 0.96, 0.97, 0.5, 0.6, 0.7]:
        lrs.append(s.lr(len(lrs)))
        s.observe({"val_loss": v})
    assert lrs == [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05]
    assert s.lr(8) == 0.025


@pytest.mark.parametrize("split", [3, 4, 5])
def test_plateau_resumes_across_fits(split, tmp_path):
    """Fits of `split` and 8 - split epochs, the second after saving and loading the model
    as from a checkpoint, follow the plateau schedule of one fit of 8: its best loss and
    patience come back from the history, and a reduction decided after the first fit's last
    epoch (split 3 and 7 here) is kept."""
    X, y = make_data("cross_entropy", 6, 3, n=32)
    spec = ("plateau", {"factor": 0.5, "patience": 1, "monitor": "loss", "min_delta": 0.1})
    one = Trainer([6, 5, 3], lr=0.1, seed=0, optimizer="sgd")
    h_one = one.fit(X, y, epochs=8, progress=False, lr_schedule=spec)
    assert h_one["lr"] == [0.1] * 3 + [0.05] * 4 + [0.025]      # reduced after epochs 2, 6
    two = Trainer([6, 5, 3], lr=0.1, seed=0, optimizer="sgd")
    two.fit(X, y, epochs=split, progress=False, lr_schedule=spec)
    two.save(tmp_path / "checkpoint.npz")
    two = Trainer.load(tmp_path / "checkpoint.npz")
    h_two = two.fit(X, y, epochs=8 - split, progress=False, lr_schedule=spec)
    assert h_two["lr"] == h_one["lr"]
    np.testing.assert_array_equal(two.params, one.params)


def test_plateau_on_a_metric_the_history_lacks_starts_afresh():
    """Epochs trained without validation data say nothing about val_loss: a plateau on
    val_loss starts from scratch (and from the current lr) instead of comparing against
    training losses."""
    X, y = make_data("cross_entropy", 6, 3, n=32)
    t = Trainer([6, 5, 3], lr=0.1, seed=0, optimizer="sgd")
    t.fit(X, y, epochs=3, progress=False)
    t.lr = 0.2
    spec = ("plateau", {"factor": 0.5, "patience": 0, "monitor": "val_loss"})
    h = t.fit(X, y, validation_data=(X, y), epochs=3, progress=False, lr_schedule=spec)
    assert h["lr"][3:] == [0.2, 0.2, 0.2]           # val_loss falls: no reduction


def test_plateau_on_an_accuracy_waits_while_it_rises():
    """before: every monitored value counted as lower-is-better, so a rising val_accuracy
    cut the lr after `patience` epochs; mode 'auto' is EarlyStopping's."""
    s = make_schedule(("plateau", {"factor": 0.5, "patience": 1, "monitor": "val_accuracy"}),
                      0.1)
    s.watch({"loss", "val_loss", "val_accuracy"})
    lrs = []
    for v in [0.35, 0.5, 0.7, 0.74, 0.76, 0.76, 0.75]:
        lrs.append(s.lr(len(lrs)))
        s.observe({"val_accuracy": v, "val_loss": 1.0})
    assert lrs == [0.1] * 7 and s.lr(7) == 0.05          # only the two epochs without gain
    down = make_schedule(("plateau", {"factor": 0.5, "patience": 0, "monitor": "val_accuracy",
                                      "mode": "min"}), 0.1)
    down.watch({"val_accuracy"})
    down.observe({"val_accuracy": 0.5})
    down.observe({"val_accuracy": 0.6})
    assert down.lr(2) == 0.05


def test_plateau_monitor_must_be_recorded_and_defaults_to_val_loss_else_loss():
    """before: an unrecorded or misspelt monitor silently followed the training loss."""
    X, y = make_data("cross_entropy", 6, 3, n=32)
    for monitor in ("val_loss", "bogus", "acc"):
        t = Trainer([6, 5, 3], lr=0.1, seed=0, optimizer="sgd")
        before = t.params.copy()
        with pytest.raises(ValueError, match=f"plateau monitors '{monitor}', which this fit "
                                             "does not record"):
            t.fit(X, y, epochs=2, progress=False,
                  lr_schedule=("plateau", {"monitor": monitor}))
        assert np.array_equal(t.params, before) and t.epochs_done == 0
    alone, val = make_schedule("plateau", 0.1), make_schedule("plateau", 0.1)
    alone.watch({"loss", "accuracy"})
    val.watch({"loss", "accuracy", "val_loss", "val_accuracy"})
    assert (alone.metric, val.metric) == ("loss", "val_loss")


@pytest.mark.parametrize("spec,exc,text", [
    (("plateau", {"patience": -1}), ValueError, "patience=-1"),
    (("plateau", {"factor": "0.5"}), TypeError, "factor='0.5' must be a real number"),
    (("plateau", {"mode": "up"}), ValueError, "mode='up'"),
    (("plateau", {"monitor": 3}), TypeError, "monitor=3"),
    (("exponential", {"gamma": "0.9"}), TypeError, "gamma='0.9'"),
    (("cosine", {"t_max": 5, "warmup": "1"}), TypeError, "warmup='1'")])
def test_schedule_parameters_of_the_wrong_type_are_refused(spec, exc, text):
    # before: each was accepted (strings converted, a negative patience used as is)
    with pytest.raises(exc, match=text):
        make_schedule(spec, 0.1)


@pytest.mark.parametrize("spec,exc", [("linear", ValueError), (("step", 0), ValueError),
                                      (("cosine", {"t_max": 5, "warmup": 5}), ValueError),
                                      (("step", {"size": 3}), TypeError)])
def test_bad_schedules_are_refused(spec, exc):
    with pytest.raises(exc, match="lr_schedule"):
        make_schedule(spec, 0.1)


def test_training_report_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from fastbp.plot import training_report
    X, y = make_data("cross_entropy", 6, 3, n=64)
    t = Trainer([6, 8, 8, 3], seed=0)
    t.fit(X, y, validation_data=(X, y), epochs=4, progress=False,
          lr_schedule=("exponential", {"gamma": 0.5}))
    path = training_report(t.history, tmp_path / "r.png")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(ValueError, match="no epochs"):
        training_report({}, tmp_path / "empty.png")
    # the Trainer itself (before: AttributeError 'Trainer' object has no attribute 'get')
    assert open(training_report(t, tmp_path / "t.png"), "rb").read()[:8] == data[:8]
    with pytest.raises(TypeError, match="takes a Trainer or its history"):
        training_report([1.0, 0.5], tmp_path / "list.png")


def test_cli_report_and_health_warnings(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from fastbp.cli import main
    out = tmp_path / "report.png"
    assert main(["train", "--epochs", "3", "--layers", "32,32,32,32,32,32,32,32",
                 "--activation", "sigmoid", "--optimizer", "sgd", "--lr", "0.1",
                 "--out", str(tmp_path / "m.npz"), "--report", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "fastbp: warning: epoch 0: vanishing gradient in layer 0" in captured.err
    assert out.exists() and "wrote training report" in captured.out


def test_a_blow_up_in_the_last_update_of_an_epoch_is_caught_and_undone():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 3)).astype(np.float32)
    y = rng.normal(size=16).astype(np.float32) * 100
    t = Trainer([3, 4, 1], loss="mse", optimizer="sgd", lr=1e38, batch_size=16, seed=0)
    before = t.params.copy()
    with pytest.raises(DivergenceError):
        t.fit(X, y, epochs=1, progress=False)
    assert np.array_equal(t.params, before) and np.all(np.isfinite(t.params))


def test_divergence_restores_the_learning_rate_and_reset_restores_the_constructors():
    X, y = _exploding_setup()
    t = Trainer([8, 32, 32, 1], loss="mse", optimizer="sgd", lr=1e-6, seed=0)
    with pytest.raises(DivergenceError) as err:
        t.fit(X, y, epochs=10, progress=False,
              lr_schedule=lambda e: 1e-6 if e < 2 else 1e30)
    assert err.value.epoch == 2 and t.lr == 1e-6
    t.lr = 0.5
    t.reset()
    assert t.lr == 1e-6


@pytest.mark.parametrize("on_divergence", ["raise", "warn"])
def test_divergence_restores_adam_moments_and_shuffling_state_of_the_last_good_epoch(
        on_divergence):
    """Adam, shuffled minibatches: a callback sets a huge lr after two good epochs, the third
    epoch diverges after at least one update (so Adam's m and v and the shuffling generator
    have moved). The roll-back must put back all of the state of the last good epoch: the
    model then equals a twin that trained the two good epochs only, and the next epoch, at a
    safe lr, gives both the same parameters bit for bit."""
    X, y, t, twin, blow_up_after_epoch_1 = diverging_adam_run()
    fit = lambda: t.fit(X, y, epochs=5, progress=False, callbacks=[blow_up_after_epoch_1],
                        on_divergence=on_divergence)
    if on_divergence == "raise":
        with pytest.raises(DivergenceError) as err:
            fit()
        where = (err.value.epoch, err.value.step)
    else:
        with pytest.warns(TrainingHealthWarning, match=r"diverged at epoch 2, step (\d+)") as w:
            fit()
        where = (2, int(next(str(x.message) for x in w if "diverged" in str(x.message))
                         .split("step ")[1].split()[0]))
    assert where[0] == 2 and where[1] >= 1            # updates of the bad epoch were made

    assert t.step == twin.step == 2 * 6 and t.epochs_done == 2
    np.testing.assert_array_equal(t.params, twin.params)
    np.testing.assert_array_equal(t.engine.m, twin.engine.m)      # Adam's first moments ...
    np.testing.assert_array_equal(t.engine.v, twin.engine.v)      # ... and second moments
    assert t._rng.bit_generator.state == twin._rng.bit_generator.state
    assert t.history["loss"] == twin.history["loss"]

    t.lr = twin.lr = 1e-3                             # one more epoch each, at a safe lr
    t.fit(X, y, epochs=1, progress=False)
    twin.fit(X, y, epochs=1, progress=False)
    np.testing.assert_array_equal(t.params, twin.params)
    np.testing.assert_array_equal(t.engine.m, twin.engine.m)
    np.testing.assert_array_equal(t.engine.v, twin.engine.v)
    assert t.history["loss"] == twin.history["loss"]


# ------------------------------------------------------------ issue 14: small traps, blow-ups

@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


def test_a_blow_up_without_nan_is_flagged_dead_layers_and_loss(digits):
    """Issue 14: this run ends with loss ~9e17, every ReLU dead and every layer's gradient
    norm exactly 0, and health() said ok with no warning."""
    X, y = digits
    t = Trainer([64, 32, 1], loss="mse", optimizer="sgd", lr=1.0, batch_size=32, epochs=5,
                seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = t.fit(X, 1e3 * y[:, None], progress=False)
    assert h["loss"][-1] > 1e17 and h["layer_grad_norms_max"][-1] == [0.0, 0.0]  # the run
    messages = [str(w.message) for w in caught if w.category is TrainingHealthWarning]
    assert messages[0].startswith("epoch 0: the loss blew up: 8.66e+17, over 1000 x its "
                                  "starting value")
    assert [m.split(":")[1] for m in messages[1:]] == [" dead layer 0", " dead layer 1"]
    assert all("epoch 1:" in m for m in messages[1:])       # each once, when it happened
    health = t.health()
    assert not health["ok"]
    assert {(p["kind"], p["layer"]) for p in health["problems"]} == {
        ("dead", 0), ("dead", 1), ("loss_blowup", None)}
    for p in health["problems"]:
        assert "smaller lr (now 1)" in p["message"] and "clip_norm" in p["message"]
        assert "standardised" in p["message"] and "targets" in p["message"]
    assert h["initial_loss"] == [pytest.approx(2.7e7, rel=0.5)]   # (1e3 y)^2, y ~ 0..9
    # the README quotes this run's starting value: it must follow the initialisation
    assert "starting value (3.11e+07)" in messages[0]


def test_initial_loss_is_the_first_batchs_loss_before_any_update(digits):
    """history['initial_loss'] (health's reference for a loss that blew up) is the first
    batch's mean loss at the initial parameters, weighted as the training loss is."""
    X, y = digits
    w = np.linspace(0.5, 2.0, X.shape[0])
    for weights in (None, w):
        t = Trainer([64, 16, 10], batch_size=40, seed=3, shuffle=False)
        before = Trainer([64, 16, 10], batch_size=40, seed=3, shuffle=False)
        expected = before.loss(X[:40], y[:40],
                               sample_weight=None if weights is None else weights[:40])
        h = t.fit(X, y, sample_weight=weights, epochs=2, progress=False)
        assert h["initial_loss"] == [pytest.approx(expected, rel=1e-5)]
        assert len(h["loss"]) == 2
        t.fit(X, y, sample_weight=weights, epochs=1, progress=False)
        assert h["initial_loss"] == [pytest.approx(expected, rel=1e-5)]   # kept once


def test_healthy_runs_stay_quiet(digits):
    """No false positives: the usual fits warn of nothing, with every loss and optimizer, a
    loss that rises a little, ReLU units that die one by one, and all-zero inputs."""
    X, y = digits
    Xs = (X - X.mean(axis=0)) / (X.std(axis=0) + 1e-9)
    ys = (y - y.mean()) / y.std()
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingHealthWarning)
        for kw in ({}, {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9},
                   {"optimizer": "rmsprop", "lr": 0.01}, {"dropout": 0.3},
                   {"activation": "tanh", "lr": 0.01}):
            t = Trainer([64, 32, 32, 10], seed=0, **kw)
            t.fit(X, y, epochs=8, progress=False)
            assert t.health()["ok"], (kw, t.health()["problems"])
        t = Trainer([64, 32, 1], loss="mse", optimizer="sgd", lr=0.01, seed=0)
        t.fit(Xs, ys, epochs=8, progress=False)
        assert t.health()["ok"]
        t = Trainer([64, 16, 10], seed=0)                       # all-zero inputs: degenerate
        t.fit(np.zeros((64, 64)), np.zeros(64, dtype=int), epochs=3, progress=False)
        assert t.health()["ok"]
    # a loss that rises tenfold is not a blow-up; 1000-fold is
    hist = {"loss": [1.0, 10.0], "initial_loss": [1.0], "layer_grad_norms": [[1.0], [1.0]]}
    from fastbp.health import diagnose
    assert diagnose(hist) == []
    hist["loss"].append(1001.0)
    hist["layer_grad_norms"].append([1.0])
    assert [p["kind"] for p in diagnose(hist)] == ["loss_blowup"]


def test_cosine_without_t_max_is_a_one_line_error_naming_it():
    """Issue 14: the TypeError showed an internal class name (_Cosine.__init__())."""
    X, y = make_data("cross_entropy", 6, 3, n=32)
    t = Trainer([6, 5, 3], seed=0)
    with pytest.raises(TypeError) as err:
        t.fit(X, y, epochs=2, progress=False, lr_schedule="cosine")
    message = str(err.value)
    assert "\n" not in message and "_Cosine" not in message and "__init__" not in message
    assert message.startswith("lr_schedule 'cosine' got no t_max: it takes (t_max, ")
    assert "('cosine', {'t_max': ...})" in message
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) 'tmax'"):
        make_schedule(("cosine", {"tmax": 5}), 0.1)
    assert t.step == 0 and t.history == {}


@pytest.mark.parametrize("spec,exc", [
    (("cosine", {"t_max": "5"}), TypeError), (("step", {"step_size": "2"}), TypeError),
    (("step", {"step_size": 2.0}), TypeError), (("exponential", {"gamma": "0.9"}), TypeError),
    (("cosine", {"t_max": 0}), ValueError), (("step", {"step_size": -1}), ValueError)])
def test_a_schedule_parameter_of_the_wrong_type_is_a_type_error(spec, exc):
    """A string for a count (t_max, step_size) was a ValueError, a string for a real number
    a TypeError; the README promises a TypeError for the wrong type."""
    name = next(iter(spec[1]))
    with pytest.raises(exc, match=f"lr_schedule: {name}="):
        make_schedule(spec, 0.1)


def test_a_cosine_schedule_past_its_t_max_warns_instead_of_training_at_lr_0():
    """Issue 14: on a Trainer with earlier epochs, cosine with t_max <= those epochs ran
    every epoch at lr 0, silently. Epochs still count over the whole history (a resumed
    run continues its schedule), so fit warns and says which t_max starts a new cycle."""
    X, y = make_data("cross_entropy", 6, 3, n=32)
    t = Trainer([6, 5, 3], seed=0)
    spec = ("cosine", {"t_max": 10})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t.fit(X, y, epochs=10, progress=False, lr_schedule=spec)   # within t_max: quiet
    with pytest.warns(UserWarning, match=r"every epoch of this fit runs at eta_min=0: "
                                         r"t_max=10 .* trained 10 epoch.*give t_max=15"):
        h = t.fit(X, y, epochs=5, progress=False, lr_schedule=spec)
    assert h["lr"][10:] == [0.0] * 5                              # what it warned of
    with pytest.warns(UserWarning, match=r"epochs 10 to 11 \(the last 2 of this fit\)"):
        Trainer([6, 5, 3], seed=0).fit(X, y, epochs=12, progress=False, lr_schedule=spec)
    with warnings.catch_warnings():                               # a new cycle: quiet
        warnings.simplefilter("error")
        h = t.fit(X, y, epochs=5, progress=False, lr_schedule=("cosine", {"t_max": 20}))
    assert h["lr"][-5] > 0.0


class _CountingList(list):
    """A history list that counts how many of its entries are read."""
    reads = 0

    def __getitem__(self, i):
        value = super().__getitem__(i)
        _CountingList.reads += len(value) if isinstance(i, slice) else 1
        return value

    def __iter__(self):
        for value in super().__iter__():
            _CountingList.reads += 1
            yield value


def test_the_check_after_each_epoch_reads_a_bounded_part_of_a_long_history():
    """fit diagnoses the history after every epoch: on a healthy run it must not read every
    earlier epoch each time (which made a long fit's Python time grow with the square of
    its epochs: 1.8 ms an epoch after 2,000 epochs of a 2-step fit)."""
    from fastbp.health import diagnose
    E, rng = 20_000, np.random.default_rng(0)
    norms = rng.uniform(0.5, 1.5, size=(E, 3))
    history = {"layer_grad_norms": _CountingList(norms.tolist()),
               "layer_grad_norms_max": _CountingList((2 * norms).tolist()),
               "grad_norm": _CountingList(norms.sum(axis=1).tolist()),
               "grad_norm_max": _CountingList((2 * norms.sum(axis=1)).tolist()),
               "loss": _CountingList(np.linspace(2.0, 0.1, E).tolist())}
    _CountingList.reads = 0
    assert diagnose(history) == []
    assert _CountingList.reads < 100
    # a layer whose gradient became exactly 0 after learning is still found dead, and a
    # norm grown over 10 x every earlier epoch's is still found growing
    history["layer_grad_norms"][-1] = [1.0, 0.0, 1.0]
    history["layer_grad_norms_max"][-1] = [2.0, 0.0, 2.0]
    history["grad_norm"][-1] = 100.0
    kinds = sorted((p["kind"], p["layer"]) for p in diagnose(history))
    assert kinds == [("dead", 1), ("growing", None)]


def test_a_layer_found_dead_is_not_looked_for_again_in_a_long_history():
    """After a layer is found dead, fit passes it back (dead_before): later epochs settle it
    by the last entry alone (before, each epoch read the whole history again: 9 ms an epoch
    after 20,000 epochs, a fit's Python time growing with the square of its epochs once a
    layer died). The results are the same as the full check's."""
    from fastbp.health import diagnose
    E, rng = 20_000, np.random.default_rng(1)
    norms = rng.uniform(0.5, 1.5, size=(E, 3))
    norms[10:, 1] = 0.0                                   # layer 1 died at epoch 10
    history = {"layer_grad_norms": _CountingList(norms.tolist()),
               "layer_grad_norms_max": _CountingList((2 * norms).tolist()),
               "grad_norm": _CountingList(norms.sum(axis=1).tolist()),
               "grad_norm_max": _CountingList((2 * norms.sum(axis=1)).tolist()),
               "loss": _CountingList(np.linspace(2.0, 0.1, E).tolist())}
    full = diagnose(history)
    assert [(p["kind"], p["layer"]) for p in full] == [("dead", 1)]
    _CountingList.reads = 0
    assert diagnose(history, dead_before={1}) == full
    assert _CountingList.reads < 100
    # a layer that came back is not dead; one never found dead is still checked in full
    history["layer_grad_norms_max"][-1] = [2.0, 1.0, 0.0]
    history["layer_grad_norms"][-1] = [1.0, 0.5, 0.0]
    assert [(p["kind"], p["layer"]) for p in diagnose(history, dead_before={1})] == \
        [(p["kind"], p["layer"]) for p in diagnose(history)] == [("dead", 2)]


def test_fit_warns_of_a_dead_layer_once_and_keeps_training():
    """Through Trainer.fit: each layer found dead is warned of once in the fit (here both:
    the hidden ReLU units are off for every row, so neither weight gradient moves)."""
    import warnings as w
    from fastbp import Trainer, TrainingHealthWarning
    t = Trainer([4, 3, 2], activation="relu", seed=0, batch_size=8)
    X = np.random.default_rng(0).normal(size=(16, 4))
    y = np.arange(16) % 2
    t.fit(X, y, epochs=1, progress=False)
    W0 = t.params[:12].reshape(4, 3)
    W0[:] = -10.0                                          # every ReLU unit off for every row
    t.params[12:15] = -100.0
    with w.catch_warnings(record=True) as caught:
        w.simplefilter("always")
        t.fit(X, y, epochs=4, progress=False)
    dead = [c for c in caught if issubclass(c.category, TrainingHealthWarning)
            and "dead layer" in str(c.message)]
    assert sorted(str(c.message).split("dead layer ")[1][0] for c in dead) == ["0", "1"]
    assert t.epochs_done == 5
    assert [p["layer"] for p in t.health()["problems"] if p["kind"] == "dead"] == [0, 1]
