"""asv benchmarks of fastbp (run `asv run --python=same ...` from the repository root).

Setup builds seeded data once and trains one warm-up epoch, so JIT compilation is never in a
`time_*` figure; compile time has its own benchmarks (`Startup`). A faster change that breaks
convergence shows in the `track_*_accuracy`/`track_final_loss` figures.
"""
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from .workloads import WORKLOADS, bag_of_words, flops_per_sample, make_data

# Samples per workload: small enough for a quick run, whole epochs of many steps.
N_SAMPLES = {"tiny": 4096, "regression": 4096, "deep": 2048, "mnist": 2048, "wide": 1024}


def _trainer(workload, target, optimizer, dtype, **kw):
    from fastbp import Trainer
    layers, batch, loss = WORKLOADS[workload]
    lr = 0.01 if optimizer == "sgd" else 1e-3
    return Trainer(layers, loss=loss, optimizer=optimizer, lr=lr,
                   momentum=0.9 if optimizer == "sgd" else 0.0, batch_size=batch,
                   target=target, dtype=dtype, seed=0, **kw)


class Training:
    """One epoch of each DESIGN.md workload."""
    params = (list(WORKLOADS), ["cpu", "parallel"], ["sgd", "adam"], ["float32", "float64"])
    param_names = ["workload", "target", "optimizer", "dtype"]
    timeout = 600

    def setup(self, workload, target, optimizer, dtype):
        self.X, self.y = make_data(workload, N_SAMPLES[workload], dtype)
        self.trainer = _trainer(workload, target, optimizer, dtype)
        self.trainer.fit(self.X, self.y, epochs=1, progress=False)      # warm the JIT

    def time_epoch(self, *args):
        self.trainer.fit(self.X, self.y, epochs=1, progress=False)

    def peakmem_fit(self, workload, target, optimizer, dtype):
        # a fresh model: its buffers and one epoch's workspace, no copy of the data per epoch
        _trainer(workload, target, optimizer, dtype).fit(self.X, self.y, epochs=1,
                                                         progress=False)

    def track_samples_per_second(self, *args):
        h = self.trainer.fit(self.X, self.y, epochs=3, progress=False)
        return self.X.shape[0] / float(np.median(h["time"][-3:]))
    track_samples_per_second.unit = "samples/s"

    def track_gflops(self, workload, *args):
        sps = self.track_samples_per_second()
        return sps * flops_per_sample(WORKLOADS[workload][0]) / 1e9
    track_gflops.unit = "GFLOP/s"


class Bf16Training:
    """One epoch of the GEMM-bound workloads with precision='bf16' against 'full' (float32,
    target='parallel'): the bf16 products run on AMX tiles where the CPU has them, else on
    AVX512-BF16, else emulated (slower; see the README's bfloat16 products)."""
    params = (["mnist", "wide"], ["full", "bf16"])
    param_names = ["workload", "precision"]
    timeout = 600

    def setup(self, workload, precision):
        self.X, self.y = make_data(workload, N_SAMPLES[workload], "float32")
        self.trainer = _trainer(workload, "parallel", "sgd", "float32", precision=precision)
        self.trainer.fit(self.X, self.y, epochs=1, progress=False)      # warm the JIT

    def time_epoch(self, *args):
        self.trainer.fit(self.X, self.y, epochs=1, progress=False)

    def track_samples_per_second(self, *args):
        h = self.trainer.fit(self.X, self.y, epochs=3, progress=False)
        return self.X.shape[0] / float(np.median(h["time"][-3:]))
    track_samples_per_second.unit = "samples/s"


class SparseTraining:
    """One epoch on bag-of-words CSR data (hidden 128, batch 128, Adam, float32): 3 widths
    at 50 tokens per row and 3 densities at 50k columns, dense and lazy updates; the time
    per epoch should follow the stored entries (and, for 'dense', the first layer's size),
    peak memory never the dense size (rows x columns)."""
    params = ([(20_000, 50), (50_000, 50), (100_000, 50), (50_000, 20), (50_000, 100)],
              ["cpu", "parallel"], ["dense", "lazy"])
    param_names = ["columns_tokens", "target", "sparse_update"]
    timeout = 600
    n = 4096

    def setup(self, shape, target, update):
        n_features, per_row = shape
        X, y = bag_of_words(self.n + 1000, n_features, per_row)
        self.X, self.y, self.Xt, self.yt = X[:self.n], y[:self.n], X[self.n:], y[self.n:]
        self.trainer = self._trainer(target, update)
        self.trainer.fit(self.X, self.y, epochs=1, progress=False)      # warm the JIT

    def _trainer(self, target, update):
        from fastbp import Trainer
        return Trainer([self.X.shape[1], 128, 10], optimizer="adam", lr=1e-3, batch_size=128,
                       target=target, sparse_update=update, seed=0)

    def time_epoch(self, *args):
        self.trainer.fit(self.X, self.y, epochs=1, progress=False)

    def peakmem_fit(self, shape, target, update):
        self._trainer(target, update).fit(self.X, self.y, epochs=1, progress=False)

    def track_test_accuracy(self, *args):
        self.trainer.fit(self.X, self.y, epochs=3, progress=False)
        return float(np.mean(self.trainer.predict(self.Xt) == self.yt))


