"""fastbp.distributed on a Dask LocalCluster: the mnist workload (784-256-128-10, batch 128,
SGD with momentum) with 1 and 2 single-threaded workers (target='cpu'), against
single-process training on the same data. Cluster start-up and persisting the data are left
out of the timing.

    python benchmarks/distributed_bench.py [--local-steps 10] [--epochs 3]

Reports samples/s, scaling efficiency (2-worker samples/s / (2 x 1-worker)), bytes sent per
round (2 x flat buffers x workers) and test accuracy after the same number of epochs.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workloads import WORKLOADS  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--samples", type=int, default=16384)
    args = p.parse_args()

    import dask.array as da
    from distributed import Client, LocalCluster

    from fastbp import Trainer
    from fastbp.distributed import fit

    layers, batch, _ = WORKLOADS["mnist"]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.samples + 4096, layers[0])).astype(np.float32)
    y = X[:, :10].argmax(axis=1)                       # learnable synthetic labels
    X_tr, y_tr, X_te, y_te = X[:args.samples], y[:args.samples], X[args.samples:], y[args.samples:]
    kw = dict(optimizer="sgd", momentum=0.9, lr=0.01, batch_size=batch, seed=0)

    single = Trainer(layers, **kw)
    single.fit(X_tr[:batch], y_tr[:batch], epochs=1, progress=False)       # JIT
    single = Trainer(layers, **kw)
    t0 = time.perf_counter()
    single.fit(X_tr, y_tr, epochs=args.epochs, progress=False)
    t_single = time.perf_counter() - t0
    rows = []
    rows.append(("single process", 1, args.samples * args.epochs / t_single, "-",
                 single.evaluate(X_te, y_te)["accuracy"]))
    base = None
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=":0") as cluster, Client(cluster) as client:
            Xd = da.from_array(X_tr, chunks=(args.samples // 8, layers[0]))
            yd = da.from_array(y_tr, chunks=args.samples // 8)
            warm = Trainer(layers, **kw)
            n = batch * workers                         # JIT on every worker: one round
            fit(warm, da.from_array(X_tr[:n], chunks=(batch, layers[0])),
                da.from_array(y_tr[:n], chunks=batch), client=client, epochs=1,
                progress=False)
            t = Trainer(layers, **kw)
            t0 = time.perf_counter()
            fit(t, Xd, yd, client=client, epochs=args.epochs, local_steps=args.local_steps,
                random_state=0, progress=False)
            seconds = time.perf_counter() - t0
            sps = args.samples * args.epochs / seconds
            base = base or sps
            rows.append((f"{workers} worker(s), K={args.local_steps}", workers, sps,
                         f"{t.distributed_stats['bytes_per_round'] / 1e6:.1f} MB",
                         t.evaluate(X_te, y_te)["accuracy"]))
            rows[-1] += (sps / (workers * base),)
    print(f"mnist workload, {args.samples} samples, {args.epochs} epochs' worth of samples, "
          f"batch {batch}")
    print("| run | samples/s | scaling efficiency | sent per round | test accuracy |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        eff = f"{row[5]:.0%}" if len(row) > 5 else "-"
        print(f"| {row[0]} | {row[2]:,.0f} | {eff} | {row[3]} | {row[4]:.3f} |")


if __name__ == "__main__":
    main()
