"""Every training loss in one place: the terms (Lovasz-softmax, cross-entropy, ...) and the loss
builders that `train.loss` names (LOSSES: name -> builder(cfg) -> LossFn).

The Lovasz-softmax loss (Berman, Rannen Triki and Blaschko, CVPR 2018) is the Lovasz extension of
the per-class Jaccard loss, evaluated on the errors |fg_c - p_c| sorted in decreasing order. The
implementation is vectorised over classes: one sort of a (P, C) error matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tpvkit.config import NO_DEPTH_OVERRIDES, Config, task_of
from tpvkit.constants import IGNORE_INDEX
from tpvkit.data.geometry import padded_image_size
from tpvkit.data.occ3d import OCC3D_FREE, OCC3D_NUM_CLASSES, supervision_mask
from tpvkit.errors import TpvkitError
from tpvkit.models.geometry import project_to_cameras

# A training loss: (model, batch on the device) -> {"loss": the scalar minimised, other terms
# to log}. The model may be DDP-wrapped.
LossFn = Callable[[nn.Module, Mapping[str, Any]], Mapping[str, torch.Tensor]]


def lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. the sorted errors.

    fg_sorted (P, C): 1 where the point belongs to the class, in decreasing-error order per class.
    """
    gts = fg_sorted.sum(0, keepdim=True)  # (1, C)
    intersection = gts - fg_sorted.cumsum(0)
    union = gts + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union  # Jaccard loss of the first i points mispredicted
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)


