"""Getting the model out: the ONNX graph (Trainer.to_onnx, `fastbp export`) run in
onnxruntime, and Trainer.compiled_forward called from a user's @njit code, against
predict / predict_proba."""
import json
import sys

import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

from fastbp import Trainer
from fastbp.cli import main

from conftest import ACTIVATIONS, LOSSES

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

CLASSIFICATION = ("cross_entropy", "binary_cross_entropy")
TOL = {"float32": dict(rtol=1e-5, atol=1e-5), "float64": dict(rtol=1e-12, atol=1e-12)}


def _trainer(activation, loss, dtype, layers=(3, 5, 4, 2), seed=0):
    """A tiny model with random weights and biases (init leaves the biases at 0)."""
    t = Trainer(list(layers), activation=activation, loss=loss, dtype=dtype, seed=seed)
    t.params = np.random.default_rng(seed).normal(size=t.n_params) * 0.7
    return t


def _expected(t, X):
    """The network's own outputs for its inputs X (no stored scaling applied)."""
    return (t.predict_proba(X, scaling=False) if t.config["loss"] in CLASSIFICATION
            else t.predict(X, scaling=False))


def _run_onnx(path, X):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "X"
    return out.name, session.run(None, {"X": X})[0]


def _X(dtype, n=9, n_in=3, seed=1):
    return (np.random.default_rng(seed).normal(size=(n, n_in)) * 2).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_onnx_graph_equals_predict(activation, loss, dtype, tmp_path):
    t = _trainer(activation, loss, dtype)
    path = t.to_onnx(tmp_path / "m.onnx")
    for n in (9, 1):                                   # the batch dimension is dynamic
        X = _X(dtype, n)
        name, out = _run_onnx(path, X)
        assert name == ("probabilities" if loss in CLASSIFICATION else "predictions")
        assert out.dtype == np.dtype(dtype) and out.shape == (n, 2)
        np.testing.assert_allclose(out, _expected(t, X), **TOL[dtype])


