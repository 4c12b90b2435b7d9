"""Pure geometry of the data pipeline: poses, the LiDAR -> image projection, intrinsics scaling,
voxel indices of points and majority-vote voxel labels.

Every function is a pure function over numpy arrays (float64 for poses, so the info files keep
full precision); the Dataset and the info builders call these and nothing else re-derives them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tpvkit.task import VOXEL_CONVENTIONS, voxel_grid_shape, voxel_size

# The grid shape and voxel size rules live in tpvkit.task (the config layer needs them too).
__all__ = ["VOXEL_CONVENTIONS", "voxel_grid_shape", "voxel_size"]


# ---------------------------------------------------------------------------------------------
# Poses


def quaternion_to_matrix(q_wxyz: Sequence[float] | np.ndarray) -> np.ndarray:
    """Unit quaternion [w, x, y, z] (nuScenes order) -> (3, 3) rotation matrix, float64.

    The quaternion is normalised first, as pyquaternion does, so slightly off-unit values in
    the tables still give a proper rotation.
    """
    w, x, y, z = np.asarray(q_wxyz, dtype=np.float64) / np.linalg.norm(q_wxyz)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> unit quaternion [w, x, y, z] with w >= 0 (q and -q are one rotation).

    Shepperd's method: take the square root of the largest of the four diagonal combinations
    so the division below never divides by a small number.
    """
    R = np.asarray(R, dtype=np.float64)
    trace = R[0, 0] + R[1, 1] + R[2, 2]
    candidates = [trace, R[0, 0], R[1, 1], R[2, 2]]
    k = int(np.argmax(candidates))
    if k == 0:
        s = 2.0 * np.sqrt(max(1.0 + trace, 0.0))
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif k == 1:
        s = 2.0 * np.sqrt(max(1.0 + R[0, 0] - R[1, 1] - R[2, 2], 0.0))
        q = [(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif k == 2:
        s = 2.0 * np.sqrt(max(1.0 + R[1, 1] - R[0, 0] - R[2, 2], 0.0))
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(max(1.0 + R[2, 2] - R[0, 0] - R[1, 1], 0.0))
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s]
    q_arr = np.asarray(q) / np.linalg.norm(q)
    return -q_arr if q_arr[0] < 0 else q_arr


def pose_matrix(translation: Sequence[float], rotation_wxyz: Sequence[float]) -> np.ndarray:
    """(translation, quaternion) of a child -> parent pose -> (4, 4) T with p_parent = T p."""
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(rotation_wxyz)
    T[:3, 3] = np.asarray(translation, dtype=np.float64)
    return T


def invert_pose(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid (4, 4) transform, exact (R^T, -R^T t) rather than a general inverse."""
    R = T[:3, :3]
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ T[:3, 3]
    return out


def sensor2lidar(
    sensor2ego: np.ndarray,
    ego2global_at_sensor: np.ndarray,
    ego2global_at_lidar: np.ndarray,
    lidar2ego: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Camera frame -> LiDAR frame through the full chain, as mmdet3d's obtain_sensor2top.

    cam -> ego(t_cam) -> global -> ego(t_lidar) -> lidar; the two ego poses differ because the
    camera and the LiDAR fire at different times. All arguments are (4, 4) poses (child ->
    parent). Returns (R (3, 3), t (3,)) with p_lidar = R p_cam + t.
    """
    T = (
        invert_pose(lidar2ego)
        @ invert_pose(ego2global_at_lidar)
        @ ego2global_at_sensor
        @ sensor2ego
    )
    return T[:3, :3], T[:3, 3]


def lidar2img_from_sensor2lidar(
    rotation: np.ndarray, translation: np.ndarray, intrinsic: np.ndarray
) -> np.ndarray:
    """(4, 4) LiDAR -> pixel projection from sensor2lidar (R, t) and the (3, 3) intrinsic K.

    The TPVFormer formula: lidar2cam = [R^T | -R^T t], lidar2img = pad4(K) @ lidar2cam, so
    [u*d, v*d, d, 1] = lidar2img @ [x, y, z, 1] with d the depth along the optical axis.
    """
    rotation = np.asarray(rotation, dtype=np.float64)
    translation = np.asarray(translation, dtype=np.float64)
    lidar2cam = np.eye(4)
    lidar2cam[:3, :3] = rotation.T
    lidar2cam[:3, 3] = -rotation.T @ translation
    K4 = np.eye(4)
    K4[:3, :3] = np.asarray(intrinsic, dtype=np.float64)
    return K4 @ lidar2cam


def sensor2lidar_from_lidar2cam(lidar2cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(4, 4) lidar2cam (mmdet3d v2 infos) -> sensor2lidar (R (3, 3), t (3,))."""
    cam2lidar = invert_pose(np.asarray(lidar2cam, dtype=np.float64))
    return cam2lidar[:3, :3], cam2lidar[:3, 3]


def scale_intrinsic(intrinsic: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    """K of an image resized by (scale_x, scale_y): the first two rows scale, the third stays.

    This is the convention of mmdet3d's resize (pixel corners at 0 and W, not pixel centres),
    which is what a bilinear resize of the whole image with align_corners=False implements.
    """
    K = np.array(intrinsic, dtype=np.float64)
    K[0] *= scale_x
    K[1] *= scale_y
    return K


def padded_image_size(hw: Sequence[int], divisor: int) -> tuple[int, int]:
    """(Hp, Wp): an image size (H, W) rounded up to a multiple of `divisor` (>= 1), the size the
    model pads its images to (bottom/right). The dataset, the model and the ONNX contract all
    use this one rule."""
    div = max(int(divisor), 1)
    return (-(-int(hw[0]) // div) * div, -(-int(hw[1]) // div) * div)


def project_points(lidar2img: np.ndarray, points_xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) LiDAR points -> ((N, 2) pixel (u, v), (N,) depth) through a (4, 4) lidar2img."""
    pts = np.asarray(points_xyz, dtype=np.float64)
    homo = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ np.asarray(lidar2img).T
    depth = homo[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = homo[:, :2] / depth[:, None]
    return uv, depth


# ---------------------------------------------------------------------------------------------
# Voxels


def point_voxel_indices(
    points_xyz: np.ndarray,
    point_cloud_range: Sequence[float],
    grid: Sequence[int],
    convention: str = "exact",
) -> np.ndarray:
    """(N, 3) LiDAR xyz -> (N, 3) int64 voxel index (x, y, z) of each point, always in the grid.

    "exact": voxel size = range / grid, index = floor((p - min) / size) clipped to
    [0, grid - 1], so a point outside the range lands in the border voxel and p = max lands in
    the last voxel. "tpvformer": the public code's rule, points clipped into the range first
    and size = range / (grid - 1), so the last voxel only holds points exactly at the maximum.
    """
    size = voxel_size(point_cloud_range, grid, convention)
    pts = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
    lo = np.asarray(point_cloud_range[:3], dtype=np.float64)
    hi = np.asarray(point_cloud_range[3:], dtype=np.float64)
    if convention == "tpvformer":
        pts = np.clip(pts, lo, hi)
    idx, _ = voxel_index_of(pts, lo, size, grid)
    return np.clip(idx, 0, np.asarray(grid, dtype=np.int64) - 1)


def voxel_index_of(
    points_xyz: np.ndarray, grid_min: np.ndarray, size: np.ndarray, grid: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The one voxel-index formula: (N, 3) xyz -> ((N, 3) int64 floor((p - min) / size), (N,)
    bool inside the grid). Cell i spans [min + i * size, min + (i + 1) * size)."""
    pts = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
    idx = np.floor((pts - np.asarray(grid_min, np.float64)) / np.asarray(size, np.float64))
    # NaN coordinates (never in real sweeps) would make the cast undefined; send them to 0.
    idx = np.nan_to_num(idx, nan=0.0, posinf=0.0, neginf=0.0).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(grid, dtype=np.int64)), axis=1)
    return idx, inside


def voxel_majority_labels(
    voxel_index: np.ndarray,
    labels: np.ndarray,
    grid: Sequence[int],
    ignore_index: int | None = None,
) -> np.ndarray:
    """Majority vote of the point labels in each voxel -> (X, Y, Z) int64, 0 where no point.

    voxel_index (N, 3) int64 inside the grid, labels (N,) non-negative ints. Ties go to the
    smallest label (as np.argmax over per-voxel label counts in the public code), so the result
    does not depend on the point order. With ignore_index set, points of that label do not
    vote (a voxel holding only such points gets ignore_index); by default every label votes,
    as in the public code.
    """
    X, Y, Z = (int(g) for g in grid)
    out = np.zeros((X, Y, Z), dtype=np.int64)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    vidx = np.asarray(voxel_index, dtype=np.int64).reshape(-1, 3)
    if len(labels) == 0:
        return out
    flat = (vidx[:, 0] * Y + vidx[:, 1]) * Z + vidx[:, 2]
    if ignore_index is not None:
        keep = labels != ignore_index
        out.reshape(-1)[flat[~keep]] = ignore_index  # overwritten below where others vote
        flat, labels = flat[keep], labels[keep]
        if len(labels) == 0:
            return out
    num_labels = int(labels.max()) + 1
    pairs, counts = np.unique(flat * num_labels + labels, return_counts=True)
    pair_voxel = pairs // num_labels
    pair_label = pairs % num_labels
    # Sort by voxel, then by count descending, then by label ascending: the first row of each
    # voxel is its winner.
    order = np.lexsort((pair_label, -counts, pair_voxel))
    pair_voxel, pair_label = pair_voxel[order], pair_label[order]
    first = np.ones(len(pair_voxel), dtype=bool)
    first[1:] = pair_voxel[1:] != pair_voxel[:-1]
    out.reshape(-1)[pair_voxel[first]] = pair_label[first]
    return out
