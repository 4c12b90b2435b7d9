"""Occ3D-format dense occupancy ground truth from LiDAR, for any nuScenes-format dataroot.

`generate_occupancy` reads a dataroot through nuscenes-devkit (the synthetic world and real
nuScenes alike) and writes `GTDIR/<scene_name>/<sample_token>/labels.npz` (semantics,
mask_lidar, mask_camera; docs/occupancy.md "Generating ground truth") for every key frame:
LiDAR key frames and non-key sweeps moved into the key frame's ego frame, points inside
annotated boxes moved with their (time-interpolated) box, semantics from the key frames'
lidarseg labels (sweep points: the box's category, else the nearest labelled point), a
majority vote per voxel, optional densification steps, and both visibility masks by ray
casting with the project's voxel walk (synthetic_occ.mark_rays).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tpvkit.constants import GENERAL_CLASS_NAMES, LABEL_MAP_32_TO_16, LIDAR_CHANNEL
from tpvkit.data.geometry import invert_pose, pose_matrix, voxel_majority_labels
from tpvkit.data.occ3d import (
    GRID_FILE,
    OCC3D_FREE,
    OCC3D_RANGE,
    OCC3D_VOXEL_SIZE,
    Occ3DLabels,
    label_relpath,
    write_labels,
)
from tpvkit.data.synthetic_occ import VoxelGrid, mark_rays
from tpvkit.errors import TpvkitError
from tpvkit.utils.io import atomic_write_text, check_output_dir

_LABEL16 = np.asarray(LABEL_MAP_32_TO_16, dtype=np.int64)
NOISE = GENERAL_CLASS_NAMES.index("noise")
EGO = GENERAL_CLASS_NAMES.index("vehicle.ego")
# Classes filled inside their boxes by `fill_boxes`: rigid, solid vehicles (not two-wheelers,
# pedestrians, cones or barriers, whose boxes hold mostly air).
SOLID_CATEGORIES = (
    "vehicle.car",
    "vehicle.truck",
    "vehicle.bus.rigid",
    "vehicle.bus.bendy",
    "vehicle.trailer",
    "vehicle.construction",
)
GROUND_CLASSES = (11, 12, 13, 14)  # driveable_surface, other_flat, sidewalk, terrain
BOX_GROUND_CLEARANCE = 0.1  # m: points this close above a box's bottom face are ground
BOX_MARGIN = 0.2  # m: boxes grown by this much (sides and top) to catch their surface returns


@dataclass(frozen=True)
class OccGTOptions:
    """Everything that decides the labels (written to GTDIR/occ_gt.json)."""

    point_cloud_range: tuple[float, float, float, float, float, float] = OCC3D_RANGE  # type: ignore[assignment]
    voxel_size: float = OCC3D_VOXEL_SIZE
    sweeps: int = 10  # non-key sweeps nearest in time to the key frame
    keyframes: int = 2  # neighbouring key frames on each side
    box_frame: bool = True  # points inside boxes move with their box
    remove_isolated: bool = True  # drop one-point voxels with no occupied neighbour
    fill_boxes: bool = False  # close solid vehicles in their boxes (no measurable gain: off)
    fill_ground: bool = True  # close holes of the ground layer
    close_holes: bool = True  # fill a free voxel between two occupied ones
    ground_fill_distance: float = 8.0  # m: furthest ground column a hole takes its height from
    surface_offset: float = 0.1  # m: returns pushed this far into the surface they lie on
    surface_normals: bool = True  # push along the local surface normal (else along the ray)
    normal_cell: float = 0.15  # m: normals are fitted to one mean point per cell of this size
    camera_ray_deg: float = 0.35  # angular spacing of the mask_camera rays (pixel stride)

    def grid(self) -> VoxelGrid:
        pc = np.asarray(self.point_cloud_range, dtype=np.float64)
        shape = np.round((pc[3:] - pc[:3]) / self.voxel_size).astype(int)
        return VoxelGrid(
            tuple(float(v) for v in pc[:3]), float(self.voxel_size), tuple(int(n) for n in shape)
        )


def check_options(opts: OccGTOptions) -> None:
    """Refuse options that cannot make a grid, naming the option."""
    pc = np.asarray(opts.point_cloud_range, dtype=np.float64)
    if pc.shape != (6,) or not np.all(pc[3:] > pc[:3]):
        raise TpvkitError(
            f"--range {' '.join(f'{v:g}' for v in pc.reshape(-1))}: give x0 y0 z0 x1 y1 z1 "
            "with x1 > x0, y1 > y0, z1 > z0 (metres, ego frame)"
        )
    if not opts.voxel_size > 0:
        raise TpvkitError(f"--voxel-size {opts.voxel_size}: must be > 0 metres")
    cells = (pc[3:] - pc[:3]) / opts.voxel_size
    if np.any(np.abs(cells - np.round(cells)) > 1e-6):
        raise TpvkitError(
            f"--voxel-size {opts.voxel_size:g} does not divide --range "
            f"({', '.join(f'{c:g}' for c in pc[3:] - pc[:3])} m): choose one that does"
        )
    if np.prod(np.round(cells)) > 64e6:
        raise TpvkitError(f"--range / --voxel-size make {np.prod(cells):.3g} voxels: at most 64e6")
    if opts.sweeps < 0 or opts.keyframes < 0:
        raise TpvkitError("--sweeps and --keyframes must be >= 0")


# ---------------------------------------------------------------------------------------------
# What a scene job needs, read from the devkit in the main process (plain, picklable data)


@dataclass
class BoxRec:
    """One annotated box at one LiDAR time, global frame."""

    instance: int  # index into the scene's instance list
    label: int  # Occ3D class of its category (0..16)
    solid: bool
    center: np.ndarray  # (3,)
    rotation: np.ndarray  # (3, 3) box -> global
    wlh: np.ndarray  # (3,) width, length, height


@dataclass
class LidarFrame:
    token: str
    timestamp: int
    path: str
    is_key: bool
    lidar2global: np.ndarray  # (4, 4)
    ego2global: np.ndarray  # (4, 4)
    lidarseg_path: str | None
    boxes: list[BoxRec]


@dataclass
class CameraRec:
    K: np.ndarray  # (3, 3)
    width: int
    height: int
    cam2global: np.ndarray  # (4, 4)


@dataclass
class KeyFrame:
    sample_token: str
    frame: int  # index of its LiDAR frame in SceneJob.frames
    cameras: list[CameraRec]


@dataclass
class SceneJob:
    name: str
    frames: list[LidarFrame]
    keys: list[KeyFrame]
    out_dir: str
    options: OccGTOptions
    skip: list[bool] = field(default_factory=list)  # key frames already written


def _category_label(name: str) -> int:
    try:
        return int(_LABEL16[GENERAL_CLASS_NAMES.index(name)])
    except ValueError:
        return 0


def _boxes(nusc: Any, sd_token: str, instances: dict[str, int]) -> list[BoxRec]:
    out = []
    for box in nusc.get_boxes(sd_token):
        ann = nusc.get("sample_annotation", box.token)
        inst = instances.setdefault(ann["instance_token"], len(instances))
        out.append(
            BoxRec(
                inst,
                _category_label(box.name),
                box.name in SOLID_CATEGORIES,
                np.asarray(box.center, dtype=np.float64),
                box.orientation.rotation_matrix,
                np.asarray(box.wlh, dtype=np.float64),
            )
        )
    return out


def _pose(nusc: Any, table: str, token: str, scene: str, sd: dict[str, Any]) -> np.ndarray:
    try:
        rec = nusc.get(table, token)
    except KeyError:
        raise TpvkitError(
            f"scene {scene}: sample_data {sd['token']} ({sd['filename']}) refers to {table} "
            f"{token or '(none)'}, which is not in {table}.json: this scene has no poses; "
            "restore the tables or leave the scene out with --split"
        ) from None
    return pose_matrix(rec["translation"], rec["rotation"])


def scene_job(
    nusc: Any, scene: dict[str, Any], dataroot: Path, out_dir: Path, opts: OccGTOptions
) -> SceneJob:
    """Everything generating a scene's labels needs, checked: every LiDAR file (key frames and
    sweeps) exists, every key frame has lidarseg labels, every sample_data has its poses."""
    from tpvkit.data.infos import _scene_samples

    samples = _scene_samples(nusc, scene)
    name = scene["name"]
    has_lidarseg = bool(getattr(nusc, "lidarseg", None))
    lidarseg = {r["sample_data_token"]: r["filename"] for r in getattr(nusc, "lidarseg", [])}
    in_scene = {sample["token"] for sample in samples}
    # the LiDAR chain (key frames and sweeps) of the scene: its sample_data point to its samples
    chain = [nusc.get("sample_data", samples[0]["data"][LIDAR_CHANNEL])]
    while chain[0]["prev"]:
        prev = nusc.get("sample_data", chain[0]["prev"])
        if prev["sample_token"] not in in_scene:
            break
        chain.insert(0, prev)
    while chain[-1]["next"]:
        nxt = nusc.get("sample_data", chain[-1]["next"])
        if nxt["sample_token"] not in in_scene:
            break
        chain.append(nxt)
    instances: dict[str, int] = {}
    frames: list[LidarFrame] = []
    key_index: dict[str, int] = {}
    for sd in chain:
        path = dataroot / sd["filename"]
        if not path.is_file():
            raise TpvkitError(
                f"scene {name}: LiDAR {'key frame' if sd['is_key_frame'] else 'sweep'} file "
                f"{path} is missing (sample_data {sd['token']}): restore it"
                + ("" if sd["is_key_frame"] else " or pass --sweeps 0")
            )
        seg = None
        if sd["is_key_frame"]:
            if not has_lidarseg or sd["token"] not in lidarseg:
                why = "no record in lidarseg.json" if has_lidarseg else "no lidarseg.json"
                raise TpvkitError(
                    f"scene {name}: key frame {sd['token']} has no lidarseg labels "
                    f"({why}): "
                    "install nuScenes-lidarseg for this version (semantics come from it)"
                )
            seg = str(dataroot / lidarseg[sd["token"]])
            if not Path(seg).is_file():
                raise TpvkitError(
                    f"scene {name}: lidarseg file {seg} is missing (key frame {sd['token']}): "
                    "re-extract nuScenes-lidarseg"
                )
            key_index[sd["sample_token"]] = len(frames)
        ego = _pose(nusc, "ego_pose", sd["ego_pose_token"], name, sd)
        calib = _pose(nusc, "calibrated_sensor", sd["calibrated_sensor_token"], name, sd)
        frames.append(
            LidarFrame(
                sd["token"],
                int(sd["timestamp"]),
                str(path),
                bool(sd["is_key_frame"]),
                ego @ calib,
                ego,
                seg,
                _boxes(nusc, sd["token"], instances),
            )
        )
    keys = []
    for sample in samples:
        if sample["token"] not in key_index:
            raise TpvkitError(
                f"scene {name}: sample {sample['token']} has no LIDAR_TOP key frame in the "
                "LiDAR sample_data chain: the tables are inconsistent"
            )
        cams = []
        for sd_token in sample["data"].values():
            sd = nusc.get("sample_data", sd_token)
            calib_rec = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            if not calib_rec.get("camera_intrinsic"):
                continue  # LiDAR / radar
            ego = _pose(nusc, "ego_pose", sd["ego_pose_token"], name, sd)
            calib = _pose(nusc, "calibrated_sensor", sd["calibrated_sensor_token"], name, sd)
            cams.append(
                CameraRec(
                    np.asarray(calib_rec["camera_intrinsic"], dtype=np.float64),
                    int(sd["width"]),
                    int(sd["height"]),
                    ego @ calib,
                )
            )
        keys.append(KeyFrame(sample["token"], key_index[sample["token"]], cams))
    return SceneJob(name, frames, keys, str(out_dir), opts)


# ---------------------------------------------------------------------------------------------
# Per scene: points, the static / in-box split, labels


@dataclass
class _FramePoints:
    """One LiDAR frame split into static points (global) and in-box points (box-local)."""

    static_xyz: np.ndarray  # (S, 3) float64 global
    static_dir: np.ndarray  # (S, 3) unit ray direction (sensor -> return), global
    static_label: np.ndarray  # (S,) int64 Occ3D class 0..16, -1 unknown (sweep)
    box_xyz: np.ndarray  # (B, 3) float64 box frame
    box_dir: np.ndarray  # (B, 3) unit ray direction, box frame
    box_instance: np.ndarray  # (B,) int64
    box_label: np.ndarray  # (B,) int64
    origin: np.ndarray  # (3,) LiDAR position, global
    rays: np.ndarray  # (N, 3) every return, global (for mask_lidar)


def _read_points(path: str) -> np.ndarray:
    """(N, 3) float64 LiDAR-frame xyz of a .pcd.bin (5 float32 per point, as the devkit)."""
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % 5:
        raise TpvkitError(f"LiDAR file {path} holds {raw.size} floats, not N x 5: re-extract it")
    return raw.reshape(-1, 5)[:, :3].astype(np.float64)


def _in_box(local: np.ndarray, wlh: np.ndarray) -> np.ndarray:
    """Points (box frame: x along the length, y the width, z up) inside the box grown by
    BOX_MARGIN (returns lie on the box's faces, noise puts half of them outside), the bottom
    BOX_GROUND_CLEARANCE left out (ground returns there stay static)."""
    half = np.array([wlh[1], wlh[0], wlh[2]]) / 2
    return (
        (np.abs(local[:, 0]) <= half[0] + BOX_MARGIN)
        & (np.abs(local[:, 1]) <= half[1] + BOX_MARGIN)
        & (local[:, 2] <= half[2] + BOX_MARGIN)
        & (local[:, 2] >= -half[2] + BOX_GROUND_CLEARANCE)
    )


def _split_frame(frame: LidarFrame, box_frame: bool) -> _FramePoints:
    xyz_l = _read_points(frame.path)
    T = frame.lidar2global
    xyz = xyz_l @ T[:3, :3].T + T[:3, 3]
    dirs = (xyz_l / np.maximum(np.linalg.norm(xyz_l, axis=1, keepdims=True), 1e-9)) @ T[:3, :3].T
    n = xyz.shape[0]
    if frame.lidarseg_path is not None:
        general = np.fromfile(frame.lidarseg_path, dtype=np.uint8).astype(np.int64)
        if general.size != n:
            raise TpvkitError(
                f"lidarseg {frame.lidarseg_path} holds {general.size} labels for {n} points "
                f"of {frame.path}: re-extract nuScenes-lidarseg"
            )
        keep = (general != NOISE) & (general != EGO)
        label = np.where(keep, _LABEL16[np.minimum(general, len(_LABEL16) - 1)], -2)
    else:
        label = np.full(n, -1, dtype=np.int64)
    box_of = np.full(n, -1, dtype=np.int64)
    local_all = np.zeros((n, 3))
    local_dir = np.zeros((n, 3))
    box_label = np.full(n, -1, dtype=np.int64)
    if frame.boxes and n:
        from scipy.spatial import cKDTree

        # candidates of every box at once: the points within its bounding sphere
        centres = np.stack([box.center for box in frame.boxes])
        radii = np.array([np.linalg.norm(box.wlh / 2 + BOX_MARGIN) for box in frame.boxes])
        candidates = cKDTree(xyz).query_ball_point(centres, radii)
    for box, cand in zip(frame.boxes, candidates if frame.boxes and n else [], strict=False):
        near = np.asarray(sorted(cand), dtype=np.int64)
        near = near[box_of[near] < 0] if near.size else near
        if near.size == 0:
            continue
        local = (xyz[near] - box.center) @ box.rotation  # R^T (p - c)
        inside = _in_box(local, box.wlh)
        sel = near[inside]
        # a labelled key-frame point of another class inside a box (the ground under a
        # wheel, a branch over a roof) stays where it is
        own = (label[sel] == -1) | (label[sel] == box.label)
        sel, loc = sel[own], local[inside][own]
        box_of[sel] = box.instance
        local_all[sel] = loc
        local_dir[sel] = dirs[sel] @ box.rotation
        box_label[sel] = box.label
    moved = (box_of >= 0) if box_frame else np.zeros(n, dtype=bool)
    if not box_frame:  # sweep points in boxes still take the box's class
        unk = (box_of >= 0) & (label == -1)
        label = np.where(unk, box_label, label)
    keep_static = ~moved & (label != -2)
    return _FramePoints(
        static_xyz=xyz[keep_static],
        static_dir=dirs[keep_static],
        static_label=label[keep_static],
        box_xyz=local_all[moved],
        box_dir=local_dir[moved],
        box_instance=box_of[moved],
        box_label=np.where(label[moved] >= 0, label[moved], box_label[moved]),
        origin=T[:3, 3].copy(),
        rays=xyz,
    )


class SweepLabeller:
    """Labels for sweep points: the nearest labelled static point of the scene's key frames
    (a k-d tree built once per scene from every key frame)."""

    def __init__(self, job: SceneJob) -> None:
        from scipy.spatial import cKDTree

        xyz, label = [], []
        for key in job.keys:
            p = _split_frame(job.frames[key.frame], job.options.box_frame)
            known = p.static_label >= 0
            xyz.append(p.static_xyz[known])
            label.append(p.static_label[known])
        self.label = np.concatenate(label) if label else np.zeros(0, dtype=np.int64)
        self.tree = cKDTree(np.concatenate(xyz)) if self.label.size else None

    def __call__(self, p: _FramePoints) -> _FramePoints:
        """Fill the unknown (-1) static labels of a frame in place; returns it."""
        unk = np.flatnonzero(p.static_label < 0)
        if unk.size and self.tree is not None:
            _, nearest = self.tree.query(p.static_xyz[unk], k=1)
            p.static_label[unk] = self.label[nearest]
        return p


# ---------------------------------------------------------------------------------------------
# Per key frame: accumulate, vote, densify, masks


def _chosen_frames(job: SceneJob, key: KeyFrame) -> list[int]:
    """The key frame, its `keyframes` neighbouring key frames on each side and the `sweeps`
    non-key sweeps nearest in time."""
    opts = job.options
    key_frames = [k.frame for k in job.keys]
    pos = key_frames.index(key.frame)
    lo, hi = max(0, pos - opts.keyframes), min(len(key_frames), pos + opts.keyframes + 1)
    chosen = key_frames[lo:hi]
    t = job.frames[key.frame].timestamp
    sweeps = [i for i, f in enumerate(job.frames) if not f.is_key]
    sweeps.sort(key=lambda i: (abs(job.frames[i].timestamp - t), i))
    return sorted(chosen + sweeps[: opts.sweeps])


def accumulate(
    job: SceneJob, key: KeyFrame, points: Mapping[int, _FramePoints]
) -> tuple[np.ndarray, np.ndarray]:
    """(M, 3) ego-frame points of the key frame and (M,) their Occ3D classes (0..16)."""
    global2ego = invert_pose(job.frames[key.frame].ego2global)
    key_boxes = {b.instance: b for b in job.frames[key.frame].boxes}
    xyz, dirs, lab = [], [], []
    for i in _chosen_frames(job, key):
        p = points[i]
        xyz.append(p.static_xyz)
        dirs.append(p.static_dir)
        lab.append(p.static_label)
        if p.box_xyz.size:
            have = np.array([inst in key_boxes for inst in p.box_instance])
            if have.any():
                loc, inst = p.box_xyz[have], p.box_instance[have]
                R = np.stack([key_boxes[j].rotation for j in inst])  # (B, 3, 3)
                c = np.stack([key_boxes[j].center for j in inst])
                xyz.append(np.einsum("bij,bj->bi", R, loc) + c)
                dirs.append(np.einsum("bij,bj->bi", R, p.box_dir[have]))
                lab.append(p.box_label[have])
    all_xyz = np.concatenate(xyz) if xyz else np.zeros((0, 3))
    all_dir = np.concatenate(dirs) if dirs else np.zeros((0, 3))
    all_lab = np.concatenate(lab) if lab else np.zeros(0, dtype=np.int64)
    ego = all_xyz @ global2ego[:3, :3].T + global2ego[:3, 3]
    # only points in (or within a metre of) the grid can vote or shape a normal that does
    grid = job.options.grid()
    lo = np.asarray(grid.range_min) - 1.0
    hi = np.asarray(grid.range_min) + grid.voxel_size * np.asarray(grid.shape) + 1.0
    near = np.all((ego >= lo) & (ego <= hi), axis=1)
    ego, all_dir, all_lab = ego[near], all_dir[near], all_lab[near]
    ego_dir = all_dir @ global2ego[:3, :3].T
    if job.options.surface_offset:
        # a return lies on a surface with the solid behind it: pushed a quarter voxel into
        # the solid, it lands in the voxel the surface reaches at least a quarter into
        opts = job.options
        inward = surface_inward(ego, ego_dir, opts.normal_cell) if opts.surface_normals else ego_dir
        inward[np.isin(all_lab, GROUND_CLASSES)] = (0.0, 0.0, -1.0)  # the ground: straight down
        ego = ego + job.options.surface_offset * inward
    return ego, all_lab


NORMAL_NEIGHBOURS = 10


def surface_inward(xyz: np.ndarray, ray_dir: np.ndarray, cell_size: float = 0.15) -> np.ndarray:
    """(N, 3) unit direction into the surface at each point: minus the local normal, turned to
    face the sensor; the ray direction where the neighbourhood is not a surface (a line, a
    blob). The normal of a point is that of its cell (cubes of `cell_size` metres): the
    least-variance axis of the NORMAL_NEIGHBOURS cells (mean points) nearest to the cell's
    mean point."""
    from scipy.spatial import cKDTree

    n = xyz.shape[0]
    if n < NORMAL_NEIGHBOURS:
        return ray_dir
    cell = np.floor((xyz - xyz.min(axis=0)) / cell_size).astype(np.int64)
    span = cell.max(axis=0) + 1
    key = (cell[:, 0] * span[1] + cell[:, 1]) * span[2] + cell[:, 2]
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    m = counts.size
    if m < NORMAL_NEIGHBOURS:
        return ray_dir
    reps = np.stack([np.bincount(inverse, xyz[:, a], minlength=m) for a in range(3)], 1)
    reps /= counts[:, None]
    _, nb = cKDTree(reps).query(reps, k=NORMAL_NEIGHBOURS)
    q = reps[nb] - reps[nb].mean(axis=1, keepdims=True)  # (M, k, 3)
    cov = np.einsum("nki,nkj->nij", q, q)
    w, v = np.linalg.eigh(cov)  # ascending eigenvalues
    planar = (w[:, 0] < 0.1 * w[:, 1])[inverse]  # flat: one axis of clearly less spread
    normal = v[:, :, 0][inverse]
    flip = (normal * ray_dir).sum(1) > 0
    normal[flip] *= -1.0  # facing the sensor
    return np.where(planar[:, None], -normal, ray_dir)


def vote(grid: VoxelGrid, xyz: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Majority class per voxel -> (semantics uint8 (X, Y, Z) with free where no point,
    point count per voxel int64 (X, Y, Z)). Ties go to the smaller class id."""
    idx = np.floor((xyz - np.asarray(grid.range_min)) / grid.voxel_size).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(grid.shape)), axis=1)
    idx, label = idx[inside], label[inside]
    X, Y, Z = grid.shape
    counts = np.bincount((idx[:, 0] * Y + idx[:, 1]) * Z + idx[:, 2], minlength=X * Y * Z)
    counts = counts.reshape(grid.shape)
    sem = voxel_majority_labels(idx, label, grid.shape).astype(np.uint8)
    sem[counts == 0] = OCC3D_FREE
    return sem, counts


