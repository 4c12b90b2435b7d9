"""The explicit map between tpvkit parameter names and the public TPVFormer checkpoint layout.

tpvkit names (TPVFormer modules):            public names (wzzheng/TPVFormer state dicts):
  backbone.*                                    img_backbone.*      (mmdet ResNet, same inside)
  neck.*                                        img_neck.*          (mmdet FPN, same inside)
  encoder.tpv_queries.{hw,zh,wz}.weight         tpv_head.tpv_embedding_{hw,zh,wz}.weight
  encoder.pos_encoding.{h,w,z}_embed.weight     tpv_head.positional_encoding.{h,w,z}_embed.weight
    (occupancy: h_embed / w_embed)                (occupancy: row_embed / col_embed)
  encoder.level_embeds, encoder.cams_embeds     tpv_head.level_embeds, tpv_head.cams_embeds
  encoder.layers.{k}.cross_view_attn.*          tpv_head.encoder.layers.{k}.attentions.0.*
  encoder.layers.{k}.image_cross_attn.output_proj.*
                                                tpv_head.encoder.layers.{k}.attentions.1.output_proj.*
  encoder.layers.{k}.image_cross_attn.{sampling_offsets,attention_weights,value_proj}.*
                          tpv_head.encoder.layers.{k}.attentions.1.deformable_attention.{same}.*
  encoder.layers.{k}.ffn.fc1.*                  tpv_head.encoder.layers.{k}.ffns.0.layers.0.0.*
  encoder.layers.{k}.ffn.fc2.*                  tpv_head.encoder.layers.{k}.ffns.0.layers.1.*
  encoder.layers.{k}.{cvha,ica,ffn}_norm.*      tpv_head.encoder.layers.{k}.norms.{0,1,2}.* (HCAB)
  encoder.layers.{k}.{cvha,ffn}_norm.*          tpv_head.encoder.layers.{k}.norms.{0,1}.*   (HAB)
  head.decoder.{0,2}.*                          tpv_aggregator.decoder.{0,2}.*
  head.classifier.*                             tpv_aggregator.classifier.*

Public state dicts also hold geometry buffers that tpvkit recomputes from the config and does
not save (tpv_head.encoder.ref_3d_*, ref_2d_*, cross_view_ref_points, tpv_head.tpv_mask_hw; the
lidarseg release carries stale ref_2d_* from an older encoder): they are dropped on import and
not written on export, which the public loader (load_state_dict(strict=False)) accepts.
Checkpoints from before 2023-03 use older names (pts_bbox_head, .transformer., fusion_head,
bev_*), renamed first. DDP's "module." prefix is stripped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tpvkit.config import ModelConfig
from tpvkit.errors import TpvkitError

# Applied in order to every key of a pre-2023-03 checkpoint.
LEGACY_RENAMES: tuple[tuple[str, str], ...] = (
    ("pts_bbox_head.", "tpv_head."),
    ("fusion_head.", "tpv_aggregator."),
    (".transformer.", "."),
    ("bev_", "tpv_"),
)

# Buffers of the public encoder/head that tpvkit recomputes (never saved by tpvkit).
PUBLIC_DERIVED_BUFFERS = re.compile(
    r"^tpv_head\.(encoder\.(ref_3d_(hw|zh|wz)|ref_2d_(hw|zh|wz)|cross_view_ref_points)"
    r"|tpv_mask_hw)$"
)

_HCAB_NORMS = ("cvha_norm", "ica_norm", "ffn_norm")
_HAB_NORMS = ("cvha_norm", "ffn_norm")
_ICA_DEFORMABLE = ("sampling_offsets", "attention_weights", "value_proj")

_LAYER = re.compile(r"^tpv_head\.encoder\.layers\.(\d+)\.(.+)$")
_TPV_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")


def public_compat_overrides() -> dict[str, str]:
    """Config overrides that reproduce the public code's geometry quirks, needed to run the
    released checkpoints as trained: pillar heights 0.5 m inside the range and point features
    sampled at the integer voxel index (set data.voxel_convention=tpvformer as well to score
    against the public voxel labels)."""
    return {"model.encoder.pillar_sampling": "tpvformer", "model.head.point_sampling": "tpvformer"}


def strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove DDP's "module." prefix where present."""
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def rename_legacy(key: str) -> str:
    """A pre-2023-03 public key -> its current public name (current names pass unchanged)."""
    for old, new in LEGACY_RENAMES:
        key = key.replace(old, new)
    return key


