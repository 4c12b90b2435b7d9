"""The TPV encoder on random multi-level features: positional encodings, feature flattening,
batch independence, BEV and occupancy structures, activation checkpointing."""

from __future__ import annotations

import math

import pytest
import torch

from tpvkit.config import EncoderConfig, ModelConfig
from tpvkit.errors import TpvkitError
from tpvkit.models.encoder import AxisPositionalEncoding, TPVEncoder

IMG_HW = (48, 80)


def small_cfg(mode: str = "tpv", cvha_mode: str = "full", **enc) -> ModelConfig:
    params = dict(
        num_hcab=1,
        num_hab=1,
        num_heads=4,
        ffn_dim=32,
        dropout=0.0,
        num_points_in_pillar=[2, 4, 4],
        num_points_ica=[2, 4, 4],
        cvha_num_anchors=2,
        cvha_num_points=4,
        cvha_mode=cvha_mode,
        pos_dims=[8, 8, 0] if cvha_mode == "hw_self" else [6, 6, 4],
        num_levels=2,
    )
    params.update(enc)
    return ModelConfig(
        mode=mode, dim=16, tpv_h=6, tpv_w=5, tpv_z=4, encoder=EncoderConfig(**params)
    )


def ring_lidar2img(b: int = 1, n: int = 6, f: float = 30.0) -> torch.Tensor:
    """n pinhole cameras at the origin looking outwards every 360/n degrees."""
    H, W = IMG_HW
    out = torch.zeros(b, n, 4, 4)
    for i in range(n):
        yaw = i * 2 * math.pi / n
        R = torch.tensor(
            [
                [math.sin(yaw), -math.cos(yaw), 0.0],
                [0.0, 0.0, -1.0],
                [math.cos(yaw), math.sin(yaw), 0.0],
            ]
        )
        K = torch.tensor([[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]])
        out[:, i] = torch.eye(4)
        out[:, i, :3, :3] = K @ R
    return out


