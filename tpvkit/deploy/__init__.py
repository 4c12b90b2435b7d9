"""Deployment: export a trained TPVFormer to one ONNX file of standard operators that ONNX
Runtime (or TensorRT) runs with PyTorch's outputs; check it; read its metadata back.

The I/O contract is in tpvkit.deploy.graph and docs/deploy.md. Needs the optional `deploy`
dependencies (onnx, onnxruntime): pip install 'tpvkit[deploy]'.
"""

from __future__ import annotations

from tpvkit.deploy.check import (
    CheckReport,
    GraphInputs,
    OutputCheck,
    compare_with_pytorch,
    graph_operator_types,
    onnx_session,
    random_inputs,
    rig_lidar2img,
)
from tpvkit.deploy.export import (
    CHECK_MAX_ABS_ERR,
    DEFAULT_OPSET,
    MIN_OPSET,
    ExportResult,
    deploy,
    export_onnx,
)
from tpvkit.deploy.graph import (
    DEFAULT_OUTPUTS,
    OUTPUT_CHOICES,
    InferenceGraph,
    image_contract,
    img_hw,
    padded_img_hw,
    parse_outputs,
)
from tpvkit.deploy.metadata import build_metadata, config_from_onnx, read_metadata, task_from_onnx

__all__ = [
    "CHECK_MAX_ABS_ERR",
    "DEFAULT_OPSET",
    "DEFAULT_OUTPUTS",
    "MIN_OPSET",
    "OUTPUT_CHOICES",
    "CheckReport",
    "ExportResult",
    "GraphInputs",
    "InferenceGraph",
    "OutputCheck",
    "build_metadata",
    "compare_with_pytorch",
    "config_from_onnx",
    "deploy",
    "export_onnx",
    "graph_operator_types",
    "image_contract",
    "img_hw",
    "onnx_session",
    "padded_img_hw",
    "parse_outputs",
    "random_inputs",
    "read_metadata",
    "rig_lidar2img",
    "task_from_onnx",
]
