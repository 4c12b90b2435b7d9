"""The one inference path: the loop and its sink protocol, loading a checkpoint for inference
(stored config, given config checked, overrides, public checkpoints), the input contract, and
the `eval` / `predict` commands run from a checkpoint alone and refusing bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tpvkit.cli import app
from tpvkit.config import load_config, parse_override
from tpvkit.data.inputs import SceneInputs
from tpvkit.engine.checkpoint import (
    CheckpointError,
    build_checkpoint,
    override_text,
    save_checkpoint,
)
from tpvkit.engine.inference import (
    InferenceSink,
    LidarSegSink,
    load_for_inference,
    run_inference,
)

CPU = ["--set", "train.device=cpu", "--set", "data.num_workers=0"]


class RecordingSink:
    """A sink written against the protocol only: records what the loop hands it."""

    def __init__(self, needs_voxels: bool) -> None:
        self.needs_voxels = needs_voxels
        self.seen: list[tuple[list[str], bool, bool]] = []

    def add(self, batch, out) -> None:
        inference = torch.is_inference_mode_enabled()
        self.seen.append((list(batch["tokens"]), "voxel_logits" in out, inference))

    def finish(self) -> dict:
        return {"batches": len(self.seen)}


class FakeModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(17, 3))
        self.decoded: list[bool] = []

    def forward(self, inputs, decode_voxels=True):
        points = inputs.points
        self.decoded.append(decode_voxels)
        assert not self.training
        out = {"point_logits": torch.einsum("cd,bnd->bcn", self.w, points)}
        if decode_voxels:
            out["voxel_logits"] = torch.zeros(points.shape[0], 17, 2, 2, 2)
        return out


def _batches(count: int = 2) -> list[dict]:
    return [
        {
            "inputs": SceneInputs(
                img=torch.zeros(1, 6, 3, 4, 4),
                projection=torch.eye(4).expand(1, 6, 4, 4),
                points=torch.randn(1, 5, 3),
            ),
            "num_points": torch.tensor([5]),
            "tokens": [f"s{i}"],
        }
        for i in range(count)
    ]


def test_run_inference_feeds_every_sink_and_decodes_voxels_only_when_needed() -> None:
    model = FakeModel().train()
    points_only = RecordingSink(needs_voxels=False)
    assert isinstance(points_only, InferenceSink)
    (result,) = run_inference(model, _batches(), "cpu", [points_only], progress=False)
    assert result == {"batches": 2} and model.decoded == [False, False]
    assert [s[:2] for s in points_only.seen] == [(["s0"], False), (["s1"], False)]
    assert all(s[2] for s in points_only.seen)  # inside inference_mode
    assert model.training  # the caller's mode is restored

    model.decoded.clear()
    a, b = RecordingSink(False), RecordingSink(True)
    results = run_inference(model, _batches(3), "cpu", [a, b], progress=False)
    assert results == [{"batches": 3}, {"batches": 3}] and model.decoded == [True] * 3
    assert all(seen[1] for seen in a.seen)  # both sinks see the decoded voxels


def test_lidarseg_sink_is_an_inference_sink() -> None:
    assert isinstance(LidarSegSink(), InferenceSink) and LidarSegSink(False).needs_voxels is False


# ---------------------------------------------------------------------------------------------
# Loading for inference


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[object, Path]:
    """(config, checkpoint) of a randomly initialised tpv_tiny."""
    from tpvkit.models.tpvformer import build_model

    cfg = load_config("tpv_tiny", ["train.device=cpu", "data.num_workers=0"])
    torch.manual_seed(0)
    model = build_model(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint(build_checkpoint(model=model, cfg=cfg), path)
    return cfg, path


def test_load_for_inference_takes_the_stored_config_or_checks_a_given_one(tiny) -> None:
    cfg, path = tiny
    loaded = load_for_inference(path)
    assert loaded.config_from == "checkpoint" and loaded.cfg.name == "tpv_tiny"
    assert loaded.cfg.data.img_size == cfg.data.img_size and loaded.device.type == "cpu"
    assert not loaded.model.training and loaded.source == "tpvkit"
    given = load_for_inference(path, load_config("tpv_tiny"), ["data.num_workers=3"], "cpu")
    assert given.config_from == "given" and given.cfg.data.num_workers == 3
    for a, b in zip(loaded.model.parameters(), given.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Runtime keys are not part of the contract: batch sizes, workers, augmentation, backend.
    runtime = ["eval.batch_size=2", "data.photometric_aug=false", "model.encoder.msda_backend=ref"]
    assert load_for_inference(path, None, runtime).cfg.eval.batch_size == 2
    with pytest.raises(CheckpointError, match="model.encoder.num_hab"):
        load_for_inference(path, load_config("tpv_tiny", ["model.encoder.num_hab=2"]))


def test_a_public_checkpoint_needs_a_config(tmp_path: Path) -> None:
    torch.save({"state_dict": {"img_backbone.conv1.weight": torch.zeros(1)}}, tmp_path / "p.pth")
    with pytest.raises(CheckpointError) as err:
        load_for_inference(tmp_path / "p.pth")
    assert str(err.value).startswith("give CONFIG: ")
    assert "p.pth is a public TPVFormer checkpoint and stores no config" in str(err.value)


def test_a_public_checkpoint_loads_for_inference_under_a_given_config(tmp_path: Path) -> None:
    from tpvkit.models.checkpoint_keys import tpvkit_to_public
    from tpvkit.models.tpvformer import build_model

    cfg = load_config("tpv_tiny", ["model.encoder.num_hab=0", "train.device=cpu"])
    torch.manual_seed(1)
    src = build_model(cfg)
    public = {f"module.{k}": v for k, v in tpvkit_to_public(src.state_dict()).items()}
    torch.save({"state_dict": public, "meta": {"iter": 5}}, tmp_path / "public.pth")
    loaded = load_for_inference(tmp_path / "public.pth", cfg, ["data.num_workers=0"])
    assert loaded.source == "public" and loaded.config_from == "given"
    for key, value in src.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    result = _invoke(["eval", str(tmp_path / "public.pth"), "--infos", "x.json"])
    assert result.exit_code == 2
    assert "give CONFIG: " in _one_line_error(result.output)


@pytest.mark.parametrize("value", [[4, 8, 8], [224, 400], [0.0, 0.5, -1.25], True, "tpvformer"])
def test_printed_overrides_parse_back_to_the_value(value) -> None:
    text = override_text("model.encoder.num_points_ica", value)
    assert " " not in text
    key, parsed = parse_override(text)
    assert key == "model.encoder.num_points_ica" and parsed == value


# ---------------------------------------------------------------------------------------------
# The commands


def _invoke(args: list[str]):
    return CliRunner().invoke(app, args)


def _one_line_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output
    return lines[0]


@pytest.mark.slow
def test_eval_and_predict_run_from_a_checkpoint_alone(tiny, synthetic_infos, tmp_path) -> None:
    _, path = tiny
    val = str(synthetic_infos["mini_val"])
    out = tmp_path / "eval"
    result = _invoke(["eval", str(path), "--infos", val, "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"] == "tpv_tiny" and metrics["config_from"] == "checkpoint"
    assert metrics["num_samples"] == 4
    # A given config (--config here; CONFIG CHECKPOINT in test_evaluate) gives the same numbers.
    again = tmp_path / "again"
    form = [str(path), "--config", "tpv_tiny"]
    res = _invoke(["eval", *form, "--infos", val, "--out", str(again), "--no-progress", *CPU])
    assert res.exit_code == 0, res.output
    other = json.loads((again / "metrics.json").read_text())
    assert other["miou"] == metrics["miou"] and other["config_from"] == "given"

    preds = tmp_path / "preds"
    token = json.loads(Path(val).read_text())["samples"][0]["token"]
    result = _invoke(
        ["predict", str(path), "--infos", val, "--out", str(preds), "--tokens", token]
        + ["--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert [p.name for p in preds.iterdir()] == [f"{token}.npz"]


@pytest.mark.parametrize(
    "override",
    [
        "data.to_rgb=false",
        "data.img_mean=[0,0,0]",
        "data.img_size=[224,400]",
        "data.voxel_convention=tpvformer",
        "data.size_divisor=16",
        "model.encoder.num_points_ica=[4,8,4]",
    ],
)
def test_a_different_input_contract_is_refused_with_a_pasteable_fix(
    tiny, synthetic_infos, tmp_path, override
) -> None:
    _, path = tiny
    key = override.split("=")[0]
    val = str(synthetic_infos["mini_val"])
    args = ["eval", str(path), "--infos", val, "--out", str(tmp_path / "o"), "--set", override]
    result = _invoke(args)
    assert result.exit_code == 2
    line = _one_line_error(result.output)
    assert key in line and "(checkpoint) vs" in line
    fixes = re.findall(r"--set (\S+)", line)
    assert len(fixes) == 1
    fixed_key, fixed_value = parse_override(fixes[0].strip("'"))
    stored = json.loads(json.dumps(torch.load(path, weights_only=True)["config"]))
    section, *rest = key.split(".")
    expected = stored[section]
    for part in rest:
        expected = expected[part]
    assert fixed_key == key and fixed_value == expected
    assert not (tmp_path / "o").exists()
    # The same refusal for a given CONFIG that differs from the checkpoint.
    result = _invoke(
        ["predict", "tpv_tiny", str(path), "--infos", val, "--out", str(tmp_path / "p")]
        + ["--set", override]
    )
    assert result.exit_code == 2 and key in _one_line_error(result.output)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("option", ["--out", "--save-predictions"])
def test_an_output_under_a_file_is_refused_before_any_model_is_built(
    tiny, synthetic_infos, tmp_path, monkeypatch, option
) -> None:
    import tpvkit.models.tpvformer as tpvformer

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the output path was checked")

    monkeypatch.setattr(tpvformer, "build_model", no_model)
    _, path = tiny
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    val = str(synthetic_infos["mini_val"])
    for target in (blocker, blocker / "below"):
        args = ["eval", str(path), "--infos", val, option, str(target), "--no-progress"]
        if option == "--save-predictions":
            args += ["--out", str(tmp_path / "metrics")]
        result = _invoke(args)
        assert result.exit_code == 2, result.output
        assert option in _one_line_error(result.output) and str(blocker) in result.output
        if option == "--out":
            args = ["predict", str(path), "--infos", val, "--out", str(target)]
            result = _invoke(args)
            assert result.exit_code == 2 and "--out" in _one_line_error(result.output)
    assert blocker.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_corrupt_truncated_and_pickled_checkpoints_are_told_apart(
    tiny, synthetic_infos, tmp_path
) -> None:
    import argparse

    _, good = tiny
    val = str(synthetic_infos["mini_val"])
    random_bytes = tmp_path / "random.pth"
    random_bytes.write_bytes(bytes(range(256)) * 16)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1.0)}, pickled)
    expected = {
        random_bytes: ["is not a PyTorch checkpoint (corrupt or another format)"],
        truncated: ["is truncated/corrupt", "(was it copied completely?)"],
        pickled: [
            "holds pickled Python objects",
            "argparse.Namespace",
            "arbitrary code",
            "only for a file you trust",
        ],
    }
    for path, phrases in expected.items():
        for command in ("eval", "predict"):
            out = tmp_path / f"out_{command}_{path.stem}"
            result = _invoke(
                [command, str(path), "--config", "tpv_tiny", "--infos", val, "--out", str(out)]
            )
            assert result.exit_code == 2, result.output
            line = _one_line_error(result.output)
            assert str(path) in line
            for phrase in phrases:
                assert phrase in line, (phrase, line)
            if path is not pickled:
                assert "Python objects" not in line and "weights_only" not in line
            assert not out.exists()
