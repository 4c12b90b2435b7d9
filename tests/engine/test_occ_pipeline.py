"""Dense occupancy end to end on the synthetic set (which writes Occ3D labels): an oracle model
scores 100 through the real evaluation path, and train -> eval -> predict -> export ->
visualize run through the CLI on a tiny ego-frame occupancy model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from tpvkit.cli import app
from tpvkit.config import ConfigError, load_config
from tpvkit.data.occ3d import OCC3D_FREE, OCC3D_GRID, OCC3D_NUM_CLASSES
from tpvkit.errors import TpvkitError

OCC_KEYS = (
    "miou",
    "iou_per_class",
    "miou_nomask",
    "iou_per_class_nomask",
    "rayiou",
    "rayiou_1",
    "rayiou_2",
    "rayiou_4",
    "num_samples",
    "split",
)


class OracleModel(nn.Module):
    """Returns one-hot logits of the ground truth of the batches it is fed, in loader order:
    the Occ3D semantics as voxel logits, the lidarseg labels as point logits."""

    def __init__(self, batches: list[dict]) -> None:
        super().__init__()
        self.batches = batches
        self.calls = 0

    def forward(self, inputs, decode_voxels=True):  # noqa: ANN001
        batch = self.batches[self.calls]
        self.calls += 1
        C = OCC3D_NUM_CLASSES
        out = {"point_logits": nn.functional.one_hot(batch["point_labels"], C).permute(0, 2, 1)}
        if decode_voxels:
            vox = nn.functional.one_hot(batch["occ_semantics"], C)  # (B, X, Y, Z, C)
            out["voxel_logits"] = vox.permute(0, 4, 1, 2, 3).float()
        out["point_logits"] = out["point_logits"].float()
        return out


@pytest.fixture(scope="module")
def occ_cfg():
    return load_config("tpv_occ3d_tiny", ["data.num_workers=0"])


def _loader(cfg, infos):
    from tpvkit.data.dataset import LidarSegDataset, build_dataloader

    dataset = LidarSegDataset(infos, cfg.data, cfg.model, train=False)
    return build_dataloader(dataset, batch_size=2, num_workers=0)


def test_prediction_equal_to_ground_truth_scores_100(occ_cfg, synthetic_infos, tmp_path):
    from tpvkit.engine.evaluate import evaluate_model

    loader = _loader(occ_cfg, synthetic_infos["mini_val"])
    batches = list(loader)
    results = evaluate_model(
        OracleModel(batches),
        batches,
        "cpu",
        task="occ3d",
        save_predictions=tmp_path / "pred",
        progress=False,
    )
    assert results["task"] == "occupancy"
    for key in ("miou", "miou_nomask", "rayiou", "rayiou_1", "rayiou_2", "rayiou_4"):
        assert results[key] == pytest.approx(1.0), key
    assert results["num_samples"] == 4 and results["num_rays"] > 0
    assert results["lidarseg"]["miou"] == pytest.approx(1.0)  # the points, one-hot labels
    cm = np.asarray(results["confusion_matrix"])
    assert cm.shape == (18, 18) and cm.sum() == cm.trace()
    # the prediction files are the ground truth itself, in the layout the field reads
    for batch in batches:
        for b, token in enumerate(batch["tokens"]):
            with np.load(tmp_path / "pred" / f"{token}.npz") as npz:
                assert npz.files == ["pred"]
                assert npz["pred"].dtype == np.uint8 and npz["pred"].shape == OCC3D_GRID
                np.testing.assert_array_equal(npz["pred"], batch["occ_semantics"][b].numpy())


def test_a_wrong_voxel_lowers_exactly_its_classes(occ_cfg, synthetic_infos):
    """pred = GT except every 'car' voxel predicted free: car IoU 0, every other class 1."""
    from tpvkit.engine.evaluate import evaluate_model

    batches = list(_loader(occ_cfg, synthetic_infos["mini_val"]))
    edited = [
        {**b, "occ_semantics": torch.where(b["occ_semantics"] == 4, OCC3D_FREE, b["occ_semantics"])}
        for b in batches
    ]
    model = OracleModel(edited)
    res = evaluate_model(model, batches, "cpu", task="occ3d", progress=False)
    assert res["iou_per_class"]["car"] == 0.0
    others = [v for k, v in res["iou_per_class"].items() if k != "car" and v is not None]
    assert others and all(v == pytest.approx(1.0) for v in others)
    n = sum(v is not None for v in res["iou_per_class"].values())
    assert res["miou"] == pytest.approx((n - 1) / n)


def test_mixed_occ3d_links_are_refused(synthetic_infos):
    from tpvkit.data.infos import load_infos
    from tpvkit.engine.evaluate import has_occ3d_labels

    info_set = load_infos(synthetic_infos["mini_val"])
    assert has_occ3d_labels(info_set, "val")
    info_set.samples[0] = {k: v for k, v in info_set.samples[0].items() if k != "occ3d_path"}
    with pytest.raises(TpvkitError, match="link no Occ3D labels"):
        has_occ3d_labels(info_set, "val.json")


def test_train_loss_follows_the_config():
    from tpvkit.models.losses import build_loss

    for name, loss in (("tpv_occ3d_tiny", "occ3d"), ("tpv_occupancy", "tpv_occupancy")):
        # the occ3d recipe's class weights come from frequencies counted when training starts
        cfg = load_config(name, [f"train.class_frequencies={[1 / 18] * 18}"])
        assert cfg.train.loss == loss
        assert build_loss(cfg).__qualname__.startswith(f"{loss}_losses")
    assert build_loss(load_config("tpv_tiny")).__qualname__.startswith("lidarseg_losses")
    assert load_config("bev_occ3d_tiny").model.mode == "bev"


def test_training_writes_the_sampled_prior_correction():
    from tpvkit.engine.train import resolve_voxel_logit_offset

    freqs = [0.002] * 17 + [1 - 0.034]  # free 96.6 %: r = 0.966 / 0.034 free per occupied
    cfg = load_config("tpv_occ3d_tiny", [f"train.class_frequencies={freqs}"])
    assert cfg.train.occ_free_per_occupied == 8 and not cfg.model.head.voxel_logit_offset
    resolve_voxel_logit_offset(cfg)
    offset = cfg.model.head.voxel_logit_offset
    assert offset[:17] == [0.0] * 17
    assert offset[17] == pytest.approx(math.log(0.966 / 0.034 / 8))
    # a stated offset wins; the switch off or the dense loss leave it empty
    stated = load_config(
        "tpv_occ3d_tiny",
        [f"train.class_frequencies={freqs}", f"model.head.voxel_logit_offset={[0.5] * 18}"],
    )
    resolve_voxel_logit_offset(stated)
    assert stated.model.head.voxel_logit_offset == [0.5] * 18
    for override in ("train.occ_sampled_prior_correction=false", "train.occ_free_per_occupied=0"):
        off = load_config("tpv_occ3d_tiny", [f"train.class_frequencies={freqs}", override])
        resolve_voxel_logit_offset(off)
        assert off.model.head.voxel_logit_offset == []
    with pytest.raises(ConfigError, match="model.head.voxel_logit_offset: give 18 values"):
        load_config("tpv_occ3d_tiny", ["model.head.voxel_logit_offset=[1.0]"])


@pytest.mark.slow
def test_cli_train_eval_predict_export_visualize(synthetic_root, synthetic_infos, tmp_path):
    runner = CliRunner()
    train_infos, val_infos = synthetic_infos["mini_train"], synthetic_infos["mini_val"]
    work = tmp_path / "work"
    sets = [
        f"data.train_infos={train_infos}",
        f"data.val_infos={val_infos}",
        f"data.dataroot={synthetic_root}",
        "data.num_workers=0",
        "train.max_iters=1",
        "train.val_interval=1",
        "train.device=cpu",
    ]
    args = ["train", "tpv_occ3d_tiny", "--work-dir", str(work)]
    for s in sets:
        args += ["--set", s]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r.get("kind") == "val"]
    assert val and "rayiou" in val[-1] and "miou_nomask" in val[-1]  # occupancy validation

    ckpt = work / "latest.pth"
    res = runner.invoke(
        app,
        [
            "eval",
            str(ckpt),
            "--infos",
            str(val_infos),
            "--out",
            str(tmp_path / "ev"),
            "--save-predictions",
            str(tmp_path / "occ_pred"),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "Occ3D occupancy" in res.output and "RayIoU (mean" in res.output  # the table
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for key in OCC_KEYS:
        assert key in metrics, key
    assert metrics["task"] == "occupancy" and metrics["num_samples"] == 4
    assert len(metrics["iou_per_class"]) == 17  # classes 0..16, free excluded
    assert metrics["lidarseg"] is not None and "miou" in metrics["lidarseg"]
    files = sorted((tmp_path / "occ_pred").glob("*.npz"))
    assert len(files) == 4
    with np.load(files[0]) as npz:
        assert npz.files == ["pred"] and npz["pred"].dtype == np.uint8
        assert npz["pred"].shape == OCC3D_GRID

    from tpvkit.data.infos import load_infos

    token = load_infos(val_infos).samples[0]["token"]
    res = runner.invoke(
        app,
        [
            "predict",
            str(ckpt),
            "--infos",
            str(val_infos),
            "--out",
            str(tmp_path / "pred"),
            "--tokens",
            token,
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    from tpvkit.data.occ3d import read_labels
    from tpvkit.outputs.prediction_file import load_prediction

    pred = load_prediction(tmp_path / "pred" / f"{token}.npz")
    assert pred.frame == "ego" and pred.grid_shape == OCC3D_GRID
    sample = load_infos(val_infos).samples[0]
    labels = read_labels(load_infos(val_infos).resolve(sample["occ3d_path"]))
    np.testing.assert_array_equal(pred.gt_voxels, labels.semantics)
    np.testing.assert_array_equal(pred.gt_mask_camera, labels.mask_camera)
    np.testing.assert_array_equal(pred.gt_mask_lidar, labels.mask_lidar)
    np.testing.assert_array_equal(pred.occupied, pred.voxels != OCC3D_FREE)
    # cam_lidar2img maps ego points to pixels: ego2img @ lidar2ego == the LiDAR projection
    from tpvkit.outputs.predict import camera_fields

    lidar_cams = camera_fields(load_infos(val_infos), sample)["cam_lidar2img"]
    np.testing.assert_allclose(pred.cam_lidar2img @ pred.lidar2ego, lidar_cams, atol=1e-6)

    for frame in ("lidar", "ego"):
        res = runner.invoke(
            app,
            [
                "export",
                str(tmp_path / "pred" / f"{token}.npz"),
                "--out",
                str(tmp_path / f"gt_{frame}.ply"),
                "--frame",
                frame,
                "--source",
                "gt_voxels",
            ],
        )
        assert res.exit_code == 0, res.output
    from plyfile import PlyData

    ego = PlyData.read(str(tmp_path / "gt_ego.ply"))["vertex"]
    lid = PlyData.read(str(tmp_path / "gt_lidar.ply"))["vertex"]
    # free space hidden: one vertex per non-free voxel; Occ3D's class 0 'others' is a real
    # class of its label space (not lidarseg's ignored 'noise') and is shown
    expected = int((labels.semantics != OCC3D_FREE).sum())
    assert int((labels.semantics == 0).sum()) > 0  # the case is exercised
    assert len(ego) == len(lid) == expected
    assert ego["z"].min() > -1.0 and ego["z"].max() < 5.4  # ego-frame Occ3D heights

    res = runner.invoke(
        app,
        [
            "visualize",
            str(tmp_path / "pred" / f"{token}.npz"),
            "--out",
            str(tmp_path / "vis"),
            *("--width", "320", "--height", "240", "--supersample", "1"),
        ],
    )
    assert res.exit_code == 0, res.output
    for name in ("bev.png", "voxels_3d.png", "voxels_3d_gt.png", "cameras.png"):
        assert (tmp_path / "vis" / name).is_file(), name
