"""The engine under the Trainer: a caller's initialisation and row order (what the
estimators need to follow scikit-learn), state in and out, and the one copy of the
element-wise maths, compiled for the CPU, against plain NumPy."""
import math

import numpy as np
import pytest

from conftest import cpu_activation, cpu_activation_grad, make_data
import reference as ref
from fastbp import Trainer
from fastbp.engine import Rows, row_order
from fastbp.kernels import scalar
from fastbp.kernels.codes import (BINARY_CROSS_ENTROPY, GELU, IDENTITY, LEAKY_RELU, MSE,
                                  POISSON, RELU, SIGMOID, TANH)

SIZES = [5, 6, 4, 3]


@pytest.mark.parametrize("target", ["cpu", "parallel"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_engine_trains_from_a_given_init_in_a_given_row_order(target, optimizer):
    """engine.init(params) and an epoch runner over the caller's row order give the
    reference's training on the rows in that order, step for step."""
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=21)
    t = Trainer(SIZES, activation="tanh", optimizer=optimizer, lr=0.05, batch_size=4,
                target=target, dtype="float64", seed=0,
                momentum=0.9 if optimizer == "sgd" else 0.0)
    engine = t.engine
    init = np.random.default_rng(7).normal(scale=0.3, size=engine.params.shape)
    engine.init(init)
    np.testing.assert_array_equal(engine.params, init)
    assert engine.step == 0 and not engine.m.any()
    orders = [np.random.default_rng(s).permutation(21) for s in (1, 2)]
    rows = t.check_data(X, y)
    order = row_order(rows.n)
    norms = np.empty((6, len(SIZES)))
    runner = engine.epoch_runner(rows, order, norms)
    losses = []
    with engine.compute(runner.plan):
        for o in orders:
            order[:] = o
            loss_sum, _, bad = runner.run(t._hyper, 0)
            assert bad == -1
            losses.append(loss_sum / rows.n)
    # a runner's slabs serve one update rule (the lazy one keeps its own data in them)
    with pytest.raises(ValueError, match="sparse_update it was made for"):
        runner.run(t._hyper._replace(lazy=1.0), 0)

    Ws, bs = ref.unflatten(init, SIZES)
    opt = ref.Optimizer(optimizer, lr=0.05, momentum=0.9 if optimizer == "sgd" else 0.0)
    expected = []
    for o in orders:           # the reference trains on rows in the order given
        expected += ref.train(Ws, bs, X[o], y[o], ["tanh", "tanh"], "cross_entropy", opt,
                              batch_size=4, epochs=1)
    np.testing.assert_allclose(losses, expected, rtol=1e-10)
    np.testing.assert_allclose(engine.params, ref.flatten(Ws, bs), rtol=1e-9, atol=1e-12)
    assert engine.step == 2 * 6


def test_state_round_trips():
    X, y = make_data("cross_entropy", SIZES[0], SIZES[-1], n=16)
    t = Trainer(SIZES, optimizer="adam", batch_size=4, dtype="float64", seed=0)
    t.fit(X, y, epochs=1, progress=False)
    engine = t.engine
    state = engine.state()
    assert state["step"] == 4 and state["m"].any() and state["v"].any()
    t.fit(X, y, epochs=1, progress=False)
    assert not np.array_equal(engine.params, state["params"])
    engine.set_state(**state)
    for key in ("params", "m", "v"):
        np.testing.assert_array_equal(getattr(engine, key), state[key])
    assert engine.step == 4
    again = t.get_state()
    assert again["rng_state"] == t._rng.bit_generator.state and again["lr"] == t.lr
    with pytest.raises(TypeError, match="unknown entries"):
        t.set_state(momentum=1)


def test_rows_weight_total():
    X = np.zeros((3, 2))
    assert Rows(X, np.zeros(3, np.int64), np.empty((0, 1)), np.empty(0)).weight_total == 3
    assert Rows(X, np.zeros(3, np.int64), np.empty((0, 1)),
                np.array([0.5, 1.0, 2.0])).weight_total == 3.5


# ----------------------------------------------------------- the shared element maths

Z = np.array([-30.0, -2.5, -0.3, -0.0, 0.0, 0.2, 1.7, 40.0])


def _numpy_activation(z, code):
    return {IDENTITY: z, RELU: max(z, 0.0), LEAKY_RELU: z if z >= 0 else 0.01 * z,
            TANH: math.tanh(z), SIGMOID: ref._sigmoid(np.array(z)),
            GELU: ref._gelu(np.array(z))}[code]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("code", [IDENTITY, RELU, LEAKY_RELU, TANH, SIGMOID, GELU])
def test_shared_activations_and_derivatives(code, dtype):
    k = scalar.constants(np.zeros(1, dtype))
    tol = 1e-12 if dtype is np.float64 else 1e-6
    for z in Z.astype(dtype):
        a = cpu_activation(z, code, k)
        assert a == pytest.approx(_numpy_activation(float(z), code), rel=tol, abs=tol)
        h = 1e-6 * max(1.0, abs(float(z)))
        if code in (RELU, LEAKY_RELU) and abs(float(z)) < h or dtype is np.float32:
            continue
        numeric = (_numpy_activation(float(z) + h, code) -
                   _numpy_activation(float(z) - h, code)) / (2 * h)
        for from_z in (False, True):
            g = cpu_activation_grad(dtype(2.0), z, a, code, from_z, k)
            assert g == pytest.approx(2 * numeric, rel=1e-5, abs=1e-7), (z, from_z)


@pytest.mark.parametrize("loss", [BINARY_CROSS_ENTROPY, POISSON, MSE])
def test_shared_loss_terms_and_scales(loss):
    k = scalar.constants(np.zeros(1))
    for z in Z[1:-1]:
        for t in (0.0, 1.0, 3.0):
            p, term, right = scalar.output_term(z, t, loss, k)
            if loss == BINARY_CROSS_ENTROPY:
                s = 1 / (1 + math.exp(-z))
                assert p == pytest.approx(s, rel=1e-12)
                assert term == pytest.approx(-(t * math.log(s) + (1 - t) * math.log(1 - s)),
                                             rel=1e-9)
                assert right == int((z >= 0) == (t >= 0.5))
            elif loss == POISSON:
                assert (p, term) == pytest.approx((math.exp(z), math.exp(z) - t * z))
            else:
                assert (p, term, right) == (z, (z - t) ** 2, 0)
    scale = scalar.output_scale(loss, 4.0, 0.5, k)
    assert scale == (0.25 if loss == MSE else 0.125)


def test_shared_softmax_row():
    k = scalar.constants(np.zeros(1))
    logits = np.array([[1.0, 3.0, -2.0, 3.0]])
    E = np.empty_like(logits)
    mx, arg, s = scalar.softmax_row(logits, 0, E, k)
    assert (mx, arg) == (3.0, 1)
    np.testing.assert_allclose(E[0] / s, np.exp(logits[0]) / np.exp(logits[0]).sum())
    assert mx + math.log(s) == pytest.approx(np.log(np.exp(logits[0]).sum()))


def test_shared_optimizer_rules_follow_pytorch():
    """One element of each rule against tests/reference.py's torch.optim transcription."""
    g = 0.3
    for name, kw in [("sgd", {}), ("sgd", {"momentum": 0.9}),
                     ("sgd", {"momentum": 0.9, "nesterov": True}), ("adam", {}),
                     ("rmsprop", {}), ("rmsprop", {"momentum": 0.5})]:
        opt = ref.Optimizer(name, lr=0.1, **kw)
        p_ref = [np.array([0.7])]
        p, m, v = 0.7, 0.0, 0.0
        for step in (1, 2, 3):
            opt.step(p_ref, [np.array([g * step])], [False])
            gs = g * step
            if name == "sgd":
                p, m = scalar.sgd_rule(p, gs, m, 0.1, kw.get("momentum", 0.0),
                                       kw.get("nesterov", False))
            elif name == "adam":
                p, m, v = scalar.adam_rule(p, gs, m, v, 0.1 / (1 - 0.9 ** step), 0.9, 0.999,
                                           1e-8, 1 / math.sqrt(1 - 0.999 ** step), 1.0)
            else:
                p, m, v = scalar.rmsprop_rule(p, gs, m, v, 0.1, 0.99, 1e-8,
                                              kw.get("momentum", 0.0), 1.0)
            assert p == pytest.approx(p_ref[0][0], rel=1e-12), (name, kw, step)
