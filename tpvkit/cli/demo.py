"""`tpvkit demo`: the whole workflow on the built-in synthetic data set."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from tpvkit.cli._common import overwrite_option, user_errors


def demo(
    work_dir: Path = typer.Option(
        Path("work_dirs/demo"), "--work-dir", help="Where everything goes."
    ),
    task: str = typer.Option(
        "all",
        "--task",
        help="Which demo models: lidarseg (tpv_tiny), occupancy (tpv_occ3d_tiny) or all.",
    ),
    iters: int = typer.Option(
        None,
        "--iters",
        min=1,
        help="Training iterations of each model (default: 576 for lidarseg, 600 for "
        "occupancy; about 3 and 4-5 min on the 2-core development machine, more on slower "
        "CPUs and under load).",
    ),
    minutes: float = typer.Option(
        None, "--minutes", hidden=True, help="Deprecated and ignored: use --iters."
    ),
    set_: list[str] = typer.Option(
        None, "--set", help="Config override for training, dotted.key=value (repeatable)."
    ),
    overwrite: bool = overwrite_option("Write into a --work-dir that holds other files"),
) -> None:
    """Synthetic data -> info files -> train tpv_tiny (LiDAR segmentation) and tpv_occ3d_tiny
    (dense occupancy) on CPU -> eval -> predict, export, render, viewer page.

    The schedule is a fixed number of iterations, so two runs on one machine print the same
    metrics. Running it again in the same --work-dir reuses the data and the trained model
    and rewrites the evaluation, predictions, exports, pictures and viewer; a --work-dir holding
    other files is refused without --overwrite.
    """
    # OpenMP worker threads spin while they wait for work; on a shared machine the spinning
    # threads of several processes starve each other (a training step of the demo measured
    # 14 s instead of 1.2 s at load 9 on 2 cores). Read when torch loads, hence before it.
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with user_errors():
        from tpvkit.engine.demo import DEMO_MODELS, check_work_dir, run_demo

        if task not in (*DEMO_MODELS, "all"):
            from tpvkit.errors import TpvkitError

            raise TpvkitError(f"--task {task}: give {', '.join(DEMO_MODELS)} or all")
        tasks = tuple(DEMO_MODELS) if task == "all" else (task,)

        check_work_dir(work_dir, overwrite)

        if minutes is not None:
            typer.secho(
                "warning: --minutes is deprecated and ignored: the demo trains a fixed schedule "
                "(--iters) so that its result does not depend on machine load",
                fg=typer.colors.YELLOW,
                err=True,
            )
        run_demo(work_dir, tasks=tasks, iters=iters, overrides=set_ or [])
