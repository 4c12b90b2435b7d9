"""`tpvkit demo`: the whole workflow on the built-in synthetic data set."""

from __future__ import annotations

from pathlib import Path

import typer

from tpvkit.cli._common import user_errors


def demo(
    work_dir: Path = typer.Option(
        Path("work_dirs/demo"), "--work-dir", help="Where everything goes."
    ),
) -> None:
    """Synthetic data -> info files -> train tpv_tiny on CPU -> eval -> predict, export, render."""
    with user_errors():
        from tpvkit.engine.demo import run_demo

        run_demo(work_dir)
