"""The command line on user files: the readers, the error lines and exit statuses, outputs
checked before training and written atomically, evaluate, --version, --proba's header and
--help's defaults. Everything runs `main([...])` in-process on tiny files (one compiled
float32/cpu kernel set serves them all)."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fastbp import Trainer
from fastbp.cli import build_parser, main


def run(argv, capsys):
    """-> (exit status, stdout, stderr); SystemExit (argparse) counts as a status."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    if code:
        assert len(err.strip().splitlines()) == 1, err     # one line, naming what is wrong
    return code, out, err


def classes_frame(n=120, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    return pd.DataFrame({"f0": X[:, 0], "f1": X[:, 1], "f2": X[:, 2],
                         "kind": np.where(X[:, 0] + X[:, 1] > 0, "big", "small")})


def regression_frame(n=300, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = 1000 + 200 * (X @ np.array([1.0, -0.5, 0.25])) + rng.normal(size=n)
    return pd.DataFrame({"p": X[:, 0], "q": X[:, 1], "r": X[:, 2], "price": y})


QUICK = ["--epochs", "1", "--no-progress"]


# ---------------------------------------------------------------- what was wrong before

@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy"])
def test_string_labels_with_a_numeric_loss_are_a_clear_data_error(loss, tmp_path, capsys):
    # before: ValueError "not enough values to unpack" from inside the error handler
    classes_frame().to_csv(tmp_path / "wine.csv", index=False)
    code, _, err = run(["train", tmp_path / "wine.csv", "--label", "kind", "--loss", loss,
                        *QUICK, "--out", tmp_path / "m.npz"], capsys)
    assert code == 1
    assert "'kind' holds text" in err and f"--loss {loss} needs numeric" in err
    assert "--loss cross_entropy" in err
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("shape", ["1-D", "one column"])
def test_npz_test_arrays_take_the_shapes_of_y(shape, tmp_path, capsys):
    # before: a 1-D y_test was refused ("must be a 2-D table"), and labels as one column,
    # (n, 1), gave "cross_entropy takes one label column; got 1"
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    labels = np.where(X[:, 0] > 0, 7, 3)
    target = X @ np.array([1.0, -2.0, 0.5, 0.0])
    two_d = (lambda a: a[:, None]) if shape == "one column" else (lambda a: a)
    np.savez(tmp_path / "c.npz", X=X[:150], y=two_d(labels[:150]), X_test=X[150:],
             y_test=two_d(labels[150:]))
    np.savez(tmp_path / "r.npz", X=X[:150], y=two_d(target[:150]), X_test=X[150:],
             y_test=two_d(target[150:]))
    code, out, err = run(["train", tmp_path / "c.npz", *QUICK, "--out", tmp_path / "c_m.npz"],
                         capsys)
    assert code == 0, err
    assert "150 training samples, 50 test samples" in out and "test accuracy" in out
    assert list(Trainer.load(tmp_path / "c_m.npz").metadata["classes"]) == [3, 7]
    code, out, err = run(["train", tmp_path / "r.npz", "--loss", "mse", *QUICK,
                          "--out", tmp_path / "r_m.npz"], capsys)
    assert code == 0, err
    assert "50 test samples" in out and "test loss" in out


def test_header_only_file_says_it_has_no_data_rows(tmp_path, capsys):
    (tmp_path / "h.csv").write_text("a,b,label\n")           # before: "row 1 differs"
    code, _, err = run(["train", tmp_path / "h.csv"], capsys)
    assert code == 1 and "has a header row but no data rows" in err


def test_error_columns_count_file_columns_and_name_them(tmp_path, capsys):
    # the label is the first column: before, 'zz' was reported in column 2 (of the features)
    (tmp_path / "t.csv").write_text("kind,f1,f2\na,1.0,2.0\nb,2.0,zz\n")
    code, _, err = run(["train", tmp_path / "t.csv", "--label", "kind"], capsys)
    assert code == 1
    assert "column 3 ('f2')" in err and "'zz' in data row 2" in err


def test_non_numeric_feature_column_is_named(tmp_path, capsys):
    df = classes_frame()
    df.insert(1, "colour", "red")
    df.to_csv(tmp_path / "c.csv", index=False)
    code, _, err = run(["train", tmp_path / "c.csv", "--label", "kind"], capsys)
    assert code == 1
    assert "feature column 2 ('colour') is not numeric" in err and "'red'" in err


def test_continuous_label_with_a_classification_loss_is_refused(tmp_path, capsys):
    # before: a 300-class problem that trained and scored 0.0000
    regression_frame().to_csv(tmp_path / "r.csv", index=False)
    code, out, err = run(["train", tmp_path / "r.csv", *QUICK, "--out", tmp_path / "m.npz"],
                         capsys)
    assert code == 1 and "looks continuous" in err and "--loss mse" in err
    assert "training" not in out and not (tmp_path / "m.npz").exists()


def test_whole_number_classes_are_not_taken_for_continuous(tmp_path, capsys):
    df = classes_frame(200)
    df["kind"] = np.arange(200) % 25                      # 25 classes, 8 rows each
    df.to_csv(tmp_path / "k.csv", index=False)
    code, _, err = run(["train", tmp_path / "k.csv", *QUICK, "--test-size", "0",
                        "--out", tmp_path / "m.npz"], capsys)
    assert code == 0, err
    assert Trainer.load(tmp_path / "m.npz").layers[-1] == 25


@pytest.mark.parametrize("cell", ["", "NaN", "NA"])
def test_missing_cells_name_row_and_column(cell, tmp_path, capsys):
    # before: the NaN reached the Trainer, whose error named neither
    (tmp_path / "n.csv").write_text(f"a,b,label\n1,2,0\n3,{cell},1\n5,6,0\n7,8,1\n")
    code, _, err = run(["train", tmp_path / "n.csv"], capsys)
    assert code == 1
    assert "missing value" in err and "data row 2, column 2 ('b')" in err


def test_unwritable_out_fails_before_training(tmp_path, capsys):
    # before: training ran, then tempfile.mkstemp raised and the model was lost
    classes_frame().to_csv(tmp_path / "d.csv", index=False)
    for out in [tmp_path / "no" / "such" / "dir" / "m.npz", tmp_path]:
        code, stdout, err = run(["train", tmp_path / "d.csv", *QUICK, "--out", out], capsys)
        assert code == 1 and "--out" in err and str(out) in err
        assert "training" not in stdout


def test_report_needs_matplotlib_before_training(tmp_path, capsys, monkeypatch):
    classes_frame().to_csv(tmp_path / "d.csv", index=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # import matplotlib fails
    code, stdout, err = run(["train", tmp_path / "d.csv", *QUICK, "--out", tmp_path / "m.npz",
                             "--report", tmp_path / "r.png"], capsys)
    assert code == 1 and 'pip install "fastbp[plot]"' in err
    assert "training" not in stdout and not (tmp_path / "m.npz").exists()


def test_report_format_and_place_are_checked_before_training(tmp_path, capsys):
    classes_frame().to_csv(tmp_path / "d.csv", index=False)
    code, stdout, err = run(["train", tmp_path / "d.csv", *QUICK, "--report",
                             tmp_path / "r.xyz"], capsys)
    assert code == 2 and "unknown figure format 'xyz'" in err and "training" not in stdout
    code, stdout, err = run(["train", tmp_path / "d.csv", *QUICK, "--report",
                             tmp_path / "nodir" / "r.png"], capsys)
    assert code == 1 and "--report" in err and "training" not in stdout


def test_version(capsys):
    from fastbp import __version__
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.strip() == f"fastbp {__version__}"


def test_layers_empty_is_a_usage_error(capsys):
    for bad in ["", ",", "64,,64", "64,"]:
        code, _, err = run(["train", "--layers", bad], capsys)
        assert code == 2 and "--layers" in err


def test_help_shows_each_default_once(capsys):
    for command in ["train", "predict", "evaluate", "warmup"]:
        code, out, _ = run([command, "--help"], capsys)
        assert code == 0
        text = " ".join(out.split())
        sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            if action.default is None or action.default is False:
                continue
            shown = action.default if not isinstance(action.default, list) else \
                " ".join(action.default)
            assert text.count(f"(default: {shown})") >= 1, (command, action.dest)
        entries = out.split("\n  -")[1:]
        for entry in entries:
            assert " ".join(entry.split()).lower().count("default") <= 1, entry
    _, out, _ = run(["train", "--help"], capsys)
    text = " ".join(out.split())
    for default in ["(default: 64)", "(default: relu)", "(default: adam)", "(default: 0.001)",
                    "(default: 32)", "(default: 40)", "(default: 0)", "(default: cpu)"]:
        assert text.count(default) >= 1, default


@pytest.mark.parametrize("argv,code,message", [
    (["train", "missing.csv"], 1, "no data file at missing.csv"),
    (["train", "data.xls"], 1, "unknown data format '.xls'"),
    (["train", "--layers", "0"], 2, "hidden size"),
    (["train", "--lr", "-1"], 2, "lr=-1.0 is not allowed"),
    (["train", "--epochs", "0"], 2, "--epochs"),
    (["train", "--test-size", "1"], 2, "--test-size"),
    (["train", "--loss", "hinge"], 2, "--loss"),
    (["train", "--bogus"], 2, "--bogus"),
    (["frobnicate"], 2, "frobnicate"),
    (["predict", "nothing.npz", "x.npz"], 1, "no model file"),
    (["evaluate", "nothing.npz", "x.npz"], 1, "no model file"),
])
def test_exit_status_2_for_usage_1_for_files(argv, code, message, capsys, tmp_path,
                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    got, _, err = run(argv, capsys)
    assert got == code and message in err


# ---------------------------------------------------------------- readers

def test_every_reader_gives_the_same_table(tmp_path, capsys):
    df = regression_frame(80)
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_csv(tmp_path / "d.tsv", sep="\t", index=False)
    df.to_csv(tmp_path / "d.csv.gz", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    df.to_feather(tmp_path / "d.feather")
    np.save(tmp_path / "d.npy", df.to_numpy())
    np.savez(tmp_path / "d.npz", X=df.to_numpy()[:, :3], y=df.to_numpy()[:, 3])
    params = {}
    for name in ["d.csv", "d.tsv", "d.csv.gz", "d.parquet", "d.feather", "d.npy", "d.npz"]:
        out = tmp_path / f"{name}.model.npz"
        code, _, err = run(["train", tmp_path / name, "--loss", "mse", *QUICK, "--out", out],
                           capsys)
        assert code == 0, (name, err)
        params[name] = Trainer.load(out).params
    for name, p in params.items():
        np.testing.assert_allclose(p, params["d.csv"], rtol=1e-5, atol=1e-6, err_msg=name)


def test_missing_pyarrow_is_one_line_with_the_pip_command(tmp_path):
    df = classes_frame()
    df.to_parquet(tmp_path / "d.parquet")
    df.to_feather(tmp_path / "d.feather")
    df.to_csv(tmp_path / "d.csv", index=False)
    # a process where pyarrow cannot be imported (pandas then reads CSV with its C parser)
    script = ("import sys\n"
              "class NoPyarrow:\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name.split('.')[0] == 'pyarrow':\n"
              "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
              "sys.meta_path.insert(0, NoPyarrow())\n"
              "from fastbp.cli import main\n"
              "for name in sys.argv[1:]:\n"
              "    print('status', main(['train', name, '--epochs', '1', '--no-progress',\n"
              "                          '--out', name + '.model.npz']), flush=True)\n")
    run_ = subprocess.run([sys.executable, "-c", script, str(tmp_path / "d.parquet"),
                           str(tmp_path / "d.feather"), str(tmp_path / "d.csv")],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    statuses = [line.split()[1] for line in run_.stdout.splitlines()
                if line.startswith("status")]
    assert statuses == ["1", "1", "0"], run_.stdout + run_.stderr
    errors = run_.stderr.strip().splitlines()
    assert len(errors) == 2 and "Traceback" not in run_.stderr
    for line, ext in zip(errors, [".parquet", ".feather"]):
        assert f"reading {ext} files needs pyarrow: pip install \"fastbp[parquet]\"" in line


def test_csv_without_header_and_label_by_position(tmp_path, capsys):
    df = classes_frame()
    df[["kind", "f0", "f1", "f2"]].to_csv(tmp_path / "d.csv", index=False, header=False)
    model = tmp_path / "m.npz"
    code, _, err = run(["train", tmp_path / "d.csv", "--label", "0", "--lr", "0.01",
                        "--epochs", "20", "--no-progress", "--out", model], capsys)
    assert code == 0, err
    assert Trainer.load(model).layers[0] == 3
    # predict takes the same file: one column more than features, the label's is skipped
    code, out, err = run(["predict", model, tmp_path / "d.csv"], capsys)
    assert code == 0, err
    assert np.mean(np.array(out.split()) == df["kind"].to_numpy()) > 0.8


# ---------------------------------------------------------------- predict and evaluate

def test_predict_proba_writes_a_header_naming_the_classes(tmp_path, capsys):
    df = classes_frame()
    df.to_csv(tmp_path / "d.csv", index=False)
    model = tmp_path / "m.npz"
    assert run(["train", tmp_path / "d.csv", "--epochs", "20", "--no-progress", "--out",
                model], capsys)[0] == 0
    code, _, err = run(["predict", model, tmp_path / "d.csv", "--proba", "--out",
                        tmp_path / "p.csv"], capsys)
    assert code == 0, err
    proba = pd.read_csv(tmp_path / "p.csv")
    assert list(proba.columns) == ["big", "small"] and len(proba) == len(df)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    code, _, err = run(["evaluate", model, tmp_path / "d.csv"], capsys)
    assert code == 0, err


def test_proba_of_a_regression_model_is_a_usage_error(tmp_path, capsys):
    regression_frame(60).to_csv(tmp_path / "r.csv", index=False)
    model = tmp_path / "m.npz"
    assert run(["train", tmp_path / "r.csv", "--loss", "mse", *QUICK, "--out", model],
               capsys)[0] == 0
    code, _, err = run(["predict", model, tmp_path / "r.csv", "--proba", "--out",
                        tmp_path / "p.csv"], capsys)
    assert code == 2 and "regression model" in err and not (tmp_path / "p.csv").exists()


def test_evaluate_classifier_accuracy(tmp_path, capsys):
    train, test = classes_frame(300, seed=0), classes_frame(100, seed=1)
    train.to_csv(tmp_path / "train.csv", index=False)
    test[["kind", "f2", "f0", "f1"]].to_parquet(tmp_path / "test.parquet")  # other order
    model = tmp_path / "m.npz"
    assert run(["train", tmp_path / "train.csv", "--epochs", "30", "--no-progress",
                "--out", model], capsys)[0] == 0
    code, out, err = run(["evaluate", model, tmp_path / "test.parquet"], capsys)
    assert code == 0, err
    acc = float(out.split("accuracy:")[1].split()[0])
    t = Trainer.load(model)
    raw = test[["f0", "f1", "f2"]].to_numpy()
    expected = np.mean(np.array(t.metadata["classes"])[t.predict(raw)] == test["kind"])
    assert acc == pytest.approx(expected, abs=1e-4) and acc > 0.9
    scale = t.metadata["scale"]             # the network's own inputs: scaling=False
    X = (raw - scale["mean"]) / np.array(scale["std"])
    np.testing.assert_array_equal(t.predict(X, scaling=False), t.predict(raw))
    _, codes = np.unique(test["kind"], return_inverse=True)   # classes are sorted
    assert t.evaluate(raw, codes)["accuracy"] == pytest.approx(acc, abs=1e-4)


def test_evaluate_regression_in_the_targets_units(tmp_path, capsys):
    df = regression_frame(400)
    df.iloc[:300].to_csv(tmp_path / "train.csv", index=False)
    df.iloc[300:].to_csv(tmp_path / "test.csv", index=False)
    model = tmp_path / "m.npz"
    assert run(["train", tmp_path / "train.csv", "--loss", "mse", "--epochs", "60",
                "--no-progress", "--out", model], capsys)[0] == 0
    code, out, err = run(["evaluate", model, tmp_path / "test.csv"], capsys)
    assert code == 0, err
    r2 = float(out.split("R2:")[1].split()[0])
    rmse = float(out.split("RMSE:")[1].split()[0])
    code, pred, _ = run(["predict", model, tmp_path / "test.csv"], capsys)
    pred = np.array(pred.split(), dtype=float)
    y = df["price"].to_numpy()[300:]
    assert rmse == pytest.approx(np.sqrt(np.mean((pred - y) ** 2)), rel=1e-4)
    assert r2 == pytest.approx(1 - np.sum((pred - y) ** 2) / np.sum((y - y.mean()) ** 2),
                               abs=1e-4)
    assert r2 > 0.9 and 1 < rmse < 0.3 * y.std()               # units of price, not std units
    # a feature named as the label: before, a meaningless R2 (-8e11) and exit status 0
    for label in ("q", "1"):
        code, out, err = run(["evaluate", model, tmp_path / "test.csv", "--label", label],
                             capsys)
        assert code == 2 and "column 'q' is one of the model's feature columns" in err, err


def test_a_saved_model_predicts_in_python_as_fastbp_predict(tmp_path, capsys):
    """`fastbp train` stores its standardisation with the model: Trainer.load(...).predict
    and predict_proba take the raw features and give mse targets in their own units, as
    `fastbp predict`, the ONNX graph and compiled_forward do (they took the network's
    standardised inputs, so a model trained on the command line gave other numbers in
    Python)."""
    df = classes_frame(200)
    df["f1"] = df["f1"] * 50 + 300                      # far from standardised
    df.to_csv(tmp_path / "d.csv", index=False)
    model = tmp_path / "m.npz"
    assert run(["train", tmp_path / "d.csv", "--epochs", "30", "--no-progress", "--out",
                model], capsys)[0] == 0
    assert run(["predict", model, tmp_path / "d.csv", "--proba", "--out",
                tmp_path / "p.csv"], capsys)[0] == 0
    t, raw = Trainer.load(model), df[["f0", "f1", "f2"]].to_numpy()
    cli = pd.read_csv(tmp_path / "p.csv").to_numpy()
    np.testing.assert_allclose(t.predict_proba(raw), cli, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t.compiled_forward()(raw.astype(t.dtype)), cli, rtol=1e-5,
                               atol=1e-6)
    assert np.mean(np.array(t.metadata["classes"])[t.predict(raw)] == df["kind"]) > 0.9

    regression_frame(300).to_csv(tmp_path / "r.csv", index=False)
    assert run(["train", tmp_path / "r.csv", "--loss", "mse", "--epochs", "5",
                "--no-progress", "--out", model], capsys)[0] == 0
    code, pred, _ = run(["predict", model, tmp_path / "r.csv"], capsys)
    t, raw = Trainer.load(model), regression_frame(300)[["p", "q", "r"]].to_numpy()
    np.testing.assert_allclose(t.predict(raw).ravel(), np.array(pred.split(), dtype=float),
                               rtol=1e-5)


def test_the_main_jobs_model_takes_raw_digits_in_python(tmp_path, capsys):
    """The README's main job (digits, pixels 0..16 divided by 16 in training): loaded in
    Python, its model takes the pixels as they come."""
    from sklearn.datasets import load_digits
    model = tmp_path / "m.npz"
    assert run(["train", "--epochs", "3", "--no-progress", "--out", model], capsys)[0] == 0
    t, (X, y) = Trainer.load(model), load_digits(return_X_y=True)
    np.testing.assert_array_equal(t.predict(X), t.predict(X / 16.0, scaling=False))
    assert np.mean(t.predict(X) == y) > 0.8


def test_evaluate_refuses_unknown_labels(tmp_path, capsys):
    df = classes_frame()
    df.to_csv(tmp_path / "d.csv", index=False)
    model = tmp_path / "m.npz"
    assert run(["train", tmp_path / "d.csv", *QUICK, "--out", model], capsys)[0] == 0
    df.loc[5, "kind"] = "medium"
    df.to_csv(tmp_path / "e.csv", index=False)
    code, _, err = run(["evaluate", model, tmp_path / "e.csv"], capsys)
    assert code == 1 and "'medium' in data row 6" in err


# ---------------------------------------------------------------- never lose a model

def test_predict_out_is_atomic(tmp_path, capsys, monkeypatch):
    classes_frame().to_csv(tmp_path / "d.csv", index=False)
    model = tmp_path / "m.npz"
    assert run(["train", tmp_path / "d.csv", *QUICK, "--out", model], capsys)[0] == 0
    (tmp_path / "p.csv").write_text("old\n")
    import fastbp.cli as cli

    def broken(path, text):
        cli.atomic_write(path, lambda tmp: (open(tmp, "w").write(text[:10]), 1 / 0))
    monkeypatch.setattr(cli, "_write_text", broken)
    with pytest.raises(ZeroDivisionError):
        monkeypatch.setenv("FASTBP_TRACEBACK", "1")
        main(["predict", str(model), str(tmp_path / "d.csv"), "--out", str(tmp_path / "p.csv")])
    assert (tmp_path / "p.csv").read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["d.csv", "m.npz", "p.csv"]


def test_a_model_that_cannot_be_saved_is_rescued(tmp_path, capsys, monkeypatch):
    classes_frame().to_csv(tmp_path / "d.csv", index=False)
    out = tmp_path / "m.npz"
    save = Trainer.save

    def flaky(self, path, **kw):                         # the disk fills during training
        if os.fspath(path) == str(out):
            raise OSError(28, "No space left on device")
        return save(self, path, **kw)
    monkeypatch.setattr(Trainer, "save", flaky)
    code, _, err = run(["train", tmp_path / "d.csv", *QUICK, "--out", out], capsys)
    assert code == 1 and "saved to" in err
    rescued = err.split("saved to ")[1].split()[0]
    try:
        assert Trainer.load(rescued).layers == [3, 64, 2]
    finally:
        os.unlink(rescued)


def test_a_diverged_run_keeps_its_last_good_epoch(tmp_path, capsys, monkeypatch):
    from fastbp.health import DivergenceError
    classes_frame().to_csv(tmp_path / "d.csv", index=False)
    fit = Trainer.fit

    def diverging(self, X, y, **kw):                  # one good epoch, then NaN
        fit(self, X, y, **{**kw, "epochs": 1})
        raise DivergenceError("loss is nan at epoch 1, step 0", 1, 0)
    monkeypatch.setattr(Trainer, "fit", diverging)
    out = tmp_path / "m.npz"
    code, _, err = run(["train", tmp_path / "d.csv", "--out", out, "--no-progress"], capsys)
    assert code == 1 and "diverged" in err and "last good epoch (1)" in err
    assert Trainer.load(out).epochs_done == 1


@pytest.mark.parametrize("finite", [True, False])
def test_no_restore_on_divergence_is_passed_to_fit_and_named_in_the_error(
        tmp_path, capsys, monkeypatch, finite):
    """--no-restore-on-divergence: fit keeps no roll-back copy; after a divergence the model
    as the epoch left it is saved when its parameters are finite, and never when not."""
    from fastbp.health import DivergenceError
    classes_frame().to_csv(tmp_path / "d.csv", index=False)
    fit, seen = Trainer.fit, []

    def diverging(self, X, y, **kw):
        seen.append(kw["restore_on_divergence"])
        fit(self, X, y, **{**kw, "epochs": 1})
        if not finite:
            self.params[0] = np.nan
        raise DivergenceError("loss is nan at epoch 1, step 3", 1, 3, restored=False)
    monkeypatch.setattr(Trainer, "fit", diverging)
    out = tmp_path / "m.npz"
    code, _, err = run(["train", tmp_path / "d.csv", "--out", out, "--no-progress",
                        "--no-restore-on-divergence"], capsys)
    assert seen == [False] and code == 1 and len(err.strip().splitlines()) == 1
    assert "--no-restore-on-divergence" in err
    if finite:
        assert "as the diverging epoch left it" in err and Trainer.load(out).epochs_done == 1
    else:
        assert "no model was saved" in err and not out.exists()
    # the default keeps the roll-back
    seen.clear()
    monkeypatch.setattr(Trainer, "fit", lambda self, X, y, **kw: seen.append(
        kw["restore_on_divergence"]) or fit(self, X, y, **kw))
    assert run(["train", tmp_path / "d.csv", "--out", out, *QUICK], capsys)[0] == 0
    assert seen == [True]


def test_report_is_written_whole(tmp_path, capsys):
    classes_frame().to_csv(tmp_path / "d.csv", index=False)
    code, out, err = run(["train", tmp_path / "d.csv", "--epochs", "2", "--no-progress",
                          "--out", tmp_path / "m.npz", "--report", tmp_path / "r.png"], capsys)
    assert code == 0, err
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["d.csv", "m.npz", "r.png"]   # no temporary file


# -------------------------------------------------------------- --stream (Parquet)

def _parquet_digits(tmp_path, parts=2):
    """digits as a directory of Parquet files, string labels in column 'kind'."""
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    frame = pd.DataFrame(X, columns=[f"p{i}" for i in range(64)])
    frame.insert(10, "kind", np.array(["zero", "one", "two", "three", "four", "five", "six",
                                       "seven", "eight", "nine"])[y])
    folder = tmp_path / "digits"
    folder.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(frame)), parts)):
        frame.iloc[part].to_parquet(folder / f"part-{i}.parquet", row_group_size=200)
    return folder, frame


def test_train_streams_a_parquet_dataset_and_the_model_predicts_like_any(tmp_path, capsys):
    folder, frame = _parquet_digits(tmp_path)
    model = tmp_path / "m.npz"
    code, out, err = run(["train", str(folder), "--stream", "--label", "kind", "--epochs", "8",
                          "--out", str(model), "--no-progress"], capsys)
    assert code == 0, err
    assert "streamed from" in out and "trained 8 epochs" in out
    t = Trainer.load(model)
    assert len(t.history["loss"]) == 8
    assert t.metadata["label"] == "kind" and len(t.metadata["classes"]) == 10
    assert np.allclose(t.metadata["scale"]["mean"],
                       frame.drop(columns="kind").mean().to_numpy())
    table = tmp_path / "all.parquet"
    frame.to_parquet(table)
    code, out, err = run(["evaluate", str(model), str(table)], capsys)
    assert code == 0, err
    accuracy = float(out.split("accuracy:")[1].split()[0])
    assert accuracy > 0.9


def test_stream_errors_are_one_line(tmp_path, capsys):
    folder, _ = _parquet_digits(tmp_path, parts=1)
    assert run(["train", "--epochs", "1", "--no-progress", "--out", tmp_path / "m0.npz"],
               capsys)[0] == 0
    continuous = tmp_path / "continuous.parquet"
    rng = np.random.default_rng(0)
    pd.DataFrame({"a": rng.normal(size=300), "y": rng.normal(size=300)}).to_parquet(continuous)
    cases = [(["train", "--stream"], 2, "--stream needs DATA"),
             (["train", str(folder), "--stream", "--label", "nope"], 1, "--label 'nope'"),
             (["train", str(folder), "--stream", "--label", "p3"], 1, "kind"),   # text feature
             (["train", str(tmp_path / "missing"), "--stream"], 1, "missing"),
             (["train", str(folder), "--stream", "--report", "r.png"], 2, "--report"),
             # before: accepted and ignored (no split, a constant learning rate)
             (["train", str(folder), "--stream", "--test-size", "0.3"], 2, "--test-size"),
             (["train", str(folder), "--stream", "--lr-schedule", "cosine"], 2,
              "--lr-schedule is not available with --stream"),
             (["train", str(continuous), "--stream"], 1, "--loss mse"),
             # before: "unknown data format '(no extension)'"
             (["train", str(folder)], 1, "is a directory; give a data file"),
             (["predict", str(tmp_path / "m0.npz"), str(folder)], 1, "--stream")]
    for argv, want, text in cases:
        code, out, err = run([*argv, "--out", str(tmp_path / "m.npz")], capsys)
        assert code == want and text in err and err.count("\n") == 1, (argv, err)
        assert not (tmp_path / "m.npz").exists()


# ------------------------------------------------------- sparse files (svmlight, save_npz)

def test_train_evaluate_and_predict_on_sparse_files(tmp_path, capsys, monkeypatch):
    """svmlight/libsvm (labels in the file) and scipy save_npz (the label a column, by
    default the last) train as CSR, never densified: the features are scaled, not centred."""
    from scipy import sparse
    from sklearn.datasets import dump_svmlight_file

    import fastbp.cli as cli
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 30)) * (rng.random((200, 30)) < 0.2)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    dump_svmlight_file(X, y, str(tmp_path / "d.svm"))
    sparse.save_npz(tmp_path / "d.npz", sparse.csr_matrix(np.hstack([y[:, None], X])))
    seen = []
    real_fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self, X, *a, **k: (
        seen.append(sparse.issparse(X)), real_fit(self, X, *a, **k))[1])
    for name, extra in (("d.svm", []), ("d.npz", ["--label", "0"])):
        model = tmp_path / f"{name}.model.npz"
        code, out, err = run(["train", tmp_path / name, *extra, "--epochs", "30", "--lr", "0.01",
                              "--out", model, "--no-progress"], capsys)
        assert code == 0, err
        meta = Trainer.load(model).metadata
        assert meta["scale"]["mean"] == [0.0] * 30
        code, out, err = run(["evaluate", model, tmp_path / name], capsys)
        assert code == 0, err
        assert float(out.split("accuracy:")[1].split()[0]) > 0.8
        code, out, err = run(["predict", model, tmp_path / name], capsys)
        assert code == 0, err
        assert len(out.split()) == 200
    assert seen == [True, True]
    assert cli.sparse.issparse(cli._scale_features(sparse.csr_matrix(X), meta, 30))
    (tmp_path / "bad.svm").write_text("1 3:x\n")
    code, out, err = run(["train", tmp_path / "bad.svm", "--out", tmp_path / "b.npz"], capsys)
    assert code == 1 and "bad.svm" in err
    # the labels are in an svmlight file: --label was silently ignored
    code, out, err = run(["train", tmp_path / "d.svm", "--label", "3", "--out",
                          tmp_path / "b.npz"], capsys)
    assert code == 1 and "--label '3': " in err and "leave --label out" in err
    # a file whose highest feature index is lower than the model's width: predict took it,
    # evaluate refused it
    dump_svmlight_file(X[:, :9], y, str(tmp_path / "few.svm"))
    model = tmp_path / "d.svm.model.npz"
    for command in ("evaluate", "predict"):
        code, out, err = run([command, model, tmp_path / "few.svm"], capsys)
        assert code == 0, err