def _layer_kinds(keys: list[str], pattern: re.Pattern[str], ica_marker: str) -> dict[int, bool]:
    """Layer index -> whether it has image cross-attention (an HCAB), from the keys alone."""
    kinds: dict[int, bool] = {}
    for key in keys:
        m = pattern.match(key)
        if m:
            k = int(m.group(1))
            kinds[k] = kinds.get(k, False) or m.group(2).startswith(ica_marker)
    return kinds


def _public_layer_key(rest: str, is_hcab: bool) -> str | None:
    """The part after tpv_head.encoder.layers.{k}. -> the part after encoder.layers.{k}."""
    if rest.startswith("attentions.0."):
        return "cross_view_attn." + rest[len("attentions.0.") :]
    if rest.startswith("attentions.1.deformable_attention."):
        inner = rest[len("attentions.1.deformable_attention.") :]
        if inner.split(".")[0] in _ICA_DEFORMABLE:
            return "image_cross_attn." + inner
        return None
    if rest.startswith("attentions.1.output_proj."):
        return "image_cross_attn." + rest[len("attentions.1.") :]
    if rest.startswith("ffns.0.layers.0.0."):
        return "ffn.fc1." + rest[len("ffns.0.layers.0.0.") :]
    if rest.startswith("ffns.0.layers.1."):
        return "ffn.fc2." + rest[len("ffns.0.layers.1.") :]
    m = re.match(r"^norms\.(\d+)\.(.+)$", rest)
    if m:
        names = _HCAB_NORMS if is_hcab else _HAB_NORMS
        i = int(m.group(1))
        return f"{names[i]}.{m.group(2)}" if i < len(names) else None
    return None


def _public_head_key(key: str) -> str | None:
    """A tpv_head.* key outside the encoder layers -> its tpvkit name."""
    m = re.match(r"^tpv_head\.tpv_embedding_(hw|zh|wz)\.weight$", key)
    if m:
        return f"encoder.tpv_queries.{m.group(1)}.weight"
    m = re.match(r"^tpv_head\.positional_encoding\.(h|w|z|row|col)_embed\.weight$", key)
    if m:
        axis = {"row": "h", "col": "w"}.get(m.group(1), m.group(1))
        return f"encoder.pos_encoding.{axis}_embed.weight"
    if key in ("tpv_head.level_embeds", "tpv_head.cams_embeds"):
        return "encoder." + key[len("tpv_head.") :]
    return None


