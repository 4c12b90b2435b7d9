"""The task and label space tables (tpvkit.task), the config's `task` key and its one inference
rule, and the task written into (and read back from) a checkpoint, old checkpoints included."""

from __future__ import annotations

import pytest
import torch

from tpvkit.config import (
    ConfigError,
    apply_overrides,
    from_dict,
    infer_task_name,
    load_config,
    shipped_configs,
    task_of,
    to_dict,
)
from tpvkit.constants import CLASS_NAMES, OCC3D_CLASS_NAMES, OCCUPANCY_CLASS_NAMES, PALETTE
from tpvkit.errors import TpvkitError
from tpvkit.task import LABEL_SPACES, TASKS, LabelSpace, get_task, task_from_dict, task_to_dict

SHIPPED_TASKS = {
    "tpv_lidarseg_base": "lidarseg",
    "tpv_lidarseg_dim64": "lidarseg",
    "tpv_lidarseg_dim96": "lidarseg",
    "tpv_small": "lidarseg",
    "bev_base": "lidarseg",
    "tpv_tiny": "lidarseg",
    "bev_tiny": "lidarseg",
    "tpv_occupancy": "tpv_occupancy",
    "tpv_occ3d_base": "occ3d",
    "tpv_occ3d_tiny": "occ3d",
    "bev_occ3d_tiny": "occ3d",
}


def test_the_label_spaces_say_which_class_is_free_and_which_is_ignored():
    lidarseg = LABEL_SPACES["nuscenes_lidarseg"]
    assert lidarseg.class_names == CLASS_NAMES and lidarseg.class_names[0] == "noise"
    assert (lidarseg.free_index, lidarseg.ignore_index) == (None, 0)
    assert lidarseg.predictable().tolist() == [False] + [True] * 16
    assert lidarseg.hidden_by_default() == ("noise",)

    released = LABEL_SPACES["nuscenes_lidarseg_empty"]
    assert released.class_names == OCCUPANCY_CLASS_NAMES
    assert (released.free_index, released.ignore_index) == (17, 0)
    assert released.hidden_by_default() == ("noise", "empty")

    occ3d = LABEL_SPACES["occ3d_nuscenes"]
    assert occ3d.class_names == OCC3D_CLASS_NAMES
    assert occ3d.class_names[0] == "others" and occ3d.class_names[17] == "free"
    assert (occ3d.free_index, occ3d.ignore_index) == (17, None)
    assert occ3d.predictable().all()  # "others" is a real class
    assert occ3d.hidden_by_default() == ("free",)
    for space in LABEL_SPACES.values():
        assert space.palette == PALETTE[: space.num_classes]


def test_a_label_space_refuses_indices_outside_its_classes():
    with pytest.raises(ValueError, match="free index 3"):
        LabelSpace("x", ("a", "b"), ((0, 0, 0), (1, 1, 1)), 3, None)
    with pytest.raises(ValueError, match="colours"):
        LabelSpace("x", ("a", "b"), ((0, 0, 0),), None, None)


def test_every_shipped_config_states_its_task():
    assert set(shipped_configs()) == set(SHIPPED_TASKS)
    for name, task in SHIPPED_TASKS.items():
        cfg = load_config(name)
        assert cfg.task == task, name
        t = task_of(cfg)
        assert t.label_space.num_classes == cfg.model.num_classes
        assert t.grid is not None and t.grid.frame == cfg.model.grid_frame


def test_occ3d_configs_decode_the_occ3d_grid():
    for name in ("tpv_occ3d_base", "tpv_occ3d_tiny", "bev_occ3d_tiny"):
        grid = task_of(load_config(name)).grid
        assert grid is not None and grid.same_as(TASKS["occ3d"].grid), name


def test_the_one_rule_names_the_task_of_a_config_that_states_none():
    # tpvkit 0.2 configs (and the checkpoints that store them) hold no task key
    for name, task in SHIPPED_TASKS.items():
        stored = to_dict(load_config(name))
        del stored["task"]
        assert from_dict(stored).task == task, name
        assert infer_task_name(from_dict(stored)) == task
    with pytest.raises(ConfigError, match="must state its task"):
        from_dict({"model": {"num_classes": 20}})


def test_a_stated_task_must_fit_the_model():
    with pytest.raises(ConfigError, match="model.num_classes: 17, but task occ3d predicts"):
        load_config("tpv_tiny", ["task=occ3d"])
    with pytest.raises(ConfigError, match="model.grid_frame: 'lidar', but task occ3d works"):
        load_config("tpv_tiny", ["task=occ3d", "model.num_classes=18"])
    with pytest.raises(ConfigError, match="task: 'lidar' is not one of"):
        load_config("tpv_tiny", ["task=lidar"])
    # a config without a task key takes the rule's answer once loaded, overrides included
    cfg = load_config(None, ["model.num_classes=18"])
    assert cfg.task == "tpv_occupancy"
    with pytest.raises(ConfigError, match="model.num_classes: 17, but task tpv_occupancy"):
        apply_overrides(cfg, ["model.num_classes=17"])


def test_task_records_round_trip():
    for name in SHIPPED_TASKS:
        task = task_of(load_config(name))
        assert task_from_dict(task_to_dict(task)) == task
    assert task_from_dict(task_to_dict(get_task("occ3d"))) == get_task("occ3d")
    broken = task_to_dict(get_task("lidarseg"))
    del broken["label_space"]
    with pytest.raises(TpvkitError, match="f.npz: its task record is malformed"):
        task_from_dict(broken, "f.npz")
    with pytest.raises(TpvkitError, match="unknown task 'nope': known tasks are lidarseg"):
        get_task("nope")


def _old_checkpoint(cfg, path):
    """A checkpoint as tpvkit 0.2 wrote it: its config without `task`, no "task" record."""
    from tpvkit.engine.checkpoint import build_checkpoint, save_checkpoint
    from tpvkit.models.tpvformer import build_model

    torch.manual_seed(0)
    state = build_checkpoint(model=build_model(cfg), cfg=cfg)
    del state["task"]
    del state["config"]["task"]
    save_checkpoint(state, path)


@pytest.mark.parametrize("name", ["tpv_tiny", "tpv_occ3d_tiny"])
def test_an_old_checkpoint_gets_its_task_once_at_load(tmp_path, name):
    from tpvkit.engine.checkpoint import build_checkpoint
    from tpvkit.engine.inference import load_for_inference

    cfg = load_config(name, ["train.device=cpu"])
    path = tmp_path / "old.pth"
    _old_checkpoint(cfg, path)
    loaded = load_for_inference(path)
    assert loaded.cfg.task == cfg.task and loaded.task == task_of(cfg)
    # written down from then on: a checkpoint saved from it records the task
    state = build_checkpoint(model=loaded.model, cfg=loaded.cfg)
    assert state["config"]["task"] == cfg.task
    assert task_from_dict(state["task"]) == task_of(cfg)
