#!/usr/bin/env bash
# One prepared pass over the Intel host of a lent machine, for AMX's bf16 panel (issue 15 §3;
# kernels/amx.py): the machine, the panel on the tiles against its stand-ins (tests/test_amx.py),
# each product of mnist's and wide's steps on one thread with the AMX panel and with the
# VDPBF16PS panel (FASTBP_AMX=0) beside OpenBLAS float32 and oneDNN's bf16 (PyTorch)
# (benchmarks/bf16_products.py), whole epochs on two CPUs of cores of their own: fastbp
# float32 and bf16 against JAX and PyTorch (compare.py), and bf16's held-out accuracy
# (bf16_accuracy.py), and bf16 with and without the epochs' copies of W
# (bf16_weight_copies.py). Logs go to $OUT (the device tool's folder that comes back) or
# ./amx-out. Uses the python3 there (PYTHONPATH=., nothing installed). About 4 minutes on a
# 16-core Xeon; AMX_TESTS picks tests (pytest -k), SETTINGS="1" leaves out the VDPBF16PS products.
#   bash benchmarks/amx_check.sh
set -u
OUT=${OUT:-amx-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES="" JAX_PLATFORMS=cpu
PAIR=$(lscpu -p=CPU,CORE | grep -v '^#' | sort -t, -k2,2n -u | head -2 | cut -d, -f1 | paste -sd,)
ONE=${PAIR%,*}
{
  date -u; lscpu | grep 'Model name'; echo "AMX flags: $(grep -o 'amx[a-z0-9_]*' /proc/cpuinfo | sort -u | paste -sd' ')"
  python3 -c "import sys, numpy, numba, llvmlite; print(sys.version.split()[0], 'numpy', numpy.__version__, 'numba', numba.__version__, 'llvm', llvmlite.binding.llvm_version_info)"
  python3 -c "from fastbp.kernels import amx; print('AMX panel:', amx.mode() or 'NOT USED: the tile tests below will be skipped')"
  echo "CPUs: one $ONE, pair $PAIR"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_amx.py ${AMX_TESTS:+-k "$AMX_TESTS"} \
  > "$OUT/tests.txt" 2>&1
tail -3 "$OUT/tests.txt"
for setting in ${SETTINGS:-1 0}; do
  FASTBP_AMX=$setting NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 \
    timeout 150 taskset -c "$ONE" python3 benchmarks/bf16_products.py --rounds 3 \
    > "$OUT/products_amx$setting.txt" 2>&1
done
export NUMBA_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 OMP_NUM_THREADS=2
timeout 200 taskset -c "$PAIR" python3 benchmarks/compare.py --rounds 3 --workloads mnist wide \
  --skip "torch eager foreach" scikit-learn > "$OUT/compare.txt" 2>&1
timeout 120 taskset -c "$PAIR" python3 benchmarks/bf16_accuracy.py --seeds 1 > "$OUT/accuracy.txt" 2>&1
for workload in mnist wide; do      # the epochs' bf16 copies of W against packing W per product
  timeout 90 taskset -c "$PAIR" python3 benchmarks/bf16_weight_copies.py $workload --rounds 5 \
    >> "$OUT/weight_copies.txt" 2>&1
done
echo "done at ${SECONDS} s"
