"""tpvkit.data.geometry against pyquaternion, mmdet3d's formulas written out, hand-computed
border cases and Python-loop references (float64)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from pyquaternion import Quaternion

from tpvkit.data import geometry
from tpvkit.errors import TpvkitError

PC_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)


def _random_pose(rng: np.random.Generator) -> tuple[list[float], list[float]]:
    q = Quaternion(axis=rng.normal(size=3), angle=rng.uniform(-np.pi, np.pi))
    return list(rng.uniform(-100, 100, 3)), list(q.elements)


def test_quaternion_to_matrix_matches_pyquaternion():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        expected = Quaternion(q / np.linalg.norm(q)).rotation_matrix
        np.testing.assert_allclose(geometry.quaternion_to_matrix(q), expected, atol=1e-12)


@pytest.mark.parametrize(
    "R",
    [
        np.eye(3),
        np.diag([1.0, -1.0, -1.0]),  # 180 deg about x: trace -1, the x branch
        np.diag([-1.0, 1.0, -1.0]),  # about y
        np.diag([-1.0, -1.0, 1.0]),  # about z
        Quaternion(axis=[1, 2, 3], angle=3.1).rotation_matrix,
    ],
)
def test_matrix_to_quaternion_round_trip(R):
    q = geometry.matrix_to_quaternion(R)
    assert q[0] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
    np.testing.assert_allclose(geometry.quaternion_to_matrix(q), R, atol=1e-12)


def test_matrix_to_quaternion_random():
    rng = np.random.default_rng(1)
    for _ in range(50):
        _, q = _random_pose(rng)
        R = Quaternion(q).rotation_matrix
        np.testing.assert_allclose(
            geometry.quaternion_to_matrix(geometry.matrix_to_quaternion(R)), R, atol=1e-12
        )


def test_pose_matrix_and_inverse_match_devkit():
    from nuscenes.utils.geometry_utils import transform_matrix

    rng = np.random.default_rng(2)
    t, q = _random_pose(rng)
    T = geometry.pose_matrix(t, q)
    np.testing.assert_allclose(T, transform_matrix(np.array(t), Quaternion(q)), atol=1e-12)
    np.testing.assert_allclose(
        geometry.invert_pose(T), transform_matrix(np.array(t), Quaternion(q), inverse=True), 1e-12
    )


def _obtain_sensor2top_reference(cam_cs, cam_pose, lidar_pose, lidar_cs):
    """mmdet3d's obtain_sensor2top, with its row-vector algebra, for comparison."""
    l2e_r = Quaternion(lidar_cs[1]).rotation_matrix
    e2g_r = Quaternion(lidar_pose[1]).rotation_matrix
    l2e_t, e2g_t = np.array(lidar_cs[0]), np.array(lidar_pose[0])
    l2e_r_s = Quaternion(cam_cs[1]).rotation_matrix
    e2g_r_s = Quaternion(cam_pose[1]).rotation_matrix
    l2e_t_s, e2g_t_s = np.array(cam_cs[0]), np.array(cam_pose[0])
    back = np.linalg.inv(e2g_r).T @ np.linalg.inv(l2e_r).T
    R = (l2e_r_s.T @ e2g_r_s.T) @ back
    T = (l2e_t_s @ e2g_r_s.T + e2g_t_s) @ back
    T -= e2g_t @ back + l2e_t @ np.linalg.inv(l2e_r).T
    return R.T, T


def test_sensor2lidar_matches_mmdet3d_obtain_sensor2top():
    rng = np.random.default_rng(3)
    for _ in range(10):
        cam_cs, cam_pose, lidar_pose, lidar_cs = (_random_pose(rng) for _ in range(4))
        R, t = geometry.sensor2lidar(
            geometry.pose_matrix(*cam_cs),
            geometry.pose_matrix(*cam_pose),
            geometry.pose_matrix(*lidar_pose),
            geometry.pose_matrix(*lidar_cs),
        )
        R_ref, t_ref = _obtain_sensor2top_reference(cam_cs, cam_pose, lidar_pose, lidar_cs)
        np.testing.assert_allclose(R, R_ref, atol=1e-10)
        np.testing.assert_allclose(t, t_ref, atol=1e-8)


