"""What a model sees of one scene, as one typed structure (`SceneInputs`).

The Dataset yields it per sample (batch size 1), `collate_batch` joins the samples into the
batch's `SceneInputs` (batch["inputs"]), and the model, the inference loop, the training step,
the losses and the deploy check pass it on as it is: a model that needs more (earlier frames,
ego motion, intrinsics) reads more fields, and no call site in between changes. The ONNX graph
keeps plain tensor inputs (tpvkit.deploy.graph unpacks them into a `SceneInputs`).

Targets (labels, masks, tokens) are not inputs: they stay keys of the batch dict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tpvkit.task import FRAMES


@dataclass
class SceneInputs:
    """The inputs of a batch of scenes (B samples, N_cam cameras each).

    img: float (B, N_cam, 3, H, W) plain RGB in [0, 255] at data.img_size, unpadded (the model
        normalises and pads: TPVFormer.normalize).
    projection: float (B, N_cam, 4, 4) from `frame` to pixels of `img`: lidar2img for a
        LiDAR-frame model, ego2img for an ego-frame one ([u d, v d, d, 1] = P [x, y, z, 1]).
    frame: the frame of `projection`, `points` and the model's grid: "lidar" or "ego" (the
        task's input frame, tpvkit.task.Task.input_frame).
    points: float (B, N, 3) query points in `frame` (zero-padded to the batch's largest cloud;
        the batch's num_points says how many are real), or None.
    intrinsics: float (B, N_cam, 3, 3) K of the resized images, or None (not known).
    extrinsics: float (B, N_cam, 4, 4) `frame` -> camera, or None; when both are given,
        projection == pad4(intrinsics) @ extrinsics.
    previous: earlier frames of the same scenes, most recent first, each a SceneInputs in its
        own frame (no model reads them yet: the place for a multi-frame model's history).
    ego_motion: float (B, len(previous), 4, 4), the transforms from each earlier frame to this
        one (same order as `previous`), or None.
    """

    img: torch.Tensor
    projection: torch.Tensor
    frame: str = "lidar"
    points: torch.Tensor | None = None
    intrinsics: torch.Tensor | None = None
    extrinsics: torch.Tensor | None = None
    previous: tuple[SceneInputs, ...] = field(default=())
    ego_motion: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.frame not in FRAMES:
            raise ValueError(f"SceneInputs.frame must be one of {FRAMES}, got {self.frame!r}")

    @property
    def batch_size(self) -> int:
        return int(self.img.shape[0])

    @property
    def num_cams(self) -> int:
        return int(self.img.shape[1])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SceneInputs:
        """Every tensor (and every earlier frame) moved to `device`."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return dataclasses.replace(
            self,
            img=move(self.img),
            projection=move(self.projection),
            points=move(self.points),
            intrinsics=move(self.intrinsics),
            extrinsics=move(self.extrinsics),
            previous=tuple(p.to(device, non_blocking) for p in self.previous),
            ego_motion=move(self.ego_motion),
        )

    def pin_memory(self) -> SceneInputs:
        """Every tensor in page-locked memory (DataLoader(pin_memory=True) calls this)."""

        def pin(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.pin_memory()

        return dataclasses.replace(
            self,
            img=pin(self.img),
            projection=pin(self.projection),
            points=pin(self.points),
            intrinsics=pin(self.intrinsics),
            extrinsics=pin(self.extrinsics),
            previous=tuple(p.pin_memory() for p in self.previous),
            ego_motion=pin(self.ego_motion),
        )

    def replace(self, **changes) -> SceneInputs:
        """A copy with some fields changed (dataclasses.replace)."""
        return dataclasses.replace(self, **changes)

    @staticmethod
    def collate(items: Sequence[SceneInputs]) -> SceneInputs:
        """Join the inputs of single samples (or batches) along the batch dimension: images and
        camera matrices are stacked, point clouds zero-padded to the largest. All items must
        agree on the frame and on which optional fields they hold."""
        if not items:
            raise ValueError("SceneInputs.collate needs at least one item")
        frames = {it.frame for it in items}
        if len(frames) > 1:
            raise ValueError(f"a batch mixes inputs in frames {sorted(frames)}")

        def cat(name: str) -> torch.Tensor | None:
            values = [getattr(it, name) for it in items]
            if all(v is None for v in values):
                return None
            if any(v is None for v in values):
                raise ValueError(f"a batch mixes samples with and without SceneInputs.{name}")
            return torch.cat(values)

        points = None
        if any(it.points is not None for it in items):
            if any(it.points is None for it in items):
                raise ValueError("a batch mixes samples with and without SceneInputs.points")
            n_max = max(int(it.points.shape[1]) for it in items)  # type: ignore[union-attr]
            first = items[0].points
            points = first.new_zeros(sum(it.batch_size for it in items), n_max, 3)  # type: ignore[union-attr]
            row = 0
            for it in items:
                p = it.points
                points[row : row + p.shape[0], : p.shape[1]] = p  # type: ignore[union-attr]
                row += p.shape[0]  # type: ignore[union-attr]
        depth = {len(it.previous) for it in items}
        if len(depth) > 1:
            raise ValueError(f"a batch mixes samples with {sorted(depth)} earlier frames")
        previous = tuple(
            SceneInputs.collate([it.previous[t] for it in items]) for t in range(depth.pop())
        )
        return SceneInputs(
            img=torch.cat([it.img for it in items]),
            projection=torch.cat([it.projection for it in items]),
            frame=items[0].frame,
            points=points,
            intrinsics=cat("intrinsics"),
            extrinsics=cat("extrinsics"),
            previous=previous,
            ego_motion=cat("ego_motion"),
        )
