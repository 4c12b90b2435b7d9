"""The per-sample prediction file (.npz): one record type, its writer, its validating reader.

`tpvkit predict` writes one file per sample; `tpvkit export` and `tpvkit visualize` read them.
Every key is documented in docs/outputs.md. Files are plain compressed numpy archives (no
pickles), so any numpy can read them.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tpvkit.constants import EMPTY_CLASS_NAME
from tpvkit.errors import TpvkitError
from tpvkit.task import LABEL_SPACES, TASKS, Grid, Task, task_from_dict, task_to_dict
from tpvkit.utils.io import atomic_write_bytes

FORMAT_VERSION = 1

# How `occupied` was decided (docs/outputs.md explains each):
#   "empty_class": the model predicts free space (18-class occupancy): occupied = voxels != empty
#   "lidar_points": the model has no free-space class (17-class lidarseg); a voxel counts as
#       occupied when a LiDAR return of this sample falls in it (the observed surface)
#   "all": every voxel is occupied (no rule could be applied)
#   "ground_truth": the dataset's voxel labels, occupied where at least one labelled point lies
OCCUPANCY_RULES: tuple[str, ...] = ("empty_class", "lidar_points", "all", "ground_truth")

# The frame of the voxel grid (and of `points`): "lidar" for the lidarseg models, whose grid is
# the point-cloud range around the LiDAR; "ego" for Occ3D-style occupancy, whose grid is in the
# ego frame of the key frame. cam_lidar2img always maps points of `frame` to pixels.
FRAMES: tuple[str, ...] = ("lidar", "ego")

REQUIRED_KEYS: tuple[str, ...] = (
    "voxels",
    "point_cloud_range",
    "voxel_size",
    "grid_shape",
    "frame",
    "lidar2ego",
    "class_names",
    "palette",
    "empty_label",
    "token",
    "lidar_token",
)
CAMERA_KEYS: tuple[str, ...] = ("cam_names", "cam_paths", "cam_lidar2img", "cam_image_sizes")
OPTIONAL_KEYS: tuple[str, ...] = (
    "format_version",
    "occupied",
    "occupancy_rule",
    "points",
    "point_labels",
    "gt_point_labels",
    "gt_voxels",
    "voxel_confidence",
    "gt_mask_camera",
    "gt_mask_lidar",
    "scene_token",
    "timestamp",
    "task",
    *CAMERA_KEYS,
)


def safe_file_stem(token: str) -> str:
    """A file name stem for a sample token: letters, digits and "-_." kept, the rest "_"."""
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in token)
    return stem or "sample"


def task_of_record(class_names: tuple[str, ...], grid: Grid) -> Task | None:
    """The known task whose label space and grid frame a file without a task record holds (a
    tpvkit 0.2 file, or a hand-made one), on the file's grid; None when none matches. Applied
    once, at load."""
    for task in TASKS.values():
        if task.label_space.class_names == class_names and task.grid_frame == grid.frame:
            return task.with_grid(grid)
    return None


def default_palette(class_names: tuple[str, ...]) -> np.ndarray:
    """(C, 3) uint8 colours of `class_names`, by name, from the known label spaces."""
    by_name = {
        name: colour
        for space in LABEL_SPACES.values()
        for name, colour in zip(space.class_names, space.palette, strict=True)
    }
    missing = [n for n in class_names if n not in by_name]
    if missing:
        raise TpvkitError(f"no palette colour for classes {missing}")
    return np.array([by_name[n] for n in class_names], dtype=np.uint8)


@dataclass
class Prediction:
    """One sample's semantic voxels (and points) in the grid's frame (`frame`: LiDAR or ego),
    with all geometry needed to place them in space and on the camera images."""

    voxels: np.ndarray  # uint8 (X, Y, Z) class id per voxel, indexed [x, y, z]
    occupied: np.ndarray  # bool (X, Y, Z) voxels that hold matter (see OCCUPANCY_RULES)
    point_cloud_range: np.ndarray  # float64 (6,) x/y/z min, x/y/z max, metres, `frame`
    voxel_size: np.ndarray  # float64 (3,) metres; centre of cell i = min + (i + 0.5) * size
    lidar2ego: np.ndarray  # float64 (4, 4) LiDAR frame -> ego frame
    class_names: tuple[str, ...]  # (C,)
    palette: np.ndarray  # uint8 (C, 3)
    empty_label: int  # class id of free space, -1 when the model has none
    token: str  # sample token
    lidar_token: str  # LIDAR_TOP sample_data token
    occupancy_rule: str = "empty_class"
    frame: str = "lidar"  # see FRAMES
    points: np.ndarray | None = None  # float32 (N, 3) LiDAR-frame xyz
    point_labels: np.ndarray | None = None  # uint8 (N,) predicted class per point
    gt_point_labels: np.ndarray | None = None  # uint8 (N,) ground truth per point
    gt_voxels: np.ndarray | None = None  # uint8 (X, Y, Z) majority vote of labelled points, 0 none
    voxel_confidence: np.ndarray | None = None  # float16 (X, Y, Z) softmax probability of argmax
    # Dense occupancy ground truth (Occ3D): voxels seen by a camera / crossed by a LiDAR ray
    gt_mask_camera: np.ndarray | None = None  # bool (X, Y, Z)
    gt_mask_lidar: np.ndarray | None = None  # bool (X, Y, Z)
    cam_names: tuple[str, ...] = ()  # (N_cam,) e.g. CAM_FRONT
    cam_paths: tuple[str, ...] = ()  # (N_cam,) absolute image paths
    cam_lidar2img: np.ndarray | None = None  # float64 (N_cam, 4, 4) for the original image size
    cam_image_sizes: np.ndarray | None = None  # int64 (N_cam, 2) original (H, W)
    scene_token: str = ""
    timestamp: int = -1  # microseconds, -1 unknown
    # What made the file (label space, grid): tpvkit.task; None for a file that records none and
    # whose classes and frame match no known task (task_of_record).
    task: Task | None = None
    source: str = ""  # where this record came from (a file path), for error messages

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.voxels.shape)  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_cameras(self) -> bool:
        return len(self.cam_names) > 0

    def class_id(self, name: str) -> int:
        if name not in self.class_names:
            raise TpvkitError(
                f"unknown class name '{name}'; valid names: {', '.join(self.class_names)}"
            )
        return self.class_names.index(name)

    def default_excluded(self) -> tuple[str, ...]:
        """The classes hidden unless asked for: the label space's ignored class (lidarseg's
        "noise") and free space. Occ3D's class 0 "others" is a real class and is shown."""
        if self.task is not None:
            return self.task.label_space.hidden_by_default()
        return tuple(n for n in ("noise", EMPTY_CLASS_NAME) if n in self.class_names)


