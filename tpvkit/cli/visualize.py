"""`tpvkit visualize INPUT --out DIR`."""

from __future__ import annotations

from pathlib import Path

import typer

from tpvkit.cli._common import user_errors


def visualize(
    input: Path = typer.Argument(..., help="Prediction .npz (from `tpvkit predict`)."),
    out: Path = typer.Option(..., "--out", help="Folder for the PNG pictures."),
) -> None:
    """Render pictures without a display: cameras, bird's-eye map, 3D voxels, legend."""
    with user_errors():
        from tpvkit.outputs.visualize import visualize as run_visualize

        run_visualize(input, out)
