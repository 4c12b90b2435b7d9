"""Headless pictures of a prediction record: cameras with projected labels, a bird's-eye map, a
3D voxel rendering, a legend. Pillow + numpy/torch only; `tpvkit visualize`
(tpvkit.outputs.visualize) writes them, tpvkit.outputs.video animates them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from tpvkit.data.geometry import project_points
from tpvkit.errors import TpvkitError
from tpvkit.outputs.export import gt_occupied, resolve_excluded
from tpvkit.outputs.prediction_file import (
    Prediction,
    is_labels_record,
    voxel_centers,
)
from tpvkit.outputs.render import frame_box, look_at_camera, render_voxels
from tpvkit.utils.io import atomic_path

# Rig layout of cameras.png: each tile sits on the side of the car it looks at.
CAMERA_GRID: tuple[tuple[str, ...], ...] = (
    ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
    ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"),
)
VIEWS: tuple[str, ...] = ("cameras", "bev", "voxels_3d", "legend")
BACKGROUND = (255, 255, 255)
FREE_BEV = (24, 24, 28)  # empty columns: dark, since "manmade" is nearly white
# Outside mask_camera (voxels no camera saw; Occ3D's mIoU ignores them): colours blended this
# far towards the background, in the bird's-eye maps and the 3D ground truth.
UNSEEN_FADE = 0.65
TEXT = (20, 20, 20)
MIN_DEPTH = 0.1  # metres: points nearer to (or behind) a camera are not drawn on its image
BEV_TARGET_PX = 640  # default bird's-eye maps are about this many pixels on their long side
# 3D pictures get a title strip and a legend column when they are at least this big.
ANNOTATE_MIN_SIZE = (400, 300)


@dataclass
class ViewOptions:
    """How the 3D picture is taken: the eye around the shown voxels, the picture size."""

    azimuth: float = -90.0  # degrees about +z from +x; -90 = behind the car in the LiDAR frame
    elevation: float = 40.0  # degrees above the ground plane
    distance: float | None = None  # metres from the centre; None fits the shown voxels
    width: int = 1024
    height: int = 768
    fov: float = 40.0  # vertical field of view, degrees
    supersample: int = 2  # anti-aliasing factor (k^2 the rendering cost)
    edges: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise TpvkitError(f"picture size must be positive, got {self.width}x{self.height}")
        if self.supersample < 1 or self.supersample > 8:
            raise TpvkitError(f"supersample must be 1..8, got {self.supersample}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise TpvkitError("--device cuda but no CUDA GPU is visible; use --device cpu")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def save_png(image: Image.Image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def _titled(image: Image.Image, title: str, size: int = 18) -> Image.Image:
    """The picture with a title strip above it."""
    strip = size + 12
    out = Image.new("RGB", (image.width, image.height + strip), BACKGROUND)
    out.paste(image, (0, strip))
    ImageDraw.Draw(out).text((8, 5), title, fill=TEXT, font=_font(size))
    return out


def _side_by_side(images: Sequence[Image.Image], gap: int = 12) -> Image.Image:
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    height = max(im.height for im in images)
    out = Image.new("RGB", (width, height), BACKGROUND)
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width + gap
    return out


# ---------------------------------------------------------------------------------------------
# Bird's-eye view


def top_labels(labels: np.ndarray, occupied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The label and height index of the top-most occupied voxel of every (x, y) column.

    labels, occupied: (X, Y, Z). Returns label (X, Y) int64 and top z (X, Y) int64, -1 where the
    column is empty.
    """
    z = np.arange(labels.shape[2])
    top = np.where(occupied, z, -1).max(axis=2)  # (X, Y)
    label = np.take_along_axis(labels, np.clip(top, 0, None)[..., None], axis=2)[..., 0]
    return label.astype(np.int64), top


def bev_image(
    labels: np.ndarray,
    occupied: np.ndarray,
    palette: np.ndarray,
    shown: np.ndarray,
    scale: int = 3,
    height_shading: bool = True,
) -> np.ndarray:
    """Bird's-eye map (Y*scale, X*scale, 3) uint8: LiDAR +x to the right, +y (forward) up.

    `shown` (C,) bool selects the classes drawn; a column's colour is its top-most shown voxel,
    darkened a little the lower it lies (so heights read), free columns dark.
    """
    visible = occupied & shown[labels.astype(np.int64)]
    label, top = top_labels(labels, visible)
    rgb = np.asarray(palette, np.float64)[label]  # (X, Y, 3)
    if height_shading and labels.shape[2] > 1:
        rgb = rgb * (0.7 + 0.3 * np.clip(top, 0, None) / (labels.shape[2] - 1))[..., None]
    rgb[top < 0] = FREE_BEV
    image = np.transpose(rgb, (1, 0, 2))[::-1]  # rows: y from high to low; columns: x
    image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    return np.ascontiguousarray(image.round().clip(0, 255).astype(np.uint8))


