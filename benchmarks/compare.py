"""Side-by-side training throughput: fastbp vs PyTorch vs JAX vs scikit-learn.

Every contestant trains the same network (ReLU hidden layers, float32) on the same seeded
data with the same batch size and optimizer, whole epochs with reshuffling, after a warm-up
epoch (JIT compiled for everyone). Epochs are interleaved round-robin across contestants, with
a short untimed pause between two (so one library's spin-waiting threads do not slow the
next), and the median of `--rounds` epochs is reported. Peers that are not installed are left
out. fastbp is timed around `Trainer.fit(X, y, epochs=1)`, Python overhead included.

    python benchmarks/compare.py                      # every workload, SGD with momentum
    python benchmarks/compare.py --optimizer adam --workloads tiny mnist
    python benchmarks/compare.py --sweep              # hidden width x batch size
    python benchmarks/compare.py --compile            # cold/warm time to the first epoch
    python benchmarks/compare.py --strategies         # fastbp's parallel strategies
    python benchmarks/compare.py --strategies --dtypes float32 float64
    python benchmarks/compare.py --products           # gemm.py's small products vs BLAS
    python benchmarks/compare.py --memory             # fastbp's peak memory during fit
    python benchmarks/compare.py --memory --breakdown # ... and where it goes, line by line
    python benchmarks/compare.py --estimators         # MLPClassifier vs scikit-learn's
    python benchmarks/compare.py --cuda               # target='cuda' vs PyTorch eager on the GPU
    python benchmarks/compare.py --sparse             # bag-of-words CSR vs scikit-learn, PyTorch

Columns: samples/s; GFLOP/s (6 FLOPs per weight per sample); % of the measured float32
GEMM peak of this machine (NumPy matmul, all cores); fastbp/peer = best fastbp target's
throughput divided by this contestant's. "fastbp parallel bf16" (precision='bf16', only where
the CPU has AVX512-BF16) is not counted as the best fastbp: the summary gives it columns of
its own.

Every run ends with a line saying how much two threads shared one core before and after it
(workloads.core_sharing: 1.0 cores of their own, 2.0 one shared core); --estimators also
leaves out of its medians the rounds run on a shared core.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workloads import (WORKLOADS, bag_of_words, blas_products, core_sharing,  # noqa: E402
                       flops_per_sample, make_arrays)

N_SAMPLES = {"tiny": 16384, "regression": 16384, "deep": 8192, "mnist": 8192, "wide": 4096,
             "tiny-b1": 2048}
LR = {"sgd": 0.01, "adam": 1e-3}
# the CPUs this process may run on (taskset and containers narrow them; os.cpu_count() does not)
THREADS = len(os.sched_getaffinity(0))
COOL_DOWN = 0.3   # seconds between two contestants' epochs (not timed)
# workloads.core_sharing above this: the round ran while the two threads shared one core
SHARED_CORE = 1.3


def workload(name):
    """(layers, batch, loss) of a workload; 'tiny-b1' is tiny at batch size 1."""
    if name == "tiny-b1":
        layers, _, loss = WORKLOADS["tiny"]
        return layers, 1, loss
    return WORKLOADS[name]


# ------------------------------------------------------------------ contestants
# Each factory returns a function that trains one whole epoch (blocking), or raises
# ImportError when the library is missing.

def fastbp_epoch(target, precision="full"):
    def factory(layers, batch, loss, X, y, opt):
        from fastbp import Trainer
        from fastbp.kernels.bf16 import host_has_avx512_bf16
        if precision == "bf16" and not host_has_avx512_bf16():
            raise ImportError("bf16 is emulated on this CPU: left out")
        t = Trainer(layers, loss=loss, optimizer=opt, lr=LR[opt], momentum=0.9 if opt == "sgd"
                    else 0.0, batch_size=batch, target=target, seed=0, precision=precision)
        return lambda: t.fit(X, y, epochs=1, progress=False)
    return factory


def torch_training(layers, batch, loss, X, y, opt, device="cpu", compile_mode=None,
                   **optim_kw):
    """A function training one epoch of the same network in PyTorch on `device`, the data
    moved there once and reshuffled there every epoch: eager, or with the model under
    torch.compile(mode=compile_mode) (the last partial batch, if any, compiles once more)."""
    import torch
    torch.manual_seed(0)
    mods = []
    for i, (a, b) in enumerate(zip(layers[:-1], layers[1:])):
        mods.append(torch.nn.Linear(a, b))
        if i < len(layers) - 2:
            mods.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*mods).to(device)
    forward = model if compile_mode is None else torch.compile(model, mode=compile_mode)
    mark_step = (torch.compiler.cudagraph_mark_step_begin if compile_mode == "reduce-overhead"
                 else lambda: None)
    if opt == "sgd":
        optim = torch.optim.SGD(model.parameters(), lr=LR[opt], momentum=0.9, **optim_kw)
    else:
        optim = torch.optim.Adam(model.parameters(), lr=LR[opt], **optim_kw)
    crit = torch.nn.CrossEntropyLoss() if loss == "cross_entropy" else torch.nn.MSELoss()
    Xt, yt = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
    n = X.shape[0]
    gen = torch.Generator(device=device).manual_seed(0)

    def epoch():
        perm = torch.randperm(n, generator=gen, device=device)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            optim.zero_grad(set_to_none=True)
            mark_step()
            crit(forward(Xt[idx]), yt[idx]).backward()
            optim.step()
    return epoch


def torch_epoch(variant):
    def factory(layers, batch, loss, X, y, opt):
        import torch
        torch.set_num_threads(THREADS)
        kw = {"foreach": True} if variant == "foreach" else {"fused": True}
        return torch_training(layers, batch, loss, X, y, opt, **kw)
    return factory


def jax_epoch(layers, batch, loss, X, y, opt):
    import jax
    import jax.numpy as jnp
    key = jax.random.PRNGKey(0)
    params = []
    for a, b in zip(layers[:-1], layers[1:]):
        key, sub = jax.random.split(key)
        bound = np.sqrt(6.0 / a)
        params.append((jax.random.uniform(sub, (a, b), jnp.float32, -bound, bound),
                       jnp.zeros(b, jnp.float32)))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    state = (zeros, zeros, jnp.zeros((), jnp.int32))
    lr = LR[opt]

    def loss_fn(p, xb, yb):
        h = xb
        for W, b in p[:-1]:
            h = jax.nn.relu(h @ W + b)
        out = h @ p[-1][0] + p[-1][1]
        if loss == "cross_entropy":
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), yb[:, None], 1))
        return jnp.mean((out - yb) ** 2)

    def step(carry, batch_data):
        p, (m, v, t) = carry
        g = jax.grad(loss_fn)(p, *batch_data)
        if opt == "sgd":
            m = jax.tree_util.tree_map(lambda mi, gi: 0.9 * mi + gi, m, g)
            p = jax.tree_util.tree_map(lambda pi, mi: pi - lr * mi, p, m)
        else:
            t = t + 1
            m = jax.tree_util.tree_map(lambda mi, gi: 0.9 * mi + 0.1 * gi, m, g)
            v = jax.tree_util.tree_map(lambda vi, gi: 0.999 * vi + 0.001 * gi * gi, v, g)
            c1, c2 = 1 - 0.9 ** t, 1 - 0.999 ** t
            p = jax.tree_util.tree_map(
                lambda pi, mi, vi: pi - lr / c1 * mi / (jnp.sqrt(vi / c2) + 1e-8), p, m, v)
        return (p, (m, v, t)), None

    n = X.shape[0]
    steps = n // batch            # the workloads' sample counts are multiples of the batch

    @jax.jit
    def run(p, s, Xd, yd, perm):
        Xb = Xd[perm].reshape((steps, batch) + Xd.shape[1:])
        yb = yd[perm].reshape((steps, batch) + yd.shape[1:])
        (p, s), _ = jax.lax.scan(step, (p, s), (Xb, yb))
        return p, s

    Xd, yd = jnp.asarray(X), jnp.asarray(y if loss == "cross_entropy" else y)
    rng = np.random.default_rng(0)
    box = [params, state]

    def epoch():
        p, s = run(box[0], box[1], Xd, yd, jnp.asarray(rng.permutation(n)))
        jax.block_until_ready(p)
        box[0], box[1] = p, s
    return epoch


def sklearn_epoch(layers, batch, loss, X, y, opt):
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    cls = MLPClassifier if loss == "cross_entropy" else MLPRegressor
    kw = dict(solver="sgd", momentum=0.9, nesterovs_momentum=False) if opt == "sgd" else \
        dict(solver="adam")
    est = cls(hidden_layer_sizes=layers[1:-1], batch_size=batch, learning_rate_init=LR[opt],
              alpha=0.0, random_state=0, **kw)
    classes = np.arange(layers[-1])
    yy = y if loss == "cross_entropy" else y.ravel() if y.shape[1] == 1 else y

    def epoch():
        if loss == "cross_entropy":
            est.partial_fit(X, yy, classes=classes)
        else:
            est.partial_fit(X, yy)
    return epoch


CONTESTANTS = {
    "fastbp cpu": fastbp_epoch("cpu"),
    "fastbp parallel": fastbp_epoch("parallel"),
    "fastbp parallel bf16": fastbp_epoch("parallel", "bf16"),   # with AVX512-BF16 only
    "torch eager foreach": torch_epoch("foreach"),
    "torch eager fused": torch_epoch("fused"),
    "jax jit+scan": jax_epoch,
    "scikit-learn": sklearn_epoch,
}


# --------------------------------------------------------------------- measuring

def gemm_peak(n=2048, repeats=5):
    """float32 GFLOP/s of NumPy's matmul on all cores."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(name, opt, rounds, n=None, layers=None, batch=None, skip=()):
    """{contestant: median samples/s} for one workload, epochs interleaved."""
    wl_layers, wl_batch, loss = workload(name) if name in N_SAMPLES else (None, None, None)
    layers = layers or wl_layers
    batch = batch or wl_batch
    loss = loss or "cross_entropy"
    n = n or N_SAMPLES[name]
    X, y = make_arrays(layers, loss, n)
    epochs = {}
    for cname, factory in CONTESTANTS.items():
        if cname in skip:
            continue
        try:
            fn = factory(layers, batch, loss, X, y, opt)
            fn()                                       # warm-up: compile / allocate
        except ImportError:
            continue
        except Exception as e:  # noqa: BLE001 - a peer's failure is reported, not fatal
            print(f"  [{cname} failed on {name}: {type(e).__name__}: {e}]", file=sys.stderr)
            continue
        epochs[cname] = fn
    times = {c: [] for c in epochs}
    for _ in range(rounds):
        for cname, fn in epochs.items():
            time.sleep(COOL_DOWN)   # let the previous library's spinning threads go idle
            times[cname].append(_timed(fn))
    return {c: n / np.median(t) for c, t in times.items()}


