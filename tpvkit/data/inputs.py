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
from collections.abc import Callable, Sequence
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

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> SceneInputs:
        """A copy with `fn` applied to every tensor, those of the earlier frames included (a
        new tensor field is added here and in `collate`)."""

        def opt(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else fn(t)

        return dataclasses.replace(
            self,
            img=fn(self.img),
            projection=fn(self.projection),
            points=opt(self.points),
            intrinsics=opt(self.intrinsics),
            extrinsics=opt(self.extrinsics),
            previous=tuple(p._map(fn) for p in self.previous),
            ego_motion=opt(self.ego_motion),
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SceneInputs:
        """Every tensor (and every earlier frame) moved to `device`."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> SceneInputs:
        """Every tensor in page-locked memory (DataLoader(pin_memory=True) calls this)."""
        return self._map(lambda t: t.pin_memory())

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

        clouds = [it.points for it in items]
        points = None
        if any(c is not None for c in clouds):
            present = [c for c in clouds if c is not None]
            if len(present) != len(clouds):
                raise ValueError("a batch mixes samples with and without SceneInputs.points")
            points = _pad_clouds(present)
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


def _pad_clouds(clouds: Sequence[torch.Tensor]) -> torch.Tensor:
    """Point clouds (B_i, N_i, 3) -> (sum of B_i, largest N_i, 3), zero-padded."""
    n_max = max(int(c.shape[1]) for c in clouds)
    out = clouds[0].new_zeros(sum(int(c.shape[0]) for c in clouds), n_max, 3)
    row = 0
    for c in clouds:
        out[row : row + c.shape[0], : c.shape[1]] = c
        row += int(c.shape[0])
    return out