@pytest.mark.parametrize("options,counts", [
    ([], "1437 training samples, 360 test samples"),
    (["--test-size", "0.5"], "898 training samples, 899 test samples"),
    (["--test-size", "0"], "1797 training samples;"),
])
def test_the_main_job_holds_out_test_size_of_digits(options, counts, tmp_path, capsys):
    """`fastbp train` with no data took its fixed 80/20 split whatever --test-size said."""
    code, out, _ = run(["train", "--epochs", "1", "--out", tmp_path / "m.npz",
                        "--no-progress", *options], capsys)
    assert code == 0 and counts in out
    assert ("test accuracy" in out) == (options != ["--test-size", "0"])


def test_the_main_job_with_scale_none_keeps_the_raw_pixels(tmp_path, capsys):
    """`--scale none` on digits still divided the pixels by 16."""
    for scale, std in (("standard", 16.0), ("none", 1.0)):
        code, _, _ = run(["train", "--epochs", "1", "--scale", scale, "--out",
                          tmp_path / "m.npz", "--no-progress"], capsys)
        assert code == 0
        assert Trainer.load(tmp_path / "m.npz").metadata["scale"]["std"] == [std] * 64


def test_evaluate_with_a_label_that_is_not_the_models(tmp_path, capsys):
    """A feature column given as --label, in a file whose label column is text: refused as a
    feature (it failed on the text column instead), and a position that is not the label
    says which column the model's label is."""
    frame = classes_frame()
    frame.to_csv(tmp_path / "d.csv", index=False)
    model = tmp_path / "m.npz"
    assert run(["train", tmp_path / "d.csv", "--label", "kind", "--epochs", "1", "--out",
                model, "--no-progress"], capsys)[0] == 0
    code, _, err = run(["evaluate", model, tmp_path / "d.csv", "--label", "f1"], capsys)
    assert code == 2 and "column 'f1' is one of the model's feature columns" in err
    code, _, err = run(["evaluate", model, tmp_path / "d.csv", "--label", "1"], capsys)
    assert code == 1 and "the model's label column is 'kind'" in err
    assert run(["evaluate", model, tmp_path / "d.csv", "--label", "kind"], capsys)[0] == 0
