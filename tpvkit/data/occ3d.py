"""Occ3D-nuScenes dense occupancy ground truth: its grid, reading and validating labels.npz,
linking samples to their labels, the ego-frame projection and the RayIoU ray origins.

Layout as distributed (CVPR2023-3D-Occupancy-Prediction README, nuscenes_occ.py):
`gts/<scene_name>/<sample_token>/labels.npz` with `semantics` uint8 (200, 200, 16) in 0..17
(17 = free, 0..16 the nuScenes-lidarseg challenge classes), `mask_lidar` and `mask_camera`
uint8 0/1 of the same shape, in the ego frame of the key frame (the LiDAR's ego pose),
range [-40, -40, -1, 40, 40, 5.4] m, 0.4 m voxels, indexed [x, y, z] (the challenge's
occ_metrics.py places voxel i of axis 0 at x = -40 + 0.4 (i + 0.5)). docs/occupancy.md.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tpvkit.constants import (
    OCC3D_CLASS_NAMES,
    OCC3D_FREE,
    OCC3D_GRID,
    OCC3D_NUM_CLASSES,
    OCC3D_RANGE,
    OCC3D_VOXEL_SIZE,
)
from tpvkit.data import geometry
from tpvkit.errors import TpvkitError
from tpvkit.task import SUPERVISION_MASKS
from tpvkit.utils.io import atomic_write_bytes

# The grid and class facts live in tpvkit.constants (the label space: tpvkit.task); re-exported.
__all__ = [
    "OCC3D_CLASS_NAMES",
    "OCC3D_FREE",
    "OCC3D_GRID",
    "OCC3D_NUM_CLASSES",
    "OCC3D_RANGE",
    "OCC3D_VOXEL_SIZE",
]
LABELS_FILE = "labels.npz"
LABEL_KEYS: tuple[str, ...] = ("semantics", "mask_lidar", "mask_camera")
INFO_FIELD = "occ3d_path"  # the sample record's link to its labels.npz (docs/data.md)
# GTDIR/occ_gt.json, written by `tpvkit prepare occupancy`: the grid the labels were made on,
# the options, and per scene the key frames' timestamps (docs/occupancy.md)
GRID_FILE = "occ_gt.json"

# RayIoU origin rules of SparseOcc (loaders/ego_pose_dataset.py)
RAY_ORIGIN_LIMIT = 39.0  # |x| and |y| of an origin strictly below this (metres, current ego)
MAX_RAY_ORIGINS = 8


@dataclass
class Occ3DLabels:
    """One key frame's dense ground truth, indexed [x, y, z]."""

    semantics: np.ndarray  # uint8 (X, Y, Z) 0..17
    mask_lidar: np.ndarray  # bool (X, Y, Z)
    mask_camera: np.ndarray  # bool (X, Y, Z)


def label_relpath(scene_name: str, sample_token: str) -> str:
    """`<scene_name>/<sample_token>/labels.npz`, relative to the gts folder."""
    return f"{scene_name}/{sample_token}/{LABELS_FILE}"


def check_labels(
    semantics: np.ndarray,
    mask_lidar: np.ndarray,
    mask_camera: np.ndarray,
    where: str,
    shape: tuple[int, int, int] | None = OCC3D_GRID,
) -> Occ3DLabels:
    """Validate the three arrays of one frame (shape, dtype, value range) -> Occ3DLabels.

    `shape` None accepts any grid (labels generated for another range or voxel size) as long
    as the three arrays are 3-D and of one shape.
    """
    arrays = {"semantics": semantics, "mask_lidar": mask_lidar, "mask_camera": mask_camera}
    for key, arr in arrays.items():
        if shape is None:
            if arr.ndim != 3 or arr.shape != semantics.shape:
                raise TpvkitError(
                    f"{where}: '{key}' has shape {arr.shape}; the three arrays must be 3-D "
                    f"(x, y, z) and of one shape (semantics: {semantics.shape})"
                )
        elif arr.shape != shape:
            raise TpvkitError(
                f"{where}: '{key}' has shape {arr.shape}, Occ3D-nuScenes labels are "
                f"{shape} (x, y, z): this is not an Occ3D-nuScenes labels.npz"
            )
    if semantics.dtype != np.uint8:
        raise TpvkitError(
            f"{where}: 'semantics' is {semantics.dtype}, Occ3D stores uint8 class ids 0..17"
        )
    top = int(semantics.max())
    if top > OCC3D_FREE:
        raise TpvkitError(
            f"{where}: 'semantics' holds class {top}; Occ3D-nuScenes classes are 0..17 "
            "(17 = free): re-download or regenerate the file"
        )
    masks = {}
    for key in ("mask_lidar", "mask_camera"):
        arr = arrays[key]
        if arr.dtype != np.bool_ and arr.dtype != np.uint8:
            raise TpvkitError(f"{where}: '{key}' is {arr.dtype}, Occ3D stores uint8 0/1")
        if arr.dtype == np.uint8 and int(arr.max()) > 1:
            raise TpvkitError(f"{where}: '{key}' holds {int(arr.max())}; masks are 0/1")
        masks[key] = arr.astype(bool)
    return Occ3DLabels(semantics, masks["mask_lidar"], masks["mask_camera"])


