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

from tpvkit.data.occ3d import (
    OCC3D_CLASS_NAMES,
    OCC3D_FREE,
    OCC3D_GRID,
    OCC3D_NUM_CLASSES,
    OCC3D_RANGE,
    OCC3D_VOXEL_SIZE,
)
from tpvkit.engine.distributed import reduce_over_ranks
from tpvkit.errors import TpvkitError
from tpvkit.models.losses import require_occ3d_batch
from tpvkit.outputs.occ_metrics import RAY_THRESHOLDS, OccupancyConfusion, RayIoU, geometric_iou
from tpvkit.utils.io import atomic_write_bytes, check_output_dir


def _voxel_predictions(
    out: Mapping[str, torch.Tensor],
    grid: tuple[int, ...],
    num_classes: int | None = OCC3D_NUM_CLASSES,
) -> torch.Tensor:
    """(B, X, Y, Z) argmax class of the voxel logits, checked against the label grid (and the
    class count, unless `num_classes` is None)."""
    if "voxel_logits" not in out:
        raise TpvkitError("the occupancy metrics need voxel logits: run with decode_voxels=True")
    logits = out["voxel_logits"]
    wrong_classes = num_classes is not None and logits.shape[1] != num_classes
    if tuple(logits.shape[2:]) != tuple(grid) or wrong_classes:
        raise TpvkitError(
            f"the model decodes {logits.shape[1]} classes on a {tuple(logits.shape[2:])} grid; "
            f"Occ3D scoring needs {OCC3D_NUM_CLASSES} classes on {tuple(grid)} in the ego frame "
            "(use configs/tpv_occ3d_base.yaml or tpv_occ3d_tiny.yaml)"
        )
    return logits.argmax(dim=1)


def _class_dict(values: np.ndarray, names: tuple[str, ...]) -> dict[str, float | None]:
    return {n: None if np.isnan(v) else float(v) for n, v in zip(names, values, strict=True)}


