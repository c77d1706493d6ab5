#!/usr/bin/env bash
# One prepared pass over a lent GPU machine (see the README's GPU section): what the machine
# is, the GPU kernels' first-use compile time per dtype in a new process with an empty disk
# cache and again in a second one that loads them from it (and the launch path a fit took:
# CUDA graphs or plain launches), benchmarks/gpu_graphs.py (every workload with CUDA graphs,
# with plain launches, and PyTorch eager; per step; same params bit for bit; GRAPHS_ARGS
# adds options such as --tiles --no-plain), optionally benchmarks/compare.py --cuda, and
# the CUDA suite for real at the small and the default block sizes. Every log goes to $OUT
# (the device tool's folder that comes back) or ./gpu-out.
# Uses the python3 that holds numba-cuda and torch there (PYTHONPATH=., nothing installed).
# Time limits (s): GRAPHS_S (150), SUITE_S (220), BENCH_S (0: compare.py --cuda without
# torch.compile not run), COMPILED_S (0: with it, not run), WHOLE_S (0); WORKLOADS limits
# compare.py's workloads. The defaults fit in about 7 minutes. GRAPHS_S=0 leaves out gpu_graphs.py.
# HOST_S (0): the host CPU measured as a 2-core machine, in the background from the start:
# (HOST_PANELS=1: benchmarks/panel_probe.py first, on one of its two CPUs) compare.py
# --products, the five workloads against JAX and PyTorch on the CPU (HOST_ADAM=1:
# mnist and wide with Adam too), and --estimators, pinned to two CPUs on cores of their own
# (NUMBA/OpenBLAS/torch at 2 threads), the GPU runs pinned to the other CPUs. CPU_TESTS_S (0): after the CUDA suite, the CPU
# kernel tests at the host's full thread count (CPU_TESTS: which files).
#   bash benchmarks/gpu_check.sh [pytest-args...]
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
# numba-cuda 0.30.4 (the device image's) still registers np.row_stack, which NumPy 2.5 removed:
# give it the alias for these runs only (fastbp itself never uses it)
SHIM=$(mktemp -d); printf 'import numpy\nif not hasattr(numpy, "row_stack"):\n    numpy.row_stack = numpy.vstack\n' > "$SHIM/sitecustomize.py"
export PYTHONPATH=$PWD:$SHIM PYTHONUNBUFFERED=1
SUITE_S=${SUITE_S:-220} BENCH_S=${BENCH_S:-0} GRAPHS_S=${GRAPHS_S:-150}
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import sys, numpy, numba, numba_cuda, sklearn; print(sys.version.split()[0], 'numpy', numpy.__version__, 'numba', numba.__version__, 'numba-cuda', numba_cuda.__version__, 'sklearn', sklearn.__version__)"
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
  lscpu | grep 'Model name'
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

HOST_S=${HOST_S:-0}; GPU_CPUS=""
if [ "$HOST_S" != 0 ]; then
  # two CPUs of different physical cores (SMT siblings would share one core's FMA units)
  PAIR=$(lscpu -p=CPU,CORE | grep -v '^#' | sort -t, -k2,2n -u | head -2 | cut -d, -f1 | paste -sd,)
  GPU_CPUS=$(lscpu -p=CPU | grep -v '^#' | grep -vxF -e "${PAIR%,*}" -e "${PAIR#*,}" | paste -sd,)
  echo "host CPU comparison on CPUs $PAIR; the GPU runs on $GPU_CPUS"
  (
    export NUMBA_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 OMP_NUM_THREADS=2 JAX_PLATFORMS=cpu \
      CUDA_VISIBLE_DEVICES=""
    end=$((SECONDS + HOST_S))
    left() { local r=$((end - SECONDS)); [ "$r" -gt 1 ] && echo "$r" || echo 1; }   # never 0 (no limit)
    if [ "${HOST_PANELS:-0}" != 0 ]; then      # register blocks of gemm's panels, one thread
      NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 timeout 120 taskset -c "${PAIR%,*}" python3 \
        benchmarks/panel_probe.py --rounds 7 --blocks 6x2 8x2 8x3 6x4 4x6 12x2 14x2 \
        > "$OUT/host_panels.txt" 2>&1
    fi
    timeout 60 taskset -c "$PAIR" python3 benchmarks/compare.py --products > "$OUT/host_products.txt" 2>&1
    timeout "$(left)" taskset -c "$PAIR" python3 benchmarks/compare.py --rounds 3 \
      --workloads tiny regression deep mnist wide --skip "torch eager foreach" \
      > "$OUT/host_compare.txt" 2>&1
    if [ "${HOST_ADAM:-0}" != 0 ]; then
      timeout "$(left)" taskset -c "$PAIR" python3 benchmarks/compare.py --rounds 3 --optimizer adam \
        --workloads mnist wide --skip "torch eager foreach" > "$OUT/host_compare_adam.txt" 2>&1
    fi
    timeout "$(left)" taskset -c "$PAIR" python3 benchmarks/compare.py --estimators \
      --rounds 3 > "$OUT/host_estimators.txt" 2>&1
    echo "host comparison done at ${SECONDS} s" >> "$OUT/host_compare.txt"
  ) &
  HOST_PID=$!