def voxel_centers(
    index: np.ndarray, point_cloud_range: np.ndarray, voxel_size: np.ndarray
) -> np.ndarray:
    """(..., 3) integer voxel indices [x, y, z] -> (..., 3) float64 centres in metres.

    The one formula for where a voxel is: cell i spans [min + i * size, min + (i + 1) * size).
    """
    pc_min = np.asarray(point_cloud_range, dtype=np.float64)[:3]
    return pc_min + (np.asarray(index, dtype=np.float64) + 0.5) * np.asarray(voxel_size, float)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 rigid/projective transform to (N, 3) points -> (N, 3) (no division)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    return np.asarray(points, dtype=np.float64) @ matrix[:3, :3].T + matrix[:3, 3]


def occupancy_from_rule(
    voxels: np.ndarray,
    rule: str,
    empty_label: int,
    points: np.ndarray | None,
    point_cloud_range: np.ndarray,
    voxel_size: np.ndarray,
) -> np.ndarray:
    """bool (X, Y, Z) occupied voxels under `rule` (see OCCUPANCY_RULES)."""
    if rule == "empty_class":
        if empty_label < 0:
            raise TpvkitError("occupancy rule 'empty_class' needs empty_label >= 0")
        return voxels != empty_label
    if rule == "all":
        return np.ones(voxels.shape, dtype=bool)
    if rule == "ground_truth":
        return voxels != 0
    if rule == "lidar_points":
        occupied = np.zeros(voxels.shape, dtype=bool)
        if points is None or len(points) == 0:
            return occupied
        idx = point_voxel_index(points, point_cloud_range, voxel_size, voxels.shape)
        inside = idx[:, 0] >= 0
        occupied[tuple(idx[inside].T)] = True
        return occupied
    raise TpvkitError(f"unknown occupancy rule '{rule}': use one of {', '.join(OCCUPANCY_RULES)}")