def features(cfg: ModelConfig, b: int = 1, n: int = 6, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    H, W = IMG_HW
    return [
        torch.randn(b, n, cfg.dim, H // s, W // s, generator=g)
        for s in (8, 16, 32, 64)[: cfg.encoder.num_levels]
    ]


def test_positional_encoding_layout() -> None:
    pe = AxisPositionalEncoding(3, 4, 2, dims=[5, 6, 7])
    h, w, z = pe.h_embed.weight, pe.w_embed.weight, pe.z_embed.weight
    hw, zh, wz = pe("hw")[0], pe("zh")[0], pe("wz")[0]
    assert hw.shape == (12, 18) and zh.shape == (6, 18) and wz.shape == (8, 18)
    for hi in range(3):
        for wi in range(4):
            assert torch.equal(hw[hi * 4 + wi], torch.cat([h[hi], w[wi], torch.zeros(7)]))
    for zi in range(2):
        for hi in range(3):
            assert torch.equal(zh[zi * 3 + hi], torch.cat([h[hi], torch.zeros(6), z[zi]]))
    for wi in range(4):
        for zi in range(2):
            assert torch.equal(wz[wi * 2 + zi], torch.cat([torch.zeros(5), w[wi], z[zi]]))


def test_occupancy_positional_encoding_is_col_then_row() -> None:
    pe = AxisPositionalEncoding(3, 4, 2, dims=[5, 5, 0], order=("w", "h"), planes=("hw",))
    assert not hasattr(pe, "z_embed")
    hw = pe("hw")[0]
    assert torch.equal(hw[1 * 4 + 2], torch.cat([pe.w_embed.weight[2], pe.h_embed.weight[1]]))


def test_flattened_features_order_and_embeddings() -> None:
    cfg = small_cfg()
    enc = TPVEncoder(cfg)
    feats = features(cfg, b=2, n=6)
    value, shapes, starts = enc.flatten_features(feats)
    assert shapes.tolist() == [[6, 10], [3, 5]] and starts.tolist() == [0, 60]
    for b, n, lvl, r, c in [(0, 0, 0, 0, 0), (1, 3, 0, 5, 9), (1, 5, 1, 2, 4), (0, 2, 1, 1, 3)]:
        row = int(starts[lvl]) + r * int(shapes[lvl, 1]) + c
        expected = feats[lvl][b, n, :, r, c] + enc.cams_embeds[n] + enc.level_embeds[lvl]
        assert torch.allclose(value[b * 6 + n, row], expected)


@pytest.mark.parametrize(
    ("mode", "cvha_mode"), [("tpv", "full"), ("bev", "full"), ("tpv", "hw_self")]
)
@pytest.mark.slow
def test_batch_samples_are_independent(mode: str, cvha_mode: str) -> None:
    """A batch of two samples with different cameras equals the two samples run alone."""
    torch.manual_seed(0)
    cfg = small_cfg(mode, cvha_mode)
    enc = TPVEncoder(cfg).eval()
    feats = features(cfg, b=2)
    l2i = ring_lidar2img(b=2)
    l2i[1] = l2i[1, torch.tensor([3, 4, 5, 0, 1, 2])]  # the second sample sees other cells
    both = enc(feats, l2i, IMG_HW)
    sizes = {"tpv": [30, 24, 20], "bev": [30]}[mode]
    assert [tuple(q.shape) for q in both] == [(2, s, 16) for s in sizes]
    for b in range(2):
        alone = enc([f[b : b + 1] for f in feats], l2i[b : b + 1], IMG_HW)
        for x, y in zip(both, alone, strict=True):
            assert torch.allclose(x[b : b + 1], y, atol=1e-5)
    assert all(torch.isfinite(q).all() for q in both)


def test_occupancy_variant_leaves_side_planes_to_ica_and_ffn() -> None:
    """With cvha_mode hw_self only the hw plane has self-attention; zh / wz have no
    positional encoding and their first sub-layer is the identity."""
    cfg = small_cfg("tpv", "hw_self", num_hab=0)
    enc = TPVEncoder(cfg)
    assert enc.positional_encodings()[1:] == [None, None]
    layer = enc.layers[0]
    q = [torch.randn(1, n, 16) for n in (30, 24, 20)]
    pos = enc.positional_encodings()
    hw = layer.cross_view_attn(q[0], pos[0], enc.cross_view_reference)
    assert hw.shape == q[0].shape and not torch.allclose(hw, q[0])


def test_camera_count_must_match() -> None:
    cfg = small_cfg()
    enc = TPVEncoder(cfg)
    with pytest.raises(TpvkitError, match="num_cams"):
        enc(features(cfg, n=5), ring_lidar2img(n=5), IMG_HW)


def test_visibility_drives_image_cross_attention() -> None:
    """Cameras that see nothing leave only output_proj(0) from ICA: the output then differs
    from the one with the ring cameras."""
    torch.manual_seed(0)
    cfg = small_cfg()
    enc = TPVEncoder(cfg).eval()
    feats = features(cfg)
    seen = enc(feats, ring_lidar2img(), IMG_HW)
    hits = enc.camera_hits(ring_lidar2img(), IMG_HW)
    assert all(bool((h.count > 1).any()) or bool(h.valid.any()) for h in hits)
    away = ring_lidar2img()
    away[..., 2, :] = torch.tensor([0.0, 0.0, 0.0, -1.0])  # depth -1: everything behind
    blind = enc(feats, away, IMG_HW)
    assert all(h.num_slots == 0 for h in enc.camera_hits(away, IMG_HW))
    assert not torch.allclose(seen[0], blind[0])


@pytest.mark.slow
def test_activation_checkpointing_same_result() -> None:
    torch.manual_seed(0)
    cfg = small_cfg()
    enc = TPVEncoder(cfg)
    cfg_ckpt = small_cfg()
    cfg_ckpt.checkpoint_activations = True
    enc_ckpt = TPVEncoder(cfg_ckpt)
    enc_ckpt.load_state_dict(enc.state_dict())
    results = []
    for e in (enc, enc_ckpt):
        feats = [f.requires_grad_() for f in features(cfg)]
        out = e(feats, ring_lidar2img(), IMG_HW)
        sum(q.square().sum() for q in out).backward()
        results.append([*out, *(f.grad for f in feats), *(p.grad for p in e.parameters())])
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_public_initialisation() -> None:
    enc = TPVEncoder(small_cfg())
    cvha = enc.layers[0].cross_view_attn
    for i in range(3):
        bias = cvha.attention_weights[i].bias.view(4, 3, 5)
        assert torch.all(bias[:, i, -1] == 10) and torch.count_nonzero(bias) == 4
    assert torch.count_nonzero(enc.layers[0].image_cross_attn.attention_weights[0].weight) == 0
    # Xavier-uniform on the query embeddings: |x| <= sqrt(6 / (fan_in + fan_out)).
    bound = math.sqrt(6 / (30 + 16))
    w = enc.tpv_queries["hw"].weight
    assert w.abs().max() <= bound and w.std() > bound / 4


def _saved_bytes(enc: TPVEncoder, cfg: ModelConfig) -> int:
    """Bytes of the tensors autograd keeps for backward outside checkpointed regions."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    feats = [f.requires_grad_() for f in features(cfg)]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = enc(feats, ring_lidar2img(), IMG_HW)
    sum(q.sum() for q in out).backward()
    return total


def test_activation_checkpointing_keeps_less_for_backward() -> None:
    cfg, cfg_ckpt = small_cfg(num_hcab=2, num_hab=2), small_cfg(num_hcab=2, num_hab=2)
    cfg_ckpt.checkpoint_activations = True
    plain, ckpt = _saved_bytes(TPVEncoder(cfg), cfg), _saved_bytes(TPVEncoder(cfg_ckpt), cfg_ckpt)
    # Only the layer inputs survive the forward; everything inside a layer is recomputed.
    assert ckpt < plain / 4, (ckpt, plain)


@pytest.mark.slow
def test_compact_image_cross_attention_gives_the_same_encoder() -> None:
    results = []
    for compact in (False, True):
        torch.manual_seed(0)
        cfg = small_cfg(fast_path=compact, num_hcab=2)
        enc = TPVEncoder(cfg)
        with torch.no_grad():  # non-zero offset / weight layers, so sampling is not trivial
            for p in enc.parameters():
                p.add_(torch.randn(p.shape) * 0.2)
        feats = [f.requires_grad_() for f in features(cfg)]
        out = enc(feats, ring_lidar2img(), IMG_HW)
        sum((q * q).sum() for q in out).backward()
        results.append([*out, *(f.grad for f in feats), *(p.grad for p in enc.parameters())])
    # float32 throughout: the two orders of summation agree to rounding, relative to each
    # tensor's scale (outputs, input gradients and every parameter gradient).
    for a, b in zip(*results, strict=True):
        err = (a - b).abs().max().item() / max(1.0, b.abs().max().item())
        assert err < 1e-5, err