class OccupancyMetricsSink:
    """Occ3D metrics over a split: mIoU inside mask_camera and without a mask, RayIoU at 1, 2,
    4 m (SparseOcc). Scores are fractions; classes absent from GT and prediction are None.

    Without `labelled` (a split that links no Occ3D labels) it only counts the samples and
    reports every score as None; `ray_iou` False reports the RayIoU keys as None. The keys are
    the same either way (and "task": "occupancy", the kind of report, as tpvkit 0.2 wrote it).

    `range_bins` (metres, ascending, e.g. (0, 10, 20, 30, 40)) adds "miou_by_range" and
    "iou_per_class_by_range", keyed "0-10 m", ...: the masked scores of the voxels whose centre
    lies at that horizontal distance from the ego origin (lower edge included).
    """

    needs_voxels = True
    logged_keys = ("miou", "miou_voxel", "num_samples", "miou_nomask", "rayiou")
    shown_keys = ("miou", "miou_nomask", "rayiou")

    def __init__(
        self, ray_iou: bool = True, labelled: bool = True, range_bins: tuple[float, ...] = ()
    ) -> None:
        self.labelled = labelled
        self.confusion_camera = OccupancyConfusion()
        self.confusion_all = OccupancyConfusion()
        if any(b <= a for a, b in zip(range_bins, range_bins[1:], strict=False)):
            raise ValueError(f"range_bins must ascend: {range_bins}")
        self.range_bins = tuple(float(b) for b in range_bins)
        self.confusion_by_range = [OccupancyConfusion() for _ in self.range_bins[1:]]
        self._distance: torch.Tensor | None = None
        self.ray_iou = RayIoU() if ray_iou and labelled else None
        self.num_samples = 0

    def add(self, batch: Mapping[str, Any], out: Mapping[str, torch.Tensor]) -> None:
        if not self.labelled:
            self.num_samples += len(batch["tokens"])
            return
        require_occ3d_batch(batch, "the occupancy metrics sink")
        gt = batch["occ_semantics"]  # (B, X, Y, Z)
        pred = _voxel_predictions(out, tuple(gt.shape[1:])).to(gt.device)
        self.confusion_camera.update(gt, pred, batch["occ_mask_camera"])
        self.confusion_all.update(gt, pred)
        if self.confusion_by_range:
            distance = self._voxel_distance(gt.device)
            mask = batch["occ_mask_camera"].bool()
            for lo, hi, confusion in zip(
                self.range_bins, self.range_bins[1:], self.confusion_by_range, strict=False
            ):
                confusion.update(gt, pred, mask & (distance >= lo) & (distance < hi))
        if self.ray_iou is not None:
            for b in range(gt.shape[0]):
                self.ray_iou.add_frame(pred[b], gt[b], batch["ray_origins"][b])
        self.num_samples += int(gt.shape[0])

    def _voxel_distance(self, device: torch.device) -> torch.Tensor:
        """(X, Y, 1) horizontal distance of each Occ3D voxel centre from the ego origin."""
        if self._distance is None:
            X, Y, _ = OCC3D_GRID
            x = OCC3D_RANGE[0] + (torch.arange(X, dtype=torch.float64) + 0.5) * OCC3D_VOXEL_SIZE
            y = OCC3D_RANGE[1] + (torch.arange(Y, dtype=torch.float64) + 0.5) * OCC3D_VOXEL_SIZE
            self._distance = torch.hypot(x[:, None], y[None, :])[:, :, None]
        return self._distance.to(device)

    def finish(self) -> dict[str, Any]:
        counts = torch.tensor([self.num_samples], dtype=torch.int64)
        tensors = [self.confusion_camera.matrix, self.confusion_all.matrix, counts]
        tensors += [c.matrix for c in self.confusion_by_range]
        if self.ray_iou is not None:
            tensors += self.ray_iou.tensors()
        reduce_over_ranks(tensors)
        results: dict[str, Any] = {
            "task": "occupancy",
            "miou": None,
            "iou_per_class": None,
            "miou_nomask": None,
            "iou_per_class_nomask": None,
            "rayiou": None,
            **{f"rayiou_{t:g}": None for t in RAY_THRESHOLDS},
            **{f"rayiou_per_class_{t:g}": None for t in RAY_THRESHOLDS},
            "num_rays": 0,
            "confusion_matrix": None,
            "confusion_matrix_nomask": None,
            "num_samples": int(counts.item()),
            # the voxel look-up of LiDAR points is a lidarseg score: under "lidarseg"
            "miou_voxel": None,
            "iou_per_class_voxel": None,
        }
        if not self.labelled:
            return results
        names = tuple(n for i, n in enumerate(OCC3D_CLASS_NAMES) if i != OCC3D_FREE)
        iou_cam = np.delete(self.confusion_camera.iou_per_class(), OCC3D_FREE)
        iou_all = np.delete(self.confusion_all.iou_per_class(), OCC3D_FREE)
        miou_cam, miou_all = self.confusion_camera.miou(), self.confusion_all.miou()
        results.update(
            {
                "miou": None if np.isnan(miou_cam) else miou_cam,
                "iou_per_class": _class_dict(iou_cam, names),
                "miou_nomask": None if np.isnan(miou_all) else miou_all,
                "iou_per_class_nomask": _class_dict(iou_all, names),
                "confusion_matrix": self.confusion_camera.matrix.tolist(),
                "confusion_matrix_nomask": self.confusion_all.matrix.tolist(),
            }
        )
        if self.ray_iou is not None:
            results.update(self.ray_iou.summary())
            results["num_rays"] = int(self.ray_iou.gt_count.sum().item())
        if self.confusion_by_range:
            by_miou, by_class = {}, {}
            for lo, hi, confusion in zip(
                self.range_bins, self.range_bins[1:], self.confusion_by_range, strict=False
            ):
                key = f"{lo:g}-{hi:g} m"
                miou = confusion.miou()
                by_miou[key] = None if np.isnan(miou) else miou
                by_class[key] = _class_dict(np.delete(confusion.iou_per_class(), OCC3D_FREE), names)
            results["miou_by_range"] = by_miou
            results["iou_per_class_by_range"] = by_class
        return results

    def print_results(self, results: Mapping[str, Any], title: str) -> None:
        """The Occ3D IoU per class (camera mask, no mask) and the RayIoU at each distance."""
        from tpvkit.outputs.metrics import print_iou_table

        if results.get("iou_per_class") is None:
            print(f"{title}: no Occ3D labels, no occupancy scores" if title else "no Occ3D labels")
            return
        columns = {
            "mask_camera": results["iou_per_class"],
            "no mask": results["iou_per_class_nomask"],
        }
        mious = {"mask_camera": results["miou"], "no mask": results["miou_nomask"]}
        for t in RAY_THRESHOLDS:
            if results.get(f"rayiou_per_class_{t:g}") is not None:
                columns[f"ray@{t:g}m"] = results[f"rayiou_per_class_{t:g}"]
                mious[f"ray@{t:g}m"] = results[f"rayiou_{t:g}"]
        print_iou_table(columns, mious, f"{title} · Occ3D occupancy" if title else "")
        if results.get("rayiou") is not None:
            print(f"RayIoU (mean of 1, 2, 4 m): {100 * results['rayiou']:.2f}")


