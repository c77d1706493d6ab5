"""What a bf16 model's weight copies give (kernels/bf16.py, weight copies; issue 15 §3).

Trains one workload in one process with three Trainers, their epochs alternating round-robin
(this machine's slow phases hit all three alike): float32 (precision "full"), bf16 with the epoch's
bf16 copies of W (the default), and bf16 with every product rounding and packing W itself
(engine.BF16_WEIGHT_COPIES = False: the products as before the copies; the same results
bit for bit).
Samples/s of Trainer.fit(X, y, epochs=1), Python included, median (min-max) of --rounds
epochs after one untimed; SGD with momentum, float32 models, the workloads of
benchmarks/workloads.py; `compare.py`'s core-sharing measure before and after.

    python benchmarks/bf16_weight_copies.py mnist --target parallel --rounds 7
"""
import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workloads import WORKLOADS, core_sharing, cpu_model_and_flags, make_data  # noqa: E402

from fastbp import Trainer, engine  # noqa: E402

ROWS = {"mnist": 16384, "wide": 4096}
KINDS = {"float32": ("full", True), "bf16, weight copies": ("bf16", True),
         "bf16, W packed per product": ("bf16", False)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workload", choices=list(WORKLOADS))
    p.add_argument("--target", default="parallel", choices=["cpu", "parallel"])
    p.add_argument("--rounds", type=int, default=7,
                   help="timed epochs of each, alternating (default 7)")
    args = p.parse_args(argv)
    layers, batch, loss = WORKLOADS[args.workload]
    n = ROWS.get(args.workload, 8192)
    X, y = make_data(args.workload, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)      # bf16 emulated on this CPU
        trainers = {kind: Trainer(layers, loss=loss, optimizer="sgd", lr=0.01, momentum=0.9,
                                  batch_size=batch, target=args.target, precision=precision,
                                  seed=0)
                    for kind, (precision, _) in KINDS.items()}

    def epoch(kind):
        engine.BF16_WEIGHT_COPIES = KINDS[kind][1]      # read when the fit's epochs start
        start = time.perf_counter()
        trainers[kind].fit(X, y, epochs=1, progress=False)
        return n / (time.perf_counter() - start)

    print(f"CPU: {cpu_model_and_flags()[0]}; {args.workload} {layers}, batch {batch}, "
          f"target {args.target}, {n} rows an epoch")
    for kind in trainers:
        epoch(kind)
    sharing = core_sharing()
    rates = {kind: [] for kind in trainers}
    for _ in range(args.rounds):
        for kind in trainers:
            rates[kind].append(epoch(kind))
    print(f"core sharing (1.0: cores of their own) {sharing:.2f} before, "
          f"{core_sharing():.2f} after")
    full = np.median(rates["float32"])
    for kind, r in rates.items():
        print(f"{kind:28s} {np.median(r):>10,.0f} samples/s ({min(r):,.0f}-{max(r):,.0f})  "
              f"{np.median(r) / full:.2f}x float32")


if __name__ == "__main__":
    main()
