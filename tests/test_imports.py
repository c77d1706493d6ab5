"""README: `fastbp/kernels/cuda_backend.py` is the only module that imports numba.cuda, and
nothing CUDA is imported until a Trainer asks for target='cuda'. Checked in a fresh
interpreter (this one may have imported CUDA for other tests)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUDA_PREFIXES = ("numba.cuda", "numba_cuda", "cuda")

CPU_ONLY = textwrap.dedent("""
    import json, sys
    import numpy as np

    def cuda_modules():
        return sorted(m for m in sys.modules
                      if any(m == p or m.startswith(p + ".") for p in PREFIXES))

    import fastbp
    from fastbp import MLPClassifier, MLPRegressor, Trainer
    from fastbp.cli import main
    report = {"import": cuda_modules()}
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4))
    y = np.arange(40) % 3
    for target in ("cpu", "parallel"):
        t = Trainer([4, 8, 3], seed=0, target=target, n_threads=1)
        t.fit(X, y, epochs=2, validation_data=(X, y), progress=False)
        t.predict(X), t.predict_proba(X), t.evaluate(X, y), t.gradient(X, y)
        t.save("model.npz")
        Trainer.load("model.npz").fit(X, y, epochs=1, progress=False)
    MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(X, y).predict(X)
    MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=3).fit(X, y).score(X, y)
    MLPRegressor(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(X, X[:, 0])
    assert main(["train", "--epochs", "1", "--out", "cli.npz", "--no-progress"]) == 0
    report["cpu work"] = cuda_modules()
    # the check itself sees CUDA once it is asked for (numba-cuda is installed by the
    # test extra; without a GPU the Trainer raises CudaUnavailableError after importing it)
    try:
        Trainer([4, 8, 3], target="cuda")
    except fastbp.CudaUnavailableError:
        pass
    report["after target='cuda'"] = cuda_modules()
    print(json.dumps(report))
""")


def test_nothing_cuda_is_imported_until_target_cuda(tmp_path):
    code = f"PREFIXES = {CUDA_PREFIXES!r}\n" + CPU_ONLY
    # run in tmp_path (model files land there), importing this checkout's fastbp
    path = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=600,
                         env={**os.environ, "PYTHONPATH": path, "NUMBA_ENABLE_CUDASIM": "0"})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["import"] == [], report["import"][:10]
    assert report["cpu work"] == [], report["cpu work"][:10]
    # the probe is not blind: asking for target='cuda' does import numba-cuda
    assert any(m.startswith("numba_cuda") or m.startswith("numba.cuda")
               for m in report["after target='cuda'"]), report
