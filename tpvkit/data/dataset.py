"""The torch Dataset of LiDAR-segmentation samples (6 images + every LiDAR point + labels), its
training augmentations and the collate function that pads point clouds into batches.

Batch keys and dtypes are the contract of docs/internals.md ("Batches").
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tpvkit.config import DataConfig, ModelConfig
from tpvkit.constants import CAMERA_ORDER, LABEL_MAP_32_TO_16
from tpvkit.data import geometry, occ3d
from tpvkit.data.infos import InfoSet, load_infos
from tpvkit.data.inputs import SceneInputs
from tpvkit.errors import TpvkitError

POINT_DIMS = 5  # x, y, z, intensity, ring (float32 each) in a nuScenes .pcd.bin
_LABEL_MAP = np.asarray(LABEL_MAP_32_TO_16, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# File readers


def read_points(path: Path) -> np.ndarray:
    """A nuScenes .pcd.bin -> (N, 5) float32; a truncated or missing file is a TpvkitError."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TpvkitError(f"LiDAR file {path} is missing") from None
    except OSError as err:
        raise TpvkitError(f"LiDAR file {path} cannot be read: {err}") from err
    row_bytes = POINT_DIMS * 4
    if len(raw) % row_bytes:
        raise TpvkitError(
            f"LiDAR file {path} is truncated or not a nuScenes .pcd.bin: {len(raw)} bytes is "
            f"not a multiple of {row_bytes} (5 float32 per point); re-extract it or regenerate "
            "the data"
        )
    return np.frombuffer(raw, dtype=np.float32).reshape(-1, POINT_DIMS)


def read_labels(path: Path, num_points: int, points_path: Path | None = None) -> np.ndarray:
    """A *_lidarseg.bin (uint8, 32-class general index) -> (N,) int64 challenge labels 0..16.

    `points_path` (the point cloud the labels belong to) is named in the count-mismatch error.
    """
    cloud = f"LiDAR file {points_path}" if points_path is not None else "the point cloud"
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise TpvkitError(
            f"lidarseg label file {path} (labels of {cloud}) is missing; re-extract the lidarseg "
            "archive or regenerate the data"
        ) from None
    except OSError as err:
        raise TpvkitError(f"lidarseg label file {path} cannot be read: {err}") from err
    if len(raw) != num_points:
        raise TpvkitError(
            f"lidarseg label file {path} holds {len(raw)} labels but {cloud} holds {num_points} "
            "points: the label file does not belong to this point cloud (or one of them is "
            "truncated); re-extract both or regenerate the data"
        )
    if len(raw) and int(raw.max()) >= len(_LABEL_MAP):
        raise TpvkitError(
            f"lidarseg label file {path} holds label {int(raw.max())}; nuScenes general labels "
            f"are 0..{len(_LABEL_MAP) - 1}"
        )
    return map_labels_32_to_16(raw)


def map_labels_32_to_16(labels: np.ndarray) -> np.ndarray:
    """General nuScenes labels (0..31) -> challenge labels (0..16), one vectorised lookup."""
    return _LABEL_MAP[np.asarray(labels, dtype=np.int64)]


