"""`tpvkit deploy` end to end on a tiny checkpoint, and its one-line refusals of bad input."""

from __future__ import annotations

import json

import pytest
import torch
from deploy_helpers import randomized_model, tiny_config
from typer.testing import CliRunner

from tpvkit.cli import app
from tpvkit.config import to_dict
from tpvkit.deploy import config_from_onnx, read_metadata
from tpvkit.engine.checkpoint import build_checkpoint

ONE_BLOCK = ["model.encoder.num_hcab=1", "model.encoder.num_hab=0"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = tiny_config("tpv_tiny", ONE_BLOCK)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(build_checkpoint(model=randomized_model(cfg), cfg=cfg), path)
    return path, cfg


def _invoke(*args: str):
    return CliRunner().invoke(app, ["deploy", *args])


@pytest.mark.slow
def test_deploy_writes_a_checked_model(tmp_path, checkpoint) -> None:
    ckpt, cfg = checkpoint
    out = tmp_path / "sub" / "model.onnx"
    result = _invoke(str(ckpt), "--out", str(out), "--outputs", "argmax,points", "--check")
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    assert "check: point_logits: max abs error" in result.output
    assert "check: voxel_argmax: argmax agreement 100.000%" in result.output
    assert json.loads(read_metadata(out)["tpvkit.outputs"]) == ["point_logits", "voxel_argmax"]
    assert to_dict(config_from_onnx(out)) == to_dict(cfg)
    assert [p.name for p in out.parent.iterdir()] == ["model.onnx"]  # no temporary left


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--outputs", "points,logits"], "--outputs: unknown output 'logits'"),
        (["--outputs", ","], "--outputs is empty"),
        (["--opset", "15"], "--opset 15: give 16.."),
        (["--set", "model.encoder.ffn_dim=128"], "different model config"),
        (["--set", "model.nope=1"], "unknown config key 'model.nope'"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path, checkpoint, args, message) -> None:
    ckpt, _ = checkpoint
    out = tmp_path / "model.onnx"
    result = _invoke(str(ckpt), "--out", str(out), *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not out.exists()


def test_bad_paths_exit_2(tmp_path, checkpoint) -> None:
    ckpt, _ = checkpoint
    result = _invoke(str(tmp_path / "missing.pth"), "--out", str(tmp_path / "m.onnx"))
    assert result.exit_code == 2 and "not found" in result.output
    result = _invoke(str(ckpt), "--out", str(tmp_path))
    assert result.exit_code == 2 and "is a folder" in result.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = _invoke(str(ckpt), "--out", str(blocker / "m.onnx"))
    assert result.exit_code == 2 and "is a file, not a folder" in result.output


def test_help() -> None:
    result = CliRunner().invoke(app, ["deploy", "--help"])
    assert result.exit_code == 0 and "--outputs" in result.output


def test_deploy_sets_up_the_checkpoint_as_eval_does(tmp_path, checkpoint) -> None:
    """One setup path (tpvkit.engine.inference.load_for_inference): a --set that changes the
    checkpoint's contract is refused with eval's message, before any export."""
    ckpt, _ = checkpoint
    out = tmp_path / "m.onnx"
    result = _invoke(str(ckpt), "--out", str(out), "--set", "model.encoder.num_hcab=2")
    assert result.exit_code == 2, result.output
    assert "trained with a different model config" in result.output
    assert "--set model.encoder.num_hcab=1" in result.output and not out.exists()
