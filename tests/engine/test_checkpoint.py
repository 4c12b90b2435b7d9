"""Checkpoint files: atomic saves, weights_only loads, RNG round trips, refusals that name keys."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from tpvkit.config import Config, apply_overrides, task_of, to_dict
from tpvkit.engine import checkpoint as ckpt_mod
from tpvkit.engine.checkpoint import (
    CheckpointError,
    build_checkpoint,
    capture_rng_state,
    config_differences,
    copy_atomic,
    find_resume_checkpoint,
    iter_checkpoint_name,
    list_iter_checkpoints,
    load_checkpoint_file,
    load_model_weights,
    restore_rng_state,
    rotate_checkpoints,
    save_checkpoint,
)
from tpvkit.errors import TpvkitError
from tpvkit.task import task_from_dict


class TinyNet(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(3, width), nn.BatchNorm1d(width))
        self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _full_checkpoint(model: nn.Module, cfg: Config) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    return build_checkpoint(
        model=model,
        optimizer=opt,
        scheduler=None,
        scaler=None,
        cfg=cfg,
        epoch=1,
        iteration=7,
        iter_in_epoch=2,
        rng=capture_rng_state(),
    )


def test_checkpoint_round_trips_through_a_weights_only_load(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    state = _full_checkpoint(model, Config())
    path = save_checkpoint(state, tmp_path / "a.pth")
    loaded = torch.load(path, weights_only=True)  # the safe loader must accept every value
    assert loaded["iteration"] == 7 and loaded["epoch"] == 1 and loaded["iter_in_epoch"] == 2
    # a config that did not state its task has it written down (tpvkit.config.infer_task_name)
    assert loaded["config"] == {**to_dict(Config()), "task": "lidarseg"}
    assert task_from_dict(loaded["task"]) == task_of(Config())
    assert loaded["tpvkit_version"]
    for key, value in model.state_dict().items():
        assert torch.equal(loaded["model"][key], value)
    opt2 = torch.optim.AdamW(TinyNet().parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])  # the optimizer state is restorable as saved


def test_rng_state_round_trip_restores_every_generator():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in NumPy's state
    state = capture_rng_state()
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    # Through a weights_only load, like a resumed run.
    restore_rng_state(torch.load(_saved(state), weights_only=True))
    got = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    assert got == expected


def _saved(obj) -> object:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_a_failed_save_leaves_the_previous_checkpoint_byte_identical(tmp_path, monkeypatch):
    path = tmp_path / "latest.pth"
    save_checkpoint({"iteration": 1, "w": torch.arange(10.0)}, path)
    before = path.read_bytes()
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # the temp file is fully written ...
        with open(f, "r+b") as fh:  # ... then truncated, as by a kill mid-write
            fh.truncate(7)
        raise OSError("killed mid-write")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="mid-write"):
        save_checkpoint({"iteration": 2, "w": torch.zeros(10)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pth"]  # no temp file left


def test_latest_link_rotation_and_resume_lookup(tmp_path):
    for it in (2, 4, 6):
        p = save_checkpoint({"iteration": it}, tmp_path / iter_checkpoint_name(it))
        copy_atomic(p, tmp_path / "latest.pth")
    removed = rotate_checkpoints(tmp_path, keep=2)
    assert [p.name for p in removed] == ["iter_000002.pth"]
    assert [it for it, _ in list_iter_checkpoints(tmp_path)] == [4, 6]
    assert find_resume_checkpoint(tmp_path) == tmp_path / "latest.pth"
    assert torch.load(tmp_path / "latest.pth", weights_only=True)["iteration"] == 6
    (tmp_path / "latest.pth").unlink()
    assert find_resume_checkpoint(tmp_path) == tmp_path / "iter_000006.pth"
    assert rotate_checkpoints(tmp_path, keep=0) == []  # 0 keeps everything
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.pth"):
        load_model_weights(TinyNet(), tmp_path / "nope.pth", Config())


def test_truncated_file_is_a_clear_error(tmp_path):
    path = save_checkpoint({"w": torch.arange(100.0)}, tmp_path / "x.pth")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match=r"truncated/corrupt.*copied completely"):
        load_checkpoint_file(path)


def test_unsafe_pickle_is_refused_with_a_fix(tmp_path):
    path = tmp_path / "pickled.pth"
    import argparse

    # An arbitrary Python object, as old training scripts stored their arguments.
    torch.save({"state_dict": {}, "meta": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(CheckpointError, match="re-save its state dict"):
        load_checkpoint_file(path)


def test_load_model_weights_restores_tpvkit_bare_and_ddp_prefixed_weights(tmp_path):
    cfg = Config()
    torch.manual_seed(0)
    src = TinyNet()
    save_checkpoint(_full_checkpoint(src, cfg), tmp_path / "full.pth")
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "ddp.pth")
    torch.save({"state_dict": src.state_dict()}, tmp_path / "nested.pth")
    for name, source in (("full", "tpvkit"), ("ddp", "state_dict"), ("nested", "state_dict")):
        dst = TinyNet()
        info = load_model_weights(dst, tmp_path / f"{name}.pth", cfg)
        assert info["source"] == source
        for key, value in src.state_dict().items():
            assert torch.equal(dst.state_dict()[key], value), (name, key)
    assert load_model_weights(TinyNet(), tmp_path / "full.pth", cfg)["iteration"] == 7


def test_config_mismatch_names_the_key_and_both_values(tmp_path):
    trained = apply_overrides(Config(), ["model.dim=64", "model.encoder.pos_dims=[24,24,16]"])
    save_checkpoint(_full_checkpoint(TinyNet(), trained), tmp_path / "c.pth")
    with pytest.raises(CheckpointError) as err:
        load_model_weights(TinyNet(), tmp_path / "c.pth", Config())
    msg = str(err.value)
    assert "model.dim 64 (checkpoint) vs 128 (config)" in msg
    assert "model.encoder.pos_dims" in msg and "--set model.dim=64" in msg
    # Runtime-only keys may differ.
    runtime = apply_overrides(trained, ["model.encoder.msda_backend=pytorch"])
    assert config_differences(to_dict(trained), runtime) == []


def test_parameter_mismatch_names_missing_unexpected_and_shapes(tmp_path):
    torch.save(TinyNet(width=4).state_dict(), tmp_path / "w4.pth")
    with pytest.raises(CheckpointError, match=r"backbone\.0\.weight: \(4, 3\) \(checkpoint\)"):
        load_model_weights(TinyNet(width=6), tmp_path / "w4.pth", Config())
    state = TinyNet().state_dict()
    state["extra.weight"] = state.pop("head.weight")
    torch.save(state, tmp_path / "renamed.pth")
    with pytest.raises(CheckpointError) as err:
        load_model_weights(TinyNet(), tmp_path / "renamed.pth", Config())
    assert "missing in the checkpoint: head.weight" in str(err.value)
    assert "not in the model: extra.weight" in str(err.value)


def test_public_layout_is_detected_and_mapped(tmp_path, monkeypatch):
    import sys
    import types

    calls = []

    def fake_public_to_tpvkit(state, cfg):
        calls.append(sorted(state))
        return {
            k.replace("img_backbone.", "backbone.").replace("tpv_aggregator.", ""): v
            for k, v in state.items()
        }

    fake = types.ModuleType("tpvkit.models.checkpoint_keys")
    fake.public_to_tpvkit = fake_public_to_tpvkit
    monkeypatch.setitem(sys.modules, "tpvkit.models.checkpoint_keys", fake)
    src = TinyNet()
    public = {
        (
            "module.img_backbone." + k[len("backbone.") :]
            if k.startswith("backbone.")
            else "module.tpv_aggregator." + k
        ): v
        for k, v in src.state_dict().items()
    }
    torch.save({"state_dict": public, "meta": {"epoch": 3}}, tmp_path / "public.pth")
    dst = TinyNet()
    assert load_model_weights(dst, tmp_path / "public.pth", Config())["source"] == "public"
    assert calls and all(not k.startswith("module.") for k in calls[0])  # prefix stripped first
    assert torch.equal(dst.head.weight, src.head.weight)


def test_module_has_no_python_object_values_in_checkpoints():
    # Every top-level value is a weights_only-safe type (dict, list, tensor, number, str, None).
    state = _full_checkpoint(TinyNet(), Config())
    safe = (dict, list, tuple, int, float, str, bool, type(None), torch.Tensor)

    def walk(v):
        assert isinstance(v, safe), type(v)
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    walk(state)
    assert ckpt_mod.CHECKPOINT_FORMAT == state["format"]


def test_real_tiny_model_round_trips_through_the_public_layout(tmp_path):
    from tpvkit.config import load_config
    from tpvkit.models.checkpoint_keys import tpvkit_to_public
    from tpvkit.models.tpvformer import build_model

    cfg = load_config("tpv_tiny", ["model.encoder.num_hcab=1", "model.encoder.num_hab=1"])
    torch.manual_seed(0)
    src = build_model(cfg)
    public = {f"module.{k}": v for k, v in tpvkit_to_public(src.state_dict()).items()}
    public["module.tpv_head.encoder.ref_2d_hw"] = torch.zeros(3)  # a stale buffer of the release
    torch.save({"state_dict": public, "meta": {"iter": 5}}, tmp_path / "public.pth")
    dst = build_model(cfg)
    assert load_model_weights(dst, tmp_path / "public.pth", cfg)["source"] == "public"
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key
    # The same file against a config with another layer structure: refused in config terms.
    other = load_config("tpv_tiny", ["model.encoder.num_hcab=2", "model.encoder.num_hab=1"])
    with pytest.raises(TpvkitError, match=r"public TPVFormer checkpoint .*public\.pth: .*HCAB"):
        load_model_weights(build_model(other), tmp_path / "public.pth", other)


def test_the_input_contract_compares_what_the_network_sees_and_not_runtime_keys():
    from tpvkit.engine.checkpoint import INPUT_CONTRACT_KEYS, contract_differences

    trained = Config()
    runtime = apply_overrides(
        trained,
        [
            "data.batch_size=4",
            "data.num_workers=0",
            "data.photometric_aug=false",
            "data.grid_mask=false",
            "data.dataroot=/elsewhere",
            "data.val_infos=x.json",
            "eval.batch_size=3",
            "train.device=cpu",
            "model.encoder.msda_backend=ref",
        ],
    )
    assert contract_differences(to_dict(trained), runtime) == []
    changed = apply_overrides(
        trained,
        [
            "data.to_rgb=true",
            "data.img_size=[224,400]",
            "task=tpv_occupancy",
            "model.num_classes=18",
        ],
    )
    diffs = {key: (old, new) for key, old, new in contract_differences(to_dict(trained), changed)}
    assert diffs == {
        "task": ("lidarseg", "tpv_occupancy"),
        "model.num_classes": (17, 18),
        "data.to_rgb": (False, True),
        "data.img_size": ([900, 1600], [224, 400]),
    }
    assert set(INPUT_CONTRACT_KEYS) >= {"data.img_mean", "data.img_std", "data.voxel_convention"}
    # A stored config without data.* (an older checkpoint) is compared against the defaults.
    older = {"model": to_dict(trained)["model"]}
    assert contract_differences(older, trained) == []
    assert [d[0] for d in contract_differences(older, changed)] == [
        "task",
        "model.num_classes",
        "data.img_size",
        "data.to_rgb",
    ]


# ---------------------------------------------------------------------------------------------
# train.load_from: the initial weights of a fresh run


class WiderHeadNet(TinyNet):
    """TinyNet's backbone with another head: a checkpoint of one gives the other its backbone."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)


