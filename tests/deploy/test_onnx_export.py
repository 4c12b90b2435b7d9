"""Exported tiny models (TPV, BEV, occupancy-style) and a Base-shaped one run in ONNX Runtime
on inputs unlike the export example and agree with PyTorch; the graph holds standard
operators only, passes the ONNX checker and strict shape inference, and carries its config."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from deploy_helpers import (
    BASE_REDUCED,
    OCC_TINY,
    assert_matches_pytorch,
    randomized_model,
    tiny_config,
)

from tpvkit.config import task_of, to_dict
from tpvkit.deploy import (
    compare_with_pytorch,
    config_from_onnx,
    export_onnx,
    graph_operator_types,
    onnx_session,
    random_inputs,
    read_metadata,
)
from tpvkit.deploy.export import example_inputs
from tpvkit.deploy.graph import InferenceGraph, img_hw, padded_img_hw
from tpvkit.errors import TpvkitError

ALL_OUTPUTS = ("points", "voxels", "argmax")
# (seed, number of points): another rig pose, focal length, images and point count than the
# export example (the rig at rest, zero images, 64 points).
CHECK_SEEDS = [(1, 333)]
# A one-block tiny model where the test is about the export machinery, not the architecture.
ONE_BLOCK = ["model.encoder.num_hcab=1", "model.encoder.num_hab=0"]


def _check_graph(path) -> onnx.ModelProto:
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    ops = graph_operator_types(proto)
    assert {d for d, _ in ops} == {""}, ops  # the standard domain only, no custom op
    for _, op in ops:
        assert onnx.defs.has(op, ""), op
    assert ("", "GridSample") in ops  # the deformable attention, as a standard op
    return proto


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("tpv_tiny", []),
        ("bev_tiny", []),
        ("tpv_tiny", OCC_TINY),
        ("tpv_tiny", ["model.depth.bins=6", "model.depth.max_depth=30"]),
    ],
    ids=["tpv_tiny", "bev_tiny", "occ_tiny", "depth_aware"],
)
def test_tiny_exports_agree_with_pytorch_on_new_inputs(tmp_path, name, overrides) -> None:
    cfg = tiny_config(name, overrides)
    model = randomized_model(cfg)
    out = tmp_path / "model.onnx"
    result = export_onnx(model, cfg, out, outputs=ALL_OUTPUTS)
    assert result.path == out and out.stat().st_size == result.num_bytes
    proto = _check_graph(out)
    meta = read_metadata(out)
    assert json.loads(meta["tpvkit.outputs"]) == ["point_logits", "voxel_logits", "voxel_argmax"]
    assert json.loads(meta["tpvkit.img_hw"]) == list(img_hw(cfg)) == cfg.data.img_size
    assert to_dict(config_from_onnx(out)) == to_dict(cfg)
    # the point count is dynamic in the graph, the rest of the I/O is fixed
    points = next(i for i in proto.graph.input if i.name == "points")
    assert points.type.tensor_type.shape.dim[1].dim_param == "num_points"
    # The new inputs move the rig, so each camera sees other queries than at export: a packing
    # frozen at the export example would be wrong here.
    _, example_l2i, _ = example_inputs(cfg)
    new_l2i = random_inputs(cfg, seed=CHECK_SEEDS[0][0]).lidar2img
    seen = [
        model.encoder.camera_hits(l2i, padded_img_hw(cfg))[0].valid.sum(-1)
        for l2i in (example_l2i, new_l2i)
    ]
    assert not torch.equal(seen[0], seen[1])
    assert_matches_pytorch(out, model, cfg, ALL_OUTPUTS, CHECK_SEEDS)
    # Any point count runs, down to one point, and a point's logits do not depend on the others.
    session = onnx_session(out)
    inputs = random_inputs(cfg, seed=2, num_points=5)
    many = session.run(["point_logits"], inputs.feeds(["img", "lidar2img", "points"]))[0]
    inputs.points = inputs.points[:, 3:4]
    one = session.run(["point_logits"], inputs.feeds(["img", "lidar2img", "points"]))[0]
    assert one.shape == (1, cfg.model.num_classes, 1)
    np.testing.assert_allclose(one[..., 0], many[..., 3], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_the_check_catches_a_graph_with_frozen_camera_packing(tmp_path) -> None:
    """The packed camera slots traced as they are freeze the example's slot count: on another
    calibration ONNX Runtime then fails or disagrees, which the comparison reports."""
    cfg = tiny_config("tpv_tiny", ONE_BLOCK)
    model = randomized_model(cfg)
    out = tmp_path / "frozen.onnx"
    img, l2i, points = example_inputs(cfg)
    with model.export_mode(), torch.no_grad(), pytest.warns(torch.jit.TracerWarning):
        model.encoder.export = False  # the packing of eval: what the exporter must not trace
        torch.onnx.export(
            InferenceGraph(model, ("points",), label_space=task_of(cfg).label_space).eval(),
            (img, l2i, points),
            str(out),
            dynamo=False,
            opset_version=17,
            input_names=["img", "lidar2img", "points"],
            output_names=["point_logits"],
            dynamic_axes={"points": {1: "num_points"}, "point_logits": {2: "num_points"}},
        )
    inputs = random_inputs(cfg, seed=1, num_points=200)
    try:
        report = compare_with_pytorch(out, model, cfg, inputs, ("points",))
    except Exception:  # ONNX Runtime refuses the frozen reshape: also a detected failure
        return
    assert not report.passed(1e-4), "\n".join(report.lines())


@pytest.mark.slow
def test_base_shaped_export_agrees(tmp_path) -> None:
    cfg = tiny_config("tpv_lidarseg_base", BASE_REDUCED)
    assert cfg.model.backbone.depth == 101 and any(cfg.model.backbone.dcn_stages)
    model = randomized_model(cfg)
    out = tmp_path / "base.onnx"
    export_onnx(model, cfg, out, outputs=("points", "argmax"))
    _check_graph(out)
    assert_matches_pytorch(out, model, cfg, ("points", "argmax"), [(3, 500)])


@pytest.mark.slow
def test_fp16_export_runs_close_to_float32(tmp_path) -> None:
    cfg = tiny_config("tpv_tiny", ONE_BLOCK)
    model = randomized_model(cfg)
    out = tmp_path / "half.onnx"
    result = export_onnx(model, cfg, out, outputs=("points",), fp16=True)
    proto = _check_graph(out)
    assert read_metadata(out)["tpvkit.fp16"] == "true"
    weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert sum(int(np.prod(t.dims)) for t in weights) > 0.9 * sum(
        p.numel() for p in model.parameters()
    )
    io_types = {v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]}
    assert io_types == {onnx.TensorProto.FLOAT}
    report = compare_with_pytorch(out, model, cfg, random_inputs(cfg, seed=4), ("points",))
    (points,) = report.outputs
    # half precision: a few 1e-2 off in the logits, the class almost everywhere the same
    assert points.max_abs_err < 0.1 and points.argmax_agreement > 0.97, points.line()
    assert result.fp16


def test_export_leaves_the_model_as_it_was(tmp_path) -> None:
    cfg = tiny_config("tpv_tiny", ONE_BLOCK)
    model = randomized_model(cfg).train()
    backends = [m.msda_backend for m in model.modules() if hasattr(m, "msda_backend")]
    export_onnx(model, cfg, tmp_path / "m.onnx", outputs=("argmax",))
    assert model.training and not any(getattr(m, "export", False) for m in model.modules())
    assert backends == [m.msda_backend for m in model.modules() if hasattr(m, "msda_backend")]
    assert all("forward" not in vars(m) for m in model.modules())
    session = onnx_session(tmp_path / "m.onnx")
    assert [i.name for i in session.get_inputs()] == ["img", "lidar2img"]
    assert [o.name for o in session.get_outputs()] == ["voxel_argmax"]


def test_bad_options_are_refused_before_any_work(tmp_path) -> None:
    cfg = tiny_config("tpv_tiny")
    model = randomized_model(cfg)
    with pytest.raises(TpvkitError, match="--opset 15"):
        export_onnx(model, cfg, tmp_path / "m.onnx", opset=15)
    with pytest.raises(TpvkitError, match="--outputs: unknown output 'logits'"):
        export_onnx(model, cfg, tmp_path / "m.onnx", outputs="points,logits")
    with pytest.raises(TpvkitError, match="is a folder"):
        export_onnx(model, cfg, tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TpvkitError, match="not written by `tpvkit deploy`"):
        bare = tmp_path / "bare.onnx"
        node = onnx.helper.make_node("Identity", ["x"], ["y"])
        info = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in "xy"]
        graph = onnx.helper.make_graph([node], "g", [info[0]], [info[1]])
        onnx.save(onnx.helper.make_model(graph), str(bare))
        read_metadata(bare)


def test_metadata_states_the_image_contract(tmp_path) -> None:
    """The file says what "img" must hold (plain RGB, 0..255, NCHW per camera, the size) and
    what the graph does with it; feeding the normalised images of tpvkit 0.2 instead gives
    other logits (the contract is not decoration)."""
    cfg = tiny_config("tpv_tiny", ONE_BLOCK)
    model = randomized_model(cfg)
    out = tmp_path / "m.onnx"
    export_onnx(model, cfg, out, outputs=("points",))
    meta = read_metadata(out)
    assert meta["tpvkit.format_version"] == "2"
    contract = json.loads(meta["tpvkit.image_contract"])
    h, w = cfg.data.img_size
    assert contract["dtype"] == "float32" and contract["channel_order"] == "RGB"
    assert contract["value_range"] == [0.0, 255.0]
    assert contract["shape"] == [1, cfg.model.encoder.num_cams, 3, h, w]
    assert contract["layout"].startswith("NCHW")
    inside = contract["normalised_inside"]
    assert inside["pixel_mean"] == cfg.data.img_mean and inside["pixel_std"] == cfg.data.img_std
    assert inside["channel_order"] == ("RGB" if cfg.data.to_rgb else "BGR")
    assert inside["padded_to"] == list(padded_img_hw(cfg))
    session = onnx_session(out)
    (img_input,) = [i for i in session.get_inputs() if i.name == "img"]
    assert list(img_input.shape) == contract["shape"]
    inputs = random_inputs(cfg, seed=5, num_points=50)
    assert float(inputs.img.min()) >= 0 and float(inputs.img.max()) <= 255
    report = compare_with_pytorch(out, model, cfg, inputs, ("points",))
    assert report.passed(1e-4), "\n".join(report.lines())
    rgb = session.run(None, inputs.feeds(["img", "lidar2img", "points"]))[0]
    mean = torch.tensor(cfg.data.img_mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(cfg.data.img_std).view(1, 1, 3, 1, 1)
    inputs.img = (inputs.img - mean) / std
    normalised_twice = session.run(None, inputs.feeds(["img", "lidar2img", "points"]))[0]
    assert np.abs(rgb - normalised_twice).max() > 1e-2
