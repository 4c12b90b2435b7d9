"""Prediction files in the official nuScenes-lidarseg submission layout.

```
R/lidarseg/<split>/<lidar sample_data token>_lidarseg.bin   uint8, one label 1..16 per point
R/<split>/submission.json                                    {"meta": {use_camera, ...}}
```
The devkit's `validate_submission` and `LidarSegEval` read exactly this; no ground truth is
needed to write it, so the same code serves v1.0-test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from tpvkit.constants import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from tpvkit.utils.io import atomic_write_bytes, atomic_write_text

# The devkit checks for exactly these keys, each a bool.
META_KEYS: tuple[str, ...] = ("use_camera", "use_lidar", "use_radar", "use_map", "use_external")

# Class written for a point whose prediction is the ignore class and whose cloud has no other
# prediction to borrow from: the most frequent class of nuScenes-lidarseg.
FALLBACK_CLASS = CLASS_NAMES.index("driveable_surface")

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def default_meta(
    use_camera: bool = True,
    use_lidar: bool = False,
    use_radar: bool = False,
    use_map: bool = False,
    use_external: bool = False,
) -> dict[str, bool]:
    """The meta block of submission.json for a camera-only model.

    TPVFormer sees only the six images; the LiDAR points serve as the positions where labels
    are asked for (every lidarseg entry needs them), not as input, hence use_lidar=False.
    Set use_external=True when the backbone was pre-trained on other data.
    """
    return {
        "use_camera": use_camera,
        "use_lidar": use_lidar,
        "use_radar": use_radar,
        "use_map": use_map,
        "use_external": use_external,
    }


def prediction_path(root: str | Path, split: str, lidar_token: str) -> Path:
    """R/lidarseg/<split>/<token>_lidarseg.bin."""
    if not _TOKEN_RE.match(lidar_token):
        raise ValueError(f"not a sample_data token: {lidar_token!r}")
    return Path(root) / "lidarseg" / split / f"{lidar_token}_lidarseg.bin"


def meta_path(root: str | Path, split: str) -> Path:
    """R/<split>/submission.json."""
    return Path(root) / split / "submission.json"


def to_submission_labels(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N,) class indices -> (N,) uint8 in 1..16, the only values the devkit accepts.

    tpvkit's evaluation never predicts the ignore class (metrics.predict_classes), so this is a
    guard for labels from elsewhere: an ignore (0) prediction becomes the most frequent real
    class predicted in the same cloud, or driveable_surface if the cloud has none. Values
    outside 0..16 are an error, never clipped silently.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels).reshape(-1).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= NUM_CLASSES):
        raise ValueError(f"predicted labels must lie in [0, {NUM_CLASSES - 1}]")
    ignored = arr == IGNORE_INDEX
    if ignored.any():
        counts = np.bincount(arr[~ignored], minlength=NUM_CLASSES)
        arr = arr.copy()
        arr[ignored] = int(counts.argmax()) if counts.any() else FALLBACK_CLASS
    return arr.astype(np.uint8)


def write_prediction(
    root: str | Path,
    split: str,
    lidar_token: str,
    labels: np.ndarray | torch.Tensor,
    num_points: int | None = None,
) -> Path:
    """Write one cloud's labels (original point order) atomically; returns the file written.

    `num_points`, when given, is checked: the devkit rejects a file with a different length.
    """
    data = to_submission_labels(labels)
    if num_points is not None and data.size != num_points:
        raise ValueError(f"{lidar_token}: {data.size} labels for a cloud of {num_points} points")
    path = prediction_path(root, split, lidar_token)
    atomic_write_bytes(path, data.tobytes())
    return path


def write_meta(root: str | Path, split: str, meta: dict[str, bool] | None = None) -> Path:
    """Write R/<split>/submission.json atomically; returns its path."""
    meta = default_meta() if meta is None else dict(meta)
    if set(meta) != set(META_KEYS) or not all(isinstance(v, bool) for v in meta.values()):
        raise ValueError(f"submission meta needs exactly the bool keys {', '.join(META_KEYS)}")
    path = meta_path(root, split)
    atomic_write_text(path, json.dumps({"meta": meta}, indent=2) + "\n")
    return path


def read_prediction(path: str | Path) -> np.ndarray:
    """(N,) uint8 labels of one prediction file."""
    return np.fromfile(Path(path), dtype=np.uint8)


class SubmissionWriter:
    """Writes a split's prediction files as they come, and submission.json at the end."""

    def __init__(self, root: str | Path, split: str, meta: dict[str, bool] | None = None):
        self.root = Path(root)
        self.split = split
        self.meta = default_meta() if meta is None else meta
        self.written: list[Path] = []

    def add(
        self, lidar_token: str, labels: np.ndarray | torch.Tensor, num_points: int | None = None
    ) -> Path:
        path = write_prediction(self.root, self.split, lidar_token, labels, num_points)
        self.written.append(path)
        return path

    def finish(self) -> Path:
        """Write submission.json (last, so a folder with it is a complete submission)."""
        return write_meta(self.root, self.split, self.meta)
