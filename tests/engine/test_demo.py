"""`tpvkit demo` end to end on the session's synthetic data (shrunken model, a few iterations):
every stage runs, every path it reports exists, the fixed schedule completes, and a second
run in another work dir prints the same metrics."""

from __future__ import annotations

import json

import pytest
from train_helpers import REAL_TINY

from tpvkit.engine.demo import estimated_seconds, run_demo

# Everything in metrics.json that is a result (not a path, a time or the device).
RESULT_KEYS = (
    "miou",
    "iou_per_class",
    "miou_voxel",
    "iou_per_class_voxel",
    "num_samples",
    "confusion_matrix",
    "confusion_matrix_voxel",
    "num_points",
)


@pytest.mark.slow
def test_demo_runs_every_stage_and_repeats_its_metrics(tmp_path, synthetic_root, capsys):
    import torch

    threads = torch.get_num_threads()
    metrics = []
    for name in ("a", "b"):
        work = tmp_path / name
        work.mkdir()
        (work / "data").symlink_to(synthetic_root, target_is_directory=True)  # reused, unwritten
        result = run_demo(
            work, tasks=("lidarseg",), iters=3, overrides=[*REAL_TINY, "train.log_interval=1"]
        )
        out = capsys.readouterr().out
        for stage in ("data", "train", "eval", "predict", "export", "render"):
            assert result["paths"][stage], stage
            for path in result["paths"][stage]:
                assert path.exists(), path
                assert str(path) in out  # every path is printed
        assert len(result["paths"]["predict"]) == 2
        assert any(p.suffix == ".png" for p in result["paths"]["render"])
        (page,) = [p for p in result["paths"]["render"] if p.suffix == ".html"]  # the viewer
        assert "<canvas" in page.read_text()
        assert result["metrics"]["num_samples"] > 0 and "mIoU (points)" in out
        assert "reusing the synthetic dataroot" in out
        # A fresh demo has nothing to resume (0.2 logged "--resume: no checkpoint ...").
        assert "starting from scratch" not in (work / "train" / "train.log").read_text()
        assert "stages should end in about" in out and "left" in out
        assert result["checkpoint"].name == "iter_000003.pth"  # the schedule ran to its end
        stored = json.loads((work / "eval" / "metrics.json").read_text())
        metrics.append({k: stored[k] for k in RESULT_KEYS})
        summary = [line for line in out.splitlines() if line.startswith("mini_val mIoU")]
    assert metrics[0] == metrics[1]
    assert torch.get_num_threads() == threads  # the demo's own thread count is not left behind
    assert len(summary) == 1


# The occupancy demo model shrunk for a test: a 25x25x2 TPV decoded x8 to the 200x200x16 grid.
OCC_TINY = [
    "train.device=cpu",
    "data.num_workers=0",
    "data.img_size=[64,96]",
    "model.tpv_h=25",
    "model.tpv_w=25",
    "model.tpv_z=2",
    "model.head.scale_h=8",
    "model.head.scale_w=8",
    "model.head.scale_z=8",
    "model.encoder.num_hcab=1",
    "model.encoder.num_hab=0",
    "model.backbone.base_channels=8",
    "train.log_interval=1",
]


@pytest.mark.slow
def test_demo_occupancy_model_runs_every_stage(tmp_path, synthetic_root, capsys):
    work = tmp_path / "occ"
    work.mkdir()
    (work / "occupancy").mkdir()
    (work / "occupancy" / "data").symlink_to(synthetic_root, target_is_directory=True)
    result = run_demo(work, tasks=("occupancy",), iters=2, overrides=OCC_TINY)
    out = capsys.readouterr().out
    run = result["runs"]["occupancy"]
    for stage in ("train", "eval", "predict", "export", "render"):
        for path in run["paths"][stage]:
            assert path.exists() and str(path) in out, path
            assert path.is_relative_to(work / "occupancy")
    assert run["checkpoint"].name == "iter_000002.pth"
    stored = json.loads((work / "occupancy" / "eval" / "metrics.json").read_text())
    assert "rayiou" in stored and "miou_nomask" in stored
    assert "mini_val occupancy mIoU (camera mask)" in out  # the session's v1.0-mini world
    assert "reusing the synthetic dataroot" in out
    (page,) = [p for p in run["paths"]["render"] if p.suffix == ".html"]
    assert "<canvas" in page.read_text()


def test_the_time_estimate_grows_with_the_schedule():
    assert estimated_seconds(0, 0.5) > 0
    assert estimated_seconds(480, 0.3) == pytest.approx(
        2 * estimated_seconds(240, 0.3) - estimated_seconds(0, 0.3)
    )


def test_demo_task_must_be_known(tmp_path):
    from typer.testing import CliRunner

    from tpvkit.cli import app

    result = CliRunner().invoke(app, ["demo", "--task", "lidar", "--work-dir", str(tmp_path / "w")])
    assert result.exit_code == 2
    assert "--task lidar: give lidarseg, occupancy or all" in result.output
    assert not (tmp_path / "w").exists()
