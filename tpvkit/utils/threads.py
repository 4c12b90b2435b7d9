"""How many CPU threads a command uses: torch's intra-op threads and DataLoader workers together.

`--threads N` (train, eval, predict, deploy) is the total: the data-loading workers take up to
`data.num_workers` of it, leaving at least one thread, and torch's intra-op pool gets the rest.
Without it the total is $OMP_NUM_THREADS when set, else the CPUs this process may run on,
shared among the processes of a torchrun job on this machine. On the 2-core development machine
this gives 1 intra-op thread + 1 worker, the fastest of the splits measured there
(tools/bench_threads.py; docs/training.md, "CPU threads").
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tpvkit.errors import TpvkitError


@dataclass(frozen=True)
class ThreadPlan:
    """The split of `total` CPU threads."""

    total: int
    intra_op: int  # torch.set_num_threads
    workers: int  # DataLoader num_workers (each worker process runs torch with one thread)
    source: str  # where `total` came from: "--threads", "OMP_NUM_THREADS" or "CPUs"

    def describe(self) -> str:
        loading = f"{self.workers} data-loading worker(s)" if self.workers else "loading inline"
        return f"{self.total} CPU thread(s) ({self.source}): {self.intra_op} for torch, {loading}"


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; cgroup quotas are not read)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> tuple[int, str]:
    """(total, where it came from) when --threads is not given."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    local = os.environ.get("LOCAL_WORLD_SIZE", "").strip()  # set by torchrun
    processes = int(local) if local.isdigit() and int(local) > 0 else 1
    return max(1, available_cpus() // processes), "CPUs"


def plan_threads(threads: int | None, max_workers: int) -> ThreadPlan:
    """The split of `threads` (None: default_threads) with at most `max_workers` workers."""
    if threads is not None and threads < 1:
        raise TpvkitError(f"--threads {threads}: give 1 or more (the CPU threads to use)")
    total, source = (threads, "--threads") if threads is not None else default_threads()
    workers = max(0, min(max_workers, total - 1))
    return ThreadPlan(total=total, intra_op=max(1, total - workers), workers=workers, source=source)


def apply_threads(threads: int | None, max_workers: int) -> ThreadPlan:
    """plan_threads, with torch's intra-op pool set to its share; the caller passes
    `plan.workers` on as data.num_workers."""
    import torch

    plan = plan_threads(threads, max_workers)
    torch.set_num_threads(plan.intra_op)
    return plan
