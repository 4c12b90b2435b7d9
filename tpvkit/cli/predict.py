"""`tpvkit predict [CONFIG] CHECKPOINT --infos PATH --out DIR`."""

from __future__ import annotations

from pathlib import Path

import typer

from tpvkit.cli._common import (
    INTO_FOLDER,
    config_and_checkpoint,
    config_file,
    overwrite_option,
    threads_option,
    use_threads,
    user_errors,
)


def predict(
    first: str = typer.Argument(
        ...,
        metavar="CONFIG_OR_CHECKPOINT",
        help="The checkpoint (.pth) alone: its stored config is used. Or CONFIG (YAML file or "
        "shipped name, checked against the checkpoint), followed by CHECKPOINT.",
    ),
    second: str = typer.Argument(
        None, metavar="CHECKPOINT", show_default=False, help="The checkpoint, after CONFIG."
    ),
    infos: Path = typer.Option(..., "--infos", help="Info file whose samples to predict."),
    out: Path = typer.Option(..., "--out", help="Folder for one .npz per sample."),
    config: str = typer.Option(
        None, "--config", help="CONFIG as an option (instead of the first argument)."
    ),
    tokens: str = typer.Option(
        None, "--tokens", help="Comma-separated sample tokens (default: all)."
    ),
    confidence: bool = typer.Option(
        False, "--confidence", help="Also store the per-voxel softmax probability (float16)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    set_: list[str] = typer.Option(None, "--set", help="Override: dotted.key=value (repeatable)."),
    threads: int = threads_option(),
    overwrite: bool = overwrite_option(INTO_FOLDER),
) -> None:
    """Predict semantic voxels (and point labels) per sample into compressed .npz files.

    tpvkit predict CHECKPOINT --infos PATH --out DIR: the config stored in the checkpoint.

    tpvkit predict CONFIG CHECKPOINT ... (or --config): CONFIG, checked against it.

    Occ3D occupancy models write ego-frame files with the Occ3D ground truth and masks.
    """
    with user_errors():
        from tpvkit.errors import TpvkitError
        from tpvkit.utils.io import check_output_dir

        check_output_dir(
            out,
            "--out",
            overwrite=overwrite,
            inputs=[
                ("the checkpoint", second or first),
                ("the info file (--infos)", infos),
                ("the config file", config_file(config or (first if second else None))),
            ],
        )
        token_list = [t.strip() for t in tokens.split(",") if t.strip()] if tokens else None
        if tokens is not None and not token_list:
            raise TpvkitError("--tokens is empty: give comma-separated sample tokens")
        cfg, checkpoint, overrides = config_and_checkpoint(first, second, config, set_)
        workers = use_threads(threads, set_, cfg)
        if cfg is not None:
            from tpvkit.config import apply_overrides

            cfg = apply_overrides(cfg, workers)
        else:
            overrides += workers
        from tpvkit.engine.predict import predict as run_predict

        paths = run_predict(
            cfg,
            checkpoint,
            infos,
            out,
            tokens=token_list,
            save_confidence=confidence,
            progress=progress,
            overrides=overrides,
        )
        typer.echo(f"wrote {len(paths)} prediction file(s) to {out}")
