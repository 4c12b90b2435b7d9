"""Degenerate results get one warning line with the likely cause, and the command still exits 0:
a model predicting one class everywhere (eval, predict), an empty export, 3D picture or viewer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from outputs_factory import make_prediction
from typer.testing import CliRunner

from tpvkit.cli import app
from tpvkit.constants import CLASS_NAMES
from tpvkit.outputs.degenerate import (
    LIKELY_CAUSE,
    evaluation_warning,
    single_class_warning,
    single_predicted_class,
)
from tpvkit.outputs.prediction_file import save_prediction


def free_everywhere(tmp_path=None):
    """The short Occ3D run of the issue: every voxel free."""
    pred = make_prediction()
    voxels = np.full_like(pred.voxels, pred.empty_label)
    return dataclasses.replace(pred, voxels=voxels, occupied=np.zeros(voxels.shape, bool))


def _one_warning(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("warning: ")]
    assert len(lines) == 1, output
    assert "docs/learning.md" in lines[0] and "too few iterations" in lines[0]
    return lines[0]


def test_single_predicted_class_on_hand_made_matrices():
    names = ("a", "b", "c")
    one = [[0, 5, 0], [0, 2, 0], [0, 9, 0]]  # rows ground truth, columns prediction
    assert single_predicted_class(one, names) == "b"
    two = [[1, 5, 0], [0, 2, 0], [0, 9, 0]]
    assert single_predicted_class(two, names) is None
    assert single_predicted_class(np.zeros((3, 3)), names) is None  # nothing counted
    assert single_predicted_class(None, names) is None
    assert (
        single_class_warning(np.array([0, 7, 0]), names, "x")
        == f"x: every voxel is 'b': {LIKELY_CAUSE}"
    )
    assert single_class_warning(np.array([1, 7, 0]), names, "x") is None


def test_evaluation_warning_for_occ3d_free_everywhere_and_lidarseg_one_class():
    from tpvkit.data.occ3d import OCC3D_CLASS_NAMES, OCC3D_FREE

    n = len(OCC3D_CLASS_NAMES)
    matrix = np.zeros((n, n), np.int64)
    matrix[:, OCC3D_FREE] = np.arange(1, n + 1)  # every ground-truth class predicted free
    warning = evaluation_warning({"task": "occupancy", "confusion_matrix_nomask": matrix.tolist()})
    assert warning is not None and "'free' for every labelled voxel" in warning
    matrix[3, 3] = 1
    assert evaluation_warning({"task": "occupancy", "confusion_matrix_nomask": matrix}) is None

    m = len(CLASS_NAMES)
    lidarseg = np.zeros((m, m), np.int64)
    lidarseg[1:, CLASS_NAMES.index("driveable_surface")] = 4
    warning = evaluation_warning({"confusion_matrix": lidarseg})
    assert warning is not None and "'driveable_surface' for every labelled point" in warning
    assert evaluation_warning({"confusion_matrix": None}) is None  # a split without labels


def test_eval_report_prints_the_warning(tmp_path, capsys):
    from tpvkit.engine.evaluate import _report

    m = len(CLASS_NAMES)
    lidarseg = np.zeros((m, m), np.int64)
    lidarseg[1:, 5] = 4
    metrics = {"miou": 0.0, "iou_per_class": None, "num_samples": 2, "confusion_matrix": lidarseg}
    _report({**metrics, "confusion_matrix": lidarseg.tolist()}, tmp_path / "m.json", None, "")
    _one_warning(capsys.readouterr().err)


def test_export_of_nothing_warns_and_exits_0(tmp_path):
    npz = save_prediction(free_everywhere(), tmp_path / "free.npz")
    result = CliRunner().invoke(app, ["export", str(npz), "--out", str(tmp_path / "x.ply")])
    assert result.exit_code == 0, result.output
    assert "0 voxels" in result.output
    line = _one_warning(result.output)
    assert "is empty" in line and "empty" in line.split("hidden classes", 1)[1]
    full = save_prediction(make_prediction(), tmp_path / "full.npz")
    result = CliRunner().invoke(app, ["export", str(full), "--out", str(tmp_path / "y.ply")])
    assert result.exit_code == 0 and "warning" not in result.output


def test_blank_3d_picture_warns_and_exits_0(tmp_path):
    npz = save_prediction(free_everywhere(), tmp_path / "free.npz")
    args = ["visualize", str(npz), "--out", str(tmp_path / "v"), "--views", "voxels_3d"]
    result = CliRunner().invoke(
        app, [*args, "--width", "64", "--height", "48", "--supersample", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "voxels_3d.png" in _one_warning(result.output)


def test_empty_viewer_warns_and_exits_0(tmp_path):
    npz = save_prediction(free_everywhere(), tmp_path / "free.npz")
    out = tmp_path / "scene.html"
    result = CliRunner().invoke(app, ["view", str(npz), "--out", str(out), "--no-cameras"])
    assert result.exit_code == 0, result.output
    assert "viewer page" in _one_warning(result.output) and out.is_file()


def test_predictions_of_one_class_warn(tmp_path, capsys):
    from tpvkit.engine.predict import _warn_if_single_class

    paths = [save_prediction(free_everywhere(), tmp_path / f"{i}.npz") for i in range(2)]
    _warn_if_single_class(paths, tmp_path)
    assert "every voxel is 'empty'" in _one_warning(capsys.readouterr().err)
    paths.append(save_prediction(make_prediction(), tmp_path / "full.npz"))
    _warn_if_single_class(paths, tmp_path)
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("source", ["gt_voxels"])
def test_an_empty_ground_truth_export_is_not_blamed_on_training(tmp_path, capsys, source):
    from tpvkit.outputs.export import export_prediction_ply

    pred = free_everywhere()
    pred = dataclasses.replace(pred, gt_voxels=np.zeros_like(pred.voxels))
    export_prediction_ply(pred, tmp_path / "gt.ply", source=source)
    assert "warning" not in capsys.readouterr().err