def test_lidar2img_matches_tpvformer_formula_and_projects():
    rng = np.random.default_rng(4)
    _, q = _random_pose(rng)
    R, t = Quaternion(q).rotation_matrix, rng.normal(size=3)
    K = np.array([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]])
    # tpvformer.md section 4, written with its row-vector transposes
    R_l2c = np.linalg.inv(R)
    t_l2c = t @ R_l2c.T
    rt = np.eye(4)
    rt[:3, :3] = R_l2c.T
    rt[3, :3] = -t_l2c
    viewpad = np.eye(4)
    viewpad[:3, :3] = K
    expected = viewpad @ rt.T
    lidar2img = geometry.lidar2img_from_sensor2lidar(R, t, K)
    np.testing.assert_allclose(lidar2img, expected, atol=1e-9)

    # a point placed in the camera frame projects to K's pixel
    p_cam = np.array([1.5, -0.7, 12.0])
    p_lidar = R @ p_cam + t
    uv, depth = geometry.project_points(lidar2img, p_lidar[None])
    np.testing.assert_allclose(depth, [12.0], atol=1e-9)
    np.testing.assert_allclose(uv[0], (K @ p_cam)[:2] / 12.0, atol=1e-9)

    # round trip through mmdet3d v2's lidar2cam
    lidar2cam = np.eye(4)
    lidar2cam[:3, :3], lidar2cam[:3, 3] = R.T, -R.T @ t
    R2, t2 = geometry.sensor2lidar_from_lidar2cam(lidar2cam)
    np.testing.assert_allclose(R2, R, atol=1e-12)
    np.testing.assert_allclose(t2, t, atol=1e-12)


