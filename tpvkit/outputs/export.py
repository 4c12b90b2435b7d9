"""PLY export of semantic voxels and labelled LiDAR points, coloured by class.

A vertex per occupied voxel centre (mode "points") or a closed cube mesh per voxel (mode
"cubes", outward-facing winding); every vertex carries red/green/blue from the class palette
and the class id as `label`. Coordinates are metres in the LiDAR or the ego frame, whichever
frame the record's grid lives in (Prediction.frame): the other one goes through lidar2ego.
Dense occupancy (Occ3D ground truth, 18-class models) hides free space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from plyfile import PlyData, PlyElement

from tpvkit.errors import TpvkitError
from tpvkit.outputs.degenerate import empty_output_warning, warn
from tpvkit.outputs.prediction_file import (
    Prediction,
    has_lidar_calibration,
    load_prediction,
    transform_points,
    voxel_centers,
)
from tpvkit.utils.io import atomic_path

if TYPE_CHECKING:
    from tpvkit.config import Config

MODES = ("points", "cubes")
FRAMES = ("lidar", "ego")
SOURCES = ("voxels", "points", "gt_voxels", "gt_points")
FACE_KINDS = ("quads", "triangles")

# Unit-cube corners (dx, dy, dz) and its faces as corner indices, counter-clockwise seen from
# outside, so the right-hand normal of every face points out of the cube.
CUBE_CORNERS = np.array(
    [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]],
    dtype=np.float64,
)  # (8, 3)
CUBE_QUADS = np.array(
    [
        [0, 3, 2, 1],  # -z (bottom)
        [4, 5, 6, 7],  # +z (top)
        [0, 1, 5, 4],  # -y
        [3, 7, 6, 2],  # +y
        [0, 4, 7, 3],  # -x
        [1, 2, 6, 5],  # +x
    ],
    dtype=np.int64,
)  # (6, 4)
# Each quad (a, b, c, d) splits into (a, b, c) and (a, c, d), keeping its winding.
CUBE_TRIANGLES = CUBE_QUADS[:, [[0, 1, 2], [0, 2, 3]]].reshape(12, 3)  # (12, 3)


@dataclass
class ExportResult:
    path: Path
    num_vertices: int
    num_faces: int
    num_items: int  # voxels or points written


def _choice(value: str, choices: Sequence[str], option: str) -> None:
    if value not in choices:
        raise TpvkitError(f"{option} '{value}' is not one of {', '.join(choices)}")


def resolve_excluded(pred: Prediction, exclude: Sequence[str] | None) -> np.ndarray:
    """bool (C,) classes to leave out; None = the defaults (noise and free space)."""
    names = pred.default_excluded() if exclude is None else tuple(exclude)
    mask = np.zeros(pred.num_classes, dtype=bool)
    for name in names:
        mask[pred.class_id(name)] = True  # raises TpvkitError listing the valid names
    return mask


def hidden_class_names(pred: Prediction, exclude: Sequence[str] | None) -> list[str]:
    """The names of the classes `exclude` (None: the record's default) leaves out."""
    excluded = resolve_excluded(pred, exclude)
    return [name for name, hidden in zip(pred.class_names, excluded, strict=True) if hidden]


def gt_occupied(pred: Prediction) -> np.ndarray:
    """bool (X, Y, Z): the ground-truth voxels that hold matter.

    Dense occupancy ground truth (Occ3D, the record carries gt_mask_camera / gt_mask_lidar):
    every voxel that is not free (empty_label; class 0 "others" is matter). Point-voted
    ground truth: voxels with a label other than 0 (0 = no labelled point).
    """
    if pred.gt_voxels is None:
        raise TpvkitError(f"{pred.source}: no ground-truth voxels (gt_voxels) in the file")
    gt = np.asarray(pred.gt_voxels)
    if is_dense_ground_truth(pred):
        return gt != pred.empty_label
    occupied = gt != 0
    if pred.empty_label >= 0:
        occupied &= gt != pred.empty_label
    return occupied


def is_dense_ground_truth(pred: Prediction) -> bool:
    """Whether gt_voxels is dense occupancy (free space labelled), as Occ3D's semantics."""
    has_mask = pred.gt_mask_camera is not None or pred.gt_mask_lidar is not None
    return pred.gt_voxels is not None and has_mask and pred.empty_label >= 0


def frame_transform(pred: Prediction, frame: str) -> np.ndarray | None:
    """(4, 4) from the record's grid frame to `frame` ("lidar" | "ego"); None when the same."""
    _choice(frame, FRAMES, "frame")
    if frame == pred.frame:
        return None
    if not has_lidar_calibration(pred):
        raise TpvkitError(
            f"{pred.source} is an Occ3D labels file: it holds the {pred.frame} frame only (no "
            f"LiDAR calibration); use --frame {pred.frame}"
        )
    if frame == "ego":  # and the record's grid is in the LiDAR frame
        return np.asarray(pred.lidar2ego, dtype=np.float64)
    return np.linalg.inv(np.asarray(pred.lidar2ego, dtype=np.float64))


def selected_voxels(pred: Prediction, source: str, exclude: Sequence[str] | None) -> np.ndarray:
    """(N, 3) int64 [x, y, z] indices of the voxels `select_items` exports, in its order."""
    excluded = resolve_excluded(pred, exclude)
    if source == "voxels":
        labels, occupied = pred.voxels, pred.occupied
    else:
        labels, occupied = pred.gt_voxels, gt_occupied(pred)
    keep = occupied & ~excluded[labels.astype(np.int64)]
    return np.argwhere(keep)  # row-major [x, y, z]


def select_items(
    pred: Prediction, source: str, exclude: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray]:
    """The positions (N, 3) float64, in the record's grid frame, and class ids (N,) int64 to
    export.

    Voxels: the centres of the occupied voxels in [x, y, z] order (free space never counts).
    Points: the LiDAR points with their predicted (or ground-truth) labels.
    """
    _choice(source, SOURCES, "source")
    excluded = resolve_excluded(pred, exclude)
    if source in ("voxels", "gt_voxels"):
        index = selected_voxels(pred, source, exclude)
        labels = pred.voxels if source == "voxels" else pred.gt_voxels
        xyz = voxel_centers(index, pred.point_cloud_range, pred.voxel_size)
        return xyz, labels[tuple(index.T)].astype(np.int64)
    key = "point_labels" if source == "points" else "gt_point_labels"
    labels = getattr(pred, key)
    if pred.points is None or labels is None:
        raise TpvkitError(f"{pred.source}: source '{source}' needs points and {key} in the file")
    keep = ~excluded[labels.astype(np.int64)]
    return pred.points[keep].astype(np.float64), labels[keep].astype(np.int64)


def cube_mesh(
    centers: np.ndarray, size: np.ndarray, faces: str = "quads", rotation: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Closed boxes around `centers` (N, 3): vertices (N*8, 3) and faces (N*6, 4) or (N*12, 3).

    `rotation` (3, 3), when given, turns each box about its centre (for the ego frame); a proper
    rotation keeps the outward winding.
    """
    _choice(faces, FACE_KINDS, "faces")
    offsets = (CUBE_CORNERS - 0.5) * np.asarray(size, dtype=np.float64)  # (8, 3)
    if rotation is not None:
        offsets = offsets @ np.asarray(rotation, dtype=np.float64).T
    vertices = (centers[:, None, :] + offsets[None]).reshape(-1, 3)  # (N*8, 3)
    template = CUBE_QUADS if faces == "quads" else CUBE_TRIANGLES
    base = (np.arange(len(centers), dtype=np.int64) * 8)[:, None, None]
    face_index = (base + template[None]).reshape(-1, template.shape[1])
    return vertices, face_index


def build_ply(
    vertices: np.ndarray,
    labels: np.ndarray,
    palette: np.ndarray,
    faces: np.ndarray | None = None,
    ascii: bool = False,
    comments: Sequence[str] = (),
    extra: dict[str, np.ndarray] | None = None,
) -> PlyData:
    """A PlyData with float32 x/y/z, uchar red/green/blue, uchar label (and faces if given);
    `extra` adds uchar vertex properties (name -> (N,) values, e.g. the Occ3D masks)."""
    extra = extra or {}
    vertex = np.empty(
        len(vertices),
        dtype=[
            ("x", "<f4"),
            ("y", "<f4"),
            ("z", "<f4"),
            ("red", "u1"),
            ("green", "u1"),
            ("blue", "u1"),
            ("label", "u1"),
            *((name, "u1") for name in extra),
        ],
    )
    for name, values in extra.items():
        vertex[name] = np.asarray(values).astype(np.uint8)
    vertex["x"], vertex["y"], vertex["z"] = vertices.T.astype(np.float32)
    colors = np.asarray(palette, dtype=np.uint8)[labels]
    vertex["red"], vertex["green"], vertex["blue"] = colors.T
    vertex["label"] = labels.astype(np.uint8)
    elements = [PlyElement.describe(vertex, "vertex")]
    if faces is not None:
        face = np.empty(len(faces), dtype=[("vertex_indices", "<i4", (faces.shape[1],))])
        face["vertex_indices"] = faces
        elements.append(
            PlyElement.describe(
                face, "face", len_types={"vertex_indices": "u1"}, val_types={"vertex_indices": "i4"}
            )
        )
    return PlyData(elements, text=ascii, byte_order="<", comments=list(comments))


def export_prediction_ply(
    pred: Prediction,
    out: str | Path,
    mode: str = "points",
    ascii: bool = False,
    frame: str = "lidar",
    exclude: Sequence[str] | None = None,
    source: str = "voxels",
    faces: str = "quads",
) -> ExportResult:
    """Write the PLY of an in-memory record (see export_ply)."""
    _choice(mode, MODES, "mode")
    _choice(frame, FRAMES, "frame")
    _choice(faces, FACE_KINDS, "faces")
    _choice(source, SOURCES, "source")
    if mode == "cubes" and source not in ("voxels", "gt_voxels"):
        raise TpvkitError("mode 'cubes' draws voxels; use source 'voxels' or 'gt_voxels'")
    xyz, labels = select_items(pred, source, exclude)
    rotation = None
    matrix = frame_transform(pred, frame)
    if matrix is not None:
        xyz = transform_points(matrix, xyz)
        rotation = matrix[:3, :3]
    # Occ3D masks travel with the voxels: uchar mask_camera / mask_lidar per vertex
    extra: dict[str, np.ndarray] = {}
    if source in ("voxels", "gt_voxels"):
        index = None
        for name in ("mask_camera", "mask_lidar"):
            mask = getattr(pred, "gt_" + name)
            if mask is not None:
                index = selected_voxels(pred, source, exclude) if index is None else index
                extra[name] = np.asarray(mask, bool)[tuple(index.T)]
    if mode == "cubes":
        vertices, face_index = cube_mesh(xyz, pred.voxel_size, faces, rotation)
        vertex_labels = np.repeat(labels, 8)
        extra = {k: np.repeat(v, 8) for k, v in extra.items()}
    else:
        vertices, face_index, vertex_labels = xyz, None, labels
    comments = [
        "tpvkit export",
        f"sample {pred.token}",
        f"frame {frame}",
        f"source {source}",
        *(f"class {i} {name}" for i, name in enumerate(pred.class_names)),
    ]
    ply = build_ply(vertices, vertex_labels, pred.palette, face_index, ascii, comments, extra)
    out = Path(out)
    with atomic_path(out) as tmp:
        ply.write(str(tmp))
    if len(xyz) == 0 and not source.startswith("gt_"):  # the model's own output is empty
        warn(empty_output_warning(f"{out} ({source})", hidden_class_names(pred, exclude)))
    return ExportResult(
        path=out,
        num_vertices=len(vertices),
        num_faces=0 if face_index is None else len(face_index),
        num_items=len(xyz),
    )


def export_ply(
    input: str | Path | Prediction,
    out: str | Path,
    mode: str = "points",
    ascii: bool = False,
    frame: str | None = "lidar",
    exclude: Sequence[str] | None = None,
    source: str = "voxels",
    faces: str = "quads",
) -> ExportResult:
    """Export a prediction file (or record) to PLY.

    frame None: "lidar", or the file's own frame for an Occ3D labels.npz (no LiDAR calibration).

    mode: "points" (a vertex per voxel centre or LiDAR point) or "cubes" (8 vertices and 6 quads
    or 12 triangles per voxel). frame: "lidar" or "ego", from the record's own frame through
    lidar2ego (or its inverse for an ego-frame record). exclude: class
    names to leave out (default: noise and empty). source: "voxels", "points" (LiDAR points and
    their predicted labels), "gt_voxels", "gt_points". Binary little-endian unless `ascii`.
    """
    pred = input if isinstance(input, Prediction) else load_prediction(input)
    if frame is None:
        frame = "lidar" if has_lidar_calibration(pred) else pred.frame
    return export_prediction_ply(pred, out, mode, ascii, frame, exclude, source, faces)


def with_dataset_ground_truth(
    pred: Prediction,
    infos: str | Path,
    cfg: Config | None = None,
    overrides: Sequence[str] = (),
) -> Prediction:
    """`pred` with the dataset's ground truth of its sample (from `infos`) where its file holds
    none: voxel labels on the file's own grid (tpvkit.outputs.predict.ground_truth_on_grid; a
    `cfg` on another grid is refused), point labels when the points are the same cloud."""
    import dataclasses

    from tpvkit.outputs.predict import config_on_grid, ground_truth_on_grid

    if cfg is not None:
        config_on_grid(pred, cfg)  # a config on another grid is refused, needed or not
    if pred.gt_voxels is not None and pred.gt_point_labels is not None:
        return pred
    truth = ground_truth_on_grid(pred, infos, cfg, overrides)
    same_cloud = pred.points is not None and truth.points is not None
    same_cloud = same_cloud and len(pred.points) == len(truth.points)  # type: ignore[arg-type]
    return dataclasses.replace(
        pred,
        gt_voxels=truth.gt_voxels if pred.gt_voxels is None else pred.gt_voxels,
        gt_point_labels=truth.gt_point_labels
        if pred.gt_point_labels is None and same_cloud
        else pred.gt_point_labels,
    )


def export_ground_truth(
    cfg,
    infos: str | Path,
    token: str,
    out: str | Path,
    mode: str = "points",
    ascii: bool = False,
    frame: str = "lidar",
    exclude: Sequence[str] | None = None,
    source: str = "voxels",
    faces: str = "quads",
) -> ExportResult:
    """Export the ground truth of one dataset sample, voxelised exactly as for training.

    `cfg` (tpvkit.config.Config) fixes the grid; source "voxels" writes the voxel labels,
    "points" the labelled LiDAR points.
    """
    from tpvkit.outputs.predict import ground_truth_record

    _choice(source, ("voxels", "points"), "source")
    pred = ground_truth_record(cfg, infos, token)
    return export_prediction_ply(pred, out, mode, ascii, frame, exclude, "gt_" + source, faces)