def read_labels(path: str | Path, shape: tuple[int, int, int] | None = OCC3D_GRID) -> Occ3DLabels:
    """Read and validate one `labels.npz`; every problem is a TpvkitError naming the file.
    `shape` None accepts any grid (check_labels)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in LABEL_KEYS if k not in data.files]
            if missing:
                raise TpvkitError(
                    f"Occ3D labels {path} lacks {', '.join(missing)} (holds "
                    f"{', '.join(data.files) or 'nothing'}): expected semantics, mask_lidar, "
                    "mask_camera"
                )
            arrays = [data[k] for k in LABEL_KEYS]
    except FileNotFoundError:
        raise TpvkitError(
            f"Occ3D labels {path} are missing: give the Occ3D gts folder that holds "
            "<scene_name>/<sample_token>/labels.npz for every sample"
        ) from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise TpvkitError(f"Occ3D labels {path} cannot be read ({err}): re-extract it") from err
    return check_labels(*arrays, where=f"Occ3D labels {path}", shape=shape)


def write_labels(
    path: str | Path, labels: Occ3DLabels, shape: tuple[int, int, int] | None = OCC3D_GRID
) -> None:
    """Write one labels.npz in the distributed format (uint8 arrays), atomically (`shape`
    None: any grid, check_labels)."""
    check_labels(
        labels.semantics, labels.mask_lidar, labels.mask_camera, where=str(path), shape=shape
    )
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        semantics=labels.semantics.astype(np.uint8),
        mask_lidar=labels.mask_lidar.astype(np.uint8),
        mask_camera=labels.mask_camera.astype(np.uint8),
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


@dataclass(frozen=True)
class LabelsGrid:
    """Where the voxels of a labels.npz are: its grid and, when known, the frame's timestamp."""

    range_min: tuple[float, float, float]
    voxel_size: float
    shape: tuple[int, int, int]
    timestamp: int = -1  # microseconds, -1 unknown


