"""Evaluation: a loop reference on hand-made batches, then the real model on the synthetic set
scored by tpvkit and by the official devkit (LidarSegEval), and the `tpvkit eval` command."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tpvkit.constants import CLASS_NAMES, NUM_CLASSES
from tpvkit.data.inputs import SceneInputs
from tpvkit.engine.evaluate import evaluate_model
from tpvkit.outputs.submission import read_prediction

GRID = (4, 5, 3)  # (X, Y, Z) of the fake model's voxel logits


class FakeModel(nn.Module):
    """Point logits from a fixed random projection of xyz, voxel logits from a fixed table."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.proj = nn.Parameter(torch.randn(num_classes, 3, generator=gen))
        self.table = nn.Parameter(torch.randn(num_classes, *GRID, generator=gen))
        self.calls: list[bool] = []
        self.modes: list[bool] = []

    def forward(self, inputs, decode_voxels=True):
        points = inputs.points
        self.calls.append(decode_voxels)
        self.modes.append(self.training)
        out = {"point_logits": torch.einsum("cd,bnd->bcn", self.proj, points)}
        if decode_voxels:
            out["voxel_logits"] = self.table.unsqueeze(0).expand(points.shape[0], -1, -1, -1, -1)
        return out


def fake_batches(seed: int = 0, labelled: bool = True) -> list[dict]:
    rng = np.random.default_rng(seed)
    batches = []
    for b_idx in range(3):
        counts = [int(rng.integers(5, 40)) for _ in range(2)]
        nmax = max(counts) + 3  # padding that must never be scored
        batch = {
            "inputs": SceneInputs(
                img=torch.zeros(2, 6, 3, 8, 8),
                projection=torch.eye(4).expand(2, 6, 4, 4),
                points=torch.from_numpy(rng.normal(size=(2, nmax, 3)).astype(np.float32)),
            ),
            "num_points": torch.tensor(counts),
            # Labels everywhere, padding included: slicing by num_points is what excludes it.
            "point_labels": torch.from_numpy(rng.integers(0, NUM_CLASSES, size=(2, nmax))),
            "point_voxel_index": torch.from_numpy(
                np.stack([rng.integers(0, g, size=(2, nmax)) for g in GRID], axis=-1)
            ),
            "lidar_tokens": [f"tok{b_idx}a", f"tok{b_idx}b"],
            "tokens": [f"s{b_idx}a", f"s{b_idx}b"],
        }
        if not labelled:
            del batch["point_labels"]
        batches.append(batch)
    return batches


def loop_reference(model: FakeModel, batches: list[dict]) -> tuple[list[float], list[float]]:
    """Per-class IoU (points, voxels) counted point by point in float64."""
    proj = model.proj.detach().double()
    table = model.table.detach().double()
    tallies = {kind: np.zeros((NUM_CLASSES, 3)) for kind in ("points", "voxels")}  # tp, fp, fn
    for batch in batches:
        for b in range(2):
            for i in range(int(batch["num_points"][b])):
                gt = int(batch["point_labels"][b, i])
                if gt == 0:
                    continue
                logits = proj @ batch["inputs"].points[b, i].double()
                x, y, z = (int(v) for v in batch["point_voxel_index"][b, i])
                vlogits = table[:, x, y, z]
                for kind, lg in (("points", logits), ("voxels", vlogits)):
                    pred = 1 + max(range(NUM_CLASSES - 1), key=lambda k, lg=lg: float(lg[k + 1]))
                    if pred == gt:
                        tallies[kind][gt, 0] += 1
                    else:
                        tallies[kind][pred, 1] += 1
                        tallies[kind][gt, 2] += 1
    out = []
    for kind in ("points", "voxels"):
        t = tallies[kind]
        union = t.sum(axis=1)
        out.append([t[k, 0] / union[k] if union[k] else math.nan for k in range(NUM_CLASSES)])
    return out[0], out[1]


def test_evaluate_model_matches_a_loop_and_writes_predictions(tmp_path: Path) -> None:
    model = FakeModel()
    batches = fake_batches()
    result = evaluate_model(
        model, batches, "cpu", save_predictions=tmp_path, progress=False, split="mini_val"
    )
    ref_points, ref_voxels = loop_reference(model, batches)
    for name, k in zip(CLASS_NAMES[1:], range(1, NUM_CLASSES), strict=True):
        for got, ref in (
            (result["iou_per_class"], ref_points),
            (result["iou_per_class_voxel"], ref_voxels),
        ):
            if math.isnan(ref[k]):
                assert got[name] is None
            else:
                assert got[name] == pytest.approx(ref[k], abs=1e-6)
    assert result["miou"] == pytest.approx(np.nanmean(ref_points[1:]), abs=1e-6)
    assert result["miou_voxel"] == pytest.approx(np.nanmean(ref_voxels[1:]), abs=1e-6)
    assert result["num_samples"] == 6
    assert result["num_points"] == sum(int(b["num_points"].sum()) for b in batches)
    assert model.calls == [True] * 3
    assert model.modes == [False] * 3 and model.training  # eval mode inside, restored after
    # One prediction file per cloud, in point order, equal to the argmax over classes 1..16.
    batch = batches[1]
    pred = read_prediction(tmp_path / "lidarseg" / "mini_val" / "tok1b_lidarseg.bin")
    n = int(batch["num_points"][1])
    logits = torch.einsum("cd,nd->cn", model.proj.detach(), batch["inputs"].points[1, :n])
    np.testing.assert_array_equal(pred, (logits[1:].argmax(0) + 1).numpy())
    assert (tmp_path / "mini_val" / "submission.json").is_file()


