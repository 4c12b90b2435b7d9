"""The TPV encoder: learned plane queries lifted from multi-camera image features by a stack of
hybrid cross-attention blocks (HCAB: CVHA -> norm -> ICA -> norm -> FFN -> norm) and hybrid
attention blocks (HAB: CVHA -> norm -> FFN -> norm), post-norm as the public TPVFormer.

In TPV mode the planes are hw, zh and wz; in BEV mode only hw, with the same blocks (CVHA over
one plane is deformable self-attention on the BEV plane, ICA lifts the hw pillars only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.utils.checkpoint
from torch import nn

from tpvkit.config import ModelConfig
from tpvkit.errors import TpvkitError
from tpvkit.models.attention import (
    CameraHits,
    CrossViewHybridAttention,
    HWSelfAttention,
    ImageCrossAttention,
    gather_camera_hits,
    gather_camera_hits_dense,
)
from tpvkit.models.geometry import (
    PLANES,
    anchor_depth_weights,
    cross_view_reference_points,
    pillar_reference_points,
    plane_grid_reference_points,
    plane_shape,
    project_to_cameras,
)

PLANE_AXES: dict[str, tuple[str, str]] = {"hw": ("h", "w"), "zh": ("z", "h"), "wz": ("w", "z")}


def encoder_planes(cfg: ModelConfig) -> tuple[str, ...]:
    """The planes the model keeps: all three in TPV mode, the top (hw) plane in BEV mode."""
    return PLANES if cfg.mode == "tpv" else ("hw",)


class AxisPositionalEncoding(nn.Module):
    """Learned per-axis positional encoding of plane cells, used only inside CVHA.

    One embedding table per axis (h: tpv_h rows, w: tpv_w rows, z: tpv_z rows) of the width
    given in `dims`; a plane's encoding concatenates, in `order`, the embeddings of its two
    axes at each cell, the axis perpendicular to the plane contributing zeros. The lidarseg
    release uses order (h, w, z); the occupancy release (mmdet's LearnedPositionalEncoding on
    the hw plane) is (w, h) with no z table.
    """

    def __init__(
        self,
        tpv_h: int,
        tpv_w: int,
        tpv_z: int,
        dims: Sequence[int],
        order: Sequence[str] = ("h", "w", "z"),
        planes: Sequence[str] = ("hw", "zh", "wz"),
    ) -> None:
        super().__init__()
        self.sizes = {"h": tpv_h, "w": tpv_w, "z": tpv_z}
        self.dims = dict(zip(("h", "w", "z"), (int(d) for d in dims), strict=True))
        self.order = tuple(a for a in order if self.dims[a] > 0)
        # Only axes spanned by an encoded plane get a table (BEV: no z table, its slot is 0).
        spanned = {a for p in planes for a in PLANE_AXES[p]}
        for axis in self.order:
            if axis in spanned:
                setattr(self, f"{axis}_embed", nn.Embedding(self.sizes[axis], self.dims[axis]))

    def zeros_like_tables(self, rows: int, cols: int, width: int) -> torch.Tensor:
        """Zeros for the axis perpendicular to a plane, on the tables' device and dtype."""
        ref = next(self.parameters())
        return ref.new_zeros(rows, cols, width)

    @property
    def out_dim(self) -> int:
        return sum(self.dims[a] for a in self.order)

    def forward(self, plane: str) -> torch.Tensor:
        """(1, rows * cols, out_dim) encoding of a plane's cells, row-major."""
        r_ax, c_ax = PLANE_AXES[plane]
        rows, cols = self.sizes[r_ax], self.sizes[c_ax]
        parts = []
        for axis in self.order:
            if axis == r_ax:
                table: nn.Embedding = getattr(self, f"{axis}_embed")
                e = table.weight.view(rows, 1, -1).expand(rows, cols, -1)
            elif axis == c_ax:
                table = getattr(self, f"{axis}_embed")
                e = table.weight.view(1, cols, -1).expand(rows, cols, -1)
            else:
                e = self.zeros_like_tables(rows, cols, self.dims[axis])
            parts.append(e)
        return torch.cat(parts, dim=-1).reshape(1, rows * cols, -1)


