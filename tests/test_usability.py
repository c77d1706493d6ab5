"""Issue 14, small traps a new user hit: the Trainer's repr and fastbp's lazy submodules."""
import subprocess
import sys
from pathlib import Path

from fastbp import Trainer

ROOT = Path(__file__).resolve().parents[1]


def test_repr_shows_batch_size_epochs_and_seed():
    r = repr(Trainer([4, 8, 3], batch_size=64, epochs=7, seed=3))
    assert r == ("Trainer(layers=[4, 8, 3], activation='relu', loss='cross_entropy', "
                 "optimizer='adam', lr=0.001, batch_size=64, epochs=7, target='cpu', "
                 "dtype='float32', seed=3)")


def test_fastbp_plot_is_a_lazy_attribute():
    """`import fastbp; fastbp.plot.training_report` raised AttributeError; in a fresh
    interpreter (this one has imported fastbp.plot for other tests), without importing
    matplotlib or Dask at `import fastbp`."""
    code = ("import sys, fastbp\n"
            "heavy = [m for m in ('matplotlib', 'dask', 'fastbp.plot') "
            "if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "assert callable(fastbp.plot.training_report)\n"
            "assert callable(fastbp.distributed.fit) and callable(fastbp.streaming.fit_parquet)\n"
            "assert {'plot', 'distributed', 'streaming'} <= set(dir(fastbp))\n"
            "try:\n    fastbp.nothing\nexcept AttributeError as e:\n    print(e)\n")
    assert _fresh_interpreter(code) == "module 'fastbp' has no attribute 'nothing'"


def test_import_fastbp_leaves_scikit_learn_for_the_estimators():
    """`import fastbp` imported scikit-learn (about 2 s, most of the import) for scripts that
    only use the Trainer; the estimators and patch_sklearn now import it on first use."""
    code = ("import sys, fastbp\n"
            "assert 'sklearn' not in sys.modules, 'sklearn imported'\n"
            "t = fastbp.Trainer([3, 4, 2])\n"
            "assert 'sklearn' not in sys.modules, 'sklearn imported by the Trainer'\n"
            "from fastbp import MLPClassifier, patch_sklearn\n"
            "import sklearn.base\n"
            "assert issubclass(MLPClassifier, sklearn.base.ClassifierMixin)\n"
            "assert fastbp.MLPRegressor.__module__ == 'fastbp.estimators'\n"
            "assert callable(patch_sklearn) and callable(fastbp.unpatch_sklearn)\n"
            "assert {'MLPClassifier', 'patch_sklearn'} <= set(dir(fastbp))\n"
            "print('ok')\n")
    assert _fresh_interpreter(code) == "ok"


def _fresh_interpreter(code):
    """The stripped output of `code` run by a new Python in the checkout (this one has
    imported everything for other tests); fails with its stderr if it fails."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()
