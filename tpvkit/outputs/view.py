"""`tpvkit view`: one self-contained HTML file with an interactive WebGL viewer of prediction
files (a scene's key frames), three.js vendored and inlined, the voxels packed and deflated.

The page opens offline by double-click: everything it needs (three.js, the data, the camera
images as JPEG data URIs) is inside the file, nothing is fetched. Layout of the data block and
of the packing: docs/outputs.md ("tpvkit view").
"""

from __future__ import annotations

import base64
import io
import json
import re
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from tpvkit.errors import TpvkitError
from tpvkit.outputs.degenerate import empty_output_warning, warn
from tpvkit.outputs.prediction_file import Prediction, load_prediction, npz_files_in
from tpvkit.utils.io import atomic_write_text, check_output_file

if TYPE_CHECKING:
    from tpvkit.config import Config

THREE_VERSION = "0.182.0"
PAYLOAD_VERSION = 1
VIEWER_PACKAGE = "tpvkit.outputs.viewer"

# Cameras in the strip, in a ring around the car (left to right: front-left ... back-left), so
# neighbouring images overlap at their touching edges.
CAMERA_STRIP: tuple[str, ...] = (
    "CAM_FRONT_LEFT",
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
)

# The ego-car marker: a box the size of the nuScenes data-collection car (Renault Zoe, 4.08 x
# 1.73 x 1.56 m) in the ego frame, whose origin is the rear axle's centre on the ground.
EGO_BOX_CENTER = (1.24, 0.0, 0.78)  # metres, ego frame
EGO_BOX_SIZE = (4.08, 1.73, 1.56)

# Points are stored as int16 centimetres: +-327 m covers any LiDAR sweep at 1 cm resolution.
POINT_SCALE = 100.0
POINT_LIMIT_M = 327.0


@dataclass
class ViewerOptions:
    """What goes into the page besides the voxels."""

    max_points: int = 60_000  # LiDAR points kept per frame (evenly strided); 0: none
    cameras: bool = True  # the six images of each key frame
    image_width: int = 352  # pixels of each camera image in the page
    jpeg_quality: int = 72
    title: str | None = None  # default: the scene token, or the first file's name

    def __post_init__(self) -> None:
        if self.max_points < 0:
            raise TpvkitError(f"--max-points must be >= 0, got {self.max_points}")
        if not 32 <= self.image_width <= 1600:
            raise TpvkitError(f"--image-width must lie in 32..1600, got {self.image_width}")
        if not 10 <= self.jpeg_quality <= 95:
            raise TpvkitError(f"--jpeg-quality must lie in 10..95, got {self.jpeg_quality}")


@dataclass
class ViewerResult:
    """What `write_viewer` wrote."""

    path: Path
    num_frames: int
    size_bytes: int
    voxels_per_frame: list[int] = field(default_factory=list)
    has_ground_truth: bool = False


# ---------------------------------------------------------------------------------------------
# Packing (the page's decoder, viewer.js `decodeVoxels`, is its inverse; tests check both)


def _b64_deflate(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data, 9)).decode("ascii")


def pack_voxels(labels: np.ndarray, occupied: np.ndarray) -> dict[str, str]:
    """Occupied voxels of an (X, Y, Z) grid as two deflated, base64 byte strings.

    "occ": the occupancy bits of the grid in C order (flat index (x * Y + y) * Z + z), packed
    eight to a byte, least significant bit first. "cls": one uint8 class id per occupied voxel,
    in the same order. A 200x200x16 grid costs 80 kB of bits before deflate, plus a byte per
    occupied voxel; deflate shrinks both a lot (ground layers and walls are long runs).
    """
    occ = np.ascontiguousarray(occupied, dtype=bool)
    bits = np.packbits(occ.reshape(-1), bitorder="little")
    classes = np.ascontiguousarray(labels, dtype=np.uint8)[occ]
    return {"occ": _b64_deflate(bits.tobytes()), "cls": _b64_deflate(classes.tobytes())}


