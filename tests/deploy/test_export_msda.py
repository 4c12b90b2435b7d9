"""The export form of deformable attention equals the slow reference (float64 loops), chunked
or not, with samples inside, across and outside the value maps."""

from __future__ import annotations

import pytest
import torch

import tpvkit.ops.msda.export as export_msda
from tpvkit.models.attention import _spatial_tensors
from tpvkit.ops.msda import multi_scale_deformable_attn


@pytest.mark.parametrize("chunk_elements", [1 << 26, 1])
def test_msda_export_matches_the_reference(monkeypatch, chunk_elements) -> None:
    monkeypatch.setattr(export_msda, "CHUNK_ELEMENTS", chunk_elements)
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 7), (3, 4), (1, 2)]
    spatial_shapes, starts = _spatial_tensors(shapes)
    b, q, heads, d, points = 2, 11, 3, 4, 5
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, heads, d, generator=g, dtype=torch.float64)
    loc = torch.rand(b, q, heads, len(shapes), points, 2, generator=g, dtype=torch.float64)
    loc = loc * 1.4 - 0.2  # some samples straddle or leave the maps (they read zeros)
    attn = torch.rand(b, q, heads, len(shapes), points, generator=g, dtype=torch.float64)
    expected = multi_scale_deformable_attn(
        value, spatial_shapes, starts, loc, attn, backend="reference"
    )
    got = export_msda.msda_export(value, spatial_shapes, starts, loc, attn)
    assert got.shape == (b, q, heads * d)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