def labels_grid(path: str | Path, shape: tuple[int, int, int]) -> LabelsGrid:
    """The grid of `GTDIR/<scene>/<token>/labels.npz` of the given shape: from GTDIR's
    occ_gt.json when there is one (labels of any grid made by `prepare occupancy`), else
    Occ3D's grid for a (200, 200, 16) file; a TpvkitError otherwise."""
    path = Path(path)
    meta_path = path.parent.parent.parent / GRID_FILE
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            grid = LabelsGrid(
                tuple(float(v) for v in meta["range_min"]),  # type: ignore[arg-type]
                float(meta["voxel_size"]),
                tuple(int(v) for v in meta["shape"]),  # type: ignore[arg-type]
                int(meta.get("timestamps", {}).get(path.parent.name, -1)),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise TpvkitError(f"{meta_path} is not a readable grid description ({err})") from err
        if grid.shape != tuple(shape):
            raise TpvkitError(
                f"{path} holds a {shape} grid but {meta_path} describes {grid.shape}: the file "
                "does not belong to this folder"
            )
        return grid
    if tuple(shape) == OCC3D_GRID:
        return LabelsGrid(
            (OCC3D_RANGE[0], OCC3D_RANGE[1], OCC3D_RANGE[2]), OCC3D_VOXEL_SIZE, OCC3D_GRID
        )
    raise TpvkitError(
        f"{path} holds a {shape} grid, not Occ3D's {OCC3D_GRID}, and no {GRID_FILE} is beside "
        "its scene folders to say where it lies: keep the GTDIR layout "
        "<GTDIR>/<scene>/<token>/labels.npz that `tpvkit prepare occupancy` wrote"
    )


# ---------------------------------------------------------------------------------------------
# Linking samples to their labels (`tpvkit prepare nuscenes --occ3d GTDIR`)


def link_samples(
    samples: Sequence[dict[str, Any]],
    gt_dir: str | Path,
    dataroot: str | Path | None = None,
    validate_contents: bool = True,
) -> None:
    """Set `occ3d_path` on every sample record (in place) after checking the folder.

    The path is relative to `dataroot` when gt_dir lies inside it (the info file then moves
    with its dataroot), absolute otherwise. Missing files are counted and the first five named;
    with `validate_contents` every file is read and checked (shape, dtype, range).
    """
    gt_dir = Path(gt_dir).resolve()
    if not gt_dir.is_dir():
        raise TpvkitError(
            f"--occ3d {gt_dir} is not a folder: give the Occ3D-nuScenes 'gts' folder that holds "
            "<scene_name>/<sample_token>/labels.npz"
        )
    root = Path(dataroot).resolve() if dataroot else None
    paths: list[Path] = []
    for sample in samples:
        scene = sample.get("scene_name")
        if not scene:
            raise TpvkitError(
                f"sample {sample.get('token')} has no scene_name: Occ3D labels are found by "
                "scene name; rebuild the info file from the dataroot's tables"
            )
        paths.append(gt_dir / label_relpath(scene, sample["token"]))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise TpvkitError(
            f"--occ3d {gt_dir}: {len(missing)} of {len(paths)} samples have no labels.npz, "
            f"e.g. {', '.join(missing[:5])}: give the gts folder of this nuScenes version"
        )
    if validate_contents:
        for p in paths:
            read_labels(p)
    for sample, p in zip(samples, paths, strict=True):
        if root is not None and p.is_relative_to(root):
            sample[INFO_FIELD] = p.relative_to(root).as_posix()
        else:
            sample[INFO_FIELD] = str(p)


# ---------------------------------------------------------------------------------------------
# Frames


def lidar2ego_matrix(sample: Mapping[str, Any]) -> np.ndarray:
    """(4, 4) LiDAR -> ego of a sample record (its calibration)."""
    return geometry.pose_matrix(sample["lidar2ego_translation"], sample["lidar2ego_rotation"])


def ego2global_matrix(sample: Mapping[str, Any]) -> np.ndarray:
    """(4, 4) ego (at the LiDAR timestamp) -> global of a sample record."""
    return geometry.pose_matrix(sample["ego2global_translation"], sample["ego2global_rotation"])


def ego2img_from_lidar2img(lidar2img: np.ndarray, lidar2ego: np.ndarray) -> np.ndarray:
    """The projection of the ego-frame grid: ego -> LiDAR -> pixels, (..., 4, 4) float64.

    The one place the ego-frame lidar2img is derived (Dataset, predict, visualisation), so the
    model that "works in the frame its lidar2img maps from" sees Occ3D's ego grid.
    """
    return np.asarray(lidar2img, dtype=np.float64) @ geometry.invert_pose(lidar2ego)


def lidar_to_frame(points_xyz: np.ndarray, sample: Mapping[str, Any], frame: str) -> np.ndarray:
    """(N, 3) LiDAR-frame points -> the model's grid frame ("lidar": unchanged, "ego")."""
    if frame == "lidar":
        return points_xyz
    T = lidar2ego_matrix(sample)
    out = np.asarray(points_xyz, dtype=np.float64) @ T[:3, :3].T + T[:3, 3]
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# RayIoU origins


def ray_origins(scene_samples: Sequence[Mapping[str, Any]], index: int) -> np.ndarray:
    """(T, 3) float64 RayIoU ray origins of key frame `index` of a scene (SparseOcc's rule).

    The LiDAR position of every key frame of the scene (given in time order), expressed in
    the current frame's ego coordinates; kept when |x| < 39 and |y| < 39; when more than 8
    remain, those at round(linspace(0, n - 1, 8)) in time order. The lidar-frame offsets are
    rounded to float32 before the last transform, as in ego_pose_dataset.py.
    """
    ref = scene_samples[index]
    ref_ego_from_lidar = lidar2ego_matrix(ref)
    ref_lidar_from_global = np.linalg.inv(ego2global_matrix(ref) @ ref_ego_from_lidar)
    kept = []
    for i, other in enumerate(scene_samples):
        if i == index:
            in_ref_lidar = np.zeros(3, dtype=np.float32)
        else:
            global_from_other = ego2global_matrix(other) @ lidar2ego_matrix(other)
            in_ref_lidar = (ref_lidar_from_global @ global_from_other)[:3, 3].astype(np.float32)
        origin = ref_ego_from_lidar[:3] @ np.append(in_ref_lidar.astype(np.float64), 1.0)
        if abs(origin[0]) < RAY_ORIGIN_LIMIT and abs(origin[1]) < RAY_ORIGIN_LIMIT:
            kept.append(origin)
    if len(kept) > MAX_RAY_ORIGINS:
        pick = np.round(np.linspace(0, len(kept) - 1, MAX_RAY_ORIGINS)).astype(np.int64)
        kept = [kept[i] for i in pick]
    return np.stack(kept) if kept else np.zeros((0, 3))


def scene_ray_origins(samples: Sequence[Mapping[str, Any]]) -> list[np.ndarray]:
    """Ray origins of every sample of an info file (scenes grouped by scene_name, the info
    file's order taken as time order within a scene, as SparseOcc takes its pkl's order)."""
    by_scene: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        scene = str(sample.get("scene_name") or sample.get("scene_token"))
        by_scene.setdefault(scene, []).append(i)
    out: list[np.ndarray] = [np.zeros((0, 3))] * len(samples)
    for indices in by_scene.values():
        scene = [samples[i] for i in indices]
        for j, i in enumerate(indices):
            out[i] = ray_origins(scene, j)
    return out


def dataset_targets(
    sample: Mapping[str, Any], info_set: Any, origins: np.ndarray
) -> dict[str, Any]:
    """The Dataset's dense-occupancy entries of one sample that links Occ3D labels:
    occ_semantics int64 (X, Y, Z) 0..17, occ_mask_camera / occ_mask_lidar bool (X, Y, Z),
    ray_origins float64 (T, 3) (ego frame, RayIoU)."""
    import torch

    labels = read_labels(info_set.resolve(sample[INFO_FIELD]))
    return {
        "occ_semantics": torch.from_numpy(labels.semantics.astype(np.int64)),
        "occ_mask_camera": torch.from_numpy(labels.mask_camera),
        "occ_mask_lidar": torch.from_numpy(labels.mask_lidar),
        "ray_origins": torch.from_numpy(np.asarray(origins, dtype=np.float64)),
    }


def flip_targets(targets: Mapping[str, Any], flip: tuple[int, int]) -> dict[str, Any]:
    """dataset_targets of the grid mirrored in x (flip[0] == -1) and/or y (flip[1] == -1).

    The Occ3D grid is symmetric about the ego origin (voxel i of 200 has its centre at
    -40 + 0.4 (i + 0.5), voxel 199 - i at minus that), so mirroring x reverses axis 0."""
    import torch

    dims = [axis for axis, s in enumerate(flip) if s < 0]
    out = dict(targets)
    for key in ("occ_semantics", "occ_mask_camera", "occ_mask_lidar"):
        if key in out:
            out[key] = torch.flip(out[key], dims) if dims else out[key]
    if "ray_origins" in out:
        origins = out["ray_origins"].clone()
        origins[:, 0] *= flip[0]
        origins[:, 1] *= flip[1]
        out["ray_origins"] = origins
    return out


def supervision_mask(mask_camera: Any, mask_lidar: Any, which: str) -> Any:
    """The supervised voxels of one protocol from the two visibility masks (numpy arrays or
    torch tensors, bool), or None for "all"."""
    if which == "all":
        return None
    if which == "camera":
        return mask_camera
    if which == "lidar":
        return mask_lidar
    if which == "camera_lidar":
        return mask_camera | mask_lidar
    raise TpvkitError(
        f"train.occ_loss_mask: '{which}' is not one of {', '.join(SUPERVISION_MASKS)}"
    )


def label_frequencies(
    info_set: Any, mask: str, num_classes: int = OCC3D_NUM_CLASSES
) -> list[float]:
    """Fraction of each class among the voxels a loss sees (mask: "camera", "lidar",
    "camera_lidar" or "all"), over every sample of `info_set` that links Occ3D labels."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for sample in info_set.samples:
        if not sample.get(INFO_FIELD):
            continue
        labels = read_labels(info_set.resolve(sample[INFO_FIELD]))
        keep = supervision_mask(labels.mask_camera, labels.mask_lidar, mask)
        seen = labels.semantics if keep is None else labels.semantics[keep]
        counts += np.bincount(seen.ravel(), minlength=num_classes)[:num_classes]
    if counts.sum() == 0:
        raise TpvkitError(
            "no Occ3D labels to count class frequencies from: link labels to the training info "
            "file (`tpvkit prepare nuscenes --occ3d GTDIR`)"
        )
    return [float(c) for c in counts / counts.sum()]


def collate_targets(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch the entries of dataset_targets (ray_origins stays a list: T differs per frame)."""
    import torch

    have = [("occ_semantics" in s) for s in samples]
    if not any(have):
        return {}
    if not all(have):
        raise TpvkitError(
            "a batch mixes samples with and without Occ3D labels: link labels to every "
            "sample of the info file (`tpvkit prepare nuscenes --occ3d GTDIR`)"
        )
    return {
        "occ_semantics": torch.stack([s["occ_semantics"] for s in samples]).long(),
        "occ_mask_camera": torch.stack([s["occ_mask_camera"] for s in samples]),
        "occ_mask_lidar": torch.stack([s["occ_mask_lidar"] for s in samples]),
        "ray_origins": [s["ray_origins"] for s in samples],
    }
