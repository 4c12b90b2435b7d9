"""--threads: torch's intra-op threads and the data-loading workers share one CPU budget."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from tpvkit.cli import app
from tpvkit.cli._common import use_threads
from tpvkit.errors import TpvkitError
from tpvkit.utils import threads as threads_mod
from tpvkit.utils.threads import plan_threads


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("total", "max_workers", "intra", "workers"),
    [
        (1, 2, 1, 0),  # one thread: loading inline
        (2, 1, 1, 1),  # the 2-core machine: 1 for torch, 1 worker (measured fastest)
        (2, 0, 2, 0),  # no workers wanted: all for torch
        (16, 2, 14, 2),
        (3, 8, 1, 2),
    ],
)
def test_the_split(total, max_workers, intra, workers):
    plan = plan_threads(total, max_workers)
    assert (plan.total, plan.intra_op, plan.workers) == (total, intra, workers)
    assert plan.intra_op + plan.workers == total and plan.source == "--threads"


def test_the_default_follows_omp_then_the_cpus_shared_by_torchrun(monkeypatch):
    monkeypatch.setattr(threads_mod, "available_cpus", lambda: 16)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert plan_threads(None, 2).total == 3 and plan_threads(None, 2).source == "OMP_NUM_THREADS"
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert plan_threads(None, 2).total == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert (plan_threads(None, 2).total, plan_threads(None, 2).workers) == (2, 1)


def test_zero_threads_is_refused():
    with pytest.raises(TpvkitError, match="--threads 0"):
        plan_threads(0, 2)


def test_use_threads_sets_torch_and_the_loader():
    assert use_threads(3, None, None) == ["data.num_workers=2"]  # capped by the default, 2
    assert torch.get_num_threads() == 1
    assert use_threads(3, ["data.num_workers=0"], None) == ["data.num_workers=0"]
    assert torch.get_num_threads() == 3
    assert use_threads(2, None, None, loads_data=False) == []
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("command", ["train", "eval", "predict", "deploy"])
def test_every_compute_command_has_threads(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "--threads" in result.output


def test_train_threads_reach_the_log(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "engine"))
    from train_helpers import toy_config, toy_parts

    from tpvkit.config import apply_overrides
    from tpvkit.engine.train import train

    cfg = toy_config("train.max_iters=1")  # data.num_workers=0: the plan gives torch both
    train(apply_overrides(cfg, use_threads(2, None, cfg)), tmp_path, parts=toy_parts())
    log = (tmp_path / "train.log").read_text()
    assert "2 torch thread(s) + 0 data-loading worker(s)" in log
