"""Every script in tools/ answers --help (STYLE.md: each runnable with --help)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = sorted((Path(__file__).resolve().parent.parent / "tools").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", TOOLS, ids=[p.name for p in TOOLS])
def test_tool_has_help(script):
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()
