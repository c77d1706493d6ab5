"""Only the wheel's tag is decided here (the rest is pyproject.toml).

A wheel built after `python -m fastbp.prebuild` carries Numba-compiled x86-64 machine code
for this CPython version (fastbp/kernels/prebuilt.py), so it is tagged for them
(cp311-none-manylinux2014_x86_64): pip installs it there and the plain py3-none-any wheel,
built without the prebuild, everywhere else.
"""
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel

SHIPPED = Path(__file__).resolve().parent / "fastbp" / "_prebuilt"
# the cache files' Python tag, as fastbp.kernels.prebuilt.python_files matches it (not
# imported: the build environment has no Numba)
PYTHON = f"py{sys.version_info[0]}{sys.version_info[1]}{getattr(sys, 'abiflags', '')}"


def ships_machine_code():
    """Whether fastbp/_prebuilt holds code for the Python building the wheel."""
    return any(SHIPPED.glob(f"*/*.{PYTHON}.nbi"))


class BdistWheel(bdist_wheel):
    # the files still install into purelib: only the tag says where the code can run
    def get_tag(self):
        if not ships_machine_code():
            return super().get_tag()
        return f"cp{sys.version_info[0]}{sys.version_info[1]}", "none", "manylinux2014_x86_64"


setup(cmdclass={"bdist_wheel": BdistWheel})
