"""The .npz prediction format: round trip, validation errors that name the file and keys, the
voxel-centre and occupancy conventions against loop references."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from outputs_factory import GRID, PC_RANGE, VOXEL_SIZE, make_prediction

from tpvkit.errors import TpvkitError
from tpvkit.outputs.prediction_file import (
    REQUIRED_KEYS,
    load_prediction,
    occupancy_from_rule,
    point_voxel_index,
    prediction_to_arrays,
    safe_file_stem,
    save_prediction,
    voxel_centers,
)


def _assert_same(a, b):
    for f in dataclasses.fields(a):
        if f.name == "source":
            continue
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
            assert va is not None and vb is not None, f.name
            np.testing.assert_array_equal(va, vb, err_msg=f.name)
            assert np.asarray(va).dtype == np.asarray(vb).dtype or f.name in (
                "point_cloud_range",
                "voxel_size",
            ), f.name
        else:
            assert va == vb, f.name


@pytest.mark.parametrize("occupancy", [True, False])
def test_round_trip_keeps_every_field(tmp_path, occupancy):
    pred = make_prediction(tmp_path, occupancy=occupancy, with_cameras=True, with_gt=True)
    pred.voxel_confidence = np.random.default_rng(0).random(GRID).astype(np.float16)
    path = save_prediction(pred, tmp_path / "p.npz")
    loaded = load_prediction(path)
    _assert_same(pred, loaded)
    assert loaded.source == str(path)
    # Plain numpy can read it without pickles, and the documented dtypes hold.
    with np.load(path, allow_pickle=False) as npz:
        assert npz["voxels"].dtype == np.uint8
        assert npz["points"].dtype == np.float32
        assert npz["palette"].dtype == np.uint8
        assert tuple(npz["grid_shape"]) == GRID
        assert str(npz["frame"]) == "lidar"
        assert int(npz["empty_label"]) == (17 if occupancy else -1)
        assert list(npz["class_names"])[-1] == ("empty" if occupancy else "vegetation")


def test_written_files_leave_no_temporaries(tmp_path):
    save_prediction(make_prediction(), tmp_path / "p.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(TpvkitError, match="not found.*nope.npz"):
        load_prediction(tmp_path / "nope.npz")


def test_not_an_npz(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_text("hello")
    with pytest.raises(TpvkitError, match="bad.npz"):
        load_prediction(path)


def test_npz_without_geometry_names_the_missing_keys(tmp_path):
    path = tmp_path / "voxels_only.npz"
    np.savez_compressed(path, voxels=np.zeros(GRID, np.uint8))
    with pytest.raises(TpvkitError) as err:
        load_prediction(path)
    message = str(err.value)
    assert "voxels_only.npz" in message
    for key in REQUIRED_KEYS:
        if key != "voxels":
            assert key in message


def _arrays_with(**changes):
    arrays = prediction_to_arrays(make_prediction())
    arrays.update(changes)
    return arrays


def _write(tmp_path, arrays):
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path = tmp_path / "x.npz"
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"grid_shape": np.array([1, 2, 3])}, "grid_shape"),
        ({"point_labels": np.zeros(3, np.uint8)}, "point_labels"),
        ({"voxels": np.full(GRID, 40, np.uint8)}, "class ids outside"),
        ({"palette": np.zeros((3, 3), np.uint8)}, "palette"),
        ({"voxel_size": np.array([1.0, 0.0, 1.0])}, "voxel_size"),
        ({"frame": np.array("camera")}, "frame"),
        ({"format_version": np.array(99)}, "format_version"),
    ],
)
def test_inconsistent_files_are_rejected(tmp_path, changes, pattern):
    with pytest.raises(TpvkitError, match=pattern):
        load_prediction(_write(tmp_path, _arrays_with(**changes)))


def test_camera_keys_come_together(tmp_path):
    arrays = prediction_to_arrays(make_prediction(tmp_path, with_cameras=True))
    del arrays["cam_paths"]
    with pytest.raises(TpvkitError, match="cam_paths"):
        load_prediction(_write(tmp_path, arrays))


def test_voxel_centers_match_a_loop():
    index = np.array([[0, 0, 0], [5, 4, 3], [2, 1, 3]])
    got = voxel_centers(index, PC_RANGE, VOXEL_SIZE)
    for row, (i, j, k) in enumerate(index):
        expected = [
            PC_RANGE[0] + (i + 0.5) * VOXEL_SIZE[0],
            PC_RANGE[1] + (j + 0.5) * VOXEL_SIZE[1],
            PC_RANGE[2] + (k + 0.5) * VOXEL_SIZE[2],
        ]
        np.testing.assert_allclose(got[row], expected)


def test_hand_made_file_without_occupied_uses_the_empty_class(tmp_path):
    arrays = prediction_to_arrays(make_prediction())
    del arrays["occupied"], arrays["occupancy_rule"]
    loaded = load_prediction(_write(tmp_path, arrays))
    np.testing.assert_array_equal(loaded.occupied, arrays["voxels"] != 17)
    assert loaded.occupancy_rule == "empty_class"


def test_lidar_points_rule_matches_a_loop():
    rng = np.random.default_rng(1)
    points = rng.uniform(-4, 4, size=(200, 3))
    voxels = np.zeros(GRID, np.uint8)
    got = occupancy_from_rule(voxels, "lidar_points", -1, points, PC_RANGE, VOXEL_SIZE)
    expected = np.zeros(GRID, bool)
    for p in points:
        idx = [int(np.floor((p[a] - PC_RANGE[a]) / VOXEL_SIZE[a])) for a in range(3)]
        if all(0 <= idx[a] < GRID[a] for a in range(3)):
            expected[tuple(idx)] = True
    np.testing.assert_array_equal(got, expected)
    idx = point_voxel_index(points, PC_RANGE, VOXEL_SIZE, GRID)
    assert ((idx == -1).all(1) | (idx >= 0).all(1)).all()


def test_safe_file_stem_keeps_tokens_and_replaces_path_characters():
    assert safe_file_stem("3e8750f331d7499e9b5123e9eb70f2e2") == "3e8750f331d7499e9b5123e9eb70f2e2"
    assert safe_file_stem("a/b\\c d..e") == "a_b_c_d..e"
    assert safe_file_stem("") == "sample"
    assert "/" not in safe_file_stem("../../etc/passwd")
