"""Attention modules of the TPV encoder: image cross-attention (ICA), cross-view hybrid
attention (CVHA) and the HW-plane self-attention of the released occupancy model.

All three are multi-scale deformable attention (tpvkit.ops.msda) with different "levels": the
image feature pyramid for ICA, the TPV planes themselves for CVHA, the HW plane alone for the
occupancy variant. Numerics follow the public TPVFormer code (wzzheng/TPVFormer, tpvformer10/
and tpvformer04/ modules); the comments name the places where we reorganise the computation
without changing its result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tpvkit.ops.msda import multi_scale_deformable_attn
from tpvkit.ops.msda.export import msda_export


def xavier_linear_(layer: nn.Linear) -> None:
    """Uniform Xavier weight and zero bias (mmcv's xavier_init(distribution='uniform'))."""
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)


def _spatial_tensors(
    shapes: Sequence[tuple[int, int]], device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, 2) int64 (H_l, W_l) and (L,) int64 level start indices."""
    spatial_shapes = torch.tensor([list(s) for s in shapes], dtype=torch.long, device=device)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    return spatial_shapes, level_start_index


def _offset_normalizer(spatial_shapes: torch.Tensor) -> torch.Tensor:
    """(L, 2) float (W_l, H_l): sampling offsets are in cells of their level."""
    return torch.stack([spatial_shapes[:, 1], spatial_shapes[:, 0]], -1).float()


def _msda_fp32(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    backend: str | Callable[..., torch.Tensor],
) -> torch.Tensor:
    """The MSDA op in float32 whatever the autocast state (the public code forces fp32 here:
    the weighted sums over hundreds of samples lose too much in half precision). `backend` is
    a name of tpvkit.ops.msda, or a function with the op's signature (the export form,
    tpvkit.ops.msda.export.msda_export)."""
    out_dtype = value.dtype
    args = (
        value.float(),
        spatial_shapes,
        level_start_index,
        sampling_locations.float(),
        attention_weights.float(),
    )
    with torch.autocast(device_type=value.device.type, enabled=False):
        if callable(backend):
            out = backend(*args)
        else:
            out = multi_scale_deformable_attn(*args, backend=backend)
    return out.to(out_dtype)


def head_directions(num_heads: int) -> torch.Tensor:
    """(num_heads, 3) unit directions that spread the heads' initial CVHA offsets in 3D.

    Public init_mode 0 for num_heads % 4 == 0 (rings of 4 azimuths at num_heads / 4
    elevations), init_mode 1 for 6 heads (the six axis directions, used by the public dim96
    config); any other count falls back to a golden-angle spiral on the sphere.
    """
    if num_heads % 4 == 0:
        phi = torch.arange(4, dtype=torch.float32) * (2.0 * math.pi / 4)
        num_theta = num_heads // 4
        theta = torch.arange(num_theta, dtype=torch.float32) * (math.pi / num_theta) + (
            math.pi / num_theta / 2
        )
        x = torch.outer(theta.sin(), phi.cos()).flatten()
        y = torch.outer(theta.sin(), phi.sin()).flatten()
        z = theta.cos().unsqueeze(-1).repeat(1, 4).flatten()
        return torch.stack([x, y, z], dim=-1)
    if num_heads == 6:
        return torch.tensor(
            [[0, 0, 1], [0, 0, -1], [0, 1, 0], [0, -1, 0], [1, 0, 0], [-1, 0, 0]],
            dtype=torch.float32,
        )
    k = torch.arange(num_heads, dtype=torch.float32) + 0.5
    z = 1.0 - 2.0 * k / num_heads
    r = (1.0 - z * z).clamp(min=0.0).sqrt()
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    return torch.stack([r * phi.cos(), r * phi.sin(), z], dim=-1)


# ---------------------------------------------------------------------------------------------
# Cross-view hybrid attention


class CrossViewHybridAttention(nn.Module):
    """Deformable attention among TPV planes: every plane is one value "level".

    For L planes (3 in TPV mode, 1 in BEV mode) each query samples P points per head on every
    plane, around A anchors per plane (cross_view_reference_points). Sampling offsets and
    weights come from one linear layer per query plane; the weights are a softmax over the P
    points of a plane times a softmax over the L planes of one extra logit per plane, whose
    bias is initialised to 10 on the query's own plane. Values are value_proj(query + pos) per
    plane; the residual is the query without its positional encoding.
    `fast` (the default) builds the sampling locations in fewer passes (see _locations).
    `export` (set by TPVFormer.export_mode): the MSDA in its traceable GridSample form.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        plane_shapes: Sequence[tuple[int, int]],
        num_anchors: int,
        num_points: int,
        dropout: float = 0.1,
        msda_backend: str = "auto",
        fast: bool = True,
    ) -> None:
        super().__init__()
        if num_points % num_anchors:
            raise ValueError(
                f"CVHA points ({num_points}) must be a multiple of its anchors ({num_anchors})"
            )
        self.dim, self.num_heads = dim, num_heads
        self.num_levels = len(plane_shapes)
        self.num_anchors, self.num_points = num_anchors, num_points
        self.plane_sizes = [r * c for r, c in plane_shapes]
        self.msda_backend = msda_backend
        self.fast = fast  # see _locations; False: the straightforward formulation
        self.export = False
        L, P = self.num_levels, num_points
        self.sampling_offsets = nn.ModuleList(
            nn.Linear(dim, num_heads * L * P * 2) for _ in range(L)
        )
        self.attention_weights = nn.ModuleList(
            nn.Linear(dim, num_heads * L * (P + 1)) for _ in range(L)
        )
        self.value_proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(L))
        self.output_proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(L))
        # The public code keeps one Dropout per plane; dropout has no state, so one suffices.
        self.dropout = nn.Dropout(dropout)
        shapes, starts = _spatial_tensors(plane_shapes)
        self.register_buffer("spatial_shapes", shapes, persistent=False)
        self.register_buffer("level_start_index", starts, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        H, L, P, A = self.num_heads, self.num_levels, self.num_points, self.num_anchors
        device = self.sampling_offsets[0].weight.device
        theta = torch.arange(H, dtype=torch.float32) * (2.0 * math.pi / H)
        # Own plane: a ring of points at growing radius (j + 1) / 2 cells, one angle per head.
        grid_self = torch.stack([theta.cos(), theta.sin()], -1).view(H, 1, 2).repeat(1, P, 1)
        grid_self = grid_self * ((torch.arange(P, dtype=torch.float32) + 1) / 2).view(1, P, 1)
        # Other planes: the head's 3D direction projected onto each plane, points at 2 (j + 1)
        # cells from their anchor. Component pairs as the public code: hw (x, y), zh (z, x),
        # wz (y, z).
        xyz = head_directions(H)
        per_plane = [xyz[:, [0, 1]], xyz[:, [2, 0]], xyz[:, [1, 2]]][:L]
        for i in range(L):
            grid = torch.stack(per_plane, dim=1).unsqueeze(2).repeat(1, 1, P, 1)  # (H, L, P, 2)
            grid = grid.view(H, L, A, P // A, 2)
            grid = grid * (2 * (torch.arange(P // A, dtype=torch.float32) + 1)).view(1, 1, 1, -1, 1)
            grid = grid.reshape(H, L, P, 2).clone()
            grid[:, i] = grid_self
            nn.init.zeros_(self.sampling_offsets[i].weight)
            self.sampling_offsets[i].bias.copy_(grid.flatten().to(device))
            nn.init.zeros_(self.attention_weights[i].weight)
            bias = torch.zeros(H, L, P + 1)
            bias[:, i, -1] = 10.0  # the own plane dominates at initialisation
            self.attention_weights[i].bias.copy_(bias.flatten().to(device))
            xavier_linear_(self.value_proj[i])
            xavier_linear_(self.output_proj[i])

    def sampling(self, queries: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Offsets (B, Q, nH, L, P, 2) in cells and weights (B, Q, nH, L, P), Q over planes."""
        H, L, P = self.num_heads, self.num_levels, self.num_points
        offsets, weights = [], []
        for q, lin_off, lin_w in zip(
            queries, self.sampling_offsets, self.attention_weights, strict=True
        ):
            b, n, _ = q.shape
            offsets.append(lin_off(q).view(b, n, H, L, P, 2))
            weights.append(self._weights(q, lin_w))
        return torch.cat(offsets, 1), torch.cat(weights, 1)

    def forward(
        self,
        queries: Sequence[torch.Tensor],
        query_pos: Sequence[torch.Tensor | None],
        reference_points: torch.Tensor,
    ) -> list[torch.Tensor]:
        """queries: per plane (B, Q_p, C); query_pos: per plane (1 or B, Q_p, C) or None;
        reference_points (sum Q_p, L, A, 2). Returns the updated queries, per plane."""
        b = queries[0].shape[0]
        H, L, P, A = self.num_heads, self.num_levels, self.num_points, self.num_anchors
        q_pos = [q if p is None else q + p for q, p in zip(queries, query_pos, strict=True)]
        value = torch.cat([proj(q) for proj, q in zip(self.value_proj, q_pos, strict=True)], dim=1)
        num_value = value.shape[1]
        value = value.view(b, num_value, H, self.dim // H)
        if self.fast:
            locations = self._locations(q_pos, reference_points)
            weights = torch.cat(
                [self._weights(q, w) for q, w in zip(q_pos, self.attention_weights, strict=True)],
                dim=1,
            )
        else:  # the straightforward formulation
            offsets, weights = self.sampling(q_pos)
            norm = _offset_normalizer(self.spatial_shapes).to(offsets.device)
            offsets = (offsets.float() / norm[:, None, :]).view(b, num_value, H, L, A, P // A, 2)
            ref = reference_points.to(offsets.dtype)[None, :, None, :, :, None, :]
            locations = (ref + offsets).view(b, num_value, H, L, P, 2)
        out = _msda_fp32(
            value,
            self.spatial_shapes,
            self.level_start_index,
            locations,
            weights,
            msda_export if self.export else self.msda_backend,
        )
        outs = out.split(self.plane_sizes, dim=1)
        return [
            q + self.dropout(proj(o))
            for q, proj, o in zip(queries, self.output_proj, outs, strict=True)
        ]

    def _weights(self, q: torch.Tensor, lin_w: nn.Linear) -> torch.Tensor:
        """(B, Q_p, nH, L, P): softmax over a plane's points times softmax over the planes."""
        b, n, _ = q.shape
        H, L, P = self.num_heads, self.num_levels, self.num_points
        logits = lin_w(q).view(b, n, H, L, P + 1)
        return logits[..., :P].softmax(-1) * logits[..., P:].softmax(-2)

    def _locations(
        self, q_pos: Sequence[torch.Tensor], reference_points: torch.Tensor
    ) -> torch.Tensor:
        """(B, Q, nH, L, P, 2) normalised sampling locations = anchor + offset / level size.

        Equal to `sampling`'s offsets divided by the level sizes plus the anchors, with fewer
        passes over the largest tensor of the layer: the division is folded into the offset
        layer's weights (a (L*P*2, C) rescale per call) and the anchors, expanded to one
        contiguous row per query, are added in place with broadcasting over heads only (a
        broadcast over the trailing (P / A, 2) dims is several times slower on CPU)."""
        H, L, P, A = self.num_heads, self.num_levels, self.num_points, self.num_anchors
        size = _offset_normalizer(self.spatial_shapes).to(self.sampling_offsets[0].weight.device)
        inv = (1.0 / size)[:, None, :].expand(L, P, 2).reshape(1, L * P * 2).expand(H, -1)
        inv = inv.reshape(-1)  # (H * L * P * 2,) per output of an offset layer
        anchors = reference_points.float()[:, :, :, None, :].expand(-1, L, A, P // A, 2)
        anchors = anchors.reshape(1, -1, 1, L * P * 2)  # (1, Q, 1, L*P*2), contiguous
        parts, start = [], 0
        for q, lin_off in zip(q_pos, self.sampling_offsets, strict=True):
            b, n, _ = q.shape
            weight = lin_off.weight * inv[:, None].to(lin_off.weight.dtype)
            bias = lin_off.bias * inv.to(lin_off.bias.dtype)
            off = torch.nn.functional.linear(q, weight, bias).float().view(b, n, H, L * P * 2)
            parts.append(off.add_(anchors[:, start : start + n]))
            start += n
        return torch.cat(parts, dim=1).view(b, -1, H, L, P, 2)


class HWSelfAttention(nn.Module):
    """Self-attention on the HW plane only, as in the released occupancy model (tpvformer04).

    A BEVFormer temporal self-attention with no history: two "queue" entries that both hold
    the current plane, sampling offsets and weights from Linear(2C) on [value, query + pos],
    num_points per head per entry, a softmax per entry, and the two results averaged. Because
    both entries read the same values, we run one deformable attention over the 2 * P points
    with half weights, which is the same sum. The zh / wz planes pass through unchanged.
    """

    num_queue = 2

    def __init__(
        self,
        dim: int,
        num_heads: int,
        rows: int,
        cols: int,
        num_points: int = 4,
        dropout: float = 0.1,
        msda_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.dim, self.num_heads, self.num_points = dim, num_heads, num_points
        self.num_levels = 1
        self.msda_backend = msda_backend
        self.export = False  # True: the MSDA in its traceable form (TPVFormer.export_mode)
        Qn, H, P = self.num_queue, num_heads, num_points
        self.sampling_offsets = nn.Linear(Qn * dim, Qn * H * self.num_levels * P * 2)
        self.attention_weights = nn.Linear(Qn * dim, Qn * H * self.num_levels * P)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        shapes, starts = _spatial_tensors([(rows, cols)])
        self.register_buffer("spatial_shapes", shapes, persistent=False)
        self.register_buffer("level_start_index", starts, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        H, P, Qn = self.num_heads, self.num_points, self.num_queue
        device = self.sampling_offsets.weight.device
        theta = torch.arange(H, dtype=torch.float32) * (2.0 * math.pi / H)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]  # onto the unit square's border
        grid = grid.view(H, 1, 1, 2).repeat(1, self.num_levels * Qn, P, 1)
        grid = grid * (torch.arange(P, dtype=torch.float32) + 1).view(1, 1, P, 1)
        nn.init.zeros_(self.sampling_offsets.weight)
        self.sampling_offsets.bias.copy_(grid.flatten().to(device))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        xavier_linear_(self.value_proj)
        xavier_linear_(self.output_proj)

    def forward(
        self, query: torch.Tensor, query_pos: torch.Tensor | None, reference_points: torch.Tensor
    ) -> torch.Tensor:
        """query (B, Q, C) of the HW plane, query_pos (1 or B, Q, C), reference_points (Q, 2)
        normalised cell centres. Returns (B, Q, C)."""
        b, n, c = query.shape
        H, P, Qn = self.num_heads, self.num_points, self.num_queue
        q_pos = query if query_pos is None else query + query_pos
        # Public order: the value (the query without pos) first, then the query with pos.
        both = torch.cat([query.expand(b, n, c), q_pos.expand(b, n, c)], dim=-1)
        value = self.value_proj(query).view(b, n, H, c // H)
        offsets = self.sampling_offsets(both).view(b, n, H, Qn, P, 2)
        weights = self.attention_weights(both).view(b, n, H, Qn, P).softmax(-1) / Qn
        norm = _offset_normalizer(self.spatial_shapes).to(offsets.device)  # (1, 2)
        offsets = offsets.float().reshape(b, n, H, 1, Qn * P, 2) / norm[0]
        ref = reference_points.to(offsets.dtype)[None, :, None, None, None, :]
        out = _msda_fp32(
            value,
            self.spatial_shapes,
            self.level_start_index,
            ref + offsets,
            weights.reshape(b, n, H, 1, Qn * P),
            msda_export if self.export else self.msda_backend,
        )
        return query + self.dropout(self.output_proj(out))


# ---------------------------------------------------------------------------------------------
# Image cross-attention


@dataclass
class CameraHits:
    """Which queries of one plane each camera sees, packed into M slots per (sample, camera).

    index (B * N_cam * M,) int64: flat query index b * Q + q of every slot (padding slots
    point at query 0 of their sample and are masked by `valid`); valid (B, N_cam, M) bool;
    count (B, Q) float: the number of cameras seeing each query, clamped to >= 1;
    reference_points (B * N_cam, M, D, 2): the slot's pillar points in normalised pixels.
    dense: M = Q and slot j of every camera is query j (gather_camera_hits_dense).
    source (B * N_cam * M,) int64: the row of the (B * N_cam * Q) projections each slot holds
    (`pack` gathers any per-(camera, query) tensor into the slots the same way).
    anchor_weights (B * N_cam, M, D) or None: a factor on the attention weights of the samples
    around each pillar point (depth-aware lifting: tpvkit.models.tpvformer.depth_likelihood);
    None: 1.
    """

    index: torch.Tensor
    valid: torch.Tensor
    count: torch.Tensor
    reference_points: torch.Tensor
    source: torch.Tensor
    dense: bool = False
    anchor_weights: torch.Tensor | None = None

    @property
    def num_slots(self) -> int:
        return self.valid.shape[-1]

    def pack(self, per_query: torch.Tensor) -> torch.Tensor:
        """(B, N_cam, Q, ...) -> (B * N_cam, M, ...): the rows of the slots' (camera, query)."""
        b, n, q = per_query.shape[:3]
        rows = per_query.reshape(b * n * q, *per_query.shape[3:])
        return rows.index_select(0, self.source).view(b * n, self.num_slots, *per_query.shape[3:])


def scale_by_anchors(w: torch.Tensor, anchor_weights: torch.Tensor | None) -> torch.Tensor:
    """Attention weights w (..., H, L, P0) of sub-queries whose D0 pillar points have the
    factors anchor_weights (..., D0) (None: w unchanged): the P0 / D0 samples around pillar
    point d (the layout of the sampling locations) are scaled by its factor."""
    if anchor_weights is None:
        return w
    *lead, h, lv, p0 = w.shape
    d0 = anchor_weights.shape[-1]
    scaled = w.view(*lead, h, lv, d0, p0 // d0) * anchor_weights[..., None, None, :, None]
    return scaled.view(*lead, h, lv, p0).to(w.dtype)


def gather_camera_hits(uv: torch.Tensor, valid: torch.Tensor) -> CameraHits:
    """Pack the queries each camera sees: uv (B, N, Q, D, 2), valid (B, N, Q, D).

    A query is kept for a camera when any of its D pillar points projects validly. The slots of
    a (sample, camera) hold its hit queries in ascending order, padded to the largest count M;
    vectorised with a cumulative sum and one scatter (no Python loop over queries).
    """
    b, n, q, d, _ = uv.shape
    hit = valid.any(-1)  # (B, N, Q)
    per_cam = hit.sum(-1)  # (B, N)
    m = int(per_cam.max()) if hit.numel() else 0
    slot = hit.long().cumsum(-1) - 1  # slot of every hit query within its camera
    slot = torch.where(hit, slot, torch.full_like(slot, m))  # misses go to a dump slot m
    query_ids = torch.arange(q, device=uv.device).expand(b, n, q)
    packed = torch.zeros(b, n, m + 1, dtype=torch.long, device=uv.device)
    packed.scatter_(-1, slot, query_ids)  # only the dump slot receives duplicate writes
    packed = packed[..., :m]
    slot_valid = torch.arange(m, device=uv.device).view(1, 1, m) < per_cam.unsqueeze(-1)
    packed = torch.where(slot_valid, packed, torch.zeros_like(packed))
    flat_index = (packed + (torch.arange(b, device=uv.device) * q).view(b, 1, 1)).flatten()
    cam_index = (torch.arange(b * n, device=uv.device) * q).view(b, n, 1)
    source = (packed + cam_index).flatten()
    ref = uv.reshape(b * n * q, d, 2)[source].view(b * n, m, d, 2)
    count = hit.sum(1).clamp(min=1).to(uv.dtype)  # (B, Q)
    return CameraHits(
        index=flat_index, valid=slot_valid, count=count, reference_points=ref, source=source
    )


def gather_camera_hits_dense(uv: torch.Tensor, valid: torch.Tensor) -> CameraHits:
    """`gather_camera_hits` with M = Q: every query is a slot of every camera.

    The packed variant sizes its slots by the data (the largest per-camera hit count), which a
    traced or exported graph would freeze for all later inputs; here every shape depends on
    the shapes of `uv` only, so an ONNX export stays correct for any calibration. The result
    is the same: `valid` masks the queries a camera does not see and `count` is unchanged.
    Costs N_cam / (fraction of queries each camera sees) times the packed variant's work.
    """
    b, n, q, d, _ = uv.shape
    hit = valid.any(-1)  # (B, N, Q)
    query_ids = torch.arange(q, device=uv.device).view(1, 1, q)
    sample_offset = (torch.arange(b, device=uv.device) * q).view(b, 1, 1)
    flat_index = (query_ids + sample_offset).expand(b, n, q).flatten()
    # Masked slots read at (0, 0) rather than at their (possibly far-out) projections.
    ref = torch.where(hit[..., None, None], uv, torch.zeros_like(uv)).reshape(b * n, q, d, 2)
    count = hit.sum(1).clamp(min=1).to(uv.dtype)  # (B, Q)
    source = torch.arange(b * n * q, device=uv.device)
    return CameraHits(
        index=flat_index, valid=hit, count=count, reference_points=ref, source=source, dense=True
    )


class ImageCrossAttention(nn.Module):
    """Cross-attention from TPV queries to the multi-camera, multi-scale image features.

    Per plane p, a query owns D_p pillar points (anchors) and samples P_p points per head per
    level, P_p / D_p around each anchor. Offsets and weights come from one linear layer per
    plane; the weights are a softmax over levels x points jointly. Each camera attends only
    with the queries it sees (gather_camera_hits); the per-camera results are summed back,
    divided by the number of cameras that see the query, projected, dropped out and added to
    the query.

    Like the public code, the zh / wz queries are cut into D_p / D_hw sub-queries of D_hw
    anchors and P_hw points each, so that all planes' sub-queries share one shape and go
    through a single deformable-attention call; the sub-query results are summed, which
    equals one attention over all P_p points because their weights share one softmax.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_levels: int,
        num_points: Sequence[int],
        num_anchors: Sequence[int],
        dropout: float = 0.1,
        msda_backend: str = "auto",
        compact: bool = True,
    ) -> None:
        super().__init__()
        base_points, base_anchors = num_points[0], num_anchors[0]
        if base_points % base_anchors:
            raise ValueError(
                f"image cross-attention points ({base_points}) must be a multiple of the "
                f"pillar points ({base_anchors}) of the first plane"
            )
        self.multipliers = []
        for p, a in zip(num_points, num_anchors, strict=True):
            if a % base_anchors or p * base_anchors != base_points * a:
                raise ValueError(
                    f"image cross-attention: plane with {a} pillar points and {p} sampling "
                    f"points cannot be grouped like the first plane ({base_anchors} and "
                    f"{base_points}); keep points / pillar points equal across planes"
                )
            self.multipliers.append(a // base_anchors)
        self.dim, self.num_heads, self.num_levels = dim, num_heads, num_levels
        self.num_points, self.num_anchors = list(num_points), list(num_anchors)
        self.base_points, self.base_anchors = base_points, base_anchors
        self.msda_backend = msda_backend
        self.compact = compact
        # True (TPVFormer.export_mode): the straightforward form (the compact one picks
        # sub-queries with data-dependent shapes) and the MSDA in its traceable form.
        self.export = False
        self.sampling_offsets = nn.ModuleList(
            nn.Linear(dim, num_heads * num_levels * p * 2) for p in num_points
        )
        self.attention_weights = nn.ModuleList(
            nn.Linear(dim, num_heads * num_levels * p) for p in num_points
        )
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        H, L = self.num_heads, self.num_levels
        device = self.value_proj.weight.device
        theta = torch.arange(H, dtype=torch.float32) * (2.0 * math.pi / H)
        ring = torch.stack([theta.cos(), theta.sin()], -1)
        ring = ring / ring.abs().max(-1, keepdim=True)[0]
        for lin_off, lin_w, p, a in zip(
            self.sampling_offsets,
            self.attention_weights,
            self.num_points,
            self.num_anchors,
            strict=True,
        ):
            # Around every anchor, its P / D points at growing radius j + 1 along the head's
            # direction, on every level.
            grid = ring.view(H, 1, 1, 1, 2).repeat(1, L, a, p // a, 1)
            grid = grid * (torch.arange(p // a, dtype=torch.float32) + 1).view(1, 1, 1, -1, 1)
            nn.init.zeros_(lin_off.weight)
            lin_off.bias.copy_(grid.flatten().to(device))
            nn.init.zeros_(lin_w.weight)
            nn.init.zeros_(lin_w.bias)
        xavier_linear_(self.value_proj)
        xavier_linear_(self.output_proj)

    def _sub_query_terms(
        self, plane: int, q: torch.Tensor, size: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling offsets and weights of plane `plane`'s queries q (..., C), per sub-query:
        offsets (..., k, H, L, P0, 2) in float32, divided by the level sizes `size` (L, 2),
        and softmaxed weights (..., k, H, L, P0) (k: the plane's sub-queries per query)."""
        H, L, P0, k = self.num_heads, self.num_levels, self.base_points, self.multipliers[plane]
        lead = q.shape[:-1]
        off = self.sampling_offsets[plane](q).float().view(*lead, H, L, k, P0, 2)
        off = (off / size[:, None, None, :]).movedim(len(lead) + 2, len(lead))
        w = self.attention_weights[plane](q).view(*lead, H, L * self.num_points[plane])
        w = w.softmax(-1).view(*lead, H, L, k, P0).movedim(len(lead) + 2, len(lead))
        return off, w

    def forward(
        self,
        queries: Sequence[torch.Tensor],
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        hits: Sequence[CameraHits],
    ) -> list[torch.Tensor]:
        """queries: per plane (B, Q_p, C); value (B * N_cam, S, C) flattened image features
        (index b * N_cam + n); hits: per plane, from gather_camera_hits. Returns per plane.

        `compact` (the default) gives the same result with less work, see _forward_compact;
        otherwise every (camera, slot) projects its query and all sub-queries are sampled.
        `export` (dense hits): _forward_export, the same result with shapes fixed by the input
        shapes."""
        if self.export and all(h.dense for h in hits):
            return self._forward_export(queries, value, spatial_shapes, level_start_index, hits)
        if self.compact and not self.export:
            return self._forward_compact(queries, value, spatial_shapes, level_start_index, hits)
        b = queries[0].shape[0]
        bn, num_value, c = value.shape
        H, L = self.num_heads, self.num_levels
        P0, D0 = self.base_points, self.base_anchors
        v = self.value_proj(value).view(bn, num_value, H, c // H)
        size = _offset_normalizer(spatial_shapes).to(value.device)  # (L, 2) (W_l, H_l)

        offsets, weights, refs, sub_counts = [], [], [], []
        for i, (q, hit) in enumerate(zip(queries, hits, strict=True)):
            m, k = hit.num_slots, self.multipliers[i]
            qg = q.reshape(-1, c)[hit.index].view(bn, m, c)  # the queries each camera sees
            off, w = self._sub_query_terms(i, qg, size)
            offsets.append(off.reshape(bn, m * k, H, L, P0, 2))
            aw = hit.anchor_weights
            aw = None if aw is None else aw.reshape(bn, m * k, D0)
            weights.append(scale_by_anchors(w.reshape(bn, m * k, H, L, P0), aw))
            refs.append(hit.reference_points.reshape(bn, m * k, D0, 2))
            sub_counts.append(m * k)

        num_sub = sum(sub_counts)
        if num_sub > 0:
            off = torch.cat(offsets, 1).view(bn, num_sub, H, L, D0, P0 // D0, 2)
            ref = torch.cat(refs, 1).float()[:, :, None, None, :, None, :]
            locations = (ref + off).view(bn, num_sub, H, L, P0, 2)
            out = _msda_fp32(
                v,
                spatial_shapes,
                level_start_index,
                locations,
                torch.cat(weights, 1),
                msda_export if self.export else self.msda_backend,
            )
            outs = out.split(sub_counts, dim=1)
        else:  # no camera sees any query (e.g. a degenerate calibration)
            outs = [value.new_zeros(bn, 0, c) for _ in queries]

        results = []
        for i, (q, hit, o) in enumerate(zip(queries, hits, outs, strict=True)):
            m, k = hit.num_slots, self.multipliers[i]
            o = o.view(bn, m, k, c).sum(2)  # merge the sub-queries of a query
            o = o * hit.valid.reshape(bn, m, 1).to(o.dtype)  # padding slots add nothing
            if hit.dense:
                # Slot j of every camera is query j: a sum over cameras, no scatter (which the
                # ONNX exporter turns into a ScatterElements that drops repeated indices).
                slots = o.view(b, bn // b, m, c).sum(1).to(q.dtype)
            else:
                slots = q.new_zeros(q.shape[0] * q.shape[1], c).index_add(
                    0, hit.index, o.reshape(-1, c).to(q.dtype)
                )
            slots = slots.view(b, -1, c) / hit.count.unsqueeze(-1).to(q.dtype)
            results.append(q + self.dropout(self.output_proj(slots)))
        return results

    def _forward_export(
        self,
        queries: Sequence[torch.Tensor],
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        hits: Sequence[CameraHits],
    ) -> list[torch.Tensor]:
        """The straightforward forward's result for dense hits (gather_camera_hits_dense:
        slot j of every camera is query j), arranged for a traced graph:
        - offsets (divided by the level sizes) and softmaxed weights are computed once per
          query, not once per (camera, slot): the dense slots would repeat every query's
          linear layers N_cam times;
        - one deformable-attention call per camera covers the sub-queries of all planes, with
          the weights of the queries the camera does not see set to zero, and the calls' sum
          is the sum over cameras; no (camera, slot) tensor is ever built, so the largest
          temporary is one camera's sampling locations, not N_cam of them.
        The work of the sampling stays that of the dense slots; the memory is bounded by one
        camera's share.
        """
        b = queries[0].shape[0]
        bn, num_value, c = value.shape
        n = bn // b
        H, L = self.num_heads, self.num_levels
        P0, D0 = self.base_points, self.base_anchors
        v = self.value_proj(value).view(b, n, num_value, H, c // H)
        size = _offset_normalizer(spatial_shapes).to(value.device)  # (L, 2) (W_l, H_l)
        offsets, weights, sub_counts = [], [], []
        for i, q in enumerate(queries):
            nq, k = q.shape[1], self.multipliers[i]
            off, w = self._sub_query_terms(i, q, size)
            offsets.append(off.reshape(b, nq * k, H, L, P0, 2))
            weights.append(w.reshape(b, nq * k, H, L, P0))
            sub_counts.append(nq * k)
        num_sub = sum(sub_counts)
        off = torch.cat(offsets, 1).view(b, num_sub, H, L, D0, P0 // D0, 2)
        w = torch.cat(weights, 1)  # (B, Q_sub, H, L, P0)
        total = value.new_zeros(b, num_sub, c, dtype=torch.float32)
        if any(h.anchor_weights is not None for h in hits) and not all(
            h.anchor_weights is not None for h in hits
        ):
            raise ValueError("anchor_weights must be given for every plane or for none")
        for cam in range(n):
            refs, seen, factors = [], [], []
            for i, (q, hit) in enumerate(zip(queries, hits, strict=True)):
                nq, k = q.shape[1], self.multipliers[i]
                ref = hit.reference_points.view(b, n, nq * k, D0, 2)[:, cam]
                refs.append(ref)
                visible = hit.valid.view(b, n, nq, 1)[:, cam].expand(b, nq, k)
                seen.append(visible.reshape(b, nq * k))
                if hit.anchor_weights is not None:
                    factors.append(hit.anchor_weights.view(b, n, nq * k, D0)[:, cam])
            ref = torch.cat(refs, 1).float()[:, :, None, None, :, None, :]
            locations = (ref + off).view(b, num_sub, H, L, P0, 2)
            mask = torch.cat(seen, 1).to(w.dtype)[:, :, None, None, None]
            w_cam = scale_by_anchors(w, torch.cat(factors, 1) if factors else None)
            out = _msda_fp32(
                v[:, cam],
                spatial_shapes,
                level_start_index,
                locations,
                w_cam * mask,
                msda_export if self.export else self.msda_backend,
            )
            total = total + out.float()
        results = []
        for i, (q, hit, o) in enumerate(
            zip(queries, hits, total.split(sub_counts, dim=1), strict=True)
        ):
            slots = o.view(b, q.shape[1], self.multipliers[i], c).sum(2).to(q.dtype)
            slots = slots / hit.count.unsqueeze(-1).to(q.dtype)
            results.append(q + self.dropout(self.output_proj(slots)))
        return results

    def _forward_compact(
        self,
        queries: Sequence[torch.Tensor],
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        hits: Sequence[CameraHits],
    ) -> list[torch.Tensor]:
        """The same result as the straightforward forward, computed with less work:
        - offsets (already divided by the level sizes) and softmaxed weights are a function of
          the query alone: computed once per query, not once per (camera, slot);
        - a sub-query whose samples all miss every level adds exactly zero, to the output and
          to every gradient. A cheap, conservative test (the box spanned by its offsets around
          each anchor, against each level's extent) finds the sub-queries that may touch an
          image; only their locations are built and sampled, one op call per camera, and
          their results are added straight into their queries (at the Base shapes about half
          of the sub-queries are left out, and the full (camera, slot) location tensor, the
          largest temporary of the straightforward form, is never built).
        """
        b = queries[0].shape[0]
        bn, num_value, c = value.shape
        H, L = self.num_heads, self.num_levels
        P0, D0 = self.base_points, self.base_anchors
        v = self.value_proj(value).view(bn, num_value, H, c // H)
        size = _offset_normalizer(spatial_shapes).to(value.device)  # (L, 2) (W_l, H_l)
        # A normalised coordinate u touches level l when -1 <= u * W_l - 0.5 <= W_l; the margin
        # keeps the test conservative under rounding (a kept sub-query only costs time).
        lo = (-0.5 / size - 1e-4)[:, None, :]  # (L, 1, 2)
        hi = ((size + 0.5) / size + 1e-4)[:, None, :]

        per_query, picked = [], []  # per plane: (offsets, weights); per (plane, cam): picks
        for i, (q, hit) in enumerate(zip(queries, hits, strict=True)):
            m, k = hit.num_slots, self.multipliers[i]
            flat = q.reshape(-1, c)
            nq = flat.shape[0]
            off, w = self._sub_query_terms(i, flat, size)
            off = off.contiguous()  # (nq, k, H, L, P0, 2): one row block per sub-query
            w = w.contiguous()  # (nq, k, H, L, P0)
            per_query.append((off, w))
            with torch.no_grad():
                grouped = off.view(nq, k, H, L, D0, P0 // D0, 2)
                box_min = grouped.amin(dim=(2, 5))  # (nq, k, L, D0, 2)
                box_max = grouped.amax(dim=(2, 5))
                qidx = hit.index.view(bn, m)
                ref = hit.reference_points.view(bn, m, k, 1, D0, 2).float()
                touch = (ref + box_max[qidx] >= lo) & (ref + box_min[qidx] <= hi)
                touch = touch.all(-1).flatten(3).any(-1) & hit.valid.view(bn, m, 1)  # (bn, m, k)
            for cam in range(bn):
                slot, sub = touch[cam].nonzero().unbind(1)
                query = qidx[cam].index_select(0, slot)
                anchors = hit.reference_points[cam].view(m, k, D0, 2)[slot, sub].float()
                factors = None
                if hit.anchor_weights is not None:
                    factors = hit.anchor_weights[cam].view(m, k, D0)[slot, sub]
                picked.append((i, cam, query, query * k + sub, anchors, factors))

        sums = [q.new_zeros(q.shape[0] * q.shape[1], c) for q in queries]
        for cam in range(bn):
            parts = [p for p in picked if p[1] == cam and p[2].numel() > 0]
            if not parts:
                continue
            locations, weights = [], []
            for i, _, _, sub_ids, anchors, factors in parts:
                off, w = per_query[i]
                rows = off.view(-1, H, L, D0, P0 // D0, 2).index_select(0, sub_ids)
                rows = rows + anchors.view(-1, 1, 1, D0, 1, 2)
                locations.append(rows.view(-1, H, L, P0, 2))
                w_rows = w.view(-1, H, L, P0).index_select(0, sub_ids)
                weights.append(scale_by_anchors(w_rows, factors))
            out = _msda_fp32(
                v[cam : cam + 1],
                spatial_shapes,
                level_start_index,
                torch.cat(locations)[None],
                torch.cat(weights)[None],
                self.msda_backend,
            )[0]
            for (i, _, query, _, _, _), o in zip(
                parts, out.split([p[2].numel() for p in parts]), strict=True
            ):
                sums[i] = sums[i].index_add(0, query, o.to(sums[i].dtype))

        results = []
        for q, hit, total in zip(queries, hits, sums, strict=True):
            slots = total.view(b, -1, c) / hit.count.unsqueeze(-1).to(q.dtype)
            results.append(q + self.dropout(self.output_proj(slots)))
        return results
