"""`tpvkit deploy`: trace a TPVFormer into one ONNX file of standard operators, check it, and
write it atomically with the config in its metadata.

Tracing uses torch.onnx's TorchScript-based exporter: the torch.export path cannot trace the
MSDA op's host-side level-size checks (spatial_shapes.tolist()), which the tracer instead
records as the constants they are (they follow from the image size, fixed per export). The one
data-dependent size of the model, the per-camera query packing, is replaced in the model's
export mode (TPVFormer.export_mode) by a packing whose shapes follow from the input shapes.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tpvkit.config import Config, task_of
from tpvkit.deploy.check import CheckReport, compare_with_pytorch, graph_operator_types
from tpvkit.deploy.graph import (
    DEFAULT_OUTPUTS,
    InferenceGraph,
    img_hw,
    input_names,
    output_names,
    parse_outputs,
)
from tpvkit.deploy.metadata import build_metadata
from tpvkit.errors import TpvkitError
from tpvkit.models.tpvformer import TPVFormer
from tpvkit.utils.io import atomic_write_bytes, check_output_file

# GridSample entered the standard domain in opset 16; 17 adds LayerNormalization as one op.
MIN_OPSET = 16
DEFAULT_OPSET = 17
# ONNX Runtime's float32 results match PyTorch's to this (the point-logit budget).
CHECK_MAX_ABS_ERR = 1e-4
# Points in the tracing example; any count runs afterwards (the dimension is dynamic).
EXAMPLE_POINTS = 64


@dataclass
class ExportResult:
    path: Path
    outputs: tuple[str, ...]
    opset: int
    fp16: bool
    num_bytes: int
    operators: list[str]  # sorted op types, all in the standard ONNX domain
    check: CheckReport | None = None


def require_onnx() -> None:
    """Refuse early, in one line, when the optional deploy dependencies are missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise TpvkitError(
            f"tpvkit deploy needs onnx and onnxruntime ({err.name} is missing): "
            "pip install 'tpvkit[deploy]'"
        ) from err


def max_opset() -> int:
    """The newest opset the TorchScript-based exporter of this torch writes."""
    try:
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET

        return int(ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except ImportError:  # private name: fall back to the value of torch 2.1 - 2.13
        return 20


def check_opset(opset: int) -> int:
    top = max_opset()
    if not MIN_OPSET <= opset <= top:
        raise TpvkitError(
            f"--opset {opset}: give {MIN_OPSET}..{top} (GridSample needs opset {MIN_OPSET}; "
            f"{top} is the newest this torch's exporter writes)"
        )
    return opset


def example_inputs(cfg: Config) -> tuple[torch.Tensor, ...]:
    """The tracing example: black images, the nuScenes rig, a few points in the range."""
    from tpvkit.deploy.check import rig_lidar2img

    h, w = img_hw(cfg)
    n = cfg.model.encoder.num_cams
    pcr = torch.tensor(cfg.model.point_cloud_range, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    points = pcr[:3] + torch.rand(1, EXAMPLE_POINTS, 3, generator=g) * (pcr[3:] - pcr[:3])
    return torch.zeros(1, n, 3, h, w), rig_lidar2img(cfg), points


def export_onnx(
    model: TPVFormer,
    cfg: Config,
    out: str | Path,
    *,
    outputs: Sequence[str] | str = DEFAULT_OUTPUTS,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
) -> ExportResult:
    """Export `model` (built from `cfg.model`, weights loaded) to the ONNX file `out`.

    The file passes onnx.checker with full shape inference and holds standard-domain operators
    only; it is written atomically. `model` is left as it was.
    """
    out = check_output_file(out)
    outputs = parse_outputs(outputs)
    check_opset(opset)
    require_onnx()
    import onnx

    img, lidar2img, points = example_inputs(cfg)
    args: tuple[torch.Tensor, ...] = (img, lidar2img)
    dynamic_axes: dict[str, dict[int, str]] = {}
    if "points" in outputs:
        args = (img, lidar2img, points)
        dynamic_axes = {"points": {1: "num_points"}, "point_logits": {2: "num_points"}}
    with model.export_mode(), torch.no_grad():
        net = copy.deepcopy(model).half() if fp16 else model
        space = task_of(cfg).label_space
        graph = InferenceGraph(net, outputs, label_space=space, fp16=fp16).eval()
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            # TracerWarnings flag Python values taken from shapes (fixed per export) and the
            # exporter announces its deprecation; neither is for the user of this command.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                args,
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=input_names(outputs),
                output_names=output_names(outputs),
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.producer_name = "tpvkit"
    proto.doc_string = (
        f"TPVFormer ({cfg.name}) exported by tpvkit deploy; I/O contract in docs/deploy.md"
    )
    for key, value in build_metadata(cfg, outputs, opset=opset, fp16=fp16, grid=model.grid).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    operators = graph_operator_types(proto)
    custom = sorted(f"{d}::{t}" for d, t in operators if d not in ("", "ai.onnx"))
    if custom:  # the tracer fell back to a non-standard op: do not write a file others reject
        raise TpvkitError(f"the export uses non-standard operators {custom}; please report this")
    data = proto.SerializeToString()
    atomic_write_bytes(out, data)
    return ExportResult(
        path=out,
        outputs=outputs,
        opset=opset,
        fp16=fp16,
        num_bytes=len(data),
        operators=sorted(t for _, t in operators),
    )


def deploy(
    checkpoint: str | Path,
    out: str | Path,
    *,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    outputs: Sequence[str] | str = DEFAULT_OUTPUTS,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    check: bool = False,
    seed: int = 0,
    check_points: int = 1000,
) -> ExportResult:
    """`tpvkit deploy`: export a checkpoint's model and, with `check`, compare the file with
    PyTorch in ONNX Runtime on fresh random inputs (`seed`)."""
    from tpvkit.deploy.check import random_inputs

    out = check_output_file(out)  # before any work
    outputs = parse_outputs(outputs)
    check_opset(opset)
    require_onnx()
    from tpvkit.config import load_config
    from tpvkit.engine.inference import load_for_inference

    # the one setup path of eval and predict: the checkpoint's config (or `config`, checked
    # against it), `overrides` on top, the task, the weights; on the CPU, where export traces
    given = load_config(config) if config is not None else None
    loaded = load_for_inference(checkpoint, given, overrides or (), device="cpu")
    model, cfg = loaded.model, loaded.cfg
    result = export_onnx(model, cfg, out, outputs=outputs, opset=opset, fp16=fp16)
    if check:
        inputs = random_inputs(cfg, seed=seed, num_points=check_points)
        result.check = compare_with_pytorch(out, model, cfg, inputs, outputs)
    return result
