"""tools/bench_gpu.py --dry-run: the whole GPU benchmark end to end on CPU with tiny shapes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_gpu_dry_run_runs_every_section():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench_gpu.py"), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.startswith("device: CPU")
    for needle in (
        "MSDA backends",
        "ICA    pytorch",
        "CVHA   grid_sample",
        "inference",
        "float32",
        "bf16 autocast",
        "training step",
        "done in",
    ):
        assert needle in out, needle
    # both training rows (checkpointing off and on) were timed
    assert out.count("GiB") >= 4
