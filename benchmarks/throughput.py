"""fastbp training throughput on the DESIGN.md workloads, and time to the end of the first
epoch in a fresh process (cold: empty Numba cache; warm: cached).

    python benchmarks/throughput.py                 # tiny and mnist, cpu and parallel
    python benchmarks/throughput.py --workloads tiny mnist wide deep regression
    python benchmarks/throughput.py --first-epoch   # cold and warm first epoch
"""
import argparse
import os
import shutil
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from workloads import WORKLOADS, flops_per_sample, make_data  # noqa: E402

FIRST_EPOCH = """
import time; t0 = time.perf_counter()
import sys; sys.path.insert(0, {bench!r})
from workloads import WORKLOADS, make_data
from fastbp import Trainer
layers, batch, loss = WORKLOADS[{name!r}]
X, y = make_data({name!r}, {n})
t = Trainer(layers, loss=loss, batch_size=batch, optimizer="sgd", lr=0.01, momentum=0.9,
            target={target!r}, seed=0)
h = t.fit(X, y, epochs=1, progress=False)
print(time.perf_counter() - t0)
"""


def throughput(name, target, n, repeats):
    from fastbp import Trainer
    layers, batch, loss = WORKLOADS[name]
    X, y = make_data(name, n)
    t = Trainer(layers, loss=loss, batch_size=batch, optimizer="sgd", lr=0.01, momentum=0.9,
                target=target, seed=0)
    t.fit(X, y, epochs=1, progress=False)                     # warm the JIT
    h = t.fit(X, y, epochs=repeats, progress=False)["time"][-repeats:]
    return n / np.median(h)


def first_epoch(name, target, n):
    import fastbp
    cache = os.path.join(os.path.dirname(fastbp.__file__), "kernels", "__pycache__")
    code = FIRST_EPOCH.format(bench=os.path.dirname(os.path.abspath(__file__)), name=name,
                              n=n, target=target)
    shutil.rmtree(cache, ignore_errors=True)
    cold = float(subprocess.check_output([sys.executable, "-c", code]))
    warm = float(subprocess.check_output([sys.executable, "-c", code]))
    return cold, warm


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workloads", nargs="+", default=["tiny", "mnist"], choices=list(WORKLOADS))
    p.add_argument("--targets", nargs="+", default=["cpu", "parallel"])
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--first-epoch", action="store_true")
    args = p.parse_args()
    print(f"{'workload':<11} {'target':<9} {'samples/s':>11} {'GFLOP/s':>8}")
    for name in args.workloads:
        for target in args.targets:
            sps = throughput(name, target, args.samples, args.repeats)
            gf = sps * flops_per_sample(WORKLOADS[name][0]) / 1e9
            print(f"{name:<11} {target:<9} {sps:>11,.0f} {gf:>8.1f}", flush=True)
    if args.first_epoch:
        print(f"\n{'workload':<11} {'target':<9} {'cold first epoch (s)':>21} {'warm (s)':>9}")
        for name in args.workloads:
            for target in args.targets:
                cold, warm = first_epoch(name, target, args.samples)
                print(f"{name:<11} {target:<9} {cold:>21.2f} {warm:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
