"""What a training run reports: console, train.log, metrics.jsonl and TensorBoard (rank 0 only).

A resumed run first drops the metrics.jsonl lines (and TensorBoard events) written after the
checkpoint it resumes from, so the files read as one uninterrupted run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tpvkit.utils.io import atomic_write_text


def format_terms(terms: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in terms.items())


class RunLog:
    """Everything the run reports. Every method is a no-op on ranks other than 0."""

    def __init__(self, work_dir: Path, enabled: bool, start_iteration: int) -> None:
        self.enabled = enabled
        self.text = None
        self.jsonl = None
        self.tb = None
        if not enabled:
            return
        truncate_jsonl(work_dir / "metrics.jsonl", start_iteration)
        # Plain open(): the files get 0666 less the umask, like any other tool's logs.
        self.text = open(work_dir / "train.log", "a", encoding="utf-8")  # noqa: SIM115
        self.jsonl = open(work_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a crashed run wrote after the checkpoint we resume from.
            self.tb = SummaryWriter(
                str(work_dir / "tb"), purge_step=start_iteration + 1 if start_iteration else None
            )
        except ImportError:  # tensorboard is a dependency, but a broken install must not stop us
            self.info("tensorboard is not importable: no TensorBoard scalars this run")

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        tqdm.write(message)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        assert self.text is not None
        self.text.write(f"{stamp} {message}\n")
        self.text.flush()

    def record(self, kind: str, iteration: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        assert self.jsonl is not None
        self.jsonl.write(json.dumps({"kind": kind, "iter": iteration, **values}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and name != "epoch":
                    self.tb.add_scalar(f"{kind}/{name}", value, iteration)

    def close(self) -> None:
        for handle in (self.text, self.jsonl, self.tb):
            if handle is not None:
                handle.close()


def read_records(path: str | Path, kind: str) -> list[dict[str, Any]]:
    """The metrics.jsonl records of one kind ("train", "val"), without their "kind" key; []
    when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k != "kind"} for r in records if r.get("kind") == kind]


def truncate_jsonl(path: Path, start_iteration: int) -> None:
    """Drop lines past `start_iteration`: a resumed run rewrites what followed its checkpoint."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["iter"] <= start_iteration:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
