"""Bad input everywhere, fuzzed: random shapes, dtypes, NaN/inf, empty arrays, huge and tiny
values, wrong label types and random bytes as a model file. Every failure must be a clean
ValueError/TypeError (or DivergenceError, with the model restored), never a crash, a Numba
typing error or a silent NaN model, and nothing the user had may change."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastbp import DivergenceError, Trainer

# derandomize: the same examples on every run, so CI stays bounded and repeatable
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

floats = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.sampled_from(
    [0.0, 1e-300, -1e-300, 1e300, -1e300, 3.4e38, 1e-45])
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7)


@st.composite
def arrays(draw):
    kind = draw(st.sampled_from(["float", "float32", "int", "bool", "complex", "str", "list"]))
    shape = draw(shapes)
    if kind == "float":
        return draw(hnp.arrays(np.float64, shape, elements=floats))
    if kind == "float32":
        return draw(hnp.arrays(np.float32, shape, elements=st.floats(width=32)))
    if kind == "int":
        return draw(hnp.arrays(np.int64, shape, elements=st.integers(-5, 5)))
    if kind == "bool":
        return draw(hnp.arrays(np.bool_, shape))
    if kind == "complex":
        return draw(hnp.arrays(np.complex128, shape, elements=st.complex_numbers(max_magnitude=9)))
    if kind == "str":
        return draw(hnp.arrays(np.dtype("U3"), shape,
                               elements=st.text(alphabet="ab1.-é Z", max_size=3)))
    return draw(st.lists(st.lists(st.integers(0, 3), max_size=5), max_size=5))   # ragged


def _state(t):
    return t.params.copy(), t.engine.m.copy(), t.engine.v.copy(), t.step, repr(t.history)


def _fit_checked(t, X, y):
    """fit, then: refused input changes nothing; a divergence leaves the last good epoch's
    finite model and history; a success leaves a finite model. Returns True on success."""
    before = _state(t)
    try:
        t.fit(X, y, epochs=2, progress=False)
    except (ValueError, TypeError):
        assert _unchanged(t, before)
        return False
    except DivergenceError as err:
        assert np.all(np.isfinite(t.params)) and len(t.history.get("loss", [])) == err.epoch
        if err.epoch == 0:
            assert _unchanged(t, before)
        return False
    assert np.all(np.isfinite(t.params)) and np.all(np.isfinite(t.history["loss"]))
    return True


def _unchanged(t, before):
    after = _state(t)
    return (np.array_equal(after[0], before[0]) and np.array_equal(after[1], before[1])
            and np.array_equal(after[2], before[2]) and after[3:] == before[3:])


@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy", "mse", "poisson"])
@FUZZ
@given(X=arrays(), y=arrays())
def test_fit_loss_and_predict_on_random_input(loss, X, y):
    t = Trainer([4, 5, 3], loss=loss, optimizer="adam", seed=0, batch_size=3)
    _fit_checked(t, X, y)
    before = _state(t)
    for call in (lambda: t.predict(X), lambda: t.loss(X, y), lambda: t.evaluate(X, y)):
        try:
            out = call()
        except (ValueError, TypeError, AttributeError):
            pass
        else:
            assert np.all(np.isfinite(np.asarray(out if not isinstance(out, dict)
                                                 else list(out.values()), dtype=float))) \
                or not np.all(np.isfinite(np.asarray(X, dtype=float)))
        assert _unchanged(t, before)


@FUZZ
@given(data=st.binary(max_size=3000))
def test_random_bytes_are_not_a_model(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "model.npz"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="not a valid fastbp model file"):
        Trainer.load(path)


@FUZZ
@given(cut=st.integers(0, 10_000), flip=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_damaged_model_files_are_refused_or_load_cleanly(tmp_path_factory, cut, flip, byte):
    d = tmp_path_factory.mktemp("fuzz")
    t = Trainer([4, 5, 3], seed=0)
    t.save(d / "good.npz")
    data = bytearray((d / "good.npz").read_bytes())
    data[flip % len(data)] = byte
    data = data[:max(1, len(data) - cut % len(data))]
    (d / "bad.npz").write_bytes(bytes(data))
    try:
        u = Trainer.load(d / "bad.npz")
    except ValueError as e:
        assert "not a valid fastbp model file" in str(e)
    else:                             # the damage missed every field that matters
        assert np.all(np.isfinite(u.params)) and u.params.shape == t.params.shape


@FUZZ
@given(kwargs=st.dictionaries(
    st.sampled_from(["lr", "batch_size", "epochs", "momentum", "betas", "eps", "weight_decay",
                     "clip_norm", "dropout", "activation", "loss", "optimizer", "dtype",
                     "seed", "target", "init", "shuffle", "n_threads"]),
    st.one_of(st.none(), st.booleans(), st.integers(-3, 3), floats, st.text(max_size=4),
              st.lists(st.floats(0, 1), max_size=3)), max_size=4))
def test_random_constructor_arguments(kwargs):
    try:
        Trainer([4, 5, 3], **kwargs)
    except (ValueError, TypeError):
        pass


@FUZZ
@given(n=st.integers(1, 12), data=st.data())
def test_well_shaped_data_with_extreme_values(n, data):
    """Right shapes, so the kernels run: huge, tiny, NaN and infinite values, and labels that
    may be out of range, negative or fractional."""
    X = data.draw(hnp.arrays(np.float64, (n, 4), elements=floats))
    y = data.draw(hnp.arrays(np.float64, (n,), elements=st.sampled_from(
        [0.0, 1.0, 2.0, 3.0, -1.0, 0.5, np.nan])))
    t = Trainer([4, 5, 3], seed=0, batch_size=4, optimizer="sgd", lr=0.5)
    if _fit_checked(t, X, y):
        assert np.all(np.isfinite(t.predict_proba(X)))
