"""`tpvkit eval [CONFIG] CHECKPOINT --infos PATH`: devkit-exact lidarseg mIoU, or for Occ3D
occupancy models the Occ3D mIoU and RayIoU, and metrics.json."""

from __future__ import annotations

from pathlib import Path

import typer

from tpvkit.cli._common import (
    config_and_checkpoint,
    overwrite_option,
    threads_option,
    use_threads,
    user_errors,
)


def eval_(
    first: str = typer.Argument(
        ...,
        metavar="CONFIG_OR_CHECKPOINT",
        help="The checkpoint (.pth) alone: its stored config is used. Or CONFIG (YAML file or "
        "shipped name, checked against the checkpoint), followed by CHECKPOINT.",
    ),
    second: str = typer.Argument(
        None, metavar="CHECKPOINT", show_default=False, help="The checkpoint, after CONFIG."
    ),
    infos: Path = typer.Option(..., "--infos", help="Info file of the split to evaluate."),
    config: str = typer.Option(
        None, "--config", help="CONFIG as an option (instead of the first argument)."
    ),
    split: str = typer.Option(
        None,
        "--split",
        help="Split name for metrics.json and the submission folder (default: the info file's).",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        help="Folder for metrics.json (default: beside the checkpoint, as "
        "metrics_<checkpoint>_<info file>.json).",
    ),
    save_predictions: Path = typer.Option(
        None,
        "--save-predictions",
        help="Write the official lidarseg submission layout here "
        "(lidarseg/<split>/<token>_lidarseg.bin + <split>/submission.json); for Occ3D "
        "occupancy models <sample_token>.npz with key 'pred' (uint8 200x200x16).",
    ),
    voxels: bool = typer.Option(
        True, "--voxels/--no-voxels", help="Also score the voxel look-up predictions."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    set_: list[str] = typer.Option(None, "--set", help="Override: dotted.key=value (repeatable)."),
    threads: int = threads_option(),
    overwrite: bool = overwrite_option(
        "Replace an existing metrics file; write into a non-empty --save-predictions folder"
    ),
) -> None:
    """nuScenes LiDAR-segmentation evaluation (devkit-exact mIoU), points and voxels; Occ3D
    occupancy models (model.grid_frame=ego): mIoU inside mask_camera and without it, RayIoU
    at 1, 2, 4 m, and the lidarseg point scores when the data has lidarseg labels.

    tpvkit eval CHECKPOINT --infos PATH: the config stored in the checkpoint.

    tpvkit eval CONFIG CHECKPOINT --infos PATH (or --config): CONFIG, checked against it.

    A public TPVFormer checkpoint stores no config and needs CONFIG.

    A difference in what the weights expect (model.*, image size, mean/std, channel order,
    voxel convention) is refused with the --set that would match.

    Prints the per-class IoU table and writes metrics.json (beside the checkpoint:
    metrics_<checkpoint stem>_<info file stem>.json); an existing one is refused without
    --overwrite.

    On a split without labels (v1.0-test) it only writes the predictions.
    """
    with user_errors():
        cfg, checkpoint, overrides = config_and_checkpoint(first, second, config, set_)
        if not voxels:
            overrides.append("eval.voxel_metrics=false")
        workers = use_threads(threads, set_, cfg)
        if cfg is not None:
            from tpvkit.config import apply_overrides

            cfg = apply_overrides(cfg, workers)
        else:
            overrides += workers
        from tpvkit.engine.evaluate import evaluate

        evaluate(
            cfg,
            checkpoint,
            infos,
            split=split,
            out_dir=out,
            save_predictions=save_predictions,
            progress=progress,
            overrides=overrides,
            overwrite=overwrite,
        )
