"""fastbp.patch_sklearn / unpatch_sklearn and `python -m fastbp.patch SCRIPT.py`, each in a
fresh interpreter (patching is process-wide)."""
import json
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    from sklearn.datasets import load_iris
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    warnings.simplefilter("ignore")
    X, y = load_iris(return_X_y=True)
    clf = MLPClassifier(hidden_layer_sizes=(6,), max_iter=20, random_state=0).fit(X, y)
    reg = MLPRegressor(hidden_layer_sizes=(6,), max_iter=20, random_state=0).fit(X[:, :3], X[:, 3])
    print(json.dumps({"argv": sys.argv[1:], "classes": [type(clf).__module__, type(reg).__module__],
                      "coefs": [c.ravel().tolist() for c in clf.coefs_ + reg.coefs_]}))
""")


def _run(args, cwd):
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    return out


def test_patch_and_unpatch_in_a_fresh_interpreter(tmp_path):
    code = textwrap.dedent("""
        import fastbp, sklearn.neural_network as nn
        fastbp.patch_sklearn()
        from sklearn.neural_network import MLPClassifier, MLPRegressor
        assert MLPClassifier is fastbp.MLPClassifier and MLPRegressor is fastbp.MLPRegressor
        fastbp.patch_sklearn()                      # twice is harmless
        fastbp.unpatch_sklearn()
        from sklearn.neural_network import MLPClassifier, MLPRegressor
        from sklearn.neural_network._multilayer_perceptron import MLPClassifier as Inner
        assert MLPClassifier.__module__ == "sklearn.neural_network._multilayer_perceptron"
        assert MLPRegressor.__module__ == MLPClassifier.__module__ and Inner is MLPClassifier
        fastbp.unpatch_sklearn()                    # and unpatching twice too
        print("ok")
    """)
    assert _run(["-c", code], tmp_path).stdout.strip() == "ok"


def test_a_script_runs_patched_and_gives_scikit_learns_model(tmp_path):
    (tmp_path / "script.py").write_text(SCRIPT)
    plain = json.loads(_run(["script.py", "a", "b"], tmp_path).stdout)
    patched = json.loads(_run(["-m", "fastbp.patch", "script.py", "a", "b"], tmp_path).stdout)
    assert plain["classes"] == ["sklearn.neural_network._multilayer_perceptron"] * 2
    assert patched["classes"] == ["fastbp.estimators"] * 2
    assert patched["argv"] == plain["argv"] == ["a", "b"]
    for a, b in zip(patched["coefs"], plain["coefs"]):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_a_missing_script_is_a_one_line_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fastbp.patch", "nope.py"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == 2 and "nope.py" in out.stderr and "Traceback" not in out.stderr
