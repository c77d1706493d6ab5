"""Compile the CPU kernels ahead of time into the package, for each x86-64 level they are
tuned for, so that a first fit loads them instead of compiling (kernels/prebuilt.py).

    python -m fastbp.prebuild                      # every level this CPU can run
    python -m fastbp.prebuild --levels x86-64-v4
    python -m fastbp.prebuild --check              # is what the package ships current?

Run it before building a wheel (the code goes to fastbp/_prebuilt/<level>/, which the wheel
carries), once per Python version the wheel is for (each version's files are its own), and
`--check` before uploading it: a wheel built without it ships nothing, and code built from
other sources is never loaded. Each level compiles in a process of its own with Numba told
to compile for that level (NUMBA_CPU_NAME=<level>, NUMBA_CPU_FEATURES=""), an empty Numba
cache and none of the caller's other NUMBA_ settings (Intel's SVML off, whose symbols a
user's Numba may lack), and runs `fastbp.warmup` there: dense and sparse (CSR) data, both
dtypes, targets cpu and parallel, and the entry points of bf16 models' products. Compiling
a level runs its code, so the machine must have the level's features.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .kernels.codes import LEVELS, hardware_features
from .kernels.prebuilt import BUILD_ENV, PACKAGE_DIR, USE_ENV, python_files, state

PACKAGE_ROOT = Path(__file__).resolve().parent.parent      # the fastbp being built


def runnable_levels():
    """The levels this CPU has every feature of."""
    host = hardware_features()
    return [level for level, features in LEVELS.items() if features <= host]


def _build_env(level, target, numba_cache):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NUMBA_") and k not in (BUILD_ENV, USE_ENV)}
    env.update(NUMBA_CPU_NAME=level, NUMBA_CPU_FEATURES="", NUMBA_DISABLE_INTEL_SVML="1",
               NUMBA_CACHE_DIR=numba_cache, PYTHONPATH=os.pathsep.join(
                   [str(PACKAGE_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]),
               **{BUILD_ENV: str(target)})
    return env


def build(level, out_dir=PACKAGE_DIR, dtypes=("float32", "float64"),
          targets=("cpu", "parallel"), sparse=True, bf16=True, verbose=True):
    """Compile one level's kernels for this Python into out_dir/level (replacing what this
    Python's version left there, keeping other versions', once the build has succeeded);
    returns the seconds it took. A failed build raises RuntimeError and changes nothing."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {sorted(LEVELS)}, got {level!r}")
    if level not in runnable_levels():
        raise ValueError(f"level {level!r}: this CPU lacks some of its features, and "
                         "compiling a level runs its code; build it on a CPU that has them")
    target = Path(out_dir) / level
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        built = Path(scratch) / level
        code = (f"import fastbp; fastbp.warmup(dtypes={tuple(dtypes)!r}, "
                f"targets={tuple(targets)!r}, verbose={verbose!r}, sparse={sparse!r})")
        if bf16 and "float32" in dtypes:        # bf16 models' products (their rounding, packing)
            code += "; from fastbp.kernels import gemm; gemm.enable_bf16()"
        run = subprocess.run([sys.executable, "-c", code],
                             env=_build_env(level, built, str(Path(scratch) / "numba")))
        if run.returncode != 0 or not python_files(built):
            raise RuntimeError(f"building {level} failed (exit status {run.returncode}; "
                               f"its output is above); {target} is unchanged")
        target.mkdir(parents=True, exist_ok=True)
        for old in python_files(target):
            old.unlink()
        for new in python_files(built):
            shutil.move(str(new), target / new.name)
    seconds = time.perf_counter() - t0
    if verbose:
        print(f"fastbp: {level} built into {target} in {seconds:.1f} s", flush=True)
    return seconds


def check(out_dir=PACKAGE_DIR):
    """{level: 'current' | 'stale' | 'missing'}: whether out_dir holds this Python's code of
    each level, stamped with the sources and settings of this process (sources_stamp)."""
    return {level: state(Path(out_dir) / level) for level in LEVELS}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastbp.prebuild", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", nargs="+", choices=sorted(LEVELS),
                        help="default: every level this CPU can run")
    parser.add_argument("--out", default=str(PACKAGE_DIR),
                        help="folder of the levels' folders (default: the package's)")
    parser.add_argument("--check", action="store_true",
                        help="build nothing: exit 1 unless every level (or --levels) is "
                             "current for this Python")
    args = parser.parse_args(argv)
    if args.check:
        states = check(args.out)
        wanted = args.levels or sorted(LEVELS)
        for level in wanted:
            print(f"{level}: {states[level]}")
        return 0 if all(states[level] == "current" for level in wanted) else 1
    levels = args.levels or runnable_levels()
    if not levels:
        print(f"{parser.prog}: this CPU has none of the levels {sorted(LEVELS)} (their "
              "code runs while it is built)", file=sys.stderr)
        return 2
    for level in levels:
        try:
            build(level, args.out)
        except (ValueError, RuntimeError) as e:
            print(f"{parser.prog}: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