fi
PIN=${GPU_CPUS:+taskset -c $GPU_CPUS}

echo "== first-use compile of the GPU kernels: an empty disk cache, then loaded from it"
export NUMBA_CACHE_DIR=$(mktemp -d)
for run in "empty cache" "cached"; do
echo "-- $run" >> "$OUT/compile.txt"
$PIN python3 - >> "$OUT/compile.txt" 2>&1 <<'PY'
import time
t0 = time.perf_counter()
import numpy as np
from fastbp import Trainer
print(f"import {time.perf_counter() - t0:.2f} s")
for dtype in ("float32", "float64"):
    X = np.random.default_rng(0).normal(size=(256, 20)).astype(dtype)
    y = np.arange(256) % 3
    t0 = time.perf_counter()
    t = Trainer([20, 16, 3], target="cuda", dtype=dtype, batch_size=64, seed=0)
    t.fit(X, y, epochs=1, progress=False)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    t.fit(X, y, epochs=1, progress=False)
    net = t.engine.device()
    print(f"{dtype}: first fit {first:.2f} s (kernel compile included), second "
          f"{time.perf_counter() - t0:.3f} s; launch path {net.launch_path} "
          f"{net.launch_counts}; graph error {net.graph_error}; stream {net.graph_stream}")
PY
done
unset NUMBA_CACHE_DIR
cat "$OUT/compile.txt"

if [ "$GRAPHS_S" != 0 ]; then
  echo "== CUDA graphs vs plain launches vs PyTorch eager (benchmarks/gpu_graphs.py)"
  timeout "$GRAPHS_S" $PIN python3 benchmarks/gpu_graphs.py --rounds 3 ${GRAPHS_ARGS:-} \
    > "$OUT/graphs.txt" 2> "$OUT/graphs.err"
  echo "graphs exit $?"; cat "$OUT/graphs.txt"; tail -20 "$OUT/graphs.err"
fi

if [ "$BENCH_S" != 0 ]; then
  echo "== compare --cuda (eager PyTorch; then with torch.compile, which compiles per shape)"
  timeout "$BENCH_S" python3 benchmarks/compare.py --cuda --rounds 3 --skip "torch compile" \
    ${WORKLOADS:+--workloads $WORKLOADS} > "$OUT/compare_cuda.txt" 2> "$OUT/compare_cuda.err"
  echo "compare exit $?"; cat "$OUT/compare_cuda.txt"; tail -20 "$OUT/compare_cuda.err"
fi
if [ "${COMPILED_S:-0}" != 0 ]; then
  timeout "$COMPILED_S" python3 benchmarks/compare.py --cuda --rounds 3 \
    ${WORKLOADS:+--workloads $WORKLOADS} > "$OUT/compare_cuda_compiled.txt" \
    2> "$OUT/compare_cuda_compiled.err"
  echo "compare (compiled) exit $?"; cat "$OUT/compare_cuda_compiled.txt"
  tail -20 "$OUT/compare_cuda_compiled.err"
fi
echo "== CUDA suite"
FASTBP_CUDA_TESTS=1 timeout "$SUITE_S" $PIN python3 -m pytest tests/cuda -q -p no:cacheprovider \
  -rfE "$@" > "$OUT/cuda_suite.txt" 2>&1
echo "suite exit $?"; tail -40 "$OUT/cuda_suite.txt"

if [ "${CPU_TESTS_S:-0}" != 0 ]; then
  echo "== the CPU kernel tests at the host's thread count"
  CPU_TESTS=${CPU_TESTS:-tests/test_gemm.py tests/test_kernels.py tests/test_engine.py tests/test_threads.py
    tests/test_sklearn_equivalence.py tests/test_zero_columns.py tests/test_memory.py}
  timeout "$CPU_TESTS_S" $PIN python3 -m pytest -q -p no:cacheprovider -n 4 -rfE $CPU_TESTS \
    > "$OUT/cpu_tests.txt" 2>&1
  echo "cpu tests exit $?"; tail -25 "$OUT/cpu_tests.txt"
fi

if [ "${WHOLE_S:-0}" != 0 ]; then
  echo "== the whole test suite, once (the simulator subprocess and Dask left out)"
  timeout "$WHOLE_S" python3 -m pytest -q -p no:cacheprovider -x --ignore=tests/test_distributed.py \
    --deselect tests/test_cuda.py::test_cuda_suite_passes_under_the_simulator > "$OUT/whole_suite.txt" 2>&1
  echo "whole suite exit $?"; tail -15 "$OUT/whole_suite.txt"
fi

if [ -n "${HOST_PID:-}" ]; then
  wait "$HOST_PID"
  echo "== host CPU as a 2-core machine"; cat "$OUT/host_panels.txt" "$OUT/host_products.txt" "$OUT/host_compare.txt" \
    "$OUT/host_compare_adam.txt" "$OUT/host_estimators.txt" 2>/dev/null
fi
