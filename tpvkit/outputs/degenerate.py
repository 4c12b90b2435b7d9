"""Degenerate results said out loud: a model that predicts one class everywhere (free, say), an
export, picture or viewer page with nothing in it. Each gets one warning line on stderr naming
the likely cause; the command still succeeds (exit code 0), since the file it wrote is correct.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

LIKELY_CAUSE = "likely undertrained: too few iterations (docs/learning.md says how many)"


def warn(message: str) -> None:
    """One `warning: ...` line on stderr (stdout keeps the results and the paths written)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def single_predicted_class(
    confusion: Sequence[Sequence[int]] | np.ndarray | None, class_names: Sequence[str]
) -> str | None:
    """The one class a confusion matrix (rows ground truth, columns prediction) predicts, or
    None when it predicts several (or counts nothing)."""
    if confusion is None:
        return None
    matrix = np.asarray(confusion, dtype=np.int64)
    if matrix.ndim != 2 or matrix.sum() == 0:
        return None
    predicted = np.flatnonzero(matrix.sum(axis=0))
    if len(predicted) != 1:
        return None
    index = int(predicted[0])
    return class_names[index] if index < len(class_names) else f"class {index}"


def evaluation_warning(metrics: Mapping[str, Any]) -> str | None:
    """One warning line for an evaluation whose model predicts a single class, else None.

    Occ3D: the no-mask voxel confusion matrix (18 classes, free included); lidarseg: the point
    queries' matrix (17 classes); both have rows ground truth, columns prediction.
    """
    from tpvkit.constants import CLASS_NAMES
    from tpvkit.data.occ3d import OCC3D_CLASS_NAMES

    if metrics.get("task") == "occupancy":
        checks = [("voxel", metrics.get("confusion_matrix_nomask"), OCC3D_CLASS_NAMES)]
    else:
        checks = [("point", metrics.get("confusion_matrix"), CLASS_NAMES)]
    for what, matrix, names in checks:
        name = single_predicted_class(matrix, names)
        if name is not None:
            return f"the model predicts '{name}' for every labelled {what}: {LIKELY_CAUSE}"
    return None


def single_class_warning(counts: np.ndarray, class_names: Sequence[str], where: str) -> str | None:
    """A warning when the predicted-class histogram `counts` (C,) holds a single class."""
    predicted = np.flatnonzero(np.asarray(counts))
    if len(predicted) != 1:
        return None
    index = int(predicted[0])
    name = class_names[index] if index < len(class_names) else f"class {index}"
    return f"{where}: every voxel is '{name}': {LIKELY_CAUSE}"


def empty_output_warning(what: str, hidden: Sequence[str] = ()) -> str:
    """A warning for an output with nothing to show (an export of 0 voxels, a blank picture)."""
    classes = f" and the hidden classes ({', '.join(hidden)})" if hidden else ""
    return f"{what} is empty: no predicted voxel outside free space{classes}; {LIKELY_CAUSE}"
