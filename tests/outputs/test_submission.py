"""Submission files: layout, label guard, and acceptance by the devkit's validate_submission."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tpvkit.constants import CLASS_NAMES
from tpvkit.outputs.submission import (
    FALLBACK_CLASS,
    SubmissionWriter,
    default_meta,
    prediction_path,
    read_prediction,
    to_submission_labels,
    write_meta,
    write_prediction,
)


def test_labels_are_uint8_and_zeros_borrow_the_majority() -> None:
    out = to_submission_labels(np.array([0, 4, 4, 11, 0]))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [4, 4, 4, 11, 4])
    np.testing.assert_array_equal(to_submission_labels(torch.zeros(3, dtype=torch.long)), [11] * 3)
    assert CLASS_NAMES[FALLBACK_CLASS] == "driveable_surface"
    np.testing.assert_array_equal(to_submission_labels(np.arange(1, 17)), np.arange(1, 17))
    with pytest.raises(ValueError, match="must lie in"):
        to_submission_labels(np.array([1, 17]))
    with pytest.raises(ValueError, match="must lie in"):
        to_submission_labels(np.array([-1, 3]))


def test_layout_round_trip_and_meta(tmp_path: Path) -> None:
    labels = np.random.default_rng(0).integers(1, 17, size=1000)
    writer = SubmissionWriter(tmp_path, "mini_val")
    path = writer.add("abc123", labels, num_points=1000)
    assert path == tmp_path / "lidarseg" / "mini_val" / "abc123_lidarseg.bin"
    assert path == prediction_path(tmp_path, "mini_val", "abc123")
    assert path.stat().st_size == 1000
    np.testing.assert_array_equal(read_prediction(path), labels)
    meta_file = writer.finish()
    assert meta_file == tmp_path / "mini_val" / "submission.json"
    assert json.loads(meta_file.read_text()) == {"meta": default_meta()}
    # No temporary files are left behind by the atomic writes.
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "abc123_lidarseg.bin",
        "submission.json",
    ]


def test_bad_input_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 labels for a cloud of 4"):
        write_prediction(tmp_path, "val", "tok", np.ones(3, dtype=np.int64), num_points=4)
    with pytest.raises(ValueError, match="token"):
        write_prediction(tmp_path, "val", "../escape", np.ones(3, dtype=np.int64))
    with pytest.raises(ValueError, match="bool keys"):
        write_meta(tmp_path, "val", {"use_camera": True})
    with pytest.raises(ValueError, match="bool keys"):
        write_meta(tmp_path, "val", {**default_meta(), "use_map": 1})
    assert not any(tmp_path.rglob("*.bin"))


def _write_random_submission(root: Path, nusc, out: Path, split: str, zeros: bool) -> None:
    from nuscenes.eval.lidarseg.utils import get_samples_in_eval_set

    rng = np.random.default_rng(1)
    writer = SubmissionWriter(out, split)
    for sample_token in get_samples_in_eval_set(nusc, split):
        sd = nusc.get("sample_data", nusc.get("sample", sample_token)["data"]["LIDAR_TOP"])
        n = (root / sd["filename"]).stat().st_size // (5 * 4)  # float32 x 5 per point
        labels = rng.integers(0 if zeros else 1, 17, size=n)  # zeros: exercise the 0 guard
        writer.add(sd["token"], labels, num_points=n)
    writer.finish()


def test_devkit_accepts_the_submission_with_and_without_labels(
    synthetic_root: Path, tmp_path: Path
) -> None:
    import shutil

    from nuscenes import NuScenes
    from nuscenes.eval.lidarseg.validate_submission import validate_submission

    nusc = NuScenes("v1.0-mini", str(synthetic_root), verbose=False)
    _write_random_submission(synthetic_root, nusc, tmp_path / "sub", "mini_val", zeros=True)
    validate_submission(nusc, str(tmp_path / "sub"), "mini_val")

    # The same dataroot without labels (as v1.0-test): the devkit then counts the points of
    # each .pcd.bin instead of the labels.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("samples", "sweeps", "maps"):
        (bare / name).symlink_to(synthetic_root / name)
    shutil.copytree(synthetic_root / "v1.0-mini", bare / "v1.0-mini")
    (bare / "v1.0-mini" / "lidarseg.json").write_text("[]")
    (bare / "lidarseg" / "v1.0-mini").mkdir(parents=True)
    nusc_bare = NuScenes("v1.0-mini", str(bare), verbose=False)
    assert len(nusc_bare.lidarseg) == 0
    _write_random_submission(bare, nusc_bare, tmp_path / "sub_bare", "mini_val", zeros=False)
    validate_submission(nusc_bare, str(tmp_path / "sub_bare"), "mini_val")

    # A file one point short is refused by the devkit: the check above can fail.
    victim = next((tmp_path / "sub_bare" / "lidarseg" / "mini_val").glob("*.bin"))
    victim.write_bytes(victim.read_bytes()[:-1])
    with pytest.raises(AssertionError, match="predictions"):
        validate_submission(nusc_bare, str(tmp_path / "sub_bare"), "mini_val")
