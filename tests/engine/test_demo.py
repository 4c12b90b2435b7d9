"""`tpvkit demo` end to end on the session's synthetic data (shrunken model, seconds of training):
every stage runs and every path it reports exists."""

from __future__ import annotations

import pytest
from train_helpers import REAL_TINY

from tpvkit.engine.demo import run_demo


@pytest.mark.slow
def test_demo_runs_every_stage_and_reports_existing_paths(tmp_path, synthetic_root, capsys):
    work = tmp_path / "demo"
    work.mkdir()
    (work / "data").symlink_to(synthetic_root, target_is_directory=True)  # reused, not written
    result = run_demo(work, minutes=0.05, overrides=[*REAL_TINY, "train.log_interval=5"])
    out = capsys.readouterr().out
    for stage in ("data", "train", "eval", "predict", "export", "render"):
        assert result["paths"][stage], stage
        for path in result["paths"][stage]:
            assert path.exists(), path
            assert str(path) in out  # every path is printed
    assert len(result["paths"]["predict"]) == 2
    assert any(p.suffix == ".png" for p in result["paths"]["render"])
    assert result["metrics"]["num_samples"] > 0 and "mIoU (points)" in out
    assert (work / "eval" / "metrics.json").is_file()
    assert "reusing the synthetic dataroot" in out
