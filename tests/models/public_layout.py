"""The public TPVFormer checkpoint layouts (key -> shape), written out from the public code's
module structure (mmdet ResNet / FPN, TPVFormerHead, TPVFormerLayer, TPVCrossViewHybridAttention,
TPVImageCrossAttention, TPVAggregator), never derived from tpvkit's model."""

from __future__ import annotations

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
