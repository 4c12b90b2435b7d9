"""Pure tensor geometry of the TPV model: plane cells, pillar reference points, their projection
into the cameras, the cross-view anchors, and the plane coordinates of points and voxels.

Axes: the TPV planes are hw (rows h = LiDAR y, cols w = LiDAR x), zh (rows z, cols h) and wz
(rows w, cols z); a plane cell of an axis with n cells over [lo, hi) covers
[lo + i * s, lo + (i + 1) * s) with s = (hi - lo) / n and has its centre at lo + (i + 0.5) * s.
Normalised plane coordinates are (x = column, y = row) in [0, 1], with pixel i centred at
(i + 0.5) / n (the align_corners=False convention of grid_sample and of the MSDA op).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

PLANES: tuple[str, ...] = ("hw", "zh", "wz")
PILLAR_SAMPLINGS: tuple[str, ...] = ("center", "tpvformer")
POINT_SAMPLINGS: tuple[str, ...] = ("center", "tpvformer")


def plane_shape(plane: str, tpv_h: int, tpv_w: int, tpv_z: int) -> tuple[int, int]:
    """(rows, cols) of a plane: hw -> (H, W), zh -> (Z, H), wz -> (W, Z)."""
    return {"hw": (tpv_h, tpv_w), "zh": (tpv_z, tpv_h), "wz": (tpv_w, tpv_z)}[plane]


def cell_centers(
    lo: float, hi: float, n: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """(n,) float32 centres lo + (i + 0.5) * (hi - lo) / n of n equal cells over [lo, hi)."""
    i = torch.arange(n, dtype=torch.float32, device=device)
    return lo + (i + 0.5) * ((hi - lo) / n)


def pillar_fractions(
    num_points: int, extent: float, mode: str = "center", device: torch.device | str | None = None
) -> torch.Tensor:
    """(D,) positions of a pillar's D reference points as fractions of the axis extent.

    "center": the centres of D equal sub-intervals, (k + 0.5) / D.
    "tpvformer": the public code's rule, D points evenly spaced from 0.5 m above the minimum to
    0.5 m below the maximum (linspace(0.5, extent - 0.5, D) / extent, extent in metres).
    """
    if mode == "center":
        k = torch.arange(num_points, dtype=torch.float32, device=device)
        return (k + 0.5) / num_points
    if mode == "tpvformer":
        return (
            torch.linspace(0.5, extent - 0.5, num_points, dtype=torch.float32, device=device)
            / extent
        )
    raise ValueError(f"pillar sampling '{mode}' is not one of {', '.join(PILLAR_SAMPLINGS)}")


def pillar_reference_points(
    plane: str,
    tpv_h: int,
    tpv_w: int,
    tpv_z: int,
    num_points: int,
    point_cloud_range: Sequence[float],
    mode: str = "center",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(Q, D, 3) LiDAR-frame xyz (metres) of the D pillar points of every query of a plane.

    Queries are in the row-major order of the plane's embedding: hw q = h * W + w, zh
    q = z * H + h, wz q = w * Z + z. The pillar runs along the axis the plane does not span
    (z for hw, x for zh, y for wz), through the query's cell centre on the other two axes.
    """
    x0, y0, z0, x1, y1, z1 = (float(v) for v in point_cloud_range)
    xs = cell_centers(x0, x1, tpv_w, device)  # (W,)
    ys = cell_centers(y0, y1, tpv_h, device)  # (H,)
    zs = cell_centers(z0, z1, tpv_z, device)  # (Z,)
    if plane == "hw":
        pil = z0 + pillar_fractions(num_points, z1 - z0, mode, device) * (z1 - z0)  # (D,)
        x = xs.view(1, tpv_w, 1).expand(tpv_h, tpv_w, num_points)
        y = ys.view(tpv_h, 1, 1).expand(tpv_h, tpv_w, num_points)
        z = pil.view(1, 1, num_points).expand(tpv_h, tpv_w, num_points)
    elif plane == "zh":
        pil = x0 + pillar_fractions(num_points, x1 - x0, mode, device) * (x1 - x0)
        x = pil.view(1, 1, num_points).expand(tpv_z, tpv_h, num_points)
        y = ys.view(1, tpv_h, 1).expand(tpv_z, tpv_h, num_points)
        z = zs.view(tpv_z, 1, 1).expand(tpv_z, tpv_h, num_points)
    elif plane == "wz":
        pil = y0 + pillar_fractions(num_points, y1 - y0, mode, device) * (y1 - y0)
        x = xs.view(tpv_w, 1, 1).expand(tpv_w, tpv_z, num_points)
        y = pil.view(1, 1, num_points).expand(tpv_w, tpv_z, num_points)
        z = zs.view(1, tpv_z, 1).expand(tpv_w, tpv_z, num_points)
    else:
        raise ValueError(f"unknown plane '{plane}' (one of {', '.join(PLANES)})")
    return torch.stack([x, y, z], dim=-1).reshape(-1, num_points, 3)


