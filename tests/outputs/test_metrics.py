"""ConfusionMatrix against the worked example, a float64 loop reference and the devkit's class."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nuscenes.eval.lidarseg.utils import ConfusionMatrix as DevkitConfusionMatrix

from tpvkit.constants import CLASS_NAMES, NUM_CLASSES
from tpvkit.outputs.metrics import (
    ConfusionMatrix,
    format_iou_table,
    iou_dict,
    predict_classes,
    print_iou_table,
)

CAR = CLASS_NAMES.index("car")
DRIVEABLE = CLASS_NAMES.index("driveable_surface")
BARRIER = CLASS_NAMES.index("barrier")


def reference_scores(
    pairs: list[tuple[np.ndarray, np.ndarray]], c: int = NUM_CLASSES
) -> tuple[list[float], float]:
    """Per-class IoU and mIoU by counting point by point in float64 (class 0 ignored)."""
    tp, fp, fn = [0.0] * c, [0.0] * c, [0.0] * c
    for gt, pred in pairs:
        for g, p in zip(gt.tolist(), pred.tolist(), strict=True):
            if g == 0:
                continue
            if g == p:
                tp[g] += 1
            else:
                fn[g] += 1
                fp[p] += 1
    iou = [math.nan] * c
    for k in range(1, c):
        union = tp[k] + fp[k] + fn[k]
        if union > 0:
            iou[k] = tp[k] / union
    present = [v for v in iou if not math.isnan(v)]
    return iou, sum(present) / len(present)


def test_worked_example_from_the_reference() -> None:
    cm = ConfusionMatrix()
    cm.update(np.array([0, 0, 4, 4, 11, 11, 11]), np.array([4, 4, 4, 4, 11, 11, 1]))
    iou = cm.iou_per_class()
    assert iou[CAR] == pytest.approx(1.0)
    assert iou[DRIVEABLE] == pytest.approx(2 / 3)
    assert iou[BARRIER] == 0.0  # predicted, never in GT: scores 0, counts in the mean
    assert np.isnan(
        iou[[k for k in range(NUM_CLASSES) if k not in (CAR, DRIVEABLE, BARRIER)]]
    ).all()
    assert cm.miou() == pytest.approx(0.5556, abs=1e-4)
    assert cm.num_points == 5  # the two ignore-GT points are dropped


@pytest.mark.parametrize("seed", range(6))
def test_random_clouds_match_the_devkit_and_a_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ours, devkit = ConfusionMatrix(), DevkitConfusionMatrix(NUM_CLASSES, 0)
    # A few classes never appear in GT and some never in predictions, so NaN and 0 both occur.
    gt_classes = rng.choice(np.arange(NUM_CLASSES), size=10, replace=False)
    pred_classes = rng.choice(np.arange(1, NUM_CLASSES), size=9, replace=False)
    pairs = []
    for _ in range(int(rng.integers(1, 5))):
        n = int(rng.integers(1, 400))
        gt = rng.choice(gt_classes, size=n)
        pred = np.where(rng.random(n) < 0.5, np.clip(gt, 1, None), rng.choice(pred_classes, n))
        pred = np.where(np.isin(pred, pred_classes), pred, pred_classes[0])
        pairs.append((gt, pred))
        ours.update(gt, pred)
        devkit.update(gt, pred)
    np.testing.assert_array_equal(ours.matrix, devkit.global_cm)
    np.testing.assert_allclose(ours.iou_per_class(), devkit.get_per_class_iou(), atol=1e-12)
    assert ours.miou() == pytest.approx(devkit.get_mean_iou(), abs=1e-12)
    assert ours.freq_weighted_iou() == pytest.approx(devkit.get_freqweighted_iou(), abs=1e-12)
    ref_iou, ref_miou = reference_scores(pairs)
    np.testing.assert_allclose(ours.iou_per_class(), ref_iou, atol=1e-6)  # float32 union
    assert ours.miou() == pytest.approx(ref_miou, abs=1e-6)


def test_large_counts_round_the_union_like_the_devkit() -> None:
    """Counts beyond 2**24 are where the devkit's float32 union differs from exact division."""
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 50_000_000, size=(NUM_CLASSES, NUM_CLASSES))
    ours = ConfusionMatrix.from_matrix(matrix)
    devkit = DevkitConfusionMatrix(NUM_CLASSES, 0)
    devkit.global_cm = ours.matrix.copy()
    np.testing.assert_array_equal(ours.iou_per_class(), devkit.get_per_class_iou())
    assert ours.miou() == devkit.get_mean_iou()
    assert ours.freq_weighted_iou() == devkit.get_freqweighted_iou()


def test_torch_inputs_merge_and_bad_input() -> None:
    a, b = ConfusionMatrix(), ConfusionMatrix()
    a.update(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 2]))
    b.update(np.array([3, 0]), np.array([3, 5]))
    a.merge(b)
    whole = ConfusionMatrix()
    whole.update([1, 2, 3, 3, 0], [1, 2, 2, 3, 5])
    np.testing.assert_array_equal(a.matrix, whole.matrix)
    assert a.matrix.dtype == np.int64
    with pytest.raises(ValueError, match="ignore class"):
        a.update([1, 2], [0, 2])
    with pytest.raises(ValueError, match="predictions must lie"):
        a.update([1], [17])
    with pytest.raises(ValueError, match="ground-truth"):
        a.update([-1], [1])
    with pytest.raises(ValueError, match="2 labels but 1"):
        a.update([1, 2], [1])


def test_empty_matrix_is_nan_without_warnings() -> None:
    cm = ConfusionMatrix()
    cm.update(np.zeros(5, dtype=np.int64), np.ones(5, dtype=np.int64))  # all GT ignored
    with np.errstate(all="raise"):
        assert math.isnan(cm.miou())
        assert math.isnan(cm.freq_weighted_iou())
    summary = cm.summary()
    assert summary["miou"] is None and summary["num_points"] == 0
    assert set(summary["iou_per_class"]) == set(CLASS_NAMES[1:])


def test_predict_classes_never_returns_ignore() -> None:
    logits = torch.randn(2, NUM_CLASSES, 7)
    logits[:, 0] = 100.0  # the ignore logit is the largest everywhere
    pred = predict_classes(logits)
    assert pred.shape == (2, 7)
    assert (pred >= 1).all()
    torch.testing.assert_close(pred, logits[:, 1:].argmax(dim=1) + 1)


def test_table_lists_every_class(capsys: pytest.CaptureFixture[str]) -> None:
    cm = ConfusionMatrix()
    cm.update([4, 4, 4, 11], [4, 4, 11, 11])
    col = iou_dict(cm.iou_per_class())
    text = format_iou_table({"points": col}, {"points": cm.miou()}, title="demo")
    for name in CLASS_NAMES[1:]:
        assert name in text
    assert "50.00" in text and "66.67" in text and "58.33" in text
    print_iou_table({"points": col, "voxels": col}, {"points": 0.5, "voxels": None})
    assert "driveable_surface" in capsys.readouterr().out


def test_a_wide_table_in_a_pipe_cuts_no_class_name(capsys: pytest.CaptureFixture[str]) -> None:
    # 0.2 printed "construct…" in the 5-column Occ3D table when stdout was not a terminal.
    names = ["others", *CLASS_NAMES[1:]]
    columns = {k: {n: 0.5 for n in names} for k in ("mask", "no mask", "ray@1", "ray@2", "ray@4")}
    print_iou_table(columns, {k: 0.5 for k in columns}, title="occupancy")
    out = capsys.readouterr().out
    for name in names:
        assert f" {name} " in out, name
    assert "…" not in out