def test_load_initial_weights_takes_the_named_parts_and_leaves_the_rest(tmp_path):
    torch.manual_seed(0)
    src = TinyNet()
    save_checkpoint(_full_checkpoint(src, Config()), tmp_path / "src.pth")
    dst = WiderHeadNet()
    head_before = {k: v.clone() for k, v in dst.head.state_dict().items()}
    taken, kept = ckpt_mod.load_initial_weights(dst, tmp_path / "src.pth", Config(), ["backbone"])
    # Linear (weight, bias) + BatchNorm1d (weight, bias, running mean and var, batch count).
    assert (taken, kept) == (7, ["head.weight", "head.bias"])
    for key, value in src.backbone.state_dict().items():
        assert torch.equal(dst.backbone.state_dict()[key], value), key
    for key, value in head_before.items():
        assert torch.equal(dst.head.state_dict()[key], value), key
    # Without parts: whatever matches by name and shape (here the same backbone), from a bare
    # state dict with DDP's prefix too.
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "ddp.pth")
    other = WiderHeadNet()
    assert ckpt_mod.load_initial_weights(other, tmp_path / "ddp.pth", Config())[0] == 7
    assert torch.equal(other.backbone[0].weight, src.backbone[0].weight)


def test_load_initial_weights_refuses_what_it_cannot_give_naming_the_tensors(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(_full_checkpoint(TinyNet(), Config()), tmp_path / "src.pth")
    with pytest.raises(CheckpointError, match=r"its head: shape mismatch: head\.weight: \(2, 4\)"):
        ckpt_mod.load_initial_weights(WiderHeadNet(), tmp_path / "src.pth", Config(), ["head"])
    backbone_only = {k: v for k, v in TinyNet().state_dict().items() if k.startswith("backbone")}
    torch.save(backbone_only, tmp_path / "backbone.pth")
    with pytest.raises(CheckpointError, match="missing in the checkpoint: head.weight, head.bias"):
        ckpt_mod.load_initial_weights(TinyNet(), tmp_path / "backbone.pth", Config(), ["head"])
    with pytest.raises(CheckpointError, match="its neck: the model has no such part"):
        ckpt_mod.load_initial_weights(TinyNet(), tmp_path / "src.pth", Config(), ["neck"])
    torch.save({"other.weight": torch.zeros(2)}, tmp_path / "unrelated.pth")
    with pytest.raises(CheckpointError, match="no tensor of .* matches the model"):
        ckpt_mod.load_initial_weights(TinyNet(), tmp_path / "unrelated.pth", Config())
    with pytest.raises(CheckpointError, match="train.load_from: .*gone.pth does not exist"):
        ckpt_mod.load_initial_weights(TinyNet(), tmp_path / "gone.pth", Config())


def test_a_fresh_run_starts_from_load_from_and_a_resumed_run_ignores_it(tmp_path):
    from train_helpers import toy_config, toy_parts

    from tpvkit.engine.train import train

    first = train(toy_config("train.max_iters=3"), tmp_path / "a", parts=toy_parts(dropout=0.0))
    source = load_checkpoint_file(first)["model"]
    held = {}

    def build(cfg):
        parts = toy_parts(dropout=0.0)(cfg)
        held["before"] = {k: v.clone() for k, v in parts.model.state_dict().items()}
        held["model"] = parts.model
        return parts

    cfg = toy_config(
        "train.max_iters=1",
        "optim.lr=0",
        "optim.warmup_start_lr=0",
        "optim.min_lr=0",
        f"train.load_from={first}",
        "train.load_from_modules=[backbone]",
    )
    train(cfg, tmp_path / "b", parts=build)
    weights = held["model"].state_dict()  # lr 0: still the weights the run started from
    assert torch.equal(weights["backbone.0.weight"], source["backbone.0.weight"])
    assert torch.equal(weights["head.weight"], held["before"]["head.weight"])
    assert not torch.equal(weights["head.weight"], source["head.weight"])
    log = (tmp_path / "b" / "train.log").read_text()
    assert f"initial weights from {first} (backbone): 2 tensors taken, 2 left as initialised" in log
    # --resume continues from its own checkpoint: the file it started from is not read again.
    for path in (tmp_path / "a").glob("*.pth"):
        path.unlink()
    longer = apply_overrides(cfg, ["train.max_iters=2"])
    train(longer, tmp_path / "b", resume=True, parts=toy_parts(dropout=0.0))
    assert (tmp_path / "b" / "train.log").read_text().count("initial weights from") == 1


def test_a_missing_load_from_is_refused_before_the_work_dir_gets_a_file(tmp_path):
    from train_helpers import toy_config, toy_parts

    from tpvkit.engine.train import train

    cfg = toy_config(f"train.load_from={tmp_path / 'gone.pth'}")
    with pytest.raises(CheckpointError, match="gone.pth does not exist"):
        train(cfg, tmp_path / "run", parts=toy_parts())
    assert not (tmp_path / "run").exists()
