"""Builds the C++ CPU kernels as tsdi_kernels._C.

Build against the torch that is already installed:  pip install --no-build-isolation -e .
TSDI_DISABLE_EXTENSION=1 skips the extension (the package then runs its CPU ops on the pure-PyTorch reference); the
same variable makes an installed package ignore a built extension at import.
No hardware is probed here: the kernels are compiled for a fixed ISA level (AVX2 + FMA, x86-64-v3) chosen by
TSDI_CPU_ARCH (default "x86-64-v3"; set "" to use the compiler default)."""
import glob
import os
import platform
import runpy

from setuptools import setup

ext_modules, cmdclass = [], {}
if os.environ.get("TSDI_DISABLE_EXTENSION", "0") != "1":
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    arch = os.environ.get("TSDI_CPU_ARCH", "x86-64-v3" if platform.machine() in ("x86_64", "AMD64") else "")
    # -ffp-contract=off: no fused multiply-adds behind our back, so `logits - strength * bias` and `z / T` round
    # exactly as torch's separate kernels do (the C++ tokens must equal the reference's). C++20: torch's headers.
    cxx = ["-O3", "-fopenmp", "-std=c++20", "-ffp-contract=off"]
    # Row status codes are written once, in tsdi_kernels/kernels/status.py (a file without imports).
    status = runpy.run_path(os.path.join("tsdi_kernels", "kernels", "status.py"))
    cxx += [f"-DTSDI_{name}={status[name]}" for name in status["CODES"]]
    # The top-p tie factor likewise, from tsdi_kernels/kernels/semantics.py (exact in decimal: 1 - 2**-18).
    semantics = runpy.run_path(os.path.join("tsdi_kernels", "kernels", "semantics.py"))
    cxx += [f"-DTSDI_TOP_P_SCALE={semantics['TOP_P_SCALE']!r}f",
            f"-DTSDI_MIN_P_LOG_SCALE={semantics['MIN_P_LOG_SCALE']!r}"]  # a double: 1 + 2**-18
    # One AVX2 build, no AVX-512 variant with run-time dispatch. Measured on the 2-core AMD EPYC development machine
    # (AVX2 + FMA, no AVX-512), 1 thread, B=8, V=128256 fp32 (8.2 MB of logits + bias rows per call):
    #   - torch's own vectorised sum of the same bytes: 0.17 ms (50 GB/s), the memory floor;
    #   - the fused pass of a greedy row: 0.20 ms (41 GB/s, 1.2x the floor): the streaming part (widen, debias,
    #     status flags, max) is load-bound, and 16-lane vectors cannot read memory faster;
    #   - top-k 50 + top-p 0.9 (the serving configuration and the benchmark bar): 0.58 ms (14 GB/s); the 0.4 ms
    #     above the floor is scalar candidate bookkeeping (nth_element compactions, sorting the ~50 survivors,
    #     Philox for 50 tokens), which AVX-512 does not touch (perf annotate puts ~55% of the scan loop samples on
    #     the instructions waiting for the logits and bias loads);
    #   - rows without any filter (Philox noise for every token that can still win): 6 ms, compute-bound in the
    #     10 Philox rounds (two vpmuludq per multiply on 8 lanes). Only here could 16 lanes gain (at most ~2x).
    # That mode is not the serving configuration and an AVX-512 build cannot be measured on this machine, so a
    # second build (CPU_CAPABILITY=AVX512 translation units + a cpuinfo switch at import) waits for a machine
    # that can show the gain. Hardware is never probed here: TSDI_CPU_ARCH picks the ISA level.
    if arch:
        # CPU_CAPABILITY_AVX2 selects ATen's AVX2 specialisation of at::vec::Vectorized in our translation units.
        cxx += [f"-march={arch}", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    ext_modules.append(
        CppExtension(
            "tsdi_kernels._C",
            sorted(glob.glob("csrc/*.cpp")),
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    )
    cmdclass = {"build_ext": BuildExtension}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
