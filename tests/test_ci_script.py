""".ci/run announces each step before it runs, and runs what it always ran:
the script is run with a stand-in ``python`` that only prints its arguments."""

import os
import pathlib
import subprocess

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / ".ci" / "run"

COMMANDS = [
    "-m pip install --quiet torch==2.13.0",
    "-m pip install --quiet -r requirements-test.txt",
    "-m pip install --quiet --no-build-isolation -e .",
    "-m pip download --quiet --no-deps --only-binary=:all: torchvision==0.28.* --dest {tmp}/wheels",
    "-m pytest tests -q -rs",
    "-m pip install --quiet --upgrade --no-deps --target {tmp}/triton triton==3.7.1",
    "-m pytest tests/test_triton.py -q",
]


def test_each_step_is_announced_before_it_runs(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "python"
    stand_in.write_text('#!/bin/sh\necho "RUN: $*"\n')
    stand_in.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", TORCHVISION_WHEEL_DIR=f"{tmp_path}/wheels",
               TRITON_37_DIR=f"{tmp_path}/triton")
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=True)
    lines = result.stdout.splitlines()
    runs = [i for i, line in enumerate(lines) if line.startswith("RUN: ")]
    assert [lines[i].removeprefix("RUN: ") for i in runs] == [c.format(tmp=tmp_path) for c in COMMANDS]
    for i in runs:
        assert i > 0 and lines[i - 1].startswith("==> "), f"no announcement before {lines[i]!r}"
    assert len(lines) == 2 * len(COMMANDS)  # one line per step, nothing else
