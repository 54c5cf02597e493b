"""Builds the C++ CPU kernels as tsdi_kernels._C.

Build against the torch that is already installed:  pip install --no-build-isolation -e .
TSDI_NO_EXTENSION=1 skips the extension (the package then runs its ops on the pure-PyTorch reference).
No hardware is probed here: the kernels are compiled for a fixed ISA level (AVX2 + FMA, x86-64-v3) chosen by
TSDI_CPU_ARCH (default "x86-64-v3"; set "" to use the compiler default)."""
import glob
import os
import platform

from setuptools import setup

ext_modules, cmdclass = [], {}
if os.environ.get("TSDI_NO_EXTENSION", "0") != "1":
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    arch = os.environ.get("TSDI_CPU_ARCH", "x86-64-v3" if platform.machine() in ("x86_64", "AMD64") else "")
    cxx = ["-O3", "-fopenmp", "-DPy_LIMITED_API=0x03090000", "-std=c++17", "-ffp-contract=off"]
    if arch:
        # CPU_CAPABILITY_AVX2 selects ATen's AVX2 specialisation of at::vec::Vectorized in our translation units.
        cxx += [f"-march={arch}", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    ext_modules.append(
        CppExtension(
            "tsdi_kernels._C",
            sorted(glob.glob("csrc/*.cpp")),
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
            py_limited_api=True,
        )
    )
    cmdclass = {"build_ext": BuildExtension}

setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp39"}} if ext_modules else {},
)