def test_onnx_mixed_activations_and_model_metadata(tmp_path):
    t = _trainer(ACTIVATIONS, "cross_entropy", "float32", layers=(3, 4, 4, 4, 4, 4, 4, 3))
    t.metadata = {"classes": ["a", "b", "c"]}
    t.to_onnx(str(tmp_path / "m.onnx"))
    X = _X("float32", 20)
    np.testing.assert_allclose(_run_onnx(tmp_path / "m.onnx", X)[1], t.predict_proba(X),
                               **TOL["float32"])
    model = onnx.load(str(tmp_path / "m.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    import fastbp
    assert props["fastbp_version"] == fastbp.__version__
    assert json.loads(props["classes"]) == ["a", "b", "c"]
    assert json.loads(props["layers"]) == [3, 4, 4, 4, 4, 4, 4, 3]
    assert model.producer_name == "fastbp"
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == 3


def test_onnx_includes_the_stored_scaling(tmp_path):
    """A model with `fastbp train`'s standardisation in its metadata: the graph takes raw
    features (and gives mse targets in their own units) unless scaling=False."""
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=3) * 10, rng.random(3) * 5 + 0.5
    y_mean, y_std = np.array([100.0, -3.0]), np.array([30.0, 0.5])
    X = (rng.normal(size=(9, 3)) * std + mean).astype("float32")
    Xs = (X - mean.astype("float32")) / std.astype("float32")
    for loss in ("cross_entropy", "mse"):
        t = _trainer("tanh", loss, "float32")
        t.metadata = {"scale": {"mean": mean.tolist(), "std": std.tolist()}}
        if loss == "mse":
            t.metadata["target_scale"] = {"mean": y_mean.tolist(), "std": y_std.tolist()}
        raw = _expected(t, Xs)
        if loss == "mse":
            raw = raw * y_std + y_mean
        t.to_onnx(tmp_path / "m.onnx")
        np.testing.assert_allclose(_run_onnx(tmp_path / "m.onnx", X)[1], raw, rtol=1e-5,
                                   atol=1e-4)
        np.testing.assert_allclose(t.compiled_forward()(X), raw, rtol=1e-5, atol=1e-4)
        t.to_onnx(tmp_path / "m.onnx", scaling=False)
        np.testing.assert_allclose(_run_onnx(tmp_path / "m.onnx", Xs)[1], _expected(t, Xs),
                                   **TOL["float32"])
        np.testing.assert_allclose(t.compiled_forward(scaling=False)(Xs), _expected(t, Xs),
                                   **TOL["float32"])


def test_estimator_shapes_two_class_and_squeeze(tmp_path):
    """The options fastbp.export offers the estimators: scikit-learn's binary
    predict_proba [1 - p, p] and a 1-D regression output."""
    from fastbp.export import to_onnx
    t = _trainer("relu", "binary_cross_entropy", "float32", layers=(3, 4, 1))
    X = _X("float32")
    to_onnx(t, tmp_path / "b.onnx", two_class=True)
    p = t.predict_proba(X)
    np.testing.assert_allclose(_run_onnx(tmp_path / "b.onnx", X)[1], np.hstack([1 - p, p]),
                               **TOL["float32"])
    t = _trainer("relu", "mse", "float64", layers=(3, 4, 1))
    to_onnx(t, tmp_path / "r.onnx", squeeze=True)
    out = _run_onnx(tmp_path / "r.onnx", _X("float64"))[1]
    np.testing.assert_allclose(out, t.predict(_X("float64"))[:, 0], **TOL["float64"])
    with pytest.raises(ValueError, match="two_class=True needs a 1-output"):
        to_onnx(t, tmp_path / "x.onnx", two_class=True)


# ----------------------------------------------------------------------- the CLI

def _cli(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr()


def test_cli_export_end_to_end(tmp_path, capsys):
    """`fastbp train` (standardised features; classes; mse targets standardised too) ->
    `fastbp export` -> onnxruntime on the raw features equals `fastbp predict`."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)) * [10.0, 1.0, 0.1] + [50.0, -5.0, 0.0]
    labels = np.where(X[:, 0] > 50, 7, 3)
    Xf = X.astype("float32")
    np.savez(tmp_path / "x.npz", X=Xf)
    for loss, y in (("cross_entropy", labels), ("mse", 100 + 30 * X[:, :2])):
        np.savez(tmp_path / "d.npz", X=X, y=y)
        model, out = tmp_path / f"{loss}.npz", tmp_path / f"{loss}.onnx"
        code, cap = _cli(["train", str(tmp_path / "d.npz"), "--loss", loss, "--epochs", "3",
                          "--layers", "6", "--out", str(model), "--no-progress"], capsys)
        assert code == 0, cap.err
        code, cap = _cli(["export", str(model), str(out)], capsys)
        assert code == 0, cap.err
        assert f"wrote {out}" in cap.err
        proba = ["--proba"] if loss == "cross_entropy" else []
        code, cap = _cli(["predict", str(model), str(tmp_path / "x.npz"), *proba], capsys)
        assert code == 0, cap.err
        lines = cap.out.split()
        if proba:                        # a header row names the classes
            assert lines[0] == "3,7"
            lines = lines[1:]
        served = np.array([line.split(",") for line in lines], dtype=float)
        name, got = _run_onnx(out, Xf)
        assert name == ("probabilities" if loss == "cross_entropy" else "predictions")
        np.testing.assert_allclose(got, served, rtol=1e-5, atol=1e-5 if proba else 1e-3)
        props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert json.loads(props["scaling_included"]) is True
        if loss == "cross_entropy":
            assert json.loads(props["classes"]) == [3, 7]


def test_cli_export_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _trainer("relu", "mse", "float32").save("m.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    for argv, code, message in [
            (["export", "m.npz", "m.txt"], 2, "OUT='m.txt' must end in .onnx"),
            (["export", "m.npz", "no/such/dir/m.onnx"], 1, "does not exist"),   # as --out
            (["export", "missing.npz", "m.onnx"], 1, "missing.npz"),
            (["export", "bad.npz", "m.onnx"], 1, "bad.npz")]:
        got, cap = _cli(argv, capsys)
        assert got == code, (argv, cap.err)
        assert cap.err.startswith("fastbp export: error: ") and cap.err.count("\n") == 1, cap.err
        assert message in cap.err and "Traceback" not in cap.err
        assert not (tmp_path / "m.onnx").exists()


# -------------------------------------------------------------- errors, no onnx

def test_to_onnx_refuses_bad_input_before_work(tmp_path, monkeypatch):
    t = _trainer("relu", "cross_entropy", "float32")
    (tmp_path / "d.onnx").mkdir()
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "onnx", None)             # the path is checked first
        with pytest.raises(ValueError, match=r"path='.*m\.txt' must end in \.onnx"):
            t.to_onnx(str(tmp_path / "m.txt"))
        with pytest.raises(ValueError, match="does not exist"):
            t.to_onnx(tmp_path / "nowhere" / "m.onnx")
        with pytest.raises(ValueError, match="is a directory"):
            t.to_onnx(tmp_path / "d.onnx")
        with pytest.raises(TypeError, match="path must be a file path"):
            t.to_onnx(3)
    t.weights[0][0, 0] = np.nan
    with pytest.raises(ValueError, match="params contain NaN"):
        t.to_onnx(tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="scaling must be True or False"):
        Trainer([2, 2]).to_onnx(tmp_path / "m.onnx", scaling="yes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.onnx"]   # nothing written


def test_missing_onnx_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)       # import onnx -> ImportError
    t = _trainer("relu", "cross_entropy", "float32")
    with pytest.raises(ImportError) as info:
        t.to_onnx(tmp_path / "m.onnx")
    assert 'pip install "fastbp[onnx]"' in str(info.value) and "\n" not in str(info.value)
    t.save(tmp_path / "m.npz")
    code, cap = _cli(["export", str(tmp_path / "m.npz"), str(tmp_path / "m.onnx")], capsys)
    assert code == 1
    assert cap.err == f"fastbp export: error: {info.value}\n"
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------- compiled_forward

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", LOSSES)
def test_compiled_forward_from_a_users_njit_loop(loss, dtype):
    """Every activation (one per hidden layer) and loss: the user's @njit loop calls
    forward one row at a time; the rows equal predict / predict_proba."""
    t = _trainer(ACTIVATIONS, loss, dtype, layers=(3, 4, 4, 4, 4, 4, 4, 2))
    forward = t.compiled_forward()

    @njit
    def row_by_row(X):                    # no cache: a plain user function
        out = np.empty((X.shape[0], 2), X.dtype)
        for i in range(X.shape[0]):
            row = forward(X[i:i + 1])
            for j in range(2):
                out[i, j] = row[0, j]
        return out

    X = _X(dtype, 12)
    expected = _expected(t, X)
    np.testing.assert_allclose(row_by_row(X), expected, **TOL[dtype])
    np.testing.assert_allclose(forward(X), expected, **TOL[dtype])     # and from Python


def test_compiled_forward_is_a_snapshot():
    """Later changes to the parameters change neither forward nor its specialisations
    compiled later (another layout of X)."""
    t = _trainer("gelu", "cross_entropy", "float32")
    forward = t.compiled_forward()
    X = _X("float32")
    expected = t.predict_proba(X)
    t.params = t.params * 2
    np.testing.assert_allclose(forward(X), expected, **TOL["float32"])
    X_strided = np.repeat(X, 2, axis=0)[::2]
    np.testing.assert_allclose(forward(X_strided), expected, **TOL["float32"])


def test_compiled_forward_as_a_surrogate_in_a_simulation():
    """The README's use: a regression surrogate inside a time-stepping loop."""
    t = _trainer("tanh", "mse", "float64", layers=(2, 8, 2))
    step = t.compiled_forward()

    @njit
    def simulate(x0, n_steps, dt):
        x = x0.copy()
        for _ in range(n_steps):
            x += dt * step(x)                  # x: (1, 2) state, the surrogate's rate
        return x

    x0 = np.array([[0.5, -0.2]])
    x = x0.copy()
    for _ in range(50):
        x += 0.01 * t.predict(x)
    np.testing.assert_allclose(simulate(x0, 50, 0.01), x, rtol=1e-12)


def test_compiled_forward_refuses_bad_X():
    forward = _trainer("relu", "mse", "float32").compiled_forward()
    with pytest.raises(TypingError, match=r"forward\(X\): X must be a 2-D array of float32"):
        forward(np.zeros((2, 3)))                       # float64
    with pytest.raises(TypingError, match=r"forward\(X\): X must be a 2-D array of float32"):
        forward(np.zeros(3, dtype=np.float32))          # 1-D
    with pytest.raises(ValueError, match=r"forward\(X\): X must have 3 columns"):
        forward(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="scaling must be True or False"):
        Trainer([2, 2]).compiled_forward(scaling=None)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel", "regression",
                                  "regression2", "poisson"])
def test_estimators_export_what_they_predict(kind, tmp_path):
    """MLPClassifier.to_onnx equals predict_proba (a binary classifier's two columns too),
    MLPRegressor.to_onnx equals predict (1-D for one output)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from fastbp import MLPClassifier, MLPRegressor
    X = _X("float32", n=40, n_in=4, seed=3)
    y = {"binary": X[:, 0] > 0, "multiclass": np.digitize(X[:, 0], [-1, 1]),
         "multilabel": np.stack([X[:, 0] > 0, X[:, 1] > 0], axis=1).astype(int),
         "regression": X[:, 0] * 3, "regression2": X[:, :2], "poisson": np.exp(X[:, 0])}[kind]
    est = (MLPRegressor(loss="poisson" if kind == "poisson" else "squared_error")
           if kind.startswith(("regression", "poisson")) else MLPClassifier())
    est.set_params(hidden_layer_sizes=(5,), max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    path = est.to_onnx(tmp_path / "m.onnx")
    _, got = _run_onnx(path, X)
    want = est.predict_proba(X) if hasattr(est, "predict_proba") else est.predict(X)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
