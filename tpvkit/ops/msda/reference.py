"""Straightforward MSDA formulations: "grid_sample" (per-level F.grid_sample, the benchmark
baseline) and "reference" (explicit Python loops with bounds checks, for tests)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def msda_grid_sample(
    value: torch.Tensor,
    shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Per-level F.grid_sample, stack, multiply by the weights, sum (mmcv's pytorch version).
    Computes in value's dtype."""
    b, _, n_heads, d = value.shape
    _, q, _, n_levels, n_points, _ = sampling_locations.shape
    grids = 2 * sampling_locations.to(value.dtype) - 1  # grid_sample wants [-1, 1]
    sampled = []
    values = value.split([h * w for h, w in shapes], dim=1)
    for lvl, (h, w) in enumerate(shapes):
        v = values[lvl].flatten(2).transpose(1, 2).reshape(b * n_heads, d, h, w)
        grid = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # (B*nH, Q, P, 2)
        sampled.append(
            F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (B*nH, D, Q, P)
    weights = attention_weights.to(value.dtype).transpose(1, 2)
    weights = weights.reshape(b * n_heads, 1, q, n_levels * n_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # (B*nH, D, Q)
    return out.view(b, n_heads * d, q).transpose(1, 2).contiguous()


def msda_reference(
    value: torch.Tensor,
    shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Python loops over levels, points and the four corners, with explicit bounds checks.

    Computes in the promoted dtype of the inputs (give it float64). The corner weights are
    (1 - fx) / fx with fx = x - floor(x), so at exact pixel positions the derivative is the
    one-sided one of grid_sample and mmcv.
    """
    dt = torch.promote_types(
        torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype
    )
    value, loc, attn = value.to(dt), sampling_locations.to(dt), attention_weights.to(dt)
    b, _, n_heads, d = value.shape
    _, q, _, _, n_points, _ = loc.shape
    batch_idx = torch.arange(b, device=value.device).view(b, 1, 1)
    head_idx = torch.arange(n_heads, device=value.device).view(1, 1, n_heads)
    out = value.new_zeros(b, q, n_heads, d)
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        level = value[:, start : start + h * w].view(b, h, w, n_heads, d)
        start += h * w
        for p in range(n_points):
            x = loc[:, :, :, lvl, p, 0] * w - 0.5  # (B, Q, nH) in pixel units
            y = loc[:, :, :, lvl, p, 1] * h - 0.5
            x0, y0 = x.detach().floor(), y.detach().floor()
            fx, fy = x - x0, y - y0
            for dy in (0, 1):
                for dx in (0, 1):
                    xi, yi = (x0 + dx).long(), (y0 + dy).long()
                    valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
                    corner = level[
                        batch_idx.expand_as(xi),
                        yi.clamp(0, h - 1),
                        xi.clamp(0, w - 1),
                        head_idx.expand_as(xi),
                    ]  # (B, Q, nH, D)
                    bilinear = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
                    weight = torch.where(valid, bilinear * attn[:, :, :, lvl, p], 0.0)
                    out = out + weight.unsqueeze(-1) * corner
    return out.reshape(b, q, n_heads * d)
