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
    confidence: bool = typer.Option(
        False, "--confidence", help="Also store the per-voxel softmax probability (float16)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    set_: list[str] = typer.Option(None, "--set", help="Override: dotted.key=value (repeatable)."),
) -> None:
    """Predict semantic voxels (and point labels) per sample into compressed .npz files."""
    with user_errors():
        cfg = load_cli_config(config, set_)
        from tpvkit.outputs.predict import predict as run_predict

        token_list = [t.strip() for t in tokens.split(",") if t.strip()] if tokens else None
        if tokens is not None and not token_list:
            from tpvkit.errors import TpvkitError

            raise TpvkitError("--tokens is empty: give comma-separated sample tokens")
        paths = run_predict(
            cfg,
            checkpoint,
            infos,
            out,
            tokens=token_list,
            save_confidence=confidence,
            progress=progress,
        )
        typer.echo(f"wrote {len(paths)} prediction file(s) to {out}")
