"""Evaluators that compose: each task contributes the sinks that score it (and those that write
its predictions), one inference pass feeds them all, and their results merge into one dict
with a check that no two report the same key (detectron2's DatasetEvaluators).

An evaluator is an inference sink (tpvkit.engine.inference.InferenceSink) that also says which
of its result keys a training run logs at validation (`logged_keys`, into metrics.jsonl) and
shows on the log line (`shown_keys`), and prints its own table (`print_results`). Adding a
metric is one evaluator class and one line in the task's entry of TASK_EVALUATORS
(docs/internals.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from tpvkit.engine.inference import InferenceSink, LidarSegSink, SubmissionSink, run_inference
from tpvkit.engine.occupancy import (
    GeometricIoUSink,
    OccupancyMetricsSink,
    OccupancyPredictionWriter,
)
from tpvkit.errors import TpvkitError
from tpvkit.outputs.submission import SubmissionWriter
from tpvkit.task import Task


@runtime_checkable
class Evaluator(InferenceSink, Protocol):
    """An inference sink whose results are metrics (or say what it wrote)."""

    logged_keys: tuple[str, ...]  # result keys recorded at each validation (metrics.jsonl)
    shown_keys: tuple[str, ...]  # result keys on the validation log line

    def print_results(self, results: Mapping[str, Any], title: str) -> None: ...


class NestedEvaluator:
    """Another evaluator's results under one key (None when `present` says they are empty),
    e.g. the lidarseg point scores of an Occ3D model under "lidarseg"."""

    logged_keys: tuple[str, ...] = ()
    shown_keys: tuple[str, ...] = ()

    def __init__(
        self,
        key: str,
        inner: Evaluator,
        present: Callable[[Mapping[str, Any]], bool] = lambda results: True,
        label: str = "",
    ) -> None:
        self.key = key
        self.inner = inner
        self.present = present
        self.label = label or key
        self.needs_voxels = inner.needs_voxels

    def add(self, batch: Mapping[str, Any], out: Mapping[str, torch.Tensor]) -> None:
        self.inner.add(batch, out)

    def finish(self) -> dict[str, Any]:
        results = self.inner.finish()
        return {self.key: results if self.present(results) else None}

    def print_results(self, results: Mapping[str, Any], title: str) -> None:
        if results.get(self.key) is not None:
            self.inner.print_results(results[self.key], f"{title} · {self.label}" if title else "")


def merge_results(
    evaluators: Sequence[Evaluator], results: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """One dict of every evaluator's results; a key reported twice is an error naming both."""
    merged: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for evaluator, part in zip(evaluators, results, strict=True):
        name = type(evaluator).__name__
        for key, value in part.items():
            if key in merged:
                raise TpvkitError(
                    f"evaluators {owner[key]} and {name} both report '{key}': give one of them "
                    "another key (tpvkit.engine.evaluators)"
                )
            merged[key], owner[key] = value, name
    return merged


def run_evaluators(
    model: torch.nn.Module,
    loader: Iterable[Mapping[str, Any]],
    device: torch.device | str,
    evaluators: Sequence[Evaluator],
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, Any]:
    """One inference pass over `loader` feeding every evaluator; their merged results."""
    results = run_inference(model, loader, device, evaluators, progress=progress, desc=desc)
    return merge_results(evaluators, results)


def print_results(evaluators: Sequence[Evaluator], results: Mapping[str, Any], title: str) -> None:
    """Every evaluator's table, in order."""
    for evaluator in evaluators:
        evaluator.print_results(results, title)


def validation_record(
    evaluators: Sequence[Evaluator], results: Mapping[str, Any]
) -> tuple[dict[str, Any], str]:
    """(the values a training run records at a validation, the text of its log line)."""
    values = {k: results.get(k) for e in evaluators for k in e.logged_keys}
    shown = [k for e in evaluators for k in e.shown_keys]
    text = " ".join(
        f"{k}={'n/a' if results.get(k) is None else f'{results[k]:.4f}'}" for k in shown
    )
    return values, text


# ---------------------------------------------------------------------------------------------
# What each task is scored with


@dataclass(frozen=True)
class EvalOptions:
    """What the split and the command ask for, beyond the task."""

    voxel_metrics: bool = True  # also score the voxel look-up of each LiDAR point
    dense_labels: bool = True  # the samples carry the task's dense labels (Occ3D)
    ray_iou: bool = True  # RayIoU beside the voxel mIoU (dense tasks)
    save_predictions: str | Path | SubmissionWriter | None = None
    split: str = "val"


def point_task_evaluators(task: Task, options: EvalOptions) -> list[Evaluator]:
    """lidarseg and the released occupancy recipe: devkit-exact point scores, and the official
    submission layout with `save_predictions` (a folder or a SubmissionWriter)."""
    evaluators: list[Evaluator] = [LidarSegSink(options.voxel_metrics)]
    target = options.save_predictions
    if target is not None:
        writer = (
            target
            if isinstance(target, SubmissionWriter)
            else SubmissionWriter(target, options.split)
        )
        evaluators.append(SubmissionSink(writer))
    return evaluators


def dense_task_evaluators(task: Task, options: EvalOptions) -> list[Evaluator]:
    """Occ3D: the occupancy metrics on the dense volume and the geometric IoU (None without
    dense labels), the lidarseg point scores under "lidarseg" (None without lidarseg labels),
    and with `save_predictions` one `<sample_token>.npz` per sample."""
    if isinstance(options.save_predictions, SubmissionWriter):
        raise TpvkitError(
            "an occupancy model saves <sample_token>.npz volumes, not a lidarseg submission: "
            "give --save-predictions a folder"
        )
    free = task.label_space.free_index
    if free is None:
        raise TpvkitError(f"task {task.name}: a dense task's label space needs a free class")
    evaluators: list[Evaluator] = [
        OccupancyMetricsSink(options.ray_iou, labelled=options.dense_labels),
        GeometricIoUSink(free, labelled=options.dense_labels),
        NestedEvaluator(
            "lidarseg",
            LidarSegSink(options.voxel_metrics),
            present=lambda results: results.get("iou_per_class") is not None,
            label="lidarseg points",
        ),
    ]
    if options.save_predictions is not None:
        evaluators.append(OccupancyPredictionWriter(options.save_predictions))
    return evaluators


# task name -> the evaluators that score it (a new task adds its line)
TASK_EVALUATORS: dict[str, Callable[[Task, EvalOptions], list[Evaluator]]] = {
    "lidarseg": point_task_evaluators,
    "tpv_occupancy": point_task_evaluators,
    "occ3d": dense_task_evaluators,
}


def build_evaluators(task: Task, options: EvalOptions | None = None) -> list[Evaluator]:
    """The evaluators of `task` (TASK_EVALUATORS) under `options`."""
    if task.name not in TASK_EVALUATORS:
        raise TpvkitError(
            f"task {task.name} has no evaluators: add its entry to "
            "tpvkit.engine.evaluators.TASK_EVALUATORS"
        )
    return TASK_EVALUATORS[task.name](task, options or EvalOptions())
