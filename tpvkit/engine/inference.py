"""The one inference path: load a checkpoint for inference, and one loop that feeds every batch
and the model's outputs to sinks (confusion matrices, submission files, prediction files).

`tpvkit eval`, `tpvkit predict`, the demo and the training loop's validation all run through
`run_inference`; docs/internals.md describes the sink protocol and the checkpoint contract.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from tpvkit.config import Config, ConfigError, apply_overrides, from_dict, task_of
from tpvkit.constants import CLASS_NAMES, NUM_CLASSES
from tpvkit.engine.checkpoint import (
    CheckpointError,
    apply_model_weights,
    check_contract,
    is_tpvkit_checkpoint,
    load_checkpoint_file,
)
from tpvkit.engine.distributed import reduce_over_ranks, select_device, to_device
from tpvkit.outputs.metrics import ConfusionMatrix, iou_dict, nan_to_none, predict_classes
from tpvkit.outputs.submission import SubmissionWriter
from tpvkit.task import Task


@runtime_checkable
class InferenceSink(Protocol):
    """What `run_inference` feeds: every batch and the model's outputs for it.

    `batch` is the collate_batch dict on the device; `out` holds "point_logits" (B, C, Nmax)
    and, when any sink sets `needs_voxels`, "voxel_logits" (B, C, X, Y, Z). `finish` returns
    the sink's results, summed over the DDP ranks inside the sink where that applies.
    """

    needs_voxels: bool

    def add(self, batch: Mapping[str, Any], out: Mapping[str, torch.Tensor]) -> None: ...

    def finish(self) -> dict[str, Any]: ...


# ---------------------------------------------------------------------------------------------
# Loading a checkpoint for inference


@dataclass
class InferenceModel:
    """A model ready for inference with the config and the task it runs under."""

    model: nn.Module  # in eval mode, on `device`
    cfg: Config
    task: Task  # task_of(cfg): stated by the config, or inferred once when it was loaded
    device: torch.device
    checkpoint: Path
    source: str  # "tpvkit" | "state_dict" | "public"
    config_from: str  # "checkpoint" (the stored config) | "given"
    meta: dict[str, Any] = field(default_factory=dict)  # iteration, epoch, tpvkit_version


def _stored_config(obj: Any, path: Path) -> dict[str, Any] | None:
    if is_tpvkit_checkpoint(obj) and isinstance(obj.get("config"), Mapping):
        return dict(obj["config"])
    return None


def resolve_inference_config(
    obj: Any, path: Path, cfg: Config | None, overrides: Sequence[str] = ()
) -> tuple[Config, str]:
    """(config, "checkpoint" | "given"): the stored config unless one is given; overrides on top.

    A given config is checked against the stored one when the weights are applied
    (tpvkit.engine.checkpoint.contract_differences).
    """
    stored = _stored_config(obj, path)
    if cfg is None:
        if stored is None:
            what = "a public TPVFormer checkpoint" if _looks_public(obj) else "a bare state dict"
            raise CheckpointError(
                f"give CONFIG: {path} is {what} and stores no config "
                "(e.g. `tpvkit eval tpv_lidarseg_base CHECKPOINT ...`)"
            )
        try:
            cfg = from_dict(stored)
        except ConfigError as err:
            raise CheckpointError(
                f"the config stored in {path} does not load in this tpvkit ({err}); give CONFIG"
            ) from err
        # The dataroot of the training machine is a path, not part of the contract: the info
        # file's own dataroot applies unless --set data.dataroot=... says otherwise.
        cfg.data.dataroot = ""
        origin = "checkpoint"
    else:
        origin = "given"
    if overrides:
        cfg = apply_overrides(cfg, list(overrides))
    return cfg, origin


def _looks_public(obj: Any) -> bool:
    from tpvkit.engine.checkpoint import PUBLIC_PREFIXES

    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else {}
    return isinstance(state, Mapping) and any(
        str(k).removeprefix("module.").startswith(PUBLIC_PREFIXES) for k in state
    )


def load_for_inference(
    checkpoint: str | Path,
    cfg: Config | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
) -> InferenceModel:
    """Read `checkpoint`, settle its config, build the model, load and check its weights.

    The config is the one the checkpoint stores unless `cfg` is given (then the two must agree
    on the input contract: model.* less the runtime keys, and data.INPUT_CONTRACT_KEYS);
    `overrides` ("key=value") apply on top of either and are checked the same way. A public
    TPVFormer checkpoint stores no config and needs `cfg`. `device` ("auto" | "cpu" | "cuda")
    defaults to cfg.train.device.
    """
    from tpvkit.models.tpvformer import build_model

    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found: {path} (give the .pth written by train)"
            + (" (it is a directory)" if path.is_dir() else "")
        )
    obj = load_checkpoint_file(path)
    cfg, origin = resolve_inference_config(obj, path, cfg, overrides)
    stored = _stored_config(obj, path)
    if stored is not None:  # before the model is built: a mismatch may not even build
        check_contract(stored, cfg, path)
    torch_device = select_device(device or cfg.train.device)
    model = build_model(cfg)
    meta = apply_model_weights(model, obj, cfg, path)
    model.to(torch_device).eval()
    return InferenceModel(
        model=model,
        cfg=cfg,
        task=task_of(cfg),
        device=torch_device,
        checkpoint=path,
        source=meta.pop("source"),
        config_from=origin,
        meta=meta,
    )


def inference_loader(
    cfg: Config, info_set: Any, device: torch.device, batch_size: int | None = None
) -> torch.utils.data.DataLoader:
    """The evaluation DataLoader of an InfoSet: no augmentation, no shuffling, sample order."""
    from tpvkit.data.dataset import LidarSegDataset, build_dataloader

    dataset = LidarSegDataset(info_set, cfg.data, cfg.model, train=False)
    return build_dataloader(
        dataset,
        batch_size=batch_size or cfg.eval.batch_size,
        num_workers=cfg.data.num_workers,
        shuffle=False,
        pin_memory=device.type == "cuda",
    )


# ---------------------------------------------------------------------------------------------
# The loop


def run_inference(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    device: torch.device | str,
    sinks: Sequence[InferenceSink],
    progress: bool = True,
    desc: str = "infer",
) -> list[dict[str, Any]]:
    """Feed every batch of `loader` (moved to `device`) and the model's outputs to `sinks`.

    Runs under torch.inference_mode with the model in eval mode (its mode is restored after);
    voxel logits are decoded only when a sink needs them. Returns each sink's `finish()`, in
    the order of `sinks`.
    """
    device = torch.device(device)
    needs_voxels = any(sink.needs_voxels for sink in sinks)
    iterator: Iterable[Mapping[str, Any]] = loader
    if progress:
        from tpvkit.utils.progress import track

        iterator = track(loader, _len_or_none(loader), desc, "batch", leave=desc != "validate")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in iterator:
                batch = to_device(batch, device)
                out = model(batch["inputs"], decode_voxels=needs_voxels)
                for sink in sinks:
                    sink.add(batch, out)
    finally:
        model.train(was_training)
    return [sink.finish() for sink in sinks]


def _len_or_none(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


# ---------------------------------------------------------------------------------------------
# Sinks


class LidarSegSink:
    """Devkit-exact lidarseg confusion matrices of point queries and of voxel look-ups.

    "points": each LiDAR point is a query; "voxels" (with `voxel_metrics`): each point takes the
    class of the voxel it falls in (point_voxel_index) of the decoded volume. Only the 16 real
    classes are scored: an occupancy model's extra "empty" logit is dropped (a LiDAR return is
    never free space) and the ignore class is never predicted. Padding beyond num_points is
    never scored.
    """

    logged_keys = ("miou", "miou_voxel", "num_samples")
    shown_keys = ("miou",)

    def __init__(self, voxel_metrics: bool = True) -> None:
        self.needs_voxels = voxel_metrics
        self.cm_points = ConfusionMatrix(NUM_CLASSES)
        self.cm_voxels = ConfusionMatrix(NUM_CLASSES)
        self.num_samples = 0
        self.num_points = 0

    def add(self, batch: Mapping[str, Any], out: Mapping[str, torch.Tensor]) -> None:
        point_pred = predict_classes(out["point_logits"][:, :NUM_CLASSES]).cpu()  # (B, Nmax)
        voxel_pred = None
        if self.needs_voxels:
            voxel_pred = predict_classes(out["voxel_logits"][:, :NUM_CLASSES])  # (B, X, Y, Z)
        num_points = batch["num_points"].cpu()
        labels = batch.get("point_labels")
        labels = labels.cpu() if labels is not None else None
        for b in range(point_pred.shape[0]):
            n = int(num_points[b])
            if labels is not None:
                self.cm_points.update(labels[b, :n], point_pred[b, :n])
                if voxel_pred is not None:
                    idx = batch["point_voxel_index"][b, :n]  # (n, 3) voxel (x, y, z)
                    vox_b = voxel_pred[b, idx[:, 0], idx[:, 1], idx[:, 2]].cpu()
                    self.cm_voxels.update(labels[b, :n], vox_b)
            self.num_points += n
        self.num_samples += point_pred.shape[0]

    def finish(self) -> dict[str, Any]:
        """miou, iou_per_class, freq_weighted_iou (and "_voxel" twins), counts, matrices."""
        totals = torch.tensor([self.num_samples, self.num_points], dtype=torch.int64)
        # the matrices are summed in place through tensors that share their numpy memory
        matrices = [torch.from_numpy(cm.matrix) for cm in (self.cm_points, self.cm_voxels)]
        reduce_over_ranks([*matrices, totals])
        # A split without labels (v1.0-test) has no point_labels, or labels that are all ignore.
        has_labels = self.cm_points.num_points > 0

        def scores(cm: ConfusionMatrix, enabled: bool) -> tuple[Any, Any, Any, Any]:
            if not (enabled and has_labels):
                return None, None, None, None
            iou = iou_dict(cm.iou_per_class(), CLASS_NAMES)
            miou, fwiou = nan_to_none(cm.miou()), nan_to_none(cm.freq_weighted_iou())
            return miou, iou, fwiou, cm.matrix.tolist()

        miou, iou, fwiou, matrix = scores(self.cm_points, True)
        miou_v, iou_v, fwiou_v, matrix_v = scores(self.cm_voxels, self.needs_voxels)
        return {
            "miou": miou,
            "iou_per_class": iou,
            "freq_weighted_iou": fwiou,
            "miou_voxel": miou_v,
            "iou_per_class_voxel": iou_v,
            "freq_weighted_iou_voxel": fwiou_v,
            "num_samples": int(totals[0]),
            "num_points": int(totals[1]),
            "num_labelled_points": self.cm_points.num_points if has_labels else 0,
            "confusion_matrix": matrix,
            "confusion_matrix_voxel": matrix_v,
        }

    def print_results(self, results: Mapping[str, Any], title: str) -> None:
        """The per-class table of the points (and the voxel look-ups when scored), mIoU row."""
        from tpvkit.outputs.metrics import print_iou_table

        if results.get("iou_per_class") is None:
            print(f"{title}: no ground-truth labels, nothing to score" if title else "no labels")
            return
        columns = {"points": results["iou_per_class"]}
        mious = {"points": results["miou"]}
        if results.get("iou_per_class_voxel") is not None:
            columns["voxels"] = results["iou_per_class_voxel"]
            mious["voxels"] = results["miou_voxel"]
        print_iou_table(columns, mious, title)


class SubmissionSink:
    """Writes each cloud's point predictions in the official lidarseg submission layout."""

    needs_voxels = False
    logged_keys: tuple[str, ...] = ()
    shown_keys: tuple[str, ...] = ()
    writes = "prediction files"  # what `tpvkit eval --save-predictions` says it wrote

    def __init__(self, writer: SubmissionWriter) -> None:
        self.writer = writer

    def add(self, batch: Mapping[str, Any], out: Mapping[str, torch.Tensor]) -> None:
        point_pred = predict_classes(out["point_logits"][:, :NUM_CLASSES]).cpu()  # (B, Nmax)
        num_points = batch["num_points"].cpu()
        for b in range(point_pred.shape[0]):
            n = int(num_points[b])
            self.writer.add(batch["lidar_tokens"][b], point_pred[b, :n], num_points=n)

    def finish(self) -> dict[str, Any]:
        """{"submission_meta": the path of submission.json}."""
        return {"submission_meta": str(self.writer.finish())}

    def print_results(self, results: Mapping[str, Any], title: str) -> None:
        pass  # the command says where it wrote