def print_table(results, peak, flops):
    print("| workload | contestant | samples/s | GFLOP/s | % peak | fastbp/peer |")
    print("|---|---|---:|---:|---:|---:|")
    for name, res in results.items():
        best_fastbp = max(v for c, v in res.items()      # float32 against float32
                          if c.startswith("fastbp") and not c.endswith("bf16"))
        for cname, sps in res.items():
            gf = sps * flops[name] / 1e9
            ratio = "" if cname.startswith("fastbp") else f"{best_fastbp / sps:.2f}x"
            print(f"| {name} | {cname} | {sps:,.0f} | {gf:.1f} | {100 * gf / peak:.0f}% | "
                  f"{ratio} |", flush=True)


def summary(results):
    """The best float32 fastbp against the best peer (all float32), and where it ran, the
    bf16 products' contestant against both (its own precision: a column of its own; the
    panel it ran on named: AMX tiles, AVX512-BF16)."""
    from fastbp.kernels.bf16 import panel_kind
    print(f"\n| workload | best fastbp | best peer | ratio | bf16 ({panel_kind() or 'not run'}) "
          "/ fastbp | bf16 / peer |")
    print("|---|---|---|---:|---:|---:|")
    for name, res in results.items():
        fb = max((v, c) for c, v in res.items()
                 if c.startswith("fastbp") and not c.endswith("bf16"))
        peers = [(v, c) for c, v in res.items() if not c.startswith("fastbp")]
        if not peers:
            continue
        pb = max(peers)
        bf = max((v for c, v in res.items() if c.endswith("bf16")), default=None)
        bf_cols = (f"{bf / fb[0]:.2f}x | {bf / pb[0]:.2f}x" if bf else "- | -")
        print(f"| {name} | {fb[1]} {fb[0]:,.0f}/s | {pb[1]} {pb[0]:,.0f}/s | "
              f"{fb[0] / pb[0]:.2f}x | {bf_cols} |")


