"""`tpvkit predict`: run a trained model over the samples of an info file and write one
prediction file (.npz, see prediction_file.py) per sample; also the ground-truth record of a
sample, through the same dataset pipeline, for export and pictures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpvkit.constants import CAMERA_ORDER, EMPTY_CLASS_NAME, IGNORE_INDEX
from tpvkit.errors import TpvkitError
from tpvkit.outputs.prediction_file import (
    Prediction,
    default_class_names,
    default_palette,
    save_prediction,
)


def voxel_size_of(model_cfg: Any, voxel_convention: str) -> np.ndarray:
    """(3,) float64 metres per voxel of the model's output grid, as the dataset voxelises."""
    from tpvkit.data.geometry import voxel_grid_shape, voxel_size

    head = model_cfg.head
    grid = voxel_grid_shape(
        model_cfg.tpv_w, model_cfg.tpv_h, model_cfg.tpv_z, head.scale_w, head.scale_h, head.scale_z
    )
    return voxel_size(model_cfg.point_cloud_range, grid, voxel_convention)


def select_samples(info_set: Any, tokens: Sequence[str] | None, where: str) -> list[int]:
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


def camera_fields(info_set: Any, sample: dict[str, Any]) -> dict[str, Any]:
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


def argmax_voxels(voxel_logits: torch.Tensor, chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, X, Y, Z) logits -> class (X, Y, Z) uint8 and its probability (float16).

    The ignore class is never predicted (tpvkit.outputs.metrics.predict_classes) and its logit,
    meaningless after training with it ignored, is left out of the softmax too. X is walked in
    slices so the temporary copies stay small for the 200x200x16 grid.
    """
    from tpvkit.outputs.metrics import predict_classes

    labels, confidence = [], []
    for start in range(0, voxel_logits.shape[1], chunk):
        part = voxel_logits[:, start : start + chunk].float()
        cls = predict_classes(part, class_dim=0)  # (x, Y, Z)
        real = part.clone()
        real[IGNORE_INDEX] = float("-inf")
        prob = torch.softmax(real, dim=0).gather(0, cls[None])[0]
        labels.append(cls.to(torch.uint8))
        confidence.append(prob.half())
    return torch.cat(labels), torch.cat(confidence)


def _base_fields(cfg: Any, info_set: Any, sample: dict[str, Any]) -> dict[str, Any]:
    class_names = default_class_names(cfg.model.num_classes)
    return {
        "point_cloud_range": np.asarray(cfg.model.point_cloud_range, dtype=np.float64),
        "voxel_size": voxel_size_of(cfg.model, cfg.data.voxel_convention),
        "lidar2ego": lidar2ego_of(sample),
        "class_names": class_names,
        "palette": default_palette(class_names),
        "token": str(sample["token"]),
        "lidar_token": str(sample.get("lidar_token") or ""),
        "scene_token": str(sample.get("scene_token") or ""),
        "timestamp": int(sample.get("timestamp", -1)),
        **camera_fields(info_set, sample),
    }


def predict(
    cfg: Any,
    checkpoint: str | Path,
    infos: str | Path,
    out_dir: str | Path,
    tokens: Sequence[str] | None = None,
    save_confidence: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Predict every sample of `infos` (or the chosen `tokens`) into <out_dir>/<token>.npz.

    `cfg` is a tpvkit.config.Config matching the checkpoint; the device follows
    cfg.train.device ("auto": a GPU when one is visible). Voxels are decoded in chunks of
    cfg.model.head.voxel_chunk inside the model; the class is the argmax over real classes.
    Returns the written paths, in sample order.
    """
    from tqdm import tqdm

    from tpvkit.data.dataset import LidarSegDataset, collate_batch
    from tpvkit.data.infos import InfoSet, load_infos
    from tpvkit.engine.checkpoint import load_model_weights
    from tpvkit.engine.distributed import select_device
    from tpvkit.models.tpvformer import build_model
    from tpvkit.outputs.metrics import predict_classes

    checkpoint, infos, out_dir = Path(checkpoint), Path(infos), Path(out_dir)
    if not checkpoint.is_file():
        raise TpvkitError(f"checkpoint not found: {checkpoint} (give the .pth written by train)")
    info_set = load_infos(infos)
    chosen = select_samples(info_set, tokens, str(infos))
    if not chosen:
        raise TpvkitError(f"{infos} holds no samples: nothing to predict")
    subset = InfoSet(**{**info_set.__dict__, "samples": [info_set[i] for i in chosen]})

    device = select_device(cfg.train.device)
    model = build_model(cfg.model)
    load_model_weights(model, checkpoint, cfg)
    model.to(device).eval()

    dataset = LidarSegDataset(subset, cfg.data, cfg.model, train=False)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=1,
        shuffle=False,
        num_workers=cfg.data.num_workers,
        collate_fn=collate_batch,
        pin_memory=device.type == "cuda",
    )
    class_names = default_class_names(cfg.model.num_classes)
    empty_label = class_names.index(EMPTY_CLASS_NAME) if EMPTY_CLASS_NAME in class_names else -1
    pc_range = np.asarray(cfg.model.point_cloud_range, dtype=np.float64)

    written: list[Path] = []
    bar = tqdm(loader, total=len(dataset), desc="predict", unit="sample", disable=not progress)
    with torch.inference_mode():
        for i, batch in enumerate(bar):
            sample = subset[i]
            out = model(
                batch["img"].to(device),
                batch["lidar2img"].to(device),
                points=batch["points"].to(device),
                decode_voxels=True,
            )
            n = int(batch["num_points"][0])
            voxels, confidence = argmax_voxels(out["voxel_logits"][0])
            voxels_np = voxels.cpu().numpy()
            point_labels = predict_classes(out["point_logits"][0, :, :n], class_dim=0)
            points = batch["points"][0, :n].numpy()
            voxel_index = batch["point_voxel_index"][0, :n].numpy()
            has_gt = bool(sample.get("lidarseg_path"))
            observed = _in_range_occupancy(voxel_index, points, pc_range, voxels_np.shape)
            if empty_label >= 0:
                rule, occupied = "empty_class", voxels_np != empty_label
            else:
                rule, occupied = "lidar_points", observed
            pred = Prediction(
                voxels=voxels_np,
                occupied=occupied,
                empty_label=empty_label,
                occupancy_rule=rule,
                points=points.astype(np.float32),
                point_labels=point_labels.cpu().numpy().astype(np.uint8),
                gt_point_labels=(
                    batch["point_labels"][0, :n].numpy().astype(np.uint8) if has_gt else None
                ),
                gt_voxels=(
                    _displayable_gt(batch["voxel_labels"][0].numpy(), observed) if has_gt else None
                ),
                voxel_confidence=confidence.cpu().numpy() if save_confidence else None,
                **_base_fields(cfg, subset, sample),
            )
            written.append(save_prediction(pred, out_dir / f"{_file_stem(pred.token)}.npz"))
    return written


def _file_stem(token: str) -> str:
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in token)
    return stem or "sample"


def ground_truth_record(cfg: Any, infos: str | Path, token: str) -> Prediction:
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
    points = item["points"].numpy()
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
