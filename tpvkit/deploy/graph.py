"""The exported inference graph: a TPVFormer in its export configuration behind a fixed I/O
contract (names, shapes, dtypes) that the ONNX file, its metadata and docs/deploy.md share.

Inputs: "img" float32 (1, N_cam, 3, Hp, Wp) normalised and padded as the tpvkit data pipeline
makes it; "lidar2img" float32 (1, N_cam, 4, 4) from the grid frame (the task's input frame:
LiDAR, or ego for Occ3D, where it is ego2img) to pixels of that padded image; "points" float32
(1, P, 3) xyz in that frame with P dynamic (only when point logits are exported).
Outputs (any subset, in this order): "point_logits" float32 (1, n_cls, P), "voxel_logits"
float32 (1, n_cls, X, Y, Z), "voxel_argmax" uint8 (1, X, Y, Z): the argmax over the classes of
the task's label space less its ignored class, as `tpvkit predict` (tpvkit.task.LabelSpace).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from tpvkit.config import Config
from tpvkit.deploy.msda import msda_export
from tpvkit.errors import TpvkitError
from tpvkit.models.tpvformer import TPVFormer
from tpvkit.ops.dcn import ModulatedDeformConv2dPack, deform_columns
from tpvkit.task import LabelSpace

# --outputs spelling -> the graph output it adds.
OUTPUT_CHOICES: dict[str, str] = {
    "points": "point_logits",
    "voxels": "voxel_logits",
    "argmax": "voxel_argmax",
}
DEFAULT_OUTPUTS: tuple[str, ...] = ("points", "voxels")
# The MSDA traced into the graph: chunked F.grid_sample, i.e. the standard GridSample op.
EXPORT_MSDA_BACKEND = msda_export


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


def padded_img_hw(cfg: Config) -> tuple[int, int]:
    """(Hp, Wp): data.img_size rounded up to data.size_divisor, the image tensors' size."""
    div = max(int(cfg.data.size_divisor), 1)
    h, w = (int(v) for v in cfg.data.img_size)
    return (-(-h // div) * div, -(-w // div) * div)


def input_names(outputs: Sequence[str]) -> list[str]:
    return ["img", "lidar2img", *(["points"] if "points" in outputs else [])]


def output_names(outputs: Sequence[str]) -> list[str]:
    return [OUTPUT_CHOICES[n] for n in OUTPUT_CHOICES if n in outputs]


@contextlib.contextmanager
def export_mode(model: TPVFormer) -> Iterator[TPVFormer]:
    """Switch a model, for the duration, to the configuration the exporter traces: eval mode,
    dense camera slots (no shape depends on the calibration's values), the plain image
    cross-attention (its compact form picks sub-queries with data-dependent shapes), the
    chunked GridSample MSDA (tpvkit.deploy.msda) and DCN layers without their
    autograd.Function. Restores the
    previous settings afterwards, so the same model then serves as the check's reference."""
    modules = [m for m in model.modules() if hasattr(m, "msda_backend")]
    saved = (model.training, model.encoder.dense_camera_hits, [m.msda_backend for m in modules])
    dcns = [m for m in model.modules() if isinstance(m, ModulatedDeformConv2dPack)]
    compact = [m for m in model.modules() if hasattr(m, "compact")]
    saved_compact = [m.compact for m in compact]
    model.eval()
    for m in compact:
        m.compact = False
    model.encoder.dense_camera_hits = True
    for m in modules:
        m.msda_backend = EXPORT_MSDA_BACKEND
    for m in dcns:  # an instance attribute shadows the class's forward until deleted
        m.forward = types.MethodType(dcn_export_forward, m)
    try:
        yield model
    finally:
        model.train(saved[0])
        model.encoder.dense_camera_hits = saved[1]
        for m, backend in zip(modules, saved[2], strict=True):
            m.msda_backend = backend
        for m in dcns:
            del m.forward
        for m, value in zip(compact, saved_compact, strict=True):
            m.compact = value


def dcn_export_forward(self: ModulatedDeformConv2dPack, x: torch.Tensor) -> torch.Tensor:
    """ModulatedDeformConv2dPack.forward without its autograd.Function (which the exporter
    cannot look into): the same columns (deform_columns: GridSample), matmul and bias."""
    out = self.conv_offset(x)  # (B, 3*G*K, Ho, Wo)
    o1, o2, mask = torch.chunk(out, 3, dim=1)
    offset = torch.cat((o1, o2), dim=1)
    dtype = torch.promote_types(x.dtype, torch.float32)  # as the op: sampling in >= float32
    cols = deform_columns(
        x.to(dtype),
        offset.to(dtype),
        torch.sigmoid(mask).to(dtype),
        self.kernel_size,
        self.stride,
        self.padding,
        self.dilation,
        self.deform_groups,
    )  # (B, C*K, Ho*Wo)
    y = torch.matmul(self.weight.to(dtype).flatten(1), cols)
    if self.bias is not None:
        y = y + self.bias.to(dtype)[:, None]
    return y.view(*y.shape[:2], *offset.shape[-2:]).to(x.dtype)


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
        num_classes = model.cfg.num_classes
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
        dtype = torch.float16 if self.fp16 else torch.float32
        decode = "voxels" in self.outputs or "argmax" in self.outputs
        out = self.model(
            img.to(dtype),
            lidar2img,
            # float32 points: their grid coordinates are computed before the cast to the maps'
            # dtype, so float16 weights do not cost point-position precision.
            points=points,
            decode_voxels=decode,
        )
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
