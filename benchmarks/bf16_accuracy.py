"""Held-out accuracy of precision="bf16" against precision="full" (issue 15: within 0.5
points), on digits and on an mnist-shaped task, with networks whose products take the bf16
path (gemm.bf16_product), seed by seed, and the fit times side by side.

    python benchmarks/bf16_accuracy.py                 # 5 seeds, target='parallel'
    python benchmarks/bf16_accuracy.py --seeds 3 --target cpu

digits: scikit-learn's 8x8 digits (1,797 images), standardised, 75/25 split, 64-256-128-10,
batch 128, Adam 1e-3, 40 epochs. mnist-shaped: 30,000 rows of 784 features and 10 classes
from make_classification (64 informative, 64 redundant features, 2 clusters a class),
standardised, 80/20 split, 784-256-128-10, batch 128, Adam 1e-3, 8 epochs.
"""
import argparse
import time
import warnings

import numpy as np


def tasks():
    from sklearn.datasets import load_digits, make_classification
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    def split(X, y, test_size):
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=test_size, random_state=0,
                                              stratify=y)
        scaler = StandardScaler().fit(Xtr)
        return (scaler.transform(Xtr).astype(np.float32), ytr,
                scaler.transform(Xte).astype(np.float32), yte)

    X, y = load_digits(return_X_y=True)
    yield "digits", [64, 256, 128, 10], 40, split(X, y, 0.25)
    X, y = make_classification(n_samples=30000, n_features=784, n_informative=64,
                               n_redundant=64, n_classes=10, n_clusters_per_class=2,
                               random_state=0)
    yield "mnist-shaped", [784, 256, 128, 10], 8, split(X, y, 0.2)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--target", default="parallel", choices=["cpu", "parallel"])
    args = p.parse_args()
    from fastbp import Trainer
    warnings.simplefilter("ignore", UserWarning)     # the emulation's note, on other CPUs
    print("| task | seed | full: accuracy | bf16: accuracy | difference (points) | "
          "full: fit s | bf16: fit s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, layers, epochs, (Xtr, ytr, Xte, yte) in tasks():
        diffs = []
        for seed in range(args.seeds):
            acc, secs = {}, {}
            for precision in ("full", "bf16"):
                t = Trainer(layers, batch_size=128, lr=1e-3, seed=seed, target=args.target,
                            precision=precision)
                t.fit(Xtr[:256], ytr[:256], epochs=1, progress=False)   # compile, untimed
                t.reset()
                start = time.perf_counter()
                t.fit(Xtr, ytr, epochs=epochs, progress=False)
                secs[precision] = time.perf_counter() - start
                acc[precision] = float(np.mean(t.predict(Xte) == yte))
            diffs.append(100 * (acc["bf16"] - acc["full"]))
            print(f"| {name} | {seed} | {acc['full']:.4f} | {acc['bf16']:.4f} | "
                  f"{diffs[-1]:+.2f} | {secs['full']:.2f} | {secs['bf16']:.2f} |", flush=True)
        print(f"| {name} | mean | | | {np.mean(diffs):+.2f} (worst {min(diffs):+.2f}) | | |")


if __name__ == "__main__":
    main()
