"""The full TPVFormer: ResNet backbone -> FPN -> TPV encoder -> aggregator/head.

`build_model(cfg.model)` is the one constructor the engine, the CLI and the tests use. The
forward contract (shapes, axes, what is returned) is in docs/internals.md; the architecture,
conventions and checkpoint names in docs/model.md.
"""

from __future__ import annotations

import torch
from torch import nn

from tpvkit.config import ModelConfig
from tpvkit.errors import TpvkitError
from tpvkit.models.backbone import ResNet
from tpvkit.models.encoder import TPVEncoder
from tpvkit.models.head import TPVHead
from tpvkit.models.neck import FPN


class TPVFormer(nn.Module):
    """Camera images -> per-point and per-voxel semantic logits through a TPV (or BEV)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNet(
            cfg.backbone,
            with_cp=cfg.checkpoint_activations,
            channels_last=cfg.channels_last,
        )
        self.neck = FPN(list(self.backbone.out_channels), cfg.dim, cfg.neck.num_outs)
        self.encoder = TPVEncoder(cfg)
        self.head = TPVHead(cfg)

    @property
    def grid(self) -> tuple[int, int, int]:
        """The output voxel grid (X, Y, Z), indexed [x, y, z]."""
        return self.head.grid

    def extract_features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """img (B, N_cam, 3, H, W) -> per FPN level (B, N_cam, C, H_l, W_l); the cameras of
        all samples go through the backbone as one batch."""
        b, n = img.shape[:2]
        feats = self.neck(self.backbone(img.flatten(0, 1)))
        return [f.view(b, n, *f.shape[1:]) for f in feats]

    def forward(
        self,
        img: torch.Tensor,
        lidar2img: torch.Tensor,
        points: torch.Tensor | None = None,
        decode_voxels: bool = True,
        voxel_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """img (B, N_cam, 3, H, W) normalised and padded; lidar2img (B, N_cam, 4, 4) from the
        grid frame (the task's input frame: LiDAR for lidarseg, ego for Occ3D, where it is
        ego2img) to pixels of that padded image; points (B, N, 3) xyz in the grid frame or None;
        voxel_index (B, K, 3) integer [x, y, z] voxels to decode alone, or None.

        Returns "point_logits" (B, n_cls, N) when points are given, "voxel_logits"
        (B, n_cls, X, Y, Z) when decode_voxels and "voxel_logits_at" (B, n_cls, K) for
        voxel_index (docs/internals.md).
        """
        if img.dim() != 5 or lidar2img.shape != (*img.shape[:2], 4, 4):
            raise TpvkitError(
                f"TPVFormer expects img (B, N_cam, 3, H, W) and lidar2img (B, N_cam, 4, 4), "
                f"got {tuple(img.shape)} and {tuple(lidar2img.shape)}"
            )
        if points is not None and (points.dim() != 3 or points.shape[-1] != 3):
            raise TpvkitError(f"points must be (B, N, 3) LiDAR xyz, got {tuple(points.shape)}")
        feats = self.extract_features(img)
        planes = self.encoder(feats, lidar2img, (img.shape[-2], img.shape[-1]))
        return self.head(
            planes, points=points, decode_voxels=decode_voxels, voxel_index=voxel_index
        )


def build_model(cfg: ModelConfig) -> TPVFormer:
    """Build (and initialise) the model a config describes; pretrained weights are loaded by
    the caller (tpvkit.engine) through tpvkit.models.checkpoint_keys."""
    return TPVFormer(cfg)
