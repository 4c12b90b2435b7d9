"""`tpvkit prepare`: write the synthetic dataroot, or build info files from a nuScenes dataroot."""

from __future__ import annotations

from pathlib import Path

import typer

from tpvkit.cli._common import user_errors

app = typer.Typer(
    help="Prepare data: a synthetic nuScenes-format set, or info files from nuScenes.",
    no_args_is_help=True,
)


@app.command("synthetic")
def synthetic(
    out: Path = typer.Option(..., "--out", help="Folder for the dataroot (created)."),
    scenes: int = typer.Option(
        10, "--scenes", help="Scenes, 1-10 (real v1.0-mini names; >= 3 holds all of mini_val)."
    ),
    samples_per_scene: int = typer.Option(4, "--samples-per-scene", help="Key frames per scene."),
    seed: int = typer.Option(
        0, "--seed", help="Random seed; the output is deterministic per seed."
    ),
    image_width: int = typer.Option(200, "--image-width", help="Camera image width (px)."),
    image_height: int = typer.Option(112, "--image-height", help="Camera image height (px)."),
    beams: int = typer.Option(32, "--beams", help="LiDAR beams (the real sensor has 32)."),
    points_per_beam: int = typer.Option(
        200, "--points-per-beam", help="LiDAR azimuth steps per revolution (rays per beam)."
    ),
    movers: float = typer.Option(
        0.0,
        "--movers",
        help="Share (0-1) of the vehicles, two-wheelers and pedestrians that may move "
        "(0: a static world, the default).",
    ),
    sweeps: int = typer.Option(
        0,
        "--sweeps",
        help="Non-key LiDAR sweeps between key frames in sweeps/LIDAR_TOP (real nuScenes: 9; "
        "0: key frames only, the default).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a non-empty --out (only once the new one is complete)."
    ),
    workers: int = typer.Option(0, "--workers", help="Processes (0: up to 2); same bytes."),
) -> None:
    """Generate a learnable synthetic street world in the nuScenes layout, plus its info files."""
    with user_errors():
        from tpvkit.data.synthetic import generate_synthetic

        generate_synthetic(
            out,
            scenes=scenes,
            samples_per_scene=samples_per_scene,
            seed=seed,
            image_size=(image_width, image_height),
            num_beams=beams,
            points_per_beam=points_per_beam,
            movers=movers,
            sweeps=sweeps,
            overwrite=overwrite,
            workers=workers or None,
        )


@app.command("nuscenes")
def nuscenes(
    dataroot: Path = typer.Option(..., "--dataroot", help="nuScenes dataroot."),
    version: str = typer.Option(..., "--version", help="v1.0-mini | v1.0-trainval | v1.0-test"),
    out: Path = typer.Option(..., "--out", help="Folder for the info files (one per split)."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Write into a non-empty --out, replacing its info files (other files are kept).",
    ),
    occ3d: Path | None = typer.Option(
        None,
        "--occ3d",
        help="Occ3D-nuScenes 'gts' folder (<scene>/<token>/labels.npz): link and validate "
        "every sample's dense occupancy labels.",
    ),
) -> None:
    """Build tpvkit info files (JSON) for every split of a nuScenes version with the devkit.

    The files are written only once every split is built, all together.
    """
    with user_errors():
        from tpvkit.data.infos import prepare_nuscenes_infos

        prepare_nuscenes_infos(dataroot, version, out, overwrite=overwrite, occ3d=occ3d)
