"""Checks shared by the data tests."""

from __future__ import annotations

import torch

from tpvkit.data.inputs import SceneInputs


def assert_cameras_compose(inputs: SceneInputs) -> None:
    """The projection is pad4(intrinsics) @ extrinsics (float32 noise), camera by camera."""
    K4 = torch.eye(4, dtype=torch.float64).repeat(*inputs.intrinsics.shape[:2], 1, 1)
    K4[..., :3, :3] = inputs.intrinsics.double()
    composed = K4 @ inputs.extrinsics.double()
    scale = float(inputs.projection.abs().max())
    torch.testing.assert_close(composed, inputs.projection.double(), rtol=0, atol=1e-6 * scale)
