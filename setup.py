"""Builds and installs the Python package lstmgrad (docs/python.md) by driving CMake:

    python3 -m pip install --no-build-isolation .

CMake configures a build of the library and the extension alone (no tests, no command line, no
CUDA) with this interpreter, builds the target lstmgrad_python, and the extension it writes is
installed with python/lstmgrad/*.py. Environment: LSTMGRAD_CMAKE_FLAGS (extra configure flags,
split at spaces), LSTMGRAD_BUILD_JOBS (parallel build jobs; default: the CPUs)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build = Path(self.build_temp).resolve() / "cmake"
        flags = [
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLSTMGRAD_WITH_PYTHON=ON",
            "-DLSTMGRAD_BUILD_TESTS=OFF",
            "-DLSTMGRAD_BUILD_CLI=OFF",
            "-DLSTMGRAD_WITH_CUDA=OFF",
            f"-DPython3_EXECUTABLE={sys.executable}",
            *os.environ.get("LSTMGRAD_CMAKE_FLAGS", "").split(),
        ]
        jobs = os.environ.get("LSTMGRAD_BUILD_JOBS", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), *flags], check=True)
        subprocess.run(
            ["cmake", "--build", str(build), "--target", "lstmgrad_python", "-j", jobs], check=True
        )
        built = sorted((build / "python" / "lstmgrad").glob("_core*.so"))
        if not built:
            raise RuntimeError(f"CMake built no lstmgrad/_core*.so under {build}")
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built[0], target)


setup(
    name="lstmgrad",
    version="0.1.0",
    description="LSTM stack with a hand-derived backward pass; numpy API and torch.nn.LSTM drop-in",
    packages=["lstmgrad"],
    package_dir={"": "python"},
    ext_modules=[Extension("lstmgrad._core", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.9",
    install_requires=["numpy"],
    zip_safe=False,
)
