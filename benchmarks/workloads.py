"""The named workloads of DESIGN.md section 6, with seeded synthetic data."""
import subprocess

import numpy as np

WORKLOADS = {
    # name: (layers, batch size, loss)
    "tiny": ([64, 32, 10], 32, "cross_entropy"),
    "mnist": ([784, 256, 128, 10], 128, "cross_entropy"),
    "wide": ([784, 1024, 1024, 10], 256, "cross_entropy"),
    "deep": ([128] + [128] * 8 + [10], 64, "cross_entropy"),
    "regression": ([16, 64, 64, 1], 32, "mse"),
}


def make_data(name, n, dtype="float32"):
    """X (n, n_in) and y for a workload, from np.random.default_rng(0)."""
    layers, _, loss = WORKLOADS[name]
    return make_arrays(layers, loss, n, dtype)


def make_arrays(layers, loss, n, dtype="float32"):
    """Seeded synthetic data for any network: X (n, layers[0]); class labels for
    cross_entropy, real targets (n, layers[-1]) otherwise."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, layers[0])).astype(dtype)
    if loss == "cross_entropy":
        y = rng.integers(0, layers[-1], size=n)
    else:
        y = rng.standard_normal((n, layers[-1])).astype(dtype)
    return X, y


def flops_per_sample(layers):
    """~6 x weights: forward 2, backward 4 FLOPs per weight and sample."""
    return 6 * sum(a * b for a, b in zip(layers[:-1], layers[1:]))


def bag_of_words(n, n_features, per_row, n_classes=10, seed=0, dtype="float32"):
    """A seeded bag-of-words classification as CSR: each row draws `per_row` tokens from a
    Zipf-like distribution (p ~ 1 / rank^1.07) over `n_features` columns in a random order
    (repeats summed, so rows hold somewhat fewer stored entries), log(1 + count) values,
    rows L2-normalised (TfidfVectorizer-like); labels are the argmax of a random linear
    teacher, so the problem is learnable."""
    from scipy import sparse
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_features + 1) ** 1.07
    cols = rng.permutation(n_features)[rng.choice(n_features, size=n * per_row, p=p / p.sum())]
    X = sparse.csr_matrix((np.ones(n * per_row), (np.repeat(np.arange(n), per_row), cols)),
                          shape=(n, n_features))
    X.sum_duplicates()
    X.data = np.log1p(X.data)
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    X = (sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ X).tocsr().astype(dtype)
    y = np.asarray(X @ rng.standard_normal((n_features, n_classes))).argmax(axis=1)
    return X, y


def blas_products():
    """A jitted blas(kind, C, A, B, bias, n): n times C = A B + bias (kind 0), A^T B (1) or
    A B^T (2) through np.dot in Numba, as the kernels call BLAS (on the threads that
    single_threaded_blas leaves it)."""
    from numba import njit

    @njit
    def blas(kind, C, A, B, bias, n):
        for _ in range(n):
            if kind == 0:
                np.dot(A, B, C)
                for r in range(C.shape[0]):
                    for j in range(C.shape[1]):
                        C[r, j] += bias[j]
            elif kind == 1:
                np.dot(A.T, B, C)
            else:
                np.dot(A, B.T, C)
    return blas


def cpu_model_and_flags():
    """(`lscpu`'s model name, its CPU flags): every figure is reported with its machine."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return fields.get("Model name", "unknown").strip(), fields.get("Flags", "").split()


_sharing_kernels = []


def _sharing_probe():
    """The two compiled loops of core_sharing, built once per process."""
    if not _sharing_kernels:
        from numba import njit, prange

        @njit(fastmath=True, cache=True)
        def dot_reps(a, b, reps):
            s = 0.0
            for _ in range(reps):
                for i in range(a.shape[0]):
                    s += a[i] * b[i]
            return s

        @njit(parallel=True, fastmath=True, cache=True)
        def both(a, b, reps, out):
            for c in prange(2):
                out[c] = dot_reps(a[c], b[c], reps)
        _sharing_kernels.extend((dot_reps, both))
    return _sharing_kernels


def core_sharing():
    """Time of two threads each running a multiply-add loop over L1-resident data over that
    of one thread running it alone: about 1.0 where the two threads have cores of their own,
    up to 2.0 where they share one core (its FMA units and L1), or where only one thread
    runs (1 CPU, NUMBA_NUM_THREADS=1). On the 2-core VMs of development both happen, in phases of
    minutes (the two vCPUs land on SMT siblings of one physical core, 2026-11-27): in such a
    phase every two-thread figure (fastbp's chunks, multi-threaded BLAS) drops and a serial
    plan can beat a parallel one, so the benchmarks print this beside their tables."""
    import time
    dot_reps, both = _sharing_probe()
    a, b, out = np.ones((2, 2048)), np.ones((2, 2048)), np.zeros(2)
    dot_reps(a[0], b[0], 1)
    both(a, b, 1, out)
    best = {}
    for _ in range(3):
        for label, run in (("one", lambda: dot_reps(a[0], b[0], 5000)),
                           ("two", lambda: both(a, b, 5000, out))):
            start = time.perf_counter()
            run()
            best[label] = min(best.get(label, np.inf), time.perf_counter() - start)
    return best["two"] / best["one"]
