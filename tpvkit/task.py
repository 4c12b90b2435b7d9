"""What a model predicts, stated once: label spaces (class names, the free and ignored index),
tasks (a label space on a voxel grid in a frame, and what ground truth scores it) and the small
explicit tables the user picks from by name (`task:` in the config).

A Task is written into every checkpoint, prediction file and ONNX file (`task_to_dict`) and read
back with `task_from_dict`; nothing re-derives the task from a class count or a frame. The rule
that names the task of a config that does not state it lives in tpvkit.config (infer_task_name)
and is applied once, where a config is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tpvkit.constants import (
    CLASS_NAMES,
    IGNORE_INDEX,
    OCC3D_CLASS_NAMES,
    OCC3D_FREE,
    OCC3D_GRID,
    OCC3D_RANGE,
    OCC3D_VOXEL_SIZE,
    OCCUPANCY_CLASS_NAMES,
    PALETTE,
)
from tpvkit.errors import TpvkitError

# The frames a grid (and the points and projection matrices that go with it) may be in:
# "lidar": LIDAR_TOP of the key frame; "ego": the ego frame of the key frame (the LiDAR's pose).
FRAMES: tuple[str, ...] = ("lidar", "ego")

# How ground truth scores a task: "points" (per-LiDAR-point labels, nuScenes-lidarseg) or
# "dense" (one label per voxel of the grid, with camera/LiDAR visibility masks: Occ3D).
SCORED_ON: tuple[str, ...] = ("points", "dense")

# The voxels a dense loss may supervise (train.occ_loss_mask): inside mask_camera, mask_lidar,
# either, or all of them; docs/occupancy.md says when each is valid.
SUPERVISION_MASKS: tuple[str, ...] = ("camera", "lidar", "camera_lidar", "all")

# Voxel size conventions: "exact" range / grid; "tpvformer" range / (grid - 1), the public code.
VOXEL_CONVENTIONS: tuple[str, ...] = ("exact", "tpvformer")


@dataclass(frozen=True)
class LabelSpace:
    """The classes a model's logits index: names, colours, which one is free space (None: the
    space has none) and which one is ignored by losses and metrics and never predicted (None:
    every class is a real class, e.g. Occ3D's 0 "others")."""

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]  # (C,) RGB, one colour per class
    free_index: int | None
    ignore_index: int | None

    def __post_init__(self) -> None:
        n = len(self.class_names)
        if len(self.palette) != n:
            raise ValueError(f"label space {self.name}: {len(self.palette)} colours, {n} classes")
        for what, index in (("free", self.free_index), ("ignore", self.ignore_index)):
            if index is not None and not 0 <= index < n:
                raise ValueError(f"label space {self.name}: {what} index {index} not in 0..{n - 1}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def predictable(self) -> np.ndarray:
        """bool (C,): the classes an argmax may return (all but the ignored one)."""
        mask = np.ones(self.num_classes, dtype=bool)
        if self.ignore_index is not None:
            mask[self.ignore_index] = False
        return mask

    def hidden_by_default(self) -> tuple[str, ...]:
        """The classes a picture or PLY file leaves out unless asked: ignored and free."""
        return tuple(
            self.class_names[i] for i in (self.ignore_index, self.free_index) if i is not None
        )


@dataclass(frozen=True)
class Grid:
    """A voxel grid: frame, range (x/y/z min, then max, metres), shape (X, Y, Z) indexed
    [x, y, z], and voxel size (metres; centre of cell i = min + (i + 0.5) * size)."""

    frame: str
    range: tuple[float, ...]
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]

    def same_as(self, other: Grid, atol: float = 1e-6) -> bool:
        return (
            self.frame == other.frame
            and self.shape == other.shape
            and np.allclose(self.range, other.range, atol=atol)
            and np.allclose(self.voxel_size, other.voxel_size, atol=atol)
        )

    def describe(self) -> str:
        x, y, z = self.shape
        return f"{x}x{y}x{z} over {list(self.range)} m in the {self.frame} frame"


@dataclass(frozen=True)
class Task:
    """What a model does: its label space, its output grid (None in the table where the grid is
    the model's own: tpv size x head scales over model.point_cloud_range), the frame of its
    inputs (the frame that the projection matrices map from, and of the query points) and the
    ground truth that scores it (SCORED_ON)."""

    name: str
    label_space: LabelSpace
    grid_frame: str
    input_frame: str
    scored_on: str
    grid: Grid | None = None
    description: str = field(default="", compare=False)

    def with_grid(self, grid: Grid) -> Task:
        if grid.frame != self.grid_frame:
            raise TpvkitError(
                f"task {self.name} works on a {self.grid_frame}-frame grid, not {grid.frame}"
            )
        return replace(self, grid=grid)


# ---------------------------------------------------------------------------------------------
# The tables: a new label space or task is one entry here (docs/internals.md)

