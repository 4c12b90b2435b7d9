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
        10,
        "--scenes",
        help="Scenes: 1-10 for v1.0-mini (>= 3 holds all of mini_val); up to 850 for "
        "v1.0-trainval.",
    ),
    version: str = typer.Option(
        "v1.0-mini",
        "--version",
        help="v1.0-mini (real mini scene names and splits) or v1.0-trainval (more scenes: "
        "train and val names of the devkit's splits).",
    ),
    val_scenes: int = typer.Option(
        0,
        "--val-scenes",
        help="v1.0-trainval: how many of --scenes are val streets (0: scenes // 8, at least "
        "1); the same value with more --scenes only adds training streets.",
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
            version=version,
            val_scenes=val_scenes,
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


@app.command("occupancy")
def occupancy(
    dataroot: Path = typer.Option(..., "--dataroot", help="nuScenes-format dataroot."),
    version: str = typer.Option(..., "--version", help="v1.0-mini | v1.0-trainval | ..."),
    out: Path = typer.Option(..., "--out", help="GTDIR: <scene>/<sample_token>/labels.npz."),
    split: str | None = typer.Option(
        None, "--split", help="Only the scenes of this devkit split (mini_val, train, ...)."
    ),
    sweeps: int = typer.Option(
        10, "--sweeps", help="Non-key LiDAR sweeps per key frame (nearest in time)."
    ),
    keyframes: int = typer.Option(
        2, "--keyframes", help="Neighbouring key frames accumulated on each side."
    ),
    point_range: tuple[float, float, float, float, float, float] = typer.Option(
        (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4),
        "--range",
        help="Grid x0 y0 z0 x1 y1 z1 in the key frame's ego frame, metres (Occ3D's default).",
    ),
    voxel_size: float = typer.Option(0.4, "--voxel-size", help="Voxel edge, metres."),
    box_frame: bool = typer.Option(
        True, "--box-frame/--no-box-frame", help="Move points inside boxes with their box."
    ),
    densify: bool = typer.Option(
        True,
        "--densify/--no-densify",
        help="The densification steps on by default (isolated-voxel removal, ground fill, "
        "hole closing).",
    ),
    fill_boxes: bool = typer.Option(
        False, "--fill-boxes", help="Also close solid vehicles inside their boxes (off: no gain)."
    ),
    workers: int = typer.Option(1, "--workers", help="Processes, one scene each."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Rewrite frames already in --out (default: skip them)."
    ),
) -> None:
    """Generate Occ3D-format dense occupancy labels from LiDAR (docs/occupancy.md)."""
    with user_errors():
        from tpvkit.data.occ_gt import OccGTOptions, generate_occupancy

        opts = OccGTOptions(
            point_cloud_range=tuple(float(v) for v in point_range),  # type: ignore[arg-type]
            voxel_size=voxel_size,
            sweeps=sweeps,
            keyframes=keyframes,
            box_frame=box_frame,
            remove_isolated=densify,
            fill_boxes=fill_boxes,
            fill_ground=densify,
            close_holes=densify,
        )
        result = generate_occupancy(
            dataroot, version, out, split=split, options=opts, workers=workers, overwrite=overwrite
        )
        print(
            f"wrote {result['written']} labels.npz to {out} ({result['skipped']} already there, "
            f"{result['frames']} key frames, {result['seconds']:.1f} s)"
        )
