"""fastbp.streaming: training out of core from Parquet files and datasets, read in record
batches with pyarrow (issue 14, section 1)."""
import tracemalloc

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import fastbp  # noqa: E402
from fastbp import MLPClassifier, Trainer, TrainingHealthWarning  # noqa: E402
from fastbp.distributed import fit_incremental  # noqa: E402
from fastbp.streaming import column_stats, distinct_values, fit_parquet  # noqa: E402

NAMES = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                  "nine"])


@pytest.fixture(scope="module")
def digits_dataset(tmp_path_factory):
    """Digits as a directory of two Parquet files (several row groups each), labels as
    strings, and the held-out rows as arrays."""
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    root = tmp_path_factory.mktemp("digits")
    half = len(X_tr) // 2
    for i, sl in enumerate((slice(0, half), slice(half, None))):
        cols = {f"p{j}": X_tr[sl, j] for j in range(64)}
        cols["label"] = NAMES[y_tr[sl]]
        pq.write_table(pa.table(cols), root / f"part-{i}.parquet", row_group_size=150)
    return root, X_tr, y_tr, X_te, y_te


def test_fit_parquet_streams_a_file_with_memory_of_about_one_batch(tmp_path):
    """51 MB of float64 features in 10 row groups, trained in batches of one row group: the
    peak of Python's allocations (tracemalloc) and of Arrow's (its memory pool) stay under
    3 batches."""
    n, d, groups = 200_000, 32, 10
    rows = n // groups
    path = tmp_path / "big.parquet"
    rng = np.random.default_rng(0)
    schema = pa.schema([(f"f{j}", pa.float64()) for j in range(d)] + [("label", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:          # written a row group at a time
        for _ in range(groups):
            X = rng.standard_normal((rows, d))
            cols = [pa.array(X[:, j]) for j in range(d)]
            cols.append(pa.array((X[:, 0] + X[:, 1] > 0).astype(np.int64)))
            writer.write_table(pa.Table.from_arrays(cols, schema=schema))
            del X, cols
    batch_bytes = rows * (d + 1) * 8
    t = Trainer([d, 16, 2], seed=0, dtype="float64", batch_size=256)
    t.fit(np.zeros((4, d)), np.zeros(4, dtype=int), epochs=1, progress=False)  # JIT outside
    t.reset()
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    before = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    tracemalloc.start()
    try:
        fit_parquet(t, path, label="label", epochs=1, batch_rows=rows, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(before)
    assert peak < 3 * batch_bytes, (peak, batch_bytes)
    assert 0 < pool.max_memory() < 3 * batch_bytes, (pool.max_memory(), batch_bytes)
    assert len(t.history["loss"]) == 1                           # one entry per pass
    check = pq.read_table(path, columns=[f"f{j}" for j in range(d)] + ["label"]).slice(0, 2000)
    Xs = np.column_stack([check.column(j).to_numpy() for j in range(d)])
    assert t.evaluate(Xs, check.column("label").to_numpy())["accuracy"] > 0.95


def test_fit_parquet_trains_a_trainer_on_a_dataset_with_string_labels(digits_dataset):
    root, _, _, X_te, y_te = digits_dataset
    t = Trainer([64, 32, 10], epochs=15, seed=0)
    fit_parquet(t, root, label="label", classes=NAMES, batch_rows=200, progress=False)
    assert t.evaluate(X_te, y_te)["accuracy"] > 0.93
    h = t.history
    assert len(h["loss"]) == 15 and len(h["layer_grad_norms"]) == 15 and len(h["time"]) == 15
    assert h["loss"][-1] < h["loss"][0] and "initial_loss" in h
    assert t.health()["ok"]
    # a seeded Trainer trains the same way every run (the row-group order from its seed)
    again = fit_parquet(Trainer([64, 32, 10], epochs=15, seed=0), root, label="label",
                        classes=NAMES, batch_rows=200, progress=False)
    np.testing.assert_array_equal(again.params, t.params)


def test_restore_on_divergence_reaches_every_batch_fit(digits_dataset, monkeypatch):
    """fit_parquet and fit_incremental pass restore_on_divergence to each batch's
    Trainer.fit (False: no roll-back copy of a large model's state per batch), and refuse
    a value that is not a bool before reading anything."""
    from fastbp.distributed import fit_incremental
    root, X_tr, y_tr, _, _ = digits_dataset
    fit, seen = Trainer.fit, []
    monkeypatch.setattr(Trainer, "fit", lambda self, X, y, **kw: seen.append(
        kw["restore_on_divergence"]) or fit(self, X, y, **kw))
    fit_parquet(Trainer([64, 8, 10], epochs=1, seed=0), root, label="label", classes=NAMES,
                batch_rows=400, progress=False, restore_on_divergence=False)
    assert len(seen) > 1 and not any(seen)
    seen.clear()
    chunks = [(X_tr[:300], y_tr[:300]), (X_tr[300:], y_tr[300:])]
    fit_incremental(Trainer([64, 8, 10], seed=0), chunks, progress=False,
                    restore_on_divergence=False)
    assert seen == [False, False]
    seen.clear()
    fit_incremental(Trainer([64, 8, 10], seed=0), chunks, progress=False)
    assert seen == [True, True]
    with pytest.raises(TypeError, match="^restore_on_divergence=1 is not allowed"):
        fit_parquet(Trainer([64, 8, 10], seed=0), root, label="label", classes=NAMES,
                    progress=False, restore_on_divergence=1)
    assert not seen[2:]


def test_estimators_through_fit_incremental_and_explicit_features(digits_dataset):
    root, _, _, X_te, y_te = digits_dataset
    clf = MLPClassifier(hidden_layer_sizes=(32,), batch_size=32, random_state=0)
    fit_incremental(clf, root, "label", epochs=10, classes=NAMES)       # a path: Parquet
    assert clf.score(X_te, NAMES[y_te]) > 0.9
    files = sorted(root.glob("*.parquet"))
    t = Trainer([8, 16, 10], epochs=2, seed=0)
    fit_parquet(t, files, label="label", features=[f"p{j}" for j in range(20, 28)],
                classes=NAMES, progress=False)
    assert t.epochs_done == 2


def test_fit_parquet_refuses_bad_files_with_clear_errors(tmp_path, digits_dataset):
    root = digits_dataset[0]
    t = Trainer([64, 8, 10], seed=0)
    with pytest.raises(ValueError, match="column 'kind' is not in"):
        fit_parquet(t, root, label="kind")
    with pytest.raises(ValueError, match="label 'nine' in row group .* is not one of classes"):
        fit_parquet(t, root, label="label", classes=NAMES[:9].tolist() + ["ten"])
    with pytest.raises(FileNotFoundError, match="no such Parquet"):
        fit_parquet(t, tmp_path / "missing.parquet", label="y")
    # text labels and no classes: before, "y must hold real numbers", after reading a batch
    before = t.params.copy()
    with pytest.raises(ValueError, match="label column 'label' .* holds string, not numbers: "
                                         "pass classes="):
        fit_parquet(t, root, label="label")
    with pytest.raises(ValueError, match="holds string, not numbers: loss='mse' needs"):
        fit_parquet(Trainer([64, 8, 1], loss="mse"), root, label="label")
    assert np.array_equal(t.params, before) and t.epochs_done == 0
    text = tmp_path / "text.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0], "name": ["x", "y"], "y": [0, 1]}), text)
    with pytest.raises(ValueError, match="feature column 'name' .* not a number"):
        fit_parquet(Trainer([2, 4, 2]), text, label="y")
    holes = tmp_path / "holes.parquet"
    pq.write_table(pa.table({"a": [1.0, None], "b": [1.0, 2.0], "y": [0, 1]}), holes)
    with pytest.raises(ValueError, match="column 'a' has 1 missing value"):
        fit_parquet(Trainer([2, 4, 2]), holes, label="y")
    for bad in ({"epochs": 0}, {"batch_rows": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            fit_parquet(t, root, label="label", classes=NAMES, **bad)


def test_streamed_passes_are_judged_once_per_pass(tmp_path):
    """The issue's blow-up (mse on 1e3-scaled targets, lr=1.0), streamed in 7 batches: one
    warning per problem for the call, not one per batch."""
    X, y = load_digits(return_X_y=True)
    cols = {f"p{j}": X[:, j] / 16 for j in range(64)}
    cols["y"] = 1e3 * y
    path = tmp_path / "digits.parquet"
    pq.write_table(pa.table(cols), path, row_group_size=256)
    t = Trainer([64, 32, 1], loss="mse", optimizer="sgd", lr=1.0, batch_size=32, epochs=5,
                seed=0)
    with pytest.warns(TrainingHealthWarning) as caught:
        fit_parquet(t, path, label="y", progress=False)
    messages = [str(w.message) for w in caught if w.category is TrainingHealthWarning]
    assert len(messages) == len(set(m.split(": ", 1)[1] for m in messages))
    assert any("blew up" in m for m in messages) and any("dead layer" in m for m in messages)


def test_column_stats_stream_the_mean_and_std(digits_dataset):
    root, X_tr, _, _, _ = digits_dataset
    stats = column_stats(root, ["p10", "p36"], batch_rows=100)
    for j in (10, 36):
        mean, std = stats[f"p{j}"]
        assert mean == pytest.approx(X_tr[:, j].mean(), rel=1e-12)
        assert std == pytest.approx(X_tr[:, j].std(), rel=1e-9)


def test_column_stats_of_every_numeric_column_leave_the_text_label_out(digits_dataset):
    # before: column_stats(root) converted the text label too, a bare "could not convert
    # string to float" without the column's name
    root, X_tr, _, _, _ = digits_dataset
    stats = column_stats(root)
    assert sorted(stats) == sorted(f"p{j}" for j in range(64))
    assert stats["p36"][0] == pytest.approx(X_tr[:, 36].mean(), rel=1e-12)
    with pytest.raises(ValueError, match="column 'label' of .* is string, not numeric"):
        column_stats(root, ["p10", "label"])
    with pytest.raises(ValueError, match="column 'nope' is not in"):
        column_stats(root, ["nope"])


def test_distinct_values_of_a_label_column(digits_dataset):
    root = digits_dataset[0]
    assert distinct_values(root, "label", batch_rows=100).tolist() == sorted(NAMES)
    with pytest.raises(ValueError, match="more than 5 distinct"):
        distinct_values(root, "p36", limit=5)


def test_lazy_module_attribute():
    assert fastbp.streaming.fit_parquet is fit_parquet
