"""Attention modules run alone on small shapes, checked against slow float64 references that
follow the public formulation literally (Python loops over queries, heads, levels, points;
a hand-written bilinear sampler; no grouping, no packing)."""

from __future__ import annotations

import math

import pytest
import torch

from tpvkit.models.attention import (
    CrossViewHybridAttention,
    HWSelfAttention,
    ImageCrossAttention,
    gather_camera_hits,
    gather_camera_hits_dense,
)
from tpvkit.models.geometry import cross_view_reference_points, plane_grid_reference_points

torch.set_default_dtype(torch.float32)


def bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """img (rows, cols, D); (x, y) normalised with pixel i centred at (i + 0.5) / n; zero
    padding outside (the MSDA op's convention)."""
    rows, cols, d = img.shape
    px, py = x * cols - 0.5, y * rows - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    fx, fy = px - x0, py - y0
    out = torch.zeros(d, dtype=torch.float64)
    for xi, wx in ((x0, 1 - fx), (x0 + 1, fx)):
        for yi, wy in ((y0, 1 - fy), (y0 + 1, fy)):
            if 0 <= xi < cols and 0 <= yi < rows:
                out += wx * wy * img[yi, xi].double()
    return out


def _lin(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x.double() @ layer.weight.double().t() + layer.bias.double()


def _randomise(module: torch.nn.Module, scale: float = 0.3) -> None:
    """Non-trivial weights everywhere (the zero-initialised offset/weight layers included)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


# ---------------------------------------------------------------------------------------------
# camera hits


def test_gather_camera_hits_matches_loop() -> None:
    g = torch.Generator().manual_seed(0)
    B, N, Q, D = 2, 3, 7, 2
    valid = torch.rand(B, N, Q, D, generator=g) < 0.3
    uv = torch.rand(B, N, Q, D, 2, generator=g)
    hits = gather_camera_hits(uv, valid)
    lists = [[[q for q in range(Q) if valid[b, n, q].any()] for n in range(N)] for b in range(B)]
    M = max(len(x) for row in lists for x in row)
    assert hits.num_slots == M
    index = hits.index.view(B, N, M)
    for b in range(B):
        for n in range(N):
            seen = lists[b][n]
            assert hits.valid[b, n].tolist() == [i < len(seen) for i in range(M)]
            assert (index[b, n, : len(seen)] - b * Q).tolist() == seen
            for s, q in enumerate(seen):
                assert torch.equal(hits.reference_points[b * N + n, s], uv[b, n, q])
        for q in range(Q):
            cams = sum(bool(valid[b, n, q].any()) for n in range(N))
            assert hits.count[b, q] == max(cams, 1)


# ---------------------------------------------------------------------------------------------
# image cross-attention


@torch.no_grad()
def _ica_reference(ica, queries, value, shapes, uv, valid, factors=None):
    """Public ICA with the flat (ungrouped) pillar formulation, per (sample, plane, query);
    factors: per plane (B, N, Q, D) scales of each pillar point's samples (depth-aware)."""
    B = queries[0].shape[0]
    BN, S, C = value.shape
    N = BN // B
    H, L = ica.num_heads, ica.num_levels
    d = C // H
    v = _lin(ica.value_proj, value).view(BN, S, H, d)
    maps, start = [], 0
    for h_l, w_l in shapes:
        maps.append(v[:, start : start + h_l * w_l].reshape(BN, h_l, w_l, H, d))
        start += h_l * w_l
    outs = []
    for i, q_all in enumerate(queries):
        P, Dp = ica.num_points[i], ica.num_anchors[i]
        res = torch.zeros(q_all.shape, dtype=torch.float64)
        for b in range(B):
            for q in range(q_all.shape[1]):
                query = q_all[b, q]
                off = _lin(ica.sampling_offsets[i], query).view(H, L, P, 2)
                w = _lin(ica.attention_weights[i], query).view(H, L * P).softmax(-1).view(H, L, P)
                cams = [n for n in range(N) if valid[i][b, n, q].any()]
                acc = torch.zeros(C, dtype=torch.float64)
                for n in cams:
                    for h in range(H):
                        for lvl, (h_l, w_l) in enumerate(shapes):
                            for p in range(P):
                                anchor = uv[i][b, n, q, p // (P // Dp)].double()
                                x = float(anchor[0] + off[h, lvl, p, 0] / w_l)
                                y = float(anchor[1] + off[h, lvl, p, 1] / h_l)
                                sample = bilinear(maps[lvl][b * N + n, :, :, h], x, y)
                                scale = 1.0
                                if factors is not None:
                                    scale = float(factors[i][b, n, q, p // (P // Dp)])
                                acc[h * d : (h + 1) * d] += w[h, lvl, p] * scale * sample
                slot = acc / max(len(cams), 1)
                res[b, q] = query.double() + _lin(ica.output_proj, slot)
        outs.append(res)
    return outs


@pytest.mark.parametrize("depth_aware", [False, True])
@pytest.mark.parametrize("form", ["compact", "straightforward", "export"])
def test_image_cross_attention_matches_reference(form: str, depth_aware: bool) -> None:
    """Each form of the forward; "export" is the export mode's (dense camera slots, one
    GridSample MSDA call per camera with the unseen queries weighted 0). depth_aware: every
    (camera, query, pillar point) scales its samples by its own factor (anchor_weights)."""
    torch.manual_seed(0)
    C, H, L = 8, 2, 2
    shapes = [(5, 7), (3, 4)]
    ica = ImageCrossAttention(C, H, L, num_points=[2, 4, 4], num_anchors=[1, 2, 2], dropout=0.0)
    ica.compact = form == "compact"
    ica.export = form == "export"
    _randomise(ica)
    B, N = 2, 2
    plane_q = [5, 3, 4]
    queries = [torch.randn(B, q, C) for q in plane_q]
    S = sum(h * w for h, w in shapes)
    value = torch.randn(B * N, S, C)
    uv = [torch.rand(B, N, q, d, 2) * 1.2 - 0.1 for q, d in zip(plane_q, [1, 2, 2], strict=True)]
    valid = [torch.rand(B, N, q, d) < 0.5 for q, d in zip(plane_q, [1, 2, 2], strict=True)]
    valid[1][:, :, 0] = False  # a query no camera sees: only output_proj(0) is added
    gather = gather_camera_hits_dense if form == "export" else gather_camera_hits
    hits = [gather(u, m) for u, m in zip(uv, valid, strict=True)]
    factors = None
    if depth_aware:
        factors = [torch.rand(m.shape) for m in valid]
        for hit, f in zip(hits, factors, strict=True):
            hit.anchor_weights = hit.pack(f)
    spatial = torch.tensor(shapes)
    starts = torch.tensor([0, shapes[0][0] * shapes[0][1]])
    out = ica(queries, value, spatial, starts, hits)
    ref = _ica_reference(ica, queries, value, shapes, uv, valid, factors)
    for o, r in zip(out, ref, strict=True):
        assert torch.allclose(o.double(), r, atol=1e-4), (o.double() - r).abs().max()
    assert torch.allclose(out[1][:, 0], queries[1][:, 0] + ica.output_proj.bias, atol=1e-6)


@pytest.mark.parametrize("depth_aware", [False, True])
def test_compact_image_cross_attention_equals_the_straightforward_one(depth_aware: bool) -> None:
    # Reference points spread far outside the images: many sub-queries miss every level and
    # are skipped by the compact path; values and every gradient (the pillar points' depth
    # factors' included) must not change.
    torch.manual_seed(3)
    C, H, L = 8, 2, 3
    shapes = [(6, 9), (3, 5), (1, 2)]
    B, N, plane_q, anchors = 2, 3, [7, 4, 5], [2, 4, 4]
    queries = [torch.randn(B, q, C) for q in plane_q]
    value = torch.randn(B * N, sum(h * w for h, w in shapes), C)
    uv = [torch.rand(B, N, q, d, 2) * 6 - 2.5 for q, d in zip(plane_q, anchors, strict=True)]
    valid = [torch.rand(B, N, q, d) < 0.6 for q, d in zip(plane_q, anchors, strict=True)]
    hits = [gather_camera_hits(u, m) for u, m in zip(uv, valid, strict=True)]
    factors = [torch.rand(m.shape) for m in valid]
    spatial = torch.tensor(shapes)
    starts = torch.tensor([0, 54, 69])
    results = []
    for compact in (False, True):
        torch.manual_seed(0)
        ica = ImageCrossAttention(
            C, H, L, num_points=[4, 8, 8], num_anchors=anchors, dropout=0.0, compact=compact
        )
        _randomise(ica)
        leaves = [t.clone().requires_grad_() for t in (*queries, value)]
        scales = [f.clone().requires_grad_() for f in factors]
        if depth_aware:
            for hit, f in zip(hits, scales, strict=True):
                hit.anchor_weights = hit.pack(f)
        out = ica(leaves[:3], leaves[3], spatial, starts, hits)
        g = torch.Generator().manual_seed(5)
        sum((o * torch.randn(o.shape, generator=g)).sum() for o in out).backward()
        grads = [t.grad for t in leaves] + [p.grad for p in ica.parameters()]
        if depth_aware:
            grads += [f.grad for f in scales]
        results.append([o.detach() for o in out] + grads)
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()


def test_image_cross_attention_without_any_hit() -> None:
    ica = ImageCrossAttention(8, 2, 1, num_points=[2], num_anchors=[1], dropout=0.0)
    q = torch.randn(1, 6, 8)
    hits = [
        gather_camera_hits(torch.rand(1, 2, 6, 1, 2), torch.zeros(1, 2, 6, 1, dtype=torch.bool))
    ]
    out = ica([q], torch.randn(2, 12, 8), torch.tensor([[3, 4]]), torch.tensor([0]), hits)
    assert torch.allclose(out[0], q + ica.output_proj.bias)


def test_image_cross_attention_init_offsets() -> None:
    """Public init: per head a direction on the unit square's border, point j of each anchor
    at j + 1 times it, zero weights (uniform attention)."""
    ica = ImageCrossAttention(16, 4, 2, num_points=[4, 8, 8], num_anchors=[2, 4, 4])
    bias = ica.sampling_offsets[1].bias.view(4, 2, 4, 2, 2)  # heads, levels, anchors, j, xy
    dirs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    for h in range(4):
        for j in range(2):
            assert torch.allclose(bias[h, :, :, j], dirs[h] * (j + 1), atol=1e-6)
    assert torch.count_nonzero(ica.attention_weights[2].bias) == 0


# ---------------------------------------------------------------------------------------------
# cross-view hybrid attention


@torch.no_grad()
def _cvha_reference(cvha, queries, pos, ref, shapes):
    H, L, P, A = cvha.num_heads, cvha.num_levels, cvha.num_points, cvha.num_anchors
    B, _, C = queries[0].shape
    d = C // H
    q_pos = [q.double() + p.double() for q, p in zip(queries, pos, strict=True)]
    maps = [
        _lin(cvha.value_proj[lv], q_pos[lv]).view(B, r, c, H, d) for lv, (r, c) in enumerate(shapes)
    ]
    outs, offset = [], 0
    for i, qp in enumerate(q_pos):
        res = torch.zeros(qp.shape, dtype=torch.float64)
        for b in range(B):
            for q in range(qp.shape[1]):
                off = _lin(cvha.sampling_offsets[i], qp[b, q]).view(H, L, P, 2)
                logits = _lin(cvha.attention_weights[i], qp[b, q]).view(H, L, P + 1)
                w = logits[..., :P].softmax(-1) * logits[..., P:].softmax(-2)
                acc = torch.zeros(C, dtype=torch.float64)
                for h in range(H):
                    for lv, (r, c) in enumerate(shapes):
                        for p in range(P):
                            anchor = ref[offset + q, lv, p // (P // A)].double()
                            x = float(anchor[0] + off[h, lv, p, 0] / c)
                            y = float(anchor[1] + off[h, lv, p, 1] / r)
                            acc[h * d : (h + 1) * d] += w[h, lv, p] * bilinear(
                                maps[lv][b, :, :, h], x, y
                            )
                res[b, q] = queries[i][b, q].double() + _lin(cvha.output_proj[i], acc)
        outs.append(res)
        offset += qp.shape[1]
    return outs


def test_cross_view_hybrid_attention_matches_reference() -> None:
    torch.manual_seed(0)
    Ht, Wt, Zt, C, heads, A, P = 3, 4, 2, 8, 4, 2, 4
    shapes = [(Ht, Wt), (Zt, Ht), (Wt, Zt)]
    cvha = CrossViewHybridAttention(C, heads, shapes, num_anchors=A, num_points=P, dropout=0.0)
    _randomise(cvha, 0.2)
    queries = [torch.randn(2, r * c, C) for r, c in shapes]
    pos = [torch.randn(1, r * c, C) for r, c in shapes]
    ref = cross_view_reference_points(Ht, Wt, Zt, A)
    out = cvha(queries, pos, ref)
    expected = _cvha_reference(cvha, queries, pos, ref, shapes)
    for o, r in zip(out, expected, strict=True):
        assert torch.allclose(o.double(), r, atol=1e-4), (o.double() - r).abs().max()


def test_cross_view_hybrid_attention_single_plane_bev() -> None:
    torch.manual_seed(0)
    shapes = [(3, 5)]
    cvha = CrossViewHybridAttention(8, 2, shapes, num_anchors=2, num_points=4, dropout=0.0)
    _randomise(cvha, 0.2)
    q, pos = [torch.randn(1, 15, 8)], [torch.randn(1, 15, 8)]
    ref = cross_view_reference_points(3, 5, 1, 2, planes=("hw",))
    out = cvha(q, pos, ref)
    assert torch.allclose(out[0].double(), _cvha_reference(cvha, q, pos, ref, shapes)[0], atol=1e-4)


def test_cross_view_init_own_plane_dominates() -> None:
    cvha = CrossViewHybridAttention(16, 8, [(3, 4), (2, 3), (4, 2)], num_anchors=4, num_points=8)
    q = [torch.zeros(1, n, 16) for n in (12, 6, 8)]
    _, weights = cvha.sampling(q)  # (B, Q, nH, L, P)
    per_level = weights.sum(-1)  # (B, Q, nH, L)
    own = torch.cat([torch.full((n,), i) for i, n in enumerate((12, 6, 8))])
    expected = math.exp(10) / (math.exp(10) + 2)
    for q_idx, lv in enumerate(own.tolist()):
        assert torch.allclose(per_level[0, q_idx, :, lv], torch.tensor(expected), atol=1e-6)
    # Own-plane offsets: a ring of radius (j + 1) / 2 cells; hw queries' own plane is level 0.
    bias = cvha.sampling_offsets[0].bias.view(8, 3, 8, 2)
    radius = bias[:, 0].norm(dim=-1)
    assert torch.allclose(radius, ((torch.arange(8) + 1) / 2).expand(8, 8), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# occupancy HW self-attention


@torch.no_grad()
def _hw_self_reference(attn, query, pos, ref, rows, cols):
    """The public two-entry (num_tpv_queue = 2) TSA: two passes over the same values with
    their own offsets and softmax, averaged."""
    B, Q, C = query.shape
    H, P = attn.num_heads, attn.num_points
    d = C // H
    qcat = torch.cat([query.double(), query.double() + pos.double()], -1)
    v = _lin(attn.value_proj, query).view(B, rows, cols, H, d)
    res = torch.zeros(B, Q, C, dtype=torch.float64)
    for b in range(B):
        for q in range(Q):
            off = _lin(attn.sampling_offsets, qcat[b, q]).view(H, 2, 1, P, 2)
            w = _lin(attn.attention_weights, qcat[b, q]).view(H, 2, P).softmax(-1)
            acc = torch.zeros(C, dtype=torch.float64)
            for entry in range(2):
                for h in range(H):
                    for p in range(P):
                        x = float(ref[q, 0] + off[h, entry, 0, p, 0] / cols)
                        y = float(ref[q, 1] + off[h, entry, 0, p, 1] / rows)
                        acc[h * d : (h + 1) * d] += w[h, entry, p] * bilinear(v[b, :, :, h], x, y)
            res[b, q] = query[b, q].double() + _lin(attn.output_proj, acc / 2)
    return res


def test_hw_self_attention_matches_two_entry_reference() -> None:
    torch.manual_seed(0)
    rows, cols, C = 3, 4, 8
    attn = HWSelfAttention(C, 2, rows, cols, num_points=3, dropout=0.0)
    _randomise(attn, 0.2)
    q, pos = torch.randn(2, rows * cols, C), torch.randn(1, rows * cols, C)
    ref = plane_grid_reference_points(rows, cols).reshape(-1, 2)
    out = attn(q, pos, ref)
    assert torch.allclose(
        out.double(), _hw_self_reference(attn, q, pos, ref, rows, cols), atol=1e-4
    )
