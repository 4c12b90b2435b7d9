"""`tpvkit visualize INPUT --out DIR`."""

from __future__ import annotations

from pathlib import Path

import typer

from tpvkit.cli._common import INTO_FOLDER, overwrite_option, user_errors


def visualize(
    input: Path = typer.Argument(
        ..., help="Prediction .npz (from `tpvkit predict`), or a folder of them."
    ),
    out: Path = typer.Option(..., "--out", help="Folder for the PNG pictures."),
    views: str = typer.Option(
        "cameras,bev,voxels_3d,legend", "--views", help="Comma-separated pictures to draw."
    ),
    azimuth: float = typer.Option(
        -90.0, "--azimuth", help="3D eye azimuth, degrees from LiDAR +x (-90: behind the car)."
    ),
    elevation: float = typer.Option(40.0, "--elevation", help="3D eye elevation, degrees."),
    distance: float = typer.Option(
        None, "--distance", help="3D eye distance in metres (default: fit the voxels)."
    ),
    width: int = typer.Option(1024, "--width", help="3D picture width (pixels)."),
    height: int = typer.Option(768, "--height", help="3D picture height (pixels)."),
    fov: float = typer.Option(40.0, "--fov", help="3D vertical field of view (degrees)."),
    supersample: int = typer.Option(2, "--supersample", help="3D anti-aliasing factor (1: off)."),
    edges: bool = typer.Option(True, "--edges/--no-edges", help="Dark voxel borders in 3D."),
    exclude: str = typer.Option(
        None, "--exclude", help="Comma-separated class names to hide (default: noise,empty)."
    ),
    gt_points: bool = typer.Option(
        False, "--gt-points", help="Project ground-truth point labels onto the cameras."
    ),
    mirror_back: bool = typer.Option(
        False, "--mirror-back", help="Flip the back cameras horizontally (rear-view mirror)."
    ),
    gif: bool = typer.Option(False, "--gif", help="Also write animation.gif over all inputs."),
    frame_ms: int = typer.Option(500, "--frame-ms", help="GIF frame duration (ms)."),
    video: bool = typer.Option(
        False,
        "--video",
        help="Also write video.mp4 and video.gif: the key frames, or a turntable of one file.",
    ),
    video_fps: float = typer.Option(
        None, "--video-fps", help="Video frame rate (default: 2 for key frames, 12 turntable)."
    ),
    turntable_frames: int = typer.Option(
        48, "--turntable-frames", help="Frames of a one-file turntable video (a full turn)."
    ),
    device: str = typer.Option("cpu", "--device", help="Renderer device: cpu | cuda."),
    overwrite: bool = overwrite_option(INTO_FOLDER),
) -> None:
    """Render pictures without a display: cameras, bird's-eye map, 3D voxels, legend."""
    with user_errors():
        from tpvkit.utils.io import check_output_dir

        check_output_dir(  # before anything is read or rendered
            out, "--out", overwrite=overwrite, inputs=[("the input", input)]
        )
        from tpvkit.outputs.pictures import ViewOptions
        from tpvkit.outputs.visualize import visualize as run_visualize

        view = ViewOptions(
            azimuth=azimuth,
            elevation=elevation,
            distance=distance,
            width=width,
            height=height,
            fov=fov,
            supersample=supersample,
            edges=edges,
            device=device,
        )
        excluded = None if exclude is None else [n.strip() for n in exclude.split(",") if n.strip()]
        paths = run_visualize(
            input,
            out,
            views=[v.strip() for v in views.split(",") if v.strip()],
            view=view,
            exclude=excluded,
            ground_truth_points=gt_points,
            mirror_back=mirror_back,
            gif=gif,
            gif_frame_ms=frame_ms,
            video=video,
            video_fps=video_fps,
            turntable_steps=turntable_frames,
        )
        for path in paths:
            typer.echo(f"wrote {path}")
