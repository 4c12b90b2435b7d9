"""The occupancy sinks (metrics, prediction writer) and loss builders, driven by hand-made
batches and outputs through the inference-sink protocol (add / finish)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tpvkit.config import load_config
from tpvkit.data.inputs import SceneInputs
from tpvkit.engine.occupancy import OccupancyMetricsSink, OccupancyPredictionWriter
from tpvkit.errors import TpvkitError
from tpvkit.models.losses import (
    PLAIN_OCC3D_OVERRIDES,
    build_loss,
    occ3d_losses,
    tpv_occupancy_losses,
)
from tpvkit.outputs.occ_metrics import OccupancyConfusion, RayIoU

FREE = 17


def _scene(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    gt = torch.full((200, 200, 16), FREE, dtype=torch.int64)
    gt[:, :, :3] = 11
    gt[:8] = 15
    gt[110:120, 90:100, 3:7] = 4
    gt[torch.rand(gt.shape, generator=g) < 0.002] = 16
    return gt


def _batch(gts: list[torch.Tensor]) -> dict:
    B = len(gts)
    gt = torch.stack(gts)
    cam = torch.zeros_like(gt, dtype=torch.bool)
    cam[:, 50:150, 50:150] = True
    return {
        "occ_semantics": gt,
        "occ_mask_camera": cam,
        "occ_mask_lidar": cam.clone(),
        "ray_origins": [torch.tensor([[0.94, 0.0, 1.84]])] * B,
        "tokens": [f"tok{i}" for i in range(B)],
    }


def _logits(pred: torch.Tensor) -> dict:
    return {"voxel_logits": torch.nn.functional.one_hot(pred, 18).movedim(-1, 1).float()}


def test_metrics_sink_of_perfect_predictions():
    batch = _batch([_scene(0), _scene(1)])
    sink = OccupancyMetricsSink()
    assert sink.needs_voxels
    sink.add(batch, _logits(batch["occ_semantics"]))
    res = sink.finish()
    assert res["miou"] == res["miou_nomask"] == 1.0
    assert res["rayiou"] == res["rayiou_1"] == res["rayiou_2"] == res["rayiou_4"] == 1.0
    assert res["num_samples"] == 2
    assert res["iou_per_class"]["car"] == 1.0 and res["iou_per_class"]["bus"] is None
    assert "free" not in res["iou_per_class"]


def _pred(gt: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(10 + seed)
    p = gt.clone()
    p[torch.rand(gt.shape, generator=g) < 0.05] = 4
    p[:, :, 3] = torch.where(p[:, :, 3] == FREE, 13, p[:, :, 3])
    return p


def test_metrics_sink_equals_the_metrics_over_the_split():
    gts = [_scene(s) for s in range(3)]
    preds = [_pred(gt, s) for s, gt in enumerate(gts)]
    sink = OccupancyMetricsSink()
    sink.add(_batch(gts[:2]), _logits(torch.stack(preds[:2])))  # batches of 2 and 1
    sink.add(_batch(gts[2:]), _logits(torch.stack(preds[2:])))
    res = sink.finish()
    cam, full, rays = OccupancyConfusion(), OccupancyConfusion(), RayIoU()
    for gt, p in zip(gts, preds, strict=True):
        b = _batch([gt])
        cam.update(gt, p, b["occ_mask_camera"][0])
        full.update(gt, p)
        rays.add_frame(p, gt, b["ray_origins"][0])
    assert res["miou"] == pytest.approx(cam.miou())
    assert res["miou_nomask"] == pytest.approx(full.miou())
    assert res["miou"] != res["miou_nomask"]
    summary = rays.summary()
    assert res["rayiou"] == pytest.approx(summary["rayiou"])
    assert res["rayiou_2"] == pytest.approx(summary["rayiou_2"])
    assert 0 < res["rayiou"] < 1 and res["num_samples"] == 3


def test_metrics_sink_refuses_a_lidarseg_batch_or_a_wrong_grid():
    sink = OccupancyMetricsSink()
    with pytest.raises(TpvkitError, match="--occ3d"):
        sink.add({"tokens": ["a"]}, {"voxel_logits": torch.zeros(1, 18, 200, 200, 16)})
    with pytest.raises(TpvkitError, match="200, 200, 16"):
        sink.add(_batch([_scene(0)]), {"voxel_logits": torch.zeros(1, 17, 200, 200, 16)})


def test_prediction_writer(tmp_path):
    batch = _batch([_scene(0), _scene(1)])
    out_dir = tmp_path / "preds"
    writer = OccupancyPredictionWriter(out_dir)
    writer.add(batch, _logits(batch["occ_semantics"]))
    assert writer.finish()["predictions_written"] == 2
    with np.load(out_dir / "tok1.npz") as f:
        assert f.files == ["pred"]
        assert f["pred"].dtype == np.uint8 and f["pred"].shape == (200, 200, 16)
        np.testing.assert_array_equal(f["pred"], batch["occ_semantics"][1].numpy())
    (tmp_path / "file").write_text("x")
    with pytest.raises(TpvkitError, match="--save-predictions"):
        OccupancyPredictionWriter(tmp_path / "file")


class _ConstModel(torch.nn.Module):
    """Returns learnable voxel logits of a fixed grid (stands in for TPVFormer)."""

    def __init__(self, grid=(200, 200, 16)) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(1, 18, *grid))

    def forward(self, inputs, decode_voxels=True, decode_points=True):
        return {"voxel_logits": self.logits.expand(inputs.batch_size, -1, -1, -1, -1)}


def test_occ3d_loss_respects_the_protocol():
    from tpvkit.config import apply_overrides

    cfg = apply_overrides(load_config("tpv_occ3d_tiny"), list(PLAIN_OCC3D_OVERRIDES))
    batch = _batch([_scene(0)])
    batch["inputs"] = SceneInputs(
        img=torch.zeros(1, 6, 3, 8, 8), projection=torch.eye(4).repeat(1, 6, 1, 1), frame="ego"
    )
    model = _ConstModel()
    with torch.no_grad():
        model.logits[0, FREE, 150:] = 5.0  # confidently free outside the camera mask
    inside = build_loss(cfg)(model, batch)
    cfg.train.occ_loss_mask = "all"
    everywhere = occ3d_losses(cfg)(model, batch)
    assert set(inside) == {"loss", "loss_ce", "loss_lovasz"}
    # with a uniform prediction inside the mask, CE is log(18) there
    assert inside["loss_ce"].item() == pytest.approx(np.log(18), rel=1e-6)
    assert everywhere["loss_ce"].item() != pytest.approx(inside["loss_ce"].item())
    inside["loss"].backward()
    grad = model.logits.grad
    assert grad[0, :, 150:].abs().sum() == 0 and grad[0, :, 60:140, 60:140].abs().sum() > 0


def test_tpv_occupancy_loss_fills_unobserved_voxels_with_free():
    cfg = load_config("tpv_occupancy")
    grid = (4, 4, 2)
    voxel_labels = torch.zeros(1, *grid, dtype=torch.int64)
    voxel_labels[0, 1, 1, 0] = 4
    batch = {
        "inputs": SceneInputs(
            img=torch.zeros(1, 6, 3, 8, 8), projection=torch.eye(4).repeat(1, 6, 1, 1)
        ),
        "voxel_labels": voxel_labels,
        "point_voxel_index": torch.tensor([[[1, 1, 0], [2, 2, 1], [0, 0, 0]]]),
        "point_mask": torch.tensor([[True, True, False]]),
    }
    model = _ConstModel(grid)
    with torch.no_grad():
        model.logits[0, FREE] = 20.0
        model.logits[0, 4, 1, 1, 0] = 40.0
    terms = tpv_occupancy_losses(cfg)(model, batch)
    # every supervised voxel is predicted right: (2, 2, 1) holds a label-0 point (ignored)
    assert terms["loss_ce"].item() < 1e-6 and terms["loss_lovasz"].item() < 1e-6
    with torch.no_grad():
        model.logits[0, 4, 3, 3, 1] = 40.0  # an unobserved voxel predicted car: penalised
    # 31 supervised voxels (32 minus the ignored one), one of them with CE 20
    assert tpv_occupancy_losses(cfg)(model, batch)["loss_ce"].item() == pytest.approx(20 / 31)


def test_loss_selection_and_model_checks():
    cfg = load_config("tpv_tiny")
    assert build_loss(cfg) is not None  # lidarseg: lidarseg_losses
    cfg.train.loss = "occ3d"
    with pytest.raises(TpvkitError, match="num_classes=18"):
        build_loss(cfg)


DDP_SCRIPT = """
import json, sys
import torch.distributed as dist
from test_occupancy import _batch, _logits, _pred, _scene
from tpvkit.engine.occupancy import OccupancyMetricsSink

