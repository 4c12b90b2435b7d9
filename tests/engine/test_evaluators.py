"""Evaluators that compose (tpvkit.engine.evaluators): every task has its evaluators, results
merge with a check that keys are unique, the validation record comes from what the evaluators
name, and a nested evaluator reports under its key."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tpvkit.engine.evaluators import (
    TASK_EVALUATORS,
    EvalOptions,
    Evaluator,
    NestedEvaluator,
    build_evaluators,
    merge_results,
    validation_record,
)
from tpvkit.engine.inference import LidarSegSink, SubmissionSink
from tpvkit.engine.occupancy import (
    GeometricIoUSink,
    OccupancyMetricsSink,
    OccupancyPredictionWriter,
)
from tpvkit.errors import TpvkitError
from tpvkit.outputs.occ_metrics import geometric_iou
from tpvkit.task import TASKS, get_task


class Fixed:
    """An evaluator that reports fixed results."""

    needs_voxels = False
    logged_keys: tuple[str, ...] = ()
    shown_keys: tuple[str, ...] = ()

    def __init__(self, results: dict[str, Any], logged=(), shown=()) -> None:
        self.results = results
        self.logged_keys, self.shown_keys = tuple(logged), tuple(shown)
        self.batches = 0

    def add(self, batch, out) -> None:
        self.batches += 1

    def finish(self) -> dict[str, Any]:
        return dict(self.results)

    def print_results(self, results, title) -> None:
        print(f"{title}: {sorted(results)}")


def test_every_task_has_evaluators_and_every_evaluator_keeps_the_protocol(tmp_path):
    assert set(TASK_EVALUATORS) == set(TASKS)
    for name in TASKS:
        for evaluator in build_evaluators(get_task(name)):
            assert isinstance(evaluator, Evaluator), (name, evaluator)
    point = build_evaluators(get_task("lidarseg"), EvalOptions(save_predictions=tmp_path / "s"))
    assert [type(e) for e in point] == [LidarSegSink, SubmissionSink]
    dense = build_evaluators(get_task("occ3d"), EvalOptions(save_predictions=tmp_path / "o"))
    assert [type(e) for e in dense] == [
        OccupancyMetricsSink,
        GeometricIoUSink,
        NestedEvaluator,
        OccupancyPredictionWriter,
    ]


def test_a_task_without_evaluators_is_an_error(monkeypatch):
    monkeypatch.delitem(TASK_EVALUATORS, "occ3d")
    with pytest.raises(TpvkitError, match="task occ3d has no evaluators"):
        build_evaluators(get_task("occ3d"))


def test_results_merge_and_a_key_reported_twice_is_an_error():
    a, b = Fixed({"miou": 0.5, "n": 2}), Fixed({"rayiou": 0.25})
    assert merge_results([a, b], [a.finish(), b.finish()]) == {"miou": 0.5, "n": 2, "rayiou": 0.25}
    c = Fixed({"n": 3})
    with pytest.raises(TpvkitError, match="evaluators Fixed and Fixed both report 'n'"):
        merge_results([a, c], [a.finish(), c.finish()])


def test_the_validation_record_is_what_the_evaluators_name():
    a = Fixed({"miou": 0.5, "num_samples": 4}, logged=("miou", "num_samples"), shown=("miou",))
    b = Fixed({"rayiou": None, "x": 1}, logged=("rayiou",), shown=("rayiou",))
    merged = merge_results([a, b], [a.finish(), b.finish()])
    values, text = validation_record([a, b], merged)
    assert values == {"miou": 0.5, "num_samples": 4, "rayiou": None}
    assert text == "miou=0.5000 rayiou=n/a"


def test_a_nested_evaluator_reports_under_its_key(capsys):
    inner = Fixed({"miou": 0.1, "iou_per_class": None})
    nested = NestedEvaluator("lidarseg", inner, present=lambda r: r["iou_per_class"] is not None)
    nested.add({}, {"point_logits": torch.zeros(1, 17, 1)})
    assert inner.batches == 1
    assert nested.finish() == {"lidarseg": None}
    inner.results["iou_per_class"] = {"car": 0.1}
    results = nested.finish()
    assert results == {"lidarseg": {"miou": 0.1, "iou_per_class": {"car": 0.1}}}
    nested.print_results(results, "run")
    assert capsys.readouterr().out == "run · lidarseg: ['iou_per_class', 'miou']\n"


def test_an_unlabelled_occupancy_report_keeps_its_keys():
    labelled, unlabelled = OccupancyMetricsSink(), OccupancyMetricsSink(labelled=False)
    unlabelled.add({"tokens": ["a", "b"]}, {})
    report = unlabelled.finish()
    assert report["num_samples"] == 2 and report["task"] == "occupancy"
    assert report["miou"] is None and report["rayiou"] is None and report["num_rays"] == 0
    assert set(report) == set(labelled.finish())


def test_geometric_iou_on_a_hand_computed_case():
    """Free = 2 of 3 classes. GT occupied/pred occupied: 3 voxels (one misclassified, still
    occupied); GT free/pred occupied: 1; GT occupied/pred free: 2; GT free/pred free: 4.
    IoU = 3 / (3 + 1 + 2) = 0.5 without a mask; the mask keeps 2 TP, 1 FN: 2 / 3."""
    gt = torch.tensor([0, 1, 1, 2, 0, 1, 2, 2, 2, 2]).reshape(1, 10, 1, 1)
    pred = torch.tensor([0, 0, 1, 0, 2, 2, 2, 2, 2, 2]).reshape(1, 10, 1, 1)
    mask = torch.tensor([1, 1, 0, 0, 1, 0, 1, 1, 1, 1], dtype=torch.bool).reshape(1, 10, 1, 1)
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 4, 1, 2, 3).float()
    batch = {"occ_semantics": gt, "occ_mask_camera": mask, "ray_origins": None, "tokens": ["t"]}
    sink = GeometricIoUSink(free_index=2)
    sink.add(batch, {"voxel_logits": logits})
    results = sink.finish()
    assert results["geometric_iou_nomask"] == pytest.approx(3 / 6)
    assert results["geometric_iou"] == pytest.approx(2 / 3)
    # the same figure from a full confusion matrix (the tools' route)
    full = torch.zeros(3, 3, dtype=torch.int64)
    for g, p in zip(gt.flatten().tolist(), pred.flatten().tolist(), strict=True):
        full[g, p] += 1
    assert geometric_iou(full.numpy(), 2) == pytest.approx(3 / 6)
    assert geometric_iou(np.diag([0, 0, 5]), 2) is None  # nothing occupied anywhere