def test_scaled_intrinsic_scales_pixels():
    rng = np.random.default_rng(5)
    K = np.array([[800.0, 0.0, 640.0], [0.0, 810.0, 360.0], [0.0, 0.0, 1.0]])
    R, t = Quaternion(axis=[0, 0, 1], angle=0.3).rotation_matrix, np.array([0.1, 0.2, 0.3])
    pts = rng.uniform(-20, 20, (50, 3))
    uv, d = geometry.project_points(geometry.lidar2img_from_sensor2lidar(R, t, K), pts)
    K2 = geometry.scale_intrinsic(K, 0.25, 0.5)
    uv2, d2 = geometry.project_points(geometry.lidar2img_from_sensor2lidar(R, t, K2), pts)
    np.testing.assert_allclose(uv2, uv * [0.25, 0.5], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(d2, d)
    np.testing.assert_allclose(K, [[800.0, 0.0, 640.0], [0.0, 810.0, 360.0], [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------------------
# Voxels


def _voxel_index_loop(p: float, lo: float, hi: float, n: int, convention: str) -> int:
    """Scan the cell boundaries in float64: the cell whose [left, right) holds p."""
    if convention == "tpvformer":
        p = min(max(p, lo), hi)
        size = (hi - lo) / (n - 1)
    else:
        size = (hi - lo) / n
    if p < lo + size:
        return 0
    for i in range(1, n):
        if lo + i * size <= p < lo + (i + 1) * size:
            return i
    return n - 1


@pytest.mark.parametrize("convention", ["exact", "tpvformer"])
def test_voxel_indices_match_loop_reference(convention):
    rng = np.random.default_rng(6)
    grid = (20, 16, 8)
    pts = np.concatenate(
        [
            rng.uniform(-60, 60, (300, 3)) * [1, 1, 0.2],
            np.array([PC_RANGE[:3], PC_RANGE[3:], [0.0, 0.0, 0.0], [-80, 90, -10.0]]),
        ]
    )
    idx = geometry.point_voxel_indices(pts, PC_RANGE, grid, convention)
    assert idx.dtype == np.int64 and idx.shape == pts.shape
    for p, got in zip(pts, idx, strict=True):
        expected = [
            _voxel_index_loop(float(p[a]), PC_RANGE[a], PC_RANGE[a + 3], grid[a], convention)
            for a in range(3)
        ]
        assert list(got) == expected, (p, got, expected)


def test_voxel_indices_hand_computed_borders():
    grid = (200, 200, 16)
    pts = np.array(
        [
            [-51.2, -51.2, -5.0],  # the minimum corner -> first voxel
            [51.2, 51.2, 3.0],  # the maximum corner -> last voxel (clipped)
            [0.0, -0.001, -1.0],  # x: 51.2 / 0.512 = 100; y just below the middle
            [60.0, -60.0, 10.0],  # outside -> border voxels
            [51.19, 0.256, 2.99],
        ]
    )
    exact = geometry.point_voxel_indices(pts, PC_RANGE, grid, "exact")
    assert exact.tolist() == [
        [0, 0, 0],
        [199, 199, 15],
        [100, 99, 8],
        [199, 0, 15],
        [199, 100, 15],
    ]
    # public rule: size = range / (grid - 1) -> 0.51457... in x/y, 0.5333... in z
    public = geometry.point_voxel_indices(pts, PC_RANGE, grid, "tpvformer")
    assert public.tolist() == [
        [0, 0, 0],
        [199, 199, 15],
        [99, 99, 7],
        [199, 0, 15],
        [198, 99, 14],
    ]
    assert math.floor((51.19 + 51.2) / (102.4 / 199)) == 198


def test_unknown_voxel_convention_is_a_clear_error():
    with pytest.raises(TpvkitError, match="data.voxel_convention"):
        geometry.point_voxel_indices(np.zeros((1, 3)), PC_RANGE, (2, 2, 2), "nearest")


def _majority_loop(vidx, labels, grid, ignore_index=None):
    out = np.zeros(grid, dtype=np.int64)
    votes: dict[tuple, Counter] = {}
    seen: set[tuple] = set()
    for v, lab in zip(map(tuple, vidx), labels, strict=True):
        seen.add(v)
        if ignore_index is not None and lab == ignore_index:
            continue
        votes.setdefault(v, Counter())[int(lab)] += 1
    for v in seen:
        if v in votes:
            best = max(votes[v].values())
            out[v] = min(lab for lab, c in votes[v].items() if c == best)
        elif ignore_index is not None:
            out[v] = ignore_index
    return out


@pytest.mark.parametrize("ignore_index", [None, 0])
def test_majority_vote_matches_loop_reference(ignore_index):
    rng = np.random.default_rng(7)
    grid = (4, 3, 2)
    vidx = np.stack([rng.integers(0, g, 500) for g in grid], axis=1)
    labels = rng.integers(0, 5, 500)
    got = geometry.voxel_majority_labels(vidx, labels, grid, ignore_index=ignore_index)
    np.testing.assert_array_equal(got, _majority_loop(vidx, labels, grid, ignore_index))
    # the order of the points does not matter
    perm = rng.permutation(500)
    again = geometry.voxel_majority_labels(vidx[perm], labels[perm], grid, ignore_index)
    np.testing.assert_array_equal(again, got)


def test_majority_vote_ties_empty_voxels_and_ignore():
    grid = (3, 1, 1)
    vidx = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [2, 0, 0], [2, 0, 0], [2, 0, 0]])
    labels = np.array([9, 4, 4, 9, 0, 0, 5])
    got = geometry.voxel_majority_labels(vidx, labels, grid)
    # voxel 0: tie 4 vs 9 -> smaller; voxel 1: no point -> 0; voxel 2: 0 votes like others
    assert got[:, 0, 0].tolist() == [4, 0, 0]
    got_ignore = geometry.voxel_majority_labels(vidx, labels, grid, ignore_index=0)
    assert got_ignore[:, 0, 0].tolist() == [4, 0, 5]
    assert geometry.voxel_majority_labels(np.zeros((0, 3)), np.zeros(0), grid).sum() == 0


def test_voxel_grid_shape_axes():
    assert geometry.voxel_grid_shape(200, 150, 16, 2, 1, 1) == (400, 150, 16)


@pytest.mark.parametrize(
    "hw, divisor, expected",
    [
        ((900, 1600), 32, (928, 1600)),  # nuScenes full size: 900 -> 29 * 32
        ((224, 400), 32, (224, 416)),  # the occupancy demo's size: 400 -> 13 * 32
        ((112, 200), 32, (128, 224)),
        ((64, 96), 32, (64, 96)),  # already multiples: unchanged
        ((65, 97), 1, (65, 97)),  # divisor 1: no padding
        ((65, 97), 0, (65, 97)),  # divisor 0 reads as 1
    ],
)
def test_padded_image_size_rounds_up(hw, divisor, expected):
    assert geometry.padded_image_size(hw, divisor) == expected
