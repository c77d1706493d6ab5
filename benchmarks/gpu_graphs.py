"""target='cuda' with and without CUDA graphs, against PyTorch eager on the same GPU.

For every DESIGN workload at batch 128 and 1024 (float32, SGD with momentum, the data of
compare.py --cuda): fastbp's median epoch with the captured graphs (the default), the same
with plain launches (FASTBP_CUDA_GRAPHS=0), and PyTorch eager (compare.py's); per step and
per second, the launch path each fastbp run took (`CudaNetwork.launch_path`: graph, plain
or graph+plain, with the capture error if any), and whether the two fastbp runs ended
with the same parameters bit for bit (they must). The first epoch, which captures the
graphs, is not timed but printed. With --tiles, also the graphs with every product on the
smaller tiles (cuda_runner.LARGE_TILE_MIN_BLOCKS raised past any grid): what the runner's
per-launch choice of the larger tiles gains; its params must be the same bit for bit too.

    python benchmarks/gpu_graphs.py [--rounds 3] [--workloads tiny deep] [--batches 128]
                                    [--tiles]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import LR, N_SAMPLES, _torch_cuda  # noqa: E402
from workloads import WORKLOADS, make_arrays  # noqa: E402


def fastbp_run(layers, loss, X, y, batch, rounds, graphs, opt="sgd", small_tiles=False):
    """(median epoch s, first epoch s, launch path, counts, graph error, params, the
    graphs' stream)."""
    from fastbp import Trainer
    from fastbp.kernels import cuda_graphs, cuda_runner
    os.environ[cuda_graphs.GRAPHS_ENV] = "1" if graphs else "0"
    cuda_runner.LARGE_TILE_MIN_BLOCKS = 2**62 if small_tiles else None
    t = Trainer(layers, loss=loss, optimizer=opt, lr=LR[opt], batch_size=batch,
                momentum=0.9 if opt == "sgd" else 0.0, target="cuda", seed=0)
    h = t.fit(X, y, epochs=rounds + 1, progress=False)
    net = t.engine.device()
    return (float(np.median(h["time"][1:])), float(h["time"][0]), net.launch_path,
            dict(net.launch_counts), net.graph_error, t.params.copy(), net.graph_stream)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--batches", nargs="+", type=int, default=[128, 1024])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--samples", type=int, help="rows per data set (default: compare.py's)")
    p.add_argument("--no-plain", action="store_true",
                   help="leave out the plain launches (its columns then compare the graphs "
                        "with themselves)")
    p.add_argument("--tiles", action="store_true",
                   help="also time the graphs with every product on the smaller tiles")
    args = p.parse_args()
    from fastbp.kernels import cuda_backend, cuda_graphs
    print(f"GPU: {cuda_backend.describe()}; sgd + momentum, float32; median of {args.rounds} "
          f"epochs after one untimed; {time.strftime('%Y-%m-%d %H:%M')}; GRAPH_STEPS "
          f"{cuda_graphs.GRAPH_STEPS}\n")
    print("| workload | batch | steps | path | graph samples/s (ms/step) | plain samples/s "
          "(ms/step) | torch eager samples/s (ms/step) | graph/plain | graph/eager | "
          "first epoch graph / plain s | same params |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
    errors, tiles = [], []
    for name in args.workloads:
        layers, _, loss = WORKLOADS[name]
        for batch in args.batches:
            rows = args.samples or max(N_SAMPLES[name] * 4, 64 * batch)
            X, y = make_arrays(layers, loss, rows)
            steps = -(-rows // batch)
            cell = lambda s: f"{rows / s:,.0f} ({1e3 * s / steps:.3f})"    # noqa: E731
            g = fastbp_run(layers, loss, X, y, batch, args.rounds, True)
            pl = g if args.no_plain else fastbp_run(layers, loss, X, y, batch, args.rounds,
                                                    False)
            if args.tiles:
                st = fastbp_run(layers, loss, X, y, batch, args.rounds, True, small_tiles=True)
                tiles.append(f"| {name} | {batch} | {cell(g[0])} | {cell(st[0])} | "
                             f"{st[0] / g[0]:.2f}x | "
                             f"{'yes' if np.array_equal(g[5], st[5]) else 'NO'} |")
            if g[4]:
                errors.append(f"{name}/{batch}: {g[4]}")
            if g[6] not in (None, "default"):
                errors.append(f"{name}/{batch}: graphs on {g[6]}")
            torch_cell, vs_eager = "(not run)", ""
            if not args.no_torch:
                try:
                    eager = _torch_cuda(layers, batch, loss, X, y, "sgd", args.rounds)
                    torch_cell = f"{eager:,.0f} ({1e3 * rows / eager / steps:.3f})"
                    vs_eager = f"{rows / g[0] / eager:.2f}x"
                except Exception as e:       # no torch, or torch without CUDA
                    torch_cell = f"({type(e).__name__}: {str(e)[:50]})"
            counts = g[3]
            path = f"{g[2]} ({counts.get('graph_launches', 0)} graphs/epoch)"
            same = "yes" if np.array_equal(g[5], pl[5]) else \
                f"NO (max diff {np.max(np.abs(g[5] - pl[5])):.3g})"
            print(f"| {name} | {batch} | {steps} | {path} | {cell(g[0])} | {cell(pl[0])} | "
                  f"{torch_cell} | {pl[0] / g[0]:.2f}x | {vs_eager} | {g[1]:.3f} / "
                  f"{pl[1]:.3f} | {same} |", flush=True)
    os.environ.pop(cuda_graphs.GRAPHS_ENV, None)
    print("\ncapture errors and stream notes: " + ("; ".join(errors) if errors else "none"))
    if tiles:
        print("\nthe per-launch choice of the larger product tiles (graphs both):\n\n"
              "| workload | batch | chosen tiles samples/s (ms/step) | smaller tiles only | "
              "speed-up | same params |\n|---|---:|---:|---:|---:|---|")
        print("\n".join(tiles))


if __name__ == "__main__":
    main()