def test_evaluate_model_without_labels_or_voxels(tmp_path: Path) -> None:
    model = FakeModel()
    result = evaluate_model(
        model,
        fake_batches(labelled=False),
        "cpu",
        save_predictions=tmp_path,
        progress=False,
        split="test",
    )
    assert result["miou"] is None and result["iou_per_class"] is None
    assert result["miou_voxel"] is None
    assert len(list((tmp_path / "lidarseg" / "test").glob("*_lidarseg.bin"))) == 6
    model.calls.clear()
    result = evaluate_model(model, fake_batches(), "cpu", voxel_metrics=False, progress=False)
    assert model.calls == [False] * 3  # no voxel decoding when only points are scored
    assert result["miou"] is not None and result["miou_voxel"] is None


def test_occupancy_model_never_predicts_empty_at_a_lidar_point() -> None:
    """An 18-class (occupancy) model is scored on the lidarseg classes: "empty" is dropped."""
    lidarseg, occupancy = FakeModel(), FakeModel(NUM_CLASSES + 1)
    with torch.no_grad():
        occupancy.proj[:NUM_CLASSES] = lidarseg.proj
        occupancy.table[:NUM_CLASSES] = lidarseg.table
        occupancy.proj[NUM_CLASSES] = 0.0
        occupancy.table[NUM_CLASSES] = 1e6  # "empty" wins every voxel's argmax
    batches = fake_batches()
    a = evaluate_model(lidarseg, batches, "cpu", progress=False)
    b = evaluate_model(occupancy, batches, "cpu", task="tpv_occupancy", progress=False)
    assert a["confusion_matrix"] == b["confusion_matrix"]
    assert a["confusion_matrix_voxel"] == b["confusion_matrix_voxel"]


# ---------------------------------------------------------------------------------------------
# The real model on the synthetic dataroot, scored by tpvkit and by the official devkit


