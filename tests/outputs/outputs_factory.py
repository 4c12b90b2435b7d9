"""Hand-made prediction records for the output tests (no model needed): a tiny grid with known
voxels, a few labelled points and, on request, six small camera images on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tpvkit.constants import CAMERA_ORDER, CLASS_NAMES, OCCUPANCY_CLASS_NAMES
from tpvkit.outputs.prediction_file import Prediction, default_palette
from tpvkit.task import Grid, get_task

GRID = (6, 5, 4)
PC_RANGE = np.array([-3.0, -2.5, -1.0, 3.0, 2.5, 1.0])
VOXEL_SIZE = np.array([1.0, 1.0, 0.5])
IMAGE_SIZE = (90, 160)  # (H, W) of the fake camera images


def rotation_z(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])


def lidar2ego() -> np.ndarray:
    """A non-trivial rigid pose: 90 degree yaw and a lift, like nuScenes' LIDAR_TOP."""
    T = np.eye(4)
    T[:3, :3] = rotation_z(90.0)
    T[:3, 3] = [0.9, 0.1, 1.8]
    return T


def camera_matrix(yaw_deg: float, size: tuple[int, int] = IMAGE_SIZE) -> np.ndarray:
    """lidar2img of a pinhole camera at the origin looking along LiDAR +y rotated by yaw."""
    h, w = size
    K = np.array([[80.0, 0, w / 2], [0, 80.0, h / 2], [0, 0, 1]])
    # camera axes in the LiDAR frame: x right, y down (-z), z forward
    fwd = rotation_z(yaw_deg) @ np.array([0, 1.0, 0])
    right = np.cross(fwd, [0, 0, 1.0])
    down = np.array([0, 0, -1.0])
    lidar2cam = np.eye(4)
    lidar2cam[:3, :3] = np.stack([right, down, fwd])
    K4 = np.eye(4)
    K4[:3, :3] = K
    return K4 @ lidar2cam


CAMERA_YAWS = {
    "CAM_FRONT": 0.0,
    "CAM_FRONT_RIGHT": -55.0,
    "CAM_FRONT_LEFT": 55.0,
    "CAM_BACK": 180.0,
    "CAM_BACK_LEFT": 110.0,
    "CAM_BACK_RIGHT": -110.0,
}


def make_prediction(
    tmp_path: Path | None = None,
    occupancy: bool = True,
    with_points: bool = True,
    with_cameras: bool = False,
    with_gt: bool = False,
) -> Prediction:
    """A 6x5x4 grid: a floor of driveable surface (z=0), a car voxel at (1, 1, 1), a
    vegetation column at x=4, y=3 up to z=3 and a noise voxel at (5, 0, 1)."""
    class_names = OCCUPANCY_CLASS_NAMES if occupancy else CLASS_NAMES
    empty = class_names.index("empty") if occupancy else -1
    voxels = np.full(GRID, empty if occupancy else 14, dtype=np.uint8)
    voxels[:, :, 0] = 11
    voxels[1, 1, 1] = 4
    voxels[4, 3, 1:4] = 16
    voxels[5, 0, 1] = 0
    occupied = voxels != empty if occupancy else np.zeros(GRID, bool)
    if not occupancy:
        occupied[:, :, 0] = True
        occupied[1, 1, 1] = occupied[4, 3, 1:4] = occupied[5, 0, 1] = True
    fields: dict = {}
    if with_points:
        pts = np.array(
            [[-1.5, -1.0, -0.2], [1.6, 1.2, 0.9], [0.2, 0.3, -0.8], [2.5, -2.1, -0.4]],
            dtype=np.float32,
        )
        fields["points"] = pts
        fields["point_labels"] = np.array([4, 16, 11, 0], dtype=np.uint8)
        if with_gt:
            fields["gt_point_labels"] = np.array([4, 15, 11, 11], dtype=np.uint8)
    if with_gt:
        gt = voxels.copy()
        gt[gt == empty] = 0
        gt[2, 2, 1] = 10
        fields["gt_voxels"] = gt
    if with_cameras:
        assert tmp_path is not None
        paths, mats = [], []
        for i, cam in enumerate(CAMERA_ORDER):
            path = tmp_path / "images" / f"{cam}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            shade = 60 + 25 * i
            Image.new("RGB", IMAGE_SIZE[::-1], (shade, shade, shade)).save(path)
            paths.append(str(path))
            mats.append(camera_matrix(CAMERA_YAWS[cam]))
        fields.update(
            cam_names=CAMERA_ORDER,
            cam_paths=tuple(paths),
            cam_lidar2img=np.stack(mats),
            cam_image_sizes=np.array([IMAGE_SIZE] * 6, dtype=np.int64),
        )
    return Prediction(
        voxels=voxels,
        occupied=occupied,
        point_cloud_range=PC_RANGE.copy(),
        voxel_size=VOXEL_SIZE.copy(),
        lidar2ego=lidar2ego(),
        class_names=class_names,
        palette=default_palette(class_names),
        empty_label=empty,
        occupancy_rule="empty_class" if occupancy else "lidar_points",
        token="tok0",
        lidar_token="lid0",
        scene_token="scene0",
        timestamp=1000,
        task=get_task("tpv_occupancy" if occupancy else "lidarseg").with_grid(
            Grid("lidar", tuple(PC_RANGE), GRID, tuple(VOXEL_SIZE))
        ),
        **fields,
    )