dist.init_process_group("gloo")
rank = dist.get_rank()
sink = OccupancyMetricsSink()
gt = _scene(rank)
sink.add(_batch([gt]), _logits(_pred(gt, rank)[None]))
with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
    json.dump(sink.finish(), f)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_metrics_sink_sums_over_ddp_ranks(tmp_path):
    """Two gloo ranks with one frame each report the metrics of both frames."""
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    script = tmp_path / "sink_ddp.py"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(here), str(here.parent.parent), env.get("PYTHONPATH", "")]
    )
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
           "2", "--master_addr", "127.0.0.1", "--master_port", str(port), str(script),
           str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = OccupancyMetricsSink()
    for s in (0, 1):
        gt = _scene(s)
        single.add(_batch([gt]), _logits(_pred(gt, s)[None]))
    expected = single.finish()
    for res in ranks:
        assert res["num_samples"] == 2
        for key in ("miou", "miou_nomask", "rayiou", "rayiou_1", "rayiou_4", "num_rays"):
            assert res[key] == pytest.approx(expected[key]), key


def test_classifier_bias_starts_at_the_log_priors():
    from tpvkit.engine.train import init_classifier_bias

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = torch.nn.Linear(4, 3)

    model = torch.nn.Module()
    model.head = Head()
    init_classifier_bias(model, [0.5, 0.5, 0.0])
    expected = [np.log(0.5), np.log(0.5), np.log(1e-6)]  # a class never seen: floored
    assert model.head.classifier.bias.tolist() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(TpvkitError, match="class_frequencies"):
        init_classifier_bias(model, [])


