"""`tpvkit demo`: the whole workflow on the built-in synthetic data set."""

from __future__ import annotations

from pathlib import Path

import typer

from tpvkit.cli._common import user_errors


def demo(
    work_dir: Path = typer.Option(
        Path("work_dirs/demo"), "--work-dir", help="Where everything goes."
    ),
    minutes: float = typer.Option(
        3.5, "--minutes", min=0.05, help="Training budget in minutes (CPU: ~3-4 is enough)."
    ),
    set_: list[str] = typer.Option(
        None, "--set", help="Config override for training, dotted.key=value (repeatable)."
    ),
) -> None:
    """Synthetic data -> info files -> train tpv_tiny on CPU -> eval -> predict, export, render.

    Running it again in the same --work-dir reuses the data and continues training.
    """
    with user_errors():
        from tpvkit.engine.demo import run_demo

        run_demo(work_dir, minutes=minutes, overrides=set_ or [])
