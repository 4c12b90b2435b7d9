"""The command line works without a GPU: every command has --help."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tpvkit.cli import app

COMMANDS = [
    ["prepare", "synthetic"],
    ["prepare", "nuscenes"],
    ["train"],
    ["eval"],
    ["predict"],
    ["export"],
    ["visualize"],
    ["demo"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command):
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_python_dash_m_help():
    out = subprocess.run(
        [sys.executable, "-m", "tpvkit", "--help"], capture_output=True, text=True, check=True
    )
    for name in ("prepare", "train", "eval", "predict", "export", "visualize", "demo"):
        assert name in out.stdout


def test_unknown_config_key_exits_non_zero_with_a_clear_message(tmp_path):
    result = CliRunner().invoke(
        app, ["train", "tpv_tiny", "--work-dir", str(tmp_path), "--set", "model.dimm=3"]
    )
    assert result.exit_code != 0
    assert "model.dim" in result.output
