"""`tpvkit predict CONFIG CHECKPOINT --infos PATH --out DIR`."""

from __future__ import annotations

from pathlib import Path

import typer

from tpvkit.cli._common import load_cli_config, user_errors


def predict(
    config: str = typer.Argument(..., help="YAML file or shipped config name."),
    checkpoint: Path = typer.Argument(..., help="Checkpoint (.pth)."),
    infos: Path = typer.Option(..., "--infos", help="Info file whose samples to predict."),
    out: Path = typer.Option(..., "--out", help="Folder for one .npz per sample."),
    tokens: str = typer.Option(
        None, "--tokens", help="Comma-separated sample tokens (default: all)."
    ),
    set_: list[str] = typer.Option(None, "--set", help="Override: dotted.key=value (repeatable)."),
) -> None:
    """Predict semantic voxels (and point labels) per sample into compressed .npz files."""
    with user_errors():
        cfg = load_cli_config(config, set_)
        from tpvkit.outputs.predict import predict as run_predict

        token_list = [t for t in tokens.split(",") if t] if tokens else None
        run_predict(cfg, checkpoint, infos, out, tokens=token_list)