def point_voxel_index(
    points: np.ndarray,
    point_cloud_range: np.ndarray,
    voxel_size: np.ndarray,
    grid_shape: tuple[int, ...],
) -> np.ndarray:
    """(N, 3) xyz -> (N, 3) int64 voxel index; rows of -1 for points outside the grid."""
    from tpvkit.data.geometry import voxel_index_of

    pc_min = np.asarray(point_cloud_range, dtype=np.float64)[:3]
    idx, inside = voxel_index_of(np.asarray(points)[:, :3], pc_min, voxel_size, grid_shape)
    idx[~inside] = -1
    return idx


# ---------------------------------------------------------------------------------------------
# Writing


def prediction_to_arrays(pred: Prediction) -> dict[str, np.ndarray]:
    """The npz members of a record (strings as numpy unicode arrays, so no pickle is needed)."""
    validate_prediction(pred)
    arrays: dict[str, np.ndarray] = {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "voxels": np.ascontiguousarray(pred.voxels, dtype=np.uint8),
        "occupied": np.ascontiguousarray(pred.occupied, dtype=bool),
        "occupancy_rule": np.array(pred.occupancy_rule),
        "point_cloud_range": np.asarray(pred.point_cloud_range, dtype=np.float64),
        "voxel_size": np.asarray(pred.voxel_size, dtype=np.float64),
        "grid_shape": np.array(pred.grid_shape, dtype=np.int64),
        "frame": np.array(pred.frame),
        "lidar2ego": np.asarray(pred.lidar2ego, dtype=np.float64),
        "class_names": np.array(pred.class_names),
        "palette": np.asarray(pred.palette, dtype=np.uint8),
        "empty_label": np.array(pred.empty_label, dtype=np.int64),
        "token": np.array(pred.token),
        "lidar_token": np.array(pred.lidar_token),
        "scene_token": np.array(pred.scene_token),
        "timestamp": np.array(pred.timestamp, dtype=np.int64),
    }
    if pred.task is not None:
        arrays["task"] = np.array(json.dumps(task_to_dict(pred.task), sort_keys=True))
    if pred.points is not None:
        arrays["points"] = np.asarray(pred.points, dtype=np.float32)
    for key in ("point_labels", "gt_point_labels", "gt_voxels"):
        value = getattr(pred, key)
        if value is not None:
            arrays[key] = np.asarray(value, dtype=np.uint8)
    for key in ("gt_mask_camera", "gt_mask_lidar"):
        value = getattr(pred, key)
        if value is not None:
            arrays[key] = np.asarray(value, dtype=bool)
    if pred.voxel_confidence is not None:
        arrays["voxel_confidence"] = np.asarray(pred.voxel_confidence, dtype=np.float16)
    if pred.has_cameras:
        arrays["cam_names"] = np.array(pred.cam_names)
        arrays["cam_paths"] = np.array(pred.cam_paths)
        arrays["cam_lidar2img"] = np.asarray(pred.cam_lidar2img, dtype=np.float64)
        arrays["cam_image_sizes"] = np.asarray(pred.cam_image_sizes, dtype=np.int64)
    return arrays


def save_prediction(pred: Prediction, path: str | Path) -> Path:
    """Write `pred` as a compressed .npz, atomically (a reader never sees half a file)."""
    path = Path(path)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **prediction_to_arrays(pred))
    atomic_write_bytes(path, buffer.getvalue())
    return path


# ---------------------------------------------------------------------------------------------
# Reading and validation


def _str(value: np.ndarray) -> str:
    return str(value.item()) if value.ndim == 0 else str(value)


