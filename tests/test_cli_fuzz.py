"""The command line under random files and random arguments (hypothesis): never a
traceback, exit status 0, 1 (a file or the data) or 2 (usage), one line on stderr for an
error, no partial or temporary file left behind, and an existing output left untouched by a
failed run.

Kept fast: tiny files, one epoch, the float32/cpu kernel set every other CLI test compiles."""
import contextlib
import io
import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from fastbp import Trainer
from fastbp.cli import main

CELLS = st.one_of(
    st.integers(-5, 5).map(str),
    st.floats(-1e3, 1e3, allow_nan=False).map(lambda v: f"{v:.3g}"),
    st.sampled_from(["", " ", "NaN", "nan", "NA", "inf", "-inf", "abc", " 1.5 ", '"2,5"',
                     '"x"', "1e400", "0x1F", "TRUE", "big", "small", "2024-01-01"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\x00"),
            max_size=4),
)


@st.composite
def table_text(draw, widths=st.integers(1, 4)):
    """A small delimited text: maybe a header, rows of mostly the same width, cells of
    anything (or, half the time, a clean table of numbers with a label column)."""
    width = draw(widths)
    clean = draw(st.booleans())
    sep = "," if clean else draw(st.sampled_from([",", ",", "\t", ";"]))
    lines = []
    if draw(st.booleans()):
        names = ["a", "b", "c", "kind"][-width:] if clean else draw(st.lists(
            st.sampled_from(["a", "b", "kind", "", "x y", "label", "1"]),
            min_size=width, max_size=width))
        lines.append(sep.join(names))
    regular = clean or draw(st.booleans())
    for _ in range(draw(st.integers(4, 10) if clean else st.integers(0, 8))):
        n = width if regular else draw(st.integers(1, width + 1))
        if not clean and draw(st.integers(0, 3)) == 0:
            row = draw(st.lists(CELLS, min_size=n, max_size=n))
        else:                                          # numbers, to reach training
            row = [f"{v:.3g}" for v in draw(st.lists(st.floats(-9, 9), min_size=n,
                                                      max_size=n))]
            if clean or draw(st.booleans()):
                row[-1] = draw(st.sampled_from(["0", "1", "2"] if clean else
                                               ["0", "1", "2", "big", "small"]))
        lines.append(sep.join(row))
    text = "\n".join(lines) + draw(st.sampled_from(["", "\n", "\n\n"]))
    return text.encode()


def contents(widths=st.integers(1, 4)):
    return st.one_of(table_text(widths), table_text(widths), table_text(widths),
                     st.binary(max_size=64), st.just(b""), st.just(b"a,b,kind\n"))


EXTENSIONS = st.sampled_from([".csv"] * 5 + [".tsv", ".npz", ".npy", ".parquet", ".feather",
                                             ".txt", "", ".csv.gz"])

# each usage error is caught before any file is read
GOOD_OPTIONS = st.lists(st.sampled_from([
    ["--label", "0"], ["--label", "-1"], ["--label", "7"], ["--label", "kind"],
    ["--label", "nope"], ["--loss", "mse"], ["--loss", "binary_cross_entropy"],
    ["--loss", "poisson"], ["--layers", "3"], ["--layers", "2,2"], ["--batch-size", "1"],
    ["--test-size", "0"], ["--test-size", "0.5"], ["--lr", "0.01"], ["--scale", "none"],
    ["--optimizer", "sgd"], ["--activation", "tanh"],
]), max_size=2)
BAD_OPTIONS = st.one_of(st.just([]), st.sampled_from([
    ["--loss", "hinge"], ["--layers", ""], ["--layers", "0"], ["--layers", "a"],
    ["--batch-size", "0"], ["--test-size", "1"], ["--lr", "-1"], ["--lr", "nan"],
    ["--lr", "x"], ["--epochs", "0"], ["--scale", "bogus"], ["--clip-norm", "-1"],
    ["--report", "r.xyz"], ["--bogus"],
]))

CLEAN = b"a,b,c,kind\n" + b"".join(b"%d,%d,0.5,%d\n" % (i, -i, i % 3) for i in range(12))
OUTS = st.sampled_from(["model.npz"] * 4 + ["missing-dir/model.npz", ".", "existing.npz"])
OLD = b"not touched"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A small classifier (3 features, classes 0/1/2) for predict and evaluate."""
    path = tmp_path_factory.mktemp("model") / "m.npz"
    rng = np.random.default_rng(0)
    t = Trainer([3, 4, 3], batch_size=8, epochs=1, seed=0)
    t.fit(rng.normal(size=(30, 3)), rng.integers(0, 3, 30), progress=False)
    t.metadata = {"classes": [0, 1, 2], "feature_names": None, "label": None,
                  "label_position": 3}
    t.save(path)
    return str(path)


def _call(argv):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def _check(code, err, usage_error):
    event(f"exit status {code}")
    assert "Traceback" not in err and "internal error" not in err, err
    assert code in (0, 1, 2), (code, err)
    if usage_error:
        assert code == 2, err
    if code:
        assert len(err.strip().splitlines()) == 1, err


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contents=contents(), ext=EXTENSIONS, options=GOOD_OPTIONS, bad=BAD_OPTIONS, out=OUTS)
@example(contents=CLEAN, ext=".csv", options=[], bad=[], out="existing.npz")
@example(contents=CLEAN, ext=".csv", options=[["--loss", "mse"]], bad=[], out="model.npz")
def test_train_never_tracebacks(contents, ext, options, bad, out):
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "data" + ext)
        with open(data, "wb") as f:
            f.write(contents)
        existing = os.path.join(d, "existing.npz")
        with open(existing, "wb") as f:
            f.write(OLD)
        before = set(os.listdir(d))
        out_path = os.path.join(d, out)
        argv = ["train", data, "--epochs", "1", "--no-progress", "--out", out_path]
        for args in [*options, bad]:
            argv += [os.path.join(d, a) if a.endswith(".xyz") else a for a in args]
        usage = bool(bad)
        code, err = _call(argv)
        _check(code, err, usage)
        if contents == CLEAN and ext == ".csv" and not bad and out in ("model.npz", "existing.npz"):
            assert code == 0, err                      # the explicit examples train
        after = set(os.listdir(d))
        if code == 0:
            assert Trainer.load(out_path).layers[-1] >= 1
            assert after - before <= {out}
        else:
            assert after == before, (after - before, err)       # nothing new, no temp file
            with open(existing, "rb") as f:
                assert f.read() == OLD


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(contents=CLEAN, ext=".csv", command="evaluate", extra=[])
@given(contents=contents(st.sampled_from([3, 3, 4, 4, 1])), ext=EXTENSIONS,
       command=st.sampled_from(["predict", "evaluate"]),
       extra=st.sampled_from([[], ["--proba"], ["--out", "p.csv"], ["--out", "no/p.csv"],
                              ["--label", "0"], ["--bogus"]]))
def test_predict_and_evaluate_never_traceback(model_file, contents, ext, command, extra):
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "data" + ext)
        with open(data, "wb") as f:
            f.write(contents)
        before = set(os.listdir(d))
        extra = [os.path.join(d, a) if a.endswith(".csv") else a for a in extra]
        usage = extra == ["--bogus"] or (command == "evaluate" and extra[:1] in (["--proba"],
                                                                                  ["--out"]))
        code, err = _call([command, model_file, data, *extra])
        _check(code, err, usage)
        if contents == CLEAN and ext == ".csv" and not extra:
            assert code == 0, err
        after = set(os.listdir(d))
        if code == 0 and "--out" in extra:
            assert after - before == {"p.csv"}
        else:
            assert after == before, (after - before, err)
