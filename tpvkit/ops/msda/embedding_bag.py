"""The "pytorch" MSDA backend: a zero-bordered value table, fused `F.embedding_bag` gathers in
the forward and sort-grouped `embedding_bag` scatters in the backward (see _EmbeddingBagMSDA).
Pure PyTorch, CPU and CUDA, deterministic."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from tpvkit.ops.msda._common import compute_dtype, empty_or_zero

# Samples (query x head x level x point) handled at once by the "pytorch" backend, in units of
# gathered scalars (4 corners x D channels per sample): a chunk's temporaries (~50 bytes per
# sample) stay far below the grid_sample formulation's (B*nH, D, Q, L*P) intermediates, and
# Python overhead per chunk is noise. 2**23 was the fastest on CPU in a sweep of 2**21..2**24.
_CHUNK_ELEMS = {"cpu": 1 << 23, "cuda": 1 << 25}
_MIN_SAMPLES_PER_PIXEL = 8  # see _chunk_budget


# The zero ring around every level, in pixels. Two pixels: after clamping a pixel coordinate
# into [-1.5, W + 0.5] every bilinear footprint that does not touch the level lies wholly in
# the ring, so out-of-range samples need no masks in the forward nor in the backward (their
# corner rows are zeros, hence so are their outputs and gradients).
_PAD = 2


@dataclass(frozen=True)
class _PaddedLayout:
    """Where each level's pixels live in a zero-padded copy of one (batch, head) value map."""

    shapes: tuple[tuple[int, int], ...]  # (H_l, W_l)
    starts: tuple[int, ...]  # level starts in the unpadded value
    padded_starts: tuple[int, ...]  # level starts in a padded region
    padded_size: int  # Sp = sum (H_l + 2 * _PAD) * (W_l + 2 * _PAD): rows of one region

    @staticmethod
    def of(shapes: list[tuple[int, int]]) -> _PaddedLayout:
        starts, padded_starts, s, sp = [], [], 0, 0
        for h, w in shapes:
            starts.append(s)
            padded_starts.append(sp)
            s += h * w
            sp += (h + 2 * _PAD) * (w + 2 * _PAD)
        return _PaddedLayout(tuple(shapes), tuple(starts), tuple(padded_starts), sp)

    def padded_level(self, regions: torch.Tensor, lvl: int) -> torch.Tensor:
        """(R, Sp, D) -> level `lvl` as a (R, H + 2*_PAD, W + 2*_PAD, D) view."""
        h, w = self.shapes[lvl]
        pstart, hp, wp = self.padded_starts[lvl], h + 2 * _PAD, w + 2 * _PAD
        return regions[:, pstart : pstart + hp * wp].view(regions.shape[0], hp, wp, -1)


def _padded_table(value: torch.Tensor, layout: _PaddedLayout, dtype: torch.dtype) -> torch.Tensor:
    """(B, S, nH, D) -> (B * nH * Sp, D): one row per padded pixel, regions ordered (b, head)."""
    b, _, n_heads, d = value.shape
    table = value.new_zeros(b * n_heads, layout.padded_size, d, dtype=dtype)
    for lvl, ((h, w), start) in enumerate(zip(layout.shapes, layout.starts, strict=True)):
        level = value[:, start : start + h * w].view(b, h, w, n_heads, d).permute(0, 3, 1, 2, 4)
        interior = layout.padded_level(table, lvl)[:, _PAD : _PAD + h, _PAD : _PAD + w]
        interior.view(b, n_heads, h, w, d).copy_(level)
    return table.view(-1, d)


