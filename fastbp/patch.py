"""Zero-code-change acceleration: scikit-learn's MLPs replaced by fastbp's.

After `fastbp.patch_sklearn()`, `from sklearn.neural_network import MLPClassifier,
MLPRegressor` gives fastbp's estimators, which fit scikit-learn's model for the same
arguments and random_state (see fastbp.estimators); `fastbp.unpatch_sklearn()` puts
scikit-learn's classes back. Names bound before the patch (an earlier
`from sklearn.neural_network import MLPClassifier`) keep the class they were bound to.

From the command line, a script runs patched without edits:

    python -m fastbp.patch SCRIPT.py [ARGS...]
"""
import os
import runpy
import sys

NAMES = ("MLPClassifier", "MLPRegressor")
# scikit-learn's modules that export the MLPs
_MODULES = ("sklearn.neural_network", "sklearn.neural_network._multilayer_perceptron")
_originals = {}


def patch_sklearn():
    """Make scikit-learn's MLPClassifier and MLPRegressor fastbp's, for imports from now on."""
    import importlib

    from . import estimators
    for module_name in _MODULES:
        module = importlib.import_module(module_name)
        for name in NAMES:
            current = getattr(module, name)
            if current is not getattr(estimators, name):
                _originals[(module_name, name)] = current
                setattr(module, name, getattr(estimators, name))


def unpatch_sklearn():
    """Put scikit-learn's own classes back (nothing to do when not patched)."""
    import importlib
    for (module_name, name), original in list(_originals.items()):
        setattr(importlib.import_module(module_name), name, original)
        del _originals[(module_name, name)]


def is_patched():
    """True while scikit-learn's MLPs are fastbp's."""
    return bool(_originals)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m fastbp.patch SCRIPT.py [ARGS...]\n\nRuns SCRIPT.py with "
              "scikit-learn's MLPClassifier and MLPRegressor replaced by fastbp's.",
              file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    script = argv[0]
    try:
        open(script).close()
    except OSError as e:
        print(f"fastbp.patch: cannot open script {script!r}: {e.strerror}", file=sys.stderr)
        return 2
    patch_sklearn()
    sys.argv = argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))   # as `python SCRIPT.py`
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
