"""nuScenes-lidarseg metrics, computed exactly as the official devkit computes them.

`ConfusionMatrix` reproduces `nuscenes.eval.lidarseg.utils.ConfusionMatrix` (17 classes, class 0
ignored) with one vectorised `np.bincount` per update and int64 counts accumulated over a whole
split, so that tpvkit's mIoU equals the devkit's on the same predictions, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from tpvkit.constants import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES


def _as_int_array(labels: np.ndarray | torch.Tensor | Sequence[int]) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels).reshape(-1).astype(np.int64, copy=False)


class ConfusionMatrix:
    """Point counts per (ground truth, prediction) pair: rows are GT classes, columns predictions.

    Semantics of the devkit's class (nuScenes-devkit 1.2):
    - GT labels lie in [0, C); predictions in [0, C) and never the ignore class (a submission
      may not predict "ignore"; the devkit asserts it, here it is a ValueError).
    - Points whose GT is the ignore class are dropped (its row and column are zero).
    - IoU_c = TP / (TP + FP + FN) = diag / (row + col - diag); a class absent from both GT and
      prediction has 0 / 0 = NaN and is left out of the mean; a class predicted but absent
      from GT scores 0.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int | None = IGNORE_INDEX):
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if ignore_index is not None and not 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is outside [0, {num_classes})")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)  # (C, C) [gt, pred]

    # -- accumulation ---------------------------------------------------------------------------

    def update(
        self,
        gt: np.ndarray | torch.Tensor | Sequence[int],
        pred: np.ndarray | torch.Tensor | Sequence[int],
    ) -> None:
        """Add one point cloud (or any batch of points): `gt` and `pred` are (N,) class indices."""
        gt_arr = _as_int_array(gt)
        pred_arr = _as_int_array(pred)
        if gt_arr.shape != pred_arr.shape:
            raise ValueError(f"{gt_arr.size} labels but {pred_arr.size} predictions")
        if gt_arr.size == 0:
            return
        c = self.num_classes
        if gt_arr.min() < 0 or gt_arr.max() >= c:
            raise ValueError(f"ground-truth labels must lie in [0, {c - 1}]")
        if pred_arr.min() < 0 or pred_arr.max() >= c:
            raise ValueError(f"predictions must lie in [0, {c - 1}]")
        if self.ignore_index is not None and np.any(pred_arr == self.ignore_index):
            raise ValueError(
                f"predictions contain the ignore class {self.ignore_index}; predict a real class "
                "(see tpvkit.outputs.metrics.predict_classes)"
            )
        # One bincount over the flattened (gt, pred) pair index builds the whole matrix.
        counts = np.bincount(gt_arr * c + pred_arr, minlength=c * c).reshape(c, c)
        if self.ignore_index is not None:
            counts[self.ignore_index, :] = 0
            counts[:, self.ignore_index] = 0
        self.matrix += counts

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (e.g. from another worker) to this one, in place."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError("cannot merge confusion matrices of different class sets")
        self.matrix += other.matrix
        return self

    def reset(self) -> None:
        self.matrix[...] = 0

    @classmethod
    def from_matrix(
        cls, matrix: np.ndarray, ignore_index: int | None = IGNORE_INDEX
    ) -> ConfusionMatrix:
        """Wrap existing counts (C, C); the ignore row and column are zeroed as in `update`."""
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"expected a square matrix, got shape {matrix.shape}")
        cm = cls(matrix.shape[0], ignore_index)
        cm.matrix = matrix.astype(np.int64, copy=True)
        if ignore_index is not None:
            cm.matrix[ignore_index, :] = 0
            cm.matrix[:, ignore_index] = 0
        return cm

    # -- scores ---------------------------------------------------------------------------------

    @property
    def num_points(self) -> int:
        """Points counted (ignore-class GT excluded)."""
        return int(self.matrix.sum())

    def iou_per_class(self) -> np.ndarray:
        """(C,) float64 IoU per class; NaN where the class is absent from both GT and prediction.

        The union is rounded to float32 before dividing because the devkit does so; keeping it
        makes the figures identical to the official ones (the rounding is below 6e-8 relative).
        """
        inter = np.diagonal(self.matrix)
        union = self.matrix.sum(axis=1) + self.matrix.sum(axis=0) - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            return inter / union.astype(np.float32)

    def miou(self) -> float:
        """Mean IoU over the classes present in GT or prediction (NaN if there are none)."""
        iou = self.iou_per_class()
        if np.all(np.isnan(iou)):
            return math.nan
        return float(np.nanmean(iou))

    def freq_weighted_iou(self) -> float:
        """IoU weighted by each class's share of the GT points (not a challenge metric)."""
        total = self.matrix.sum()
        if total == 0:
            return math.nan
        iou = self.iou_per_class()
        return float(np.nansum(self.matrix.sum(axis=1) * iou) / total)

    def summary(self, class_names: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
        """miou, iou_per_class (name -> value, NaN as None), freq_weighted_iou, num_points."""
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        return {
            "miou": nan_to_none(self.miou()),
            "iou_per_class": iou_dict(self.iou_per_class(), class_names, self.ignore_index),
            "freq_weighted_iou": nan_to_none(self.freq_weighted_iou()),
            "num_points": self.num_points,
        }


def nan_to_none(value: float) -> float | None:
    """JSON has no NaN: an undefined score is written as null."""
    return None if value is None or math.isnan(value) else float(value)


def iou_dict(
    iou: np.ndarray,
    class_names: Sequence[str] = CLASS_NAMES,
    ignore_index: int | None = IGNORE_INDEX,
) -> dict[str, float | None]:
    """Class name -> IoU (None where undefined), without the ignore class."""
    return {
        name: nan_to_none(float(value))
        for index, (name, value) in enumerate(zip(class_names, iou, strict=True))
        if index != ignore_index
    }


def predict_classes(
    logits: torch.Tensor, class_dim: int = 1, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Argmax over the real classes only, so that a prediction is never the ignore class.

    The model has a logit for class 0 (it is trained with label 0 ignored, so that logit is
    meaningless); the devkit rejects 0 in a submission, hence it is excluded here rather than
    patched afterwards. Returns int64 class indices with `class_dim` removed.
    """
    logits = logits.movedim(class_dim, -1)
    masked = logits.clone()
    masked[..., ignore_index] = float("-inf")
    return masked.argmax(dim=-1)


# ---------------------------------------------------------------------------------------------
# Printing


def format_iou_table(
    columns: Mapping[str, Mapping[str, float | None]],
    mious: Mapping[str, float | None] | None = None,
    title: str = "",
) -> str:
    """Plain-text table: one row per class, one column per metric (e.g. "points", "voxels").

    `columns` maps a column name to an iou_per_class dict (class name -> IoU or None); IoUs are
    printed in percent, "-" where undefined; `mious` adds an mIoU row.
    """
    names = list(next(iter(columns.values())).keys()) if columns else []
    width = max([len("class"), len("mIoU"), *(len(n) for n in names)])
    col_w = max([7, *(len(c) for c in columns)])

    lines = []
    if title:
        lines.append(title)
    header = "class".ljust(width) + "".join(c.rjust(col_w + 2) for c in columns)
    lines += [header, "-" * len(header)]
    for name in names:
        lines.append(
            name.ljust(width)
            + "".join(_pct(col.get(name)).rjust(col_w + 2) for col in columns.values())
        )
    if mious is not None:
        lines.append("-" * len(header))
        lines.append(
            "mIoU".ljust(width) + "".join(_pct(mious.get(c)).rjust(col_w + 2) for c in columns)
        )
    return "\n".join(lines)


def print_iou_table(
    columns: Mapping[str, Mapping[str, float | None]],
    mious: Mapping[str, float | None] | None = None,
    title: str = "",
) -> None:
    """Print the per-class table with rich (coloured, aligned), or as plain text without it."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is a dependency, but printing must never be what fails
        print(format_iou_table(columns, mious, title))
        return
    table = Table(title=title or None)
    names = list(next(iter(columns.values())).keys()) if columns else []
    # Class names are never cut ("construct…", "driveable_surfac"): the column is as wide as
    # the longest, and a console narrower than the table (a pipe is 80) is widened to fit.
    name_width = max((len(n) for n in names), default=5)
    table.add_column("class", no_wrap=True, min_width=name_width)
    for name in columns:
        table.add_column(f"IoU {name} (%)", justify="right", min_width=6)
    for name in names:
        table.add_row(name, *(_pct(col.get(name)) for col in columns.values()))
    if mious is not None:
        table.add_section()
        table.add_row("mIoU", *(_pct(mious.get(c)) for c in columns), style="bold")
    console = Console()
    needed = name_width + 4 + 9 * len(columns)  # borders and padding: 3 per column
    if console.width < needed:
        console = Console(width=needed)
    console.print(table)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}"
