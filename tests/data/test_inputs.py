"""SceneInputs: collating single samples into a batch (point clouds padded), moving every tensor,
and the refusals (mixed frames, a field some samples lack)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tpvkit.data.inputs import SceneInputs
from tpvkit.engine.distributed import to_device


def _one(n_points: int, seed: int, frame: str = "lidar", **extra) -> SceneInputs:
    g = torch.Generator().manual_seed(seed)
    return SceneInputs(
        img=torch.rand(1, 6, 3, 4, 5, generator=g) * 255,
        projection=torch.randn(1, 6, 4, 4, generator=g),
        frame=frame,
        points=torch.randn(1, n_points, 3, generator=g),
        intrinsics=torch.randn(1, 6, 3, 3, generator=g),
        extrinsics=torch.randn(1, 6, 4, 4, generator=g),
        **extra,
    )


def test_collate_stacks_cameras_and_pads_points() -> None:
    items = [_one(3, 0), _one(5, 1), _one(1, 2)]
    batch = SceneInputs.collate(items)
    assert batch.batch_size == 3 and batch.num_cams == 6 and batch.frame == "lidar"
    assert batch.points is not None and batch.points.shape == (3, 5, 3)
    for b, item in enumerate(items):
        for name in ("img", "projection", "intrinsics", "extrinsics"):
            assert torch.equal(getattr(batch, name)[b], getattr(item, name)[0]), name
        n = item.points.shape[1]
        assert torch.equal(batch.points[b, :n], item.points[0])
        assert (batch.points[b, n:] == 0).all()  # padding
    assert batch.previous == () and batch.ego_motion is None


def test_collate_joins_earlier_frames_and_ego_motion() -> None:
    def with_history(seed: int) -> SceneInputs:
        earlier = (_one(2, seed + 10), _one(4, seed + 20))
        return _one(3, seed, previous=earlier, ego_motion=torch.eye(4).repeat(1, 2, 1, 1) * seed)

    a, b = with_history(1), with_history(2)
    batch = SceneInputs.collate([a, b])
    assert len(batch.previous) == 2 and batch.ego_motion.shape == (2, 2, 4, 4)
    assert torch.equal(batch.previous[1].img[1], b.previous[1].img[0])
    assert batch.previous[1].points.shape == (2, 4, 3)
    assert torch.equal(batch.ego_motion[1], b.ego_motion[0])


def test_collate_refuses_mixed_batches() -> None:
    with pytest.raises(ValueError, match="frames"):
        SceneInputs.collate([_one(2, 0), _one(2, 1, frame="ego")])
    bare = _one(2, 1).replace(intrinsics=None)
    with pytest.raises(ValueError, match="intrinsics"):
        SceneInputs.collate([_one(2, 0), bare])
    with pytest.raises(ValueError, match="points"):
        SceneInputs.collate([_one(2, 0), _one(2, 1).replace(points=None)])
    with pytest.raises(ValueError, match="earlier frames"):
        SceneInputs.collate([_one(2, 0), _one(2, 1, previous=(_one(2, 3),))])
    with pytest.raises(ValueError, match="frame"):
        _one(2, 0, frame="camera")
    with pytest.raises(ValueError, match="at least one"):
        SceneInputs.collate([])


def test_to_moves_every_tensor_and_the_batch_helper_moves_the_inputs() -> None:
    inputs = _one(3, 0, previous=(_one(2, 1),), ego_motion=torch.eye(4)[None, None])
    moved = to_device({"inputs": inputs, "tokens": ["a"]}, torch.device("meta"))["inputs"]
    assert isinstance(moved, SceneInputs) and moved.frame == "lidar"
    # every tensor field, a field added later included (SceneInputs._map must list it)
    tensors = [
        f.name
        for f in dataclasses.fields(moved)
        if isinstance(getattr(inputs, f.name), torch.Tensor)
    ]
    assert {"img", "projection", "points", "intrinsics", "extrinsics", "ego_motion"} <= set(tensors)
    for name in tensors:
        assert getattr(moved, name).device.type == "meta", name
    assert moved.previous[0].img.device.type == "meta" and moved.ego_motion.device.type == "meta"
    assert inputs.img.device.type == "cpu"  # a copy: the original stays
    assert moved.replace(points=None).points is None and moved.points is not None
