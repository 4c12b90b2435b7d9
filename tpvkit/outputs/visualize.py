"""`tpvkit visualize`: the pictures of prediction files (tpvkit.outputs.pictures) written to a
folder, optionally a GIF over several samples and a video (tpvkit.outputs.video).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

from tpvkit.errors import TpvkitError
from tpvkit.outputs.degenerate import empty_output_warning, warn
from tpvkit.outputs.export import hidden_class_names, resolve_excluded
from tpvkit.outputs.pictures import (
    VIEWS,
    ViewOptions,
    occupied_box,
    render_bev,
    render_cameras,
    render_legend,
    render_voxels_3d,
    save_png,
    shown_voxels,
)
from tpvkit.outputs.prediction_file import (
    Prediction,
    load_prediction,
    npz_files_in,
    safe_file_stem,
)
from tpvkit.outputs.video import key_frame_images, write_gif, write_video


def _inputs(input: str | Path | Prediction | Sequence[str | Path]) -> list[Prediction | Path]:
    if isinstance(input, Prediction):
        return [input]
    if isinstance(input, (str, Path)):
        path = Path(input)
        if path.is_dir():
            files = npz_files_in(path)
            if not files:
                raise TpvkitError(f"no .npz prediction files in {path}")
            return list(files)
        return [path]
    items = [Path(p) for p in input]
    if not items:
        raise TpvkitError("no prediction files given")
    return items


def visualize_prediction(
    pred: Prediction,
    out_dir: str | Path,
    views: Sequence[str] = VIEWS,
    view: ViewOptions | None = None,
    exclude: Sequence[str] | None = None,
    ground_truth_points: bool = False,
    mirror_back: bool = False,
) -> list[Path]:
    """Write the chosen pictures of one record into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise TpvkitError(f"unknown views {unknown}: choose from {', '.join(VIEWS)}")
    resolve_excluded(pred, exclude)  # a bad class name fails before any picture is drawn
    written: list[Path] = []
    if "cameras" in views:
        if pred.has_cameras:
            image = render_cameras(pred, exclude, ground_truth_points, mirror_back=mirror_back)
            written.append(save_png(image, out_dir / "cameras.png"))
        else:
            warnings.warn(f"{pred.source}: no camera keys, cameras.png skipped", stacklevel=2)
    if "bev" in views:
        written.append(save_png(render_bev(pred, exclude), out_dir / "bev.png"))
    if "voxels_3d" in views:
        if not shown_voxels(pred, exclude)[1].any():
            what = f"{out_dir / 'voxels_3d.png'} (sample {pred.token})"
            warn(empty_output_warning(what, hidden_class_names(pred, exclude)))
        image = render_voxels_3d(pred, view, exclude)
        written.append(save_png(image, out_dir / "voxels_3d.png"))
        if pred.gt_voxels is not None:
            # Same eye as the prediction so the two pictures can be compared by flipping.
            _, occupied = shown_voxels(pred, exclude)
            image = render_voxels_3d(pred, view, exclude, True, occupied_box(pred, occupied))
            written.append(save_png(image, out_dir / "voxels_3d_gt.png"))
    if "legend" in views:
        shown = ~resolve_excluded(pred, exclude)
        image = render_legend(pred.class_names, pred.palette, shown)
        written.append(save_png(image, out_dir / "legend.png"))
    return written


def make_gif(
    preds: Sequence[Prediction],
    out: str | Path,
    view: ViewOptions | None = None,
    exclude: Sequence[str] | None = None,
    frame_ms: int = 500,
) -> Path:
    """An animated GIF over samples: each frame the 3D voxels (titled, with a legend) beside the
    bird's-eye map.

    Frames follow the samples' timestamps when known (else the given order); all frames share
    one eye, fitted to the whole grid, so the motion between frames is the scene's.
    """
    return write_gif(key_frame_images(preds, view, exclude), out, frame_ms)


def visualize(
    input: str | Path | Prediction | Sequence[str | Path],
    out_dir: str | Path,
    views: Sequence[str] = VIEWS,
    view: ViewOptions | None = None,
    exclude: Sequence[str] | None = None,
    ground_truth_points: bool = False,
    mirror_back: bool = False,
    gif: bool = False,
    gif_frame_ms: int = 500,
    video: bool = False,
    video_fps: float | None = None,
    turntable_steps: int = 48,
) -> list[Path]:
    """Pictures of one prediction file (into `out_dir`) or of several (a folder of .npz or a
    list: one sub-folder per sample token), with `gif` an animation.gif over all of them, and
    with `video` a video.mp4 and video.gif (key frames, or a turntable of a single file; see
    tpvkit.outputs.video.write_video). Returns the written paths."""
    items = _inputs(input)
    out_dir = Path(out_dir)
    written: list[Path] = []
    preds: list[Prediction] = []
    for item in items:
        pred = item if isinstance(item, Prediction) else load_prediction(item)
        preds.append(pred)
        target = out_dir if len(items) == 1 else out_dir / safe_file_stem(pred.token)
        written += visualize_prediction(
            pred, target, views, view, exclude, ground_truth_points, mirror_back
        )
    if gif:
        written.append(make_gif(preds, out_dir / "animation.gif", view, exclude, gif_frame_ms))
    if video:
        written += write_video(preds, out_dir, view, exclude, video_fps, turntable_steps)
    return written


__all__ = ["make_gif", "visualize", "visualize_prediction"]
