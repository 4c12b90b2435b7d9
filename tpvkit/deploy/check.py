"""Checking an exported file: fresh random inputs (a moved camera rig, new images and points),
ONNX Runtime against the PyTorch model on them, and the list of operators a graph uses.

The inputs are deliberately unlike the export example (another rig pose, focal length, point
count), so a value the tracer froze into the graph would show up as a mismatch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tpvkit.config import Config, task_of
from tpvkit.data.inputs import SceneInputs
from tpvkit.deploy.graph import OUTPUT_CHOICES, img_hw
from tpvkit.errors import TpvkitError
from tpvkit.models.tpvformer import TPVFormer

# Two classes whose reference logits are closer than this are a tie: either argmax is right.
TIE_TOLERANCE = 1e-4


def rig_lidar2img(
    cfg: Config,
    yaw: float = 0.0,
    shift: Sequence[float] = (0.0, 0.0, 0.0),
    focal_scale: float = 1.0,
) -> torch.Tensor:
    """(1, N_cam, 4, 4) float32 lidar2img of the nuScenes rig for the config's images, with the
    whole rig turned by `yaw` (radians, about LiDAR z), moved by `shift` (metres) and its focal
    lengths scaled. Camera i is the rig's camera i modulo 6."""
    from tpvkit.data.synthetic_render import rig_lidar2img as plain_rig

    h, w = (int(v) for v in cfg.data.img_size)
    # The moved rig: cam2lidar' = M @ cam2lidar with M the rig's motion in the LiDAR frame.
    motion = np.eye(4)
    c, s = math.cos(yaw), math.sin(yaw)
    motion[:3, :3] = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
    motion[:3, 3] = np.asarray(shift, dtype=np.float64)
    mats = plain_rig(w, h, cfg.model.encoder.num_cams, motion, focal_scale)
    return torch.from_numpy(mats)[None]


