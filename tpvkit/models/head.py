"""The TPV aggregator/head: plane features -> per-point and per-voxel class logits.

A point's feature is the sum of the three planes bilinearly sampled at its projections; a
voxel's feature is the sum of the three planes broadcast along their missing axes. One decoder
(Linear(C, 2C) -> Softplus -> Linear(2C, C)) and one classifier serve points and voxels. Voxels
are decoded in chunks of x-slices, so the (C, X, Y, Z) feature volume never exists at once, and
not at all when decode_voxels=False.

In BEV mode the only plane is hw; a learned height embedding (Z x C, one row per output z
cell, no image information) is added to the sampled hw feature, so the BEV head can tell
heights apart exactly as much as a per-height bias allows (see docs/model.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from tpvkit.config import ModelConfig
from tpvkit.models.geometry import plane_shape, points_to_grid_coords


class TPVHead(nn.Module):
    """Aggregator + decoder + classifier (public tpv_aggregator)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        head = cfg.head
        self.mode = cfg.mode
        self.dim = cfg.dim
        self.num_classes = cfg.num_classes
        self.tpv_h, self.tpv_w, self.tpv_z = cfg.tpv_h, cfg.tpv_w, cfg.tpv_z
        self.scale_h, self.scale_w, self.scale_z = head.scale_h, head.scale_w, head.scale_z
        self.point_cloud_range = [float(v) for v in cfg.point_cloud_range]
        self.point_sampling = head.point_sampling
        self.voxel_chunk = max(1, int(head.voxel_chunk))
        self.checkpoint_activations = cfg.checkpoint_activations
        # Output grid (X, Y, Z) indexed [x, y, z]: X along LiDAR x (w), Y along y (h).
        self.grid = (
            self.tpv_w * self.scale_w,
            self.tpv_h * self.scale_h,
            self.tpv_z * self.scale_z,
        )

        # Optional refinement at the output resolution (tpvkit's occupancy recipe; the public
        # configs have none): per plane, residual 3x3 convolutions on the upsampled map, so that
        # a voxel's feature sees its neighbours on each plane before the per-voxel decoder.
        self.refine = nn.ModuleDict()
        if head.refine_layers > 0:
            names = ("hw", "zh", "wz") if self.mode == "tpv" else ("hw",)
            for name in names:
                self.refine[name] = ResidualRefiner(cfg.dim, head.refine_layers)
        # Optional 3D refinement on the coarse volume (tpvkit's; the public configs have none):
        # its change is added to every voxel's feature, trilinearly upsampled.
        self.volume_refine: ResidualRefiner | None = None
        if head.volume_refine_layers > 0:
            self.volume_refine = ResidualRefiner(cfg.dim, head.volume_refine_layers, spatial_dims=3)

        self.decoder = nn.Sequential(
            nn.Linear(cfg.dim, 2 * cfg.dim), nn.Softplus(), nn.Linear(2 * cfg.dim, cfg.dim)
        )
        self.classifier = nn.Linear(cfg.dim, cfg.num_classes)
        # Decision-time offset of the voxel logits (model.head.voxel_logit_offset), applied in
        # eval mode only: training's loss sees the raw logits.
        offset = torch.tensor(head.voxel_logit_offset or [0.0] * cfg.num_classes)
        self.register_buffer("voxel_logit_offset", offset, persistent=False)
        self.has_voxel_logit_offset = bool(head.voxel_logit_offset) and bool(offset.any())
        self.height_embed: nn.Embedding | None = None
        if self.mode == "bev":
            self.height_embed = nn.Embedding(self.grid[2], cfg.dim)

    # -- planes ---------------------------------------------------------------------------

    def plane_maps(self, planes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per plane (B, Q, C) -> (B, C, rows, cols) at the output resolution.

        hw: (B, C, Y, X); zh: (B, C, Z, Y); wz: (B, C, X, Z). Upsampling is bilinear with
        align_corners=False, applied exactly where the public code applies it.
        """
        names = ("hw", "zh", "wz") if self.mode == "tpv" else ("hw",)
        sh, sw, sz = self.scale_h, self.scale_w, self.scale_z
        scale = {"hw": (sh, sw), "zh": (sz, sh), "wz": (sw, sz)}
        maps = {}
        coarse = {}
        for name, q in zip(names, planes, strict=True):
            rows, cols = plane_shape(name, self.tpv_h, self.tpv_w, self.tpv_z)
            m = q.transpose(1, 2).reshape(q.shape[0], q.shape[2], rows, cols)
            coarse[name] = m
            sr, sc = scale[name]
            if sr != 1 or sc != 1:
                m = F.interpolate(m, size=(rows * sr, cols * sc), mode="bilinear")
            if name in self.refine:
                m = self.refine[name](m)
            maps[name] = m
        if self.volume_refine is not None:
            # (B, C, X, Y, Z) at the TPV resolution, indexed [x, y, z] like the output grid
            vol = (
                coarse["hw"].transpose(2, 3)[:, :, :, :, None]
                + coarse["zh"].permute(0, 1, 3, 2)[:, :, None, :, :]
                + coarse["wz"][:, :, :, None, :]
            )
            maps["volume"] = self.volume_refine(vol) - vol
        return maps

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """(..., C) features -> (..., n_cls) logits."""
        return self.classifier(self.decoder(features))

    # -- points ---------------------------------------------------------------------------

    def point_features(self, maps: dict[str, torch.Tensor], points: torch.Tensor) -> torch.Tensor:
        """points (B, N, 3) LiDAR xyz -> (B, N, C): the planes sampled at the point, summed."""
        b, n, _ = points.shape
        coords = points_to_grid_coords(
            points, self.point_cloud_range, self.grid, self.point_sampling
        )
        g = (coords * 2 - 1).to(maps["hw"].dtype)  # grid_sample's [-1, 1]
        # "center" clamps points into the range and samples there; "border" keeps a point on
        # the range's outer face from blending with zero padding. The public quirk used zeros.
        padding = "border" if self.point_sampling == "center" else "zeros"

        def sample(m: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:  # -> (B, C, N)
            out = F.grid_sample(
                m, xy.view(b, 1, n, 2), mode="bilinear", padding_mode=padding, align_corners=False
            )
            return out.squeeze(2)

        feat = sample(maps["hw"], g[..., [0, 1]])  # hw: cols x, rows y
        if self.mode == "tpv":
            feat = feat + sample(maps["zh"], g[..., [1, 2]])  # zh: cols y, rows z
            feat = feat + sample(maps["wz"], g[..., [2, 0]])  # wz: cols z, rows x
            if "volume" in maps:
                feat = feat + self._sample_volume(maps["volume"], g, padding)
        else:
            assert self.height_embed is not None
            table = self.height_embed.weight.t()[None, :, :, None].expand(b, -1, -1, 1)
            zg = torch.stack([torch.zeros_like(g[..., 2]), g[..., 2]], dim=-1)
            feat = feat + sample(table.to(feat.dtype), zg)  # (C, Z, 1) column, rows z
        return feat.transpose(1, 2)

    # -- voxels ---------------------------------------------------------------------------

    def voxel_features(self, maps: dict[str, torch.Tensor], x0: int, x1: int) -> torch.Tensor:
        """The x-slices [x0, x1) of the voxel features -> (B, x1 - x0, Y, Z, C)."""
        hw = maps["hw"].transpose(2, 3)[:, :, x0:x1, :, None]  # (B, C, x, Y, 1)
        if self.mode == "tpv":
            zh = maps["zh"].transpose(2, 3)[:, :, None, :, :]  # (B, C, 1, Y, Z)
            wz = maps["wz"][:, :, x0:x1, None, :]  # (B, C, x, 1, Z)
            vol = hw + zh + wz
            if "volume" in maps:
                vol = vol + self._volume_slices(maps["volume"], x0, x1)
        else:
            assert self.height_embed is not None
            height = self.height_embed.weight.t()[None, :, None, None, :].to(hw.dtype)
            vol = hw + height
        return vol.permute(0, 2, 3, 4, 1)

    def _voxel_chunk_logits(self, maps: dict[str, torch.Tensor], x0: int, x1: int) -> torch.Tensor:
        return self.decode(self.voxel_features(maps, x0, x1))

    def voxel_logits(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, n_cls, X, Y, Z), decoded in chunks of whole x-slices of ~voxel_chunk voxels."""
        X, Y, Z = self.grid
        step = max(1, self.voxel_chunk // (Y * Z))
        chunks = []
        for x0 in range(0, X, step):
            x1 = min(X, x0 + step)
            if self.checkpoint_activations and torch.is_grad_enabled():
                # Recompute the chunk in backward: only the planes stay alive, not the
                # (chunk, 2C) decoder activations.
                logits = torch.utils.checkpoint.checkpoint(
                    self._voxel_chunk_logits, maps, x0, x1, use_reentrant=False
                )
            else:
                logits = self._voxel_chunk_logits(maps, x0, x1)
            chunks.append(logits)
        return torch.cat(chunks, dim=1).permute(0, 4, 1, 2, 3)

    def voxel_features_at(self, maps: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        """Voxel features at integer grid indices: index (B, K, 3) [x, y, z] -> (B, K, C),
        equal to voxel_features at those voxels without building the volume."""
        X, Y, Z = self.grid
        x, y, z = index.long().unbind(-1)  # (B, K) each

        def gather(m: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:  # -> (B, K, C)
            m = m.flatten(2)  # (B, C, rows * cols)
            return m.gather(2, flat[:, None, :].expand(-1, m.shape[1], -1)).transpose(1, 2)

        feat = gather(maps["hw"], y * X + x)  # hw: (B, C, Y, X)
        if self.mode == "tpv":
            feat = feat + gather(maps["zh"], z * Y + y)  # zh: (B, C, Z, Y)
            feat = feat + gather(maps["wz"], x * Z + z)  # wz: (B, C, X, Z)
            if "volume" in maps:
                feat = feat + self._volume_at(maps["volume"], index)
        else:
            assert self.height_embed is not None
            feat = feat + self.height_embed.weight[z].to(feat.dtype)
        return feat

    @staticmethod
    def _sample_volume(volume: torch.Tensor, g: torch.Tensor, padding: str) -> torch.Tensor:
        """The coarse volume (B, C, x, y, z) read trilinearly at g (B, ..., 3) [x, y, z] in
        grid_sample's [-1, 1] (align_corners=False) -> (B, C, ...)."""
        b, lead = g.shape[0], g.shape[1:-1]
        # grid_sample's last axis is (W, H, D) = (z, y, x) of a (B, C, X, Y, Z) input
        out = F.grid_sample(
            volume,
            g.flip(-1).reshape(b, 1, 1, -1, 3).to(volume.dtype),
            mode="bilinear",
            padding_mode=padding,
            align_corners=False,
        )  # (B, C, 1, 1, N)
        return out.view(b, volume.shape[1], *lead)

    def _voxel_centres(self, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Integer voxels (..., 3) [x, y, z] -> their centres in [-1, 1]."""
        size = torch.tensor(self.grid, dtype=dtype, device=index.device)
        return (index.to(dtype) * 2 + 1) / size - 1

    def _volume_at(self, volume: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The coarse volume trilinearly upsampled to the output grid (F.interpolate,
        align_corners=False: the border clamped) at voxels index (B, K, 3) -> (B, K, C)."""
        g = self._voxel_centres(index, volume.dtype)
        return self._sample_volume(volume, g, "border").transpose(1, 2)

    def _volume_slices(self, volume: torch.Tensor, x0: int, x1: int) -> torch.Tensor:
        """The same upsampled volume on the x-slices [x0, x1) -> (B, C, x1 - x0, Y, Z)."""
        _, Y, Z = self.grid
        axes = [torch.arange(a, b, device=volume.device) for a, b in ((x0, x1), (0, Y), (0, Z))]
        index = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (x, Y, Z, 3)
        g = self._voxel_centres(index, volume.dtype)
        return self._sample_volume(volume, g.expand(volume.shape[0], *g.shape), "border")

    # -- forward --------------------------------------------------------------------------

    def forward(
        self,
        planes: list[torch.Tensor],
        points: torch.Tensor | None = None,
        decode_voxels: bool = True,
        voxel_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """planes: per plane (B, Q_p, C) from the encoder; points (B, N, 3) LiDAR xyz;
        voxel_index (B, K, 3) integer [x, y, z] voxels to decode alone (a sampled loss).

        Returns "point_logits" (B, n_cls, N) when points are given, "voxel_logits"
        (B, n_cls, X, Y, Z) when decode_voxels (plus model.head.voxel_logit_offset in eval
        mode) and "voxel_logits_at" (B, n_cls, K) when
        voxel_index is given.
        """
        maps = self.plane_maps(planes)
        out: dict[str, torch.Tensor] = {}
        if points is not None:
            if self.checkpoint_activations and torch.is_grad_enabled():
                logits = torch.utils.checkpoint.checkpoint(
                    lambda m, p: self.decode(self.point_features(m, p)),
                    maps,
                    points,
                    use_reentrant=False,
                )
            else:
                logits = self.decode(self.point_features(maps, points))
            out["point_logits"] = logits.transpose(1, 2)
        if decode_voxels:
            logits = self.voxel_logits(maps)
            if self.has_voxel_logit_offset and not self.training:
                offset = self.voxel_logit_offset.to(logits.dtype)
                logits = logits + offset[None, :, None, None, None]
            out["voxel_logits"] = logits
        if voxel_index is not None:
            out["voxel_logits_at"] = self.decode(
                self.voxel_features_at(maps, voxel_index)
            ).transpose(1, 2)
        return out


class ResidualRefiner(nn.Module):
    """Residual 3x3 (or 3x3x3) convolutions on a plane map (B, C, rows, cols) or a volume
    (B, C, X, Y, Z), `spatial_dims` 2 or 3: `layers` blocks of x + conv(relu(conv(x))). The last
    conv of each block starts at zero, so an untrained refiner is the identity."""

    def __init__(self, dim: int, layers: int, spatial_dims: int = 2) -> None:
        super().__init__()
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            first = conv(dim, dim, 3, padding=1)
            last = conv(dim, dim, 3, padding=1)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.blocks.append(nn.Sequential(first, nn.ReLU(inplace=True), last))

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            m = m + block(m)
        return m
