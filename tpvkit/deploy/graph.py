"""The exported inference graph: a TPVFormer in its export mode (TPVFormer.export_mode) behind a
fixed I/O contract (names, shapes, dtypes) that the ONNX file, its metadata and docs/deploy.md
share.

Inputs: "img" float32 (1, N_cam, 3, H, W): plain RGB images, values 0..255, channels R, G, B,
resized to data.img_size (IMAGE_CONTRACT; the model normalises and pads them); "lidar2img"
float32 (1, N_cam, 4, 4) from the grid frame (the task's input frame: LiDAR, or ego for Occ3D,
where it is ego2img) to pixels of that image; "points" float32 (1, P, 3) xyz in that frame with
P dynamic (only when point logits are exported).
Outputs (any subset, in this order): "point_logits" float32 (1, n_cls, P), "voxel_logits"
float32 (1, n_cls, X, Y, Z), "voxel_argmax" uint8 (1, X, Y, Z): the argmax over the classes of
the task's label space less its ignored class, as `tpvkit predict` (tpvkit.task.LabelSpace).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tpvkit.config import Config
from tpvkit.constants import CAMERA_ORDER
from tpvkit.data.geometry import padded_image_size
from tpvkit.data.inputs import SceneInputs
from tpvkit.errors import TpvkitError
from tpvkit.models.tpvformer import TPVFormer
from tpvkit.task import LabelSpace

# --outputs spelling -> the graph output it adds.
OUTPUT_CHOICES: dict[str, str] = {
    "points": "point_logits",
    "voxels": "voxel_logits",
    "argmax": "voxel_argmax",
}
DEFAULT_OUTPUTS: tuple[str, ...] = ("points", "voxels")


def parse_outputs(spec: str | Sequence[str]) -> tuple[str, ...]:
    """'points,argmax' (or a list) -> the chosen --outputs names, in OUTPUT_CHOICES order."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if not names:
        raise TpvkitError(f"--outputs is empty: give one or more of {','.join(OUTPUT_CHOICES)}")
    unknown = [n for n in names if n not in OUTPUT_CHOICES]
    if unknown:
        raise TpvkitError(
            f"--outputs: unknown output {unknown[0]!r}; choose from {','.join(OUTPUT_CHOICES)}"
        )
    return tuple(n for n in OUTPUT_CHOICES if n in names)


def img_hw(cfg: Config) -> tuple[int, int]:
    """(H, W): data.img_size, the size of the graph's (and the Dataset's) images."""
    h, w = (int(v) for v in cfg.data.img_size)
    return (h, w)


def padded_img_hw(cfg: Config) -> tuple[int, int]:
    """(Hp, Wp): data.img_size rounded up to data.size_divisor, the size the model pads to."""
    return padded_image_size(img_hw(cfg), cfg.data.size_divisor)


def image_contract(cfg: Config) -> dict[str, Any]:
    """What the "img" input must hold, as the ONNX metadata states it (tpvkit.image_contract):
    plain RGB, the model normalises (pixel_mean / pixel_std, in the backbone's channel order
    after the RGB -> BGR flip of caffe-style backbones) and pads."""
    h, w = img_hw(cfg)
    n = cfg.model.encoder.num_cams
    return {
        "name": "img",
        "dtype": "float32",
        "shape": [1, n, 3, h, w],
        "layout": "NCHW per camera: (batch, camera, channel, height, width)",
        "channel_order": "RGB",
        "value_range": [0.0, 255.0],
        "cameras": list(CAMERA_ORDER[:n]) if n <= len(CAMERA_ORDER) else None,
        "resize_to": [h, w],
        "normalised_inside": {
            "channel_order": "RGB" if cfg.data.to_rgb else "BGR",
            "pixel_mean": [float(v) for v in cfg.data.img_mean],
            "pixel_std": [float(v) for v in cfg.data.img_std],
            "padded_to": list(padded_img_hw(cfg)),
        },
    }


def input_names(outputs: Sequence[str]) -> list[str]:
    return ["img", "lidar2img", *(["points"] if "points" in outputs else [])]


def output_names(outputs: Sequence[str]) -> list[str]:
    return [OUTPUT_CHOICES[n] for n in OUTPUT_CHOICES if n in outputs]


class InferenceGraph(nn.Module):
    """What the ONNX file computes: TPVFormer.forward with the outputs chosen by `outputs`.

    With `fp16` the model's weights and activations are float16 while the I/O stays float32
    (the camera projection and the deformable-attention sampling run in float32 inside the
    model anyway, as they do under autocast). The "argmax" output never returns the label
    space's ignored class (lidarseg's 0 "noise") and may return every other one (Occ3D's 0
    "others" included), as `tpvkit predict` does.
    """

    def __init__(
        self,
        model: TPVFormer,
        outputs: Sequence[str],
        *,
        label_space: LabelSpace,
        fp16: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.outputs = tuple(outputs)
        self.fp16 = fp16
        num_classes = model.num_classes
        if label_space.num_classes != num_classes:
            raise TpvkitError(
                f"label space {label_space.name} has {label_space.num_classes} classes, the "
                f"model {num_classes}"
            )
        # Adding -inf to the ignored class's logit is the export-friendly form of
        # predict_classes (no in-place index assignment in the graph).
        mask = torch.zeros(num_classes)
        if label_space.ignore_index is not None:
            mask[label_space.ignore_index] = float("-inf")
        self.register_buffer("argmax_mask", mask.view(1, num_classes, 1, 1, 1), persistent=False)

    def forward(
        self, img: torch.Tensor, lidar2img: torch.Tensor, points: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The graph's plain tensor inputs, unpacked into the model's SceneInputs (in the
        model's input frame: "lidar2img" is ego2img for an ego-frame model)."""
        decode = "voxels" in self.outputs or "argmax" in self.outputs
        inputs = SceneInputs(
            img=img,  # float32 RGB: the model normalises in float32, then casts to its dtype
            projection=lidar2img,
            frame=self.model.input_frame,
            # float32 points: their grid coordinates are computed before the cast to the maps'
            # dtype, so float16 weights do not cost point-position precision.
            points=points,
        )
        out = self.model(inputs, decode_voxels=decode)
        results: list[torch.Tensor] = []
        if "points" in self.outputs:
            results.append(out["point_logits"].float())
        if decode:
            voxels = out["voxel_logits"].float()
            if "voxels" in self.outputs:
                results.append(voxels)
            if "argmax" in self.outputs:
                cls = (voxels + self.argmax_mask).argmax(dim=1)
                results.append(cls.to(torch.uint8))
        return tuple(results)