def unlabelled_copy(root: Path, dst: Path) -> Path:
    """The dataroot without lidarseg (as v1.0-test): tables copied, sensor folders linked."""
    import shutil

    dst.mkdir(parents=True)
    for name in ("samples", "sweeps", "maps"):
        (dst / name).symlink_to(root / name)
    shutil.copytree(root / "v1.0-mini", dst / "v1.0-mini")
    # An empty lidarseg table (and label folder) is how the devkit sees a split without labels.
    (dst / "v1.0-mini" / "lidarseg.json").write_text("[]")
    (dst / "lidarseg" / "v1.0-mini").mkdir(parents=True)
    return dst


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tpv_tiny saved as a tpvkit checkpoint; its classifier is scaled up
    so that the predictions spread over many classes (a freshly initialised head predicts
    nearly one class everywhere, which would make the devkit comparison weak)."""
    from tpvkit.config import load_config
    from tpvkit.engine.checkpoint import build_checkpoint, save_checkpoint
    from tpvkit.models.tpvformer import build_model

    cfg = load_config("tpv_tiny")
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for param in model.parameters():
            if param.shape[0] != NUM_CLASSES:
                continue
            if param.dim() == 2:  # the output layer: large weights, no bias
                param.normal_(0.0, 3.0)
            else:
                param.zero_()
    state = build_checkpoint(model=model, cfg=cfg)
    return save_checkpoint(state, tmp_path_factory.mktemp("ckpt") / "model.pth")


CPU = ["--set", "train.device=cpu", "--set", "data.num_workers=0"]


@pytest.fixture(scope="module")
def cli_run(checkpoint: Path, synthetic_infos: dict[str, Path], tmp_path_factory) -> dict:
    """`tpvkit eval` on mini_val with --save-predictions, run once for the tests below."""
    from typer.testing import CliRunner

    from tpvkit.cli import app

    out = tmp_path_factory.mktemp("eval")
    args = ["eval", "tpv_tiny", str(checkpoint), "--infos", str(synthetic_infos["mini_val"])]
    args += ["--out", str(out / "metrics"), "--save-predictions", str(out / "sub"), "--no-progress"]
    result = CliRunner().invoke(app, args + CPU)
    assert result.exit_code == 0, result.output
    return {"output": result.output, "out": out}


def test_cli_prints_the_table_and_writes_metrics_json(cli_run: dict) -> None:
    import json

    for name in CLASS_NAMES[1:]:
        assert name in cli_run["output"]
    assert "mIoU" in cli_run["output"] and "metrics.json" in cli_run["output"]
    metrics = json.loads((cli_run["out"] / "metrics" / "metrics.json").read_text())
    for key in ("miou", "iou_per_class", "miou_voxel", "iou_per_class_voxel", "num_samples"):
        assert key in metrics
    assert metrics["split"] == "mini_val" and metrics["num_samples"] == 4
    assert metrics["config"] == "tpv_tiny" and metrics["checkpoint"].endswith("model.pth")
    assert set(metrics["iou_per_class_voxel"]) == set(CLASS_NAMES[1:])
    assert 0.0 <= metrics["miou_voxel"] <= 1.0
    assert np.asarray(metrics["confusion_matrix"]).sum() == metrics["num_labelled_points"] > 0


def test_tpvkit_miou_equals_the_devkit_lidarseg_eval(cli_run: dict, synthetic_root: Path) -> None:
    import json

    from nuscenes import NuScenes
    from nuscenes.eval.lidarseg.evaluate import LidarSegEval
    from nuscenes.eval.lidarseg.validate_submission import validate_submission

    nusc = NuScenes("v1.0-mini", str(synthetic_root), verbose=False)
    sub = cli_run["out"] / "sub"
    validate_submission(nusc, str(sub), "mini_val")
    official = LidarSegEval(nusc, str(sub), "mini_val").evaluate()
    metrics = json.loads((cli_run["out"] / "metrics" / "metrics.json").read_text())
    assert metrics["miou"] == pytest.approx(official["miou"], abs=1e-9)
    assert metrics["freq_weighted_iou"] == pytest.approx(official["freq_weighted_iou"], abs=1e-9)
    predicted = sum(v is not None and v > 0 for v in metrics["iou_per_class"].values())
    assert predicted >= 2, "the comparison needs classes with a non-zero IoU"
    assert sum(v == 0.0 for v in metrics["iou_per_class"].values()) >= 2
    for name, value in official["iou_per_class"].items():
        if name == "ignore":
            continue
        if math.isnan(value):
            assert metrics["iou_per_class"][name] is None, name
        else:
            assert metrics["iou_per_class"][name] == pytest.approx(value, abs=1e-9), name


@pytest.mark.slow
def test_split_without_labels_only_writes_a_valid_submission(
    checkpoint: Path, synthetic_root: Path, synthetic_infos: dict[str, Path], tmp_path: Path
) -> None:
    import json

    from nuscenes import NuScenes
    from nuscenes.eval.lidarseg.validate_submission import validate_submission

    from tpvkit.config import load_config
    from tpvkit.engine.evaluate import evaluate

    document = json.loads(synthetic_infos["mini_val"].read_text())
    for sample in document["samples"]:
        sample.pop("lidarseg_path", None)
    infos = tmp_path / "infos_unlabelled.json"
    infos.write_text(json.dumps(document))
    cfg = load_config("tpv_tiny", ["train.device=cpu", "data.num_workers=0"])
    metrics = evaluate(
        cfg, checkpoint, infos, out_dir=tmp_path, save_predictions=tmp_path / "sub", progress=False
    )
    assert metrics["miou"] is None and metrics["iou_per_class"] is None
    assert metrics["miou_voxel"] is None and metrics["num_samples"] == 4
    assert json.loads((tmp_path / "metrics.json").read_text())["miou"] is None
    root = unlabelled_copy(synthetic_root, tmp_path / "root")
    nusc = NuScenes("v1.0-mini", str(root), verbose=False)
    assert len(nusc.lidarseg) == 0  # validate_submission now counts points in the .pcd.bin
    validate_submission(nusc, str(tmp_path / "sub"), "mini_val")


def test_bad_inputs_exit_non_zero_with_clear_messages(
    checkpoint: Path, synthetic_infos: dict[str, Path], tmp_path: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from tpvkit.cli import app

    runner = CliRunner()
    val = str(synthetic_infos["mini_val"])

    result = runner.invoke(app, ["eval", "tpv_tiny", str(tmp_path / "nope.pth"), "--infos", val])
    assert result.exit_code != 0 and "checkpoint not found" in result.output

    result = runner.invoke(
        app,
        ["eval", "tpv_tiny", str(checkpoint), "--infos", val, "--set", "model.encoder.num_hab=2"]
        + CPU,
    )
    assert result.exit_code != 0 and "different model config" in result.output
    assert "num_hab" in result.output

    document = json.loads(synthetic_infos["mini_val"].read_text())
    document["samples"] = []
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps(document))
    result = runner.invoke(app, ["eval", "tpv_tiny", str(checkpoint), "--infos", str(empty)])
    assert result.exit_code != 0 and "holds no samples" in result.output

    result = runner.invoke(
        app, ["eval", "tpv_tiny", str(checkpoint), "--infos", str(tmp_path / "missing.json")]
    )
    assert result.exit_code != 0 and "does not exist" in result.output
    assert not (tmp_path / "metrics.json").exists()
