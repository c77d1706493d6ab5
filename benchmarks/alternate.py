"""Two checkouts of fastbp timed alternately, each run in a fresh process: the before/after
measurement of a change (this machine's slow phases hit both sides alike).

    git worktree add /tmp/before <commit>
    python benchmarks/alternate.py /tmp/before . --runs 3

Each run prints one line per checkout:
- `Trainer` epochs of the tiny, deep and mnist workloads: float32 (and mnist in float64,
  the estimators' dtype), target="parallel", SGD with momentum and Adam; samples/s, median
  of 7 epochs after one untimed;
- `MLPClassifier(random_state=0)` on digits (scikit-learn's defaults, 200 epochs) with relu,
  tanh and logistic hidden units; seconds, median of 5 fits after one untimed.

Environment variables pass through (e.g. NUMBA_CPU_NAME=x86-64-v3 NUMBA_CPU_FEATURES=""
OPENBLAS_CORETYPE=Haswell FASTBP_PREBUILT=0 to play an AVX2 machine); each checkout gets a
Numba cache folder of its own under --cache.
"""
import argparse
import os
import subprocess
import sys
import tempfile

PROBE = r'''
import sys, time, warnings
root = sys.argv[1]
sys.path[:0] = [root, root + "/benchmarks"]
warnings.simplefilter("ignore")
import numpy as np
import fastbp
assert fastbp.__file__.startswith(root), fastbp.__file__
from workloads import WORKLOADS, make_data
from fastbp import MLPClassifier, Trainer
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
out = []
runs = [("tiny", 65536, "sgd", "float32"), ("tiny", 65536, "adam", "float32"),
        ("deep", 16384, "adam", "float32"), ("mnist", 16384, "sgd", "float32"),
        ("mnist", 16384, "adam", "float32"), ("mnist", 16384, "adam", "float64")]
for name, n, opt, dtype in runs:
    layers, batch, loss = WORKLOADS[name]
    X, y = make_data(name, n)
    X = X.astype(dtype)
    t = Trainer(layers, loss=loss, optimizer=opt, lr=0.01,
                momentum=0.9 if opt == "sgd" else 0.0, batch_size=batch,
                target="parallel", dtype=dtype, seed=0)
    t.fit(X, y, epochs=1, progress=False)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        t.fit(X, y, epochs=1, progress=False)
        times.append(time.perf_counter() - start)
    f64 = " f64" if dtype == "float64" else ""
    out.append(f"{name}/{opt}{f64} {n / np.median(times):,.0f}/s")
X, y = load_digits(return_X_y=True)
X_train, _, y_train, _ = train_test_split(X / 16.0, y, random_state=0, stratify=y)
for activation in ("relu", "tanh", "logistic"):
    MLPClassifier(random_state=0, activation=activation).fit(X_train, y_train)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        MLPClassifier(random_state=0, activation=activation).fit(X_train, y_train)
        times.append(time.perf_counter() - start)
    out.append(f"digits {activation} {np.median(times):.3f} s")
print(" | ".join(out), flush=True)
'''


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkouts", nargs=2, help="two fastbp checkouts (folders)")
    p.add_argument("--runs", type=int, default=3, help="alternations")
    p.add_argument("--cache", default=None,
                   help="folder for the Numba caches (default: a new temporary one)")
    args = p.parse_args()
    roots = [os.path.abspath(c) for c in args.checkouts]
    for root in roots:
        if not os.path.isfile(os.path.join(root, "fastbp", "__init__.py")):
            sys.exit(f"alternate.py: {root} is not a fastbp checkout (no fastbp/__init__.py)")
    cache = args.cache or tempfile.mkdtemp(prefix="fastbp-alternate-")
    for run in range(args.runs + 1):          # the first round compiles, untimed
        for i, root in enumerate(roots):
            env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(cache, str(i)))
            result = subprocess.run([sys.executable, "-c", PROBE, root], env=env,
                                    capture_output=True, text=True)
            if result.returncode != 0:
                sys.exit(f"alternate.py: the probe failed in {root}:\n{result.stderr[-2000:]}")
            if run:
                print(f"{root}: {result.stdout.strip()}", flush=True)


if __name__ == "__main__":
    main()