@dataclass
class GraphInputs:
    """One set of inputs of the exported graph (see tpvkit.deploy.graph)."""

    img: torch.Tensor  # (1, N_cam, 3, H, W) RGB in [0, 255]
    lidar2img: torch.Tensor  # (1, N_cam, 4, 4)
    points: torch.Tensor  # (1, P, 3)

    def feeds(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        return {n: getattr(self, n).numpy() for n in names}

    def scene(self, frame: str) -> SceneInputs:
        """The same inputs as the model takes them (lidar2img maps from `frame`)."""
        return SceneInputs(img=self.img, projection=self.lidar2img, frame=frame, points=self.points)


def random_inputs(cfg: Config, seed: int, num_points: int = 1000) -> GraphInputs:
    """Random RGB images (uniform in [0, 255]), the rig at a random pose and focal length, and
    points spread over the point-cloud range and a little beyond it (the head clamps or
    zero-pads those)."""
    g = torch.Generator().manual_seed(seed)
    h, w = img_hw(cfg)
    n = cfg.model.encoder.num_cams

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    lidar2img = rig_lidar2img(
        cfg,
        yaw=uniform(-math.pi, math.pi),
        shift=(uniform(-3.0, 3.0), uniform(-3.0, 3.0), uniform(-0.5, 0.5)),
        focal_scale=uniform(0.8, 1.25),
    )
    img = torch.rand(1, n, 3, h, w, generator=g) * 255
    pcr = torch.tensor(cfg.model.point_cloud_range, dtype=torch.float32)
    lo, hi = pcr[:3], pcr[3:]
    margin = 0.05 * (hi - lo)
    points = (lo - margin) + torch.rand(1, num_points, 3, generator=g) * (hi - lo + 2 * margin)
    return GraphInputs(img=img, lidar2img=lidar2img, points=points)


@dataclass
class OutputCheck:
    """One output of the graph against PyTorch."""

    name: str
    max_abs_err: float  # 0 for voxel_argmax
    argmax_agreement: float  # fraction of points / voxels with the same class
    mismatches_beyond_ties: int  # argmax differences where the reference is not a tie
    count: int  # points or voxels compared

    def line(self) -> str:
        err = f"max abs error {self.max_abs_err:.3g}, " if self.name != "voxel_argmax" else ""
        return (
            f"{self.name}: {err}argmax agreement {100 * self.argmax_agreement:.3f}% of "
            f"{self.count} ({self.mismatches_beyond_ties} differences beyond ties)"
        )


@dataclass
class CheckReport:
    outputs: list[OutputCheck] = field(default_factory=list)
    seconds_onnxruntime: float = 0.0
    seconds_pytorch: float = 0.0

    def passed(self, max_abs_err: float) -> bool:
        return all(
            o.mismatches_beyond_ties == 0
            and (o.name == "voxel_argmax" or o.max_abs_err <= max_abs_err)
            for o in self.outputs
        )

    def lines(self) -> list[str]:
        timing = (
            f"one forward: ONNX Runtime {self.seconds_onnxruntime:.2f} s, "
            f"PyTorch {self.seconds_pytorch:.2f} s"
        )
        return [o.line() for o in self.outputs] + [timing]


def _real_class_argmax(logits: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """logits (1, n_cls, ...) -> classes (1, ...), the label space's ignored class excluded."""
    from tpvkit.outputs.metrics import predict_classes

    if ignore_index is None:
        return logits.double().argmax(dim=1)
    return predict_classes(logits.double(), class_dim=1, ignore_index=ignore_index)


def _argmax_check(
    name: str,
    reference: torch.Tensor,
    predicted: torch.Tensor,
    err: float,
    ignore_index: int | None,
) -> OutputCheck:
    """reference logits (1, n_cls, ...) vs predicted classes (1, ...)."""
    ref = reference.double()
    ref_cls = _real_class_argmax(ref, ignore_index)
    same = predicted == ref_cls
    # A mismatch is a tie when the predicted class's reference logit is within the tolerance
    # of the best one: float noise may legitimately pick either.
    masked = ref.clone()
    if ignore_index is not None:
        masked[:, ignore_index] = float("-inf")
    best = masked.max(dim=1).values
    at_pred = masked.gather(1, predicted.clamp(0, ref.shape[1] - 1).long().unsqueeze(1))[:, 0]
    tie = (best - at_pred) <= TIE_TOLERANCE
    return OutputCheck(
        name=name,
        max_abs_err=err,
        argmax_agreement=float(same.double().mean()),
        mismatches_beyond_ties=int((~same & ~tie).sum()),
        count=int(same.numel()),
    )


def onnx_session(path: str | Path, threads: int = 0):
    """An ONNX Runtime CPU session for `path` (threads 0: ONNX Runtime's default)."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise TpvkitError(
            "checking an export needs onnxruntime: pip install 'tpvkit[deploy]'"
        ) from err
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: constant-folding notes are not for users
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare_with_pytorch(
    path: str | Path,
    model: TPVFormer,
    cfg: Config,
    inputs: GraphInputs,
    outputs: Sequence[str],
    session=None,
) -> CheckReport:
    """Run the exported file on `inputs` with ONNX Runtime and `model` (as tpvkit runs it for
    eval: packed camera slots, its own MSDA backend, float32) and compare every output."""
    import time

    session = session if session is not None else onnx_session(path)
    names = [i.name for i in session.get_inputs()]
    t0 = time.perf_counter()
    got = session.run(None, inputs.feeds(names))
    t1 = time.perf_counter()
    training = model.training
    model.eval()
    decode = "voxels" in outputs or "argmax" in outputs
    try:
        with torch.inference_mode():
            ref = model(
                inputs.scene(model.input_frame),
                decode_voxels=decode,
                decode_points="points" in outputs,
            )
    finally:
        model.train(training)
    t2 = time.perf_counter()
    report = CheckReport(seconds_onnxruntime=t1 - t0, seconds_pytorch=t2 - t1)
    ignore = task_of(cfg).label_space.ignore_index
    by_name = dict(zip([o.name for o in session.get_outputs()], got, strict=True))
    for key in outputs:
        name = OUTPUT_CHOICES[key]
        value = torch.from_numpy(np.asarray(by_name[name]))
        if name == "voxel_argmax":
            report.outputs.append(
                _argmax_check(name, ref["voxel_logits"], value.long(), 0.0, ignore)
            )
            continue
        reference = ref[name]
        if value.shape != reference.shape:
            raise TpvkitError(
                f"{path}: output {name} has shape {tuple(value.shape)}, PyTorch gives "
                f"{tuple(reference.shape)}; export again with this tpvkit"
            )
        err = float((value.double() - reference.double()).abs().max()) if value.numel() else 0.0
        predicted = _real_class_argmax(value, ignore)
        report.outputs.append(_argmax_check(name, reference, predicted, err, ignore))
    return report


def graph_operator_types(model_proto) -> set[tuple[str, str]]:
    """{(domain, op_type)} of every node of an onnx.ModelProto, subgraphs included; the
    standard domain is ''."""
    found: set[tuple[str, str]] = set()

    def walk(graph) -> None:
        for node in graph.node:
            found.add((node.domain, node.op_type))
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(model_proto.graph)
    return found
