"""`tpvkit train CONFIG --work-dir W`."""

from __future__ import annotations

from pathlib import Path

import typer

from tpvkit.cli._common import load_cli_config, user_errors


def train(
    config: str = typer.Argument(..., help="YAML file or shipped config name (e.g. tpv_tiny)."),
    work_dir: Path = typer.Option(..., "--work-dir", help="Checkpoints, logs and TensorBoard."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
    set_: list[str] = typer.Option(None, "--set", help="Override: dotted.key=value (repeatable)."),
) -> None:
    """Train a model (CPU, one GPU, or many through torchrun).

    Multi-GPU: torchrun --nproc_per_node N -m tpvkit train CONFIG --work-dir DIR

    The work dir gets checkpoints, train.log, metrics.jsonl and tb/ (docs/training.md).
    """
    with user_errors():
        cfg = load_cli_config(config, set_)
        from tpvkit.engine.train import train as run_train

        final = run_train(cfg, work_dir, resume=resume)
        typer.echo(f"final checkpoint: {final}")
