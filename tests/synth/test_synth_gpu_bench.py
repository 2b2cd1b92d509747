"""bench/gpu.sh on a machine without a GPU: it says so and exits cleanly (make bench runs it everywhere)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script measures (minutes)")
def test_without_a_gpu_the_gpu_benchmark_says_so_and_exits_cleanly():
    done = subprocess.run(
        [str(ROOT / "bench" / "gpu.sh")],
        env=dict(os.environ, PY=sys.executable),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "no CUDA GPU here" in done.stdout and "nothing measured" in done.stdout
