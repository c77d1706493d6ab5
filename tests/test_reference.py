"""The reference itself, against central finite differences, and its optimizers against
torch.optim: live when PyTorch is installed, and always against trajectories recorded from
torch.optim (tests/fixtures/torch_optim_golden.npz, written by
tests/fixtures/make_torch_golden.py)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from conftest import ACTIVATIONS, LOSSES, make_data
import reference as ref


def _golden_module():
    path = Path(__file__).resolve().parent / "fixtures" / "make_torch_golden.py"
    spec = importlib.util.spec_from_file_location("make_torch_golden", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


golden = _golden_module()


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_reference_gradient_matches_finite_differences(act, loss):
    sizes = [5, 4, 3, 3]
    X, y = make_data(loss, sizes[0], sizes[-1], n=7, seed=1)
    rng = np.random.default_rng(2)
    Ws = [rng.normal(size=(a, b)) for a, b in zip(sizes[:-1], sizes[1:])]
    bs = [rng.normal(size=b) * 0.1 for b in sizes[1:]]
    acts = [act, act]
    _, dWs, dbs = ref.loss_and_grad(Ws, bs, X, y, acts, loss)
    analytic = ref.flatten(dWs, dbs)
    flat = ref.flatten(Ws, bs)
    h = 1e-6
    numeric = np.empty_like(flat)
    for i in range(flat.size):
        plus, minus = flat.copy(), flat.copy()
        plus[i] += h
        minus[i] -= h
        fp = ref.loss_and_grad(*ref.unflatten(plus, sizes), X, y, acts, loss)[0]
        fm = ref.loss_and_grad(*ref.unflatten(minus, sizes), X, y, acts, loss)[0]
        numeric[i] = (fp - fm) / (2 * h)
    # relu/leaky_relu kinks are measure-zero for random inputs; the tolerance covers the
    # O(h^2) error and the rounding of the loss (which scales with the gradient: poisson
    # with identity layers reaches exp(z) ~ 1e4)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5,
                               atol=1e-8 * max(1.0, np.abs(numeric).max()))


def test_reference_losses_match_their_definitions():
    Z = np.array([[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]])
    p = np.exp(Z) / np.exp(Z).sum(1, keepdims=True)
    ce, _ = ref.loss_and_delta(Z, np.array([2, 0]), "cross_entropy")
    assert ce == pytest.approx(-(np.log(p[0, 2]) + np.log(p[1, 0])) / 2, rel=1e-12)
    y = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    s = 1 / (1 + np.exp(-Z))
    bce, _ = ref.loss_and_delta(Z, y, "binary_cross_entropy")
    assert bce == pytest.approx(np.mean(-(y * np.log(s) + (1 - y) * np.log(1 - s))), rel=1e-12)
    mse, _ = ref.loss_and_delta(Z, y, "mse")
    assert mse == pytest.approx(np.mean((Z - y) ** 2), rel=1e-12)


OPTIMIZER_CASES = [
    ("sgd", dict(momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd", dict(momentum=0.5)),
    ("adam", dict(weight_decay=0.01)),
    ("adamw", dict(weight_decay=0.1)),
    ("rmsprop", dict(momentum=0.5, weight_decay=0.01)),
]


def test_golden_fixture_records_every_optimizer_case():
    """The fixture holds a trajectory for exactly the cases tested live, in the setting
    the live test uses (regenerate it with make_torch_golden.py when they change)."""
    meta, arrays = golden.load()
    assert meta["cases"] == [[name, kw] for name, kw in OPTIMIZER_CASES]
    assert (meta["lr"], meta["clip_norm"], meta["steps"]) == (0.05, 1.0, 5)
    W, b, grads = golden.start_and_gradients(meta["steps"])
    np.testing.assert_array_equal(arrays["gW"], [g for g, _ in grads])
    np.testing.assert_array_equal(arrays["gb"], [g for _, g in grads])
    for i in range(len(OPTIMIZER_CASES)):
        assert arrays[f"W_{i}"].shape == (meta["steps"] + 1, 4, 3)
        assert arrays[f"b_{i}"].shape == (meta["steps"] + 1, 3)
        np.testing.assert_array_equal(arrays[f"W_{i}"][0], W)
        np.testing.assert_array_equal(arrays[f"b_{i}"][0], b)
        # torch moved the parameters at every step (a trajectory, not a copy of the start)
        assert np.all(np.abs(np.diff(arrays[f"W_{i}"], axis=0)).max(axis=(1, 2)) > 0)
    assert golden.FIXTURE.stat().st_size < 32 * 1024


@pytest.mark.parametrize("i,name,kw", [(i, *case) for i, case in enumerate(OPTIMIZER_CASES)])
def test_reference_optimizers_match_recorded_pytorch(i, name, kw):
    """Our written-out optimizers against torch.optim's recorded trajectories, step by
    step, without PyTorch."""
    meta, arrays = golden.load()
    assert meta["cases"][i] == [name, kw]
    ours = ref.Optimizer(name, lr=meta["lr"], clip_norm=meta["clip_norm"], **kw)
    W, b = arrays[f"W_{i}"][0].copy(), arrays[f"b_{i}"][0].copy()
    for s, (gW, gb) in enumerate(zip(arrays["gW"], arrays["gb"]), start=1):
        ours.step([W, b], [gW.copy(), gb.copy()], [True, False])
        np.testing.assert_allclose(W, arrays[f"W_{i}"][s], rtol=1e-12, atol=1e-14,
                                   err_msg=f"{name} {kw}: W after step {s}")
        np.testing.assert_allclose(b, arrays[f"b_{i}"][s], rtol=1e-12, atol=1e-14,
                                   err_msg=f"{name} {kw}: b after step {s}")


@pytest.mark.parametrize("i,name,kw", [(i, *case) for i, case in enumerate(OPTIMIZER_CASES)])
def test_golden_fixture_matches_installed_pytorch(i, name, kw):
    """With PyTorch installed: the recorded trajectories are what torch.optim does now
    (a stale or hand-edited fixture fails here)."""
    torch = pytest.importorskip("torch")
    meta, arrays = golden.load()
    W, b, grads = golden.start_and_gradients(meta["steps"])
    Ws, bs = golden.torch_trajectory(torch, name, kw, W, b, grads, meta["lr"],
                                     meta["clip_norm"])
    np.testing.assert_allclose(Ws, arrays[f"W_{i}"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(bs, arrays[f"b_{i}"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,kw", OPTIMIZER_CASES)
def test_reference_optimizers_match_pytorch(name, kw):
    """Our written-out optimizers against torch.optim itself (skipped without torch, which
    is not a dependency; `pip install torch==2.13.0` enables it)."""
    torch = pytest.importorskip("torch")
    W, b, grads = golden.start_and_gradients()
    Ws, bs = golden.torch_trajectory(torch, name, kw, W, b, grads)
    ours = ref.Optimizer(name, lr=golden.LR, clip_norm=golden.CLIP, **kw)
    for s, (gW, gb) in enumerate(grads, start=1):
        ours.step([W, b], [gW.copy(), gb.copy()], [True, False])
        np.testing.assert_allclose(W, Ws[s], rtol=1e-12, atol=1e-14, err_msg=f"step {s}")
        np.testing.assert_allclose(b, bs[s], rtol=1e-12, atol=1e-14, err_msg=f"step {s}")