@dataclass(frozen=True)
class _Chunk:
    """Batches [b0, b1) x heads [h0, h1) x queries [q0, q1): heads of one batch element, or
    all heads and queries of several, so that the chunk's (b, head) regions are consecutive.

    Chunk tensors are laid out region-major, (R, Qc, ...) with R = regions in (b, head) order:
    a chunk then reads one or a few heads' tables, which stay in cache, and its transposed
    scatter only touches those regions. Gradients are written straight into strided
    (Bc, Hc, Qc, ...) views of their outputs by the chunk's last op (`out=`)."""

    b0: int
    b1: int
    h0: int
    h1: int
    q0: int
    q1: int

    @property
    def regions(self) -> int:
        return (self.b1 - self.b0) * (self.h1 - self.h0)

    def first_region(self, n_heads: int) -> int:
        return self.b0 * n_heads + self.h0

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Q, nH, ...) -> the chunk as a strided (Bc, Hc, Qc, ...) view: region-major."""
        return x[self.b0 : self.b1, self.q0 : self.q1, self.h0 : self.h1].transpose(1, 2)

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Q, nH, ...) -> (R, Qc, ...) contiguous copy."""
        return self.view(x).reshape(self.regions, self.q1 - self.q0, *x.shape[3:]).contiguous()

    def take_xy(self, loc: torch.Tensor) -> torch.Tensor:
        """(B, Q, nH, L, P, 2) -> (2, R, Qc, L, P) contiguous: x and y as separate runs
        (elementwise kernels are several times slower on a trailing dimension of 2)."""
        part = self.view(loc).movedim(-1, 0)
        return part.reshape(2, self.regions, self.q1 - self.q0, *loc.shape[3:5]).contiguous()

    def put(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Inverse of `take`: write (R, Qc, ...) into dst (B, Q, nH, ...)."""
        view = self.view(dst)
        view.copy_(src.view(view.shape))


def _chunks(b: int, q: int, n_heads: int, per_query: int, budget: int) -> list[_Chunk]:
    """Split (B, nH, Q) into chunks of at most ~`budget` samples (`per_query` = L * P)."""
    per_region = max(1, q * per_query)
    if per_region * n_heads <= budget:
        step = max(1, budget // (per_region * n_heads))
        return [_Chunk(b0, min(b, b0 + step), 0, n_heads, 0, q) for b0 in range(0, b, step)]
    if per_region <= budget:
        step = budget // per_region
        return [
            _Chunk(b0, b0 + 1, h0, min(n_heads, h0 + step), 0, q)
            for b0 in range(b)
            for h0 in range(0, n_heads, step)
        ]
    step = max(1, budget // max(1, per_query))
    return [
        _Chunk(b0, b0 + 1, h0, h0 + 1, q0, min(q, q0 + step))
        for b0 in range(b)
        for h0 in range(n_heads)
        for q0 in range(0, q, step)
    ]


class _LevelConstants:
    """Per-level numbers as contiguous (L, P) tensors, made once per call.

    Expanded to (L, P) rather than (L, 1) on purpose: against (..., L, P) samples the
    elementwise kernels then see one contiguous inner run of L * P and vectorise; a
    broadcast (L, 1) operand makes them ~10x slower on CPU."""

    def __init__(
        self,
        layout: _PaddedLayout,
        n_points: int,
        device: torch.device,
        dtype: torch.dtype,
        key_dtype: torch.dtype,
    ):
        def per_level(values: list[float], dt: torch.dtype = dtype) -> torch.Tensor:
            column = torch.tensor(values, device=device, dtype=dt)[:, None]
            return column.expand(len(values), n_points).contiguous()

        hs = [float(h) for h, _ in layout.shapes]
        ws = [float(w) for _, w in layout.shapes]
        pws = [w + 2 * _PAD for w in ws]
        self.heights, self.widths = per_level(hs), per_level(ws)
        self.lower = per_level([-1.5] * len(ws))
        self.x_max = per_level([w + 0.5 for w in ws])
        self.y_max = per_level([h + 0.5 for h in hs])
        self.minus_half = torch.tensor(-0.5, device=device, dtype=dtype)
        self.padded_widths = per_level(pws)
        # Row of padded pixel (y0 + _PAD, x0 + _PAD) in its region = base + y0 * pw + x0.
        self.row_base = per_level(
            [ps + _PAD * pw + _PAD for ps, pw in zip(layout.padded_starts, pws, strict=True)]
        )
        # Row offsets of the corners (dy, dx) = (0,0), (0,1), (1,0), (1,1) from the top-left.
        self.corner_offsets = tuple(
            per_level([dy * pw + dx for pw in pws], key_dtype)
            for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1))
        )
        self.region_size = layout.padded_size


@dataclass
class _Footprints:
    """Bilinear footprints of a chunk's samples, all (R, Qc, L, P)."""

    key: torch.Tensor  # table row of the top-left corner, counted from the chunk's first region
    fx: torch.Tensor  # fractional position inside the footprint, in [0, 1)
    fy: torch.Tensor
    attn: torch.Tensor

    def corner_rows(self, consts: _LevelConstants, first_row: int) -> torch.Tensor:
        """(bags, 4 * L * P) absolute table rows of the corners, (corner, L, P) per bag:
        embedding_bag ignores the order inside a bag, and corner-major keeps the elementwise
        work on contiguous (L, P) runs."""
        key = self.key + first_row if first_row else self.key
        n_levels, n_points = key.shape[-2:]
        key = key.view(-1, n_levels, n_points)  # (bags, L, P)
        rows = key.new_empty(key.shape[0], 4, n_levels, n_points)
        for c, offset in enumerate(consts.corner_offsets):
            torch.add(key, offset, out=rows[:, c])
        return rows.view(key.shape[0], -1)

    def corner_weights(self, out: torch.Tensor, corner_dim: int) -> torch.Tensor:
        return _corner_weights(self.fx, self.fy, self.attn, out, corner_dim)


def _corner_weights(
    fx: torch.Tensor, fy: torch.Tensor, attn: torch.Tensor, out: torch.Tensor, corner_dim: int
) -> torch.Tensor:
    """Attention x bilinear weight of each corner, (dy, dx) row-major, written into `out`:
    its dimension `corner_dim` (size 4) is the corner, the others hold the samples in order."""
    fy_attn = fy * attn
    gy_attn = attn - fy_attn
    gx = 1 - fx
    for c, (wy, wx) in enumerate(((gy_attn, gx), (gy_attn, fx), (fy_attn, gx), (fy_attn, fx))):
        dst = out.select(corner_dim, c)
        torch.mul(wy.view(dst.shape), wx.view(dst.shape), out=dst)
    return out


def _footprints(
    loc_xy: torch.Tensor, attn: torch.Tensor, consts: _LevelConstants, key_dtype: torch.dtype
) -> _Footprints:
    """loc_xy (2, R, Qc, L, P), attn (R, Qc, L, P) -> the chunk's bilinear footprints."""
    x = torch.addcmul(consts.minus_half, loc_xy[0], consts.widths)  # align_corners=False
    y = torch.addcmul(consts.minus_half, loc_xy[1], consts.heights)
    # Far, infinite and NaN locations all land in the zero ring, reading zeros as in mmcv.
    # (clamp + nan_to_num_: fmin/fmax would do both at once but are not vectorised on CPU.)
    x = torch.clamp(x, consts.lower, consts.x_max).nan_to_num_(nan=-1.5)
    y = torch.clamp(y, consts.lower, consts.y_max).nan_to_num_(nan=-1.5)
    x0, y0 = x.floor(), y.floor()
    # Rows within a region are < 2**24, exact in float32, up to 16M padded pixels per head.
    local = torch.addcmul(x0, y0, consts.padded_widths).add_(consts.row_base).to(key_dtype)
    regions = attn.shape[0]
    region_rows = torch.arange(regions, device=attn.device, dtype=key_dtype) * consts.region_size
    key = local.add_(region_rows.view(regions, 1, 1, 1))
    return _Footprints(key, x.sub_(x0), y.sub_(y0), attn)


class _EmbeddingBagMSDA(torch.autograd.Function):
    """MSDA as bags of 4*L*P weighted rows of a zero-padded value table.

    Forward: each (b, query, head) is one bag of `F.embedding_bag(mode="sum")`, whose fused
    kernel takes the attention x bilinear weight of every corner row as a per-sample weight,
    so nothing of size samples x D is materialised.
    Backward, per chunk of samples:
    - d value, the transpose of the forward: samples are sorted by the table row of their
      footprint's top-left corner (one stable sort serves all four corners, which sit at fixed
      row offsets from it), and embedding_bag over the output gradients, with offsets from the
      sorted keys, sums each row's weighted gradients, per corner; the four sums are shifted
      into place. No atomics and a stable sort: deterministic.
    - d corner weight = <corner row, output gradient of its bag> (`_corner_dots`), chained by
      hand through the bilinear weights to the locations and the attention weights.
    Saved for backward: locations, weights and the padded table (about the size of `value`);
    footprints are recomputed (cheap elementwise work), so memory stays at a few bytes per
    sample instead of the D floats per sample of the grid_sample formulation.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        value: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
        layout: _PaddedLayout,
        compute_dtype: torch.dtype,
    ) -> torch.Tensor:
        b, _, n_heads, d = value.shape
        _, q, _, n_levels, n_points, _ = sampling_locations.shape
        cdt = compute_dtype
        table = _padded_table(value, layout, cdt)
        key_dtype = _index_dtype(table.shape[0])
        consts = _LevelConstants(layout, n_points, value.device, cdt, key_dtype)
        out = value.new_empty(b, q, n_heads, d, dtype=cdt)
        for chunk in _chunks(
            b, q, n_heads, n_levels * n_points, _chunk_budget(value.device, d, layout)
        ):
            attn = chunk.take(attention_weights).to(cdt)
            fp = _footprints(chunk.take_xy(sampling_locations).to(cdt), attn, consts, key_dtype)
            rows = fp.corner_rows(consts, chunk.first_region(n_heads) * layout.padded_size)
            weights = fp.corner_weights(
                rows.new_empty(rows.shape[0], 4, n_levels, n_points, dtype=cdt), corner_dim=1
            )
            summed = F.embedding_bag(
                rows, table, per_sample_weights=weights.view(rows.shape), mode="sum"
            )  # (R * Qc, D)
            chunk.put(out, summed.view(chunk.regions, -1, d))
        ctx.save_for_backward(sampling_locations, attention_weights, table)
        ctx.layout, ctx.compute_dtype = layout, cdt
        ctx.value_shape, ctx.value_dtype = value.shape, value.dtype
        return out.view(b, q, n_heads * d).to(value.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        sampling_locations, attention_weights, table = ctx.saved_tensors
        layout: _PaddedLayout = ctx.layout
        cdt: torch.dtype = ctx.compute_dtype
        need_value, need_loc, need_attn = ctx.needs_input_grad[:3]
        b, s, n_heads, d = ctx.value_shape
        _, q, _, n_levels, n_points, _ = sampling_locations.shape
        device = table.device
        key_dtype = _index_dtype(table.shape[0])
        consts = _LevelConstants(layout, n_points, device, cdt, key_dtype)
        per_query = n_levels * n_points
        chunks = _chunks(b, q, n_heads, per_query, _chunk_budget(device, d, layout))
        max_samples = max(c.regions * (c.q1 - c.q0) for c in chunks) * per_query

        grad_out = grad_out.reshape(b, q, n_heads, d)
        grad_value = table.new_zeros(b * n_heads, s, d) if need_value else None
        grad_loc = torch.empty_like(sampling_locations, dtype=cdt) if need_loc else None
        grad_attn = torch.empty_like(attention_weights, dtype=cdt) if need_attn else None
        scratch = _DotScratch(table, max_samples * 4)
        for chunk in chunks:
            attn = chunk.take(attention_weights).to(cdt)
            fp = _footprints(chunk.take_xy(sampling_locations).to(cdt), attn, consts, key_dtype)
            g = chunk.take(grad_out).to(cdt).reshape(-1, d)  # (R * Qc, D): one row per bag
            first = chunk.first_region(n_heads)
            if grad_value is not None:
                _scatter_value_grad(grad_value, g, fp, layout, first, chunk.regions, per_query)
            if grad_loc is None and grad_attn is None:
                continue
            rows = fp.corner_rows(consts, first * layout.padded_size)
            # d out / d (weight of corner c), each (R, Qc, L, P)
            gw = _corner_dots(table, rows, g, scratch).view(-1, 4, n_levels, n_points)
            g00, g01, g10, g11 = (t.view(fp.fx.shape) for t in gw.unbind(1))
            gx, gy = 1 - fp.fx, 1 - fp.fy
            # The corner dots interpolated along y, at the left and at the right column.
            left, right = g00 * gy + g10 * fp.fy, g01 * gy + g11 * fp.fy
            region_major = chunk.view(grad_attn if grad_attn is not None else grad_loc).shape[:5]
            if grad_attn is not None:
                ga = (left * gx).view(region_major)
                torch.addcmul(
                    ga,
                    right.view(region_major),
                    fp.fx.view(region_major),
                    out=chunk.view(grad_attn),
                )
            if grad_loc is not None:
                top, bottom = g00 * gx + g01 * fp.fx, g10 * gx + g11 * fp.fx
                dx = right.sub_(left).mul_(fp.attn).mul_(consts.widths)
                dy = bottom.sub_(top).mul_(fp.attn).mul_(consts.heights)
                torch.stack(
                    [dx.view(region_major), dy.view(region_major)], -1, out=chunk.view(grad_loc)
                )

        if grad_value is not None:
            grad_value = grad_value.view(b, n_heads, s, d).transpose(1, 2).to(ctx.value_dtype)
        if grad_loc is not None:
            grad_loc = grad_loc.to(sampling_locations.dtype)
        if grad_attn is not None:
            grad_attn = grad_attn.to(attention_weights.dtype)
        return grad_value, grad_loc, grad_attn, None, None


class _DotScratch:
    """Buffers reused across the chunks of one backward call: a fresh large allocation per
    chunk costs page faults on CPU."""

    def __init__(self, table: torch.Tensor, max_rows: int):
        self.table, self.max_rows = table, max_rows
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, n: int, width: int = 0) -> torch.Tensor:
        if name not in self._buffers:
            shape = (self.max_rows, width) if width else (self.max_rows,)
            self._buffers[name] = self.table.new_empty(shape)
        return self._buffers[name][:n]


# Whether CPU tensors use torch.sparse.sampled_addmm for the corner dot products: its CPU
# kernel fuses the gather and the dot (2-3x faster than gather + bmm here). CUDA uses gather +
# bmm, which is fast there and makes no assumption about index order.
_SPARSE_DOTS_ON_CPU = True


def _corner_dots(
    table: torch.Tensor, rows: torch.Tensor, g: torch.Tensor, scratch: _DotScratch
) -> torch.Tensor:
    """(bags, K) integer table rows, g (bags, D) -> (bags, K): <table[rows[b, k]], g[b]>."""
    bags, k = rows.shape
    n = bags * k
    if table.device.type == "cpu" and _SPARSE_DOTS_ON_CPU:
        # A (bags x table rows) CSR pattern with K entries per bag: sampled_addmm evaluates
        # (g @ table.T) at those entries only; entry order and repeats within a row are fine.
        # Writing into the pattern's own values (zeroed: beta=0 still multiplies them) avoids
        # a copy of the pattern.
        values = scratch.get("values", n).zero_()
        crow = torch.arange(0, n + 1, k, device=rows.device, dtype=rows.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            pattern = torch.sparse_csr_tensor(
                crow, rows.reshape(-1), values, size=(bags, table.shape[0]), check_invariants=False
            )
            torch.sparse.sampled_addmm(pattern, g, table.t(), beta=0.0, out=pattern)
        return values.view(bags, k)
    gathered = torch.index_select(
        table, 0, rows.reshape(-1), out=scratch.get("rows", n, g.shape[1])
    )
    return torch.bmm(gathered.view(bags, k, -1), g.unsqueeze(-1)).view(bags, k)


def _scatter_value_grad(
    grad_value: torch.Tensor,
    g: torch.Tensor,
    fp: _Footprints,
    layout: _PaddedLayout,
    first_region: int,
    regions: int,
    per_bag: int,
) -> None:
    """grad_value (B*nH, S, D) += the transpose of a chunk's forward, for its regions."""
    d = g.shape[1]
    n_rows = regions * layout.padded_size
    keys = fp.key.view(-1)
    n = keys.shape[0]
    # A stable sort (deterministic sums); int16 keys sort ~1.5x faster where they fit.
    order = torch.argsort(keys.to(torch.int16) if n_rows <= 2**15 else keys, stable=True)
    counts = torch.bincount(keys, minlength=n_rows)
    starts = counts.cumsum(0).sub_(counts)  # first sorted sample of each table row
    # bag of sample i is i // per_bag: a gather from a repeated arange beats integer division
    bags = g.shape[0]
    bag_ids = torch.arange(bags, device=g.device)[:, None].expand(bags, per_bag).reshape(-1)
    bag_of_sample = bag_ids.index_select(0, order)
    fx, fy, attn = (t.reshape(-1).index_select(0, order) for t in (fp.fx, fp.fy, fp.attn))
    weights = _corner_weights(fx, fy, attn, g.new_empty(4, n), corner_dim=0)
    # One embedding_bag for the four corners: bag (c, row) sums w_c * g over the samples whose
    # top-left corner is `row`, i.e. the same sorted samples with corner c's weights.
    per_row = F.embedding_bag(
        bag_of_sample.expand(4, n).reshape(-1),
        g,
        (starts + torch.arange(4, device=g.device)[:, None] * n).view(-1),
        mode="sum",
        per_sample_weights=weights.view(-1),
    ).view(4, regions, layout.padded_size, d)
    dst = grad_value[first_region : first_region + regions]
    p = _PAD
    for lvl, ((h, w), start) in enumerate(zip(layout.shapes, layout.starts, strict=True)):
        t00, t01, t10, t11 = (layout.padded_level(t, lvl) for t in per_row)
        # Pixel (y, x) sits at padded (y + p, x + p) and is corner (dy, dx) of the footprint
        # whose top-left is (y + p - dy, x + p - dx).
        level = t00[:, p : p + h, p : p + w] + t01[:, p : p + h, p - 1 : p - 1 + w]
        level += t10[:, p - 1 : p - 1 + h, p : p + w]
        level += t11[:, p - 1 : p - 1 + h, p - 1 : p - 1 + w]
        dst[:, start : start + h * w] += level.reshape(regions, h * w, d)


def _index_dtype(n_rows: int) -> torch.dtype:
    """int32 indices where they fit: less memory traffic and faster sorts."""
    return torch.int32 if n_rows < 2**31 - 1 else torch.int64


def _chunk_budget(device: torch.device, d: int, layout: _PaddedLayout) -> int:
    """Samples per chunk: _CHUNK_ELEMS gathered scalars of 4 corners x D channels, but at least
    8 per padded pixel of a region: each chunk pays a scatter over its regions' whole tables,
    which must stay small next to its samples (measured: splitting a head's queries into
    chunks much smaller than that costs up to 1.6x the time)."""
    elems = _CHUNK_ELEMS["cuda" if device.type == "cuda" else "cpu"]
    return max(1, elems // (4 * d), _MIN_SAMPLES_PER_PIXEL * layout.padded_size)


def msda_pytorch(
    value: torch.Tensor,
    shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The "pytorch" backend. Computes in float32 (float64 if an input is float64); returns
    value's dtype. Differentiable w.r.t. all three tensors (first order)."""
    b, _, n_heads, d = value.shape
    q = sampling_locations.shape[1]
    if value.numel() == 0 or sampling_locations.numel() == 0:
        return empty_or_zero(value, q, n_heads, d, sampling_locations, attention_weights)
    cdt = compute_dtype(value, sampling_locations, attention_weights)
    # The function picks its own precision; autocast must not re-cast its matmuls.
    with torch.autocast(device_type=value.device.type, enabled=False):
        return _EmbeddingBagMSDA.apply(
            value, sampling_locations, attention_weights, _PaddedLayout.of(shapes), cdt
        )
