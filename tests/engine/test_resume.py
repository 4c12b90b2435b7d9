"""--resume continues exactly: the same losses and final weights as a run never stopped."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch
from train_helpers import toy_config, toy_losses, toy_parts, train_records

from tpvkit.engine.train import train

N = 12  # 5 samples: epochs end at iterations 5 and 10 (batch 1), so a stop at 7 is mid-epoch


def _assert_same_final_state(a, b):
    _assert_same_final_state_at(a, b, N)


def _assert_same_final_state_at(a, b, iterations):
    ca = torch.load(a / "latest.pth", weights_only=True)
    cb = torch.load(b / "latest.pth", weights_only=True)
    assert ca["iteration"] == cb["iteration"] == iterations
    for key, value in ca["model"].items():
        assert torch.equal(value, cb["model"][key]), key
    for idx, state in ca["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, cb["optimizer"]["state"][idx][name]), (idx, name)


def _losses(work_dir, iters):
    records = train_records(work_dir)
    return [(it, records[it]["loss"], records[it]["lr"]) for it in iters]


@pytest.mark.parametrize(
    ("overrides", "stop"),
    [
        ((), 7),  # mid-epoch, batch 1, loading in the main process
        (("data.batch_size=2", "data.num_workers=2"), 4),  # 3 steps/epoch, worker processes
    ],
    ids=["batch1-main-process", "batch2-two-workers"],
)
def test_stop_and_resume_matches_one_uninterrupted_run(tmp_path, overrides, stop):
    cfg = toy_config(f"train.max_iters={N}", *overrides)
    train(cfg, tmp_path / "full", parts=toy_parts())
    train(cfg, tmp_path / "split", parts=toy_parts(), stop_after=stop)
    assert max(train_records(tmp_path / "split")) == stop
    train(cfg, tmp_path / "split", resume=True, parts=toy_parts())
    second_half = range(stop + 1, N + 1)
    assert _losses(tmp_path / "split", second_half) == _losses(tmp_path / "full", second_half)
    _assert_same_final_state(tmp_path / "full", tmp_path / "split")


def test_resume_after_a_crash_restarts_from_the_last_periodic_checkpoint(tmp_path):
    cfg = toy_config(f"train.max_iters={N}", "train.ckpt_interval=3")
    train(cfg, tmp_path / "full", parts=toy_parts())

    calls = {"n": 0}

    def crashing(model, batch):
        calls["n"] += 1
        if calls["n"] == 9:  # dies during iteration 9: checkpoints exist for 3 and 6
            raise KeyboardInterrupt
        return toy_losses(model, batch)

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "crash", parts=toy_parts(loss_fn=crashing))
    assert max(train_records(tmp_path / "crash")) == 8  # logged past the checkpoint at 6
    train(cfg, tmp_path / "crash", resume=True, parts=toy_parts())
    # metrics.jsonl was cut back to iteration 6 and rewritten: one record per iteration.
    assert sorted(train_records(tmp_path / "crash")) == list(range(1, N + 1))
    everything = range(1, N + 1)
    assert _losses(tmp_path / "crash", everything) == _losses(tmp_path / "full", everything)
    _assert_same_final_state(tmp_path / "full", tmp_path / "crash")


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path):
    cfg = toy_config("train.max_iters=3")
    train(cfg, tmp_path / "a", resume=True, parts=toy_parts())
    assert "starting from scratch" in (tmp_path / "a" / "train.log").read_text()
    assert max(train_records(tmp_path / "a")) == 3


def test_resume_refuses_a_different_model_config(tmp_path):
    from tpvkit.errors import TpvkitError

    train(toy_config("train.max_iters=2"), tmp_path, parts=toy_parts())
    with pytest.raises(TpvkitError, match="model.dim 128 \\(checkpoint\\) vs 64"):
        cfg = toy_config("train.max_iters=4", "model.dim=64", "model.encoder.pos_dims=[24,24,16]")
        train(cfg, tmp_path, resume=True, parts=toy_parts())


@pytest.mark.slow
def test_real_model_resume_with_augmentation_matches_an_uninterrupted_run(
    tmp_path, synthetic_infos
):
    from train_helpers import info_subset, real_config

    # 3 samples, photometric distortion and GridMask on: the augmentation draws must repeat.
    infos = info_subset(synthetic_infos["mini_train"], tmp_path / "three.json", [0, 1, 0])
    cfg = real_config(
        infos,
        "train.max_iters=5",
        "data.photometric_aug=true",
        "data.grid_mask=true",
        "data.grid_mask_prob=0.5",
    )
    train(cfg, tmp_path / "full")
    train(cfg, tmp_path / "split", stop_after=2)
    train(cfg, tmp_path / "split", resume=True)
    rest = range(3, 6)
    assert _losses(tmp_path / "split", rest) == _losses(tmp_path / "full", rest)
    a = torch.load(tmp_path / "full" / "latest.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "latest.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    cfg = toy_config("train.max_iters=4")
    final = train(cfg, tmp_path, parts=toy_parts())
    before = final.read_bytes()
    assert train(cfg, tmp_path, resume=True, parts=toy_parts()) == final
    assert final.read_bytes() == before
    assert "already finished its 4 iterations" in (tmp_path / "train.log").read_text()


# ---------------------------------------------------------------------------------------------
# The config of a resumed run: the work dir's, no repeated --set


def test_resume_config_is_the_work_dirs_without_repeating_set(tmp_path):
    from tpvkit.engine.train import resume_config

    cfg = toy_config("train.max_iters=3", "optim.lr=0.02", "model.dim=64",
                     "model.encoder.pos_dims=[24,24,16]")  # fmt: skip
    train(cfg, tmp_path, parts=toy_parts())
    again = resume_config(tmp_path, None)
    assert again == cfg  # every --set of the first run, read back from config.yaml
    longer = resume_config(tmp_path, None, ["train.max_iters=5"])
    assert longer.train.max_iters == 5 and longer.model.dim == 64
    final = train(longer, tmp_path, resume=True, parts=toy_parts())
    assert final.name == "iter_000005.pth"
    assert "train.max_iters 3 (checkpoint) vs 5 (config)" in (tmp_path / "train.log").read_text()


def test_resume_config_falls_back_to_the_checkpoints_config(tmp_path):
    from tpvkit.engine.train import resume_config

    cfg = toy_config("train.max_iters=2", "optim.lr=0.03")
    train(cfg, tmp_path, parts=toy_parts())
    (tmp_path / "config.yaml").unlink()
    assert resume_config(tmp_path, None) == cfg


def test_resume_config_refuses_a_model_or_data_difference_naming_the_keys(tmp_path):
    import shlex

    from tpvkit.engine.train import resume_config
    from tpvkit.errors import TpvkitError

    train(toy_config("train.max_iters=2"), tmp_path, parts=toy_parts())
    before = (tmp_path / "config.yaml").read_bytes()
    with pytest.raises(TpvkitError) as err:
        resume_config(tmp_path, None, ["model.encoder.num_points_ica=[4,8,8]", "data.to_rgb=true"])
    message = str(err.value)
    assert "model.encoder.num_points_ica [8, 64, 64] (run) vs [4, 8, 8] (now)" in message
    assert "data.to_rgb False (run) vs True (now)" in message
    # the suggested overrides paste back into a shell as they are printed
    fix = message.split("(or add: ")[1].rstrip(")")
    assert shlex.split(fix) == [
        "--set", "model.encoder.num_points_ica=[8, 64, 64]", "--set", "data.to_rgb=false"
    ]  # fmt: skip
    assert (tmp_path / "config.yaml").read_bytes() == before
    # where the files are and how they are loaded may change
    moved = resume_config(tmp_path, None, ["data.num_workers=2", "data.dataroot=/elsewhere"])
    assert moved.data.num_workers == 2


def test_resume_config_without_a_run_needs_config(tmp_path):
    from tpvkit.engine.train import resume_config
    from tpvkit.errors import TpvkitError

    with pytest.raises(TpvkitError, match="holds no config.yaml and no checkpoint.*give CONFIG"):
        resume_config(tmp_path, None)
    assert resume_config(tmp_path, "tpv_tiny").name == "tpv_tiny"  # nothing to compare with


def test_a_refused_resume_leaves_the_runs_config_yaml_as_it_was(tmp_path):
    from tpvkit.errors import TpvkitError

    train(toy_config("train.max_iters=2"), tmp_path, parts=toy_parts())
    before = (tmp_path / "config.yaml").read_bytes()
    with pytest.raises(TpvkitError):
        cfg = toy_config("train.max_iters=4", "model.dim=64", "model.encoder.pos_dims=[24,24,16]")
        train(cfg, tmp_path, resume=True, parts=toy_parts())
    assert (tmp_path / "config.yaml").read_bytes() == before


def test_latest_is_a_copy_whose_damage_leaves_the_iteration_file_intact(tmp_path):
    cfg = toy_config("train.max_iters=4", "train.ckpt_interval=2")
    train(cfg, tmp_path, parts=toy_parts())
    latest, newest = tmp_path / "latest.pth", tmp_path / "iter_000004.pth"
    assert os.stat(latest).st_ino != os.stat(newest).st_ino  # 0.2: a hard link
    before = newest.read_bytes()
    with open(latest, "r+b") as fh:  # damaged in place, as by `cp` of a cut-short file onto it
        fh.truncate(latest.stat().st_size // 2)
    assert newest.read_bytes() == before


def test_a_damaged_checkpoint_names_the_newest_intact_one_and_the_command(tmp_path):
    from tpvkit.engine.checkpoint import CheckpointError

    cfg = toy_config("train.max_iters=6", "train.ckpt_interval=2")
    train(cfg, tmp_path / "full", parts=toy_parts())
    work = tmp_path / "w"
    train(cfg, work, parts=toy_parts(), stop_after=4)
    for name in ("latest.pth", "iter_000004.pth"):  # both cut short; iter_000002.pth intact
        data = (work / name).read_bytes()
        (work / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        train(cfg, work, resume=True, parts=toy_parts())
    message = str(err.value)
    assert "truncated" in message and "newest intact checkpoint is" in message
    assert str(work / "iter_000002.pth") in message
    command = message.split("resume from it with: ", 1)[1]
    assert command.endswith(f"tpvkit train --work-dir {work} --resume")
    # The printed command works: the damaged files are moved aside (kept), the run continues
    # from iteration 2 and ends where an uninterrupted run does.
    subprocess.run(command.rsplit(" && ", 1)[0], shell=True, check=True)
    assert (work / "latest.pth.damaged").is_file() and (work / "iter_000004.pth.damaged").is_file()
    train(cfg, work, resume=True, parts=toy_parts())
    _assert_same_final_state_at(tmp_path / "full", work, 6)


def test_with_no_intact_checkpoint_left_the_error_says_so(tmp_path):
    from tpvkit.engine.checkpoint import CheckpointError

    cfg = toy_config("train.max_iters=2", "train.ckpt_interval=2")
    train(cfg, tmp_path, parts=toy_parts())
    for path in tmp_path.glob("*.pth"):
        path.write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(CheckpointError, match="No intact iter_.*pth is left"):
        train(cfg, tmp_path, resume=True, parts=toy_parts())


def test_validation_turned_off_the_documented_way_says_so_plainly(tmp_path):
    train(toy_config("train.max_iters=1", "data.val_infos=''"), tmp_path, parts=toy_parts())
    log = (tmp_path / "train.log").read_text()
    assert "no validation (data.val_infos is empty)" in log and "not found" not in log