class FFN(nn.Module):
    """Linear -> ReLU -> dropout -> Linear -> dropout, plus the identity (mmcv's FFN)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class ImageContext:
    """What every HCAB reads from the images: the flattened features and the camera hits."""

    def __init__(
        self,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        hits: list[CameraHits],
    ) -> None:
        self.value = value  # (B * N_cam, S, C)
        self.spatial_shapes = spatial_shapes  # (L, 2)
        self.level_start_index = level_start_index  # (L,)
        self.hits = hits  # per plane


class TPVLayer(nn.Module):
    """One encoder block: HCAB when it has image cross-attention, HAB otherwise."""

    def __init__(self, cfg: ModelConfig, with_image_cross_attn: bool) -> None:
        super().__init__()
        enc, dim = cfg.encoder, cfg.dim
        planes = encoder_planes(cfg)
        self.hw_self = enc.cvha_mode == "hw_self" and cfg.mode == "tpv"
        if self.hw_self:
            self.cross_view_attn: nn.Module = HWSelfAttention(
                dim,
                enc.num_heads,
                cfg.tpv_h,
                cfg.tpv_w,
                num_points=enc.cvha_num_points,
                dropout=enc.dropout,
                msda_backend=enc.msda_backend,
            )
        else:
            self.cross_view_attn = CrossViewHybridAttention(
                dim,
                enc.num_heads,
                [plane_shape(p, cfg.tpv_h, cfg.tpv_w, cfg.tpv_z) for p in planes],
                num_anchors=enc.cvha_num_anchors,
                num_points=enc.cvha_num_points,
                dropout=enc.dropout,
                msda_backend=enc.msda_backend,
                fast=enc.fast_path,
            )
        self.cvha_norm = nn.LayerNorm(dim)
        self.image_cross_attn: ImageCrossAttention | None = None
        self.ica_norm: nn.LayerNorm | None = None
        if with_image_cross_attn:
            idx = [PLANES.index(p) for p in planes]
            self.image_cross_attn = ImageCrossAttention(
                dim,
                enc.num_heads,
                enc.num_levels,
                num_points=[enc.num_points_ica[i] for i in idx],
                num_anchors=[enc.num_points_in_pillar[i] for i in idx],
                dropout=enc.dropout,
                msda_backend=enc.msda_backend,
                compact=enc.fast_path,
            )
            self.ica_norm = nn.LayerNorm(dim)
        self.ffn = FFN(dim, enc.ffn_dim, enc.dropout)
        self.ffn_norm = nn.LayerNorm(dim)

    def forward(
        self,
        queries: list[torch.Tensor],
        query_pos: list[torch.Tensor | None],
        cross_view_reference: torch.Tensor,
        image: ImageContext | None,
    ) -> list[torch.Tensor]:
        """queries / query_pos: per plane (B, Q_p, C). LayerNorm and FFN act per token, so we
        apply them plane by plane instead of on the concatenation: the same result."""
        if self.hw_self:
            hw = self.cross_view_attn(queries[0], query_pos[0], cross_view_reference)
            queries = [hw, *queries[1:]]
        else:
            queries = self.cross_view_attn(queries, query_pos, cross_view_reference)
        queries = [self.cvha_norm(q) for q in queries]
        if self.image_cross_attn is not None:
            if image is None:
                raise ValueError("an HCAB layer needs the image context")
            queries = self.image_cross_attn(
                queries, image.value, image.spatial_shapes, image.level_start_index, image.hits
            )
            queries = [self.ica_norm(q) for q in queries]
        return [self.ffn_norm(self.ffn(q)) for q in queries]


class TPVEncoder(nn.Module):
    """Plane queries + encoder blocks: multi-level camera features -> TPV (or BEV) planes."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        enc = cfg.encoder
        self.cfg = cfg
        self.planes = encoder_planes(cfg)
        self.shapes = {p: plane_shape(p, cfg.tpv_h, cfg.tpv_w, cfg.tpv_z) for p in self.planes}
        self.hw_self = enc.cvha_mode == "hw_self" and cfg.mode == "tpv"
        self.checkpoint_activations = cfg.checkpoint_activations
        # True (TPVFormer.export_mode): the camera packing whose shapes depend on no value of
        # the calibration (gather_camera_hits_dense), for a traced graph.
        self.export = False
        dim = cfg.dim

        self.tpv_queries = nn.ModuleDict(
            {p: nn.Embedding(r * c, dim) for p, (r, c) in self.shapes.items()}
        )
        order = ("w", "h") if self.hw_self else ("h", "w", "z")
        pos_planes = ("hw",) if self.hw_self else self.planes
        self.pos_encoding = AxisPositionalEncoding(
            cfg.tpv_h, cfg.tpv_w, cfg.tpv_z, enc.pos_dims, order, pos_planes
        )
        if self.pos_encoding.out_dim != dim:
            raise TpvkitError(
                f"model.encoder.pos_dims {list(enc.pos_dims)} give a {self.pos_encoding.out_dim}"
                f"-wide positional encoding; it must equal model.dim ({dim})"
            )
        self.level_embeds = nn.Parameter(torch.empty(enc.num_levels, dim))
        self.cams_embeds = nn.Parameter(torch.empty(enc.num_cams, dim))
        self.layers = nn.ModuleList(
            [TPVLayer(cfg, with_image_cross_attn=True) for _ in range(enc.num_hcab)]
            + [TPVLayer(cfg, with_image_cross_attn=False) for _ in range(enc.num_hab)]
        )

        # Constant geometry, recomputed from the config (not saved in checkpoints).
        for i, p in enumerate(PLANES):
            if p in self.planes:
                pts = pillar_reference_points(
                    p,
                    cfg.tpv_h,
                    cfg.tpv_w,
                    cfg.tpv_z,
                    enc.num_points_in_pillar[i],
                    cfg.point_cloud_range,
                    enc.pillar_sampling,
                )
                self.register_buffer(f"pillar_points_{p}", pts, persistent=False)
        if self.hw_self:
            ref = plane_grid_reference_points(cfg.tpv_h, cfg.tpv_w).reshape(-1, 2)
        else:
            ref = cross_view_reference_points(
                cfg.tpv_h, cfg.tpv_w, cfg.tpv_z, enc.cvha_num_anchors, self.planes
            )
        self.register_buffer("cross_view_reference", ref, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The public initialisation: Xavier-uniform on every matrix, then each attention
        module's own scheme, and N(0, 1) level and camera embeddings."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, (CrossViewHybridAttention, HWSelfAttention, ImageCrossAttention)):
                m.reset_parameters()
        nn.init.normal_(self.level_embeds)
        nn.init.normal_(self.cams_embeds)

    def positional_encodings(self) -> list[torch.Tensor | None]:
        """Per plane (1, Q_p, C); the occupancy variant encodes the hw plane only."""
        if self.hw_self:
            return [self.pos_encoding("hw"), None, None]
        return [self.pos_encoding(p) for p in self.planes]

    def flatten_features(
        self, mlvl_feats: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Levels (B, N_cam, C, H_l, W_l) -> value (B * N_cam, S, C) with camera and level
        embeddings added, spatial_shapes (L, 2), level_start_index (L,)."""
        b, n = mlvl_feats[0].shape[:2]
        flat, shapes = [], []
        for lvl, feat in enumerate(mlvl_feats):
            h, w = feat.shape[-2:]
            f = feat.flatten(3).transpose(2, 3)  # (B, N, H_l * W_l, C)
            f = f + self.cams_embeds[None, :, None, :].to(f.dtype)
            f = f + self.level_embeds[lvl].to(f.dtype)
            flat.append(f)
            shapes.append((h, w))
        value = torch.cat(flat, dim=2).flatten(0, 1)
        device = value.device
        spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=device)
        sizes = spatial_shapes.prod(1)
        level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
        return value, spatial_shapes, level_start_index

    def camera_hits(
        self,
        lidar2img: torch.Tensor,
        img_hw: tuple[int, int],
        depth_likelihood: torch.Tensor | None = None,
    ) -> list[CameraHits]:
        """Project every plane's pillar points into the cameras and pack the hits, per plane.

        depth_likelihood (B * N_cam, K, h, w) (tpvkit.models.tpvformer.depth_likelihood), or
        None: each hit's anchor_weights become the likelihood of its pillar points' camera
        depths at their pixels (anchor_depth_weights), with gradient; the packing itself has
        none."""
        hits = []
        for p in self.planes:
            pts = getattr(self, f"pillar_points_{p}")  # (Q, D, 3)
            q, d, _ = pts.shape
            with torch.no_grad():
                uv, valid, depth = project_to_cameras(
                    pts.reshape(-1, 3), lidar2img, img_hw, with_depth=True
                )
                b, n = uv.shape[:2]
                gather = gather_camera_hits_dense if self.export else gather_camera_hits
                hit = gather(uv.view(b, n, q, d, 2), valid.view(b, n, q, d))
            if depth_likelihood is not None:
                dcfg = self.cfg.depth
                factors = anchor_depth_weights(
                    depth_likelihood, uv, depth, dcfg.min_depth, dcfg.max_depth
                )
                hit.anchor_weights = hit.pack(factors.view(b, n, q, d))
            hits.append(hit)
        return hits

    def forward(
        self,
        mlvl_feats: Sequence[torch.Tensor],
        lidar2img: torch.Tensor,
        img_hw: tuple[int, int],
        depth_likelihood: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """mlvl_feats: per level (B, N_cam, C, H_l, W_l); lidar2img (B, N_cam, 4, 4) from the
        grid frame (LiDAR, or ego: ego2img) to pixels of the padded image of size img_hw =
        (H, W); depth_likelihood (B * N_cam, K, h, w) or None (depth-aware lifting, see
        camera_hits). Returns per plane (B, Q_p, C)."""
        b, n = mlvl_feats[0].shape[:2]
        if n != self.cams_embeds.shape[0]:
            raise TpvkitError(
                f"the model has {self.cams_embeds.shape[0]} camera embeddings "
                f"(model.encoder.num_cams) but the batch has {n} cameras"
            )
        if len(mlvl_feats) != self.level_embeds.shape[0]:
            raise TpvkitError(
                f"the encoder expects {self.level_embeds.shape[0]} feature levels "
                f"(model.encoder.num_levels), got {len(mlvl_feats)}"
            )
        image = None
        if any(layer.image_cross_attn is not None for layer in self.layers):
            value, spatial_shapes, level_start_index = self.flatten_features(mlvl_feats)
            hits = self.camera_hits(lidar2img, img_hw, depth_likelihood)
            image = ImageContext(value, spatial_shapes, level_start_index, hits)

        queries = [self.tpv_queries[p].weight.unsqueeze(0).expand(b, -1, -1) for p in self.planes]
        pos = self.positional_encodings()
        for layer in self.layers:
            if self.checkpoint_activations and torch.is_grad_enabled():
                queries = torch.utils.checkpoint.checkpoint(
                    layer, queries, pos, self.cross_view_reference, image, use_reentrant=False
                )
            else:
                queries = layer(queries, pos, self.cross_view_reference, image)
        return queries
