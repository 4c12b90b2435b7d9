"""Hand-made prediction records for the output tests (no model needed): a tiny grid with known
voxels, a few labelled points and, on request, six small camera images on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tpvkit.constants import CAMERA_ORDER, CLASS_NAMES, OCCUPANCY_CLASS_NAMES
from tpvkit.outputs.prediction_file import Prediction, default_palette

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
        **fields,
    )