class GeometricIoUSink:
    """Geometric IoU over a split: occupied (any class but the label space's free one) vs
    free, inside mask_camera ("geometric_iou") and without a mask ("geometric_iou_nomask");
    None without dense labels (`labelled` False) or when nothing is occupied."""

    needs_voxels = True
    logged_keys = ("geometric_iou",)
    shown_keys: tuple[str, ...] = ()

    def __init__(self, free_index: int, labelled: bool = True) -> None:
        self.free_index = free_index
        self.labelled = labelled
        # two classes: 0 free, 1 occupied
        self.camera = OccupancyConfusion(num_classes=2, free_label=0)
        self.all = OccupancyConfusion(num_classes=2, free_label=0)

    def add(self, batch: Mapping[str, Any], out: Mapping[str, torch.Tensor]) -> None:
        if not self.labelled:
            return
        require_occ3d_batch(batch, "the geometric IoU sink")
        gt = batch["occ_semantics"]  # (B, X, Y, Z)
        pred = _voxel_predictions(out, tuple(gt.shape[1:]), None).to(gt.device)
        gt_occupied = (gt != self.free_index).long()
        pred_occupied = (pred != self.free_index).long()
        self.camera.update(gt_occupied, pred_occupied, batch["occ_mask_camera"])
        self.all.update(gt_occupied, pred_occupied)

    def finish(self) -> dict[str, Any]:
        reduce_over_ranks([self.camera.matrix, self.all.matrix])
        if not self.labelled:
            return {"geometric_iou": None, "geometric_iou_nomask": None}
        return {
            "geometric_iou": geometric_iou(self.camera.matrix.numpy(), 0),
            "geometric_iou_nomask": geometric_iou(self.all.matrix.numpy(), 0),
        }

    def print_results(self, results: Mapping[str, Any], title: str) -> None:
        if results.get("geometric_iou") is None:
            return

        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{100 * value:.2f}"

        print(
            f"geometric IoU (occupied vs free): {pct(results['geometric_iou'])} (mask_camera), "
            f"{pct(results['geometric_iou_nomask'])} (no mask)"
        )


class OccupancyPredictionWriter:
    """`--save-predictions DIR`: one `<sample_token>.npz` per sample with key `pred`, uint8
    (200, 200, 16), the layout the Occ3D / SparseOcc evaluation scripts read."""

    needs_voxels = True
    logged_keys: tuple[str, ...] = ()
    shown_keys: tuple[str, ...] = ()
    writes = "prediction volumes"  # what `tpvkit eval --save-predictions` says it wrote

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
        reduce_over_ranks([counts])
        return {"predictions_written": int(counts.item()), "predictions_dir": str(self.out_dir)}

    def print_results(self, results: Mapping[str, Any], title: str) -> None:
        pass  # the command says where it wrote


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
