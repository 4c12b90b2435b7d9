"""`tpvkit eval CONFIG CHECKPOINT --infos PATH`."""

from __future__ import annotations

from pathlib import Path

import typer

from tpvkit.cli._common import load_cli_config, user_errors


def eval_(
    config: str = typer.Argument(..., help="YAML file or shipped config name."),
    checkpoint: Path = typer.Argument(..., help="Checkpoint (.pth) to evaluate."),
    infos: Path = typer.Option(..., "--infos", help="Info file of the split to evaluate."),
    split: str = typer.Option(None, "--split", help="Split name (default: the info file's)."),
    out: Path = typer.Option(
        None, "--out", help="Folder for metrics.json (default: beside the checkpoint)."
    ),
    save_predictions: Path = typer.Option(
        None, "--save-predictions", help="Write the official lidarseg submission layout here."
    ),
    set_: list[str] = typer.Option(None, "--set", help="Override: dotted.key=value (repeatable)."),
) -> None:
    """nuScenes LiDAR-segmentation evaluation (devkit-exact mIoU), points and voxels."""
    with user_errors():
        cfg = load_cli_config(config, set_)
        from tpvkit.engine.evaluate import evaluate

        evaluate(
            cfg,
            checkpoint,
            infos,
            split=split,
            out_dir=out,
            save_predictions=save_predictions,
        )