def test_metrics_sink_by_range_on_a_hand_made_frame():
    # Everything free and observed; four car voxels: voxel (100, 100) has its centre at
    # (0.2, 0.2) m (0.28 m away), (130, 100) at 12.2 m, (131, 100) at 12.6 m, (175, 100) at
    # 30.2 m. The prediction gets the near car, one of the two at 12 m (and adds a car at
    # (132, 100), 13.0 m) and misses the far one.
    gt = torch.full((200, 200, 16), FREE, dtype=torch.long)
    for x in (100, 130, 131, 175):
        gt[x, 100, 2] = 4
    pred = gt.clone()
    pred[131, 100, 2] = FREE
    pred[132, 100, 2] = 4
    pred[175, 100, 2] = FREE
    batch = {
        "occ_semantics": gt[None],
        "occ_mask_camera": torch.ones(1, 200, 200, 16, dtype=torch.bool),
        "occ_mask_lidar": torch.ones(1, 200, 200, 16, dtype=torch.bool),
        "ray_origins": [torch.zeros(1, 3)],
        "tokens": ["t"],
    }
    sink = OccupancyMetricsSink(ray_iou=False, range_bins=(0, 10, 20, 30, 40))
    sink.add(batch, _logits(pred[None]))
    res = sink.finish()
    car = {k: v["car"] for k, v in res["iou_per_class_by_range"].items()}
    # 10-20 m: GT {130, 131}, prediction {130, 132}: IoU 1 / 3; 30-40 m: GT only: 0
    assert car == {"0-10 m": 1.0, "10-20 m": pytest.approx(1 / 3), "20-30 m": None, "30-40 m": 0.0}
    assert res["miou_by_range"]["0-10 m"] == 1.0
    assert res["miou_by_range"]["20-30 m"] is None  # free only: nothing to average
    assert res["iou_per_class"]["car"] == pytest.approx(2 / 5)  # the whole mask as before
    with pytest.raises(ValueError, match="ascend"):
        OccupancyMetricsSink(range_bins=(0, 20, 10))
