"""The tpvkit <-> public TPVFormer key map, checked against the public layout written out here
from the public code's module structure (mmdet ResNet / FPN, TPVFormerHead, TPVFormerLayer,
TPVCrossViewHybridAttention, TPVImageCrossAttention, TPVAggregator), not from our model."""

from __future__ import annotations

import pytest
import torch

from tpvkit.config import load_config
from tpvkit.errors import TpvkitError
from tpvkit.models.checkpoint_keys import (
    public_compat_overrides,
    public_to_tpvkit,
    rename_legacy,
    tpvkit_to_public,
)
from tpvkit.models.tpvformer import build_model

Shape = tuple[int, ...]


def _bn(prefix: str, c: int) -> dict[str, Shape]:
    return {
        f"{prefix}.weight": (c,),
        f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }


def public_resnet(depth: int = 101, dcn=(False, False, True, True)) -> dict[str, Shape]:
    """mmdet ResNet (Bottleneck) keys under img_backbone.; DCNv2 adds conv2.conv_offset."""
    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    out = {"img_backbone.conv1.weight": (64, 3, 7, 7), **_bn("img_backbone.bn1", 64)}
    inplanes = 64
    for i, n in enumerate(blocks):
        planes = 64 * 2**i
        for j in range(n):
            p = f"img_backbone.layer{i + 1}.{j}"
            cin = inplanes if j == 0 else planes * 4
            out[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
            out.update(_bn(f"{p}.bn1", planes))
            out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            if dcn[i]:
                out[f"{p}.conv2.conv_offset.weight"] = (27, planes, 3, 3)
                out[f"{p}.conv2.conv_offset.bias"] = (27,)
            out.update(_bn(f"{p}.bn2", planes))
            out[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            out.update(_bn(f"{p}.bn3", planes * 4))
            if j == 0:
                out[f"{p}.downsample.0.weight"] = (planes * 4, cin, 1, 1)
                out.update(_bn(f"{p}.downsample.1", planes * 4))
        inplanes = planes * 4
    return out


def public_fpn(c: int, in_channels=(512, 1024, 2048), num_outs: int = 4) -> dict[str, Shape]:
    out: dict[str, Shape] = {}
    for i, cin in enumerate(in_channels):
        out[f"img_neck.lateral_convs.{i}.conv.weight"] = (c, cin, 1, 1)
        out[f"img_neck.lateral_convs.{i}.conv.bias"] = (c,)
    for i in range(num_outs):
        out[f"img_neck.fpn_convs.{i}.conv.weight"] = (c, c, 3, 3)
        out[f"img_neck.fpn_convs.{i}.conv.bias"] = (c,)
    return out


def _linear(prefix: str, cout: int, cin: int) -> dict[str, Shape]:
    return {f"{prefix}.weight": (cout, cin), f"{prefix}.bias": (cout,)}


def public_tpv_head(
    c: int,
    heads: int,
    h: int,
    w: int,
    z: int,
    ffn: int,
    n_hcab: int,
    n_hab: int,
    ica_points=(8, 64, 64),
    cvha_points: int = 32,
    pos_dims=(48, 48, 32),
    occupancy: bool = False,
    levels: int = 4,
    cams: int = 6,
) -> dict[str, Shape]:
    out: dict[str, Shape] = {
        "tpv_head.level_embeds": (levels, c),
        "tpv_head.cams_embeds": (cams, c),
        "tpv_head.tpv_embedding_hw.weight": (h * w, c),
        "tpv_head.tpv_embedding_zh.weight": (z * h, c),
        "tpv_head.tpv_embedding_wz.weight": (w * z, c),
    }
    if occupancy:  # mmdet LearnedPositionalEncoding(num_feats=C/2, row=H, col=W)
        out["tpv_head.positional_encoding.row_embed.weight"] = (h, c // 2)
        out["tpv_head.positional_encoding.col_embed.weight"] = (w, c // 2)
    else:  # CustomPositionalEncoding
        for axis, n, d in zip("hwz", (h, w, z), pos_dims, strict=True):
            out[f"tpv_head.positional_encoding.{axis}_embed.weight"] = (n, d)
    for k in range(n_hcab + n_hab):
        p = f"tpv_head.encoder.layers.{k}"
        if occupancy:  # BEVFormer-style TSA, num_tpv_queue 2, 1 level, 4 points
            out.update(_linear(f"{p}.attentions.0.sampling_offsets", 2 * heads * 4 * 2, 2 * c))
            out.update(_linear(f"{p}.attentions.0.attention_weights", 2 * heads * 4, 2 * c))
            out.update(_linear(f"{p}.attentions.0.value_proj", c, c))
            out.update(_linear(f"{p}.attentions.0.output_proj", c, c))
        else:  # TPVCrossViewHybridAttention: ModuleLists of 3
            for i in range(3):
                a = f"{p}.attentions.0"
                out.update(_linear(f"{a}.sampling_offsets.{i}", heads * 3 * cvha_points * 2, c))
                out.update(_linear(f"{a}.attention_weights.{i}", heads * 3 * (cvha_points + 1), c))
                out.update(_linear(f"{a}.value_proj.{i}", c, c))
                out.update(_linear(f"{a}.output_proj.{i}", c, c))
        if k < n_hcab:  # TPVImageCrossAttention + TPVMSDeformableAttention3D
            out.update(_linear(f"{p}.attentions.1.output_proj", c, c))
            d = f"{p}.attentions.1.deformable_attention"
            for i, pts in enumerate(ica_points):
                out.update(_linear(f"{d}.sampling_offsets.{i}", heads * levels * pts * 2, c))
                out.update(_linear(f"{d}.attention_weights.{i}", heads * levels * pts, c))
            out.update(_linear(f"{d}.value_proj", c, c))
        out.update(_linear(f"{p}.ffns.0.layers.0.0", ffn, c))
        out.update(_linear(f"{p}.ffns.0.layers.1", c, ffn))
        for i in range(3 if k < n_hcab else 2):
            out[f"{p}.norms.{i}.weight"] = (c,)
            out[f"{p}.norms.{i}.bias"] = (c,)
    return out


def public_aggregator(c: int, n_cls: int) -> dict[str, Shape]:
    return {
        **_linear("tpv_aggregator.decoder.0", 2 * c, c),
        **_linear("tpv_aggregator.decoder.2", c, 2 * c),
        **_linear("tpv_aggregator.classifier", n_cls, c),
    }


def public_base_layout() -> dict[str, Shape]:
    """tpv10_lidarseg: C=128, 200x200x16, 3 HCAB + 2 HAB, 17 classes."""
    return {
        **public_resnet(),
        **public_fpn(128),
        **public_tpv_head(128, 8, 200, 200, 16, 256, 3, 2),
        **public_aggregator(128, 17),
    }


def public_occupancy_layout() -> dict[str, Shape]:
    """tpv04_occupancy: C=256, 100x100x8, 3 HCAB with HW self-attention, 18 classes."""
    return {
        **public_resnet(),
        **public_fpn(256),
        **public_tpv_head(256, 8, 100, 100, 8, 512, 3, 0, occupancy=True),
        **public_aggregator(256, 18),
    }


def public_derived_buffers(occupancy: bool) -> dict[str, Shape]:
    """Geometry buffers the public encoders register (and stale ones the lidarseg file holds)."""
    if occupancy:
        h, w, z = 100, 100, 8
        extra = {"tpv_head.tpv_mask_hw": (1, h, w)}
    else:
        h, w, z = 200, 200, 16
        extra = {"tpv_head.encoder.cross_view_ref_points": (h * w + z * h + w * z, 3, 16, 2)}
    return {
        "tpv_head.encoder.ref_3d_hw": (1, 4, h * w, 3),
        "tpv_head.encoder.ref_3d_zh": (1, 32, z * h, 3),
        "tpv_head.encoder.ref_3d_wz": (1, 32, w * z, 3),
        "tpv_head.encoder.ref_2d_hw": (1, h * w, 1, 2),
        "tpv_head.encoder.ref_2d_zh": (1, z * h, 1, 2),
        "tpv_head.encoder.ref_2d_wz": (1, w * z, 1, 2),
        **extra,
    }


def _meta_state(name: str) -> dict[str, torch.Tensor]:
    cfg = load_config(name).model
    with torch.device("meta"):
        model = build_model(cfg)
    return model.state_dict()


def _shapes(sd) -> dict[str, Shape]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def _meta_tensors(shapes: dict[str, Shape]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


@pytest.fixture(scope="module")
def base_state() -> dict[str, torch.Tensor]:
    return _meta_state("tpv_lidarseg_base")


@pytest.fixture(scope="module")
def occupancy_state() -> dict[str, torch.Tensor]:
    return _meta_state("tpv_occupancy")


def _diff(a: dict[str, Shape], b: dict[str, Shape]) -> str:
    only_a = sorted(set(a) - set(b))[:8]
    only_b = sorted(set(b) - set(a))[:8]
    shape = [(k, a[k], b[k]) for k in sorted(set(a) & set(b)) if a[k] != b[k]][:8]
    return f"only ours: {only_a}\nonly public: {only_b}\nshape: {shape}"


@pytest.mark.parametrize(
    ("state", "layout"),
    [("base_state", public_base_layout), ("occupancy_state", public_occupancy_layout)],
)
def test_export_equals_public_layout(state, layout, request) -> None:
    ours = _shapes(tpvkit_to_public(request.getfixturevalue(state)))
    expected = layout()
    assert ours == expected, _diff(ours, expected)


@pytest.mark.parametrize(
    ("name", "state", "layout", "occupancy"),
    [
        ("tpv_lidarseg_base", "base_state", public_base_layout, False),
        ("tpv_occupancy", "occupancy_state", public_occupancy_layout, True),
    ],
)
def test_import_of_a_ddp_public_checkpoint(name, state, layout, occupancy, request) -> None:
    public = {**layout(), **public_derived_buffers(occupancy)}
    ddp = {"module." + k: v for k, v in _meta_tensors(public).items()}
    mapped = public_to_tpvkit(ddp, load_config(name).model)
    ours = _shapes(request.getfixturevalue(state))
    assert _shapes(mapped) == ours, _diff(_shapes(mapped), ours)


def test_round_trip_keeps_every_tensor(base_state) -> None:
    back = public_to_tpvkit(tpvkit_to_public(base_state))
    assert list(back) == list(base_state)
    assert all(back[k] is base_state[k] for k in base_state)


def test_legacy_names() -> None:
    assert (
        rename_legacy("pts_bbox_head.transformer.encoder.layers.0.attentions.0.value_proj.1.bias")
        == "tpv_head.encoder.layers.0.attentions.0.value_proj.1.bias"
    )
    assert rename_legacy("pts_bbox_head.bev_embedding_zh.weight") == (
        "tpv_head.tpv_embedding_zh.weight"
    )
    assert rename_legacy("pts_bbox_head.transformer.level_embeds") == "tpv_head.level_embeds"
    assert rename_legacy("fusion_head.classifier.weight") == "tpv_aggregator.classifier.weight"
    assert rename_legacy("img_backbone.layer1.0.conv1.weight") == (
        "img_backbone.layer1.0.conv1.weight"
    )


def test_legacy_checkpoint_maps_like_the_current_one(base_state) -> None:
    public = public_base_layout()
    legacy = {}
    for key, shape in public.items():
        old = key.replace("tpv_aggregator.", "fusion_head.")
        old = old.replace("tpv_head.encoder.", "pts_bbox_head.transformer.encoder.")
        old = old.replace("tpv_head.level_embeds", "pts_bbox_head.transformer.level_embeds")
        old = old.replace("tpv_head.cams_embeds", "pts_bbox_head.transformer.cams_embeds")
        old = old.replace("tpv_head.tpv_embedding", "pts_bbox_head.bev_embedding")
        old = old.replace("tpv_head.", "pts_bbox_head.")
        legacy[old] = torch.empty(shape, device="meta")
    assert _shapes(public_to_tpvkit(legacy)) == _shapes(base_state)


def test_unknown_keys_and_structure_mismatch_are_errors(base_state) -> None:
    public = _meta_tensors(public_base_layout())
    with pytest.raises(TpvkitError, match="no tpvkit counterpart"):
        public_to_tpvkit({**public, "tpv_head.something_new": torch.empty(1)})
    cfg = load_config("tpv_lidarseg_base", ["model.encoder.num_hab=1"]).model
    with pytest.raises(TpvkitError, match="num_hcab / num_hab"):
        public_to_tpvkit(public, cfg)
    cfg = load_config(
        "tpv_lidarseg_base", ["model.encoder.cvha_mode=hw_self", "model.encoder.pos_dims=[64,64,0]"]
    ).model
    with pytest.raises(TpvkitError, match="cvha_mode"):
        public_to_tpvkit(public, cfg)


def test_mapped_public_weights_load_strictly() -> None:
    """A tiny model's export, re-imported, loads with strict=True and gives the same outputs."""
    cfg = load_config("tpv_tiny").model
    torch.manual_seed(0)
    a = build_model(cfg)
    torch.manual_seed(1)
    b = build_model(cfg)
    b.load_state_dict(public_to_tpvkit(tpvkit_to_public(a.state_dict()), cfg), strict=True)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_compat_overrides_are_valid_config_keys() -> None:
    cfg = load_config(
        "tpv_lidarseg_base", [f"{k}={v}" for k, v in public_compat_overrides().items()]
    )
    assert cfg.model.head.point_sampling == "tpvformer"
    assert cfg.model.encoder.pillar_sampling == "tpvformer"