FIRST_EPOCH = """
import time; t0 = time.perf_counter()
import numpy as np
from fastbp import Trainer
layers = {layers!r}
rng = np.random.default_rng(0)
X = rng.standard_normal((4096, layers[0])).astype(np.float32)
y = rng.integers(0, layers[-1], size=4096)
t = Trainer(layers, batch_size=64, optimizer="sgd", momentum=0.9, lr=0.01, target={target!r})
h = t.fit(X, y, epochs=1, progress=False)
print(time.perf_counter() - t0, h["time"][0])
"""


def compile_times(targets=("cpu", "parallel")):
    """Time from `import fastbp` to the end of the first epoch in a new process with an empty
    Numba cache: with the kernels the package ships compiled (kernels/prebuilt.py; "-" where
    it ships none for this CPU) and compiling them here; then warm (cached), for 2 and 16
    layers: compile time must not grow with depth."""
    from fastbp.kernels.prebuilt import shipped_dir
    ships = shipped_dir() is not None
    print("| layers | target | cold, shipped kernels (s) | cold, compiled here (s) | warm (s) | "
          "epoch itself (s) |")
    print("|---|---|---:|---:|---:|---:|")
    for depth in (2, 16):
        layers = [64] + [64] * (depth - 1) + [10]
        for target in targets:
            code = FIRST_EPOCH.format(layers=layers, target=target)
            times = {}
            for shipped in ("", "0") if ships else ("0",):
                with tempfile.TemporaryDirectory() as cache:
                    env = dict(os.environ, NUMBA_CACHE_DIR=cache, FASTBP_PREBUILT=shipped)
                    run = lambda: subprocess.check_output([sys.executable, "-c", code], env=env)
                    times[shipped] = run().split()
                    if shipped == "0":
                        times["warm"] = run().split()
            cold_shipped = f"{float(times[''][0]):.2f}" if ships else "-"
            print(f"| {depth} | {target} | {cold_shipped} | {float(times['0'][0]):.2f} | "
                  f"{float(times['warm'][0]):.2f} | {float(times['warm'][1]):.3f} |", flush=True)


