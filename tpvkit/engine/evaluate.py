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
from tpvkit.engine.evaluators import EvalOptions, build_evaluators, print_results, run_evaluators
from tpvkit.engine.inference import inference_loader, load_for_inference
from tpvkit.errors import TpvkitError
from tpvkit.outputs.submission import SubmissionWriter
from tpvkit.task import Task, get_task
from tpvkit.utils.io import atomic_write_text, check_output_dir, check_output_file

METRICS_FILE = "metrics.json"


def evaluate_model(
    model: torch.nn.Module,
    loader: Iterable[Mapping[str, Any]],
    device: torch.device | str,
    task: Task | str = "lidarseg",
    voxel_metrics: bool = True,
    save_predictions: str | Path | SubmissionWriter | None = None,
    progress: bool = True,
    split: str = "val",
    dense_labels: bool = True,
    ray_iou: bool = True,
) -> dict[str, Any]:
    """Run `model` over every batch of `loader` and score it with the evaluators of `task` (a
    Task or a name of tpvkit.task.TASKS; tpvkit.engine.evaluators.TASK_EVALUATORS).

    `loader` yields collate_batch dicts (docs/internals.md). Batches without "point_labels", or
    a split whose labels are all ignore (v1.0-test), give metrics of None; predictions are still
    written when `save_predictions` is a folder (official layout under <folder>, for `split`) or
    a SubmissionWriter. Under torch.distributed the confusion matrices and counts are summed over
    the processes (each must see its own share of the samples).

    lidarseg / tpv_occupancy: miou, iou_per_class, freq_weighted_iou and, with `voxel_metrics`,
    the same keys with a "_voxel" suffix (None without it); num_samples, num_points, the
    confusion matrices (lists, rows GT). The lidarseg scores are over the 16 lidarseg classes:
    an occupancy model's extra "empty" logit is dropped (a LiDAR return is never free space).
    occ3d: the Occ3D metrics (None without `dense_labels`) and the lidarseg scores under
    "lidarseg". Always: "seconds".
    """
    start = time.perf_counter()
    task = get_task(task) if isinstance(task, str) else task
    options = EvalOptions(
        voxel_metrics=voxel_metrics,
        dense_labels=dense_labels,
        ray_iou=ray_iou,
        save_predictions=save_predictions,
        split=split,
    )
    evaluators = build_evaluators(task, options)
    results = run_evaluators(model, loader, device, evaluators, progress=progress)
    return {**results, "seconds": time.perf_counter() - start}


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
    task = loaded.task
    options = EvalOptions(
        voxel_metrics=cfg.eval.voxel_metrics and labelled,  # nothing to score without labels
        dense_labels=dense_labels_linked(task, info_set, str(infos)),
        save_predictions=save_predictions,
        split=split,
    )
    evaluators = build_evaluators(task, options)
    loader = inference_loader(cfg, info_set, loaded.device)
    start = time.perf_counter()
    results = run_evaluators(loaded.model, loader, loaded.device, evaluators, progress=progress)
    metrics = {
        **results,
        "split": split,
        "checkpoint": str(checkpoint.resolve()),
        "config": cfg.name,
        "config_from": loaded.config_from,
        "infos": str(infos.resolve()),
        "device": str(loaded.device),
        "seconds": round(time.perf_counter() - start, 3),
    }
    title = f"{cfg.name} on {split} ({metrics['num_samples']} samples)"
    print_results(evaluators, metrics, title)
    what = " and ".join(w for e in evaluators if (w := getattr(e, "writes", "")))
    return _report(metrics, metrics_path, save_predictions, what)


def _report(
    metrics: dict[str, Any], path: Path, save_predictions: str | Path | None, what: str
) -> dict[str, Any]:
    """Warn about a degenerate result, write the metrics file, say what was written."""
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


def dense_labels_linked(task: Task, info_set: Any, where: str) -> bool:
    """Whether the samples of `info_set` carry the dense labels that score `task` (always
    False for a task scored on points)."""
    return task.scored_on == "dense" and has_occ3d_labels(info_set, where)


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