def fade_unseen(
    image: np.ndarray, labels: np.ndarray, visible: np.ndarray, mask: np.ndarray, scale: int
) -> np.ndarray:
    """Fade the bird's-eye columns whose top-most visible voxel lies outside `mask` (X, Y, Z)
    towards FREE_BEV, so the camera-visible region of the map stands out."""
    _, top = top_labels(labels, visible)
    seen = np.take_along_axis(mask, np.clip(top, 0, None)[..., None], axis=2)[..., 0]
    unseen = (top >= 0) & ~seen  # (X, Y)
    rows = np.transpose(unseen)[::-1]
    rows = np.repeat(np.repeat(rows, scale, axis=0), scale, axis=1)
    out = image.astype(np.float64)
    out[rows] = (1 - UNSEEN_FADE) * out[rows] + UNSEEN_FADE * np.asarray(FREE_BEV, np.float64)
    return out.round().astype(np.uint8)


def bev_points_image(
    points: np.ndarray,
    labels: np.ndarray,
    palette: np.ndarray,
    shown: np.ndarray,
    point_cloud_range: np.ndarray,
    voxel_size: np.ndarray,
    grid_shape: Sequence[int],
    scale: int = 3,
) -> np.ndarray:
    """Bird's-eye map of labelled points on the voxel grid's raster (highest point wins)."""
    x_cells, y_cells = int(grid_shape[0]), int(grid_shape[1])
    width, height = x_cells * scale, y_cells * scale
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = FREE_BEV
    keep = shown[labels.astype(np.int64)]
    pts, lab = points[keep], labels[keep].astype(np.int64)
    pc_min = np.asarray(point_cloud_range, np.float64)[:3]
    col = np.floor((pts[:, 0] - pc_min[0]) / voxel_size[0] * scale).astype(np.int64)
    row = height - 1 - np.floor((pts[:, 1] - pc_min[1]) / voxel_size[1] * scale).astype(np.int64)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    order = np.argsort(pts[inside, 2], kind="stable")  # low first, so the highest is drawn last
    image[row[inside][order], col[inside][order]] = np.asarray(palette, np.uint8)[
        lab[inside][order]
    ]
    return image


def _draw_ego(image: Image.Image, pred: Prediction, scale: int) -> None:
    """A small white arrow at the LiDAR origin pointing along +y (the car's forward)."""
    pc_min = pred.point_cloud_range[:3]
    cx = (0.0 - pc_min[0]) / pred.voxel_size[0] * scale
    cy = image.height - (0.0 - pc_min[1]) / pred.voxel_size[1] * scale
    s = max(4.0, 1.2 * scale)
    ImageDraw.Draw(image).polygon(
        [(cx, cy - 2 * s), (cx - s, cy + s), (cx + s, cy + s)],
        fill=(255, 255, 255),
        outline=(0, 0, 0),
    )


def bev_scale(grid_shape: Sequence[int], target_px: int = BEV_TARGET_PX) -> int:
    """Pixels per voxel column so that the map's long side is about `target_px` (at least 2)."""
    return max(2, round(target_px / max(int(grid_shape[0]), int(grid_shape[1]))))


