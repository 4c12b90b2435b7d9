"""Evaluation: devkit-exact LiDAR-segmentation mIoU, and for a task scored on a dense volume
(tpvkit.task: "occ3d") the Occ3D mIoU and SparseOcc's RayIoU.

Lidarseg: two predictions are scored for every LiDAR point of a split:
- "points": the point itself is the query (its features sampled from the three planes), the
  official TPVFormer lidarseg protocol;
- "voxels": the full voxel volume is decoded, argmaxed, and each point takes the class of the
  voxel it falls in (point_voxel_index), which measures the dense occupancy output.

Occupancy: the dense 200x200x16 volume against the Occ3D labels (tpvkit.engine.occupancy);
the lidarseg point scores come along under "lidarseg" when the split has lidarseg labels.

Everything runs through the one inference loop (tpvkit.engine.inference): one pass feeds
every sink.
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
from tpvkit.utils.io import atomic_write_text, check_output_dir, check_output_file

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
    occupancy: bool = False,
    occupancy_labels: bool = True,
    ray_iou: bool = True,
) -> dict[str, Any]:
    """Run `model` over every batch of `loader` and score its predictions for every point
    (lidarseg) or, with `occupancy`, its dense Occ3D volume (see occupancy_results).

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
    if occupancy:
        return _evaluate_occupancy(
            model,
            loader,
            device,
            voxel_metrics,
            save_predictions,
            progress,
            occupancy_labels,
            ray_iou,
            start,
        )
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


# Lidarseg keys that an occupancy evaluation nests under "lidarseg" (the point scores of an
# ego-frame model: the points are queried in the ego frame, the free logit dropped).
LIDARSEG_KEYS: tuple[str, ...] = (
    "miou",
    "iou_per_class",
    "miou_voxel",
    "iou_per_class_voxel",
    "freq_weighted_iou",
    "freq_weighted_iou_voxel",
    "num_points",
    "num_labelled_points",
    "confusion_matrix",
    "confusion_matrix_voxel",
)


def _evaluate_occupancy(
    model: torch.nn.Module,
    loader: Iterable[Mapping[str, Any]],
    device: torch.device | str,
    voxel_metrics: bool,
    save_predictions: str | Path | SubmissionWriter | None,
    progress: bool,
    occupancy_labels: bool,
    ray_iou: bool,
    start: float,
) -> dict[str, Any]:
    """One inference pass: Occ3D mIoU + RayIoU, the lidarseg point scores, the pred files."""
    from tpvkit.engine.occupancy import OccupancyMetricsSink, OccupancyPredictionWriter

    if isinstance(save_predictions, SubmissionWriter):
        raise TpvkitError(
            "an occupancy model saves <sample_token>.npz volumes, not a lidarseg submission: "
            "give --save-predictions a folder"
        )
    lidarseg = LidarSegSink(voxel_metrics)
    sinks: list[InferenceSink] = [lidarseg]
    occ = OccupancyMetricsSink(ray_iou) if occupancy_labels else None
    if occ is not None:
        sinks.append(occ)
    writer = None
    if save_predictions is not None:
        writer = OccupancyPredictionWriter(save_predictions)
        sinks.append(writer)
    results = run_inference(model, loader, device, sinks, progress=progress, desc="eval")
    return occupancy_results(
        results[0],
        results[1] if occ is not None else None,
        results[-1] if writer is not None else None,
        time.perf_counter() - start,
    )


def occupancy_results(
    lidarseg: Mapping[str, Any],
    occ: Mapping[str, Any] | None,
    written: Mapping[str, Any] | None,
    seconds: float,
) -> dict[str, Any]:
    """The metrics of an occupancy evaluation.

    Top level: "task" = "occupancy"; miou / iou_per_class (Occ3D, inside mask_camera, classes
    0..16), miou_nomask / iou_per_class_nomask, rayiou, rayiou_1 / _2 / _4 and their per-class
    dicts, num_rays, the 18 x 18 confusion matrices, num_samples (all None without Occ3D
    labels). miou_voxel / iou_per_class_voxel are None (the lidarseg voxel look-up lives in
    "lidarseg"). "lidarseg": the point scores (LIDARSEG_KEYS) when the split has lidarseg
    labels, else None.
    """
    empty: dict[str, Any] = {
        "miou": None,
        "iou_per_class": None,
        "miou_nomask": None,
        "iou_per_class_nomask": None,
        "rayiou": None,
        **{f"rayiou_{t}": None for t in (1, 2, 4)},
        **{f"rayiou_per_class_{t}": None for t in (1, 2, 4)},
        "num_rays": 0,
        "confusion_matrix": None,
        "confusion_matrix_nomask": None,
    }
    out: dict[str, Any] = {"task": "occupancy", **empty, **(dict(occ) if occ else {})}
    out["num_samples"] = lidarseg["num_samples"]
    out["miou_voxel"] = None
    out["iou_per_class_voxel"] = None
    labelled = lidarseg.get("iou_per_class") is not None
    out["lidarseg"] = {k: lidarseg[k] for k in LIDARSEG_KEYS} if labelled else None
    if written is not None:
        out["predictions_written"] = written["predictions_written"]
    out["seconds"] = seconds
    return out


def print_metrics(metrics: Mapping[str, Any], title: str = "") -> None:
    """The per-class table (points, and voxels when scored) with the mIoU row; for an
    occupancy evaluation the Occ3D IoU (camera mask, no mask) and RayIoU per class."""
    from tpvkit.outputs.metrics import print_iou_table

    if metrics.get("task") == "occupancy":
        _print_occupancy(metrics, title)
        return
    if metrics.get("iou_per_class") is None:
        print(f"{title}: no ground-truth labels, nothing to score" if title else "no labels")
        return
    columns = {"points": metrics["iou_per_class"]}
    mious = {"points": metrics["miou"]}
    if metrics.get("iou_per_class_voxel") is not None:
        columns["voxels"] = metrics["iou_per_class_voxel"]
        mious["voxels"] = metrics["miou_voxel"]
    print_iou_table(columns, mious, title)


