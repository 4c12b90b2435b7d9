"""The occupancy loss terms of tpvkit's recipe (class weights, MonoScene's sem_scal / geo_scal,
Lovasz without free, the sampled loss) against hand-computed values and float64 loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tpvkit.config import load_config
from tpvkit.data.inputs import SceneInputs
from tpvkit.errors import TpvkitError
from tpvkit.models.losses import (
    class_weights_from_frequencies,
    geo_scal_loss,
    lovasz_softmax,
    occupancy_terms,
    sample_voxels,
    sampled_prior_offset,
    sem_scal_loss,
)


def sem_scal_reference(probs: list[list[float]], labels: list[int]) -> float:
    """MonoScene's sem_scal_loss written out per class with Python floats."""
    n_cls = len(probs[0])
    total, count = 0.0, 0
    for c in range(n_cls):
        target = [1.0 if y == c else 0.0 for y in labels]
        if sum(target) == 0:
            continue
        count += 1
        p = [row[c] for row in probs]
        inter = sum(pi * ti for pi, ti in zip(p, target, strict=True))
        loss = 0.0
        if sum(p) > 0:
            loss += -math.log(inter / sum(p))
        loss += -math.log(inter / sum(target))
        neg = [1.0 - t for t in target]
        if sum(neg) > 0:
            spec = sum((1 - pi) * ni for pi, ni in zip(p, neg, strict=True)) / sum(neg)
            loss += -math.log(spec)
        total += loss
    return total / count


def test_sem_scal_hand_computed():
    # two voxels, two classes: p = [[0.8, 0.2], [0.4, 0.6]], labels [0, 1].
    probs = torch.tensor([[0.8, 0.2], [0.4, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    # class 0: precision 0.8/1.2, recall 0.8/1, specificity (1-0.4)/1 = 0.6
    c0 = -math.log(0.8 / 1.2) - math.log(0.8) - math.log(0.6)
    # class 1: precision 0.6/0.8, recall 0.6, specificity 0.8
    c1 = -math.log(0.6 / 0.8) - math.log(0.6) - math.log(0.8)
    assert sem_scal_loss(probs, labels).item() == pytest.approx((c0 + c1) / 2, rel=1e-12)


def test_sem_scal_matches_reference_on_random_cases():
    g = torch.Generator().manual_seed(0)
    for n, c in ((7, 3), (20, 5), (3, 4)):
        probs = torch.randn(n, c, generator=g, dtype=torch.float64).softmax(1)
        labels = torch.randint(0, c, (n,), generator=g)
        ref = sem_scal_reference(probs.tolist(), labels.tolist())
        assert sem_scal_loss(probs, labels).item() == pytest.approx(ref, rel=1e-10)


def test_geo_scal_hand_computed():
    # free index 2; voxels: occupied (class 0), occupied (class 1), free.
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.3, 0.1, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 2])
    occ = [0.8, 0.2, 0.4]  # 1 - p_free
    inter = 0.8 + 0.2
    precision, recall, spec = inter / sum(occ), inter / 2, (1 - 0.4) / 1
    expected = -math.log(precision) - math.log(recall) - math.log(spec)
    assert geo_scal_loss(probs, labels, 2).item() == pytest.approx(expected, rel=1e-12)
    # no free voxel: the specificity term is left out
    only = geo_scal_loss(probs[:2], labels[:2], 2).item()
    assert only == pytest.approx(-math.log(1.0 / 1.0) - math.log(1.0 / 2), rel=1e-12)


def test_class_weights_schemes():
    f = [0.9, 0.09, 0.01, 0.0]
    assert class_weights_from_frequencies(f, "none") is None
    for scheme, raw in (
        ("inv_log", [1 / math.log(1.02 + v) for v in f[:3]]),
        ("inv_sqrt", [1 / math.sqrt(v) for v in f[:3]]),
        ("inv_freq", [1 / v for v in f[:3]]),
    ):
        raw = [*raw, max(raw)]  # an unseen class gets the largest weight
        norm = sum(fi * wi for fi, wi in zip(f, raw, strict=True))
        got = class_weights_from_frequencies(f, scheme)
        assert got.tolist() == pytest.approx([w / norm for w in raw], rel=1e-6)
        assert float((torch.tensor(f) * got).sum()) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(TpvkitError, match="train.class_weights"):
        class_weights_from_frequencies(f, "median")


def test_occupancy_terms_default_equals_ce_plus_lovasz():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (50,), generator=g)
    out = occupancy_terms(logits, labels, free_index=3, ce_weight=2.0, lovasz_weight=0.5)
    ce = F.cross_entropy(logits.float(), labels)
    lov = lovasz_softmax(logits.float().softmax(1), labels, ignore_index=None)
    assert out["loss"].item() == pytest.approx(2.0 * ce.item() + 0.5 * lov.item(), rel=1e-6)
    assert set(out) == {"loss", "loss_ce", "loss_lovasz"}


def test_occupancy_terms_weighted_ce_and_lovasz_without_free():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 3.0], [1.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2, 1])
    w = torch.tensor([2.0, 3.0, 0.5])
    out = occupancy_terms(logits, labels, free_index=2, class_weight=w, lovasz_free=False)
    logp = logits.log_softmax(1)
    nll = [-logp[i, labels[i]].item() * w[labels[i]].item() for i in range(3)]
    expected_ce = sum(nll) / sum(w[y].item() for y in labels.tolist())
    assert out["loss_ce"].item() == pytest.approx(expected_ce, rel=1e-6)
    probs = logits.softmax(1)
    expected_lov = lovasz_softmax(probs, labels, ignore_index=None, classes=[0, 1])
    assert out["loss_lovasz"].item() == pytest.approx(expected_lov.item(), rel=1e-6)
    # only free present: no Lovasz class, a zero that keeps the graph
    free_only = occupancy_terms(
        logits.requires_grad_(), torch.tensor([2, 2, 2]), 2, lovasz_free=False
    )
    assert free_only["loss_lovasz"].item() == 0.0
    free_only["loss"].backward()


