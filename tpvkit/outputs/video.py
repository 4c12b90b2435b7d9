"""Videos of predictions without a display: an MP4 (and GIF) over a scene's key frames, or a
turntable around one frame, from the software renderer; encoded with the ffmpeg binary that
the imageio-ffmpeg wheel ships (no system ffmpeg)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from tpvkit.errors import TpvkitError
from tpvkit.outputs.pictures import ViewOptions, render_bev, render_voxels_3d
from tpvkit.outputs.prediction_file import Prediction
from tpvkit.outputs.render import fit_distance
from tpvkit.utils.io import atomic_path

MACRO_BLOCK = 16  # H.264 frames padded to multiples of this (what players expect)


def grid_box(pred: Prediction) -> tuple[np.ndarray, np.ndarray]:
    """The metric box of the whole grid (min, max)."""
    lo = np.asarray(pred.point_cloud_range[:3], np.float64)
    return lo, lo + pred.voxel_size * np.array(pred.grid_shape)


def scene_frame(
    pred: Prediction,
    view: ViewOptions | None = None,
    exclude: Sequence[str] | None = None,
    fit_box: tuple[np.ndarray, np.ndarray] | None = None,
    azimuth: float | None = None,
    distance: float | None = None,
) -> Image.Image:
    """One video frame: the 3D picture (titled, with a legend, when big enough) beside the
    bird's-eye map."""
    view = view or ViewOptions()
    if azimuth is not None or distance is not None:
        view = replace(
            view,
            azimuth=view.azimuth if azimuth is None else azimuth,
            distance=view.distance if distance is None else distance,
        )
    voxels = render_voxels_3d(pred, view, exclude, fit_box=fit_box)
    bev = render_bev(pred, exclude, legend=False)
    bev = bev.resize(
        (max(1, round(bev.width * voxels.height / bev.height)), voxels.height), Image.BILINEAR
    )
    out = Image.new("RGB", (voxels.width + 8 + bev.width, voxels.height), (255, 255, 255))
    out.paste(voxels, (0, 0))
    out.paste(bev, (voxels.width + 8, 0))
    return out


def key_frame_images(
    preds: Sequence[Prediction],
    view: ViewOptions | None = None,
    exclude: Sequence[str] | None = None,
) -> list[Image.Image]:
    """One frame per key frame (timestamp order when known); one eye fitted to the whole grid,
    so the motion between frames is the scene's, not the camera's."""
    if not preds:
        raise TpvkitError("a video needs at least one prediction file")
    if all(p.timestamp >= 0 for p in preds):
        preds = sorted(preds, key=lambda p: p.timestamp)
    return [scene_frame(p, view, exclude, fit_box=grid_box(p)) for p in preds]


def turntable_images(
    pred: Prediction,
    view: ViewOptions | None = None,
    exclude: Sequence[str] | None = None,
    steps: int = 48,
) -> list[Image.Image]:
    """`steps` frames of one prediction seen from azimuths around a full turn.

    The eye keeps one distance (the largest any azimuth needs to fit the grid) and looks at the
    grid's centre, so the scene turns without the camera breathing in and out.
    """
    if steps < 2:
        raise TpvkitError(f"a turntable needs at least 2 frames, got {steps}")
    view = view or ViewOptions()
    box = grid_box(pred)
    azimuths = view.azimuth + np.arange(steps) * 360.0 / steps
    distance = view.distance or max(
        fit_distance(box[0], box[1], float(a), view.elevation, view.width, view.height, view.fov)
        for a in azimuths
    )
    return [
        scene_frame(pred, view, exclude, fit_box=box, azimuth=float(a), distance=distance)
        for a in azimuths
    ]


def _pad(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """The frame on a white (W, H) canvas: (H, W, 3) uint8, contiguous for the encoder."""
    out = Image.new("RGB", size, (255, 255, 255))
    out.paste(image.convert("RGB"), (0, 0))
    return np.ascontiguousarray(np.asarray(out))


def write_mp4(frames: Sequence[Image.Image], out: str | Path, fps: float = 2.0) -> Path:
    """H.264 MP4 (yuv420p, plays everywhere) of the frames, written atomically. Frames of
    different sizes are padded to the largest."""
    import imageio_ffmpeg

    if not frames:
        raise TpvkitError("a video needs at least one frame")
    if fps <= 0:
        raise TpvkitError(f"--video-fps must be positive, got {fps}")
    width = max(f.width for f in frames)
    height = max(f.height for f in frames)
    size = (-(-width // MACRO_BLOCK) * MACRO_BLOCK, -(-height // MACRO_BLOCK) * MACRO_BLOCK)
    out = Path(out)
    with atomic_path(out) as tmp:
        # The temporary name ends in .tmp, so the container is named explicitly.
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            size,
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            quality=8,
            macro_block_size=MACRO_BLOCK,
            output_params=["-f", "mp4", "-movflags", "+faststart"],
            ffmpeg_log_level="error",
        )
        writer.send(None)  # start ffmpeg
        try:
            for frame in frames:
                writer.send(_pad(frame, size).tobytes())
        finally:
            writer.close()
    return out


def write_gif(frames: Sequence[Image.Image], out: str | Path, frame_ms: int = 500) -> Path:
    """Animated GIF of the frames (adaptive 256-colour palette per frame), written atomically."""
    if not frames:
        raise TpvkitError("a GIF needs at least one frame")
    palette = [f.convert("P", palette=Image.ADAPTIVE, colors=256) for f in frames]
    out = Path(out)
    with atomic_path(out) as tmp:
        palette[0].save(
            tmp, format="GIF", save_all=True, append_images=palette[1:], duration=frame_ms, loop=0
        )
    return out


def write_video(
    preds: Sequence[Prediction],
    out_dir: str | Path,
    view: ViewOptions | None = None,
    exclude: Sequence[str] | None = None,
    fps: float | None = None,
    turntable_steps: int = 48,
    gif: bool = True,
) -> list[Path]:
    """video.mp4 (and video.gif) in `out_dir`: the key frames of a scene when there are several
    predictions, a turntable around the one frame otherwise. Returns the written paths."""
    if not preds:
        raise TpvkitError("a video needs at least one prediction file")
    if len(preds) > 1:
        frames = key_frame_images(preds, view, exclude)
        fps = 2.0 if fps is None else fps  # nuScenes key frames are 0.5 s apart
    else:
        frames = turntable_images(preds[0], view, exclude, turntable_steps)
        fps = 12.0 if fps is None else fps
    out_dir = Path(out_dir)
    written = [write_mp4(frames, out_dir / "video.mp4", fps)]
    if gif:
        written.append(write_gif(frames, out_dir / "video.gif", round(1000 / fps)))
    return written
