"""Builds shufflenet_ops._C: the C++ CPU kernels, plus the CUDA kernels when
torch was built with CUDA and nvcc is available.

Environment variables:
  SHUFFLENET_OPS_SKIP_CUDA=1    build the CPU kernels only.
  SHUFFLENET_OPS_CPU_ARCH=ARCH  value of -march for the CPU kernels (default
                                "native": the SIMD width is chosen at compile
                                time, so build on the machine that runs it, or
                                name a portable baseline such as x86-64-v3).
  TORCH_CUDA_ARCH_LIST          CUDA architectures (default "8.0;9.0+PTX": machine
                                code for A100 and H100/H200, PTX that newer GPUs compile).
  CUDA_HOME                     the CUDA toolkit (default: where the nvcc on PATH says
                                it lives).
"""

import glob
import os
import re
import shutil
import subprocess


def toolkit_of_nvcc():
    """The CUDA toolkit of the nvcc on PATH, as nvcc itself reports it. torch takes
    the folder above nvcc's, which is wrong where nvcc is a wrapper or link outside
    the toolkit (/usr/local/bin/nvcc, say): the build then fails for want of
    cuda_runtime_api.h."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        dryrun = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    top = re.search(r"^#\$ TOP=(.+)$", dryrun.stderr, re.MULTILINE)
    return os.path.realpath(top.group(1).strip()) if top else None


if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
    toolkit = toolkit_of_nvcc()
    if toolkit:
        # Read by torch.utils.cpp_extension when it is imported.
        os.environ["CUDA_HOME"] = toolkit

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

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
    runtime_header = os.path.join(CUDA_HOME or "", "include", "cuda_runtime_api.h")
    if not os.path.exists(runtime_header):
        raise RuntimeError(f"the CUDA toolkit at {CUDA_HOME!r} has no include/cuda_runtime_api.h: set CUDA_HOME "
                           "to the toolkit's folder, or SHUFFLENET_OPS_SKIP_CUDA=1 to build the CPU kernels only")
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
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
