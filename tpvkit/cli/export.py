"""`tpvkit export INPUT --out FILE.ply` (or the ground truth: `--infos X --token T`)."""

from __future__ import annotations

from pathlib import Path

import typer

from tpvkit.cli._common import config_file, load_cli_config, overwrite_option, user_errors

# The grid of a dataset sample's ground truth exported without a prediction file to take it from
DEFAULT_GT_CONFIG = "tpv_lidarseg_base"


def export(
    input: Path = typer.Argument(
        None, help="Prediction .npz (from `tpvkit predict`); leave out with --infos/--token."
    ),
    out: Path = typer.Option(..., "--out", help="Output .ply file."),
    mode: str = typer.Option("points", "--mode", help="points: a vertex per voxel; cubes: meshes."),
    ascii: bool = typer.Option(False, "--ascii", help="ASCII PLY instead of binary little-endian."),
    frame: str = typer.Option(
        None,
        "--frame",
        help="lidar | ego (from the file's own frame through lidar2ego). Default: lidar; the "
        "ego frame for an Occ3D labels.npz, which holds no LiDAR calibration.",
    ),
    source: str = typer.Option(
        "voxels",
        "--source",
        help="voxels | points (LiDAR points with labels) | gt_voxels | gt_points.",
    ),
    faces: str = typer.Option("quads", "--faces", help="Cube faces: quads | triangles."),
    exclude: str = typer.Option(
        None,
        "--exclude",
        help="Comma-separated class names to leave out (default: noise,empty; '' keeps all).",
    ),
    infos: Path = typer.Option(
        None,
        "--infos",
        help="Info file of the ground truth: with --token a dataset sample's; with INPUT the "
        "prediction's (where its file holds none), on the file's grid.",
    ),
    token: str = typer.Option(None, "--token", help="Sample token of the ground truth (--infos)."),
    config: str = typer.Option(
        None,
        "--config",
        help="Config fixing the voxel grid of the ground truth of --infos --token (default "
        f"{DEFAULT_GT_CONFIG}); with INPUT the grid is the file's, and a config on another grid "
        "is refused.",
    ),
    set_: list[str] = typer.Option(None, "--set", help="Config override for --infos (repeatable)."),
    overwrite: bool = overwrite_option(),
) -> None:
    """Export voxels (or LiDAR points) to PLY with class colours and ids."""
    with user_errors():
        from tpvkit.errors import TpvkitError
        from tpvkit.utils.io import check_output_file

        check_output_file(  # before anything is read or computed
            out,
            "--out",
            overwrite=overwrite,
            inputs=[
                ("the input prediction file", input),
                ("the info file (--infos)", infos),
                ("the config file", config_file(config)),
            ],
        )
        from tpvkit.outputs.export import export_ground_truth, export_ply

        config_given = config is not None
        excluded = None if exclude is None else [n.strip() for n in exclude.split(",") if n.strip()]
        if input is not None and infos is not None:
            # the prediction's ground truth from the dataset, on the prediction file's grid
            if token is not None:
                raise TpvkitError("--token is for --infos without INPUT: INPUT names its sample")
            from tpvkit.outputs.export import with_dataset_ground_truth
            from tpvkit.outputs.prediction_file import load_prediction

            cfg = load_cli_config(config, set_) if config_given else None
            pred = with_dataset_ground_truth(
                load_prediction(input), infos, cfg, [] if config_given else list(set_ or [])
            )
            result = export_ply(pred, out, mode, ascii, frame, excluded, source, faces)
        elif infos is not None or token is not None:
            if input is not None:
                raise TpvkitError("give either INPUT (a prediction file) or --infos/--token")
            if infos is None or token is None:
                raise TpvkitError("the ground truth needs both --infos PATH and --token TOKEN")
            if source not in ("voxels", "points"):
                raise TpvkitError("with --infos, --source is voxels or points")
            cfg = load_cli_config(config or DEFAULT_GT_CONFIG, set_)
            result = export_ground_truth(
                cfg, infos, token, out, mode, ascii, frame or "lidar", excluded, source, faces
            )
        else:
            if input is None:
                raise TpvkitError("give INPUT (a prediction .npz) or --infos PATH --token TOKEN")
            result = export_ply(input, out, mode, ascii, frame, excluded, source, faces)
        typer.echo(
            f"wrote {result.path} ({result.num_items} {source.split('_')[-1]}, "
            f"{result.num_vertices} vertices, {result.num_faces} faces)"
        )
