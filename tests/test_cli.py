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
    ["prepare", "occupancy"],
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


def _blocker(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep")
    return blocker


@pytest.mark.parametrize(
    ("command", "out_name"),
    [
        (["export", "{input}"], "scene.ply"),
        (["visualize", "{input}"], "pictures"),
        (["prepare", "synthetic", "--scenes", "1"], "data"),
        (["prepare", "nuscenes", "--dataroot", "{input}", "--version", "v1.0-mini"], "infos"),
        (["prepare", "occupancy", "--dataroot", "{input}", "--version", "v1.0-mini"], "gts"),
    ],
    ids=["export", "visualize", "prepare-synthetic", "prepare-nuscenes", "prepare-occupancy"],
)
def test_out_below_a_file_is_refused_before_any_work(tmp_path, command, out_name):
    # INPUT does not even exist: the output path is checked before anything is read.
    blocker = _blocker(tmp_path)
    args = [a.replace("{input}", str(tmp_path / "missing_input")) for a in command]
    result = CliRunner().invoke(app, [*args, "--out", str(blocker / out_name)])
    assert result.exit_code == 2, result.output
    assert f"--out {blocker / out_name}: {blocker} is a file, not a folder" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert blocker.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing else written


def test_export_out_that_is_a_folder_and_visualize_out_that_is_a_file(tmp_path):
    folder = tmp_path / "folder.ply"
    folder.mkdir()
    result = CliRunner().invoke(app, ["export", str(tmp_path / "x.npz"), "--out", str(folder)])
    assert (
        result.exit_code == 2 and f"--out {folder} is a folder; give a file path" in result.output
    )
    blocker = _blocker(tmp_path)
    result = CliRunner().invoke(app, ["visualize", str(tmp_path / "x.npz"), "--out", str(blocker)])
    assert result.exit_code == 2
    assert f"--out {blocker} is a file, not a folder" in result.output
    assert blocker.read_text() == "keep"


def _not_group_writable(root):
    return [
        f"{p} {oct(p.stat().st_mode & 0o777)}"
        for p in [root, *root.rglob("*")]
        if not p.stat().st_mode & 0o020
    ]


@pytest.mark.slow
def test_prepare_synthetic_honours_the_umask(tmp_path):
    import os

    previous = os.umask(0o002)
    try:
        result = CliRunner().invoke(
            app,
            ["prepare", "synthetic", "--out", str(tmp_path / "d"), "--scenes", "1",
             "--samples-per-scene", "1", "--image-width", "64", "--image-height", "36",
             "--beams", "8", "--points-per-beam", "32"],
        )  # fmt: skip
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert any((tmp_path / "d" / "infos").glob("*.json"))
    assert _not_group_writable(tmp_path / "d") == []


def test_version():
    import tpvkit

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"tpvkit {tpvkit.__version__}"