def make_street(
    tmp_path: Path | None = None,
    grid: tuple[int, int, int] = (80, 80, 8),
    seed: int = 0,
    occupancy: bool = True,
    with_cameras: bool = False,
    with_mask: bool = True,
) -> Prediction:
    """A street-like frame on a bigger grid (0.5 m voxels): a road along y with sidewalks and
    terrain, buildings, cars, trees and a few pedestrians, as ground truth; the prediction is the
    same scene with errors (a car moved, some classes swapped, some voxels missed or added).

    With `with_mask`, gt_mask_camera marks the voxels within 30 voxels of the grid's centre.
    The grid needs X >= 24 (the street's cross-section).
    """
    assert grid[0] >= 24 and grid[1] >= 16 and grid[2] >= 4, grid
    rng = np.random.default_rng(seed)
    class_names = OCCUPANCY_CLASS_NAMES if occupancy else CLASS_NAMES
    empty = class_names.index("empty") if occupancy else -1
    X, Y, Z = grid
    gt = np.zeros(grid, np.uint8)
    cx = X // 2
    gt[:, :, 0] = 14  # terrain
    gt[cx - 8 : cx + 8, :, 0] = 11  # road
    gt[cx - 11 : cx - 8, :, 0] = gt[cx + 8 : cx + 11, :, 0] = 13  # sidewalks
    for side in (-1, 1):
        y = 2
        while y < Y - 6:
            depth, length, height = rng.integers(6, 12), rng.integers(6, 14), rng.integers(3, Z)
            x0 = cx + 13 if side > 0 else cx - 13 - depth
            gt[max(x0, 0) : x0 + depth, y : y + length, 1:height] = 15  # manmade
            y += length + rng.integers(2, 6)
    for _ in range(10):  # cars on the road, 4.5 x 2 x 1.5 m
        x, y = cx + rng.choice([-6, -2, 2, 5]), rng.integers(2, Y - 12)
        gt[x : x + 4, y : y + 9, 1:4] = 4
    for _ in range(8):  # trees on the sidewalks: trunk and crown
        x, y = rng.choice([cx - 10, cx + 9]), rng.integers(3, Y - 4)
        gt[x, y, 1:4] = 16
        gt[x - 1 : x + 2, y - 1 : y + 2, 4:6] = 16
    for _ in range(5):  # pedestrians
        x, y = rng.choice([cx - 9, cx + 9]), rng.integers(0, Y)
        gt[x, y, 1:4] = 7
    pred = gt.copy()
    # Errors: one car moved by a metre, a building's class swapped, random misses and extras.
    cars = gt == 4
    pred[cars] = 0
    pred[np.roll(cars, 2, axis=1) & (pred == 0)] = 4  # every car one metre further forward
    buildings = np.argwhere(gt == 15)
    if len(buildings):
        x, y, _ = buildings[len(buildings) // 2]
        near_x = np.abs(np.arange(X)[:, None, None] - x) < 4
        sel = near_x & (np.abs(np.arange(Y)[None, :, None] - y) < 4)
        pred[sel & (gt == 15)] = 10  # truck
    miss = (rng.random(grid) < 0.03) & (pred != 0) & (np.arange(Z) > 0)[None, None, :]
    pred[miss] = 0
    extra = (rng.random(grid) < 0.002) & (pred == 0) & (np.arange(Z) == 1)[None, None, :]
    pred[extra] = 1  # barrier
    occupied = pred != 0
    if occupancy:
        pred[~occupied] = empty
    voxel_size = np.array([0.5, 0.5, 0.5])
    pc_range = np.array([-X / 4, -Y / 4, -2.0, X / 4, Y / 4, -2.0 + Z / 2])
    # Points: one per visible column top, slightly jittered, labelled by the truth (gt) and the
    # prediction (pred) of that voxel.
    top_z = np.where(gt != 0, np.arange(Z), -1).max(axis=2)
    cols = np.argwhere(top_z >= 0)
    idx = np.concatenate([cols, top_z[cols[:, 0], cols[:, 1]][:, None]], axis=1)
    pts = pc_range[:3] + (idx + 0.5 + rng.uniform(-0.3, 0.3, idx.shape)) * voxel_size
    gt_point_labels = gt[tuple(idx.T)]
    pred_point_labels = np.where(occupied[tuple(idx.T)], pred[tuple(idx.T)], gt_point_labels)
    fields: dict = {}
    if with_mask:
        xx, yy = np.meshgrid(np.arange(X) - X / 2, np.arange(Y) - Y / 2, indexing="ij")
        fields["gt_mask_camera"] = np.repeat((np.hypot(xx, yy) < 30)[..., None], Z, axis=2)
    if with_cameras:
        assert tmp_path is not None
        paths, mats = [], []
        for i, cam in enumerate(CAMERA_ORDER):
            path = tmp_path / "images" / f"street_{cam}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            h, w = IMAGE_SIZE
            sky = np.linspace(200, 120, h // 2)[:, None, None] * np.array([0.7, 0.85, 1.0])
            ground = np.full((h - h // 2, 1, 3), 70.0 + 10 * i)
            img = np.concatenate(
                [np.broadcast_to(sky, (h // 2, w, 3)), np.broadcast_to(ground, (h - h // 2, w, 3))]
            )
            Image.fromarray(img.astype(np.uint8)).save(path)
            paths.append(str(path))
            mats.append(camera_matrix(CAMERA_YAWS[cam]))
        fields.update(
            cam_names=CAMERA_ORDER,
            cam_paths=tuple(paths),
            cam_lidar2img=np.stack(mats),
            cam_image_sizes=np.array([IMAGE_SIZE] * 6, dtype=np.int64),
        )
    return Prediction(
        voxels=pred,
        occupied=occupied,
        point_cloud_range=pc_range,
        voxel_size=voxel_size,
        lidar2ego=lidar2ego(),
        class_names=class_names,
        palette=default_palette(class_names),
        empty_label=empty,
        occupancy_rule="empty_class" if occupancy else "lidar_points",
        token=f"street{seed}",
        lidar_token=f"lidar{seed}",
        scene_token="street-scene",
        timestamp=1_000_000 + 500_000 * seed,
        points=pts.astype(np.float32),
        point_labels=pred_point_labels.astype(np.uint8),
        gt_point_labels=gt_point_labels.astype(np.uint8),
        gt_voxels=gt,
        **fields,
    )
