"""Compile the CPU kernels ahead of time into the package, for each x86-64 level they are
tuned for, so that a first fit loads them instead of compiling (kernels/prebuilt.py).

    python -m fastbp.prebuild                      # every level this CPU can run
    python -m fastbp.prebuild --levels x86-64-v4

Run it before building a wheel (the code goes to fastbp/_prebuilt/<level>/, which the wheel
carries), once per Python version the wheel is for (each version's files are its own). Each level compiles in a process of its
own with Numba told to compile for that level (NUMBA_CPU_NAME) and an empty Numba cache, and
runs `fastbp.warmup` there: dense and sparse (CSR) data, both dtypes, targets cpu and
parallel. Compiling a
level runs its code, so the machine must have the level's features.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .kernels.codes import LEVELS
from .kernels.prebuilt import BUILD_ENV, PACKAGE_DIR


def runnable_levels():
    """The levels this CPU has every feature of."""
    import llvmlite.binding as ll
    host = {name for name, has in ll.get_host_cpu_features().items() if has}
    return [level for level, features in LEVELS.items() if features <= host]


def build(level, out_dir=PACKAGE_DIR, dtypes=("float32", "float64"),
          targets=("cpu", "parallel"), sparse=True, verbose=True):
    """Compile one level's kernels for this Python into out_dir/level (replacing what this
    Python's version left there, keeping other versions'); returns the seconds it took."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {sorted(LEVELS)}, got {level!r}")
    if level not in runnable_levels():
        raise ValueError(f"level {level!r}: this CPU lacks some of its features, and "
                         "compiling a level runs its code; build it on a CPU that has them")
    target = Path(out_dir) / level
    for old in target.glob(f"*.py{sys.version_info[0]}{sys.version_info[1]}*"):
        old.unlink()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as numba_cache:
        env = dict(os.environ, NUMBA_CPU_NAME=level, NUMBA_CPU_FEATURES="",
                   NUMBA_CACHE_DIR=numba_cache, **{BUILD_ENV: target})
        code = (f"import fastbp; fastbp.warmup(dtypes={tuple(dtypes)!r}, "
                f"targets={tuple(targets)!r}, verbose={verbose!r}, sparse={sparse!r})")
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
    seconds = time.perf_counter() - t0
    if verbose:
        print(f"fastbp: {level} built into {target} in {seconds:.1f} s", flush=True)
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastbp.prebuild", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", nargs="+", choices=sorted(LEVELS),
                        help="default: every level this CPU can run")
    parser.add_argument("--out", default=str(PACKAGE_DIR),
                        help="folder of the levels' folders (default: the package's)")
    args = parser.parse_args(argv)
    for level in args.levels or runnable_levels():
        build(level, args.out)


if __name__ == "__main__":
    main()
