"""`tpvkit eval CONFIG CHECKPOINT --infos PATH`: devkit-exact lidarseg mIoU and metrics.json."""

from __future__ import annotations

from pathlib import Path

import typer

from tpvkit.cli._common import load_cli_config, user_errors


def eval_(
    config: str = typer.Argument(..., help="YAML file or shipped config name."),
    checkpoint: Path = typer.Argument(..., help="Checkpoint (.pth) to evaluate."),
    infos: Path = typer.Option(..., "--infos", help="Info file of the split to evaluate."),
    split: str = typer.Option(
        None,
        "--split",
        help="Split name for metrics.json and the submission folder (default: the info file's).",
    ),
    out: Path = typer.Option(
        None, "--out", help="Folder for metrics.json (default: beside the checkpoint)."
    ),
    save_predictions: Path = typer.Option(
        None,
        "--save-predictions",
        help="Write the official lidarseg submission layout here "
        "(lidarseg/<split>/<token>_lidarseg.bin + <split>/submission.json).",
    ),
    voxels: bool = typer.Option(
        True, "--voxels/--no-voxels", help="Also score the voxel look-up predictions."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    set_: list[str] = typer.Option(None, "--set", help="Override: dotted.key=value (repeatable)."),
) -> None:
    """nuScenes LiDAR-segmentation evaluation (devkit-exact mIoU), points and voxels.

    Prints the per-class IoU table and writes metrics.json.

    On a split without labels (v1.0-test) it only writes the predictions.
    """
    with user_errors():
        overrides = list(set_ or [])
        if not voxels:
            overrides.append("eval.voxel_metrics=false")
        cfg = load_cli_config(config, overrides)
        from tpvkit.engine.evaluate import evaluate

        evaluate(
            cfg,
            checkpoint,
            infos,
            split=split,
            out_dir=out,
            save_predictions=save_predictions,
            progress=progress,
        )
