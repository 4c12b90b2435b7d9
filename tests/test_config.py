"""Typed config: shipped configs load, overrides apply and are type-checked, errors name keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from tpvkit.config import (
    Config,
    ConfigError,
    all_keys,
    from_dict,
    load_config,
    parse_override,
    shipped_configs,
    to_dict,
)

REQUIRED_CONFIGS = {
    "tpv_lidarseg_base",
    "tpv_lidarseg_dim64",
    "tpv_lidarseg_dim96",
    "tpv_occupancy",
    "tpv_small",
    "bev_base",
    "tpv_tiny",
    "bev_tiny",
}


def test_every_required_config_is_shipped_and_loads():
    assert REQUIRED_CONFIGS <= set(shipped_configs())
    for name in shipped_configs():
        cfg = load_config(name)
        assert cfg.name == name


def test_base_defaults_are_the_public_lidarseg_model():
    cfg = load_config("tpv_lidarseg_base")
    m = cfg.model
    assert (m.tpv_h, m.tpv_w, m.tpv_z, m.dim) == (200, 200, 16, 128)
    assert (m.encoder.num_hcab, m.encoder.num_hab, m.encoder.num_heads) == (3, 2, 8)
    assert m.backbone.depth == 101 and m.backbone.dcn_stages == [False, False, True, True]
    assert cfg.optim.lr == 2e-4 and cfg.optim.grad_clip == 35.0


def test_yaml_states_only_differences_and_inherits_from_base():
    cfg = load_config("tpv_lidarseg_dim96")
    assert cfg.model.dim == 96 and cfg.model.tpv_h == 150
    assert cfg.model.backbone.depth == 101  # inherited default
    occ = load_config("tpv_occupancy")
    assert occ.model.num_classes == 18 and occ.model.encoder.cvha_mode == "hw_self"
    bev = load_config("bev_tiny")
    assert bev.model.mode == "bev" and bev.model.dim == 32  # from tpv_tiny


def test_dotted_overrides_are_parsed_and_typed():
    cfg = load_config(
        "tpv_tiny", ["model.encoder.num_hcab=1", "optim.lr=0.01", "data.img_size=[64, 96]"]
    )
    assert cfg.model.encoder.num_hcab == 1
    assert cfg.optim.lr == pytest.approx(0.01)
    assert cfg.data.img_size == [64, 96]
    assert parse_override("train.amp=bf16") == ("train.amp", "bf16")


def test_unknown_key_names_the_nearest_valid_key():
    with pytest.raises(ConfigError, match=r"model\.encoder\.num_hcab"):
        load_config("tpv_tiny", ["model.encoder.num_hcb=2"])
    with pytest.raises(ConfigError, match="did you mean 'tpv_tiny'"):
        load_config("tpv_tny")


def test_bad_values_are_refused_with_the_key():
    with pytest.raises(ConfigError, match="model.encoder.num_hcab"):
        load_config("tpv_tiny", ["model.encoder.num_hcab=two"])
    with pytest.raises(ConfigError, match="train.amp"):
        load_config("tpv_tiny", ["train.amp=fp8"])
    with pytest.raises(ConfigError, match="divisible"):
        load_config("tpv_tiny", ["model.encoder.num_heads=5"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config("tpv_tiny", ["model.dim"])


def test_yaml_file_with_base_path_and_errors(tmp_path: Path):
    good = tmp_path / "mine.yaml"
    good.write_text("_base_: tpv_tiny\nmodel:\n  dim: 48\n  encoder:\n    pos_dims: [16, 16, 16]\n")
    cfg = load_config(good)
    assert cfg.model.dim == 48 and cfg.name == "mine"
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  dimm: 3\n")
    with pytest.raises(ConfigError, match="model.dim"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    loop = tmp_path / "loop.yaml"
    loop.write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(loop)


def test_round_trip_through_a_plain_dict():
    cfg = load_config("tpv_occupancy")
    again = from_dict(to_dict(cfg))
    assert again == cfg
    assert "model.encoder.num_hcab" in all_keys(Config())


def test_an_install_without_configs_says_so_instead_of_an_empty_list(monkeypatch):
    import tpvkit.config as config_module

    monkeypatch.setattr(config_module, "_config_folders", lambda: [])
    with pytest.raises(ConfigError, match="no shipped configs were found.*reinstall tpvkit"):
        load_config("tpv_tiny")


def test_shipped_configs_come_from_the_package_data_when_installed(tmp_path, monkeypatch):
    """An installed wheel's tpvkit/configs/ is found through importlib.resources."""
    import importlib.resources

    import tpvkit.config as config_module

    packaged = tmp_path / "tpvkit"
    (packaged / "configs").mkdir(parents=True)
    (packaged / "configs" / "only_here.yaml").write_text(
        "model: {dim: 64, encoder: {pos_dims: [24, 24, 16]}}\n"
    )
    monkeypatch.setattr(importlib.resources, "files", lambda package: packaged)
    monkeypatch.setattr(config_module, "CONFIG_DIR", tmp_path / "no_repo_configs")
    assert list(config_module.shipped_configs()) == ["only_here"]
    assert load_config("only_here").model.dim == 64
