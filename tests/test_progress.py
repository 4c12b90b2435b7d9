"""Progress on a terminal is a tqdm bar; in a log file it is plain lines that never share a line
with a log message (0.2 wrote tqdm's carriage-return redraws into log files)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from tpvkit.utils.progress import Progress, track


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_plain_lines():
    log = io.StringIO()
    with Progress(4, "eval", "batch", stream=log, log_every=0.0) as progress:
        for _ in range(4):
            progress.update(1)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[0].startswith("eval: 1/4 batch (25%), 0:00 elapsed")
    assert lines[-1].startswith("eval: 4/4 batch (100%)")
    assert len(lines) == 4  # the final count once, not again at close


def test_silent_in_a_log_file_when_the_caller_logs_and_a_bar_on_a_terminal():
    log = io.StringIO()
    with Progress(3, "train", stream=log, log_every=None) as progress:
        progress.update(3)
    assert log.getvalue() == ""
    assert progress.rate > 0
    tty = Terminal()
    with Progress(3, "train", stream=tty) as progress:
        progress.update(3)
    assert "\r" in tty.getvalue() and "3/3" in tty.getvalue()  # tqdm drew it


def test_track_yields_everything_and_disabled_shows_nothing(capsys):
    assert list(track(range(5), 5, "x", enabled=False)) == list(range(5))
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_a_training_log_file_has_no_bar_redraws(tmp_path):
    """`tpvkit train ... > log 2>&1`: every line is a whole line, no carriage returns."""
    sys.path.insert(0, str(Path(__file__).parent / "engine"))
    from train_helpers import toy_cli_script, toy_config_file

    config = toy_config_file(tmp_path / "toy.yaml", "train.max_iters=6", "train.log_interval=2")
    log = tmp_path / "run.log"
    repo = Path(__file__).resolve().parents[1]
    with open(log, "wb") as fh:
        subprocess.run(
            [sys.executable, str(toy_cli_script(tmp_path)), "train", str(config), "--work-dir",
             str(tmp_path / "w")],
            stdout=fh, stderr=subprocess.STDOUT, timeout=300, check=True,
            env={**__import__("os").environ, "PYTHONPATH": str(repo)},
        )  # fmt: skip
    text = log.read_bytes().decode()
    assert "\r" not in text, text
    assert "epoch 0 iter 2/6" in text and "final checkpoint" in text
