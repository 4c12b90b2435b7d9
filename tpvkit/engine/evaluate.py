"""LiDAR-segmentation evaluation: devkit-exact mIoU of point queries and of voxel look-ups.

Two predictions are scored for every LiDAR point of a split:
- "points": the point itself is the query (its features sampled from the three planes), the
  official TPVFormer lidarseg protocol;
- "voxels": the full voxel volume is decoded, argmaxed, and each point takes the class of the
  voxel it falls in (point_voxel_index), which measures the dense occupancy output.

Both run through the one inference loop (tpvkit.engine.inference) with its LidarSegSink.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tpvkit.config import Config
from tpvkit.constants import NUM_CLASSES
from tpvkit.engine.inference import (
    InferenceSink,
    LidarSegSink,
    SubmissionSink,
    check_scorable,
    inference_loader,
    load_for_inference,
    run_inference,
)
from tpvkit.errors import TpvkitError
from tpvkit.outputs.submission import SubmissionWriter
from tpvkit.utils.io import atomic_write_text, check_output_dir

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
    check_scorable(num_classes)
    start = time.perf_counter()
    scores = LidarSegSink(voxel_metrics)
    sinks: list[InferenceSink] = [scores]
    if save_predictions is not None:
        writer = (
            save_predictions
            if isinstance(save_predictions, SubmissionWriter)
            else SubmissionWriter(save_predictions, split)
        )
        sinks.append(SubmissionSink(writer))
    results = run_inference(model, loader, device, sinks, progress=progress, desc="eval")[0]
    return {**results, "seconds": time.perf_counter() - start}


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
    cfg: Config | None,
    checkpoint: str | Path,
    infos: str | Path,
    split: str | None = None,
    out_dir: str | Path | None = None,
    save_predictions: str | Path | None = None,
    progress: bool = True,
    overrides: Sequence[str] = (),
    device: str | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on the samples of an info file; print the table, write metrics.json.

    `cfg` None takes the config stored in the checkpoint; a given one is checked against it
    (tpvkit.engine.inference.load_for_inference); `overrides` apply on top. `split` names the
    split in metrics.json and in the submission layout (default: the info file's own split);
    `out_dir` defaults to the checkpoint's folder. Every output path is checked before the
    model is built. Returns the metrics dict that was written.
    """
    from tpvkit.data.infos import load_infos

    checkpoint = Path(checkpoint)
    infos = Path(infos)
    out_dir = Path(out_dir) if out_dir is not None else checkpoint.parent
    check_output_dir(out_dir, "--out")
    if save_predictions is not None:
        check_output_dir(save_predictions, "--save-predictions")
    if (out_dir / METRICS_FILE).is_dir():
        raise TpvkitError(f"--out {out_dir}: {out_dir / METRICS_FILE} is a folder; move it away")
    loaded = load_for_inference(checkpoint, cfg, overrides, device)
    cfg = loaded.cfg
    check_scorable(cfg.model.num_classes)
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
    loader = inference_loader(cfg, info_set, loaded.device)
    results = evaluate_model(
        loaded.model,
        loader,
        loaded.device,
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
        "config_from": loaded.config_from,
        "infos": str(infos.resolve()),
        "device": str(loaded.device),
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