def unpack_voxels(
    packed: dict[str, str], grid_shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of pack_voxels: labels (X, Y, Z) uint8 (0 where free) and occupied bool."""
    n = int(np.prod(grid_shape))
    bits = np.frombuffer(zlib.decompress(base64.b64decode(packed["occ"])), dtype=np.uint8)
    occupied = np.unpackbits(bits, count=n, bitorder="little").astype(bool).reshape(grid_shape)
    classes = np.frombuffer(zlib.decompress(base64.b64decode(packed["cls"])), dtype=np.uint8)
    labels = np.zeros(grid_shape, dtype=np.uint8)
    labels[occupied] = classes
    return labels, occupied


def pack_points(points: np.ndarray) -> str:
    """(N, 3) metres -> deflated base64 int16 centimetres, interleaved x, y, z."""
    cm = np.round(np.clip(points, -POINT_LIMIT_M, POINT_LIMIT_M) * POINT_SCALE)
    return _b64_deflate(cm.astype("<i2").tobytes())


def subsample(count: int, limit: int) -> np.ndarray:
    """Indices of at most `limit` of `count` items, evenly strided (deterministic, no RNG)."""
    if count <= limit:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))


# ---------------------------------------------------------------------------------------------
# Frames


def ground_truth_voxels(pred: Prediction) -> tuple[np.ndarray, np.ndarray] | None:
    """Ground-truth labels and occupied voxels of a record, or None when it has none.

    0 means "no labelled point" (and is the ignore class), and an occupancy model's free-space
    class is free: neither is drawn.
    """
    if pred.gt_voxels is None:
        return None
    gt = np.asarray(pred.gt_voxels, dtype=np.uint8)
    occupied = gt != 0
    if pred.empty_label >= 0:
        occupied &= gt != pred.empty_label
    return gt, occupied


def _camera_images(pred: Prediction, options: ViewerOptions) -> list[dict[str, Any]]:
    """The key frame's images, downscaled, as JPEG data URIs with their projection matrices
    rescaled to the downscaled pixels."""
    cams = []
    for name in CAMERA_STRIP:
        if name not in pred.cam_names:
            continue
        i = pred.cam_names.index(name)
        orig_h, orig_w = (int(s) for s in pred.cam_image_sizes[i])
        width = options.image_width
        height = max(1, round(width * orig_h / orig_w))
        path = Path(pred.cam_paths[i])
        if path.is_file():
            with Image.open(path) as img:
                image = img.convert("RGB").resize((width, height), Image.BILINEAR)
        else:
            warnings.warn(f"camera image not found: {path}; drawing on grey", stacklevel=3)
            image = Image.new("RGB", (width, height), (90, 90, 90))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=options.jpeg_quality, optimize=True)
        scale = np.diag([width / orig_w, height / orig_h, 1.0, 1.0])
        projection = (scale @ np.asarray(pred.cam_lidar2img[i], np.float64))[:3]  # (3, 4)
        cams.append(
            {
                "name": name,
                "src": "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode(),
                "width": width,
                "height": height,
                "projection": [round(float(v), 6) for v in projection.reshape(-1)],
            }
        )
    return cams


def frame_payload(
    pred: Prediction, options: ViewerOptions, ground_truth: Prediction | None = None
) -> dict[str, Any]:
    """One key frame of the page: packed voxels, ground truth, mask, points and images.

    `ground_truth` (a record from `ground_truth_record`) supplies what `pred` lacks.
    """
    frame: dict[str, Any] = {
        "token": pred.token,
        "scene": pred.scene_token,
        "timestamp": int(pred.timestamp),
        "source": Path(pred.source).name if pred.source else "",
        "pred": pack_voxels(pred.voxels, pred.occupied),
    }
    gt = ground_truth_voxels(pred)
    if gt is None and ground_truth is not None:
        gt = ground_truth_voxels(ground_truth)
    if gt is not None:
        frame["gt"] = pack_voxels(*gt)
    if pred.gt_mask_camera is not None:
        bits = np.packbits(np.asarray(pred.gt_mask_camera, bool).reshape(-1), bitorder="little")
        frame["mask_camera"] = _b64_deflate(bits.tobytes())
    gt_point_labels = pred.gt_point_labels
    if (
        gt_point_labels is None
        and ground_truth is not None
        and ground_truth.gt_point_labels is not None
        and pred.points is not None
        and ground_truth.points is not None
        and len(ground_truth.points) == len(pred.points)
    ):
        gt_point_labels = ground_truth.gt_point_labels
    if pred.points is not None and len(pred.points) and options.max_points > 0:
        keep = subsample(len(pred.points), options.max_points)
        frame["points"] = pack_points(np.asarray(pred.points, np.float64)[keep])
        frame["num_points"] = int(len(keep))
        if pred.point_labels is not None:
            frame["point_labels"] = _b64_deflate(np.asarray(pred.point_labels, np.uint8)[keep])
        if gt_point_labels is not None:
            frame["gt_point_labels"] = _b64_deflate(np.asarray(gt_point_labels, np.uint8)[keep])
    if options.cameras and pred.has_cameras:
        frame["cameras"] = _camera_images(pred, options)
    return frame


def ego_box_pose(pred: Prediction) -> np.ndarray:
    """(4, 4) pose of the ego-car box (unit cube scaled to EGO_BOX_SIZE) in the grid's frame."""
    pose = np.eye(4)
    pose[:3, :3] = np.diag(EGO_BOX_SIZE)
    pose[:3, 3] = EGO_BOX_CENTER
    if pred.frame == "lidar":
        pose = np.linalg.inv(pred.lidar2ego) @ pose
    return pose


def _check_same_grid(preds: Sequence[Prediction]) -> None:
    first = preds[0]
    for pred in preds[1:]:
        same = (
            pred.grid_shape == first.grid_shape
            and np.allclose(pred.point_cloud_range, first.point_cloud_range)
            and np.allclose(pred.voxel_size, first.voxel_size)
            and pred.class_names == first.class_names
            and pred.frame == first.frame
        )
        if not same:
            raise TpvkitError(
                f"{pred.source}: its grid, classes or frame differ from {first.source}'s; "
                "view files of one model in one page"
            )


def scene_payload(
    preds: Sequence[Prediction],
    options: ViewerOptions | None = None,
    ground_truth: Sequence[Prediction | None] | None = None,
) -> dict[str, Any]:
    """The page's data block: the shared facts (classes, grid, ego marker) and the frames."""
    if not preds:
        raise TpvkitError("no prediction files given")
    options = options or ViewerOptions()
    _check_same_grid(preds)
    gts = list(ground_truth) if ground_truth is not None else [None] * len(preds)
    first = preds[0]
    hidden = [first.class_id(n) for n in first.default_excluded()]
    scenes = sorted({p.scene_token for p in preds if p.scene_token})
    title = options.title or (
        f"scene {scenes[0]}" if len(scenes) == 1 else Path(first.source).name or first.token
    )
    frames = [frame_payload(p, options, g) for p, g in zip(preds, gts, strict=True)]
    return {
        "version": PAYLOAD_VERSION,
        "three": THREE_VERSION,
        "title": title,
        "class_names": list(first.class_names),
        "palette": np.asarray(first.palette, np.uint8).tolist(),
        "empty_label": int(first.empty_label),
        "hidden_classes": hidden,
        "occupancy_rule": first.occupancy_rule,
        "grid_shape": list(first.grid_shape),
        "point_cloud_range": [float(v) for v in first.point_cloud_range],
        "voxel_size": [float(v) for v in first.voxel_size],
        "frame": first.frame,
        "ego_box": [round(float(v), 6) for v in ego_box_pose(first).reshape(-1)],
        "point_scale": POINT_SCALE,
        "frames": frames,
    }


# ---------------------------------------------------------------------------------------------
# The page


def _resource(name: str) -> str:
    return resources.files(VIEWER_PACKAGE).joinpath(name).read_text(encoding="utf-8")


def _data_url(source: str) -> str:
    """A JavaScript module as a `data:` URL. Only the characters that end or change a URL are
    escaped: '%' and '#', and the line breaks and tabs that URL parsing would drop."""
    for char, code in (("%", "%25"), ("#", "%23"), ("\n", "%0A"), ("\r", "%0D"), ("\t", "%09")):
        source = source.replace(char, code)
    return "data:text/javascript;charset=utf-8," + source


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element: '<' is written as \\u003c, so no '</script>'."""
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c")


def import_map() -> dict[str, dict[str, str]]:
    """The import map that serves three.js from the page itself."""
    core = _resource("vendor/three.core.min.js")
    module = _resource("vendor/three.module.min.js")
    relative = '"./three.core.min.js"'
    if relative not in module:
        raise TpvkitError(  # only a changed vendored build can get here
            f"vendored three.module.min.js no longer imports {relative}; see "
            "tpvkit/outputs/viewer/vendor/README.md"
        )
    module = module.replace(relative, '"three/core"')
    controls = _resource("vendor/OrbitControls.js")
    return {
        "imports": {
            "three/core": _data_url(core),
            "three": _data_url(module),
            "three/addons/OrbitControls": _data_url(controls),
        }
    }


def build_html(payload: dict[str, Any]) -> str:
    """The complete page for a payload from `scene_payload`."""
    script = _resource("viewer.js")
    if "</script" in script.lower():
        raise TpvkitError("viewer.js must not contain '</script'")  # it is inlined verbatim
    license_text = _resource("vendor/three.LICENSE").replace("--", "- -")
    page = _resource("template.html")
    replacements = {
        "{{TITLE}}": _html_escape(str(payload["title"])),
        "{{THREE_VERSION}}": THREE_VERSION,
        "{{THREE_LICENSE}}": license_text,
        "{{IMPORT_MAP}}": _script_json(import_map()),
        "{{DATA}}": _script_json(payload),
        "{{SCRIPT}}": script,
    }
    missing = [key for key in replacements if key not in page]
    if missing:
        raise TpvkitError(f"viewer template lacks {', '.join(missing)}")
    # One pass: text put in (the data, the script) is never searched for placeholders again.
    return re.sub(r"\{\{[A-Z_]+\}\}", lambda m: replacements.get(m.group(0), m.group(0)), page)


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------------------------------------
# Entry point


def collect_inputs(inputs: Sequence[str | Path] | str | Path) -> list[Path]:
    """Files as given, folders expanded to their *.npz (sorted by name)."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise TpvkitError("no prediction files given: pass .npz files or a folder of them")
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = npz_files_in(path)
            if not found:
                raise TpvkitError(f"no .npz prediction files in {path}")
            files += found
        else:
            files.append(path)
    return files


def order_frames(preds: list[Prediction]) -> list[Prediction]:
    """Key frames in timestamp order when every file knows its timestamp, else as given."""
    if all(p.timestamp >= 0 for p in preds):
        return sorted(preds, key=lambda p: p.timestamp)
    return preds


def write_viewer(
    inputs: Sequence[str | Path] | str | Path | Sequence[Prediction],
    out: str | Path,
    options: ViewerOptions | None = None,
    infos: str | Path | None = None,
    cfg: Config | None = None,
    overrides: Sequence[str] = (),
) -> ViewerResult:
    """Write the viewer page of one or more prediction files (a scene's key frames) to `out`.

    Ground truth comes from the files (gt_voxels, gt_point_labels, gt_mask_camera) or, for
    frames without it, from the dataset through `infos`, voxelised on the prediction file's own
    grid (tpvkit.outputs.predict.config_on_grid); a `cfg` given for the data pipeline must put
    its model on that grid, else the frame is refused; `overrides` ("key=value") apply to the
    config of the file's grid when no `cfg` is given.
    """
    out = check_output_file(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise TpvkitError(f"--out {out}: the viewer is an HTML file; give a name ending in .html")
    options = options or ViewerOptions()
    items = inputs if isinstance(inputs, (str, Path)) else list(inputs)
    if isinstance(items, list) and items and all(isinstance(p, Prediction) for p in items):
        preds = list(items)
    else:
        preds = [load_prediction(p) for p in collect_inputs(items)]  # type: ignore[arg-type]
    preds = order_frames(preds)
    ground_truth: list[Prediction | None] = [None] * len(preds)
    if infos is not None:
        from tpvkit.outputs.predict import ground_truth_on_grid

        for i, pred in enumerate(preds):
            if pred.gt_voxels is None or pred.gt_point_labels is None:
                ground_truth[i] = ground_truth_on_grid(pred, infos, cfg, overrides)
    payload = scene_payload(preds, options, ground_truth)
    html = build_html(payload)
    atomic_write_text(out, html)
    if not any(p.occupied.any() for p in preds):
        warn(empty_output_warning(f"the viewer page {out} ({len(preds)} frames)"))
    return ViewerResult(
        path=out,
        num_frames=len(preds),
        size_bytes=len(html.encode("utf-8")),
        voxels_per_frame=[int(p.occupied.sum()) for p in preds],
        has_ground_truth=any("gt" in f for f in payload["frames"]),
    )


__all__ = [
    "CAMERA_STRIP",
    "THREE_VERSION",
    "ViewerOptions",
    "ViewerResult",
    "build_html",
    "collect_inputs",
    "frame_payload",
    "ground_truth_voxels",
    "pack_points",
    "pack_voxels",
    "scene_payload",
    "unpack_voxels",
    "write_viewer",
]