def render_bev(
    pred: Prediction,
    exclude: Sequence[str] | None = None,
    scale: int | None = None,
    legend: bool = True,
) -> Image.Image:
    """bev.png: the prediction's bird's-eye map, beside the ground truth when the file has it,
    with a legend of the classes drawn. `scale` (pixels per voxel column) defaults to a map of
    about BEV_TARGET_PX pixels.

    Voxels give the map unless every voxel counts as occupied (occupancy rule "all", nothing to
    see from above); then the labelled points are drawn instead.
    """
    scale = bev_scale(pred.grid_shape) if scale is None else int(scale)
    shown = ~resolve_excluded(pred, exclude)
    panels = []
    use_points = pred.occupancy_rule == "all" and pred.point_labels is not None
    if use_points:
        pred_rgb = bev_points_image(
            pred.points,
            pred.point_labels,
            pred.palette,
            shown,
            pred.point_cloud_range,
            pred.voxel_size,
            pred.grid_shape,
            scale,
        )
    else:
        pred_rgb = bev_image(pred.voxels, pred.occupied, pred.palette, shown, scale)
    mask = pred.gt_mask_camera
    labels_file = is_labels_record(pred)  # an Occ3D labels.npz: one panel, "labels"
    title = "prediction (points)" if use_points else "labels" if labels_file else "prediction"
    if mask is not None and not use_points:
        visible = pred.occupied & shown[pred.voxels.astype(np.int64)]
        pred_rgb = fade_unseen(pred_rgb, pred.voxels, visible, mask, scale)
        title += " (faded: outside mask_camera)"
    panels.append((title, pred_rgb))
    if pred.gt_voxels is not None and not labels_file:
        gt_occ = gt_occupied(pred)
        gt_rgb = bev_image(pred.gt_voxels, gt_occ, pred.palette, shown, scale)
        title = "ground truth"
        if mask is not None:
            visible = gt_occ & shown[pred.gt_voxels.astype(np.int64)]
            gt_rgb = fade_unseen(gt_rgb, pred.gt_voxels, visible, mask, scale)
            title += " (faded: outside mask_camera)"
        panels.append((title, gt_rgb))
    elif pred.gt_point_labels is not None:
        gt_rgb = bev_points_image(
            pred.points,
            pred.gt_point_labels,
            pred.palette,
            shown,
            pred.point_cloud_range,
            pred.voxel_size,
            pred.grid_shape,
            scale,
        )
        panels.append(("ground truth (points)", gt_rgb))
    images = []
    for title, rgb in panels:
        im = Image.fromarray(rgb)
        _draw_ego(im, pred, scale)
        images.append(_titled(im, title))
    if legend:
        present = np.zeros(pred.num_classes, bool)
        present[np.unique(pred.voxels[pred.occupied])] = True
        if pred.gt_voxels is not None:
            present[np.unique(pred.gt_voxels[gt_occupied(pred)])] = True
        images.append(render_legend(pred.class_names, pred.palette, shown & present))
    return _side_by_side(images)


# ---------------------------------------------------------------------------------------------
# 3D voxels


