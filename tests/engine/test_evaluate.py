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
from tpvkit.engine.evaluate import evaluate_model
from tpvkit.outputs.submission import read_prediction

GRID = (4, 5, 3)  # (X, Y, Z) of the fake model's voxel logits


class FakeModel(nn.Module):
    """Point logits from a fixed random projection of xyz, voxel logits from a fixed table."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.proj = nn.Parameter(torch.randn(NUM_CLASSES, 3, generator=gen))
        self.table = nn.Parameter(torch.randn(NUM_CLASSES, *GRID, generator=gen))
        self.calls: list[bool] = []
        self.modes: list[bool] = []

    def forward(self, img, lidar2img, points=None, decode_voxels=True):
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
            "img": torch.zeros(2, 6, 3, 8, 8),
            "lidar2img": torch.eye(4).expand(2, 6, 4, 4),
            "points": torch.from_numpy(rng.normal(size=(2, nmax, 3)).astype(np.float32)),
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
                logits = proj @ batch["points"][b, i].double()
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
    logits = torch.einsum("cd,nd->cn", model.proj.detach(), batch["points"][1, :n])
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
