"""Multi-scale deformable attention: every backend against the float64 loop reference, values and
gradients, at awkward sampling positions; chunking, dtypes and backend dispatch."""

from __future__ import annotations

import sys

import pytest
import torch

from tpvkit.errors import TpvkitError
from tpvkit.ops import msda
from tpvkit.ops.msda import (
    available_backends,
    embedding_bag,
    mmcv_kernel,
    multi_scale_deformable_attn,
    resolve_backend,
    triton_kernel,
)

# Levels of different aspect ratios, including a single pixel and a single row.
SHAPES = [(5, 7), (3, 2), (1, 1), (1, 4)]
FAST_BACKENDS = [
    n for n, ok in available_backends("cpu").items() if ok and n not in ("reference", "triton")
]


def level_tensors(shapes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    return spatial_shapes, torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def make_inputs(
    seed: int = 0,
    b: int = 2,
    q: int = 5,
    n_heads: int = 3,
    d: int = 4,
    shapes: list[tuple[int, int]] = SHAPES,
    n_points: int = 3,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, ...]:
    """Locations in [-0.25, 1.25]: a good share fall outside, some partly on the border."""
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    n_levels = len(shapes)
    value = torch.randn(b, s, n_heads, d, generator=g, dtype=dtype)
    loc = torch.rand(b, q, n_heads, n_levels, n_points, 2, generator=g, dtype=dtype) * 1.5 - 0.25
    attn = torch.rand(b, q, n_heads, n_levels, n_points, generator=g, dtype=dtype)
    return (value, *level_tensors(shapes), loc, attn)


def run(backend: str, inputs: tuple[torch.Tensor, ...], seed: int = 1) -> list[torch.Tensor]:
    """Output and the gradients of <output, random> w.r.t. value, locations, weights."""
    value, spatial_shapes, level_start, loc, attn = inputs
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
    out = multi_scale_deformable_attn(
        leaves[0], spatial_shapes, level_start, leaves[1], leaves[2], backend=backend
    )
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    (out * weight).sum().backward()
    return [out.detach()] + [t.grad for t in leaves]


def assert_all_close(
    got: list[torch.Tensor],
    expected: list[torch.Tensor],
    tol: float,
    names: tuple[str, ...] = ("output", "d value", "d locations", "d weights"),
) -> None:
    for name, a, b in zip(names, got, expected, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        err = (a - b).abs().max().item()
        assert err <= tol * max(1.0, b.abs().max().item()), f"{name}: max abs error {err:.3g}"


# --------------------------------------------------------------------------------------------
# The reference itself, on a case computed by hand
# --------------------------------------------------------------------------------------------


def test_reference_matches_a_hand_computed_bilinear_sample():
    # One 2x3 map, one head, D=1; values 0..5 row-major.
    value = torch.arange(6, dtype=torch.float64).view(1, 6, 1, 1)
    spatial_shapes, level_start = level_tensors([(2, 3)])
    # Pixel coords x = 3 * 0.5 - 0.5 = 1.0, y = 2 * 0.5 - 0.5 = 0.5: halfway between
    # (row 0, col 1) = 1 and (row 1, col 1) = 4 -> 2.5. Then x = 3 * 0.9 - 0.5 = 2.2 (col 2 and
    # the zero padding right of it, 0.8 * v + 0.2 * 0), y = 2 * 0.25 - 0.5 = 0 (row 0): 0.8 * 2.
    loc = torch.tensor([0.5, 0.5, 0.9, 0.25], dtype=torch.float64).view(1, 1, 1, 1, 2, 2)
    attn = torch.tensor([1.0, 2.0], dtype=torch.float64).view(1, 1, 1, 1, 2)
    out = multi_scale_deformable_attn(
        value, spatial_shapes, level_start, loc, attn, backend="reference"
    )
    assert out.item() == pytest.approx(1.0 * 2.5 + 2.0 * 0.8 * 2.0, abs=1e-12)


# --------------------------------------------------------------------------------------------
# Fast backends against the reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_backend_matches_reference_values_and_gradients(backend, seed):
    inputs = make_inputs(seed)
    assert_all_close(run(backend, inputs), run("reference", inputs), tol=1e-10)


def special_locations(shapes: list[tuple[int, int]], b: int, q: int, n_heads: int, n_points: int):
    """Pixel centres, pixel edges, the map borders 0 and 1, just outside, far outside."""
    n_levels = len(shapes)
    loc = torch.empty(b, q, n_heads, n_levels, n_points, 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    for lvl, (h, w) in enumerate(shapes):
        for axis, size in ((0, w), (1, h)):
            centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
            edges = torch.arange(size + 1, dtype=torch.float64) / size
            others = torch.tensor([0.0, 1.0, -1e-3, 1 + 1e-3, -0.5 / size, 1 + 0.5 / size, -3, 7])
            pool = torch.cat([centres, edges, others.double()])
            pick = torch.randint(len(pool), (b, q, n_heads, n_points), generator=g)
            loc[:, :, :, lvl, :, axis] = pool[pick]
    return loc


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_backend_matches_reference_on_centres_edges_borders_and_outside(backend):
    b, q, n_heads, n_points = 2, 16, 2, 4
    value, spatial_shapes, level_start, _, attn = make_inputs(
        b=b, q=q, n_heads=n_heads, n_points=n_points
    )
    loc = special_locations(SHAPES, b, q, n_heads, n_points)
    got = run(backend, (value, spatial_shapes, level_start, loc, attn))
    expected = run("reference", (value, spatial_shapes, level_start, loc, attn))
    # Output, d value and d weights are continuous in the locations: they must agree.
    names = ("output", "d value", "d weights")
    assert_all_close(got[:2] + got[3:], expected[:2] + expected[3:], 1e-10, names)
    # d locations jumps where a coordinate crosses a pixel centre: exactly there, which side
    # a backend picks depends on the last bit of x * W - 0.5. It must be one of the two.
    sides = [
        run("reference", (value, spatial_shapes, level_start, loc + shift, attn))[2]
        for shift in (-1e-9, 1e-9)
    ]
    err = torch.minimum((got[2] - sides[0]).abs(), (got[2] - sides[1]).abs())
    assert err.max().item() < 1e-6 * max(1.0, expected[2].abs().max().item())


@pytest.mark.parametrize("backend", FAST_BACKENDS + ["reference"])
def test_locations_outside_read_zero_padding(backend):
    value, spatial_shapes, level_start, loc, attn = make_inputs()
    far = loc.clone()
    far[..., 0] = -2.0  # every footprint left of every level
    out, d_value, d_loc, d_attn = run(backend, (value, spatial_shapes, level_start, far, attn))
    assert out.abs().max().item() == 0.0
    assert d_value.abs().max().item() == 0.0 and d_loc.abs().max().item() == 0.0
    assert d_attn.abs().max().item() == 0.0


def test_pytorch_backend_treats_nan_and_inf_locations_as_far_outside():
    value, spatial_shapes, level_start, loc, attn = make_inputs()
    bad = loc.clone()
    bad[0, 0, 0, 0, 0, 0] = float("nan")
    bad[0, 1, 0, 1, 0, 1] = float("inf")
    bad[1, 2, 1, 0, 2, 0] = -float("inf")
    far = loc.clone()
    far[0, 0, 0, 0, 0, 0] = far[0, 1, 0, 1, 0, 1] = far[1, 2, 1, 0, 2, 0] = 9.0
    got = run("pytorch", (value, spatial_shapes, level_start, bad, attn))
    expected = run("pytorch", (value, spatial_shapes, level_start, far, attn))
    assert all(torch.isfinite(t).all() for t in got)
    assert_all_close(got, expected, tol=0.0)


def test_pytorch_backend_passes_gradcheck():
    value, spatial_shapes, level_start, loc, attn = make_inputs(
        seed=5, b=1, q=2, n_heads=2, d=2, shapes=[(3, 4), (2, 2)], n_points=2
    )
    leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]

    def fn(v: torch.Tensor, xy: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return multi_scale_deformable_attn(v, spatial_shapes, level_start, xy, a, "pytorch")

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("budget", [1, 20, 60, 200, 10**6])
def test_pytorch_backend_chunking_does_not_change_results(monkeypatch, budget):
    # Budgets (in gathered scalars) small enough to split queries of one head, heads of one
    # batch element, or group whole batch elements.
    monkeypatch.setitem(embedding_bag._CHUNK_ELEMS, "cpu", budget * 4 * 4)
    monkeypatch.setattr(embedding_bag, "_MIN_SAMPLES_PER_PIXEL", 0)
    inputs = make_inputs(q=7, n_points=2)
    assert_all_close(run("pytorch", inputs), run("reference", inputs), tol=1e-10)


def test_chunks_cover_every_batch_head_and_query_once():
    for b, q, n_heads, per_query, budget in [(3, 5, 4, 6, 7), (2, 9, 3, 2, 40), (4, 2, 2, 3, 500)]:
        seen = torch.zeros(b, n_heads, q, dtype=torch.long)
        for c in embedding_bag._chunks(b, q, n_heads, per_query, budget):
            assert c.b1 - c.b0 == 1 or (c.h0, c.h1, c.q0, c.q1) == (0, n_heads, 0, q)
            seen[c.b0 : c.b1, c.h0 : c.h1, c.q0 : c.q1] += 1
        assert bool((seen == 1).all())


def test_dense_corner_dots_path_matches_the_sparse_one(monkeypatch):
    # CUDA tensors take the gather + bmm path; exercise it on CPU.
    inputs = make_inputs(seed=2)
    sparse = run("pytorch", inputs)
    monkeypatch.setattr(embedding_bag, "_SPARSE_DOTS_ON_CPU", False)
    assert_all_close(run("pytorch", inputs), sparse, tol=1e-12)


def test_pytorch_backend_gradients_only_where_requested():
    value, spatial_shapes, level_start, loc, attn = make_inputs()
    full = run("pytorch", (value, spatial_shapes, level_start, loc, attn))
    for i in range(3):
        leaves = [value.clone(), loc.clone(), attn.clone()]
        leaves[i].requires_grad_()
        out = multi_scale_deformable_attn(
            leaves[0], spatial_shapes, level_start, leaves[1], leaves[2]
        )
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).double()
        (out * weight).sum().backward()
        assert torch.allclose(leaves[i].grad, full[1 + i], atol=1e-12)
        assert all(leaves[j].grad is None for j in range(3) if j != i)


def test_pytorch_backend_is_deterministic_and_accepts_non_contiguous_inputs():
    value, spatial_shapes, level_start, loc, attn = make_inputs(dtype=torch.float32)
    first, second = run("pytorch", (value, spatial_shapes, level_start, loc, attn)), None
    second = run("pytorch", (value, spatial_shapes, level_start, loc, attn))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    strided = (
        value.transpose(0, 1).contiguous().transpose(0, 1),
        spatial_shapes,
        level_start,
        loc.movedim(-1, 0).contiguous().movedim(0, -1),
        attn.transpose(1, 2).contiguous().transpose(1, 2),
    )
    assert not strided[0].is_contiguous() and not strided[3].is_contiguous()
    assert_all_close(run("pytorch", strided), first, tol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_pytorch_backend_low_precision_inputs(dtype):
    inputs64 = make_inputs(seed=4)
    expected = run("reference", inputs64)
    value, spatial_shapes, level_start, loc, attn = inputs64
    got = run(
        "pytorch", (value.to(dtype), spatial_shapes, level_start, loc.to(dtype), attn.to(dtype))
    )
    assert [t.dtype for t in got] == [dtype] * 4
    # Internally float32: the error is the rounding of the inputs and of the results.
    tol = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    for a, b in zip(got, expected, strict=True):
        err = (a.double() - b).abs().max().item()
        assert err <= tol * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("backend", FAST_BACKENDS + ["reference"])
def test_empty_query_set(backend):
    value, spatial_shapes, level_start, loc, attn = make_inputs(q=0)
    out = multi_scale_deformable_attn(value, spatial_shapes, level_start, loc, attn, backend)
    assert out.shape == (2, 0, 3 * 4)


def test_inconsistent_level_start_index_is_rejected():
    value, spatial_shapes, level_start, loc, attn = make_inputs()
    with pytest.raises(ValueError, match="level_start_index"):
        multi_scale_deformable_attn(value, spatial_shapes, level_start + 1, loc, attn)
    with pytest.raises(ValueError, match="attention_weights"):
        multi_scale_deformable_attn(value, spatial_shapes, level_start, loc, attn[..., :1])


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(msda.ENV_VAR, raising=False)


def test_unknown_backend_names_the_valid_ones(no_env):
    with pytest.raises(TpvkitError, match="unknown MSDA backend 'cuda_fast'.*pytorch.*grid_sample"):
        resolve_backend("cuda_fast")


def test_triton_needs_cuda_or_the_interpreter(no_env, monkeypatch):
    # The kernels themselves are tested under Triton's interpreter in test_msda_triton.py.
    monkeypatch.setattr(triton_kernel, "_TRITON_INSTALLED", True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert available_backends("cpu")["triton"] is False
    assert available_backends("cuda")["triton"] is True
    with pytest.raises(TpvkitError, match="triton.*needs CUDA tensors.*use 'pytorch'"):
        multi_scale_deformable_attn(*make_inputs(), backend="triton")
    monkeypatch.setattr(triton_kernel, "_TRITON_INSTALLED", False)
    assert available_backends("cuda")["triton"] is False
    with pytest.raises(TpvkitError, match="pip install triton"):
        resolve_backend("triton", "cuda")


def test_auto_prefers_triton_then_mmcv_then_pytorch_on_cuda(no_env, monkeypatch):
    monkeypatch.setattr(mmcv_kernel, "_load_mmcv", lambda: object())
    monkeypatch.setattr(triton_kernel, "_TRITON_INSTALLED", True)
    assert resolve_backend("auto", "cuda") == "triton"
    assert resolve_backend("auto", "cpu") == "pytorch"
    monkeypatch.setattr(triton_kernel, "_TRITON_INSTALLED", False)
    assert resolve_backend("auto", "cuda") == "mmcv"


def test_auto_is_pytorch_on_cpu_and_without_mmcv(no_env, monkeypatch):
    monkeypatch.setattr(mmcv_kernel, "_load_mmcv", lambda: None)
    monkeypatch.setattr(triton_kernel, "_TRITON_INSTALLED", False)
    assert resolve_backend("auto", "cpu") == "pytorch"
    assert resolve_backend("auto", "cuda") == "pytorch"
    assert available_backends("cuda")["mmcv"] is False
    with pytest.raises(TpvkitError, match="mmcv"):
        resolve_backend("mmcv", "cuda")
    with pytest.raises(TpvkitError, match="CUDA"):
        resolve_backend("mmcv", "cpu")


def test_missing_mmcv_is_detected_lazily(monkeypatch):
    mmcv_kernel._load_mmcv.cache_clear()
    monkeypatch.setitem(sys.modules, "mmcv", None)  # makes `import mmcv...` raise ImportError
    try:
        assert mmcv_kernel._load_mmcv() is None
    finally:
        mmcv_kernel._load_mmcv.cache_clear()


def test_auto_prefers_mmcv_for_cuda_tensors_when_it_imports(no_env, monkeypatch):
    calls = []

    def fake_mmcv(value, shapes, starts, loc, attn, im2col_step):
        calls.append((value.dtype, loc.dtype, attn.dtype, im2col_step, value.shape[0]))
        return torch.zeros(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3])

    monkeypatch.setattr(mmcv_kernel, "_load_mmcv", lambda: fake_mmcv)
    monkeypatch.setattr(triton_kernel, "_TRITON_INSTALLED", False)
    assert resolve_backend("auto", "cuda") == "mmcv"
    assert resolve_backend("auto", "cpu") == "pytorch"
    assert available_backends("cuda")["mmcv"] and not available_backends("cpu")["mmcv"]
    value, spatial_shapes, level_start, loc, attn = make_inputs(b=6, dtype=torch.float16)
    out = msda.msda_mmcv(value, spatial_shapes, level_start, loc, attn)
    # upcast to float32, im2col_step divides the batch, result back in the input dtype
    assert calls == [(torch.float32, torch.float32, torch.float32, 6, 6)]
    assert out.dtype == torch.float16


def test_env_var_forces_the_auto_backend(monkeypatch):
    monkeypatch.setenv(msda.ENV_VAR, "reference")
    assert resolve_backend("auto", "cpu") == "reference"
    assert resolve_backend("grid_sample", "cpu") == "grid_sample"  # explicit names win
    used = []
    monkeypatch.setitem(
        msda._SHAPE_IMPLS, "reference", lambda *args: used.append(True) or msda.msda_pytorch(*args)
    )
    multi_scale_deformable_attn(*make_inputs())
    assert used == [True]
    monkeypatch.setenv(msda.ENV_VAR, "nope")
    with pytest.raises(TpvkitError, match=msda.ENV_VAR):
        resolve_backend("auto", "cpu")


def test_pytorch_backend_ignores_autocast():
    inputs = make_inputs(dtype=torch.float32)
    expected = run("pytorch", inputs)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = run("pytorch", inputs)
    assert_all_close(got, expected, tol=0.0)
