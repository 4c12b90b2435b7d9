"""LiDAR-segmentation evaluation: devkit-exact mIoU of point queries and of voxel look-ups.

Two predictions are scored for every LiDAR point of a split:
- "points": the point itself is the query (its features sampled from the three planes), the
  official TPVFormer lidarseg protocol;
- "voxels": the full voxel volume is decoded, argmaxed, and each point takes the class of the
  voxel it falls in (point_voxel_index), which measures the dense occupancy output.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from tpvkit.constants import CLASS_NAMES, NUM_CLASSES
from tpvkit.engine.distributed import select_device, to_device
from tpvkit.errors import TpvkitError
from tpvkit.outputs.metrics import ConfusionMatrix, iou_dict, nan_to_none, predict_classes
from tpvkit.outputs.submission import SubmissionWriter
from tpvkit.utils.io import atomic_write_text

METRICS_FILE = "metrics.json"


def evaluate_model(
    model: torch.nn.Module,
    loader: Iterable[Mapping[str, Any]],
    device: torch.device | str,
    num_classes: int = NUM_CLASSES,
    voxel_metrics: bool = True,
    save_predictions: str | Path | SubmissionWriter | None = None,
    progress: bool = True,
    split: str = "val",
) -> dict[str, Any]:
    """Run `model` over every batch of `loader` and score its predictions for every point.

    `loader` yields collate_batch dicts (docs/internals.md). Batches without "point_labels", or
    a split whose labels are all ignore (v1.0-test), give metrics of None; predictions are still
    written when `save_predictions` is a folder (official layout under <folder>, for `split`) or
    a SubmissionWriter. Under torch.distributed the confusion matrices and counts are summed over
    the processes (each must see its own share of the samples).

    `num_classes` is the model's output count: 17 (lidarseg), or 18 for the occupancy variant,
    whose extra "empty" logit is dropped here because a LiDAR return is never free space; the
    scores are always over the 16 lidarseg classes.

    Returns miou, iou_per_class, freq_weighted_iou and, with `voxel_metrics`, the same keys with
    a "_voxel" suffix (None without it); num_samples, num_points, the confusion matrices
    (lists, rows GT) and seconds.
    """
    if num_classes < NUM_CLASSES:
        raise TpvkitError(
            f"model.num_classes is {num_classes}: lidarseg evaluation needs the {NUM_CLASSES} "
            "classes of tpvkit.constants.CLASS_NAMES"
        )
    device = torch.device(device)
    cm_points = ConfusionMatrix(NUM_CLASSES)
    cm_voxels = ConfusionMatrix(NUM_CLASSES)
    writer = (
        save_predictions
        if isinstance(save_predictions, SubmissionWriter) or save_predictions is None
        else SubmissionWriter(save_predictions, split)
    )
    start = time.perf_counter()

    iterator = loader
    if progress:
        from tqdm import tqdm

        iterator = tqdm(loader, total=_len_or_none(loader), desc="eval", unit="batch")

    was_training = model.training
    model.eval()
    try:
        num_samples, num_points = _run_batches(
            model, iterator, device, voxel_metrics, cm_points, cm_voxels, writer
        )
    finally:
        model.train(was_training)

    totals = torch.tensor([num_samples, num_points], dtype=torch.int64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        cm_points.all_reduce()
        cm_voxels.all_reduce()
        if torch.distributed.get_backend() == "nccl":
            totals = totals.to(device)
        torch.distributed.all_reduce(totals)
        totals = totals.cpu()
    num_samples, num_points = int(totals[0]), int(totals[1])
    # A split without labels (v1.0-test) has no point_labels, or labels that are all ignore.
    has_labels = cm_points.num_points > 0
    if writer is not None:
        writer.finish()

    def scores(cm: ConfusionMatrix, enabled: bool) -> tuple[Any, Any, Any, Any]:
        if not (enabled and has_labels):
            return None, None, None, None
        iou = iou_dict(cm.iou_per_class(), CLASS_NAMES)
        miou, fwiou = nan_to_none(cm.miou()), nan_to_none(cm.freq_weighted_iou())
        return miou, iou, fwiou, cm.matrix.tolist()

    miou, iou, fwiou, matrix = scores(cm_points, True)
    miou_v, iou_v, fwiou_v, matrix_v = scores(cm_voxels, voxel_metrics)
    return {
        "miou": miou,
        "iou_per_class": iou,
        "freq_weighted_iou": fwiou,
        "miou_voxel": miou_v,
        "iou_per_class_voxel": iou_v,
        "freq_weighted_iou_voxel": fwiou_v,
        "num_samples": num_samples,
        "num_points": num_points,
        "num_labelled_points": cm_points.num_points if has_labels else 0,
        "confusion_matrix": matrix,
        "confusion_matrix_voxel": matrix_v,
        "seconds": time.perf_counter() - start,
    }


def _run_batches(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, Any]],
    device: torch.device,
    voxel_metrics: bool,
    cm_points: ConfusionMatrix,
    cm_voxels: ConfusionMatrix,
    writer: SubmissionWriter | None,
) -> tuple[int, int]:
    """The inference loop of evaluate_model: accumulate both matrices, write predictions;
    returns the numbers of samples and points seen."""
    num_samples = total_points = 0
    with torch.inference_mode():
        for batch in batches:
            batch = to_device(batch, device)
            out = model(
                batch["img"],
                batch["lidar2img"],
                points=batch["points"],
                decode_voxels=voxel_metrics,
            )
            point_pred = predict_classes(out["point_logits"][:, :NUM_CLASSES]).cpu()  # (B, Nmax)
            voxel_pred = None
            if voxel_metrics:
                voxel_pred = predict_classes(out["voxel_logits"][:, :NUM_CLASSES])  # (B, X, Y, Z)
            num_points = batch["num_points"].cpu()
            labels = batch.get("point_labels")
            labels = labels.cpu() if labels is not None else None
            for b in range(point_pred.shape[0]):
                n = int(num_points[b])
                pred_b = point_pred[b, :n]
                if labels is not None:
                    cm_points.update(labels[b, :n], pred_b)
                if voxel_pred is not None and labels is not None:
                    idx = batch["point_voxel_index"][b, :n]  # (n, 3) voxel (x, y, z)
                    vox_b = voxel_pred[b, idx[:, 0], idx[:, 1], idx[:, 2]].cpu()
                    cm_voxels.update(labels[b, :n], vox_b)
                if writer is not None:
                    writer.add(batch["lidar_tokens"][b], pred_b, num_points=n)
                total_points += n
            num_samples += point_pred.shape[0]
    return num_samples, total_points


def _len_or_none(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def print_metrics(metrics: Mapping[str, Any], title: str = "") -> None:
    """The per-class table (points, and voxels when scored) with the mIoU row."""
    from tpvkit.outputs.metrics import print_iou_table

    if metrics.get("iou_per_class") is None:
        print(f"{title}: no ground-truth labels, nothing to score" if title else "no labels")
        return
    columns = {"points": metrics["iou_per_class"]}
    mious = {"points": metrics["miou"]}
    if metrics.get("iou_per_class_voxel") is not None:
        columns["voxels"] = metrics["iou_per_class_voxel"]
        mious["voxels"] = metrics["miou_voxel"]
    print_iou_table(columns, mious, title)


def evaluate(
    cfg: Any,
    checkpoint: str | Path,
    infos: str | Path,
    split: str | None = None,
    out_dir: str | Path | None = None,
    save_predictions: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a checkpoint on the samples of an info file; print the table, write metrics.json.

    `cfg` is a tpvkit.config.Config; `split` names the split in metrics.json and in the
    submission layout (default: the info file's own split); `out_dir` defaults to the
    checkpoint's folder. Returns the metrics dict that was written.
    """
    from tpvkit.data.dataset import LidarSegDataset, build_dataloader
    from tpvkit.data.infos import load_infos
    from tpvkit.engine.checkpoint import load_model_weights
    from tpvkit.models.tpvformer import build_model

    checkpoint = Path(checkpoint)
    infos = Path(infos)
    if not checkpoint.is_file():
        raise TpvkitError(f"checkpoint not found: {checkpoint} (give the .pth written by train)")
    info_set = load_infos(infos, dataroot=cfg.data.dataroot or None)
    split = split or info_set.split
    if not split:
        raise TpvkitError(f"{infos} does not record its split: pass --split NAME")
    if len(info_set) == 0:
        raise TpvkitError(
            f"{infos} holds no samples (split '{split}' is empty): give the info file of a "
            "split with samples"
        )
    labelled = any(sample.get("lidarseg_path") for sample in info_set)
    out_dir = Path(out_dir) if out_dir is not None else checkpoint.parent
    device = select_device(cfg.train.device)

    model = build_model(cfg.model)
    load_model_weights(model, checkpoint, cfg)
    model.to(device)

    dataset = LidarSegDataset(info_set, cfg.data, cfg.model, train=False)
    loader = build_dataloader(
        dataset,
        batch_size=cfg.eval.batch_size,
        num_workers=cfg.data.num_workers,
        shuffle=False,
        pin_memory=device.type == "cuda",
    )
    results = evaluate_model(
        model,
        loader,
        device,
        num_classes=cfg.model.num_classes,
        voxel_metrics=cfg.eval.voxel_metrics and labelled,  # nothing to score without labels
        save_predictions=save_predictions,
        progress=progress,
        split=split,
    )
    metrics = {
        "miou": results["miou"],
        "iou_per_class": results["iou_per_class"],
        "miou_voxel": results["miou_voxel"],
        "iou_per_class_voxel": results["iou_per_class_voxel"],
        "num_samples": results["num_samples"],
        "split": split,
        "freq_weighted_iou": results["freq_weighted_iou"],
        "freq_weighted_iou_voxel": results["freq_weighted_iou_voxel"],
        "num_points": results["num_points"],
        "num_labelled_points": results["num_labelled_points"],
        "checkpoint": str(checkpoint.resolve()),
        "config": cfg.name,
        "infos": str(infos.resolve()),
        "device": str(device),
        "seconds": round(results["seconds"], 3),
        "confusion_matrix": results["confusion_matrix"],
        "confusion_matrix_voxel": results["confusion_matrix_voxel"],
    }
    print_metrics(metrics, title=f"{cfg.name} on {split} ({metrics['num_samples']} samples)")
    path = out_dir / METRICS_FILE
    atomic_write_text(path, _dumps(metrics))
    print(f"wrote {path}")
    if save_predictions is not None:
        print(f"wrote {metrics['num_samples']} prediction files under {Path(save_predictions)}")
    return metrics


def _dumps(metrics: Mapping[str, Any]) -> str:
    """JSON with the (short) confusion-matrix rows on one line each."""
    import json

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(dict(metrics)), indent=2, allow_nan=False) + "\n"