def test_occupancy_terms_scal_terms_and_zero_weights():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(30, 5, generator=g)
    labels = torch.randint(0, 5, (30,), generator=g)
    out = occupancy_terms(
        logits,
        labels,
        4,
        ce_weight=0.0,
        lovasz_weight=0.0,
        sem_scal_weight=2.0,
        geo_scal_weight=3.0,
    )
    probs = logits.softmax(1)
    assert set(out) == {"loss", "loss_sem_scal", "loss_geo_scal"}
    expected = 2.0 * sem_scal_loss(probs, labels) + 3.0 * geo_scal_loss(probs, labels, 4)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    empty = occupancy_terms(logits[:0].requires_grad_(), labels[:0], 4)
    assert empty["loss"].item() == 0.0


def test_sample_voxels_keeps_every_occupied_and_samples_free():
    labels = torch.full((2, 4, 3, 2), 17)
    labels[0, 1, 2, 0] = 4
    labels[0, 3, 0, 1] = 9
    labels[1, 0, 0, 0] = 1
    mask = torch.ones(2, 4, 3, 2, dtype=torch.bool)
    mask[0, 3, 0, 1] = False  # an occupied voxel outside the mask is not supervised
    g = torch.Generator().manual_seed(0)
    index, valid = sample_voxels(labels, mask, 17, free_per_occupied=2.0, min_free=3, generator=g)
    assert index.shape[0] == 2 and index.shape[2] == 3
    for b in range(2):
        picked = index[b][valid[b]]
        lab = labels[b][picked[:, 0], picked[:, 1], picked[:, 2]]
        assert bool(mask[b][picked[:, 0], picked[:, 1], picked[:, 2]].all())
        occupied = int((labels[b][mask[b]] != 17).sum())
        assert int((lab != 17).sum()) == occupied  # every supervised occupied voxel
        assert int((lab == 17).sum()) == max(3, 2 * occupied)  # free: ratio, at least min_free
        assert len({tuple(v) for v in picked.tolist()}) == len(picked)  # no voxel twice
    assert int(valid[0].sum()) == 1 + 3 and int(valid[1].sum()) == 1 + 3


def test_occ3d_loss_sampled_equals_dense_on_the_same_voxels():
    """With every free voxel sampled, the sampled loss equals the dense one (same voxels)."""
    from tpvkit.config import apply_overrides
    from tpvkit.models.losses import build_loss

    cfg = apply_overrides(
        load_config("tpv_occ3d_tiny"),
        [
            "model.tpv_h=4",
            "model.tpv_w=4",
            "model.tpv_z=2",
            "model.head.scale_h=1",
            "model.head.scale_w=1",
            "model.head.scale_z=1",
            f"train.class_frequencies={[1 / 18] * 17 + [0.5]}",
            "train.depth_loss_weight=0",  # the fake model has no depth head
        ],
    )
    g = torch.Generator().manual_seed(3)
    labels = torch.full((1, 4, 4, 2), 17)
    labels[0, :2, :, 0] = torch.randint(0, 17, (2, 4), generator=g)
    mask = torch.rand(1, 4, 4, 2, generator=g) > 0.3
    logits = torch.randn(1, 18, 4, 4, 2, generator=g)

    class Fake(torch.nn.Module):
        def forward(self, inputs, decode_voxels=True, voxel_index=None, decode_points=True):
            out = {}
            if decode_voxels:
                out["voxel_logits"] = logits
            if voxel_index is not None:
                x, y, z = voxel_index.unbind(-1)
                out["voxel_logits_at"] = logits[0][:, x[0], y[0], z[0]][None]
            return out

    batch = {
        "inputs": SceneInputs(img=torch.zeros(1), projection=torch.zeros(1), frame="ego"),
        "occ_semantics": labels,
        "occ_mask_camera": mask,
        "occ_mask_lidar": mask,
        "ray_origins": [torch.zeros(1, 3)],
    }
    dense = build_loss(cfg)(Fake(), batch)
    sampled_cfg = apply_overrides(cfg, ["train.occ_free_per_occupied=1000"])
    sampled = build_loss(sampled_cfg)(Fake(), batch)
    assert set(dense) == {"loss", "loss_ce", "loss_lovasz", "loss_sem_scal", "loss_geo_scal"}
    for key in ("loss_ce", "loss_lovasz"):
        assert sampled[key].item() == pytest.approx(dense[key].item(), rel=1e-5)


def test_sampled_prior_offset_restores_the_data_odds():
    # 96 % free, 4 % occupied: r = 24 free voxels per occupied one; 8 sampled -> log(24 / 8)
    freqs = [0.01, 0.03, 0.96]
    offset = sampled_prior_offset(freqs, free_index=2, free_per_occupied=8.0)
    assert offset[:2] == [0.0, 0.0]
    assert offset[2] == pytest.approx(math.log(3.0))
    # odds check: a model that learned the sampled odds p_free / p_occ = 8 * q decides with
    # odds 24 * q once the offset is added
    assert math.exp(offset[2]) * 8.0 == pytest.approx(0.96 / 0.04)
    # every free voxel sampled anyway, sampling off, or no free voxel: nothing to correct
    assert sampled_prior_offset(freqs, 2, 30.0) == [0.0, 0.0, 0.0]
    assert sampled_prior_offset(freqs, 2, 0.0) == [0.0, 0.0, 0.0]
    assert sampled_prior_offset([0.5, 0.5, 0.0], 2, 8.0) == [0.0, 0.0, 0.0]
