"""Prediction records (.npz, see prediction_file.py) from a model's outputs for one sample, and
the ground-truth record of a sample through the same dataset pipeline, for export and pictures.

The loop that runs the model is tpvkit.engine.predict (through tpvkit.engine.inference); this
module holds only what a prediction file contains.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tpvkit.config import Config, ModelConfig, task_of
from tpvkit.constants import CAMERA_ORDER, IGNORE_INDEX
from tpvkit.errors import TpvkitError
from tpvkit.outputs.prediction_file import Prediction

if TYPE_CHECKING:
    from tpvkit.data.infos import InfoSet


def voxel_size_of(model_cfg: ModelConfig, voxel_convention: str) -> np.ndarray:
    """(3,) float64 metres per voxel of the model's output grid, as the dataset voxelises."""
    from tpvkit.data.geometry import voxel_grid_shape, voxel_size

    head = model_cfg.head
    grid = voxel_grid_shape(
        model_cfg.tpv_w, model_cfg.tpv_h, model_cfg.tpv_z, head.scale_w, head.scale_h, head.scale_z
    )
    return voxel_size(model_cfg.point_cloud_range, grid, voxel_convention)


def select_samples(info_set: InfoSet, tokens: Sequence[str] | None, where: str) -> list[int]:
    """Indices of the chosen sample tokens (all when None), in the given order."""
    if tokens is None:
        return list(range(len(info_set)))
    index = {s["token"]: i for i, s in enumerate(info_set.samples)}
    unknown = [t for t in tokens if t not in index]
    if unknown:
        some = ", ".join(list(index)[:3])
        raise TpvkitError(
            f"{len(unknown)} token(s) not in {where}: {', '.join(unknown[:5])}; the file holds "
            f"{len(index)} sample tokens (e.g. {some})"
        )
    if not tokens:
        raise TpvkitError("--tokens is empty: give comma-separated sample tokens or leave it out")
    return [index[t] for t in tokens]


def camera_fields(info_set: InfoSet, sample: dict[str, Any]) -> dict[str, Any]:
    """The cam_* keys of a prediction file: names, absolute image paths, the 4x4 lidar2img of
    the original image size and that size (H, W), in CAMERA_ORDER."""
    from PIL import Image

    from tpvkit.data import geometry

    names, paths, mats, sizes = [], [], [], []
    for cam in CAMERA_ORDER:
        info = sample["cams"][cam]
        path = Path(info_set.resolve(info["img_path"])).resolve()
        if "lidar2img" in info:
            mat = np.asarray(info["lidar2img"], dtype=np.float64)
        else:
            mat = geometry.lidar2img_from_sensor2lidar(
                np.asarray(info["sensor2lidar_rotation"]),
                np.asarray(info["sensor2lidar_translation"]),
                np.asarray(info["cam_intrinsic"]),
            )
        if info.get("width") and info.get("height"):
            size = (int(info["height"]), int(info["width"]))
        else:
            with Image.open(path) as im:  # reads the header only
                size = (im.height, im.width)
        names.append(cam)
        paths.append(str(path))
        mats.append(mat)
        sizes.append(size)
    return {
        "cam_names": tuple(names),
        "cam_paths": tuple(paths),
        "cam_lidar2img": np.stack(mats),
        "cam_image_sizes": np.asarray(sizes, dtype=np.int64),
    }


def lidar2ego_of(sample: dict[str, Any]) -> np.ndarray:
    """(4, 4) LiDAR -> ego pose of an info record (identity when the record lacks it)."""
    from tpvkit.data import geometry

    if "lidar2ego_translation" in sample and "lidar2ego_rotation" in sample:
        return geometry.pose_matrix(sample["lidar2ego_translation"], sample["lidar2ego_rotation"])
    return np.eye(4)


