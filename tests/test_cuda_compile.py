"""CI compile check of the CUDA backend, no GPU needed: every torch-free kernel
source in csrc/cuda is compiled with nvcc for sm_80 and sm_90 with ptxas
reporting (-Xptxas -v), and every kernel must compile without register spills
or a local-memory stack frame. The fp16 / bf16 GEMM kernels must use the tensor
cores (HMMA in the machine code). The torch binding, which needs a CUDA build
of torch to compile, is parsed against the installed torch headers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CUDA_DIR = ROOT / "csrc" / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
ARCHS = ("80", "90")
# The kernel flags of setup.py's CUDA extension, and the defines that
# torch.utils.cpp_extension adds to every nvcc command (no implicit half / bf16
# conversions or operators).
NVCC_FLAGS = ["-std=c++17", "-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr",
              "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-D__CUDA_NO_HALF2_OPERATORS__"]


def find_nvcc() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def find_cuda_include() -> Path | None:
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if NVCC:
        candidates.append(str(Path(NVCC).resolve().parent.parent))
    for home in filter(None, candidates):
        if (Path(home) / "include" / "cuda_runtime_api.h").exists():
            return Path(home) / "include"
    return None


NVCC = find_nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (set CUDA_HOME or put nvcc on PATH)")


def compile_source(source: Path, arch: str, out_dir: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """Compiles one source for one arch, keeping the PTX; returns nvcc's run and the PTX path."""
    keep_dir = out_dir / f"{source.stem}.sm{arch}"
    keep_dir.mkdir()
    cmd = [NVCC, *NVCC_FLAGS, f"-arch=sm_{arch}", "-Xptxas", "-v", "-keep", f"-keep-dir={keep_dir}",
           "-c", str(source), "-o", str(keep_dir / f"{source.stem}.o")]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT), keep_dir / f"{source.stem}.ptx"


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """(source name, arch) -> (completed nvcc process, PTX path), compiled in parallel."""
    out_dir = tmp_path_factory.mktemp("nvcc")
    jobs = [(s, a) for s in SOURCES for a in ARCHS]
    # Largest sources first, so the long compiles do not trail at the end.
    jobs.sort(key=lambda job: -job[0].stat().st_size)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {(s.name, a): pool.submit(compile_source, s, a, out_dir) for s, a in jobs}
        return {key: f.result() for key, f in futures.items()}


# ptxas -v prints, per kernel: "Compiling entry function '<name>' for 'sm_XX'",
# then "<n> bytes stack frame, <s> bytes spill stores, <l> bytes spill loads".
ENTRY = re.compile(r"Compiling entry function '([^']+)'")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def kernel_reports(ptxas_output: str) -> dict[str, tuple[int, int, int]]:
    reports, current = {}, None
    for line in ptxas_output.splitlines():
        if m := ENTRY.search(line):
            current = m.group(1)
        elif (m := FRAME.search(line)) and current is not None:
            reports[current] = tuple(int(v) for v in m.groups())
            current = None
    return reports


def demangle(names):
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt:
        return list(names)
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout
    return out.splitlines()


def test_kernel_sources_exist():
    names = {s.name for s in SOURCES}
    assert {"channel_shuffle.cu", "pointwise_group_conv.cu", "grad_input.cu", "grad_weight.cu",
            "grad_bias.cu"} <= names


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", [s.name for s in SOURCES])
def test_compiles_without_spills(builds, source, arch):
    proc, _ = builds[(source, arch)]
    assert proc.returncode == 0, f"nvcc failed for {source} sm_{arch}:\n{proc.stderr[-4000:]}"
    reports = kernel_reports(proc.stderr + proc.stdout)
    assert reports, f"no ptxas kernel report for {source} sm_{arch}:\n{proc.stderr[-2000:]}"
    bad = {name: r for name, r in reports.items() if any(r)}
    assert not bad, "stack frame / spills (bytes: frame, stores, loads) in:\n" + "\n".join(
        f"  {d}: {r}" for d, r in zip(demangle(bad), bad.values()))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", ["pointwise_group_conv.cu", "grad_input.cu", "grad_weight.cu"])
def test_half_precision_gemms_use_tensor_cores(builds, source, arch):
    proc, ptx = builds[(source, arch)]
    assert proc.returncode == 0, proc.stderr[-2000:]
    entries = re.split(r"\.visible \.entry |\.entry ", ptx.read_text())[1:]
    names = demangle([e.split("(", 1)[0].strip() for e in entries])
    gemms = [(n, body) for n, body in zip(names, entries) if "gathered_gemm_kernel" in n]
    assert gemms, f"no GEMM kernels in the PTX of {source}"
    for name, body in gemms:
        half_precision = "__half" in name or "__nv_bfloat16" in name
        uses_tensor_cores = "mma.sync" in body
        assert uses_tensor_cores == half_precision, (
            f"{name}: tensor-core mma {'missing' if half_precision else 'unexpected'}")


def torch_include_paths():
    from torch.utils.cpp_extension import include_paths

    return include_paths()


def test_binding_parses_against_torch_headers(tmp_path):
    """binding.cpp compiles (syntax and types) against the installed torch.

    A CPU build of torch ships the c10/cuda headers but not the CMake-generated
    c10/cuda/impl/cuda_cmake_macros.h; a stand-in defining the one macro it
    holds lets the host compiler check the binding here."""
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    includes = torch_include_paths()
    if not any((Path(p) / "c10" / "cuda" / "CUDAStream.h").exists() for p in includes):
        pytest.skip("this torch ships no c10/cuda headers")
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cuda_include = find_cuda_include()
    if cuda_include is None:
        pytest.skip("CUDA headers (cuda_runtime_api.h) not found")
    cmd = [cxx, "-std=c++17", "-fsyntax-only", f"-I{tmp_path}", *(f"-I{p}" for p in includes),
           f"-I{cuda_include}", f"-I{sysconfig.get_paths()['include']}", str(CUDA_DIR / "binding.cpp")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode == 0, "\n".join(errors[:20]) or proc.stderr[-4000:]
