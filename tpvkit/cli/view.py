"""`tpvkit view INPUT... --out scene.html`: the interactive viewer page."""

from __future__ import annotations

from pathlib import Path

import typer

from tpvkit.cli._common import config_file, load_cli_config, overwrite_option, user_errors


def view(
    inputs: list[Path] = typer.Argument(
        ...,
        help="Prediction .npz files (a scene's key frames), or folders of them.",
    ),
    out: Path = typer.Option(..., "--out", help="The HTML file to write (opens offline)."),
    infos: Path = typer.Option(
        None, "--infos", help="Info file giving ground truth to frames whose file has none."
    ),
    config: str = typer.Option(
        None,
        "--config",
        help="Config of the data pipeline for --infos (default: the prediction file's grid; a "
        "config whose grid differs from the file's is refused).",
    ),
    set_: list[str] = typer.Option(
        None, "--set", help="Config override for --infos (repeatable; data.* keys, say)."
    ),
    max_points: int = typer.Option(
        60_000, "--max-points", help="LiDAR points kept per frame (0: none)."
    ),
    cameras: bool = typer.Option(
        True, "--cameras/--no-cameras", help="Embed the six camera images of each frame."
    ),
    image_width: int = typer.Option(352, "--image-width", help="Width of each camera image."),
    jpeg_quality: int = typer.Option(72, "--jpeg-quality", help="JPEG quality of the images."),
    title: str = typer.Option(None, "--title", help="Page title (default: the scene token)."),
    overwrite: bool = overwrite_option(),
) -> None:
    """Write one self-contained HTML file: an interactive 3D viewer of the predictions."""
    with user_errors():
        from tpvkit.outputs.view import ViewerOptions, write_viewer
        from tpvkit.utils.io import check_output_file

        check_output_file(
            out,
            "--out",
            overwrite=overwrite,
            inputs=[
                *(("an input prediction file", path) for path in inputs),
                ("the info file (--infos)", infos),
                ("the config file", config_file(config)),
            ],
        )
        options = ViewerOptions(
            max_points=max_points,
            cameras=cameras,
            image_width=image_width,
            jpeg_quality=jpeg_quality,
            title=title,
        )
        # without --config the grid is the prediction file's and --set applies on top of it
        cfg = load_cli_config(config, set_) if infos is not None and config else None
        overrides = [] if config else list(set_ or [])
        result = write_viewer(inputs, out, options, infos=infos, cfg=cfg, overrides=overrides)
        size_mb = result.size_bytes / 1e6
        gt = ", with ground truth" if result.has_ground_truth else ""
        typer.echo(f"wrote {result.path} ({result.num_frames} frames{gt}, {size_mb:.2f} MB)")