def read_image(path: Path) -> Image.Image:
    """An RGB PIL image; missing or undecodable files are TpvkitErrors naming the file."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise TpvkitError(f"image {path} is missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise TpvkitError(
            f"image {path} is corrupt or not a JPEG: {err}; re-extract it or regenerate the data"
        ) from err


# ---------------------------------------------------------------------------------------------
# Augmentations (torch RNG, so DataLoader worker seeds make them reproducible)


def _rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB in [0, 255] -> HSV with H in degrees [0, 360), S in [0, 1], V in [0, 255]."""
    r, g, b = img
    v, _ = img.max(dim=0)
    c = v - img.min(dim=0).values
    s = torch.where(v > 0, c / v.clamp(min=1e-12), torch.zeros_like(v))
    safe_c = c.clamp(min=1e-12)
    h = torch.where(
        v == r,
        ((g - b) / safe_c) % 6,
        torch.where(v == g, (b - r) / safe_c + 2, (r - g) / safe_c + 4),
    )
    h = torch.where(c > 0, h * 60.0, torch.zeros_like(h))
    return torch.stack([h, s, v])


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of _rgb_to_hsv, with the closed form f(n) = V - V S clamp(min(k, 4 - k), 0, 1),
    k = (n + H / 60) mod 6, n = 5, 3, 1 for R, G, B (no per-sector table in memory)."""
    h, s, v = hsv
    n = torch.tensor([5.0, 3.0, 1.0], dtype=hsv.dtype, device=hsv.device).view(3, 1, 1)
    k = (n + h / 60.0) % 6.0
    return v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


def _coin() -> bool:
    return bool(torch.randint(0, 2, ()).item())


def photometric_distortion(
    img: torch.Tensor,
    brightness_delta: float = 32.0,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: float = 18.0,
    channel_swap: bool = True,
) -> torch.Tensor:
    """mmdet's PhotoMetricDistortion on a (3, H, W) RGB float image in [0, 255].

    Each step runs with probability 1/2: brightness shift, contrast scale (before or after the
    HSV steps, chosen at random), saturation scale, hue shift, a random channel permutation.
    Unlike mmdet the values are clipped to [0, 255] before the HSV conversion, where negative
    intensities have no meaning. hue_delta=0 and channel_swap=False leave colours' hues alone
    (for data whose classes are told apart by colour, such as the synthetic world). The random
    draws are the same whatever the options, so switching one off changes nothing else.
    """
    img = img.clone()
    if _coin():
        img += _uniform(-brightness_delta, brightness_delta)
    contrast_first = _coin()
    if contrast_first and _coin():
        img *= _uniform(*contrast_range)
    img = img.clamp(0.0, 255.0)
    do_saturation, do_hue = _coin(), _coin()
    if do_saturation or do_hue:
        hsv = _rgb_to_hsv(img)
        if do_saturation:
            hsv[1] = (hsv[1] * _uniform(*saturation_range)).clamp(0.0, 1.0)
        if do_hue:
            hsv[0] = (hsv[0] + _uniform(-hue_delta, hue_delta)) % 360.0  # delta 0: unchanged
        img = _hsv_to_rgb(hsv)
    if not contrast_first and _coin():
        img *= _uniform(*contrast_range)
    if _coin():
        perm = torch.randperm(3)
        if channel_swap:
            img = img[perm]
    return img


def grid_mask_from_params(
    height: int, width: int, period: int, start_h: int, start_w: int, ratio: float = 0.5
) -> torch.Tensor:
    """The (H, W) GridMask of given period d and phase: 1 on rows or columns whose offset from
    the phase is < keep (mod d), with keep = round(d * ratio) in [1, d - 1], 0 on the square
    holes between them. Drawn on a 1.5x canvas, then centre-cropped (BEVFormer's GridMask,
    mode 1, no rotation)."""
    hh, ww = int(1.5 * height), int(1.5 * width)
    keep = min(max(int(period * ratio + 0.5), 1), period - 1)

    def stripes(n: int, start: int) -> torch.Tensor:
        offset = torch.arange(n) - start
        # only the n // d stripes the reference loop draws (none past the last full period)
        return (offset >= 0) & (offset // period < n // period) & (offset % period < keep)

    visible = stripes(hh, start_h)[:, None] | stripes(ww, start_w)[None, :]
    top, left = (hh - height) // 2, (ww - width) // 2
    return visible[top : top + height, left : left + width].float()


def grid_mask(height: int, width: int, ratio: float = 0.5) -> torch.Tensor:
    """A random GridMask (TPVFormer's training setting) of period d in [2, H) and random phase."""
    period = int(torch.randint(2, max(height, 3), ()).item())
    start_h = int(torch.randint(0, period, ()).item())
    start_w = int(torch.randint(0, period, ()).item())
    return grid_mask_from_params(height, width, period, start_h, start_w, ratio)


# ---------------------------------------------------------------------------------------------
# Dataset


class LidarSegDataset(torch.utils.data.Dataset):
    """Samples of an info file as model inputs and targets (one dict per key frame).

    Items: inputs, the model's inputs (tpvkit.data.inputs.SceneInputs of batch size 1): img
    float32 (1, 6, 3, H, W) plain RGB in [0, 255] at data.img_size (the model normalises and
    pads: tpvkit.models.tpvformer.TPVFormer.normalize), projection float32 (1, 6, 4, 4) from the
    grid frame (lidar2img, or ego2img for an ego-frame model), intrinsics (1, 6, 3, 3) and
    extrinsics (1, 6, 4, 4) (grid frame -> camera) of the resized images, points float32
    (1, N, 3) (grid frame), frame; and the targets:
    point_labels int64 (N,), point_voxel_index int64 (N, 3), voxel_labels int64 (X, Y, Z),
    token, lidar_token. Every point of the sweep is kept, in file order. When the info file
    links Occ3D labels: occ_semantics, occ_mask_camera, occ_mask_lidar, ray_origins
    (tpvkit.data.occ3d.dataset_targets; docs/occupancy.md).
    """

    def __init__(
        self,
        infos: str | Path | InfoSet,
        data_cfg: DataConfig,
        model_cfg: ModelConfig,
        train: bool,
        dataroot: str | Path | None = None,
        voxel_label_ignore: int | None = None,
    ) -> None:
        """The dataroot is, in
        order: the argument, data_cfg.dataroot, the info file's own. `voxel_label_ignore`: a
        label that does not vote for voxel labels (default None: every label votes, as the
        public code)."""
        root = dataroot or (data_cfg.dataroot or None)
        if isinstance(infos, InfoSet):
            self.infos = dataclasses.replace(infos, dataroot=Path(root)) if root else infos
        else:
            self.infos = load_infos(infos, dataroot=root)
        if len(self.infos) == 0:
            where = self.infos.path or "the info set"
            raise TpvkitError(f"{where} holds no samples: nothing to load")
        self.train = train
        self.data_cfg = data_cfg
        self.img_size = (int(data_cfg.img_size[0]), int(data_cfg.img_size[1]))
        self.size_divisor = max(int(data_cfg.size_divisor), 1)
        # The model normalises (TPVFormer.normalize); the GridMask fills its holes with the
        # mean colour, in RGB order, which the model's normalisation maps to exactly 0.
        mean = torch.tensor(data_cfg.img_mean, dtype=torch.float32)
        self.mean_rgb = (mean if data_cfg.to_rgb else mean.flip(0)).view(3, 1, 1)
        self.point_cloud_range = [float(v) for v in model_cfg.point_cloud_range]
        head = model_cfg.head
        self.grid = geometry.voxel_grid_shape(
            model_cfg.tpv_w,
            model_cfg.tpv_h,
            model_cfg.tpv_z,
            head.scale_w,
            head.scale_h,
            head.scale_z,
        )
        self.voxel_convention = data_cfg.voxel_convention
        self.voxel_label_ignore = voxel_label_ignore
        # the frame of the model's grid; "ego": lidar2img and points move to the ego frame
        self.grid_frame = getattr(model_cfg, "grid_frame", "lidar")
        self.ray_origins = None  # per sample, when the info file links Occ3D labels
        if any(s.get(occ3d.INFO_FIELD) for s in self.infos.samples):
            self.ray_origins = occ3d.scene_ray_origins(self.infos.samples)

    def __len__(self) -> int:
        return len(self.infos)

    def padded_size(self) -> tuple[int, int]:
        """(Hp, Wp): the resize target rounded up to the size divisor, the size the model pads
        the images to."""
        return geometry.padded_image_size(self.img_size, self.size_divisor)

    def _load_camera(
        self, cam_info: dict[str, Any], out: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One camera: its resized RGB image (float, 0..255, photometric augmentation in
        training) into `out` (3, H, W); returns the (4, 4) lidar2img of the resized image, its
        (3, 3) intrinsic K and the (4, 4) lidar2cam (lidar2img = pad4(K) @ lidar2cam)."""
        path = self.infos.resolve(cam_info["img_path"])
        im = read_image(path)
        w0, h0 = im.size
        expected = (cam_info.get("width"), cam_info.get("height"))
        if None not in expected and (w0, h0) != expected:
            raise TpvkitError(
                f"image {path} is {w0}x{h0} but the info file records {expected[0]}x"
                f"{expected[1]}: its intrinsics would not match; rebuild the info file"
            )
        H, W = self.img_size
        if (w0, h0) != (W, H):
            im = im.resize((W, H), Image.BILINEAR)
        K = geometry.scale_intrinsic(cam_info["cam_intrinsic"], W / w0, H / h0)
        rotation = np.asarray(cam_info["sensor2lidar_rotation"])
        translation = np.asarray(cam_info["sensor2lidar_translation"])
        lidar2img = geometry.lidar2img_from_sensor2lidar(rotation, translation, K)
        lidar2cam = geometry.lidar2img_from_sensor2lidar(rotation, translation, np.eye(3))
        img = torch.from_numpy(np.array(im)).permute(2, 0, 1)  # (3, H, W) uint8 RGB
        if self.train and self.data_cfg.photometric_aug:
            img = photometric_distortion(
                img.float(),
                hue_delta=self.data_cfg.photometric_hue_delta,
                channel_swap=self.data_cfg.photometric_channel_swap,
            )
        out.copy_(img)
        return lidar2img, K, lidar2cam

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.infos[index]
        h, w = self.img_size
        img_t = torch.zeros(len(CAMERA_ORDER), 3, h, w)  # (6, 3, H, W) RGB 0..255
        cameras = [
            self._load_camera(sample["cams"][cam], img_t[i]) for i, cam in enumerate(CAMERA_ORDER)
        ]
        lidar2imgs = [c[0] for c in cameras]
        intrinsics = np.stack([c[1] for c in cameras])  # (6, 3, 3)
        extrinsics = np.stack([c[2] for c in cameras])  # (6, 4, 4) grid frame -> camera
        if (
            self.train
            and self.data_cfg.grid_mask
            and float(torch.rand(())) < self.data_cfg.grid_mask_prob
        ):
            # One mask for all cameras, drawn on the padded size (the model pads, the random
            # draws stay those of a padded image) and cropped to the image.
            mask = grid_mask(*self.padded_size())[:h, :w]
            img_t = torch.where(mask.bool(), img_t, self.mean_rgb)

        points = read_points(self.infos.resolve(sample["lidar_path"]))
        xyz = np.ascontiguousarray(points[:, :3])
        if self.grid_frame == "ego":
            xyz = np.ascontiguousarray(occ3d.lidar_to_frame(xyz, sample, "ego"))
            lidar2ego = occ3d.lidar2ego_matrix(sample)
            lidar2imgs = list(occ3d.ego2img_from_lidar2img(np.stack(lidar2imgs), lidar2ego))
            extrinsics = occ3d.ego2img_from_lidar2img(extrinsics, lidar2ego)  # ego -> camera
        flip = self.draw_grid_flip() if self.train and self.data_cfg.grid_flip else (1, 1)
        if flip != (1, 1):
            # a point q of the mirrored grid is the point F q of the real one: F is its own
            # inverse, so the projections become lidar2img @ F and the points F xyz
            mirror = np.diag([float(flip[0]), float(flip[1]), 1.0, 1.0])
            lidar2imgs = [m @ mirror for m in lidar2imgs]
            extrinsics = extrinsics @ mirror
            xyz = np.ascontiguousarray(xyz * mirror[:3, :3].diagonal().astype(np.float32))
        if sample.get("lidarseg_path"):
            lidar_path = self.infos.resolve(sample["lidar_path"])
            labels = read_labels(
                self.infos.resolve(sample["lidarseg_path"]), len(points), points_path=lidar_path
            )
        else:  # test split: no labels, every point ignored
            labels = np.zeros(len(points), dtype=np.int64)
        voxel_index = geometry.point_voxel_indices(
            xyz, self.point_cloud_range, self.grid, self.voxel_convention
        )
        voxel_labels = geometry.voxel_majority_labels(
            voxel_index, labels, self.grid, ignore_index=self.voxel_label_ignore
        )
        inputs = SceneInputs(
            img=img_t[None],  # (1, 6, 3, H, W)
            projection=torch.from_numpy(np.stack(lidar2imgs)).float()[None],  # (1, 6, 4, 4)
            frame=self.grid_frame,
            points=torch.from_numpy(xyz)[None],  # (1, N, 3)
            intrinsics=torch.from_numpy(intrinsics).float()[None],
            extrinsics=torch.from_numpy(extrinsics).float()[None],
        )
        item = {
            "inputs": inputs,
            "point_labels": torch.from_numpy(labels),  # (N,)
            "point_voxel_index": torch.from_numpy(voxel_index),  # (N, 3)
            "voxel_labels": torch.from_numpy(voxel_labels),  # (X, Y, Z)
            "token": sample["token"],
            "lidar_token": sample.get("lidar_token") or "",
        }
        if self.ray_origins is not None and sample.get(occ3d.INFO_FIELD):
            targets = occ3d.dataset_targets(sample, self.infos, self.ray_origins[index])
            if flip != (1, 1):
                targets = occ3d.flip_targets(targets, flip)
            item.update(targets)
        return item

    def draw_grid_flip(self) -> tuple[int, int]:
        """(sx, sy), each -1 (mirror that axis) with probability 0.5 (data.grid_flip)."""
        draws = torch.rand(2)
        return (-1 if draws[0] < 0.5 else 1, -1 if draws[1] < 0.5 else 1)


def collate_batch(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Items of LidarSegDataset -> a batch (docs/internals.md): point clouds padded to the
    largest with zeros, label 0 and point_mask False."""
    if not samples:
        raise ValueError("collate_batch needs at least one sample")
    B = len(samples)
    inputs = SceneInputs.collate([s["inputs"] for s in samples])
    counts = [int(s["inputs"].points.shape[1]) for s in samples]
    n_max = max(counts)
    labels = torch.zeros(B, n_max, dtype=torch.int64)
    mask = torch.zeros(B, n_max, dtype=torch.bool)
    voxel_index = torch.zeros(B, n_max, 3, dtype=torch.int64)
    for b, (s, n) in enumerate(zip(samples, counts, strict=True)):
        labels[b, :n] = s["point_labels"]
        mask[b, :n] = True
        voxel_index[b, :n] = s["point_voxel_index"]
    return {
        "inputs": inputs,
        "point_labels": labels,
        "point_mask": mask,
        "num_points": torch.tensor(counts, dtype=torch.int64),
        "point_voxel_index": voxel_index,
        "voxel_labels": torch.stack([s["voxel_labels"] for s in samples]).long(),
        "tokens": [s["token"] for s in samples],
        "lidar_tokens": [s["lidar_token"] for s in samples],
        **occ3d.collate_targets(samples),
    }


def _seed_worker(worker_id: int) -> None:
    """numpy and random follow torch's per-worker seed, so every RNG differs across workers."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_dataloader(
    dataset: torch.utils.data.Dataset,
    batch_size: int = 1,
    num_workers: int = 0,
    shuffle: bool = False,
    distributed: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    num_replicas: int | None = None,
    rank: int | None = None,
    *,
    sampler: torch.utils.data.Sampler | None = None,
    collate_fn: Callable[[list[Any]], Any] = collate_batch,
    persistent_workers: bool | None = None,
) -> torch.utils.data.DataLoader:
    """The one DataLoader builder (training, validation, eval, predict): collate_batch, worker
    RNGs seeded from `seed` (torch's worker seeds come from a generator seeded with it, numpy's
    and random's follow them), and the sample order from `sampler` or `shuffle`.

    `sampler` (e.g. the trainer's tpvkit.engine.distributed.ShardedSampler) decides the order
    and the share of this rank; without one, distributed=True uses a DistributedSampler over
    the ranks of the initialised process group (or `num_replicas` given explicitly, this being
    `rank`; call loader.sampler.set_epoch(epoch) every epoch). `persistent_workers` None keeps
    the workers of a loader that has any (a loader iterated once passes False).
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    if sampler is None and distributed:
        sampler = torch.utils.data.DistributedSampler(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        pin_memory=pin_memory,
        worker_init_fn=_seed_worker,
        generator=generator,
        persistent_workers=persistent_workers and num_workers > 0,
    )
