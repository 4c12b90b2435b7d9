"""Multi-scale deformable attention in the form a traced (ONNX) graph holds: standard
GridSample, Mul and ReduceSum nodes, with bounded intermediates; what the attention modules run
in export mode (tpvkit.models.tpvformer.TPVFormer.export_mode).

The "grid_sample" backend of tpvkit.ops.msda stacks the samples of all levels and points into
one (B*nH, D, Q, L*P) tensor before weighting them: ~6 GB at the Base shape with every query a
slot of every camera (the export's dense packing). Here each GridSample covers one level and a
chunk of its points, weighted and summed at once, so no intermediate exceeds
CHUNK_ELEMENTS floats; the chunking is fixed by the shapes, hence the same for every input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Largest sampled block (B*nH x D x Q x points-in-chunk) of one GridSample: 2**26 floats,
# 256 MiB in float32, i.e. one point at a time at the Base shape.
CHUNK_ELEMENTS = 1 << 26


def msda_export(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """tpvkit.ops.msda.multi_scale_deformable_attn's result (same arguments and shapes:
    value (B, S, nH, D), sampling_locations (B, Q, nH, L, P, 2) normalised, attention_weights
    (B, Q, nH, L, P) -> (B, Q, nH * D)), as a sum of chunked GridSamples."""
    del level_start_index  # implied by spatial_shapes; the levels are split by their sizes
    b, _, n_heads, d = value.shape
    _, q, _, n_levels, n_points, _ = sampling_locations.shape
    # Python ints from the level shapes: fixed by the image size, constant in the graph.
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    per_point = b * n_heads * d * q
    chunk = max(1, min(n_points, CHUNK_ELEMENTS // max(per_point, 1)))
    grids = (2 * sampling_locations - 1).transpose(1, 2).flatten(0, 1)  # (B*nH, Q, L, P, 2)
    weights = attention_weights.transpose(1, 2).flatten(0, 1)[:, None]  # (B*nH, 1, Q, L, P)
    values = value.split([h * w for h, w in shapes], dim=1)
    out = value.new_zeros(b * n_heads, d, q)
    for lvl, (h, w) in enumerate(shapes):
        v = values[lvl].flatten(2).transpose(1, 2).reshape(b * n_heads, d, h, w)
        for p0 in range(0, n_points, chunk):
            p1 = min(n_points, p0 + chunk)
            sampled = F.grid_sample(
                v,
                grids[:, :, lvl, p0:p1],
                mode="bilinear",
                padding_mode="zeros",
                align_corners=False,
            )  # (B*nH, D, Q, p1 - p0)
            out = out + (sampled * weights[..., lvl, p0:p1]).sum(-1)
    return out.view(b, n_heads * d, q).transpose(1, 2).contiguous()
