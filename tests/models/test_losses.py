"""Lovasz-softmax and the occupancy loss against brute-force references."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from tpvkit.models.losses import (
    dense_voxel_loss,
    fill_unobserved_voxels,
    lidarseg_loss,
    lovasz_softmax,
    masked_cross_entropy,
)


def jaccard_loss_of_set(mistakes: frozenset[int], fg: list[int]) -> float:
    """Delta_J(M) = |M| / |fg  u  M|: the Jaccard loss when the points in M are mispredicted."""
    if not mistakes:
        return 0.0
    return len(mistakes) / len(set(fg) | mistakes)


def lovasz_extension_brute_force(errors: list[float], fg: list[int]) -> float:
    """The Lovasz extension of the (submodular) Jaccard loss as the max over all orderings of the
    greedy sum, an identity of submodular functions that needs no sorting (Lovasz 1983)."""
    best = -float("inf")
    n = len(errors)
    for order in itertools.permutations(range(n)):
        total, prev, chosen = 0.0, 0.0, set()
        for i in order:
            chosen.add(i)
            value = jaccard_loss_of_set(frozenset(chosen), fg)
            total += errors[i] * (value - prev)
            prev = value
        best = max(best, total)
    return best


def lovasz_softmax_reference(probs: torch.Tensor, labels: torch.Tensor, ignore: int) -> float:
    keep = labels != ignore
    probs, labels = probs[keep].double(), labels[keep]
    per_class = []
    for c in range(probs.shape[1]):
        fg_mask = labels == c
        if not bool(fg_mask.any()):
            continue  # "present" classes only
        errors = (fg_mask.double() - probs[:, c]).abs().tolist()
        fg = [i for i, v in enumerate(fg_mask.tolist()) if v]
        per_class.append(lovasz_extension_brute_force(errors, fg))
    return sum(per_class) / len(per_class)


@pytest.mark.parametrize("seed", range(4))
def test_lovasz_softmax_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n, c = 6, 4
    probs = torch.rand(n, c, generator=g, dtype=torch.float64).softmax(dim=1)
    labels = torch.randint(0, c, (n,), generator=g)
    expected = lovasz_softmax_reference(probs, labels, ignore=0)
    got = lovasz_softmax(probs, labels, ignore_index=0).item()
    assert got == pytest.approx(expected, abs=1e-12)


def test_lovasz_of_a_perfect_prediction_is_zero_and_of_a_wrong_one_positive():
    labels = torch.tensor([1, 2, 2, 3, 0])
    perfect = F.one_hot(labels, 4).double()
    assert lovasz_softmax(perfect, labels).item() == pytest.approx(0.0, abs=1e-12)
    wrong = F.one_hot((labels % 3) + 1, 4).double()
    assert lovasz_softmax(wrong, labels).item() > 0.5


def test_lovasz_accepts_batched_layout_and_ignores_label_zero():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 5, 7, generator=g, dtype=torch.float64).softmax(dim=1)  # (B, C, N)
    labels = torch.randint(0, 5, (2, 7), generator=g)
    flat = lovasz_softmax(probs.movedim(1, -1).reshape(-1, 5), labels.reshape(-1))
    assert lovasz_softmax(probs, labels).item() == pytest.approx(flat.item(), abs=1e-12)
    # changing the probabilities of ignored points changes nothing
    other = probs.clone()
    other[:, :, :][labels.unsqueeze(1).expand_as(other) == 0] = 0.2
    assert lovasz_softmax(other, labels).item() == pytest.approx(flat.item(), abs=1e-12)


def test_cross_entropy_ignores_zero_and_all_ignored_is_zero_with_grad():
    logits = torch.randn(3, 5, 4, requires_grad=True)
    labels = torch.tensor([[0, 1, 2, 0], [3, 0, 0, 4], [1, 1, 0, 0]])
    got = masked_cross_entropy(logits, labels)
    keep = labels != 0
    ref = F.cross_entropy(logits.permute(0, 2, 1)[keep], labels[keep])
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    empty = masked_cross_entropy(logits, torch.zeros_like(labels))
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_lidarseg_loss_sums_both_terms_with_weights_and_finite_gradients():
    g = torch.Generator().manual_seed(1)
    point_logits = torch.randn(2, 17, 50, generator=g, requires_grad=True)
    point_labels = torch.randint(0, 17, (2, 50), generator=g)
    voxel_logits = torch.randn(2, 17, 4, 4, 2, generator=g, requires_grad=True)
    voxel_labels = torch.randint(0, 17, (2, 4, 4, 2), generator=g)
    out = lidarseg_loss(point_logits, point_labels, voxel_logits, voxel_labels, 0.5, 2.0)
    assert out["loss"].item() == pytest.approx(
        0.5 * out["loss_lovasz"].item() + 2.0 * out["loss_ce"].item(), rel=1e-6
    )
    out["loss"].backward()
    assert torch.isfinite(point_logits.grad).all() and point_logits.grad.abs().sum() > 0
    assert torch.isfinite(voxel_logits.grad).all() and voxel_logits.grad.abs().sum() > 0


def test_lidarseg_loss_with_everything_ignored_is_zero_not_nan():
    point_logits = torch.randn(1, 17, 10, requires_grad=True)
    voxel_logits = torch.randn(1, 17, 2, 2, 2, requires_grad=True)
    out = lidarseg_loss(
        point_logits,
        torch.zeros(1, 10, dtype=torch.long),
        voxel_logits,
        torch.zeros(1, 2, 2, 2, dtype=torch.long),
    )
    out["loss"].backward()
    assert out["loss"].item() == 0.0
    assert torch.isfinite(point_logits.grad).all() and torch.isfinite(voxel_logits.grad).all()


def lovasz_softmax_brute_force_torch(
    probs: torch.Tensor, labels: torch.Tensor, ignore: int
) -> torch.Tensor:
    """The same max-over-orderings definition, in differentiable torch ops: away from ties the
    maximising ordering is locally constant, so autograd gives the gradient of the extension."""
    keep = labels != ignore
    probs, labels = probs[keep], labels[keep]
    per_class = []
    for c in range(probs.shape[1]):
        fg_mask = labels == c
        if not bool(fg_mask.any()):
            continue
        errors = (fg_mask.to(probs.dtype) - probs[:, c]).abs()
        fg = [i for i, v in enumerate(fg_mask.tolist()) if v]
        totals = []
        for order in itertools.permutations(range(len(errors))):
            total, prev, chosen = errors.new_zeros(()), 0.0, set()
            for i in order:
                chosen.add(i)
                value = jaccard_loss_of_set(frozenset(chosen), fg)
                total = total + errors[i] * (value - prev)
                prev = value
            totals.append(total)
        per_class.append(torch.stack(totals).max())
    return torch.stack(per_class).mean()


@pytest.mark.parametrize("seed", range(3))
def test_lovasz_softmax_gradient_matches_brute_force(seed):
    g = torch.Generator().manual_seed(10 + seed)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (6,), generator=g)
    grads = []
    for fn in (
        lambda p: lovasz_softmax(p, labels, ignore_index=0),
        lambda p: lovasz_softmax_brute_force_torch(p, labels, ignore=0),
    ):
        x = logits.clone().requires_grad_()
        fn(x.softmax(dim=1)).backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-12)
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("seed", range(3))
def test_dense_voxel_loss_matches_references(seed):
    g = torch.Generator().manual_seed(seed)
    C = 4
    logits = torch.randn(1, C, 2, 1, 3, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (1, 2, 1, 3), generator=g)
    mask = torch.ones(1, 2, 1, 3, dtype=torch.bool)
    mask[0, 1, 0, 2] = False
    terms = dense_voxel_loss(logits, labels, mask, lovasz_weight=0.5, ce_weight=2.0)
    flat_logits = logits.movedim(1, -1).reshape(-1, C)[mask.reshape(-1)]
    flat_labels = labels.reshape(-1)[mask.reshape(-1)]
    ce = -sum(
        float(flat_logits[i, flat_labels[i]] - torch.logsumexp(flat_logits[i], 0))
        for i in range(len(flat_labels))
    ) / len(flat_labels)
    assert terms["loss_ce"].item() == pytest.approx(ce, rel=1e-6)
    lov = lovasz_softmax_reference(flat_logits.softmax(1), flat_labels, ignore=-1)
    assert terms["loss_lovasz"].item() == pytest.approx(lov, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(2.0 * ce + 0.5 * lov, rel=1e-6)
    # no mask: every voxel; an empty mask: zero with a gradient path
    assert dense_voxel_loss(logits, labels)["loss_ce"].item() != pytest.approx(ce)
    empty = dense_voxel_loss(logits.requires_grad_(), labels, torch.zeros_like(mask))
    empty["loss"].backward()
    assert empty["loss"].item() == 0.0


def test_fill_unobserved_voxels():
    voxel_labels = torch.tensor([[[[0, 3], [0, 0]], [[5, 0], [0, 0]]]])  # (1, 2, 2, 2)
    index = torch.tensor([[[0, 0, 1], [1, 0, 0], [1, 1, 1], [0, 1, 0]]])
    mask = torch.tensor([[True, True, True, False]])  # the last point is padding
    out = fill_unobserved_voxels(voxel_labels, index, mask, 17)
    expected = torch.full((1, 2, 2, 2), 17)
    for n in range(3):
        x, y, z = index[0, n].tolist()
        expected[0, x, y, z] = voxel_labels[0, x, y, z]
    assert torch.equal(out, expected)
    assert out[0, 1, 1, 1].item() == 0  # a voxel of label-0 points stays 0 (ignored)
