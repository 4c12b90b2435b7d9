"""The full TPVFormer: image normalisation -> ResNet backbone -> FPN -> TPV encoder ->
aggregator/head, assembled from its parts.

`build_model(cfg)` is the one place that reads the config: it builds the parts and hands them,
with the image normalisation, to `TPVFormer`. The forward contract (shapes, axes, what is
returned) is in docs/internals.md; the architecture, conventions and checkpoint names in
docs/model.md; the export mode in docs/deploy.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tpvkit.config import Config, task_of
from tpvkit.data.geometry import padded_image_size
from tpvkit.data.inputs import SceneInputs
from tpvkit.errors import TpvkitError
from tpvkit.models.backbone import ResNet
from tpvkit.models.encoder import TPVEncoder
from tpvkit.models.head import TPVHead
from tpvkit.models.neck import FPN


class DepthHead(nn.Module):
    """Per-cell camera depth classifier on one FPN level (depth-aware lifting, tpvkit's; the
    public models have none): 3x3 conv -> ReLU -> 1x1 conv to K bin logits. The last conv
    starts at zero, so a fresh head predicts the uniform distribution (likelihood 1 at every
    depth: the image cross-attention starts as the public one's)."""

    def __init__(self, dim: int, bins: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.classifier = nn.Conv2d(dim, bins, 1)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.relu(self.conv(x)))


def depth_likelihood(logits: torch.Tensor) -> torch.Tensor:
    """Depth logits (..., K, h, w) -> each bin's probability relative to the cell's most
    probable bin, in (0, 1] (1 at every bin for a uniform prediction), float32."""
    prob = logits.float().softmax(-3)
    return prob / prob.amax(-3, keepdim=True)


class TPVFormer(nn.Module):
    """Camera images (plain RGB) -> per-point and per-voxel semantic logits through a TPV (or
    BEV).

    The image normalisation belongs to the model, as detectron2's: `pixel_mean` / `pixel_std`
    (in the backbone's channel order) are non-persistent buffers, so checkpoints hold the same
    tensors as before they moved here; `bgr` flips the RGB input to the BGR order of caffe-style
    backbones; the normalised images are zero-padded at the bottom/right to a multiple of
    `size_divisor` (zero is the mean colour, as the data pipeline padded them).

    Export mode (`export_mode()`, `set_export`): every part that computes differently for a
    traced graph has a boolean `export` attribute and honours it in its forward (DCN layers
    without their autograd.Function, attention with the GridSample MSDA, the camera packing
    with shapes that do not depend on the calibration); the result is the same to float32
    noise.
    """

    def __init__(
        self,
        backbone: ResNet,
        neck: FPN,
        encoder: TPVEncoder,
        head: TPVHead,
        *,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        bgr: bool,
        size_divisor: int = 1,
        input_frame: str = "lidar",
        depth_head: DepthHead | None = None,
        depth_level: int = 1,
        depth_weights_attention: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.encoder = encoder
        self.head = head
        # Depth-aware lifting (model.depth): the depth head reads FPN level depth_level; with
        # depth_weights_attention its likelihoods scale the image cross-attention's samples.
        self.depth_head = depth_head
        self.depth_level = int(depth_level)
        self.depth_weights_attention = bool(depth_weights_attention)
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise TpvkitError(
                f"pixel_mean and pixel_std need 3 values, got {list(pixel_mean)} and "
                f"{list(pixel_std)} (data.img_mean / data.img_std)"
            )
        self._pixel_values = ([float(v) for v in pixel_mean], [float(v) for v in pixel_std])
        for name, values in zip(("pixel_mean", "pixel_std"), self._pixel_values, strict=True):
            buf = torch.tensor(values, dtype=torch.float32).view(1, 1, 3, 1, 1)
            self.register_buffer(name, buf, persistent=False)
        self.bgr = bool(bgr)
        self.size_divisor = max(int(size_divisor), 1)
        # the frame its projections and points come from (the task's input frame): inputs in
        # another frame are refused
        self.input_frame = input_frame
        self.export = False

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        """Moves and casts as nn.Module does, except that the normalisation buffers stay
        float32 with their exact values (a .half() model normalises as the float32 one)."""
        super()._apply(fn, recurse)
        for name, values in zip(("pixel_mean", "pixel_std"), self._pixel_values, strict=True):
            buf = getattr(self, name)
            if buf.dtype != torch.float32:
                exact = torch.tensor(values, dtype=torch.float32, device=buf.device)
                setattr(self, name, exact.view(1, 1, 3, 1, 1))
        return self

    @property
    def grid(self) -> tuple[int, int, int]:
        """The output voxel grid (X, Y, Z), indexed [x, y, z]."""
        return self.head.grid

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    # -- export mode ------------------------------------------------------------------------

    def set_export(self, flag: bool = True) -> TPVFormer:
        """Switch every part that has an export form to it (True) or back (False)."""
        for m in self.modules():
            if hasattr(m, "export"):
                m.export = bool(flag)
        return self

    @contextlib.contextmanager
    def export_mode(self) -> Iterator[TPVFormer]:
        """For the duration: eval mode and the export form of every part; the previous state
        is restored afterwards (the same model then serves as the check's reference)."""
        training, exporting = self.training, self.export
        self.eval()
        self.set_export(True)
        try:
            yield self
        finally:
            self.set_export(exporting)
            self.train(training)

    # -- forward ----------------------------------------------------------------------------

    def padded_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        """(Hp, Wp): an image size rounded up to the size divisor."""
        return padded_image_size(hw, self.size_divisor)

    def normalize(self, img: torch.Tensor) -> torch.Tensor:
        """img (B, N_cam, 3, H, W) RGB in [0, 255] -> (B, N_cam, 3, Hp, Wp) in the backbone's
        channel order, (x - pixel_mean) / pixel_std in float32, zero-padded at the bottom/right
        to the size divisor, cast to the backbone's dtype."""
        x = img.float()
        if self.bgr:
            x = x.flip(2)
        x = (x - self.pixel_mean.float()) / self.pixel_std.float()
        hp, wp = self.padded_size(x.shape[-2:])
        if (hp, wp) != tuple(x.shape[-2:]):
            x = F.pad(x, (0, wp - x.shape[-1], 0, hp - x.shape[-2]))
        return x.to(self.backbone.conv1.weight.dtype)

    def extract_features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """img (B, N_cam, 3, Hp, Wp) normalised -> per FPN level (B, N_cam, C, H_l, W_l); the
        cameras of all samples go through the backbone as one batch."""
        b, n = img.shape[:2]
        feats = self.neck(self.backbone(img.flatten(0, 1)))
        return [f.view(b, n, *f.shape[1:]) for f in feats]

    def forward(
        self,
        inputs: SceneInputs,
        decode_voxels: bool = True,
        voxel_index: torch.Tensor | None = None,
        decode_points: bool = True,
    ) -> dict[str, torch.Tensor]:
        """inputs (tpvkit.data.inputs.SceneInputs): the images (B, N_cam, 3, H, W) plain RGB in
        [0, 255] (float), unpadded; their projection (B, N_cam, 4, 4) from the grid frame (the
        task's input frame, which `inputs.frame` must be: LiDAR for lidarseg, ego for Occ3D,
        where it is ego2img) to pixels of those images; the query points (B, N, 3) in the grid
        frame, or None. voxel_index (B, K, 3) integer [x, y, z] voxels to decode alone, or None.

        Returns "point_logits" (B, n_cls, N) when the inputs hold points and decode_points,
        "voxel_logits" (B, n_cls, X, Y, Z) when decode_voxels and "voxel_logits_at"
        (B, n_cls, K) for voxel_index (docs/internals.md); in training mode, a model with a
        depth head also returns "depth_logits" (B, N_cam, bins, h, w) at its FPN level.
        """
        if not isinstance(inputs, SceneInputs):
            raise TypeError(
                f"TPVFormer takes a SceneInputs (tpvkit.data.inputs), got {type(inputs).__name__}"
            )
        img, projection = inputs.img, inputs.projection
        if img.dim() != 5 or img.shape[2] != 3 or projection.shape != (*img.shape[:2], 4, 4):
            raise TpvkitError(
                f"TPVFormer expects img (B, N_cam, 3, H, W) and projection (B, N_cam, 4, 4), "
                f"got {tuple(img.shape)} and {tuple(projection.shape)}"
            )
        if inputs.frame != self.input_frame:
            raise TpvkitError(
                f"the model works in the {self.input_frame} frame but the inputs are in the "
                f"{inputs.frame} frame: project from the model's grid frame (model.grid_frame)"
            )
        points = inputs.points if decode_points else None
        if points is not None and (points.dim() != 3 or points.shape[-1] != 3):
            raise TpvkitError(
                f"points must be (B, N, 3) xyz in the {inputs.frame} frame, got "
                f"{tuple(points.shape)}"
            )
        x = self.normalize(img)  # (B, N_cam, 3, Hp, Wp)
        feats = self.extract_features(x)
        depth_logits = likelihood = None
        # An auxiliary-only depth head (weight_attention false) feeds nothing but the training
        # loss: it does not run at inference (nor in the ONNX graph).
        if self.depth_head is not None and (self.training or self.depth_weights_attention):
            depth_logits = self.depth_head(feats[self.depth_level].flatten(0, 1))
            if self.depth_weights_attention:
                likelihood = depth_likelihood(depth_logits)
        planes = self.encoder(feats, projection, (x.shape[-2], x.shape[-1]), likelihood)
        out = self.head(planes, points=points, decode_voxels=decode_voxels, voxel_index=voxel_index)
        if depth_logits is not None and self.training:
            out["depth_logits"] = depth_logits.view(*img.shape[:2], *depth_logits.shape[1:])
        return out


def build_model(cfg: Config) -> TPVFormer:
    """Build (and initialise) the model a config describes: the parts from `cfg.model`, the
    image normalisation from `cfg.data` (img_mean, img_std, to_rgb, size_divisor). Pretrained
    weights are loaded by the caller (tpvkit.engine) through tpvkit.models.checkpoint_keys."""
    if not isinstance(cfg, Config):
        raise TypeError(
            f"build_model takes the whole Config (model and image normalisation), got "
            f"{type(cfg).__name__}: pass cfg, not cfg.model"
        )
    m = cfg.model
    backbone = ResNet(m.backbone, with_cp=m.checkpoint_activations, channels_last=m.channels_last)
    neck = FPN(list(backbone.out_channels), m.dim, m.neck.num_outs)
    return TPVFormer(
        backbone,
        neck,
        TPVEncoder(m),
        TPVHead(m),
        pixel_mean=cfg.data.img_mean,
        pixel_std=cfg.data.img_std,
        bgr=not cfg.data.to_rgb,
        size_divisor=cfg.data.size_divisor,
        input_frame=task_of(cfg).input_frame,
        depth_head=DepthHead(m.dim, m.depth.bins) if m.depth.bins > 0 else None,
        depth_level=m.depth.level,
        depth_weights_attention=m.depth.weight_attention,
    )