def public_to_tpvkit(
    state_dict: Mapping[str, Any], cfg: ModelConfig | None = None
) -> dict[str, Any]:
    """A public TPVFormer state dict (any release, DDP-saved or not) -> tpvkit names.

    With `cfg`, the checkpoint's layer structure is checked against the config (number of
    HCAB / HAB blocks, occupancy HW self-attention or CVHA), so a mismatch is reported in
    config terms instead of as a list of missing keys. Unknown keys are an error.
    """
    sd = {rename_legacy(k): v for k, v in strip_module_prefix(state_dict).items()}
    keys = [k for k in sd if not PUBLIC_DERIVED_BUFFERS.match(k)]
    kinds = _layer_kinds(keys, _LAYER, "attentions.1.")
    if cfg is not None:
        _check_structure(kinds, keys, cfg, "the checkpoint")

    out: dict[str, Any] = {}
    unknown = []
    for key in keys:
        new: str | None = None
        if key.startswith("img_backbone."):
            new = "backbone." + key[len("img_backbone.") :]
        elif key.startswith("img_neck."):
            new = "neck." + key[len("img_neck.") :]
        elif key.startswith("tpv_aggregator."):
            new = "head." + key[len("tpv_aggregator.") :]
        elif (m := _LAYER.match(key)) is not None:
            k = int(m.group(1))
            rest = _public_layer_key(m.group(2), kinds[k])
            new = None if rest is None else f"encoder.layers.{k}.{rest}"
        elif key.startswith("tpv_head."):
            new = _public_head_key(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = sd[key]
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise TpvkitError(
            f"{len(unknown)} checkpoint key(s) have no tpvkit counterpart: {shown}; "
            "is this a TPVFormer (lidarseg or occupancy) checkpoint?"
        )
    return out


def tpvkit_to_public(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A tpvkit TPVFormer state dict -> the public layout (current names, no "module.")."""
    keys = list(state_dict)
    kinds = _layer_kinds(keys, _TPV_LAYER, "image_cross_attn.")
    # The occupancy release's HW self-attention has single (not per-plane) linear layers; its
    # positional encoding is mmdet's row/col embedding.
    occupancy = any(
        re.match(r"^encoder\.layers\.\d+\.cross_view_attn\.sampling_offsets\.weight$", k)
        for k in keys
    )
    out: dict[str, Any] = {}
    unknown = []
    for key in keys:
        new: str | None = None
        if key.startswith("backbone."):
            new = "img_backbone." + key[len("backbone.") :]
        elif key.startswith("neck."):
            new = "img_neck." + key[len("neck.") :]
        elif key.startswith("head."):
            new = "tpv_aggregator." + key[len("head.") :]
        elif (m := _TPV_LAYER.match(key)) is not None:
            rest = _tpvkit_layer_key(m.group(2), kinds[int(m.group(1))])
            new = None if rest is None else f"tpv_head.encoder.layers.{m.group(1)}.{rest}"
        elif (m := re.match(r"^encoder\.tpv_queries\.(hw|zh|wz)\.weight$", key)) is not None:
            new = f"tpv_head.tpv_embedding_{m.group(1)}.weight"
        elif (m := re.match(r"^encoder\.pos_encoding\.(h|w|z)_embed\.weight$", key)) is not None:
            axis = m.group(1)
            if occupancy:
                axis = {"h": "row", "w": "col"}.get(axis, axis)
            new = f"tpv_head.positional_encoding.{axis}_embed.weight"
        elif key in ("encoder.level_embeds", "encoder.cams_embeds"):
            new = "tpv_head." + key[len("encoder.") :]
        if new is None:
            unknown.append(key)
        else:
            out[new] = state_dict[key]
    if unknown:
        raise TpvkitError(f"no public name for tpvkit key(s): {', '.join(unknown[:5])}")
    return out


def _tpvkit_layer_key(rest: str, is_hcab: bool) -> str | None:
    if rest.startswith("cross_view_attn."):
        return "attentions.0." + rest[len("cross_view_attn.") :]
    if rest.startswith("image_cross_attn.output_proj."):
        return "attentions.1." + rest[len("image_cross_attn.") :]
    if rest.startswith("image_cross_attn."):
        inner = rest[len("image_cross_attn.") :]
        if inner.split(".")[0] in _ICA_DEFORMABLE:
            return "attentions.1.deformable_attention." + inner
        return None
    if rest.startswith("ffn.fc1."):
        return "ffns.0.layers.0.0." + rest[len("ffn.fc1.") :]
    if rest.startswith("ffn.fc2."):
        return "ffns.0.layers.1." + rest[len("ffn.fc2.") :]
    names = _HCAB_NORMS if is_hcab else _HAB_NORMS
    for i, name in enumerate(names):
        if rest.startswith(name + "."):
            return f"norms.{i}." + rest[len(name) + 1 :]
    return None


def _check_structure(kinds: dict[int, bool], keys: list[str], cfg: ModelConfig, what: str) -> None:
    """Compare the encoder blocks found in a public checkpoint with the config's."""
    n_hcab = sum(kinds.values())
    n_hab = len(kinds) - n_hcab
    expected = [True] * cfg.encoder.num_hcab + [False] * cfg.encoder.num_hab
    found = [kinds[k] for k in sorted(kinds)]
    if found != expected:
        raise TpvkitError(
            f"{what} has {n_hcab} HCAB + {n_hab} HAB encoder blocks, the config "
            f"{cfg.encoder.num_hcab} + {cfg.encoder.num_hab} (model.encoder.num_hcab / num_hab)"
        )
    hw_self = any(
        re.match(r"^tpv_head\.encoder\.layers\.\d+\.attentions\.0\.sampling_offsets\.weight$", k)
        for k in keys
    )
    if hw_self != (cfg.encoder.cvha_mode == "hw_self"):
        mode = "hw_self (occupancy release)" if hw_self else "full (lidarseg release)"
        raise TpvkitError(
            f"{what} uses the {mode} self-attention; set model.encoder.cvha_mode accordingly"
        )