def _neighbour_count(occ: np.ndarray) -> np.ndarray:
    """Occupied 26-neighbours of every voxel."""
    from scipy.ndimage import convolve

    kernel = np.ones((3, 3, 3), dtype=np.int16)
    kernel[1, 1, 1] = 0
    return convolve(occ.astype(np.int16), kernel, mode="constant", cval=0)


def remove_isolated(sem: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Voxels holding one point and no occupied 26-neighbour become free (spurious returns)."""
    occ = sem != OCC3D_FREE
    lonely = occ & (counts <= 1) & (_neighbour_count(occ) == 0)
    out = sem.copy()
    out[lonely] = OCC3D_FREE
    return out


def fill_boxes(
    sem: np.ndarray, grid: VoxelGrid, boxes: Sequence[BoxRec], global2ego: np.ndarray
) -> np.ndarray:
    """Close solid vehicles: inside the box (grown by BOX_MARGIN) of a solid vehicle, each
    column's free voxels between the lowest and the highest voxel of the box's class in that
    column take the class (observed extent only: the air under a trailer's or a truck's raised
    body stays free where nothing was seen below it)."""
    out = sem.copy()
    lo = np.asarray(grid.range_min)
    for box in boxes:
        if not box.solid:
            continue
        c = global2ego[:3, :3] @ box.center + global2ego[:3, 3]
        R = global2ego[:3, :3] @ box.rotation
        r = np.linalg.norm(box.wlh) / 2 + BOX_MARGIN
        first = np.maximum(np.floor((c - r - lo) / grid.voxel_size).astype(int), 0)
        last = np.minimum(
            np.floor((c + r - lo) / grid.voxel_size).astype(int), np.asarray(grid.shape) - 1
        )
        if np.any(first > last):
            continue
        axes = [np.arange(first[a], last[a] + 1) for a in range(3)]
        ii = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (nx, ny, nz, 3)
        local = (grid.centres(ii) - c) @ R
        half = np.array([box.wlh[1], box.wlh[0], box.wlh[2]]) / 2 + BOX_MARGIN
        inside = np.all(np.abs(local) <= half, axis=-1)
        sl = tuple(slice(first[a], last[a] + 1) for a in range(3))
        sub = out[sl]
        mine = inside & (sub == box.label)
        has = mine.any(axis=2)
        if not has.any():
            continue
        z = np.arange(sub.shape[2])
        top = np.where(has, sub.shape[2] - 1 - np.argmax(mine[:, :, ::-1], axis=2), -1)
        bottom = np.where(has, np.argmax(mine, axis=2), sub.shape[2])
        between = (z[None, None] >= bottom[..., None]) & (z[None, None] <= top[..., None])
        fill = between & inside & (sub == OCC3D_FREE)
        sub[fill] = box.label
    return out


def fill_ground(sem: np.ndarray, grid: VoxelGrid, max_distance: float) -> np.ndarray:
    """Close the holes of the ground: a column without a ground voxel takes the height and class
    of the nearest column that has one (within max_distance metres), if that voxel is free."""
    from scipy.ndimage import distance_transform_edt

    ground = np.isin(sem, GROUND_CLASSES)
    has = ground.any(axis=2)
    if not has.any() or has.all():
        return sem
    Z = sem.shape[2]
    # the lowest ground voxel of each column that has one
    height = np.where(has, np.argmax(ground, axis=2), 0)
    dist, (ix, iy) = distance_transform_edt(~has, return_indices=True)
    fill = ~has & (dist * grid.voxel_size <= max_distance)
    fx, fy = np.nonzero(fill)
    sx, sy = ix[fx, fy], iy[fx, fy]
    z = height[sx, sy]
    z = np.clip(z, 0, Z - 1)
    out = sem.copy()
    free = out[fx, fy, z] == OCC3D_FREE
    out[fx[free], fy[free], z[free]] = sem[sx[free], sy[free], z[free]]
    return out


def close_holes(sem: np.ndarray) -> np.ndarray:
    """A free voxel whose two neighbours along x, y or z are both occupied becomes occupied,
    with the class of the first such pair (x, then y, then z)."""
    out = sem.copy()
    occ = sem != OCC3D_FREE
    filled = np.zeros_like(occ)
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        m = [slice(None)] * 3
        a[axis], m[axis], b[axis] = slice(None, -2), slice(1, -1), slice(2, None)
        a, m, b = tuple(a), tuple(m), tuple(b)
        hole = ~occ[m] & occ[a] & occ[b] & ~filled[m]
        target = out[m]
        target[hole] = sem[a][hole]
        filled[m] |= hole
    return out


def camera_rays(cam: CameraRec, global2ego: np.ndarray, ray_deg: float):
    """(origins (N, 3), unit dirs (N, 3)) in the ego frame: rays through pixel centres on a
    stride that keeps them about `ray_deg` apart (every pixel for small images)."""
    f = float(cam.K[0, 0])
    stride = max(1, int(np.floor(np.radians(ray_deg) * f)))
    cols = np.arange(stride / 2, cam.width, stride) if stride > 1 else np.arange(cam.width) + 0.5
    rows = np.arange(stride / 2, cam.height, stride) if stride > 1 else np.arange(cam.height) + 0.5
    cc, rr = np.meshgrid(cols, rows)
    pix = np.stack([cc.ravel(), rr.ravel(), np.ones(cc.size)], axis=1)
    rays = pix @ np.linalg.inv(cam.K).T
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    T = global2ego @ cam.cam2global
    dirs = rays @ T[:3, :3].T
    return np.broadcast_to(T[:3, 3], dirs.shape), dirs


def key_frame_labels(
    job: SceneJob, key: KeyFrame, points: Mapping[int, _FramePoints]
) -> Occ3DLabels:
    """The generated labels of one key frame."""
    opts = job.options
    grid = opts.grid()
    frame = job.frames[key.frame]
    global2ego = invert_pose(frame.ego2global)
    xyz, label = accumulate(job, key, points)
    sem, counts = vote(grid, xyz, label)
    if opts.remove_isolated:
        sem = remove_isolated(sem, counts)
    if opts.fill_boxes:
        sem = fill_boxes(sem, grid, frame.boxes, global2ego)
    if opts.fill_ground:
        sem = fill_ground(sem, grid, opts.ground_fill_distance)
    if opts.close_holes:
        sem = close_holes(sem)
    # mask_lidar: the key frame's own rays, sensor to return
    kp = points[key.frame]
    origin = global2ego[:3, :3] @ kp.origin + global2ego[:3, 3]
    ends = kp.rays @ global2ego[:3, :3].T + global2ego[:3, 3]
    d = ends - origin
    rng = np.linalg.norm(d, axis=1)
    dirs = d / np.maximum(rng, 1e-9)[:, None]
    mask_lidar = mark_rays(grid, np.broadcast_to(origin, dirs.shape), dirs, max_dist=rng)
    if key.cameras:
        o, d = zip(
            *(camera_rays(c, global2ego, opts.camera_ray_deg) for c in key.cameras), strict=True
        )
        mask_camera = mark_rays(grid, np.concatenate(o), np.concatenate(d), None, sem != OCC3D_FREE)
    else:
        mask_camera = np.zeros(grid.shape, dtype=bool)
    return Occ3DLabels(sem, mask_lidar, mask_camera)


def run_scene(job: SceneJob, progress: Any = None) -> tuple[int, float]:
    """Write the labels of one scene's key frames (those not skipped) -> (written, seconds)."""
    start = time.perf_counter()
    skips = job.skip or [False] * len(job.keys)
    todo = [k for k, skip in zip(job.keys, skips, strict=True) if not skip]
    if not todo:
        return 0, 0.0
    labeller = SweepLabeller(job)
    # A window of frames moves with the key frames (in time order): memory holds the frames of
    # one key frame, not of the scene.
    window: dict[int, _FramePoints] = {}
    written = 0
    for key in todo:
        needed = set(_chosen_frames(job, key)) | {key.frame}
        for i in [i for i in window if i not in needed]:
            del window[i]
        for i in sorted(needed - window.keys()):
            window[i] = labeller(_split_frame(job.frames[i], job.options.box_frame))
        labels = key_frame_labels(job, key, window)
        write_labels(
            Path(job.out_dir) / label_relpath(job.name, key.sample_token), labels, shape=None
        )
        written += 1
        if progress is not None:
            progress(1)
    return written, time.perf_counter() - start


def _run_scene_worker(job: SceneJob) -> tuple[str, int, float]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    n, sec = run_scene(job)
    return job.name, n, sec


# ---------------------------------------------------------------------------------------------
# The command


def _meta(opts: OccGTOptions, dataroot: Path, version: str) -> dict[str, Any]:
    grid = opts.grid()
    return {
        "format": "Occ3D labels.npz (semantics, mask_lidar, mask_camera), indexed [x, y, z]",
        "range_min": list(grid.range_min),
        "voxel_size": grid.voxel_size,
        "shape": list(grid.shape),
        "options": {
            k: ([float(x) for x in v] if isinstance(v, tuple) else v)
            for k, v in asdict(opts).items()
        },
        "version": version,
        "generator": "tpvkit prepare occupancy",
    }


def generate_occupancy(
    dataroot: str | Path,
    version: str,
    out: str | Path,
    *,
    split: str | None = None,
    options: OccGTOptions = OccGTOptions(),
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    nusc: Any = None,
) -> dict[str, Any]:
    """Write GTDIR/<scene>/<sample_token>/labels.npz for every key frame of the version (or of
    one devkit split). Every input is checked before anything is written; frames already
    written are skipped (resumable) unless `overwrite`; each file is written atomically.
    Returns {"written", "skipped", "frames", "seconds", "out"}.
    """
    check_options(options)
    dataroot, out = Path(dataroot), Path(out)
    check_output_dir(out, "--out", inputs=[("the dataroot", dataroot)])
    meta_path = out / GRID_FILE
    meta = _meta(options, dataroot, version)
    old: dict[str, Any] = {}
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError:
            old = {}
        if not overwrite and old.get("options") != meta["options"]:
            raise TpvkitError(
                f"--out {out} holds labels made with other options ({meta_path}): pass "
                "--overwrite to replace them or choose another --out"
            )
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        # resuming is for folders this command made; anything else is somebody's files
        raise TpvkitError(
            f"--out {out} is not empty and holds no {GRID_FILE} (not labels made by `tpvkit "
            "prepare occupancy`): choose a new folder, or pass --overwrite to write into it"
        )
    if nusc is None:
        from tpvkit.data.infos import _load_devkit

        if not (dataroot / version).is_dir():
            raise TpvkitError(
                f"--dataroot {dataroot} has no {version} folder: give the nuScenes dataroot "
                "and the version it holds"
            )
        nusc = _load_devkit(dataroot, version)
    scenes = list(nusc.scene)
    if split is not None:
        from nuscenes.utils.splits import create_splits_scenes

        splits = create_splits_scenes()
        if split not in splits:
            raise TpvkitError(f"--split {split}: not a nuScenes split ({', '.join(splits)})")
        wanted = set(splits[split])
        scenes = [s for s in scenes if s["name"] in wanted]
        if not scenes:
            raise TpvkitError(f"--split {split}: none of its scenes is in {dataroot} ({version})")
    jobs = [scene_job(nusc, s, dataroot, out, options) for s in scenes]  # checks every input
    total = skipped = 0
    for job in jobs:
        job.skip = [
            (not overwrite) and (out / label_relpath(job.name, k.sample_token)).is_file()
            for k in job.keys
        ]
        total += len(job.keys)
        skipped += sum(job.skip)
    # key frame timestamps (viewers order frames by them), those of earlier runs kept
    meta["timestamps"] = dict(old.get("timestamps", {}))
    for job in jobs:
        for k in job.keys:
            meta["timestamps"][k.sample_token] = job.frames[k.frame].timestamp
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta_path, json.dumps(meta, indent=1) + "\n")
    start = time.perf_counter()
    from tpvkit.utils.progress import Progress

    # a bar on a terminal, a plain line every 15 s in a log file
    bar = Progress(total - skipped, "prepare occupancy", "frame", enabled=progress)
    written = 0
    try:
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
                futures = [pool.submit(_run_scene_worker, j) for j in jobs]
                for fut in as_completed(futures):
                    _, n, _ = fut.result()
                    written += n
                    bar.update(n)
        else:
            for job in jobs:
                n, _ = run_scene(job, progress=bar.update)
                written += n
    finally:
        bar.close()
    return {
        "written": written,
        "skipped": skipped,
        "frames": total,
        "seconds": time.perf_counter() - start,
        "out": str(out),
    }