def shown_voxels(
    pred: Prediction, exclude: Sequence[str] | None = None, ground_truth: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """labels (X, Y, Z) and the occupied voxels of shown classes (X, Y, Z) bool."""
    if ground_truth:
        labels, occupied = pred.gt_voxels, gt_occupied(pred)  # raises without gt_voxels
    else:
        labels, occupied = pred.voxels, pred.occupied
    shown = ~resolve_excluded(pred, exclude)
    return labels, occupied & shown[labels.astype(np.int64)]


def render_voxels_3d(
    pred: Prediction,
    view: ViewOptions | None = None,
    exclude: Sequence[str] | None = None,
    ground_truth: bool = False,
    fit_box: tuple[np.ndarray, np.ndarray] | None = None,
    annotate: bool | None = None,
    title: str | None = None,
) -> Image.Image:
    """voxels_3d.png: a perspective rendering of the shown voxels from `view`.

    The eye looks from the view's direction at `fit_box` (default: the bounding box of the shown
    voxels, or the whole grid when none is shown); distance None frames that box, centred, in the
    picture. `annotate` (default: pictures of at least ANNOTATE_MIN_SIZE) adds a title strip and
    a legend of the drawn classes with their voxel counts; the picture keeps the view's size.
    """
    view = view or ViewOptions()
    labels, occupied = shown_voxels(pred, exclude, ground_truth)
    if fit_box is None:
        fit_box = occupied_box(pred, occupied)
    palette = np.asarray(pred.palette, np.uint8)
    draw_labels = labels
    if ground_truth and pred.gt_mask_camera is not None:
        # Voxels no camera saw are drawn in faded twins of their colours (ids C..2C-1).
        faded = (1 - UNSEEN_FADE) * palette + UNSEEN_FADE * np.asarray(BACKGROUND, np.float64)
        palette = np.concatenate([palette, faded.round().astype(np.uint8)])
        draw_labels = np.where(pred.gt_mask_camera, labels, labels.astype(np.int64) + len(faded))
    if annotate is None:
        annotate = view.width >= ANNOTATE_MIN_SIZE[0] and view.height >= ANNOTATE_MIN_SIZE[1]
    title_h = 34 if annotate else 0
    legend_w = _legend_width(view.width) if annotate else 0
    width, height = view.width - legend_w, view.height - title_h
    box_min, box_max = fit_box
    if view.distance is None:
        camera = frame_box(box_min, box_max, view.azimuth, view.elevation, width, height, view.fov)
    else:
        camera = look_at_camera(
            (box_min + box_max) / 2,
            view.azimuth,
            view.elevation,
            view.distance,
            width,
            height,
            view.fov,
        )
    rgb = render_voxels(
        draw_labels,
        occupied,
        palette,
        pred.point_cloud_range,
        pred.voxel_size,
        camera,
        background=BACKGROUND,
        edges=view.edges,
        supersample=view.supersample,
        device=view.device,
    )
    image = Image.fromarray(rgb)
    if not annotate:
        return image
    if title is None:
        kind = (
            "labels" if is_labels_record(pred) else "ground truth" if ground_truth else "prediction"
        )
        if ground_truth and pred.gt_mask_camera is not None:
            kind += " (faded: outside mask_camera)"
        title = f"{kind} · {pred.token}"
    counts = np.bincount(labels[occupied].astype(np.int64), minlength=pred.num_classes)
    out = Image.new("RGB", (view.width, view.height), BACKGROUND)
    out.paste(image, (0, title_h))
    draw = ImageDraw.Draw(out)
    draw.text((12, 7), title, fill=TEXT, font=_font(20))
    draw.line([(0, title_h - 1), (view.width, title_h - 1)], fill=(225, 225, 225))
    legend = render_legend(pred.class_names, pred.palette, counts > 0, counts=counts)
    legend.thumbnail((legend_w, height))
    out.paste(legend, (width, title_h))
    return out


def _legend_width(picture_width: int) -> int:
    return min(240, max(150, picture_width // 5))


def occupied_box(pred: Prediction, occupied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Metric bounding box (min, max) of the occupied voxels; the whole grid when none is."""
    index = np.argwhere(occupied)
    if len(index) == 0:
        return pred.point_cloud_range[:3].copy(), (
            pred.point_cloud_range[:3] + pred.voxel_size * np.array(pred.grid_shape)
        )
    lo = voxel_centers(index.min(0), pred.point_cloud_range, pred.voxel_size) - pred.voxel_size / 2
    hi = voxel_centers(index.max(0), pred.point_cloud_range, pred.voxel_size) + pred.voxel_size / 2
    return lo, hi


# ---------------------------------------------------------------------------------------------
# Cameras


def draw_points(
    tile: np.ndarray, uv: np.ndarray, depth: np.ndarray, colors: np.ndarray, radius: int
) -> np.ndarray:
    """Paint square dots (2r+1 px) onto a (H, W, 3) picture, far points first (near ones win)."""
    h, w = tile.shape[:2]
    order = np.argsort(-depth, kind="stable")
    uv, colors = uv[order], colors[order]
    col = np.floor(uv[:, 0]).astype(np.int64)
    row = np.floor(uv[:, 1]).astype(np.int64)
    out = tile.copy()
    offsets = range(-radius, radius + 1)
    # One assignment per offset keeps the far-to-near order: numpy's fancy assignment writes in
    # index order, so for each offset the last (nearest) point at a pixel stays.
    for dr in offsets:
        for dc in offsets:
            r, c = row + dr, col + dc
            ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            out[r[ok], c[ok]] = colors[ok]
    return out


def _camera_tile(
    pred: Prediction,
    cam_index: int,
    xyz: np.ndarray,
    colors: np.ndarray,
    tile_width: int,
    radius: int,
) -> Image.Image:
    orig_h, orig_w = (int(s) for s in pred.cam_image_sizes[cam_index])
    tile_height = max(1, round(tile_width * orig_h / orig_w))
    path = Path(pred.cam_paths[cam_index])
    if path.is_file():
        with Image.open(path) as img:
            base = np.asarray(img.convert("RGB").resize((tile_width, tile_height), Image.BILINEAR))
    else:
        warnings.warn(f"camera image not found: {path}; drawing on grey", stacklevel=3)
        base = np.full((tile_height, tile_width, 3), 90, dtype=np.uint8)
    uv, depth = project_points(pred.cam_lidar2img[cam_index], xyz)
    in_front = depth > MIN_DEPTH
    uv = uv[in_front] * np.array([tile_width / orig_w, tile_height / orig_h])
    tile = draw_points(base, uv, depth[in_front], colors[in_front], radius)
    return Image.fromarray(tile)


def render_cameras(
    pred: Prediction,
    exclude: Sequence[str] | None = None,
    ground_truth: bool = False,
    tile_width: int = 480,
    mirror_back: bool = False,
    radius: int = 1,
) -> Image.Image:
    """cameras.png: the six images in the rig layout with labelled points projected onto them.

    Points are the file's LiDAR points with predicted (or ground-truth) labels; a file without
    points projects the centres of its shown voxels instead. Back cameras are shown as they saw
    the scene unless `mirror_back` flips them (rear-view-mirror reading).
    """
    if not pred.has_cameras:
        raise TpvkitError(f"{pred.source}: the file holds no camera keys (cam_names, cam_paths...)")
    shown = ~resolve_excluded(pred, exclude)
    key = "gt_point_labels" if ground_truth else "point_labels"
    labels = getattr(pred, key)
    if pred.points is not None and labels is not None:
        keep = shown[labels.astype(np.int64)]
        xyz, lab = pred.points[keep].astype(np.float64), labels[keep].astype(np.int64)
    else:
        vox_labels, occupied = shown_voxels(pred, exclude, ground_truth)
        index = np.argwhere(occupied)
        xyz = voxel_centers(index, pred.point_cloud_range, pred.voxel_size)
        lab = vox_labels[occupied].astype(np.int64)
    colors = np.asarray(pred.palette, np.uint8)[lab]
    font = _font(max(12, tile_width // 28))
    rows = []
    for grid_row in CAMERA_GRID:
        tiles = []
        for name in grid_row:
            if name not in pred.cam_names:
                continue
            tile = _camera_tile(pred, pred.cam_names.index(name), xyz, colors, tile_width, radius)
            if mirror_back and "BACK" in name:
                tile = tile.transpose(Image.FLIP_LEFT_RIGHT)
            ImageDraw.Draw(tile).text(
                (6, 4), name, fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=(0, 0, 0)
            )
            tiles.append(tile)
        if tiles:
            rows.append(_side_by_side(tiles, gap=4))
    if not rows:
        raise TpvkitError(
            f"{pred.source}: none of the cameras {list(pred.cam_names)} is a nuScenes camera"
        )
    width = max(r.width for r in rows)
    out = Image.new("RGB", (width, sum(r.height for r in rows) + 4 * (len(rows) - 1)), BACKGROUND)
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height + 4
    return out


# ---------------------------------------------------------------------------------------------
# Legend


def render_legend(
    class_names: Sequence[str],
    palette: np.ndarray,
    shown: np.ndarray | None = None,
    counts: np.ndarray | None = None,
) -> Image.Image:
    """legend.png: a colour swatch and the id and name of every shown class, one per row; with
    `counts` (C,) the class's voxel count follows its name."""
    ids = [i for i in range(len(class_names)) if shown is None or shown[i]]
    font = _font(16)
    row_h, swatch, pad = 24, 18, 10
    texts = {c: f"{c:2d}  {class_names[c]}" if counts is None else class_names[c] for c in ids}
    # As wide as the longest row: names are never cut ("driveable_surfac").
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((measure.textlength(t, font=font) for t in texts.values()), default=0.0)
    count_w = 0.0
    if counts is not None:
        numbers = [measure.textlength(str(int(counts[c])), font=font) for c in ids]
        count_w = 16 + max(numbers, default=0.0)
    width = max(300 if counts is None else 240, int(pad + swatch + 10 + text_w + count_w + pad + 1))
    out = Image.new("RGB", (width, pad * 2 + row_h * max(1, len(ids))), BACKGROUND)
    draw = ImageDraw.Draw(out)
    for row, cls in enumerate(ids):
        y = pad + row * row_h
        color = tuple(int(c) for c in palette[cls])
        draw.rectangle([pad, y, pad + swatch, y + swatch], fill=color, outline=(60, 60, 60))
        text = texts[cls]
        draw.text((pad + swatch + 10, y + 1), text, fill=TEXT, font=font)
        if counts is not None:
            number = f"{int(counts[cls])}"
            draw.text((width - pad, y + 1), number, fill=(110, 110, 110), font=font, anchor="ra")
    return out


# ---------------------------------------------------------------------------------------------
# Entry points
