"""`tpvkit export INPUT --out FILE.ply`."""

from __future__ import annotations

from pathlib import Path

import typer

from tpvkit.cli._common import user_errors


def export(
    input: Path = typer.Argument(..., help="Prediction .npz (from `tpvkit predict`)."),
    out: Path = typer.Option(..., "--out", help="Output .ply file."),
    mode: str = typer.Option("points", "--mode", help="points: a vertex per voxel; cubes: meshes."),
    ascii: bool = typer.Option(False, "--ascii", help="ASCII PLY instead of binary little-endian."),
    frame: str = typer.Option("lidar", "--frame", help="lidar | ego"),
) -> None:
    """Export voxels (or LiDAR points) to PLY with class colours and ids."""
    with user_errors():
        from tpvkit.outputs.export import export_ply

        export_ply(input, out, mode=mode, ascii=ascii, frame=frame)
