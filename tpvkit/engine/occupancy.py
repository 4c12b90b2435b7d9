"""Dense occupancy in the engine: the metrics sink (Occ3D mIoU + RayIoU over a split) and the
prediction writer of `<sample_token>.npz` (key `pred`, the field's evaluation layout). The
occupancy losses live with the others in tpvkit.models.losses.

Sinks follow the inference loop's protocol: `needs_voxels`, `add(batch, out)` with the
collate_batch dict on the device and the model outputs, `finish() -> dict` (summed over DDP
ranks inside).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpvkit.data.occ3d import OCC3D_CLASS_NAMES, OCC3D_FREE, OCC3D_GRID, OCC3D_NUM_CLASSES
from tpvkit.errors import TpvkitError
from tpvkit.models.losses import require_occ3d_batch
from tpvkit.outputs.occ_metrics import OccupancyConfusion, RayIoU
from tpvkit.utils.io import atomic_write_bytes, check_output_dir


def _voxel_predictions(out: Mapping[str, torch.Tensor], grid: tuple[int, ...]) -> torch.Tensor:
    """(B, X, Y, Z) argmax class of the voxel logits, checked against the label grid."""
    if "voxel_logits" not in out:
        raise TpvkitError("the occupancy metrics need voxel logits: run with decode_voxels=True")
    logits = out["voxel_logits"]
    if tuple(logits.shape[2:]) != tuple(grid) or logits.shape[1] != OCC3D_NUM_CLASSES:
        raise TpvkitError(
            f"the model decodes {logits.shape[1]} classes on a {tuple(logits.shape[2:])} grid; "
            f"Occ3D scoring needs {OCC3D_NUM_CLASSES} classes on {tuple(grid)} in the ego frame "
            "(use configs/tpv_occ3d_base.yaml or tpv_occ3d_tiny.yaml)"
        )
    return logits.argmax(dim=1)


def _all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """Sum int64 counts over the ranks of an initialised process group, in place."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    for t in tensors:
        moved = t.to(device)
        dist.all_reduce(moved)
        t.copy_(moved.cpu())


def _class_dict(values: np.ndarray, names: tuple[str, ...]) -> dict[str, float | None]:
    return {n: None if np.isnan(v) else float(v) for n, v in zip(names, values, strict=True)}


class OccupancyMetricsSink:
    """Occ3D metrics over a split: mIoU inside mask_camera and without a mask, RayIoU at 1, 2,
    4 m (SparseOcc). Scores are fractions; classes absent from GT and prediction are None."""

    needs_voxels = True

    def __init__(self, ray_iou: bool = True) -> None:
        self.confusion_camera = OccupancyConfusion()
        self.confusion_all = OccupancyConfusion()
        self.ray_iou = RayIoU() if ray_iou else None
        self.num_samples = 0

    def add(self, batch: Mapping[str, Any], out: Mapping[str, torch.Tensor]) -> None:
        require_occ3d_batch(batch, "the occupancy metrics sink")
        gt = batch["occ_semantics"]  # (B, X, Y, Z)
        pred = _voxel_predictions(out, tuple(gt.shape[1:])).to(gt.device)
        self.confusion_camera.update(gt, pred, batch["occ_mask_camera"])
        self.confusion_all.update(gt, pred)
        if self.ray_iou is not None:
            for b in range(gt.shape[0]):
                self.ray_iou.add_frame(pred[b], gt[b], batch["ray_origins"][b])
        self.num_samples += int(gt.shape[0])

    def finish(self) -> dict[str, Any]:
        counts = torch.tensor([self.num_samples], dtype=torch.int64)
        tensors = [self.confusion_camera.matrix, self.confusion_all.matrix, counts]
        if self.ray_iou is not None:
            tensors += self.ray_iou.tensors()
        _all_reduce_sum(tensors)
        names = tuple(n for i, n in enumerate(OCC3D_CLASS_NAMES) if i != OCC3D_FREE)
        iou_cam = np.delete(self.confusion_camera.iou_per_class(), OCC3D_FREE)
        iou_all = np.delete(self.confusion_all.iou_per_class(), OCC3D_FREE)
        miou_cam, miou_all = self.confusion_camera.miou(), self.confusion_all.miou()
        results: dict[str, Any] = {
            "miou": None if np.isnan(miou_cam) else miou_cam,
            "iou_per_class": _class_dict(iou_cam, names),
            "miou_nomask": None if np.isnan(miou_all) else miou_all,
            "iou_per_class_nomask": _class_dict(iou_all, names),
            "num_samples": int(counts.item()),
            "confusion_matrix": self.confusion_camera.matrix.tolist(),
            "confusion_matrix_nomask": self.confusion_all.matrix.tolist(),
        }
        if self.ray_iou is not None:
            results.update(self.ray_iou.summary())
            results["num_rays"] = int(self.ray_iou.gt_count.sum().item())
        return results


class OccupancyPredictionWriter:
    """`--save-predictions DIR`: one `<sample_token>.npz` per sample with key `pred`, uint8
    (200, 200, 16), the layout the Occ3D / SparseOcc evaluation scripts read."""

    needs_voxels = True

    def __init__(self, out_dir: str | Path, option: str = "--save-predictions") -> None:
        self.out_dir = check_output_dir(out_dir, option)
        self.written = 0

    def add(self, batch: Mapping[str, Any], out: Mapping[str, torch.Tensor]) -> None:
        pred = _voxel_predictions(out, OCC3D_GRID).to(torch.uint8).cpu().numpy()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for token, volume in zip(batch["tokens"], pred, strict=True):
            write_prediction(self.out_dir / f"{token}.npz", volume)
            self.written += 1

    def finish(self) -> dict[str, Any]:
        counts = torch.tensor([self.written], dtype=torch.int64)
        _all_reduce_sum([counts])
        return {"predictions_written": int(counts.item()), "predictions_dir": str(self.out_dir)}


def write_prediction(path: str | Path, pred: np.ndarray) -> None:
    """One prediction file, written atomically: np.savez_compressed with key `pred`."""
    import io

    pred = np.asarray(pred)
    if pred.shape != OCC3D_GRID or not 0 <= int(pred.min()) <= int(pred.max()) <= OCC3D_FREE:
        raise TpvkitError(
            f"{path}: an Occ3D prediction is uint8 {OCC3D_GRID} in 0..{OCC3D_FREE}, got "
            f"{pred.dtype} {pred.shape}"
        )
    buf = io.BytesIO()
    np.savez_compressed(buf, pred=pred.astype(np.uint8))
    atomic_write_bytes(path, buf.getvalue())