def _in_range_occupancy(
    voxel_index: np.ndarray, points: np.ndarray, pc_range: np.ndarray, grid: tuple[int, ...]
) -> np.ndarray:
    """bool (X, Y, Z): voxels holding at least one point inside the point-cloud range.

    The dataset clips out-of-range points into the border voxels (right for labels, wrong for
    drawing: it would build a wall at the border), so those points do not count here.
    """
    inside = np.all((points >= pc_range[:3]) & (points <= pc_range[3:]), axis=1)
    occupied = np.zeros(grid, dtype=bool)
    occupied[tuple(voxel_index[inside].T)] = True
    return occupied


def _displayable_gt(voxel_labels: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """uint8 (X, Y, Z) ground-truth voxels for files and pictures: the dataset's majority-vote
    labels, 0 in voxels that only hold points from outside the range (clipped into the border
    voxels by the dataset)."""
    return np.where(observed, voxel_labels, 0).astype(np.uint8)


def argmax_voxels(
    voxel_logits: torch.Tensor, chunk: int = 8, ignore_index: int | None = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, X, Y, Z) logits -> class (X, Y, Z) uint8 and its probability (float16).

    `ignore_index` is the label space's ignored class (tpvkit.task.LabelSpace; lidarseg's 0
    "noise"): it is never predicted (tpvkit.outputs.metrics.predict_classes) and its logit,
    meaningless after training with it ignored, is left out of the softmax too. None (Occ3D,
    whose class 0 "others" is trained like any other) takes the plain argmax over all classes,
    as the Occ3D evaluation does. X is walked in slices so the temporary copies stay small for
    the 200x200x16 grid.
    """
    from tpvkit.outputs.metrics import predict_classes

    labels, confidence = [], []
    for start in range(0, voxel_logits.shape[1], chunk):
        part = voxel_logits[:, start : start + chunk].float()
        if ignore_index is None:
            prob, cls = torch.softmax(part, dim=0).max(dim=0)
            labels.append(cls.to(torch.uint8))
            confidence.append(prob.half())
            continue
        cls = predict_classes(part, class_dim=0, ignore_index=ignore_index)  # (x, Y, Z)
        real = part.clone()
        real[ignore_index] = float("-inf")
        prob = torch.softmax(real, dim=0).gather(0, cls[None])[0]
        labels.append(cls.to(torch.uint8))
        confidence.append(prob.half())
    return torch.cat(labels), torch.cat(confidence)


def _base_fields(cfg: Config, info_set: InfoSet, sample: dict[str, Any]) -> dict[str, Any]:
    """The fields every record of `sample` shares: task, grid, frame, classes, tokens, cameras.

    The task (tpvkit.config.task_of) gives the classes, their colours and the grid; a task whose
    inputs are in the ego frame (Occ3D) gets cam_lidar2img mapping ego-frame points to pixels
    (tpvkit.data.occ3d.ego2img_from_lidar2img).
    """
    from tpvkit.data.occ3d import ego2img_from_lidar2img

    task = task_of(cfg)
    assert task.grid is not None  # task_of always places the task on the model's grid
    space = task.label_space
    cams = camera_fields(info_set, sample)
    if task.input_frame == "ego":
        cams["cam_lidar2img"] = ego2img_from_lidar2img(cams["cam_lidar2img"], lidar2ego_of(sample))
    return {
        "task": task,
        "point_cloud_range": np.asarray(task.grid.range, dtype=np.float64),
        "voxel_size": np.asarray(task.grid.voxel_size, dtype=np.float64),
        "lidar2ego": lidar2ego_of(sample),
        "class_names": space.class_names,
        "palette": np.array(space.palette, dtype=np.uint8),
        "token": str(sample["token"]),
        "lidar_token": str(sample.get("lidar_token") or ""),
        "scene_token": str(sample.get("scene_token") or ""),
        "timestamp": int(sample.get("timestamp", -1)),
        "frame": task.grid_frame,
        **cams,
    }


def build_prediction(
    cfg: Config,
    info_set: InfoSet,
    sample: dict[str, Any],
    *,
    voxel_logits: torch.Tensor,
    point_logits: torch.Tensor,
    points: np.ndarray,
    point_voxel_index: np.ndarray,
    gt_point_labels: np.ndarray | None = None,
    gt_voxel_labels: np.ndarray | None = None,
    save_confidence: bool = False,
    occ_semantics: np.ndarray | None = None,
    occ_mask_camera: np.ndarray | None = None,
    occ_mask_lidar: np.ndarray | None = None,
) -> Prediction:
    """The prediction record of one sample from the model's outputs for it.

    `voxel_logits` (C, X, Y, Z) and `point_logits` (C, n) of the n points (N, 3) of the cloud
    (in the model's grid frame), whose voxels the dataset gives as `point_voxel_index` (n, 3).
    The class is the argmax over the classes of the task's label space less its ignored one
    (all 18 for Occ3D, whose class 0 "others" is trained); occupancy follows the free class
    when the label space has one, else the voxels holding a LiDAR point. The ground truth
    (labels (n,), voxels (X, Y, Z)) is stored when given; the dense Occ3D ground truth
    (`occ_semantics` 0..17, the two masks) replaces the point-voted gt_voxels when given.
    """
    from tpvkit.outputs.metrics import predict_classes

    space = task_of(cfg).label_space
    empty_label = -1 if space.free_index is None else space.free_index
    pc_range = np.asarray(cfg.model.point_cloud_range, dtype=np.float64)
    voxels, confidence = argmax_voxels(voxel_logits, ignore_index=space.ignore_index)
    voxels_np = voxels.cpu().numpy()
    if space.ignore_index is None:
        point_labels = point_logits.argmax(dim=0)  # (n,)
    else:
        point_labels = predict_classes(point_logits, class_dim=0, ignore_index=space.ignore_index)
    observed = _in_range_occupancy(point_voxel_index, points, pc_range, voxels_np.shape)
    if empty_label >= 0:
        rule, occupied = "empty_class", voxels_np != empty_label
    else:
        rule, occupied = "lidar_points", observed
    if occ_semantics is not None:
        gt_voxels = np.asarray(occ_semantics).astype(np.uint8)  # Occ3D: 0..17, 17 free
    elif gt_voxel_labels is not None:
        gt_voxels = _displayable_gt(gt_voxel_labels, observed)
    else:
        gt_voxels = None
    return Prediction(
        voxels=voxels_np,
        occupied=occupied,
        empty_label=empty_label,
        occupancy_rule=rule,
        points=points.astype(np.float32),
        point_labels=point_labels.cpu().numpy().astype(np.uint8),
        gt_point_labels=None if gt_point_labels is None else gt_point_labels.astype(np.uint8),
        gt_voxels=gt_voxels,
        gt_mask_camera=None if occ_mask_camera is None else np.asarray(occ_mask_camera, bool),
        gt_mask_lidar=None if occ_mask_lidar is None else np.asarray(occ_mask_lidar, bool),
        voxel_confidence=confidence.cpu().numpy() if save_confidence else None,
        **_base_fields(cfg, info_set, sample),
    )


def config_on_grid(pred: Prediction, cfg: Config | None = None) -> Config:
    """A config whose output grid is `pred`'s (frame, range, shape, voxel size; the task of the
    file), for the dataset to voxelise a sample's ground truth on that grid. `cfg` (the data
    pipeline's settings) must put its model on the same grid when given; a differing one is
    refused naming both."""
    from tpvkit.config import apply_overrides, model_grid
    from tpvkit.task import Grid, voxel_size

    shape = pred.grid_shape
    grid = Grid(
        pred.frame,
        tuple(float(v) for v in pred.point_cloud_range),
        shape,
        (float(pred.voxel_size[0]), float(pred.voxel_size[1]), float(pred.voxel_size[2])),
    )
    if cfg is not None:
        theirs = model_grid(cfg)
        if not theirs.same_as(grid):
            raise TpvkitError(
                f"{pred.source or 'the prediction'}: its grid ({grid.describe()}, voxel "
                f"{list(grid.voxel_size)} m) differs from config '{cfg.name}''s "
                f"({theirs.describe()}, voxel {list(theirs.voxel_size)} m): leave --config out "
                "(the grid comes from the prediction file) or give the config it was made with"
            )
        return cfg
    conventions = [
        c
        for c in ("exact", "tpvformer")
        if np.allclose(voxel_size(grid.range, shape, c), grid.voxel_size, atol=1e-6)
    ]
    if not conventions:
        raise TpvkitError(
            f"{pred.source or 'the prediction'}: voxel_size {list(grid.voxel_size)} is neither "
            f"range / grid nor range / (grid - 1) for {grid.describe()}: not a tpvkit grid"
        )
    overrides = {
        "model.grid_frame": grid.frame,
        "model.point_cloud_range": list(grid.range),
        "model.tpv_w": shape[0],
        "model.tpv_h": shape[1],
        "model.tpv_z": shape[2],
        "model.head.scale_w": 1,
        "model.head.scale_h": 1,
        "model.head.scale_z": 1,
        "model.num_classes": pred.num_classes,
        "data.voxel_convention": conventions[0],
    }
    if pred.task is not None:
        overrides["task"] = pred.task.name
    return apply_overrides(Config(name=f"the grid of {pred.token}", task=""), overrides)


def ground_truth_record(cfg: Config, infos: str | Path, token: str) -> Prediction:
    """The ground truth of one sample as a prediction record: the dataset's majority-vote voxel
    labels (occupied where a labelled point inside the range lies) and the labelled points.

    `cfg` (tpvkit.config.Config) fixes the grid and the voxel convention.
    """
    from tpvkit.data.dataset import LidarSegDataset
    from tpvkit.data.infos import InfoSet, load_infos

    info_set = load_infos(infos)
    (index,) = select_samples(info_set, [token], str(infos))
    sample = info_set[index]
    if not sample.get("lidarseg_path"):
        raise TpvkitError(
            f"sample {token} in {infos} has no lidarseg labels (a test split?): no ground truth"
        )
    subset = InfoSet(**{**info_set.__dict__, "samples": [sample]})
    item = LidarSegDataset(subset, cfg.data, cfg.model, train=False)[0]
    points = item["inputs"].points[0].numpy()
    pc_range = np.asarray(cfg.model.point_cloud_range, dtype=np.float64)
    voxel_labels = item["voxel_labels"].numpy()
    observed = _in_range_occupancy(
        item["point_voxel_index"].numpy(), points, pc_range, voxel_labels.shape
    )
    gt_voxels = _displayable_gt(voxel_labels, observed)
    labels = item["point_labels"].numpy().astype(np.uint8)
    return Prediction(
        voxels=gt_voxels,
        occupied=gt_voxels != 0,
        empty_label=-1,
        occupancy_rule="ground_truth",
        points=points.astype(np.float32),
        gt_point_labels=labels,
        gt_voxels=gt_voxels,
        source=f"{infos} (sample {token})",
        **_base_fields(cfg, subset, sample),
    )


def ground_truth_on_grid(
    pred: Prediction,
    infos: str | Path,
    cfg: Config | None = None,
    overrides: Sequence[str] = (),
) -> Prediction:
    """The dataset's ground truth of `pred`'s sample (from `infos`), voxelised on `pred`'s own
    grid (config_on_grid: a `cfg` on another grid is refused); `overrides` ("key=value", data.*
    keys say) apply to the grid's config when no `cfg` is given."""
    from tpvkit.config import apply_overrides

    grid_cfg = config_on_grid(pred, cfg)
    if cfg is None and overrides:
        grid_cfg = apply_overrides(grid_cfg, list(overrides))
        config_on_grid(pred, grid_cfg)  # an override that moves the grid is refused too
    return ground_truth_record(grid_cfg, infos, pred.token)
