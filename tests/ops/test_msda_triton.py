"""The "triton" MSDA backend under Triton's CPU interpreter: values and the three gradients
against the float64 loop reference, borders and out-of-range samples, odd shapes, bfloat16
inputs, the custom op's fake impl (opcheck) and a torch.compile(fullgraph=True) trace.

TRITON_INTERPRET=1 must be set before triton is imported, and the rest of the suite must not
run interpreted, so the suite's process runs one test that starts this file again in a
subprocess with the variable set; there the interpreted tests run and that one skips.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tpvkit.ops.msda import multi_scale_deformable_attn, resolve_backend

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
HAVE_TRITON = importlib.util.find_spec("triton") is not None
interpreted = pytest.mark.skipif(not INTERPRETED, reason="runs in the interpreter subprocess")

SHAPES = [(5, 7), (3, 2), (1, 1), (1, 4)]


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED or not HAVE_TRITON, reason="the subprocess itself / no triton")
def test_triton_backend_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    # Everything ran interpreted; only this launcher test skips there.
    assert re.search(r"\b1[0-9] passed, 1 skipped\b", summary), summary


def level_tensors(shapes):
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    return spatial_shapes, torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def make_inputs(seed=0, b=2, q=5, n_heads=3, d=4, shapes=SHAPES, n_points=3):
    """float64; locations in [-0.25, 1.25]: many outside, some straddling a border."""
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, n_heads, d, generator=g, dtype=torch.float64)
    shape = (b, q, n_heads, len(shapes), n_points)
    loc = torch.rand(*shape, 2, generator=g, dtype=torch.float64) * 1.5 - 0.25
    attn = torch.rand(*shape, generator=g, dtype=torch.float64)
    return (value, *level_tensors(shapes), loc, attn)


def run(backend, inputs, grad_out=None):
    """Output and the gradients of <output, grad_out> w.r.t. value, locations and weights."""
    value, spatial_shapes, level_start, loc, attn = inputs
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
    out = multi_scale_deformable_attn(
        leaves[0], spatial_shapes, level_start, leaves[1], leaves[2], backend=backend
    )
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(grad_out.to(out.dtype))
    return [out.detach()] + [t.grad for t in leaves]


def as64(inputs):
    return tuple(t.double() if t.is_floating_point() else t for t in inputs)


def cast(inputs, dtype):
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in inputs)


def max_rel_err(got, expected):
    return [
        (a.double() - b).abs().max().item() / max(1.0, b.abs().max().item())
        for a, b in zip(got, expected, strict=True)
    ]


@interpreted
def test_auto_stays_pytorch_on_cpu_and_triton_is_available_interpreted():
    assert resolve_backend("triton", "cpu") == "triton"
    assert resolve_backend("auto", "cpu") == "pytorch"


@interpreted
@pytest.mark.parametrize("seed", [0, 1])
def test_float64_values_and_gradients_match_the_reference(seed):
    inputs = make_inputs(seed)
    got, expected = run("triton", inputs), run("reference", inputs)
    assert [t.dtype for t in got] == [torch.float64] * 4
    assert max(max_rel_err(got, expected)) < 1e-12


@interpreted
def test_float32_values_and_gradients_match_the_float64_reference():
    inputs = cast(make_inputs(2), torch.float32)
    got, expected = run("triton", inputs), run("reference", as64(inputs))
    assert [t.dtype for t in got] == [torch.float32] * 4
    assert max(max_rel_err(got, expected)) < 1e-5


@interpreted
def test_odd_shapes_several_query_blocks_and_channel_masking():
    # D = 3 (a masked channel tile of 4), Q = 70 (two query blocks, the second partial), 5
    # points, a 1x1 and a 1-row level, one head.
    inputs = make_inputs(3, b=1, q=70, n_heads=1, d=3, shapes=[(1, 1), (2, 9), (1, 3)], n_points=5)
    assert max(max_rel_err(run("triton", inputs), run("reference", inputs))) < 1e-12
    inputs = make_inputs(4, b=3, q=2, n_heads=5, d=17, shapes=[(4, 3)], n_points=1)
    assert max(max_rel_err(run("triton", inputs), run("reference", inputs))) < 1e-12


@interpreted
def test_centres_edges_borders_and_far_outside():
    b, q, n_heads, n_points = 1, 12, 2, 4
    value, spatial_shapes, level_start, _, attn = make_inputs(
        b=b, q=q, n_heads=n_heads, n_points=n_points
    )
    loc = torch.empty(b, q, n_heads, len(SHAPES), n_points, 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    for lvl, (h, w) in enumerate(SHAPES):
        for axis, size in ((0, w), (1, h)):
            centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
            edges = torch.arange(size + 1, dtype=torch.float64) / size
            others = torch.tensor([0.0, 1.0, -1e-3, 1 + 1e-3, -0.5 / size, 1 + 0.5 / size, -3, 7])
            pool = torch.cat([centres, edges, others.double()])
            pick = torch.randint(len(pool), (b, q, n_heads, n_points), generator=g)
            loc[:, :, :, lvl, :, axis] = pool[pick]
    inputs = (value, spatial_shapes, level_start, loc, attn)
    got, expected = run("triton", inputs), run("reference", inputs)
    # Output, d value and d weights are continuous in the locations.
    errs = max_rel_err(got, expected)
    assert max(errs[0], errs[1], errs[3]) < 1e-12
    # d locations jumps at pixel centres; the reference's floor picks the same side as ours,
    # but allow either side, as for the other backends.
    sides = [
        run("reference", (value, spatial_shapes, level_start, loc + s, attn))[2]
        for s in (-1e-9, 1e-9)
    ]
    err = torch.minimum((got[2] - sides[0]).abs(), (got[2] - sides[1]).abs())
    assert err.max().item() < 1e-6 * max(1.0, expected[2].abs().max().item())


@interpreted
def test_far_infinite_and_nan_locations_read_zero_with_zero_gradients():
    value, spatial_shapes, level_start, loc, attn = make_inputs(b=1, q=3)
    bad = loc.clone()
    bad[..., 0] = -2.0
    bad[0, 0, 0, 0, 0, 0] = float("nan")
    bad[0, 1, 0, 1, 0, 1] = float("inf")
    bad[0, 2, 1, 0, 2, 0] = -float("inf")
    bad[0, 2, 2, 0, 1, 0] = 1e30
    out, d_value, d_loc, d_attn = run("triton", (value, spatial_shapes, level_start, bad, attn))
    for t in (out, d_value, d_loc, d_attn):
        assert torch.isfinite(t).all() and t.abs().max().item() == 0.0


@interpreted
def test_bfloat16_inputs_against_the_float32_reference():
    # Same bfloat16 inputs and output gradient for both; the reference computes in float64.
    # The kernel accumulates in float32, so the only sizeable error is the final rounding of
    # each result to bfloat16: at most half an ulp, i.e. 2**-8 of the largest magnitude.
    inputs = cast(make_inputs(5, q=9, n_points=4), torch.bfloat16)
    grad_out = torch.randn(2, 9, 12, generator=torch.Generator().manual_seed(7)).bfloat16()
    got = run("triton", inputs, grad_out)
    expected = run("reference", as64(inputs), grad_out.double())
    assert [t.dtype for t in got] == [torch.bfloat16] * 4
    assert max(max_rel_err(got, expected)) <= 2**-8 + 1e-5


@interpreted
def test_only_requested_gradients_and_empty_inputs():
    value, spatial_shapes, level_start, loc, attn = make_inputs(q=2)
    v = value.clone().requires_grad_()
    multi_scale_deformable_attn(
        v, spatial_shapes, level_start, loc, attn, "triton"
    ).sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    value, spatial_shapes, level_start, loc, attn = make_inputs(q=0)
    out = multi_scale_deformable_attn(value, spatial_shapes, level_start, loc, attn, "triton")
    assert out.shape == (2, 0, 12)


@interpreted
def test_custom_op_passes_opcheck():
    from tpvkit.ops.msda import triton_kernel

    value, spatial_shapes, level_start, loc, attn = cast(
        make_inputs(6, b=1, q=3, n_heads=2, d=2, shapes=[(2, 3), (1, 2)], n_points=2),
        torch.float32,
    )
    args = (value.requires_grad_(), spatial_shapes, level_start, loc.requires_grad_(), attn)
    torch.library.opcheck(triton_kernel._msda_triton_forward, args)
    grad = torch.randn(1, 3, 2, 2)
    torch.library.opcheck(triton_kernel._msda_triton_backward, (grad, *[a.detach() for a in args]))


@interpreted
def test_torch_compile_fullgraph_traces_through_the_op():
    inputs = cast(
        make_inputs(7, b=1, q=4, n_heads=2, d=4, shapes=[(3, 3), (2, 2)], n_points=2), torch.float32
    )
    value, spatial_shapes, level_start, loc, attn = inputs

    def fn(v, xy, a):
        out = multi_scale_deformable_attn(v, spatial_shapes, level_start, xy.sigmoid(), a, "triton")
        return (out * out).sum()

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]
    compiled(*leaves).backward()
    ref_leaves = [t.double().requires_grad_() for t in (value, loc, attn)]
    expected = multi_scale_deformable_attn(
        ref_leaves[0],
        spatial_shapes,
        level_start,
        ref_leaves[1].sigmoid(),
        ref_leaves[2],
        "reference",
    )
    (expected * expected).sum().backward()
    for a, b in zip(leaves, ref_leaves, strict=True):
        assert (a.grad.double() - b.grad).abs().max().item() < 1e-4
