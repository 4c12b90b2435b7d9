"""What an exported file says about itself: ONNX metadata_props with the full tpvkit config
(JSON), its task (label space, grid; tpvkit.task), the I/O contract and the export settings,
and the way back to a Config and a Task."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

import tpvkit
from tpvkit.config import Config, from_dict, task_of, to_dict
from tpvkit.deploy.graph import image_contract, img_hw, input_names, output_names
from tpvkit.errors import TpvkitError
from tpvkit.task import Task, task_from_dict, task_to_dict

METADATA_FORMAT = "tpvkit-onnx"
# 2: "img" is plain RGB (0..255) at data.img_size, normalised and padded inside the graph, as
# tpvkit.image_contract states; 1 (tpvkit 0.2): normalised, padded images of size [Hp, Wp].
METADATA_FORMAT_VERSION = 2


def build_metadata(
    cfg: Config, outputs: Sequence[str], *, opset: int, fp16: bool, grid: Sequence[int]
) -> dict[str, str]:
    """key -> string value, every key prefixed "tpvkit."; "tpvkit.config" is the JSON config."""
    h, w = img_hw(cfg)
    task = task_of(cfg)
    return {
        "tpvkit.format": METADATA_FORMAT,
        "tpvkit.format_version": str(METADATA_FORMAT_VERSION),
        "tpvkit.version": tpvkit.__version__,
        "tpvkit.torch_version": str(torch.__version__),
        "tpvkit.config": json.dumps({**to_dict(cfg), "task": task.name}, sort_keys=True),
        "tpvkit.task": json.dumps(task_to_dict(task), sort_keys=True),
        "tpvkit.inputs": json.dumps(input_names(outputs)),
        "tpvkit.outputs": json.dumps(output_names(outputs)),
        "tpvkit.img_hw": json.dumps([h, w]),
        "tpvkit.image_contract": json.dumps(image_contract(cfg), sort_keys=True),
        "tpvkit.grid": json.dumps([int(v) for v in grid]),
        "tpvkit.num_cams": str(cfg.model.encoder.num_cams),
        "tpvkit.num_classes": str(cfg.model.num_classes),
        "tpvkit.opset": str(opset),
        "tpvkit.fp16": json.dumps(bool(fp16)),
    }


def read_metadata(path: str | Path) -> dict[str, str]:
    """The tpvkit metadata of an exported file (without loading its weights into memory)."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and friends
        raise TpvkitError(f"{path} is not a readable ONNX file ({err})") from err
    props = {p.key: p.value for p in model.metadata_props}
    if props.get("tpvkit.format") != METADATA_FORMAT:
        raise TpvkitError(f"{path} was not written by `tpvkit deploy` (no tpvkit metadata)")
    return props


def config_from_onnx(path: str | Path) -> Config:
    """The config an exported file was made from."""
    return from_dict(json.loads(read_metadata(path)["tpvkit.config"]))


def task_from_onnx(path: str | Path) -> Task:
    """The task an exported file was made for (a file without a task record, from before
    tpvkit 0.3: the task of its config, inferred once here)."""
    props = read_metadata(path)
    if "tpvkit.task" in props:
        return task_from_dict(json.loads(props["tpvkit.task"]), str(path))
    return task_of(config_from_onnx(path))