def npz_files_in(folder: str | Path) -> list[Path]:
    """The .npz files a folder stands for: its own *.npz (prediction files), else the
    labels.npz of an Occ3D ground-truth folder (GTDIR/<scene>/<token>/ or one scene of it), in
    key-frame order when GTDIR/occ_gt.json records the timestamps (else by path)."""
    folder = Path(folder)
    found = sorted(folder.glob("*.npz"))
    if found:
        return found
    found = sorted(folder.glob("*/labels.npz")) or sorted(folder.glob("*/*/labels.npz"))
    if not found:
        return []
    from tpvkit.data.occ3d import GRID_FILE

    for meta in (folder / GRID_FILE, folder.parent / GRID_FILE):
        if meta.is_file():
            try:
                stamps = json.loads(meta.read_text(encoding="utf-8")).get("timestamps", {})
            except ValueError:
                break
            return sorted(
                found, key=lambda p: (p.parent.parent.name, stamps.get(p.parent.name, -1), str(p))
            )
    return found


def load_prediction(path: str | Path) -> Prediction:
    """Read and validate a prediction file; every problem is a TpvkitError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise TpvkitError(f"prediction file not found: {path} (make one with `tpvkit predict`)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise TpvkitError(f"{path} is not a readable .npz prediction file: {err}") from err
    if "voxels" not in data and all(k in data for k in ("semantics", "mask_camera")):
        return prediction_from_occ3d_labels(data, path)
    return prediction_from_arrays(data, source=str(path))


def has_lidar_calibration(pred: Prediction) -> bool:
    """False for a record made from an Occ3D labels.npz: it knows no LiDAR -> ego transform."""
    return bool(np.all(np.isfinite(pred.lidar2ego)))


def is_labels_record(pred: Prediction) -> bool:
    """Whether the record is an Occ3D labels.npz (prediction_from_occ3d_labels): its voxels are
    the ground truth itself, so pictures show them once, titled "labels"."""
    return pred.gt_voxels is not None and pred.gt_voxels is pred.voxels


def prediction_from_occ3d_labels(data: dict[str, np.ndarray], path: str | Path) -> Prediction:
    """A record of an Occ3D-format labels.npz (downloaded, synthetic or made by `tpvkit prepare
    occupancy`, any grid): the semantics as both the voxels and the ground truth, with both
    masks, in the ego frame; the grid from GTDIR/occ_gt.json or, for (200, 200, 16), Occ3D's.
    Such a file carries no LiDAR calibration (lidar2ego is NaN: only the ego frame exists)."""
    from tpvkit.data.occ3d import LABEL_KEYS, check_labels, labels_grid

    path = Path(path)
    missing = [k for k in LABEL_KEYS if k not in data]
    if missing:
        raise TpvkitError(f"Occ3D labels {path} lacks {', '.join(missing)}")
    labels = check_labels(
        *(np.asarray(data[k]) for k in LABEL_KEYS), where=f"Occ3D labels {path}", shape=None
    )
    grid = labels_grid(path, labels.semantics.shape)
    lo = np.asarray(grid.range_min, dtype=np.float64)
    size = np.full(3, grid.voxel_size, dtype=np.float64)
    pc_range = np.concatenate([lo, lo + size * np.asarray(grid.shape)])
    occ3d_task = TASKS["occ3d"]
    task = occ3d_task.with_grid(
        Grid("ego", tuple(float(v) for v in pc_range), grid.shape, tuple(float(v) for v in size))
    )
    space = task.label_space
    sem = labels.semantics
    pred = Prediction(
        voxels=sem,
        occupied=sem != space.free_index,
        point_cloud_range=pc_range,
        voxel_size=size,
        lidar2ego=np.full((4, 4), np.nan),
        class_names=space.class_names,
        palette=np.asarray(space.palette, dtype=np.uint8),
        empty_label=int(space.free_index),  # type: ignore[arg-type]
        token=path.parent.name,
        lidar_token="",
        occupancy_rule="empty_class",
        frame="ego",
        gt_voxels=sem,
        gt_mask_camera=labels.mask_camera,
        gt_mask_lidar=labels.mask_lidar,
        scene_token=path.parent.parent.name,
        timestamp=grid.timestamp,
        source=str(path),
        task=task,
    )
    validate_prediction(pred)
    return pred


def _bool_or_none(value: np.ndarray | None) -> np.ndarray | None:
    return None if value is None else np.asarray(value, dtype=bool)


def prediction_from_arrays(data: dict[str, np.ndarray], source: str = "<arrays>") -> Prediction:
    """Build and validate a record from npz members (the inverse of prediction_to_arrays)."""
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise TpvkitError(
            f"{source} lacks the keys {', '.join(missing)}: it is not a tpvkit prediction file "
            "(write one with `tpvkit predict`; docs/outputs.md lists the keys)"
        )
    cams_present = [k for k in CAMERA_KEYS if k in data]
    if cams_present and len(cams_present) != len(CAMERA_KEYS):
        absent = [k for k in CAMERA_KEYS if k not in data]
        raise TpvkitError(f"{source}: camera keys must come together; missing {', '.join(absent)}")
    version = int(data["format_version"]) if "format_version" in data else FORMAT_VERSION
    if version > FORMAT_VERSION:
        raise TpvkitError(
            f"{source} has format_version {version}; this tpvkit reads up to {FORMAT_VERSION} "
            "(upgrade tpvkit)"
        )
    try:
        voxels = np.asarray(data["voxels"])
        empty_label = int(data["empty_label"])
        points = np.asarray(data["points"], dtype=np.float32) if "points" in data else None
        pc_range = np.asarray(data["point_cloud_range"], dtype=np.float64).reshape(-1)
        voxel_size = np.asarray(data["voxel_size"], dtype=np.float64).reshape(-1)
        rule = _str(data["occupancy_rule"]) if "occupancy_rule" in data else ""
        if not rule:  # hand-made files: the most sensible rule for what they hold
            rule = "empty_class" if empty_label >= 0 else "all"
        if "occupied" in data:
            occupied = np.asarray(data["occupied"], dtype=bool)
        else:
            occupied = occupancy_from_rule(voxels, rule, empty_label, points, pc_range, voxel_size)
        class_names = tuple(str(n) for n in np.asarray(data["class_names"]).reshape(-1))
        frame = _str(data["frame"])
        if "task" in data:
            try:
                record = json.loads(_str(data["task"]))
            except json.JSONDecodeError as err:
                raise TpvkitError(f"{source}: its task record is not JSON ({err})") from err
            task = task_from_dict(record, source)
        else:
            grid = Grid(
                frame,
                tuple(float(v) for v in pc_range),
                tuple(int(v) for v in voxels.shape),  # type: ignore[arg-type]
                tuple(float(v) for v in voxel_size),  # type: ignore[arg-type]
            )
            task = task_of_record(class_names, grid)
        pred = Prediction(
            voxels=voxels,
            occupied=occupied,
            point_cloud_range=pc_range,
            voxel_size=voxel_size,
            lidar2ego=np.asarray(data["lidar2ego"], dtype=np.float64),
            class_names=class_names,
            palette=np.asarray(data["palette"]),
            empty_label=empty_label,
            token=_str(data["token"]),
            lidar_token=_str(data["lidar_token"]),
            occupancy_rule=rule,
            frame=frame,
            points=points,
            point_labels=data.get("point_labels"),
            gt_point_labels=data.get("gt_point_labels"),
            gt_voxels=data.get("gt_voxels"),
            voxel_confidence=data.get("voxel_confidence"),
            gt_mask_camera=_bool_or_none(data.get("gt_mask_camera")),
            gt_mask_lidar=_bool_or_none(data.get("gt_mask_lidar")),
            cam_names=tuple(str(n) for n in data.get("cam_names", np.array([])).reshape(-1)),
            cam_paths=tuple(str(n) for n in data.get("cam_paths", np.array([])).reshape(-1)),
            cam_lidar2img=data.get("cam_lidar2img"),
            cam_image_sizes=data.get("cam_image_sizes"),
            scene_token=_str(data["scene_token"]) if "scene_token" in data else "",
            timestamp=int(data["timestamp"]) if "timestamp" in data else -1,
            task=task,
            source=source,
        )
    except (TypeError, ValueError) as err:
        raise TpvkitError(f"{source}: a key has the wrong type or shape: {err}") from err
    grid = np.asarray(data["grid_shape"]).reshape(-1).tolist()
    if [int(g) for g in grid] != list(voxels.shape):
        raise TpvkitError(f"{source}: grid_shape {grid} differs from voxels.shape {voxels.shape}")
    validate_prediction(pred)
    return pred


def _check(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise TpvkitError(f"{where}: {message}")


def validate_prediction(pred: Prediction) -> None:
    """Shapes, dtypes and value ranges of a record; raises TpvkitError naming the key."""
    src = pred.source or "prediction"
    _check(pred.voxels.ndim == 3, src, f"voxels must be (X, Y, Z), got shape {pred.voxels.shape}")
    _check(
        np.issubdtype(pred.voxels.dtype, np.integer),
        src,
        f"voxels must hold integer class ids, got dtype {pred.voxels.dtype}",
    )
    grid = pred.voxels.shape
    _check(pred.occupied.shape == grid, src, f"occupied must have shape {grid}")
    _check(pred.point_cloud_range.shape == (6,), src, "point_cloud_range must hold 6 numbers")
    _check(pred.voxel_size.shape == (3,), src, "voxel_size must hold 3 numbers")
    _check(bool(np.all(pred.voxel_size > 0)), src, "voxel_size must be positive")
    _check(pred.lidar2ego.shape == (4, 4), src, "lidar2ego must be a 4x4 matrix")
    _check(pred.frame in FRAMES, src, f"frame must be one of {FRAMES}, got '{pred.frame}'")
    num_classes = len(pred.class_names)
    _check(num_classes > 0, src, "class_names is empty")
    _check(pred.palette.shape == (num_classes, 3), src, f"palette must be ({num_classes}, 3)")
    _check(-1 <= pred.empty_label < num_classes, src, f"empty_label {pred.empty_label} invalid")
    _check(pred.occupancy_rule in OCCUPANCY_RULES, src, f"occupancy_rule '{pred.occupancy_rule}'")
    if pred.task is not None:
        space = pred.task.label_space
        _check(
            space.class_names == tuple(pred.class_names),
            src,
            f"class_names differ from those of its task's label space {space.name}",
        )
        _check(pred.frame == pred.task.grid_frame, src, f"frame differs from task {pred.task.name}")
        if pred.task.grid is not None and pred.voxel_size.shape == (3,):
            _check(
                pred.task.grid.shape == grid
                and np.allclose(pred.task.grid.range, pred.point_cloud_range, atol=1e-6)
                and np.allclose(pred.task.grid.voxel_size, pred.voxel_size, atol=1e-6),
                src,
                f"the grid of its task ({pred.task.grid.describe()}) differs from its voxels' "
                "(point_cloud_range, voxel_size, grid_shape)",
            )
    if pred.voxels.size:
        _check(
            int(pred.voxels.max()) < num_classes and int(pred.voxels.min()) >= 0,
            src,
            f"voxels holds class ids outside 0..{num_classes - 1}",
        )
    if pred.gt_voxels is not None:
        _check(pred.gt_voxels.shape == grid, src, f"gt_voxels must have shape {grid}")
    for key in ("gt_mask_camera", "gt_mask_lidar"):
        mask = getattr(pred, key)
        if mask is not None:
            _check(mask.shape == grid, src, f"{key} must have shape {grid}")
    if pred.voxel_confidence is not None:
        _check(pred.voxel_confidence.shape == grid, src, f"voxel_confidence must be {grid}")
    n_points = None
    if pred.points is not None:
        _check(
            pred.points.ndim == 2 and pred.points.shape[1] == 3,
            src,
            f"points must be (N, 3), got {pred.points.shape}",
        )
        n_points = pred.points.shape[0]
    for key in ("point_labels", "gt_point_labels"):
        labels = getattr(pred, key)
        if labels is None:
            continue
        _check(n_points is not None, src, f"{key} needs points")
        _check(labels.shape == (n_points,), src, f"{key} must be ({n_points},)")
        if labels.size:
            _check(int(labels.max()) < num_classes, src, f"{key} holds ids >= {num_classes}")
    if pred.has_cameras:
        n_cam = len(pred.cam_names)
        _check(len(pred.cam_paths) == n_cam, src, "cam_paths must have one path per camera")
        _check(
            pred.cam_lidar2img is not None and pred.cam_lidar2img.shape == (n_cam, 4, 4),
            src,
            f"cam_lidar2img must be ({n_cam}, 4, 4)",
        )
        _check(
            pred.cam_image_sizes is not None and pred.cam_image_sizes.shape == (n_cam, 2),
            src,
            f"cam_image_sizes must be ({n_cam}, 2)",
        )
