"""The tpvkit <-> public TPVFormer key map, checked against the public layouts of
public_layout.py (written out from the public code's structure, not from our model)."""

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

from .public_layout import (
    Shape,
    public_base_layout,
    public_derived_buffers,
    public_occupancy_layout,
)


def _meta_state(name: str) -> dict[str, torch.Tensor]:
    cfg = load_config(name)
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
    cfg = load_config("tpv_tiny")
    torch.manual_seed(0)
    a = build_model(cfg)
    torch.manual_seed(1)
    b = build_model(cfg)
    b.load_state_dict(public_to_tpvkit(tpvkit_to_public(a.state_dict()), cfg.model), strict=True)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_compat_overrides_are_valid_config_keys() -> None:
    cfg = load_config(
        "tpv_lidarseg_base", [f"{k}={v}" for k, v in public_compat_overrides().items()]
    )
    assert cfg.model.head.point_sampling == "tpvformer"
    assert cfg.model.encoder.pillar_sampling == "tpvformer"