class CudaTraining:
    """One epoch of each DESIGN.md workload on target='cuda', at batch sizes 128 and 1024
    (skipped where numba-cuda finds no GPU). The data stays on the GPU between epochs: one
    fit of several epochs, timed per epoch by fit itself."""
    params = (list(WORKLOADS), [128, 1024])
    param_names = ["workload", "batch_size"]
    timeout = 600

    def setup(self, workload, batch_size):
        from fastbp import CudaUnavailableError, Trainer
        layers, _, loss = WORKLOADS[workload]
        try:
            self.trainer = Trainer(layers, loss=loss, optimizer="sgd", lr=0.01, momentum=0.9,
                                   batch_size=batch_size, target="cuda", seed=0)
        except CudaUnavailableError as e:
            raise NotImplementedError(str(e)) from None     # asv: skipped
        self.X, self.y = make_data(workload, max(N_SAMPLES[workload] * 4, 32 * batch_size))

    def track_samples_per_second(self, *args):
        h = self.trainer.fit(self.X, self.y, epochs=4, progress=False)
        return self.X.shape[0] / float(np.median(h["time"][1:]))
    track_samples_per_second.unit = "samples/s"


class OneStep:
    """One SGD step at batch size 1 on the tiny network (per-step overhead)."""
    params = ["cpu", "parallel"]
    param_names = ["target"]

    def setup(self, target):
        from fastbp import Trainer
        self.X, self.y = make_data("tiny", 2048)
        self.trainer = Trainer(WORKLOADS["tiny"][0], optimizer="sgd", lr=0.01, batch_size=1,
                               target=target, seed=0)
        self.trainer.fit(self.X, self.y, epochs=1, progress=False)

    def track_step_microseconds(self, target):
        h = self.trainer.fit(self.X, self.y, epochs=3, progress=False)
        return 1e6 * float(np.median(h["time"][-3:])) / self.X.shape[0]
    track_step_microseconds.unit = "us"


class Predict:
    params = (["tiny", "mnist"], ["cpu", "parallel"])
    param_names = ["workload", "target"]

    def setup(self, workload, target):
        self.X, _ = make_data(workload, 8192)
        self.trainer = _trainer(workload, target, "sgd", "float32")
        self.trainer.predict(self.X[:10])

    def time_predict(self, *args):
        self.trainer.predict(self.X)


class Digits:
    """Quality on real data (scikit-learn's digits): a speed-up must not cost accuracy."""
    params = (["cpu", "parallel"], ["sgd", "adam"])
    param_names = ["target", "optimizer"]
    timeout = 300

    def setup(self, target, optimizer):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        from fastbp import Trainer
        X, y = load_digits(return_X_y=True)
        X_tr, X_te, y_tr, y_te = train_test_split(X / 16.0, y, test_size=0.25, random_state=1,
                                                  stratify=y)
        t = Trainer([64, 64, 10], optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 1e-3,
                    momentum=0.9 if optimizer == "sgd" else 0.0, batch_size=32, seed=0,
                    target=target)
        t.fit(X_tr, y_tr, epochs=30, progress=False)
        self.result = t.evaluate(X_te, y_te)
        self.final_loss = t.history["loss"][-1]

    def track_test_accuracy(self, *args):
        return self.result["accuracy"]
    track_test_accuracy.unit = "accuracy"

    def track_final_loss(self, *args):
        return self.final_loss
    track_final_loss.unit = "loss"


_FIRST_FIT = """
import numpy as np
from fastbp import Trainer
X = np.random.default_rng(0).standard_normal((256, 128)).astype(np.float32)
y = np.arange(256) % 10
t = Trainer([128, 128, 128, 10], batch_size=64, target={target!r})   # 'chunks' when parallel
t.fit(X, y, epochs=1, progress=False)
"""


class Startup:
    """Import + first fit in a new process: with the on-disk kernel cache (timeraw) and
    without it (cold compile, tracked in seconds)."""
    params = ["cpu", "parallel"]
    param_names = ["target"]
    timeout = 300

    def setup(self, target):
        # fill the on-disk cache so the timeraw benchmark measures loading, not compiling
        subprocess.run([sys.executable, "-c", _FIRST_FIT.format(target=target)], check=True)

    def timeraw_import_and_first_fit(self, target):
        return _FIRST_FIT.format(target=target)

    def track_cold_compile_seconds(self, target):
        with tempfile.TemporaryDirectory() as cache:
            # compiled here, even where the package ships compiled kernels (kernels/prebuilt.py)
            env = dict(os.environ, NUMBA_CACHE_DIR=cache, FASTBP_PREBUILT="0")
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", _FIRST_FIT.format(target=target)],
                           check=True, env=env)
            return time.perf_counter() - t0
    track_cold_compile_seconds.unit = "s"