def lovasz_softmax(
    probs: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int | None = IGNORE_INDEX,
    classes: str | list[int] = "present",
) -> torch.Tensor:
    """Lovasz-softmax loss over all points together (not per image), as in TPVFormer.

    probs: (P, C) class probabilities, or (B, C, ...) which is flattened to (P, C).
    labels: (P,) or (B, ...) integer labels; `ignore_index` points are left out.
    classes: "present" averages over the classes present in the labels, "all" over every class,
    or an explicit list of class indices.
    """
    if probs.dim() > 2:
        probs = probs.movedim(1, -1).reshape(-1, probs.shape[1])  # (B, C, ...) -> (P, C)
    labels = labels.reshape(-1)
    if ignore_index is not None:
        keep = labels != ignore_index
        probs, labels = probs[keep], labels[keep]
    num_classes = probs.shape[1]
    if probs.numel() == 0:
        return probs.sum() * 0.0
    fg = F.one_hot(labels.long(), num_classes).to(probs.dtype)  # (P, C)
    if classes == "present":
        selected = fg.sum(0) > 0
    elif classes == "all":
        selected = torch.ones(num_classes, dtype=torch.bool, device=probs.device)
    else:
        selected = torch.zeros(num_classes, dtype=torch.bool, device=probs.device)
        selected[list(classes)] = True
    if ignore_index is not None and 0 <= ignore_index < num_classes and classes != "present":
        selected[ignore_index] = False
    if not bool(selected.any()):
        return probs.sum() * 0.0
    errors = (fg - probs).abs()[:, selected]  # (P, C_sel)
    fg = fg[:, selected]
    errors_sorted, order = errors.sort(dim=0, descending=True)
    fg_sorted = fg.gather(0, order)
    per_class = (errors_sorted * lovasz_grad(fg_sorted)).sum(0)  # (C_sel,)
    return per_class.mean()


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Mean cross-entropy over non-ignored labels; 0 (with a gradient path) when all are ignored."""
    valid = labels != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels.long(), ignore_index=ignore_index)


def lidarseg_loss(
    point_logits: torch.Tensor | None,
    point_labels: torch.Tensor | None,
    voxel_logits: torch.Tensor | None,
    voxel_labels: torch.Tensor | None,
    lovasz_weight: float = 1.0,
    ce_weight: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, torch.Tensor]:
    """TPVFormer's lidarseg loss: Lovasz-softmax on point logits + cross-entropy on voxel logits.

    point_logits (B, C, N) with point_labels (B, N); voxel_logits (B, C, X, Y, Z) with voxel_labels
    (B, X, Y, Z). Label `ignore_index` (also the padding of collated points) is left out of both.
    Either pair may be None, which drops that term.
    """
    terms: dict[str, torch.Tensor] = {}
    if point_logits is not None and point_labels is not None:
        probs = point_logits.float().softmax(dim=1)
        terms["loss_lovasz"] = lovasz_softmax(probs, point_labels, ignore_index=ignore_index)
    if voxel_logits is not None and voxel_labels is not None:
        terms["loss_ce"] = masked_cross_entropy(voxel_logits.float(), voxel_labels, ignore_index)
    if not terms:
        raise ValueError("lidarseg_loss needs point logits and labels, voxel ones, or both")
    total = torch.zeros((), device=next(iter(terms.values())).device)
    if "loss_lovasz" in terms:
        total = total + lovasz_weight * terms["loss_lovasz"]
    if "loss_ce" in terms:
        total = total + ce_weight * terms["loss_ce"]
    return {"loss": total, **terms}


def dense_voxel_loss(
    voxel_logits: torch.Tensor,
    voxel_labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    lovasz_weight: float = 1.0,
    ce_weight: float = 1.0,
    ignore_index: int | None = None,
) -> dict[str, torch.Tensor]:
    """Cross-entropy + Lovasz-softmax over dense voxel labels (Occ3D-style occupancy).

    voxel_logits (B, C, X, Y, Z), voxel_labels (B, X, Y, Z) in [0, C) (free space is a class
    of its own); mask (B, X, Y, Z) bool selects the supervised voxels (e.g. mask_camera), None
    supervises every voxel. `ignore_index` (None: none) drops a label from both terms. Both
    terms average over the selected voxels of the whole batch; the Lovasz term over the classes
    present among them. Returns {"loss", "loss_ce", "loss_lovasz"}.
    """
    C = voxel_logits.shape[1]
    logits = voxel_logits.float().movedim(1, -1).reshape(-1, C)  # (P, C)
    labels = voxel_labels.reshape(-1).long()
    keep = torch.ones_like(labels, dtype=torch.bool)
    if mask is not None:
        keep &= mask.reshape(-1).to(torch.bool)
    if ignore_index is not None:
        keep &= labels != ignore_index
    logits, labels = logits[keep], labels[keep]
    if labels.numel() == 0:  # nothing supervised in this batch: a zero with a gradient path
        zero = voxel_logits.float().sum() * 0.0
        return {"loss": zero, "loss_ce": zero, "loss_lovasz": zero}
    loss_ce = F.cross_entropy(logits, labels)
    loss_lovasz = lovasz_softmax(logits.softmax(dim=1), labels, ignore_index=None)
    total = ce_weight * loss_ce + lovasz_weight * loss_lovasz
    return {"loss": total, "loss_ce": loss_ce, "loss_lovasz": loss_lovasz}


def _neg_log(ratio: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """-log(ratio), as binary cross-entropy against a target of 1 (MonoScene's form)."""
    return -torch.log(ratio.clamp(min=eps))


def sem_scal_loss(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MonoScene's semantic scene-class affinity loss over (P, C) probabilities and (P,) labels.

    For every class c present in `labels`: -log precision - log recall - log specificity of the
    probability mass p_c against the class's voxels, where precision = sum(p_c [y=c]) / sum(p_c),
    recall = sum(p_c [y=c]) / #(y=c), specificity = sum((1-p_c) [y!=c]) / #(y!=c) (a ratio whose
    denominator is 0 is left out). The mean over the present classes. The recall term keeps
    pushing a rare class however small its probability has become.
    """
    num_classes = probs.shape[1]
    fg = F.one_hot(labels.long(), num_classes).to(probs.dtype)  # (P, C)
    count = fg.sum(0)  # (C,)
    present = count > 0
    if not bool(present.any()):
        return probs.sum() * 0.0
    inter = (probs * fg).sum(0)  # (C,)
    mass = probs.sum(0)
    background = fg.shape[0] - count
    terms = _neg_log(inter / count.clamp(min=1))  # recall
    terms = terms + torch.where(mass > 0, _neg_log(inter / mass.clamp(min=1e-12)), 0.0)
    spec = ((1.0 - probs) * (1.0 - fg)).sum(0) / background.clamp(min=1)
    terms = terms + torch.where(background > 0, _neg_log(spec), 0.0)
    return terms[present].mean()


def geo_scal_loss(probs: torch.Tensor, labels: torch.Tensor, free_index: int) -> torch.Tensor:
    """MonoScene's geometric scene-class affinity loss: -log precision - log recall - log
    specificity of occupied (1 - p_free) against the occupied voxels, over (P, C) probabilities
    and (P,) labels. A ratio whose denominator is 0 is left out."""
    occupied_p = 1.0 - probs[:, free_index]  # (P,)
    occupied = (labels != free_index).to(probs.dtype)
    inter = (occupied_p * occupied).sum()
    n_occ, n_free = occupied.sum(), (1.0 - occupied).sum()
    loss = probs.sum() * 0.0
    if float(occupied_p.detach().sum()) > 0:
        loss = loss + _neg_log(inter / occupied_p.sum())
    if float(n_occ) > 0:
        loss = loss + _neg_log(inter / n_occ)
    if float(n_free) > 0:
        loss = loss + _neg_log(((1.0 - occupied_p) * (1.0 - occupied)).sum() / n_free)
    return loss


CLASS_WEIGHT_SCHEMES = ("none", "inv_log", "inv_sqrt", "inv_freq")


def class_weights_from_frequencies(frequencies: list[float], scheme: str) -> torch.Tensor | None:
    """Cross-entropy class weights from the training split's label frequencies (fractions of
    the supervised voxels, one per class); None for "none".

    "inv_log": ENet's 1 / ln(1.02 + f); "inv_sqrt": 1 / sqrt(f); "inv_freq": 1 / f. A class that
    never occurs gets the largest weight of the classes that do. The weights are scaled so that
    the expected weight of a supervised voxel, sum_c f_c w_c, is 1: the loss keeps its scale.
    """
    if scheme == "none":
        return None
    if scheme not in CLASS_WEIGHT_SCHEMES:
        raise TpvkitError(
            f"train.class_weights: '{scheme}' is not one of {', '.join(CLASS_WEIGHT_SCHEMES)}"
        )
    f = torch.tensor(frequencies, dtype=torch.float64)
    if f.numel() == 0 or not bool((f >= 0).all()) or float(f.sum()) <= 0:
        raise TpvkitError("train.class_frequencies: give one non-negative frequency per class")
    f = f / f.sum()
    seen = f > 0
    w = torch.zeros_like(f)
    if scheme == "inv_log":
        w[seen] = 1.0 / torch.log(1.02 + f[seen])
    elif scheme == "inv_sqrt":
        w[seen] = 1.0 / f[seen].sqrt()
    else:
        w[seen] = 1.0 / f[seen]
    w[~seen] = w[seen].max()
    return (w / (f * w).sum()).float()


def occupancy_terms(
    logits: torch.Tensor,
    labels: torch.Tensor,
    free_index: int,
    class_weight: torch.Tensor | None = None,
    ce_weight: float = 1.0,
    lovasz_weight: float = 1.0,
    lovasz_free: bool = True,
    sem_scal_weight: float = 0.0,
    geo_scal_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """The dense occupancy loss over supervised voxels: logits (P, C), labels (P,) in [0, C).

    loss_ce: cross-entropy, weighted per class by `class_weight` (C,) and normalised by the
    summed weights (PyTorch's weighted mean). loss_lovasz: Lovasz-softmax over the classes
    present, free included unless `lovasz_free` is False (then only over non-free classes, as
    GaussianFormer). loss_sem_scal / loss_geo_scal: MonoScene's scene-class affinity losses.
    A term whose weight is 0 is neither computed nor returned.
    """
    logits = logits.float()
    labels = labels.long()
    if labels.numel() == 0:  # nothing supervised in this batch: a zero with a gradient path
        zero = logits.sum() * 0.0
        return {"loss": zero}
    terms: dict[str, torch.Tensor] = {}
    total = logits.sum() * 0.0
    weight = None if class_weight is None else class_weight.to(logits.device, logits.dtype)
    if ce_weight:
        terms["loss_ce"] = F.cross_entropy(logits, labels, weight=weight)
        total = total + ce_weight * terms["loss_ce"]
    need_probs = lovasz_weight or sem_scal_weight or geo_scal_weight
    probs = logits.softmax(dim=1) if need_probs else None
    if lovasz_weight:
        assert probs is not None
        if lovasz_free:
            terms["loss_lovasz"] = lovasz_softmax(probs, labels, ignore_index=None)
        else:
            present = torch.bincount(labels, minlength=logits.shape[1]) > 0
            present[free_index] = False
            classes = [int(c) for c in present.nonzero().flatten()]
            if classes:
                terms["loss_lovasz"] = lovasz_softmax(
                    probs, labels, ignore_index=None, classes=classes
                )
            else:
                terms["loss_lovasz"] = probs.sum() * 0.0
        total = total + lovasz_weight * terms["loss_lovasz"]
    if sem_scal_weight:
        assert probs is not None
        terms["loss_sem_scal"] = sem_scal_loss(probs, labels)
        total = total + sem_scal_weight * terms["loss_sem_scal"]
    if geo_scal_weight:
        assert probs is not None
        terms["loss_geo_scal"] = geo_scal_loss(probs, labels, free_index)
        total = total + geo_scal_weight * terms["loss_geo_scal"]
    return {"loss": total, **terms}


def fill_unobserved_voxels(
    voxel_labels: torch.Tensor,
    point_voxel_index: torch.Tensor,
    point_mask: torch.Tensor,
    fill_label: int,
) -> torch.Tensor:
    """Point-voted voxel labels with `fill_label` where no point falls (the public occupancy
    recipe's fill_label = 17, "empty"): (B, X, Y, Z) int64.

    voxel_labels (B, X, Y, Z) majority votes (0 where no point), point_voxel_index (B, N, 3)
    int64, point_mask (B, N) bool (real points, not padding).
    """
    B, X, Y, Z = voxel_labels.shape
    has_point = torch.zeros(B, X * Y * Z, dtype=torch.bool, device=voxel_labels.device)
    idx = point_voxel_index.long()
    flat = (idx[..., 0] * Y + idx[..., 1]) * Z + idx[..., 2]  # (B, N)
    for b in range(B):
        has_point[b, flat[b][point_mask[b]]] = True
    filled = voxel_labels.reshape(B, -1).long().clone()
    filled[~has_point] = fill_label
    return filled.reshape(B, X, Y, Z)


# ---------------------------------------------------------------------------------------------
# Loss builders: what `train.loss` names. Each takes the config and returns a LossFn.

OCC_BATCH_KEYS: tuple[str, ...] = ("occ_semantics", "occ_mask_camera", "ray_origins")


def require_occ3d_batch(batch: Mapping[str, Any], what: str) -> None:
    """A batch must carry dense Occ3D labels for `what`; say how to link them if not."""
    missing = [k for k in OCC_BATCH_KEYS if k not in batch]
    if missing:
        raise TpvkitError(
            f"{what} needs dense occupancy labels but the batch has no {', '.join(missing)}: "
            "link Occ3D labels to the info file (`tpvkit prepare nuscenes --occ3d GTDIR`, or a "
            "synthetic set made by `tpvkit prepare synthetic`)"
        )


def _check_occupancy_model(cfg: Config, loss: str) -> None:
    if cfg.model.num_classes != OCC3D_NUM_CLASSES:
        raise TpvkitError(
            f"train.loss={loss} needs model.num_classes={OCC3D_NUM_CLASSES} (16 classes, "
            f"'others' and free), the config has {cfg.model.num_classes}"
        )


def lidarseg_losses(cfg: Config) -> LossFn:
    """TPVFormer's lidarseg recipe: Lovasz-softmax on point logits + CE on point-voted voxels."""

    def compute(model: nn.Module, batch: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
        out = model(batch["inputs"], decode_voxels=True)
        # Losses in float32 even under autocast: Lovasz sorts errors, CE sums many terms.
        return lidarseg_loss(
            out["point_logits"].float(),
            batch["point_labels"],
            out["voxel_logits"].float(),
            batch["voxel_labels"],
            lovasz_weight=cfg.train.lovasz_weight,
            ce_weight=cfg.train.ce_weight,
        )

    return compute


def supervised_voxels(batch: Mapping[str, Any], which: str) -> torch.Tensor | None:
    """The voxels the occupancy loss sees (train.occ_loss_mask): (B, X, Y, Z) bool, or None
    for "all"."""
    return supervision_mask(batch["occ_mask_camera"].bool(), batch["occ_mask_lidar"].bool(), which)


def sample_voxels(
    labels: torch.Tensor,
    mask: torch.Tensor | None,
    free_index: int,
    free_per_occupied: float,
    min_free: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every supervised occupied voxel plus a uniform sample of the supervised free ones
    (round(free_per_occupied x occupied), at least min_free, at most all), per sample.

    labels (B, X, Y, Z); mask (B, X, Y, Z) bool or None (all). Returns index (B, K, 3) int64
    [x, y, z] and valid (B, K) bool: samples with fewer voxels than the largest are padded by
    repeating their first voxel, marked invalid.
    """
    B, X, Y, Z = labels.shape
    flat_labels = labels.reshape(B, -1)
    chosen = []
    for b in range(B):
        keep = torch.ones_like(flat_labels[b], dtype=torch.bool)
        if mask is not None:
            keep = mask[b].reshape(-1).bool()
        is_free = flat_labels[b] == free_index
        occupied = (keep & ~is_free).nonzero().flatten()
        free = (keep & is_free).nonzero().flatten()
        n_free = min(free.numel(), max(min_free, round(free_per_occupied * occupied.numel())))
        perm = torch.randperm(free.numel(), generator=generator, device=free.device)[:n_free]
        chosen.append(torch.cat([occupied, free[perm]]))
    K = max(1, max(c.numel() for c in chosen))
    flat = torch.zeros(B, K, dtype=torch.int64, device=labels.device)
    valid = torch.zeros(B, K, dtype=torch.bool, device=labels.device)
    for b, c in enumerate(chosen):
        flat[b, : c.numel()] = c
        if c.numel():
            flat[b, c.numel() :] = c[0]
        valid[b, : c.numel()] = True
    index = torch.stack([flat // (Y * Z), (flat // Z) % Y, flat % Z], dim=-1)
    return index, valid


def sampled_prior_offset(
    frequencies: list[float], free_index: int, free_per_occupied: float
) -> list[float]:
    """The per-class logit offset that undoes the sampled loss's prior (logit adjustment).

    The sampled loss shows the model free_per_occupied free voxels per occupied one where the
    supervised voxels hold r = f_free / (1 - f_free) (the training split's frequencies), so
    the model learns odds of free scaled by free_per_occupied / r. Adding log(r /
    free_per_occupied) to the free logit restores the data's odds. Zero when every free voxel
    is sampled anyway (free_per_occupied >= r) or the sampling is off (0). The floor of
    occ_min_free_samples free voxels per sample is ignored (it matters only for frames with
    few occupied voxels).
    """
    offset = [0.0] * len(frequencies)
    f_free = float(frequencies[free_index])
    if free_per_occupied <= 0 or not 0.0 < f_free < 1.0:
        return offset
    ratio = f_free / (1.0 - f_free)
    if ratio > free_per_occupied:
        offset[free_index] = math.log(ratio / free_per_occupied)
    return offset


# tpvkit 0.2's occ3d loss on a config that ships the recipe: plain CE + Lovasz (free included)
# over every supervised voxel, all decoded, no depth loss (benchmarks and tests compare
# against it).
PLAIN_OCC3D_OVERRIDES: tuple[str, ...] = (
    *NO_DEPTH_OVERRIDES,
    "train.class_weights=none",
    "train.lovasz_free=true",
    "train.sem_scal_weight=0",
    "train.geo_scal_weight=0",
    "train.occ_free_per_occupied=0",
    "train.init_bias_from_frequencies=false",
)


def lidar_depth_targets(
    points: torch.Tensor,
    point_mask: torch.Tensor,
    projection: torch.Tensor,
    img_hw: tuple[int, int],
    cells_hw: tuple[int, int],
    min_depth: float,
    max_depth: float,
    bins: int,
) -> torch.Tensor:
    """Depth-bin targets of the cells of a feature map from the LiDAR (or any) points.

    points (B, P, 3) in the grid frame (point_mask (B, P): the real ones), projection
    (B, N_cam, 4, 4) from that frame to pixels of images whose padded size is img_hw, covered
    by a map of cells_hw = (h, w) cells. A cell's target is the bin of the nearest point that
    projects into it (a z-buffer: the surface the camera sees), among uniform bins of
    [min_depth, max_depth); -1 where no point falls or the nearest is outside that range.
    Returns (B, N_cam, h, w) int64."""
    b, n = projection.shape[:2]
    h, w = cells_hw
    targets = torch.full((b, n, h * w), -1, dtype=torch.long, device=projection.device)
    for i in range(b):
        pts = points[i][point_mask[i]]
        if not len(pts):
            continue
        uv, valid, depth = project_to_cameras(pts, projection[i : i + 1], img_hw, with_depth=True)
        uv, valid, depth = uv[0], valid[0], depth[0]  # (N, P, 2), (N, P), (N, P)
        col = (uv[..., 0] * w).floor().long().clamp(0, w - 1)
        row = (uv[..., 1] * h).floor().long().clamp(0, h - 1)
        cell = torch.arange(n, device=uv.device)[:, None] * (h * w) + row * w + col
        nearest = torch.full((n * h * w,), math.inf, dtype=depth.dtype, device=depth.device)
        nearest.scatter_reduce_(0, cell[valid], depth[valid], reduce="amin")
        frac = (nearest - min_depth) / (max_depth - min_depth)
        inside = (frac >= 0) & (frac < 1)
        bin_index = (frac.clamp(0, 1) * bins).floor().long().clamp(max=bins - 1)
        targets[i] = torch.where(inside, bin_index, torch.full_like(bin_index, -1)).view(n, -1)
    return targets.view(b, n, h, w)


def depth_loss(depth_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of depth_logits (B, N_cam, K, h, w) against targets (B, N_cam, h, w)
    (lidar_depth_targets; -1 ignored), averaged over the cells with a target (0 if none)."""
    logits = depth_logits.float().movedim(2, -1)[targets >= 0]  # (cells, K)
    if not len(logits):
        return depth_logits.float().sum() * 0.0
    return F.cross_entropy(logits, targets[targets >= 0])


def occ3d_losses(cfg: Config) -> LossFn:
    """The dense Occ3D loss (docs/learning.md): cross-entropy (optionally class-weighted from
    the training split's frequencies) + Lovasz-softmax (optionally over the non-free classes
    only) + optional MonoScene sem_scal / geo_scal, over the voxels train.occ_loss_mask
    selects, all of them or (train.occ_free_per_occupied > 0) every occupied one plus a
    sample of free ones, decoding only those."""
    _check_occupancy_model(cfg, "occ3d")
    t = cfg.train
    free = task_of(cfg).label_space.free_index
    if free is None:
        raise TpvkitError(f"train.loss=occ3d needs a label space with free space (task {cfg.task})")
    class_weight = None
    if t.class_weights != "none":
        if not t.class_frequencies:
            raise TpvkitError(
                f"train.class_weights={t.class_weights} needs train.class_frequencies: training "
                "counts them from data.train_infos when it starts (or give them with --set)"
            )
        class_weight = class_weights_from_frequencies(t.class_frequencies, t.class_weights)
    sampled = t.occ_free_per_occupied > 0

    def compute(model: nn.Module, batch: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
        require_occ3d_batch(batch, "train.loss=occ3d")
        labels = batch["occ_semantics"]  # (B, X, Y, Z)
        mask = supervised_voxels(batch, t.occ_loss_mask)
        if sampled:
            index, valid = sample_voxels(
                labels, mask, free, t.occ_free_per_occupied, t.occ_min_free_samples
            )
            out = model(
                batch["inputs"], decode_voxels=False, voxel_index=index, decode_points=False
            )
            logits = out["voxel_logits_at"].movedim(1, -1)[valid]  # (P, C)
            B, X, Y, Z = labels.shape
            flat = (index[..., 0] * Y + index[..., 1]) * Z + index[..., 2]
            target = labels.reshape(B, -1).gather(1, flat)[valid]  # (P,)
        else:
            out = model(batch["inputs"], decode_points=False, decode_voxels=True)
            if tuple(out["voxel_logits"].shape[2:]) != tuple(labels.shape[1:]):
                raise TpvkitError(
                    f"the model decodes a {tuple(out['voxel_logits'].shape[2:])} grid but the "
                    f"Occ3D labels are {tuple(labels.shape[1:])}: set the TPV size and head "
                    "scales so the output grid is 200x200x16 (configs/tpv_occ3d_*.yaml)"
                )
            C = out["voxel_logits"].shape[1]
            logits = out["voxel_logits"].float().movedim(1, -1).reshape(-1, C)
            target = labels.reshape(-1)
            if mask is not None:
                keep = mask.reshape(-1)
                logits, target = logits[keep], target[keep]
        terms = occupancy_terms(
            logits,
            target,
            free,
            class_weight=class_weight,
            ce_weight=t.ce_weight,
            lovasz_weight=t.lovasz_weight,
            lovasz_free=t.lovasz_free,
            sem_scal_weight=t.sem_scal_weight,
            geo_scal_weight=t.geo_scal_weight,
        )
        if t.depth_loss_weight > 0:
            terms = dict(terms)
            terms["loss_depth"] = _lidar_depth_loss(cfg, out, batch)
            terms["loss"] = terms["loss"] + t.depth_loss_weight * terms["loss_depth"]
        return terms

    return compute


def _lidar_depth_loss(
    cfg: Config, out: Mapping[str, torch.Tensor], batch: Mapping[str, Any]
) -> torch.Tensor:
    """train.depth_loss_weight's term: the depth head's cross-entropy against the batch's
    LiDAR points (lidar_depth_targets), projected into the images as the model padded them."""
    if "depth_logits" not in out:
        raise TpvkitError(
            "train.depth_loss_weight > 0 but the model returned no depth_logits: it needs "
            "model.depth.bins > 0 and training mode"
        )
    inputs = batch["inputs"]
    if inputs.points is None:
        raise TpvkitError("train.depth_loss_weight > 0 needs the batch's LiDAR points")
    padded_hw = padded_image_size(inputs.img.shape[-2:], cfg.data.size_divisor)  # as the model
    d = cfg.model.depth
    logits = out["depth_logits"]
    targets = lidar_depth_targets(
        inputs.points,
        batch["point_mask"],
        inputs.projection,
        padded_hw,
        tuple(logits.shape[-2:]),
        d.min_depth,
        d.max_depth,
        d.bins,
    )
    return depth_loss(logits, targets)


def tpv_occupancy_losses(cfg: Config) -> LossFn:
    """The released tpv04_occupancy recipe (wzzheng/TPVFormer train.py with lovasz_input =
    ce_input = 'voxel'): Lovasz-softmax + CE on voxel logits, voxel labels the majority vote
    of the LiDAR points, 17 (empty) where no point falls, label 0 ignored."""
    _check_occupancy_model(cfg, "tpv_occupancy")

    def compute(model: nn.Module, batch: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
        out = model(batch["inputs"], decode_points=False, decode_voxels=True)
        labels = fill_unobserved_voxels(
            batch["voxel_labels"], batch["point_voxel_index"], batch["point_mask"], OCC3D_FREE
        )
        return dense_voxel_loss(
            out["voxel_logits"],
            labels,
            None,
            lovasz_weight=cfg.train.lovasz_weight,
            ce_weight=cfg.train.ce_weight,
            ignore_index=IGNORE_INDEX,
        )

    return compute


# The losses a config can name (train.loss): name -> builder.
LOSSES: dict[str, Callable[[Config], LossFn]] = {
    "lidarseg": lidarseg_losses,
    "occ3d": occ3d_losses,
    "tpv_occupancy": tpv_occupancy_losses,
}


def build_loss(cfg: Config) -> LossFn:
    """The LossFn that `train.loss` names (checked against LOSSES)."""
    if cfg.train.loss not in LOSSES:
        raise TpvkitError(f"train.loss: '{cfg.train.loss}' is not one of {', '.join(LOSSES)}")
    return LOSSES[cfg.train.loss](cfg)
