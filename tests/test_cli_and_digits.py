"""The main job end to end, the CLI on user files, and a quality floor on real data."""
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from fastbp import Trainer
from fastbp.cli import main


def test_digits_64_64_10_reaches_96_percent():
    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X / 16.0, y, test_size=0.25, random_state=1,
                                              stratify=y)
    t = Trainer([64, 64, 10], optimizer="adam", lr=1e-3, batch_size=32, seed=0)
    t.fit(X_tr, y_tr, epochs=40, progress=False)
    assert t.evaluate(X_te, y_te)["accuracy"] >= 0.96


def test_main_job_runs_end_to_end(tmp_path):
    """`fastbp train` exactly as a newcomer types it (in a subprocess, few epochs)."""
    out = tmp_path / "model.npz"
    run = subprocess.run([sys.executable, "-m", "fastbp.cli", "train", "--epochs", "30",
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    acc = float(run.stdout.split("test accuracy:")[1].split()[0])
    assert acc >= 0.95
    assert "samples/s" in run.stdout and out.exists()
    X = load_digits().data[:5]
    np.savez(tmp_path / "x.npz", X=X)
    pred = subprocess.run([sys.executable, "-m", "fastbp.cli", "predict", str(out),
                           str(tmp_path / "x.npz")], capture_output=True, text=True, timeout=600)
    assert pred.returncode == 0, pred.stderr
    assert [int(v) for v in pred.stdout.split()] == list(load_digits().target[:5])


def _write_csv(path, X, labels, header=True):
    with open(path, "w") as f:
        if header:
            f.write(",".join([f"f{i}" for i in range(X.shape[1])] + ["kind"]) + "\n")
        for row, lab in zip(X, labels):
            f.write(",".join(f"{v:.6f}" for v in row) + f",{lab}\n")


def test_train_and_predict_on_a_csv_with_string_labels(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3)) * 10 + 50
    labels = np.where(X[:, 0] > 50, "big", "small")
    _write_csv(tmp_path / "d.csv", X, labels)
    model = tmp_path / "m.npz"
    assert main(["train", str(tmp_path / "d.csv"), "--label", "kind", "--epochs", "30",
                 "--layers", "16,8", "--out", str(model), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert float(out.split("test accuracy:")[1].split()[0]) > 0.9
    assert Trainer.load(model).layers == [3, 16, 8, 2]
    # predict: the same CSV (label column present and ignored) -> class names
    assert main(["predict", str(model), str(tmp_path / "d.csv"), "--out",
                 str(tmp_path / "p.csv")]) == 0
    pred = (tmp_path / "p.csv").read_text().split()
    assert np.mean(np.array(pred) == labels) > 0.9


def test_regression_from_npz(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0])
    np.savez(tmp_path / "r.npz", X=X, y=y)
    y = 100 + 30 * y                      # targets far from 0: standardised for training
    np.savez(tmp_path / "r.npz", X=X, y=y)
    model = str(tmp_path / "r_model.npz")
    assert main(["train", str(tmp_path / "r.npz"), "--loss", "mse", "--epochs", "60",
                 "--out", model, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert float(out.split("test loss:")[1].split()[0]) < 0.1     # standardised units
    np.savez(tmp_path / "x.npz", X=X[:50])
    assert main(["predict", model, str(tmp_path / "x.npz")]) == 0
    pred = np.array(capsys.readouterr().out.split(), dtype=float)
    assert np.sqrt(np.mean((pred - y[:50]) ** 2)) < 0.3 * np.std(y)   # back in y's units


@pytest.mark.parametrize("argv,code,message", [
    (["train", "missing.csv"], 1, "no data file"),
    (["train", "--layers", "0"], 2, "hidden size"),
    (["train", "--lr", "-1"], 2, "lr=-1.0 is not allowed"),
    (["predict", "nothing.npz", "x.npz"], 1, "no model file"),
    (["train", "mixed.csv"], 1, "'abc' in data row 1"),
    (["train", "--epochs", "0"], 2, "--epochs"),
])
def test_cli_errors_are_clear(argv, code, message, capsys, tmp_path, monkeypatch):
    """Usage errors exit with 2, file and data errors with 1 (tests/test_cli.py has more)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mixed.csv").write_text("1.0,abc,0\n2.0,3.0,1\n4.0,5.0,0\n")  # no header
    try:
        got = main(argv)
    except SystemExit as e:      # argparse's own errors
        got = e.code
    assert got == code
    assert message in capsys.readouterr().err


def test_warmup_compiles_every_kernel_set(capsys):
    from fastbp import warmup
    timings = warmup(dtypes=["float32"], targets=["cpu", "parallel"])
    assert set(timings) == {("float32", "cpu"), ("float32", "parallel")}
    assert main(["warmup", "--dtypes", "float64", "--targets", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "float64/cpu ready" in out
    assert "kernels compile on first use" in out or "kernels shipped compiled for" in out


def test_warmup_of_sparse_data_compiles_the_csr_variants(capsys):
    """Sparse data's kernels are variants of their own (kernels/variants.py); the release's
    prebuild ships them through warmup(sparse=True)."""
    from fastbp.kernels.variants import variant
    assert main(["warmup", "--dtypes", "float64", "--targets", "cpu", "--sparse"]) == 0
    for mode in ("csr", "csr_lazy"):
        args = [sig for sig in variant(mode).train_epoch_serial.signatures
                if "float64" in str(sig)]
        assert args, mode
    assert any("float64" in str(sig) for sig in variant("csr").predict.signatures)


def test_warmup_takes_one_name_as_well_as_a_list():
    from fastbp import warmup
    assert list(warmup(dtypes="float64", targets="cpu")) == [("float64", "cpu")]
