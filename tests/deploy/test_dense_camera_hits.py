"""The export-friendly camera packing (every query a slot of every camera) gives what the
packed one gives: the same hits as a Python loop, and the same encoder output."""

from __future__ import annotations

import math

import pytest
import torch

from tpvkit.config import EncoderConfig, ModelConfig
from tpvkit.models.attention import gather_camera_hits, gather_camera_hits_dense
from tpvkit.models.encoder import TPVEncoder

IMG_HW = (48, 80)


def test_dense_hits_match_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    b, n, q, d = 2, 3, 7, 4
    uv = torch.rand(b, n, q, d, 2, generator=g) * 3 - 1
    valid = torch.rand(b, n, q, d, generator=g) < 0.3
    hits = gather_camera_hits_dense(uv, valid)
    assert hits.dense and hits.num_slots == q
    for bi in range(b):
        for qi in range(q):
            seen = sum(bool(valid[bi, ni, qi].any()) for ni in range(n))
            assert hits.count[bi, qi] == max(seen, 1)
        for ni in range(n):
            for qi in range(q):
                slot = (bi * n + ni) * q + qi
                assert int(hits.index[slot]) == bi * q + qi
                sees = bool(valid[bi, ni, qi].any())
                assert bool(hits.valid[bi, ni, qi]) == sees
                expected = uv[bi, ni, qi] if sees else torch.zeros(d, 2)
                assert torch.equal(hits.reference_points[bi * n + ni, qi], expected)
    packed = gather_camera_hits(uv, valid)
    assert torch.equal(packed.count, hits.count)


def _cfg(mode: str, cvha_mode: str) -> ModelConfig:
    enc = EncoderConfig(
        num_hcab=2,
        num_hab=1 if cvha_mode == "full" else 0,
        num_heads=4,
        ffn_dim=32,
        dropout=0.0,
        num_points_in_pillar=[2, 4, 4],
        num_points_ica=[4, 8, 8],
        cvha_num_anchors=2,
        cvha_num_points=4,
        cvha_mode=cvha_mode,
        pos_dims=[8, 8, 0] if cvha_mode == "hw_self" else [6, 6, 4],
        num_levels=2,
        num_cams=4,
    )
    return ModelConfig(mode=mode, dim=16, tpv_h=8, tpv_w=7, tpv_z=4, encoder=enc)


def _cameras(b: int, n: int, yaw0: float) -> torch.Tensor:
    """n outward pinholes with a narrow field of view: each sees a different part of the
    planes, and some queries no camera at all."""
    h, w = IMG_HW
    out = torch.zeros(b, n, 4, 4)
    for bi in range(b):
        for i in range(n):
            yaw = yaw0 + bi * 0.7 + i * 2 * math.pi / n
            R = torch.tensor(
                [
                    [math.sin(yaw), -math.cos(yaw), 0.0],
                    [0.0, 0.0, -1.0],
                    [math.cos(yaw), math.sin(yaw), 0.0],
                ]
            )
            K = torch.tensor([[60.0, 0.0, w / 2], [0.0, 60.0, h / 2], [0.0, 0.0, 1.0]])
            out[bi, i] = torch.eye(4)
            out[bi, i, :3, :3] = K @ R
            out[bi, i, :3, 3] = K @ torch.tensor([0.3 * i, -0.2, 0.5])
    return out


@pytest.mark.parametrize(
    ("mode", "cvha_mode"), [("tpv", "full"), ("tpv", "hw_self"), ("bev", "full")]
)
@pytest.mark.slow
def test_dense_encoder_equals_packed(mode: str, cvha_mode: str) -> None:
    cfg = _cfg(mode, cvha_mode)
    torch.manual_seed(0)
    enc = TPVEncoder(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in enc.parameters():  # off the structured initialisation
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    b, n = 2, 4
    h, w = IMG_HW
    feats = [torch.randn(b, n, 16, h // s, w // s, generator=g) for s in (8, 16)]
    lidar2img = _cameras(b, n, yaw0=0.3)
    packed_hits = enc.camera_hits(lidar2img, IMG_HW)
    seen = packed_hits[0].valid.sum(-1)
    # The case worth testing: cameras see different numbers of queries, so packed slots pad.
    assert int(seen.max()) > int(seen.min()) > 0
    with torch.no_grad():
        packed = enc(feats, lidar2img, IMG_HW)
        enc.export = True  # the export form of the packing
        dense = enc(feats, lidar2img, IMG_HW)
    for p, d in zip(packed, dense, strict=True):
        assert p.shape == d.shape
        torch.testing.assert_close(d, p, rtol=1e-5, atol=1e-5)
    # and the image cross-attention does contribute (the comparison is not of bypasses)
    with torch.no_grad():
        blind = enc(feats, torch.zeros_like(lidar2img), IMG_HW)
    assert max(float((d - z).abs().max()) for d, z in zip(dense, blind, strict=True)) > 1e-2