LABEL_SPACES: dict[str, LabelSpace] = {
    space.name: space
    for space in (
        # 16 nuScenes-lidarseg challenge classes, 0 "noise" ignored
        LabelSpace("nuscenes_lidarseg", CLASS_NAMES, PALETTE[: len(CLASS_NAMES)], None, 0),
        # the released TPVFormer occupancy recipe: the 16 classes and "empty", 0 still ignored
        LabelSpace(
            "nuscenes_lidarseg_empty",
            OCCUPANCY_CLASS_NAMES,
            PALETTE,
            OCCUPANCY_CLASS_NAMES.index("empty"),
            IGNORE_INDEX,
        ),
        # Occ3D-nuScenes: 0 "others" is a real class, 17 "free"
        LabelSpace("occ3d_nuscenes", OCC3D_CLASS_NAMES, PALETTE, OCC3D_FREE, None),
    )
}

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "lidarseg",
            LABEL_SPACES["nuscenes_lidarseg"],
            grid_frame="lidar",
            input_frame="lidar",
            scored_on="points",
            description="nuScenes-lidarseg: 16 classes on LiDAR points (lidarseg configs)",
        ),
        Task(
            "tpv_occupancy",
            LABEL_SPACES["nuscenes_lidarseg_empty"],
            grid_frame="lidar",
            input_frame="lidar",
            scored_on="points",
            description="the released TPVFormer occupancy recipe: lidarseg classes + empty",
        ),
        Task(
            "occ3d",
            LABEL_SPACES["occ3d_nuscenes"],
            grid_frame="ego",
            input_frame="ego",
            scored_on="dense",
            grid=Grid("ego", OCC3D_RANGE, OCC3D_GRID, (OCC3D_VOXEL_SIZE,) * 3),
            description="Occ3D-nuScenes dense occupancy: 18 classes with free, ego frame",
        ),
    )
}


def get_task(name: str) -> Task:
    """The table entry `name` (a TpvkitError listing the known names otherwise)."""
    if name not in TASKS:
        raise TpvkitError(f"unknown task '{name}': known tasks are {', '.join(TASKS)}")
    return TASKS[name]


def voxel_grid_shape(
    tpv_w: int, tpv_h: int, tpv_z: int, scale_w: int = 1, scale_h: int = 1, scale_z: int = 1
) -> tuple[int, int, int]:
    """The model's output grid (X, Y, Z): X along the grid frame's x (tpv_w), Y along y (tpv_h),
    Z along z."""
    return (tpv_w * scale_w, tpv_h * scale_h, tpv_z * scale_z)


def voxel_size(
    point_cloud_range: Sequence[float], grid: Sequence[int], convention: str = "exact"
) -> np.ndarray:
    """(3,) float64 metres per voxel: range / grid ("exact") or range / (grid - 1) ("tpvformer")."""
    if convention not in VOXEL_CONVENTIONS:
        raise TpvkitError(
            f"voxel convention '{convention}' is not one of {', '.join(VOXEL_CONVENTIONS)} "
            "(config key data.voxel_convention)"
        )
    pc = np.asarray(point_cloud_range, dtype=np.float64)
    grid_arr = np.asarray(grid, dtype=np.float64)
    return (pc[3:] - pc[:3]) / (grid_arr if convention == "exact" else grid_arr - 1)


# ---------------------------------------------------------------------------------------------
# Written into checkpoints, prediction files and ONNX metadata


def task_to_dict(task: Task) -> dict[str, Any]:
    """A plain (JSON- and weights_only-safe) dict of `task`, grid included."""
    space = task.label_space
    grid = task.grid
    return {
        "name": task.name,
        "grid_frame": task.grid_frame,
        "input_frame": task.input_frame,
        "scored_on": task.scored_on,
        "description": task.description,
        "label_space": {
            "name": space.name,
            "class_names": list(space.class_names),
            "palette": [list(c) for c in space.palette],
            "free_index": space.free_index,
            "ignore_index": space.ignore_index,
        },
        "grid": None
        if grid is None
        else {
            "frame": grid.frame,
            "range": [float(v) for v in grid.range],
            "shape": [int(v) for v in grid.shape],
            "voxel_size": [float(v) for v in grid.voxel_size],
        },
    }


def task_from_dict(data: Mapping[str, Any], where: str = "the file") -> Task:
    """The Task that `task_to_dict` wrote; a TpvkitError naming `where` if it is malformed."""
    try:
        space = data["label_space"]
        grid = data.get("grid")
        task = Task(
            name=str(data["name"]),
            label_space=LabelSpace(
                name=str(space["name"]),
                class_names=tuple(str(n) for n in space["class_names"]),
                palette=tuple((int(c[0]), int(c[1]), int(c[2])) for c in space["palette"]),
                free_index=None if space["free_index"] is None else int(space["free_index"]),
                ignore_index=None if space["ignore_index"] is None else int(space["ignore_index"]),
            ),
            grid_frame=str(data["grid_frame"]),
            input_frame=str(data["input_frame"]),
            scored_on=str(data["scored_on"]),
            description=str(data.get("description", "")),
            grid=None
            if grid is None
            else Grid(
                frame=str(grid["frame"]),
                range=tuple(float(v) for v in grid["range"]),
                shape=tuple(int(v) for v in grid["shape"]),  # type: ignore[arg-type]
                voxel_size=tuple(float(v) for v in grid["voxel_size"]),  # type: ignore[arg-type]
            ),
        )
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise TpvkitError(f"{where}: its task record is malformed ({err!r})") from err
    if task.grid_frame not in FRAMES or task.scored_on not in SCORED_ON:
        raise TpvkitError(f"{where}: its task record names an unknown frame or ground truth")
    return task