def project_to_cameras(
    points: torch.Tensor,
    lidar2img: torch.Tensor,
    img_hw: tuple[int, int],
    eps: float = 1e-5,
    with_depth: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Project grid-frame points into every camera; normalise by the padded image size.

    points (P, 3) xyz in the grid frame (LiDAR, or ego for ego-frame models), lidar2img
    (B, N_cam, 4, 4) from that frame to pixels (ego2img for ego-frame models), img_hw = (H, W)
    of the padded image.
    Returns uv (B, N_cam, P, 2) with (u / W, v / H) and valid (B, N_cam, P): depth > eps and
    0 < u, v < 1 (strict, as the public code); with_depth: also the camera depth (B, N_cam, P)
    (the third row of the projection, metres for a pinhole K). Computed in float32 at least,
    whatever the autocast state, because the homogeneous division is ill-conditioned in half
    precision.
    """
    dtype = torch.promote_types(points.dtype, torch.float32)
    with torch.autocast(device_type=points.device.type, enabled=False):
        pts = points.to(dtype)
        homo = torch.cat([pts, torch.ones_like(pts[:, :1])], dim=-1)  # (P, 4)
        cam = torch.einsum("bnij,pj->bnpi", lidar2img.to(dtype), homo)  # (B, N, P, 4)
        depth = cam[..., 2:3]
        uv = cam[..., 0:2] / torch.clamp(depth, min=eps)
        scale = uv.new_tensor([float(img_hw[1]), float(img_hw[0])])
        uv = uv / scale
        valid = (depth[..., 0] > eps) & (uv > 0.0).all(-1) & (uv < 1.0).all(-1)
    if with_depth:
        return uv, valid, depth[..., 0]
    return uv, valid


def anchor_depth_weights(
    likelihood: torch.Tensor,
    uv: torch.Tensor,
    depth: torch.Tensor,
    min_depth: float,
    max_depth: float,
) -> torch.Tensor:
    """The depth likelihood of projected points: likelihood (B * N_cam, K, h, w) over K uniform
    depth bins of [min_depth, max_depth] per feature cell, uv (B, N_cam, P, 2) normalised
    pixels and depth (B, N_cam, P) camera depths (project_to_cameras). Returns (B, N_cam, P):
    the likelihood interpolated bilinearly at uv and linearly between the bin centres at the
    depth (clamped to the first / last bin, and to the image border)."""
    b, n, p = depth.shape
    k = likelihood.shape[1]
    grid = uv.to(likelihood.dtype).reshape(b * n, p, 1, 2) * 2.0 - 1.0
    # every bin at every point (a 5D, trilinear grid_sample has no ONNX export), then the two
    # bins around each point's depth
    per_bin = F.grid_sample(
        likelihood, grid, mode="bilinear", padding_mode="border", align_corners=False
    )[..., 0]  # (BN, K, P)
    pos = (depth.to(likelihood.dtype) - min_depth) / (max_depth - min_depth) * k - 0.5
    pos = pos.reshape(b * n, 1, p).clamp(0.0, k - 1.0)
    lo = pos.floor().clamp(max=k - 2 if k > 1 else 0)
    frac = pos - lo
    lo = lo.long()
    hi = (lo + 1).clamp(max=k - 1)
    out = per_bin.gather(1, lo) * (1.0 - frac) + per_bin.gather(1, hi) * frac
    return out.view(b, n, p)


def cross_view_reference_points(
    tpv_h: int,
    tpv_w: int,
    tpv_z: int,
    num_anchors: int,
    planes: Sequence[str] = PLANES,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(sum_p Q_p, L, A, 2) anchors of cross-view hybrid attention, normalised (x=col, y=row).

    L = len(planes) value "levels" (the planes). A query's anchors on its own plane all sit on
    its own cell; on another plane they form a line through the query's position, along the
    axis the query's plane does not span, spread from the first to the last cell centre
    (linspace(0.5, n - 0.5, A) / n, as the public code). Queries are concatenated over planes
    in the given order, each in its embedding's row-major order.
    """
    n = {"h": tpv_h, "w": tpv_w, "z": tpv_z}

    def centers(axis: str) -> torch.Tensor:  # (n,) normalised cell centres
        return (torch.arange(n[axis], dtype=torch.float32, device=device) + 0.5) / n[axis]

    def line(axis: str) -> torch.Tensor:  # (A,) anchors along a missing axis
        k = n[axis]
        return torch.linspace(0.5, k - 0.5, num_anchors, dtype=torch.float32, device=device) / k

    # Each plane's (row axis, col axis); a plane's coordinates are (x = col, y = row).
    axes = {"hw": ("h", "w"), "zh": ("z", "h"), "wz": ("w", "z")}
    out = []
    for q_plane in planes:
        r_ax, c_ax = axes[q_plane]
        (missing,) = {"h", "w", "z"} - {r_ax, c_ax}
        rows, cols = n[r_ax], n[c_ax]
        # Per query: its coordinate along each axis, (Q, A) each; the missing axis is the line.
        coord = {
            r_ax: centers(r_ax).view(rows, 1, 1).expand(rows, cols, num_anchors),
            c_ax: centers(c_ax).view(1, cols, 1).expand(rows, cols, num_anchors),
            missing: line(missing).view(1, 1, num_anchors).expand(rows, cols, num_anchors),
        }
        per_level = []
        for v_plane in planes:
            vr, vc = axes[v_plane]
            if v_plane == q_plane:
                xy = torch.stack([coord[c_ax], coord[r_ax]], dim=-1)  # own cell, repeated
            else:
                xy = torch.stack([coord[vc], coord[vr]], dim=-1)
            per_level.append(xy.reshape(rows * cols, num_anchors, 2))
        out.append(torch.stack(per_level, dim=1))  # (Q, L, A, 2)
    return torch.cat(out, dim=0)


def plane_grid_reference_points(
    rows: int, cols: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """(rows * cols, 2) normalised (x, y) centres of a plane's cells, row-major."""
    y = (torch.arange(rows, dtype=torch.float32, device=device) + 0.5) / rows
    x = (torch.arange(cols, dtype=torch.float32, device=device) + 0.5) / cols
    return torch.stack([x.view(1, cols).expand(rows, cols), y.view(rows, 1).expand(rows, cols)], -1)


def points_to_grid_coords(
    points: torch.Tensor,
    point_cloud_range: Sequence[float],
    grid: Sequence[int],
    mode: str = "center",
) -> torch.Tensor:
    """(..., 3) LiDAR xyz -> (..., 3) normalised (x, y, z) grid coordinates in [0, 1].

    "center" (tpvkit): the point's continuous position, clamped into the range, so a point at a
    voxel centre (i + 0.5) * s gets coordinate (i + 0.5) / n: exactly that voxel's cell centre.
    "tpvformer" (public quirk): the integer voxel index under the public voxelisation
    (interval = range / (grid - 1), points clipped into the range), divided by the grid size,
    i.e. the cell's lower corner; with align_corners=False sampling this is a half-cell shift.
    The index is computed in float64 so that floor() agrees with the data pipeline's numpy.
    """
    lo = torch.tensor([float(v) for v in point_cloud_range[:3]], device=points.device)
    hi = torch.tensor([float(v) for v in point_cloud_range[3:]], device=points.device)
    g = torch.tensor([float(v) for v in grid], device=points.device)
    if mode == "center":
        frac = (points.to(torch.float32) - lo) / (hi - lo)
        return frac.clamp(0.0, 1.0)
    if mode == "tpvformer":
        p64 = points.to(torch.float64)
        # The range straight from the Python floats: a float32 detour moves 51.2 by 1e-6,
        # enough to flip floor() at the last voxel.
        lo64 = torch.tensor([float(v) for v in point_cloud_range[:3]], dtype=torch.float64)
        hi64 = torch.tensor([float(v) for v in point_cloud_range[3:]], dtype=torch.float64)
        lo64, hi64, g64 = lo64.to(points.device), hi64.to(points.device), g.double()
        interval = (hi64 - lo64) / (g64 - 1)
        idx = torch.floor((torch.minimum(torch.maximum(p64, lo64), hi64) - lo64) / interval)
        return (idx / g64).to(torch.float32)
    raise ValueError(f"point sampling '{mode}' is not one of {', '.join(POINT_SAMPLINGS)}")


def voxel_centers(
    grid: Sequence[int],
    point_cloud_range: Sequence[float],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(X, Y, Z, 3) LiDAR xyz of the voxel centres of an (X, Y, Z) grid, indexed [x, y, z]."""
    X, Y, Z = (int(v) for v in grid)
    x0, y0, z0, x1, y1, z1 = (float(v) for v in point_cloud_range)
    xs, ys, zs = (
        cell_centers(x0, x1, X, device),
        cell_centers(y0, y1, Y, device),
        cell_centers(z0, z1, Z, device),
    )
    return torch.stack(torch.meshgrid(xs, ys, zs, indexing="ij"), dim=-1)
