#!/usr/bin/env bash
# GPU check of the CUDA and Triton backends, for a machine with torch, triton, nvcc and
# ninja installed and no network: builds the extension, runs the tests that use
# the GPU (CUDA, autocast, Triton), measures copy bandwidth and runs the op
# benchmarks. The rest of the suite runs on CPU tensors alone: CI and
# benchmarks/cuda_build_check.sh run it. Writes under $OUT (default
# ./device-check): build.log, pytest.log, bench.log, the benchmarks' JSON files
# and summary.json (step exits, test counts, every failure's name and message).
# Each step has its own time limit; all of them together stay under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# The device's own architecture only: half the build time of the default list.
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
PYTHON=${PYTHON:-python3}
STEPS="$OUT/steps.tsv"
: >"$STEPS"

# step NAME LIMIT_SECONDS LOG COMMAND...: runs COMMAND under `timeout`, appends its output to LOG.
step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local start=$SECONDS
  echo "=== $name: $*" >>"$log"
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >>"$STEPS"
  echo "$name: exit $rc after $((SECONDS - start)) s"
  return $rc
}

{ nvidia-smi; nvcc --version; "$PYTHON" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } >"$OUT/build.log" 2>&1
step build 110 "$OUT/build.log" "$PYTHON" -m pip install --no-build-isolation --no-deps -e . \
  && step import 30 "$OUT/build.log" "$PYTHON" -c "
import torch, shufflenet_ops as so
assert torch.cuda.is_available()
print('backends on cuda:', so.available_backends('cuda'))" \
  || tail -n 60 "$OUT/build.log"

# A C++ exception raised by torch itself and by the library, each in a process
# of its own, before and after CUDA starts: tells a crash in the library's
# error path from one in the environment's unwinder; on a crash, cuda-gdb (it
# debugs host code too) prints the native stack.
step exceptions 40 "$OUT/build.log" "$PYTHON" - <<'PY'
import shutil, subprocess, sys

raise_from_torch = "\ntry: torch.ones(2, 3) @ torch.ones(2, 3)\nexcept RuntimeError: pass"
raise_from_library = ("\nimport shufflenet_ops\ntry: torch.ops.shufflenet_ops.channel_shuffle(x, 3)"
                      "\nexcept ValueError: pass")
probes = {
    "torch, CPU": "import torch" + raise_from_torch,
    "torch, after CUDA starts": "import torch\ntorch.ones(1, device='cuda')" + raise_from_torch,
    "library, CPU tensor": "import torch\nx = torch.ones(2, 4, 2, 2)" + raise_from_library,
    "library, CUDA tensor": "import torch\nx = torch.ones(2, 4, 2, 2, device='cuda')" + raise_from_library,
}
for name, code in probes.items():
    rc = subprocess.run([sys.executable, "-c", code], timeout=20).returncode
    print(f"exception probe, {name}: {'raised cleanly' if rc == 0 else f'exit {rc}'}")
    if rc != 0 and shutil.which("cuda-gdb"):
        subprocess.run(["cuda-gdb", "-batch", "-ex", "run", "-ex", "bt 25", "--args", sys.executable, "-c", code],
                       timeout=25)
PY
grep "exception probe" "$OUT/build.log"

# Test processes in parallel where pytest-xdist is installed.
PARALLEL=()
"$PYTHON" -c "import xdist" 2>/dev/null && PARALLEL=(-n 8)
step pytest 120 "$OUT/pytest.log" "$PYTHON" -m pytest tests/test_cuda.py tests/test_autocast.py \
  tests/test_triton.py tests/test_cuda_compile.py -q -rs -p no:cacheprovider "${PARALLEL[@]}" --junitxml="$OUT/junit.xml"

step bench_cuda 75 "$OUT/bench.log" "$PYTHON" benchmarks/bench_cuda.py --skip-triton --json "$OUT/bench_cuda.json"
step bench_triton 50 "$OUT/bench.log" "$PYTHON" benchmarks/bench_triton.py \
  --device cuda --dtype bfloat16 --quick --json "$OUT/bench_triton.json"
step bench_pointwise_group_conv 30 "$OUT/bench.log" "$PYTHON" benchmarks/bench_pointwise_group_conv.py \
  --device cuda --dtype bfloat16 --quick --json "$OUT/bench_pointwise_group_conv.json"
step bench_channel_shuffle 25 "$OUT/bench.log" "$PYTHON" benchmarks/bench_channel_shuffle.py \
  --device cuda --dtype bfloat16 --quick --json "$OUT/bench_channel_shuffle.json"

OUT="$OUT" "$PYTHON" - <<'PY'
import json, os, xml.etree.ElementTree as ET

out = os.environ["OUT"]
summary = {"steps": {}}
with open(os.path.join(out, "steps.tsv")) as f:
    for line in f:
        name, rc, seconds = line.rstrip("\n").split("\t")
        summary["steps"][name] = {"exit": int(rc), "seconds": int(seconds)}
try:
    suite = ET.parse(os.path.join(out, "junit.xml")).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    summary["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    summary["tests"]["failed"] = [
        f"{case.get('classname')}::{case.get('name')}: {(bad.get('message') or '')[:300]}"
        for case in suite.iter("testcase") for bad in case if bad.tag in ("failure", "error")
    ]
except (OSError, ET.ParseError) as e:
    summary["tests"] = {"unavailable": str(e)}
for name in ("bench_cuda", "bench_triton", "bench_pointwise_group_conv", "bench_channel_shuffle"):
    try:
        with open(os.path.join(out, f"{name}.json")) as f:
            data = json.load(f)
        summary[name] = {"environment": data.get("environment"), "summary": data.get("summary")}
    except (OSError, ValueError):
        pass
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
print(json.dumps(summary, indent=2))
PY
rm -f "$STEPS" "$OUT/junit.xml"