def _print_occupancy(metrics: Mapping[str, Any], title: str) -> None:
    from tpvkit.outputs.metrics import print_iou_table

    if metrics.get("iou_per_class") is not None:
        columns = {
            "mask_camera": metrics["iou_per_class"],
            "no mask": metrics["iou_per_class_nomask"],
        }
        mious = {"mask_camera": metrics["miou"], "no mask": metrics["miou_nomask"]}
        for t in (1, 2, 4):
            if metrics.get(f"rayiou_per_class_{t}") is not None:
                columns[f"ray@{t}m"] = metrics[f"rayiou_per_class_{t}"]
                mious[f"ray@{t}m"] = metrics[f"rayiou_{t}"]
        print_iou_table(columns, mious, f"{title} · Occ3D occupancy" if title else "")
        if metrics.get("rayiou") is not None:
            print(f"RayIoU (mean of 1, 2, 4 m): {100 * metrics['rayiou']:.2f}")
    else:
        print(f"{title}: no Occ3D labels, no occupancy scores" if title else "no Occ3D labels")
    if metrics.get("lidarseg") is not None:
        print_metrics(metrics["lidarseg"], f"{title} · lidarseg points" if title else "")


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
    overwrite: bool = True,
) -> dict[str, Any]:
    """Evaluate a checkpoint on the samples of an info file; print the table, write metrics.json.

    `cfg` None takes the config stored in the checkpoint; a given one is checked against it
    (tpvkit.engine.inference.load_for_inference); `overrides` apply on top. `split` names the
    split in metrics.json and in the submission layout (default: the info file's own split);
    The metrics go to `out_dir`/metrics.json, or without `out_dir` beside the checkpoint to
    metrics_<checkpoint stem>_<info file stem>.json (default_metrics_path), a name that another
    checkpoint's or info file's evaluation cannot clobber. Every output path is checked before
    the model is built; with `overwrite` False (the CLI without --overwrite) an existing metrics
    file or a non-empty --save-predictions folder is refused. Returns the metrics dict written.
    """
    from tpvkit.data.infos import load_infos

    checkpoint = Path(checkpoint)
    infos = Path(infos)
    inputs = [("the checkpoint", checkpoint), ("the info file (--infos)", infos)]
    if out_dir is not None:
        out_dir = check_output_dir(out_dir, "--out", inputs=inputs)
        metrics_path = out_dir / METRICS_FILE
        if metrics_path.is_dir():
            raise TpvkitError(f"--out {out_dir}: {metrics_path} is a folder; move it away")
        check_output_file(metrics_path, "--out", overwrite=overwrite, inputs=inputs)
    else:
        metrics_path = default_metrics_path(checkpoint, infos)
        check_output_file(metrics_path, "the metrics file", overwrite=overwrite, inputs=inputs)
    if save_predictions is not None:
        check_output_dir(save_predictions, "--save-predictions", overwrite=overwrite, inputs=inputs)
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
    occupancy = loaded.task.scored_on == "dense"
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
        occupancy=occupancy,
        occupancy_labels=occupancy and has_occ3d_labels(info_set, str(infos)),
    )
    provenance = {
        "checkpoint": str(checkpoint.resolve()),
        "config": cfg.name,
        "config_from": loaded.config_from,
        "infos": str(infos.resolve()),
        "device": str(loaded.device),
        "seconds": round(results["seconds"], 3),
    }
    if occupancy:
        metrics = {**results, "split": split, **provenance}
        volumes = "prediction volumes"
        return _report(metrics, cfg.name, split, metrics_path, save_predictions, volumes)
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
    return _report(metrics, cfg.name, split, metrics_path, save_predictions, "prediction files")


def _report(
    metrics: dict[str, Any],
    name: str,
    split: str,
    path: Path,
    save_predictions: str | Path | None,
    what: str,
) -> dict[str, Any]:
    """Print the table, write the metrics file, say what was written."""
    print_metrics(metrics, title=f"{name} on {split} ({metrics['num_samples']} samples)")
    from tpvkit.outputs.degenerate import evaluation_warning, warn

    warning = evaluation_warning(metrics)
    if warning is not None:
        warn(warning)
    atomic_write_text(path, _dumps(metrics))
    print(f"wrote {path}")
    if save_predictions is not None:
        print(f"wrote {metrics['num_samples']} {what} under {Path(save_predictions)}")
    return metrics


def default_metrics_path(checkpoint: Path, infos: Path) -> Path:
    """Where `tpvkit eval` without --out writes its metrics: beside the checkpoint, named after
    it and the info file (metrics_latest_tpvkit_infos_mini_val.json), so that evaluating another
    checkpoint or another info file never replaces an earlier evaluation's results."""
    return checkpoint.parent / f"metrics_{checkpoint.stem}_{infos.stem}.json"


def has_occ3d_labels(info_set: Any, where: str) -> bool:
    """Whether every sample links Occ3D labels (none: predictions only; some: an error)."""
    from tpvkit.data.occ3d import INFO_FIELD

    linked = [bool(s.get(INFO_FIELD)) for s in info_set.samples]
    if any(linked) and not all(linked):
        raise TpvkitError(
            f"{where}: {linked.count(False)} of {len(linked)} samples link no Occ3D labels: "
            "re-run `tpvkit prepare ... --occ3d GTDIR` so every sample has its labels.npz"
        )
    return all(linked)


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
