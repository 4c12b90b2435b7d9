"""The synthetic world's Occ3D ground truth: the vectorised generator against slow per-voxel and
per-ray references on small grids, and its agreement with the LiDAR sweep it was made with."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tpvkit.constants import LABEL_MAP_32_TO_16
from tpvkit.data import occ3d
from tpvkit.data.dataset import read_labels as read_point_labels
from tpvkit.data.dataset import read_points
from tpvkit.data.infos import load_infos
from tpvkit.data.synthetic import scene_world
from tpvkit.data.synthetic_occ import (
    SURFACE_OCC_LABEL,
    VoxelGrid,
    mark_rays,
    voxel_semantics,
)
from tpvkit.data.synthetic_world import BOX, CYLINDER, _ground_surface


def _pose(x: float, y: float, yaw: float, z: float = 0.0, pitch: float = 0.0) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    Rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    Ry = np.array([[cp, 0, sp], [0, 1.0, 0], [-sp, 0, cp]])
    T = np.eye(4)
    T[:3, :3] = Rz @ Ry
    T[:3, 3] = [x, y, z]
    return T


def _inside(kind, centre, half, yaw, p) -> bool:
    c, s = math.cos(yaw), math.sin(yaw)
    dx, dy, dz = p[0] - centre[0], p[1] - centre[1], p[2] - centre[2]
    qx, qy, qz = c * dx + s * dy, -s * dx + c * dy, dz
    if kind == BOX:
        return abs(qx) <= half[0] and abs(qy) <= half[1] and abs(qz) <= half[2]
    if kind == CYLINDER:
        return qx * qx + qy * qy <= half[0] ** 2 and abs(qz) <= half[2]
    return (qx / half[0]) ** 2 + (qy / half[1]) ** 2 + (qz / half[2]) ** 2 <= 1.0


def semantics_reference(world, ego_to_street, grid: VoxelGrid) -> np.ndarray:
    """Per voxel, per sub-sample, per primitive, in Python floats (the documented rule)."""
    X, Y, Z = grid.shape
    vs = grid.voxel_size
    out = np.full(grid.shape, 17, dtype=np.uint8)
    R, t = ego_to_street[:3, :3], ego_to_street[:3, 3]
    centre_grid = R @ (np.asarray(grid.range_min) + np.asarray(grid.shape) * vs / 2) + t
    reach = np.linalg.norm(np.asarray(grid.shape) * vs) / 2
    near = [
        k
        for k in range(world.num_primitives)
        if np.linalg.norm(world.center[k] - centre_grid) <= reach + np.linalg.norm(world.half[k])
    ]
    subs = [(a, b, c) for a in (-0.25, 0.25) for b in (-0.25, 0.25) for c in (-0.25, 0.25)]
    for i in range(X):
        for j in range(Y):
            for k in range(Z):
                centre = R @ grid.centres(np.array([i, j, k])) + t
                if -vs / 2 < centre[2] <= vs / 2:
                    g = _ground_surface(world, centre[:1], centre[1:2])[0]
                    out[i, j, k] = SURFACE_OCC_LABEL[g]
                best = 0
                for m in near:
                    n = 0
                    for sub in subs:
                        p = R @ grid.centres(np.array([i, j, k]) + np.array(sub)) + t
                        n += _inside(world.kind[m], world.center[m], world.half[m], world.yaw[m], p)
                    if n > best:
                        best = n
                        out[i, j, k] = SURFACE_OCC_LABEL[world.surface[m]]
    return out


@pytest.mark.parametrize("which", [0, 1])
def test_semantics_match_the_per_voxel_reference(which):
    world = scene_world(0, 0, 2)
    # a small grid around an annotated object (car, barrier...) and its ground
    obj = world.objects[which * 3]
    grid = VoxelGrid(range_min=(-2.4, -2.0, -0.6), voxel_size=0.4, shape=(12, 10, 8))
    ego_to_street = _pose(obj.center[0], obj.center[1], 0.3 + which, z=0.05, pitch=0.01)
    fast = voxel_semantics(world, ego_to_street, grid)
    slow = semantics_reference(world, ego_to_street, grid)
    np.testing.assert_array_equal(fast, slow)
    assert (fast != 17).sum() > 20  # the case is not trivial
    assert len(np.unique(fast)) >= 3


def marks_reference(grid: VoxelGrid, origin, d, max_dist, occupied) -> set:
    """March the ray in tiny steps; voxels entered before max_dist, up to the first occupied."""
    X, Y, Z = grid.shape
    seen = set()
    h = 1e-3 * grid.voxel_size
    t = 0.0
    limit = math.inf if max_dist is None else max_dist
    while t <= limit:
        p = np.asarray(origin) + t * np.asarray(d)
        v = tuple(int(math.floor(c)) for c in (p - np.asarray(grid.range_min)) / grid.voxel_size)
        if not all(0 <= v[a] < grid.shape[a] for a in range(3)):
            break
        seen.add(v)
        if occupied is not None and occupied[v]:
            break
        t += h
    return seen


def test_mark_rays_matches_brute_force_marching():
    rng = np.random.default_rng(0)
    grid = VoxelGrid(range_min=(-2.0, -2.0, -1.0), voxel_size=0.4, shape=(10, 10, 6))
    occupied = rng.random(grid.shape) < 0.08
    n = 40
    origins = rng.uniform([-1.5, -1.5, -0.5], [1.5, 1.5, 1.0], (n, 3))
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    dist = rng.uniform(0.3, 3.0, n)
    for occ, md in ((None, dist), (occupied, None)):
        got = mark_rays(grid, origins, dirs, md, occ)
        expected = np.zeros(grid.shape, dtype=bool)
        for r in range(n):
            for v in marks_reference(grid, origins[r], dirs[r], None if md is None else md[r], occ):
                expected[v] = True
        # marching in 1e-3 voxel steps may miss a corner voxel the exact walk clips
        differ = np.argwhere(got != expected)
        assert len(differ) <= 2, differ
        assert got.sum() > 50


def test_ground_truth_agrees_with_the_lidar_sweep(synthetic_root, synthetic_infos):
    """Axis order and frames: LiDAR returns, moved to the ego frame, land in voxels of their
    own class, and every such voxel is in mask_lidar."""
    info = load_infos(synthetic_infos["mini_train"])
    agree, total, in_mask = 0, 0, 0
    lo = np.asarray(occ3d.OCC3D_RANGE[:3])
    for sample in info:
        labels = occ3d.read_labels(info.resolve(sample["occ3d_path"]))
        pts = read_points(info.resolve(sample["lidar_path"]))[:, :3].astype(np.float64)
        cls = read_point_labels(info.resolve(sample["lidarseg_path"]), len(pts))
        T = occ3d.lidar2ego_matrix(sample)
        ego = pts @ T[:3, :3].T + T[:3, 3]
        idx = np.floor((ego - lo) / occ3d.OCC3D_VOXEL_SIZE).astype(int)
        ok = np.all((idx >= 0) & (idx < occ3d.OCC3D_GRID), axis=1) & (cls > 0)
        idx, cls = idx[ok], cls[ok]
        got = labels.semantics[idx[:, 0], idx[:, 1], idx[:, 2]]
        agree += int((got == cls).sum())
        total += len(cls)
        in_mask += int(labels.mask_lidar[idx[:, 0], idx[:, 1], idx[:, 2]].sum())
        assert labels.mask_camera.sum() > labels.mask_lidar.sum() / 4
    assert total > 1000
    assert agree / total > 0.85, agree / total
    assert in_mask == total
    assert LABEL_MAP_32_TO_16[17] == 4  # car stays car in the Occ3D ids


def test_every_key_frame_has_labels(synthetic_root):
    tokens = {p.parent.name for p in synthetic_root.glob("gts/*/*/labels.npz")}
    samples = {s["token"] for s in __import__("json").loads(
        (synthetic_root / "v1.0-mini" / "sample.json").read_text())}  # fmt: skip
    assert tokens == samples