def sweep(opt, rounds, skip):
    """Throughput over hidden width x batch size (a 256-w-w-10 network)."""
    widths = [32, 128, 512, 2048]
    batches = [1, 16, 128, 1024]
    print("| width | batch | " + " | ".join(c for c in CONTESTANTS if c not in skip) +
          " | fastbp/best peer |")
    print("|---|---|" + "---:|" * (len([c for c in CONTESTANTS if c not in skip]) + 1))
    for w in widths:
        for b in batches:
            layers = [256, w, w, 10]
            fps = flops_per_sample(layers)
            n = int(min(16384, max(4 * b, 2e9 / fps)) // b * b)   # ~0.1-1 s per epoch
            res = measure(f"w{w}-b{b}", opt, rounds, n=n, layers=layers, batch=b, skip=skip)
            cells = [f"{res[c]:,.0f}" if c in res else "-" for c in CONTESTANTS if c not in skip]
            fb = max(v for c, v in res.items()
                     if c.startswith("fastbp") and not c.endswith("bf16"))
            peers = [v for c, v in res.items() if not c.startswith("fastbp")]
            ratio = f"{fb / max(peers):.2f}x" if peers else ""
            print(f"| {w} | {b} | " + " | ".join(cells) + f" | {ratio} |", flush=True)


def strategies(rounds, dtypes=("float32",)):
    """fastbp target='parallel' with each strategy forced, over networks of growing size, in
    each dtype: the measurements behind fastbp.kernels.choose_strategy's thresholds. The
    64-100-10 network at batch 200 is digits at scikit-learn's defaults."""
    from fastbp import Trainer
    from fastbp.kernels import choose_strategy, training_plan
    nets = [([64, 32, 10], 32), ([16, 64, 64, 2], 32), ([64, 64, 64, 10], 64),
            ([64, 64, 64, 10], 128), ([64, 100, 10], 200), ([128] * 9 + [10], 64),
            ([256, 128, 128, 10], 128), ([256, 256, 256, 10], 128),
            ([784, 256, 128, 10], 128), ([512, 512, 512, 10], 256),
            ([784, 1024, 1024, 10], 256)]
    print("| dtype | layers | batch | MFLOP/step | serial | chunks | chosen |")
    print("|---|---|---|---:|---:|---:|---|")
    for dtype in dtypes:
        for layers, batch in nets:
            n = int(min(16384, max(8 * batch, 3e9 / flops_per_sample(layers))) // batch * batch)
            X, y = make_arrays(layers, "cross_entropy", n, dtype)
            runs = {}
            for strategy in ("serial", "chunks"):
                t = Trainer(layers, batch_size=batch, optimizer="sgd", momentum=0.9, lr=0.01,
                            target="parallel", dtype=dtype, seed=0)
                t.engine.train_plan = training_plan("parallel", layers, batch, THREADS,
                                                    strategy)
                t.fit(X, y, epochs=1, progress=False)
                runs[strategy] = t
            times = {s: [] for s in runs}
            for _ in range(rounds):
                for s, t in runs.items():
                    time.sleep(COOL_DOWN)
                    times[s].append(_timed(lambda: t.fit(X, y, epochs=1, progress=False)))
            sps = {s: n / np.median(v) for s, v in times.items()}
            best = max(sps, key=sps.get)
            chosen = choose_strategy(layers, batch, THREADS, np.dtype(dtype).itemsize)
            mark = "" if chosen == best else f" (best: {best})"
            print(f"| {dtype} | {'-'.join(map(str, layers))} | {batch} | "
                  f"{flops_per_sample(layers) * batch / 1e6:.1f} | " +
                  " | ".join(f"{sps[s]:,.0f}" for s in ("serial", "chunks")) +
                  f" | {chosen}{mark} |", flush=True)


def products(rounds):
    """Each product of a training step as the kernels run it (the rows of one chunk of the
    automatic plan), through fastbp.kernels.gemm's SIMD loops and through BLAS (np.dot in
    Numba, as the kernels call it, on one thread): the measurements behind gemm.small and
    gemm.small_nt. float32 for the workloads, float64 for scikit-learn's defaults on digits
    (64-100-10, batch 200) and for mnist's shapes (the estimators' float64)."""
    from numba import njit

    from fastbp.engine import single_threaded_blas
    from fastbp.kernels import gemm

    @njit
    def simd(kind, C, A, B, bias, n):       # gemm's loops themselves (its entry points pick)
        for _ in range(n):
            if kind == 0:
                gemm.panels(C, A, A.shape[1], 1, B, A.shape[1], bias, True)
            elif kind == 1:
                gemm.panels(C, A, 1, A.shape[1], B, A.shape[0], C[0], False)
            elif kind == 2:
                gemm.dot_panels(C, A, B)
            else:                            # nt as nn's panels over B transposed
                T = np.empty((A.shape[1], B.shape[0]), dtype=C.dtype)
                gemm.transpose_into(T, B)
                gemm.panels(C, A, A.shape[1], 1, T, A.shape[1], C[0], False)

    blas = blas_products()

    nets = [(name, *WORKLOADS[name][:2], "float32") for name in WORKLOADS]
    nets.append(("digits (sklearn defaults)", [64, 100, 10], 200, "float64"))
    nets.append(("mnist, float64", WORKLOADS["mnist"][0], WORKLOADS["mnist"][1], "float64"))
    with single_threaded_blas():          # as the kernels run BLAS: one thread per chunk
        _products(nets, simd, blas, rounds)


def _products(nets, simd, blas, rounds):
    from fastbp.kernels import choose_strategy, gemm
    rng = np.random.default_rng(0)
    print("| network | product | rows x depth x cols | BLAS us | gemm us | gemm/BLAS | rule |"
          " dZ W^T: dot products us |")
    print("|---|---|---|---:|---:|---:|---|---:|")
    for name, layers, batch, dtype in nets:
        plan = choose_strategy(layers, batch, THREADS, np.dtype(dtype).itemsize)
        rows = batch if plan == "serial" else -(-batch // THREADS)
        itemsize = np.dtype(dtype).itemsize
        seen = set()
        for l, (n_in, n_out) in enumerate(zip(layers[:-1], layers[1:])):
            for kind, label, (M, K, N) in ((0, "A W + b", (rows, n_in, n_out)),
                                           (1, "A^T dZ", (n_in, rows, n_out)),
                                           (2, "dZ W^T", (rows, n_out, n_in))):
                if (kind == 2 and l == 0) or (kind, M, K, N) in seen:
                    continue           # no input gradient for the first layer; repeats
                seen.add((kind, M, K, N))
                A = rng.standard_normal((K, M) if kind == 1 else (M, K)).astype(dtype)
                B = rng.standard_normal((N, K) if kind == 2 else (K, N)).astype(dtype)
                C = np.empty((M, N), dtype=dtype)
                bias = rng.standard_normal(N).astype(dtype)
                reps = max(3, int(2e7 / (M * K * N)))
                best = {}
                # gemm's loops for nt: nn's panels over B transposed; and its dot products
                variants = ((kind, "simd"),) if kind < 2 else ((3, "simd"), (2, "dots"))
                for _ in range(rounds):
                    for label_, fn, k in (("blas", blas, kind),
                                          *((v, simd, k) for k, v in variants)):
                        fn(k, C, A, B, bias, 1)
                        start = time.perf_counter()
                        fn(k, C, A, B, bias, reps)
                        t = (time.perf_counter() - start) / reps
                        best[label_] = min(best.get(label_, np.inf), t)
                if kind < 2:
                    rule = "gemm" if gemm.small(M, K, N, itemsize) else "BLAS"
                else:
                    rule = ("gemm (transposed)" if gemm.nt_by_transpose(M, K, N, itemsize) else
                            "gemm (dots)" if gemm.small_nt(M, K, N, itemsize) else "BLAS")
                dots = f"{best['dots'] * 1e6:.2f}" if "dots" in best else ""
                print(f"| {name} | {label} | {M} x {K} x {N} | {best['blas'] * 1e6:.2f} | "
                      f"{best['simd'] * 1e6:.2f} | {best['simd'] / best['blas']:.2f} | "
                      f"{rule} | {dots} |", flush=True)


def memory(workloads, breakdown=False):
    """Peak memory a fit allocates (tracemalloc: NumPy's and fastbp's buffers; Numba's own
    allocations inside the kernels are not seen) against the budget 1.2 x (training data +
    4 x params): building the Trainer and two epochs, plus the data, with the divergence
    roll-back (the default) and with fit(..., restore_on_divergence=False). `breakdown`:
    also the blocks alive at the end of the first epoch, by the line that allocated them,
    and the transient peak above them."""
    import tracemalloc

    from fastbp import Trainer

    def traced(layers, kw, X, y, restore):
        live = []

        def at_first_epoch_end(trainer, epoch, logs):
            if epoch == 0 and breakdown:
                live.append(tracemalloc.take_snapshot())
        tracemalloc.start(25 if breakdown else 1)  # the Trainer's buffers, the fit's
        t = Trainer(layers, **kw)                   # workspace, slabs and roll-back copy
        t.fit(X, y, epochs=2, progress=False, restore_on_divergence=restore,
              callbacks=[at_first_epoch_end])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return t, peak, (live[0] if live else None)

    print("| workload | data MB | params MB | budget MB | SGD+momentum | Adam "
          "| SGD+momentum, no roll-back | Adam, no roll-back |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    for name in workloads:
        layers, batch, loss = WORKLOADS[name]
        X, y = make_arrays(layers, loss, N_SAMPLES[name])
        data = X.nbytes + y.nbytes
        cells = {}
        for restore in (True, False):
            for opt in ("sgd", "adam"):
                kw = dict(loss=loss, batch_size=batch, optimizer=opt,
                          momentum=0.9 if opt == "sgd" else 0.0, seed=0)
                Trainer(layers, **kw).fit(X[:batch], y[:batch], epochs=1, progress=False)
                t, peak, snap = traced(layers, kw, X, y, restore)
                P = t.params.nbytes
                budget = 1.2 * (data + 4 * P)
                total = data + peak
                over = "" if total <= budget else " (over)"
                cells[restore, opt] = f"{total / 1e6:.2f}{over}"
                if snap is not None:
                    notes.append(_memory_breakdown(name, opt, restore, snap, peak, P))
        print(f"| {name} | {data / 1e6:.2f} | {P / 1e6:.3f} | {budget / 1e6:.2f} | " +
              " | ".join(cells[r, o] for r in (True, False) for o in ("sgd", "adam")) + " |",
              flush=True)
    for note in notes:
        print(note)


def _memory_breakdown(name, opt, restore, snap, peak, P):
    """The blocks of a tracemalloc snapshot by the innermost fastbp (or numpy) line that
    allocated them, in MB and params-sizes."""
    import collections
    import linecache
    sites = collections.Counter()
    for trace in snap.traces:
        frames = [f for f in trace.traceback if "/fastbp/" in f.filename]
        f = frames[-1] if frames else trace.traceback[-1]
        sites[(f.filename, f.lineno)] += trace.size
    live = sum(sites.values())
    lines = [f"\n{name}, {opt}, restore_on_divergence={restore}: peak {peak / 1e6:.3f} MB "
             f"= {peak / P:.2f} x params; alive after epoch 0: {live / 1e6:.3f} MB"]
    for (filename, lineno), size in sites.most_common():
        if size < 0.005 * live:
            break
        code = linecache.getline(filename, lineno).strip()[:70]
        lines.append(f"  {size / 1e6:8.3f} MB {size / P:5.2f} P  "
                     f"{os.path.basename(filename)}:{lineno}  {code}")
    return "\n".join(lines)


def estimators(rounds):
    """fastbp.MLPClassifier against sklearn.neural_network.MLPClassifier with identical
    arguments and random_state (so identical models: the "same coefs" column compares
    coefs_ and intercepts_, 1e-6 relative): fit time, median of `rounds` fits taken
    round-robin across the contestants after one warm-up fit of every contestant (fastbp's
    kernels are loaded from the disk cache then), and test accuracy. A round that began or
    ended with the two threads on one shared core (workloads.core_sharing > SHARED_CORE) is
    left out of the medians, unless every round was. float64 as scikit-learn's default;
    digits at scikit-learn's default settings (hidden (100,), adam, up to 200 epochs with its
    tol stopping rule), with 128 hidden units for 40 epochs, and with tanh and logistic
    hidden units; the mnist workload's shapes on 8192 synthetic samples."""
    import warnings

    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier as SkMLP

    from fastbp import MLPClassifier
    X, y = load_digits(return_X_y=True)
    digits = train_test_split(X / 16.0, y, random_state=0, stratify=y)
    layers, batch, _ = WORKLOADS["mnist"]
    rng = np.random.default_rng(0)
    Xm = rng.standard_normal((8192, layers[0]))
    ym = (Xm[:, :10].argmax(axis=1))                     # learnable synthetic labels
    mnist = train_test_split(Xm, ym, random_state=0, stratify=ym)
    cases = [("digits, defaults", digits, ("adam", "sgd", "lbfgs"), {}),
             ("digits, 128 hidden, 40 epochs", digits, ("adam",),
              dict(hidden_layer_sizes=(128,), max_iter=40, tol=0.0)),
             # activations whose maths calls exp or tanh (kernels/vexp.py)
             ("digits, tanh", digits, ("adam",), dict(activation="tanh")),
             ("digits, logistic", digits, ("adam",), dict(activation="logistic")),
             ("mnist shapes", mnist, ("adam", "sgd", "lbfgs"),
              dict(hidden_layer_sizes=tuple(layers[1:-1]), batch_size=batch, max_iter=10,
                   tol=0.0))]
    print("| data | solver | estimator | fit s (median) | rounds left out (shared core) | "
          "epochs | test accuracy | same coefs as scikit-learn | fastbp speed-up |")
    print("|---|---|---|---:|---:|---:|---:|---|---:|")
    for name, (X_tr, X_te, y_tr, y_te), solvers, kw in cases:
        for solver in solvers:
            common = dict(solver=solver, random_state=0, **kw)
            contestants = {
                "fastbp (target auto)": lambda: MLPClassifier(**common),
                "fastbp cpu": lambda: MLPClassifier(target="cpu", **common),
                "fastbp parallel": lambda: MLPClassifier(target="parallel", **common),
                "scikit-learn": lambda: SkMLP(**common)}
            runs, fitted, shared = {label: [] for label in contestants}, {}, []
            # round-robin, so that a slow spell of the machine hits every contestant
            for r in range(rounds + 1):              # the first fit warms up, untimed
                time.sleep(COOL_DOWN)
                sharing = core_sharing()
                for label, make in contestants.items():
                    time.sleep(COOL_DOWN)   # the previous fit's spinning threads go idle
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", ConvergenceWarning)
                        est = make()
                        seconds = _timed(lambda: est.fit(X_tr, y_tr))
                    if r:
                        runs[label].append(seconds)
                    fitted[label] = est
                time.sleep(COOL_DOWN)
                if r:
                    shared.append(max(sharing, core_sharing()) > SHARED_CORE)
            # the rounds whose two threads had cores of their own, where there are any
            own = [i for i, s in enumerate(shared) if not s]
            left_out = f"{sum(shared)} of {len(shared)}"
            if not own:                             # every round shared: keep them all
                own, left_out = list(range(len(shared))), f"none (all {len(shared)} shared)"
            times = {label: float(np.median([t[i] for i in own])) for label, t in runs.items()}
            sk = fitted["scikit-learn"]
            for label, est in fitted.items():
                same = ""
                if label != "scikit-learn":
                    rel = max(float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
                              for a, b in zip(est.coefs_ + est.intercepts_,
                                              sk.coefs_ + sk.intercepts_))
                    same = "yes" if rel <= 1e-6 else f"no ({rel:.1e})"
                speed = "" if label == "scikit-learn" else \
                    f"{times['scikit-learn'] / times[label]:.1f}x"
                print(f"| {name} | {solver} | {label} | {times[label]:.3f} | "
                      f"{left_out} | {est.n_iter_} | "
                      f"{est.score(X_te, y_te):.3f} | {same} | {speed} |", flush=True)


# ------------------------------------------------------------------------- GPU

def cuda_compare(workloads, opt, rounds, batches=(128, 1024), n=None, torch_compile=True):
    """target='cuda' vs PyTorch on the same GPU (eager, and the model under
    torch.compile(mode="reduce-overhead"), which replays CUDA graphs; `--skip "torch compile"`
    leaves that out), each DESIGN workload at batch sizes 128 and 1024: median samples/s of `rounds` epochs after a warm-up epoch. Both keep the
    data on the GPU and reshuffle it there every epoch; PyTorch is synchronised once per
    epoch, and fastbp's epoch time is fit's own per-epoch figure (its `history["time"]`,
    which includes the per-epoch copy of params and optimizer state back to the host).
    Runs under NUMBA_ENABLE_CUDASIM=1 too, as a smoke test (fastbp only: no GPU for torch)."""
    from fastbp import Trainer
    from fastbp.kernels import cuda_backend

    print(f"GPU: {cuda_backend.describe()}; optimizer {opt}; median of {rounds} epochs; "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| workload | batch | fastbp cuda samples/s | torch eager samples/s | "
          "torch compile (reduce-overhead) samples/s | fastbp/eager | fastbp/compiled |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in workloads:
        layers, _, loss = WORKLOADS[name]
        for batch in batches:
            rows = n or max(N_SAMPLES[name] * 4, 64 * batch)
            X, y = make_arrays(layers, loss, rows)
            t = Trainer(layers, loss=loss, optimizer=opt, lr=LR[opt], batch_size=batch,
                        momentum=0.9 if opt == "sgd" else 0.0, target="cuda", seed=0)
            h = t.fit(X, y, epochs=rounds + 1, progress=False)
            ours = rows / float(np.median(h["time"][1:]))
            cells, ratios = [], []
            for compiled in (False, True):
                if compiled and not torch_compile:
                    cells.append("(not run)"), ratios.append("")
                    continue
                try:
                    theirs = _torch_cuda(layers, batch, loss, X, y, opt, rounds, compiled)
                    cells.append(f"{theirs:,.0f}"), ratios.append(f"{ours / theirs:.2f}x")
                except Exception as e:    # no torch, torch without CUDA, or a compile failure
                    cells.append(f"({type(e).__name__}: {str(e)[:60]})"), ratios.append("")
            print(f"| {name} | {batch} | {ours:,.0f} | {' | '.join(cells)} | "
                  f"{' | '.join(ratios)} |", flush=True)


def _torch_cuda(layers, batch, loss, X, y, opt, rounds, compiled=False):
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError("torch has no CUDA device")
    if compiled:        # CUDA graphs replayed by torch.compile; fused optimizer step
        train = torch_training(layers, batch, loss, X, y, opt, device="cuda", fused=True,
                               compile_mode="reduce-overhead")
        train()                                         # compiles (not timed)
    else:
        train = torch_training(layers, batch, loss, X, y, opt, device="cuda", foreach=True)

    def epoch():
        train()
        torch.cuda.synchronize()
    epoch()                                             # warm-up
    return X.shape[0] / float(np.median([_timed(epoch) for _ in range(rounds)]))


# ------------------------------------------------------------------ sparse input

SPARSE_SHAPES = [(50_000, 20), (50_000, 50), (50_000, 100), (20_000, 50), (100_000, 50)]
SPARSE_HIDDEN, SPARSE_BATCH, SPARSE_CLASSES = 128, 128, 10
DENSE_COPY_LIMIT = 2 << 30      # fastbp on the dense copy where it needs at most 2 GiB


def _sparse_fastbp(target, update, dense=False):
    def factory(X, y):
        from fastbp import Trainer
        t = Trainer([X.shape[1], SPARSE_HIDDEN, SPARSE_CLASSES], optimizer="adam", lr=1e-3,
                    batch_size=SPARSE_BATCH, target=target, sparse_update=update, seed=0)
        data = X.toarray() if dense else X
        return (lambda: t.fit(data, y, epochs=1, progress=False)), \
            (lambda Xt: t.predict(Xt.toarray() if dense else Xt))
    return factory


def _sparse_sklearn(X, y):
    from sklearn.neural_network import MLPClassifier
    est = MLPClassifier(hidden_layer_sizes=(SPARSE_HIDDEN,), batch_size=SPARSE_BATCH,
                        learning_rate_init=1e-3, alpha=0.0, random_state=0)
    classes = np.arange(SPARSE_CLASSES)
    return (lambda: est.partial_fit(X, y, classes=classes)), est.predict


def _sparse_torch(lazy):
    """PyTorch with a sparse first layer: torch.sparse.mm of each batch's CSR rows with a
    dense W_0 and torch.optim.Adam (every parameter every step: fastbp's 'dense'), or
    nn.EmbeddingBag(mode='sum', per_sample_weights, sparse=True) for W_0 with
    torch.optim.SparseAdam and Adam for the rest (fastbp's 'lazy'). One thread per core;
    the batch's rows are sliced with scipy, as fastbp's kernel reads them."""
    def factory(X, y):
        import torch
        torch.manual_seed(0)
        n, d = X.shape
        yt = torch.as_tensor(y)
        rng = np.random.default_rng(0)
        if lazy:
            emb = torch.nn.EmbeddingBag(d, SPARSE_HIDDEN, mode="sum", sparse=True)
            b0 = torch.nn.Parameter(torch.zeros(SPARSE_HIDDEN))
            first = [emb.weight]
        else:
            W0 = torch.nn.Parameter(torch.empty(d, SPARSE_HIDDEN).uniform_(-0.01, 0.01))
            b0 = torch.nn.Parameter(torch.zeros(SPARSE_HIDDEN))
            first = [W0]
        head = torch.nn.Sequential(torch.nn.ReLU(),
                                   torch.nn.Linear(SPARSE_HIDDEN, SPARSE_CLASSES))
        rest = [b0, *head.parameters()]
        opts = ([torch.optim.SparseAdam(first, lr=1e-3), torch.optim.Adam(rest, lr=1e-3)]
                if lazy else [torch.optim.Adam(first + rest, lr=1e-3)])
        crit = torch.nn.CrossEntropyLoss()

        def first_layer(Xb):
            if lazy:
                return emb(torch.as_tensor(Xb.indices.astype(np.int64)),
                           torch.as_tensor(Xb.indptr[:-1].astype(np.int64)),
                           per_sample_weights=torch.as_tensor(Xb.data)) + b0
            coo = Xb.tocoo()
            St = torch.sparse_coo_tensor(np.vstack([coo.row, coo.col]), coo.data, Xb.shape)
            return torch.sparse.mm(St, W0) + b0

        def epoch():
            perm = rng.permutation(n)
            for lo in range(0, n, SPARSE_BATCH):
                idx = perm[lo:lo + SPARSE_BATCH]
                for o in opts:
                    o.zero_grad()
                crit(head(first_layer(X[idx])), yt[idx]).backward()
                for o in opts:
                    o.step()

        def predict(Xt):
            with torch.no_grad():
                return head(first_layer(Xt)).argmax(dim=1).numpy()
        return epoch, predict
    return factory


SPARSE_CONTESTANTS = {
    "fastbp cpu": _sparse_fastbp("cpu", "dense"),
    "fastbp parallel": _sparse_fastbp("parallel", "dense"),
    "fastbp cpu lazy": _sparse_fastbp("cpu", "lazy"),
    "fastbp parallel lazy": _sparse_fastbp("parallel", "lazy"),
    "fastbp cpu, dense copy": _sparse_fastbp("cpu", "dense", dense=True),
    "torch sparse.mm + Adam": _sparse_torch(False),
    "torch EmbeddingBag + SparseAdam": _sparse_torch(True),
    "scikit-learn": _sparse_sklearn,
}


def sparse_compare(rounds, n, shapes, skip):
    """Seconds per epoch (median of `rounds`, epochs interleaved across contestants after a
    warm-up epoch) on bag-of-words CSR data of n rows, hidden 128, batch 128, Adam, float32,
    and each contestant's test accuracy after its epochs (2,000 held-out rows)."""
    import platform
    print(f"bag-of-words classification, {n} rows, hidden {SPARSE_HIDDEN}, batch "
          f"{SPARSE_BATCH}, {SPARSE_CLASSES} classes, Adam lr 1e-3, float32; median of "
          f"{rounds} interleaved epochs; {THREADS} cores ({platform.processor() or 'cpu'})\n")
    print("| columns | tokens/row | stored/row | contestant | s/epoch | test acc | "
          "vs scikit-learn | vs torch, same update |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|")
    for n_features, per_row in shapes:
        X, y = bag_of_words(n + 2000, n_features, per_row, SPARSE_CLASSES)
        Xt, yt = X[n:], y[n:]
        X, y = X[:n], y[:n]
        stored = X.nnz / n
        fns = {}
        for cname, factory in SPARSE_CONTESTANTS.items():
            if cname in skip:
                continue
            if "dense copy" in cname and n * n_features * 4 > DENSE_COPY_LIMIT:
                continue
            try:
                epoch, predict = factory(X, y)
                epoch()                                       # warm-up
            except ImportError:
                continue
            except Exception as e:  # noqa: BLE001 - a peer's failure is reported, not fatal
                print(f"  [{cname} failed: {type(e).__name__}: {e}]", file=sys.stderr)
                continue
            fns[cname] = (epoch, predict)
        times = {c: [] for c in fns}
        for _ in range(rounds):
            for cname, (epoch, _) in fns.items():
                time.sleep(COOL_DOWN)
                times[cname].append(_timed(epoch))
        med = {c: float(np.median(t)) for c, t in times.items()}
        # fastbp's dense update against PyTorch's dense Adam, its lazy one against SparseAdam
        torch_same = {False: med.get("torch sparse.mm + Adam"),
                      True: med.get("torch EmbeddingBag + SparseAdam")}
        sk = med.get("scikit-learn")
        for cname, (_, predict) in fns.items():
            acc = float(np.mean(np.asarray(predict(Xt)) == yt))
            vs_sk = f"{sk / med[cname]:.1f}x" if sk and not cname.startswith("scikit") else ""
            peer = torch_same["lazy" in cname]
            vs_t = (f"{peer / med[cname]:.1f}x" if peer and cname.startswith("fastbp")
                    and "dense copy" not in cname else "")
            print(f"| {n_features:,} | {per_row} | {stored:.1f} | {cname} | {med[cname]:.3f} | "
                  f"{acc:.3f} | {vs_sk} | {vs_t} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", nargs="+", default=list(N_SAMPLES), choices=list(N_SAMPLES))
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    p.add_argument("--rounds", type=int, default=5, help="timed epochs per contestant")
    p.add_argument("--skip", nargs="*", default=[], help="contestants to leave out")
    p.add_argument("--sweep", action="store_true", help="width x batch sweep instead")
    p.add_argument("--compile", action="store_true", help="cold/warm first-epoch times instead")
    p.add_argument("--strategies", action="store_true",
                   help="fastbp's parallel strategies side by side instead")
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "float64"],
                   help="with --strategies: the dtypes to measure")
    p.add_argument("--products", action="store_true",
                   help="each product of a step: gemm.py's SIMD loops vs BLAS instead")
    p.add_argument("--memory", action="store_true", help="fastbp's peak memory during fit")
    p.add_argument("--breakdown", action="store_true",
                   help="with --memory: what is alive after the first epoch, line by line")
    p.add_argument("--estimators", action="store_true",
                   help="fastbp.MLPClassifier vs scikit-learn's MLPClassifier instead")
    p.add_argument("--cuda", action="store_true",
                   help="target='cuda' vs PyTorch (eager and torch.compile) on the GPU, "
                   "batch 128 and 1024")
    p.add_argument("--samples", type=int, help="rows per data set (--cuda; default: by "
                   "workload; --sparse: 20,000)")
    p.add_argument("--sparse", action="store_true",
                   help="bag-of-words CSR input: fastbp (dense and lazy updates, and on the "
                   "dense copy where it fits) vs scikit-learn and PyTorch, 3 densities and 3 "
                   "widths")
    args = p.parse_args()
    sharing = core_sharing()
    try:
        run(args)
    finally:
        time.sleep(COOL_DOWN)    # BLAS's threads spin for a while after a call
        # near 2.0: the two threads shared one core (workloads.core_sharing); their figures
        # then understate a machine whose cores are its own
        print(f"\ntwo threads' FMA time over one's (1.0: cores of their own, 2.0: one "
              f"shared core): {sharing:.2f} before, {core_sharing():.2f} after", flush=True)


def run(args):
    if args.sparse:
        return sparse_compare(args.rounds, args.samples or 20_000, SPARSE_SHAPES,
                              set(args.skip))
    if args.cuda:
        workloads = [w for w in args.workloads if w in WORKLOADS]
        return cuda_compare(workloads, args.optimizer, args.rounds, n=args.samples,
                            torch_compile="torch compile" not in args.skip)
    if args.memory:
        return memory([w for w in args.workloads if w in WORKLOADS], args.breakdown)
    if args.estimators:
        return estimators(args.rounds)
    if args.compile:
        return compile_times()
    if args.strategies:
        return strategies(args.rounds, args.dtypes)
    if args.products:
        return products(args.rounds)
    peak = gemm_peak()
    print(f"float32 GEMM peak (NumPy, {THREADS} threads): {peak:.0f} GFLOP/s; "
          f"optimizer {args.optimizer}; median of {args.rounds} interleaved epochs\n")
    if args.sweep:
        return sweep(args.optimizer, args.rounds, set(args.skip))
    results, flops = {}, {}
    for name in args.workloads:
        results[name] = measure(name, args.optimizer, args.rounds, skip=set(args.skip))
        flops[name] = flops_per_sample(workload(name)[0])
        print(f"[{name} done]", file=sys.stderr, flush=True)
    print_table(results, peak, flops)
    summary(results)


if __name__ == "__main__":
    main()
