"""The training loop: schedule, checkpoints, repeatability, NaN stop, time budget, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from train_helpers import (
    info_subset,
    real_config,
    toy_config,
    toy_losses,
    toy_parts,
    train_records,
)

from tpvkit.engine.checkpoint import list_iter_checkpoints
from tpvkit.engine.optim import lr_at
from tpvkit.engine.train import TrainingDivergedError, train
from tpvkit.errors import TpvkitError


def test_toy_run_logs_every_step_with_the_scheduled_lr_and_checkpoints(tmp_path):
    cfg = toy_config("train.ckpt_interval=4", "train.keep_checkpoints=2")
    final = train(cfg, tmp_path, parts=toy_parts())
    assert final == tmp_path / "iter_000010.pth"
    records = train_records(tmp_path)
    assert sorted(records) == list(range(1, 11))
    for it, rec in records.items():
        assert rec["lr"] == pytest.approx(lr_at(it - 1, 10, cfg.optim))
        assert math.isfinite(rec["loss"]) and set(rec) >= {"loss_mse", "loss_l1", "grad_norm"}
    # Saves at 4, 8 and at the end (10); rotation keeps the 2 newest; latest = the final one.
    assert [it for it, _ in list_iter_checkpoints(tmp_path)] == [8, 10]
    latest = torch.load(tmp_path / "latest.pth", weights_only=True)
    assert latest["iteration"] == 10 and latest["epoch"] == 2 and latest["iter_in_epoch"] == 0
    assert (tmp_path / "train.log").read_text().count("iter ") >= 10
    assert (tmp_path / "config.yaml").is_file() and any((tmp_path / "tb").iterdir())


def test_same_seed_gives_the_same_losses_and_another_seed_does_not(tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(toy_config(f"train.seed={seed}"), tmp_path / name, parts=toy_parts())
        runs[name] = [r["loss"] for _, r in sorted(train_records(tmp_path / name).items())]
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_loss_falls_on_the_toy_problem(tmp_path):
    cfg = toy_config("train.max_iters=60", "optim.warmup_iters=0")
    train(cfg, tmp_path, parts=toy_parts(n=2, augment=False, dropout=0.0))
    losses = [r["loss"] for _, r in sorted(train_records(tmp_path).items())]
    assert sum(losses[-5:]) < 0.2 * sum(losses[:5])


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def poisoned(model, batch):
        calls["n"] += 1
        losses = toy_losses(model, batch)
        if calls["n"] == 6:
            losses["loss_mse"] = losses["loss_mse"] * float("nan")
            losses["loss"] = losses["loss"] + losses["loss_mse"]
        return losses

    cfg = toy_config("train.ckpt_interval=4")
    with pytest.raises(TrainingDivergedError) as err:
        train(cfg, tmp_path, parts=toy_parts(loss_fn=poisoned))
    msg = str(err.value)
    assert "non-finite loss at iteration 5" in msg and "loss_mse=nan" in msg
    assert "iter_000004.pth (iteration 4)" in msg
    assert [it for it, _ in list_iter_checkpoints(tmp_path)] == [4]
    assert torch.load(tmp_path / "latest.pth", weights_only=True)["iteration"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_time_budget_stops_cleanly_with_a_checkpoint(tmp_path):
    final = train(toy_config("train.max_minutes=1e-9"), tmp_path, parts=toy_parts())
    assert final == tmp_path / "iter_000001.pth"
    assert "time budget" in (tmp_path / "train.log").read_text()


def test_a_used_work_dir_is_refused_without_resume(tmp_path):
    train(toy_config("train.max_iters=2"), tmp_path, parts=toy_parts())
    with pytest.raises(TpvkitError, match="--resume"):
        train(toy_config("train.max_iters=2"), tmp_path, parts=toy_parts())


def test_unwritable_work_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(TpvkitError, match="cannot write to the work dir"):
        train(toy_config(), blocker / "sub", parts=toy_parts())


def test_missing_info_file_names_it_and_the_prepare_command(tmp_path):
    cfg = toy_config(f"data.train_infos={tmp_path / 'nope.json'}")
    with pytest.raises(TpvkitError) as err:
        train(cfg, tmp_path / "w")
    assert "nope.json" in str(err.value) and "tpvkit prepare" in str(err.value)


# -- the real model on the synthetic data set ---------------------------------------------------


@pytest.mark.slow
def test_tiny_model_overfits_one_sample(tmp_path, synthetic_infos):
    infos = info_subset(synthetic_infos["mini_train"], tmp_path / "one.json", [0])
    n = 45  # ~9x lower by then (Lovasz 0.94 -> 0.4, CE 2.9 -> 0.05); ~0.7 s/step on 2 cores
    cfg = real_config(
        infos,
        f"train.max_iters={n}",
        "optim.lr=1e-2",
        "optim.warmup_iters=3",
        "optim.min_lr=1e-3",
        "train.ckpt_interval=1000",  # one sample = one-step epochs: do not save each of them
    )
    train(cfg, tmp_path / "w")
    records = train_records(tmp_path / "w")
    first = sum(records[i]["loss"] for i in (1, 2, 3)) / 3
    last = sum(records[i]["loss"] for i in (n - 2, n - 1, n)) / 3
    assert last < first / 5, (first, last)
    assert records[n]["loss_lovasz"] < 0.7 * records[1]["loss_lovasz"]
    assert records[n]["loss_ce"] < records[1]["loss_ce"] / 10


def test_cli_train_bad_inputs_exit_non_zero_with_clear_messages(tmp_path, synthetic_infos):
    from typer.testing import CliRunner

    from tpvkit.cli import app

    runner = CliRunner()
    missing = tmp_path / "missing_infos.json"
    result = runner.invoke(
        app,
        ["train", "tpv_tiny", "--work-dir", str(tmp_path / "w"), "--set",
         f"data.train_infos={missing}"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert str(missing) in result.output and "tpvkit prepare" in result.output

    result = runner.invoke(
        app, ["train", "tpv_tiny", "--work-dir", str(tmp_path / "w"), "--set", "optim.lrr=1"]
    )
    assert result.exit_code == 2 and "optim.lr" in result.output

    empty = info_subset(synthetic_infos["mini_train"], tmp_path / "empty.json", [])
    result = runner.invoke(
        app,
        ["train", "tpv_tiny", "--work-dir", str(tmp_path / "w"), "--set",
         f"data.train_infos={empty}"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "no samples" in result.output and "data.train_infos" in result.output


def test_amp_on_cpu_is_ignored_with_a_logged_warning(tmp_path):
    train(toy_config("train.amp=bf16", "train.max_iters=2"), tmp_path, parts=toy_parts())
    assert (
        "train.amp=bf16 needs a CUDA GPU; training in float32"
        in (tmp_path / "train.log").read_text()
    )


def test_periodic_validation_is_logged_to_metrics_and_tensorboard(tmp_path, synthetic_infos):
    infos = info_subset(synthetic_infos["mini_train"], tmp_path / "one.json", [0])
    val = info_subset(synthetic_infos["mini_val"], tmp_path / "val.json", [0, 1, 2])
    cfg = real_config(
        infos, f"data.val_infos={val}", "train.max_iters=2", "train.val_interval=1",
        "train.ckpt_interval=1000",
    )  # fmt: skip
    train(cfg, tmp_path / "w")
    import json

    lines = (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()
    vals = [r for r in map(json.loads, lines) if r["kind"] == "val"]
    assert [r["iter"] for r in vals] == [1, 2]
    assert all(r["num_samples"] == 3 and 0.0 <= r["miou"] <= 1.0 for r in vals)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "w" / "tb"))
    events.Reload()
    assert {"val/miou", "train/loss", "train/lr", "train/loss_lovasz"} <= set(
        events.Tags()["scalars"]
    )


def test_sigterm_stops_after_the_current_step_with_a_checkpoint(tmp_path):
    import os
    import signal

    calls = {"n": 0}

    def preempted(model, batch):
        calls["n"] += 1
        if calls["n"] == 3:  # the cluster asks the job to leave during step 3
            os.kill(os.getpid(), signal.SIGTERM)
        return toy_losses(model, batch)

    final = train(toy_config(), tmp_path, parts=toy_parts(loss_fn=preempted))
    assert final == tmp_path / "iter_000003.pth"
    assert "received SIGTERM" in (tmp_path / "train.log").read_text()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again


# ---------------------------------------------------------------------------------------------
# The command line in a subprocess: SIGTERM exits 143, Ctrl-C 130 with the resume command, and
# --resume needs neither CONFIG nor the first run's --set.


def _toy_cli_env():
    import os
    from pathlib import Path

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")]
    )
    return env


def _start_toy_cli(tmp_path, *args, step_seconds=0.25):
    import signal
    import subprocess
    import sys

    from train_helpers import toy_cli_script

    return subprocess.Popen(
        [sys.executable, str(toy_cli_script(tmp_path, step_seconds)), "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_toy_cli_env(),
        # A background job may inherit SIGINT ignored; Python installs its Ctrl-C handler
        # only where the default is in place.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _signal_after_step(proc, work_dir, step, signum, timeout=60.0):
    import time

    log = work_dir / "train.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and f"iter {step}/" in log.read_text():
            proc.send_signal(signum)
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.mark.slow
def test_cli_sigterm_exits_143_after_its_checkpoint_and_resume_needs_no_config(tmp_path):
    import signal
    import subprocess
    import sys

    from train_helpers import toy_cli_script, toy_config_file

    work = tmp_path / "w"
    config = toy_config_file(tmp_path / "toy.yaml", "train.max_iters=8", "optim.lr=0.02")
    proc = _start_toy_cli(tmp_path, str(config), "--work-dir", str(work))
    code, out, err = _signal_after_step(proc, work, 2, signal.SIGTERM)
    assert code == 143, (out, err)
    assert f"continue with: tpvkit train --work-dir {work} --resume" in err
    assert "Traceback" not in err
    saved = list_iter_checkpoints(work)
    assert saved and 2 <= saved[-1][0] < 8  # stopped early, with a checkpoint
    assert "received SIGTERM" in (work / "train.log").read_text()

    # No CONFIG, no --set: the run's config (max_iters=8, lr=0.02) comes from the work dir.
    done = subprocess.run(
        [sys.executable, str(toy_cli_script(tmp_path)), "train", "--work-dir", str(work),
         "--resume"],
        capture_output=True, text=True, timeout=120, env=_toy_cli_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert list_iter_checkpoints(work)[-1][0] == 8
    records = train_records(work)
    assert sorted(records) == list(range(1, 9))
    optim = toy_config("optim.lr=0.02").optim
    assert records[8]["lr"] == pytest.approx(lr_at(7, 8, optim))


@pytest.mark.slow
def test_cli_ctrl_c_exits_130_and_prints_the_resume_command(tmp_path):
    import signal

    from train_helpers import toy_config_file

    work = tmp_path / "w"
    config = toy_config_file(tmp_path / "toy.yaml", "train.max_iters=20")
    proc = _start_toy_cli(tmp_path, str(config), "--work-dir", str(work))
    code, out, err = _signal_after_step(proc, work, 2, signal.SIGINT)
    assert code == 130, (out, err)
    assert f"interrupted: continue with: tpvkit train --work-dir {work} --resume" in err
    assert "Traceback" not in err
    assert (work / "config.yaml").is_file()  # what the printed command reads


def test_cli_train_without_config_or_resume_is_a_clear_error(tmp_path):
    from typer.testing import CliRunner

    from tpvkit.cli import app

    result = CliRunner().invoke(app, ["train", "--work-dir", str(tmp_path / "w")])
    assert result.exit_code == 2
    assert "CONFIG is missing" in result.output and "--resume" in result.output
    assert not (tmp_path / "w").exists()
    result = CliRunner().invoke(app, ["train", "--work-dir", str(tmp_path / "w"), "--resume"])
    assert result.exit_code == 2 and "give CONFIG" in result.output


def test_a_training_run_honours_the_umask(tmp_path):
    import os

    previous = os.umask(0o002)
    try:
        train(toy_config("train.max_iters=2", "train.ckpt_interval=1"), tmp_path / "w",
              parts=toy_parts())  # fmt: skip
    finally:
        os.umask(previous)
    written = [tmp_path / "w", *(tmp_path / "w").rglob("*")]
    names = {p.name for p in written}
    assert {"config.yaml", "train.log", "metrics.jsonl", "latest.pth", "iter_000002.pth"} <= names
    assert any(p.name.startswith("events.out.tfevents") for p in written)
    lacking = [
        f"{p} {oct(p.stat().st_mode & 0o777)}" for p in written if not p.stat().st_mode & 0o020
    ]
    assert lacking == []