class PredictionFileSink:
    """One prediction file (.npz, tpvkit.outputs.prediction_file) per sample into `out_dir`.

    `info_set` holds the samples the loader yields (matched by their sample token), for the
    camera and pose fields of the files.
    """

    needs_voxels = True

    def __init__(
        self, cfg: Config, info_set: Any, out_dir: str | Path, save_confidence: bool = False
    ) -> None:
        self.cfg = cfg
        self.info_set = info_set
        self.out_dir = Path(out_dir)
        self.save_confidence = save_confidence
        self.samples = {str(s["token"]): s for s in info_set.samples}
        self.written: list[Path] = []
        # the dense ground truth (Occ3D) goes with a task scored on it (its grid, its frame)
        self.dense_gt = task_of(cfg).scored_on == "dense"

    def add(self, batch: Mapping[str, Any], out: Mapping[str, torch.Tensor]) -> None:
        from tpvkit.outputs.predict import build_prediction
        from tpvkit.outputs.prediction_file import safe_file_stem, save_prediction

        for b, token in enumerate(batch["tokens"]):
            sample = self.samples[str(token)]
            n = int(batch["num_points"][b])
            has_gt = bool(sample.get("lidarseg_path")) and "point_labels" in batch
            dense = self.dense_gt and "occ_semantics" in batch
            occ = {
                key: _numpy(batch[key][b]) if dense else None
                for key in ("occ_semantics", "occ_mask_camera", "occ_mask_lidar")
            }
            pred = build_prediction(
                self.cfg,
                self.info_set,
                sample,
                voxel_logits=out["voxel_logits"][b],
                point_logits=out["point_logits"][b, :, :n],
                points=_numpy(batch["inputs"].points[b, :n]),
                point_voxel_index=_numpy(batch["point_voxel_index"][b, :n]),
                gt_point_labels=_numpy(batch["point_labels"][b, :n]) if has_gt else None,
                gt_voxel_labels=_numpy(batch["voxel_labels"][b]) if has_gt else None,
                save_confidence=self.save_confidence,
                **occ,
            )
            path = self.out_dir / f"{safe_file_stem(pred.token)}.npz"
            self.written.append(save_prediction(pred, path))

    def finish(self) -> dict[str, Any]:
        """{"written": [paths of this rank's files, in loader order]}."""
        return {"written": list(self.written)}


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()
