"""Builds shufflenet_ops._C: the C++ CPU kernels, plus the CUDA kernels when
torch was built with CUDA and nvcc is available.

Environment variables:
  SHUFFLENET_OPS_SKIP_CUDA=1    build the CPU kernels only.
  SHUFFLENET_OPS_CPU_ARCH=ARCH  value of -march for the CPU kernels (default
                                "native": the SIMD width is chosen at compile
                                time, so build on the machine that runs it, or
                                name a portable baseline such as x86-64-v3).
  TORCH_CUDA_ARCH_LIST          CUDA architectures (default "8.0;9.0").
"""

import glob
import os
import shutil

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def relative_sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def cuda_build_wanted():
    if os.environ.get("SHUFFLENET_OPS_SKIP_CUDA", "0") == "1":
        return False
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else shutil.which("nvcc")
    return torch.version.cuda is not None and nvcc is not None and os.path.exists(nvcc)


def extension():
    cpu_arch = os.environ.get("SHUFFLENET_OPS_CPU_ARCH", "native")
    cxx_flags = ["-O3", "-fopenmp", "-ffp-contract=fast", f"-march={cpu_arch}"]
    sources = relative_sources("csrc/*.cpp") + relative_sources("csrc/cpu/*.cpp")
    if not cuda_build_wanted():
        return CppExtension(
            "shufflenet_ops._C",
            sources,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    return CUDAExtension(
        "shufflenet_ops._C",
        sources + relative_sources("csrc/cuda/*.cu") + relative_sources("csrc/cuda/*.cpp"),
        extra_compile_args={
            "cxx": cxx_flags,
            "nvcc": ["-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"],
        },
        extra_link_args=["-fopenmp"],
    )


setup(ext_modules=[extension()], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
