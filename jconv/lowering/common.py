"""Helpers the lowerings share: output sizes, tap windows, the accumulator dtype, the
kernel and padding of an input gradient, and a 1x1 conv as products over channels."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jconv import shapes
from jconv.lowering import custom
from jconv.lowering.spec import ConvSpec
from jconv.lowering.xla import pad_trailing


def out_spatial(spatial, kernel, spec: ConvSpec) -> tuple[int, ...]:
    """The forward output size per dimension."""
    return tuple(
        (i + lo + hi - d * (k - 1) - 1) // s + 1
        for i, k, s, d, (lo, hi) in zip(spatial, kernel, spec.stride, spec.dilation, spec.pads)
    )


def with_input_past(x_shape, kernel, spec: ConvSpec) -> ConvSpec:
    """``spec`` of a forward conv with ``output_padding`` holding, per dimension, the
    input rows past the last window: what the transposed conv of its output cotangent
    (its input gradient) must add back to give the input's size. A forward conv has no
    output padding of its own."""
    out = out_spatial(x_shape[2:], kernel, spec)
    past = tuple(
        i + lo + hi - ((o - 1) * s + d * (k - 1) + 1)
        for i, o, k, s, d, (lo, hi) in zip(
            x_shape[2:], out, kernel, spec.stride, spec.dilation, spec.pads
        )
    )
    return spec._replace(output_padding=past)


def axis_window(size: int, start: int, step: int, out: int):
    """Slice of an unpadded axis and the zeros around it that give ``x_pad[start + step·q]``.

    ``start`` is in unpadded coordinates (negative inside the low padding). Returns
    ``(first, last, zeros_lo, zeros_hi)``, or None when no output reads the input.
    """
    q_lo = -(start // step) if start < 0 else 0  # the first q with start + step·q >= 0
    q_hi = min(out - 1, (size - 1 - start) // step)
    if q_hi < q_lo:
        return None
    return start + step * q_lo, start + step * q_hi + 1, q_lo, out - 1 - q_hi


def windows(x, kernel, spec: ConvSpec, fuse_pads: bool = False):
    """``(t, x_t)`` per kernel tap; ``x`` is (..., *sp), ``x_t`` is (..., *out).

    By default every window is a strided slice of the zero-padded input. With
    ``fuse_pads`` it is a slice of the unpadded input with zeros padded around
    it, which XLA fuses into a consumer loop instead of copying the padded input
    first: faster for a depthwise forward of few taps (``taps.shift_conv``), but
    slower where a consumer sums many windows (grouped convs, more taps) or feeds
    them to matrix products.
    """
    n = len(kernel)
    lead, spatial = x.ndim - n, x.shape[-n:]
    out = out_spatial(spatial, kernel, spec)
    if not fuse_pads:
        x = pad_trailing(x, spec.pads)
        spec = spec._replace(pads=((0, 0),) * n)  # negative pads above cropped x
        spatial = x.shape[-n:]
    for t in np.ndindex(*kernel):
        axes = [
            axis_window(size, d * ti - lo, s, o)
            for size, d, ti, (lo, _), s, o in zip(
                spatial, spec.dilation, t, spec.pads, spec.stride, out
            )
        ]
        if any(a is None for a in axes):
            yield t, jnp.zeros(x.shape[:lead] + out, x.dtype)
            continue
        xt = lax.slice(
            x,
            [0] * lead + [a[0] for a in axes],
            list(x.shape[:lead]) + [a[1] for a in axes],
            [1] * lead + list(spec.stride),
        )
        if fuse_pads:
            xt = pad_trailing(xt, [(a[2], a[3]) for a in axes])
        yield t, xt


def shifted_cotangents(dy, kernel, spec: ConvSpec, size, axes):
    """For each kernel tap (row-major), a stride-1 conv's output cotangent ``dy``
    placed where that tap meets the input: ``dy``'s ``axes`` (the spatial ones, in
    order) padded or cropped from the output's extent to the input's ``size``, zero
    where the tap meets no output. Its product with the input is that tap's weight
    gradient, as the input's window times ``dy`` is (:func:`windows`); with fewer
    output than input channels these copies are the smaller."""
    pads = [(0, 0, 0)] * dy.ndim
    for tap in np.ndindex(*kernel):
        for a, d, t, (lo, _), n in zip(axes, spec.dilation, tap, spec.pads, size):
            shift = d * t - lo
            pads[a] = (shift, n - dy.shape[a] - shift, 0)
        yield lax.pad(dy, jnp.zeros((), dy.dtype), pads)


def col2im(w, dy, spec: ConvSpec, budget: int | None = None):
    """The input gradient of a forward conv with ``w`` (O, C/g, *k) at ``dy`` (N, O, *out)
    (``spec.output_padding``: the input rows past the last window, as
    :func:`with_input_past` gives them): one product over output channels,
    ``P[g, n, q, c, t] = Σ_o dy[n, (g, o), q]·w[(g, o), c, t]``, reading the weight as it
    lies, then every tap's plane of ``P`` put back where its window read the input
    (zeros between, at the stride) and summed in one pass. ``P`` (∏out·C·∏k per image,
    in the accumulator's dtype) is made a block at a time of at most ``budget`` bytes
    (by default the input's or the weight's size, at most ``BLOCK_BYTES``): of images,
    or where one image's outgrows that, of output planes along the first spatial
    dimension, each added into the planes its windows read. No copy of the weight."""
    batch, out, kernel = dy.shape[0], dy.shape[2:], w.shape[2:]
    acc, size, cin = accumulator(dy.dtype), input_size(out, kernel, spec), spec.groups * w.shape[1]
    plane = math.prod(out[1:]) * cin * math.prod(kernel) * jnp.dtype(acc).itemsize
    if budget is None:
        dx = batch * math.prod(size) * cin * dy.dtype.itemsize
        budget = min(BLOCK_BYTES, max(w.size * w.dtype.itemsize, dx))
    if batch == 0 or batch * out[0] * plane <= budget:
        return _col2im(w, dy, spec, acc)
    if out[0] * plane <= budget:  # blocks of images
        rows = group_block(batch, out[0] * plane, budget)

        def images(i):
            return _col2im(w, block(dy, i, rows, 0), spec, acc)

        return by_blocks(images, batch // rows, (batch, cin, *size), acc, 0, dy, w)
    # blocks of output planes: block i reads input planes s·b·i - lo on, ``span`` of them
    rows = max(1, budget // (batch * plane))
    count, (s, d, (lo, _)) = -(-out[0] // rows), (spec.stride[0], spec.dilation[0], spec.pads[0])
    span = (rows - 1) * s + d * (kernel[0] - 1) + 1
    dy = pad_trailing(dy, [(0, count * rows - out[0])] + [(0, 0)] * (len(out) - 1))
    local = spec._replace(
        pads=((0, 0), *spec.pads[1:]), output_padding=(0, *spec.output_padding[1:])
    )
    reach = (count * rows - 1) * s + d * (kernel[0] - 1) + 1
    total = custom.zeros((batch, cin, max(reach, lo + size[0]), *size[1:]), acc, dy, w)

    def body(i, total):
        part = _col2im(w, block(dy, i, rows, 2), local, acc)  # (N, C, span, ...)
        at = i * rows * s
        here = lax.dynamic_slice_in_dim(total, at, span, 2)
        return lax.dynamic_update_slice_in_dim(total, here + part, at, 2)

    total = lax.fori_loop(0, count, body, total)
    return lax.slice_in_dim(total, lo, lo + size[0], axis=2)


def input_size(out, kernel, spec: ConvSpec) -> tuple[int, ...]:
    """The input size whose forward output is ``out``: the transposed conv's output size,
    ``spec.output_padding`` holding the rows past the last window."""
    return shapes.transposed_spatial(
        out, kernel, spec.stride, spec.pads, spec.dilation, spec.output_padding
    )


def _col2im(w, dy, spec: ConvSpec, acc):
    """:func:`col2im` in one product."""
    kernel, g = w.shape[2:], spec.groups
    batch, cout, out = dy.shape[0], dy.shape[1], dy.shape[2:]
    size = input_size(out, kernel, spec)
    p = lax.dot_general(
        dy.reshape(batch, g, cout // g, *out),
        w.reshape(g, cout // g, *w.shape[1:]),
        (((2,), (1,)), ((1,), (0,))),
        precision=spec.precision,
        preferred_element_type=acc,
    )  # (g, N, *out, C/g, *k)
    total = custom.zeros((batch, g * w.shape[1], *size), acc, dy, w)
    for t in np.ndindex(*kernel):
        first = [d * ti - lo for d, ti, (lo, _) in zip(spec.dilation, t, spec.pads)]
        if any(axis_window(*a) is None for a in zip(size, first, spec.stride, out)):
            continue  # a window wholly inside the padding
        piece = jnp.moveaxis(p[(..., *t)], -1, 2).swapaxes(0, 1)  # (N, g, C/g, *out)
        piece = piece.reshape(batch, g * w.shape[1], *out)
        place = [
            (a, i - a - (o - 1) * s - 1, s - 1) for i, a, s, o in zip(size, first, spec.stride, out)
        ]
        total = total + lax.pad(piece, jnp.zeros((), acc), [(0, 0, 0)] * 2 + place)
    return total


BLOCK_BYTES = 4 << 20  # one block of the input: about what stays in cache

# The most a zero-padded copy of an input may outgrow it (its spatial size, padded,
# over its own) where a form would copy it for speed rather than pad each window;
# a depthwise forward's temporaries then grew about as much against xla's (7x7 at
# 24²: copy 1.56x, temporaries 1.53x; at 14²: 2.04x, 1.97x). A copy of at most
# ``SMALL_COPY`` bytes is made whatever its growth.
PAD_GROWTH = 1.8
SMALL_COPY = 1 << 20


def pad_growth(spatial, pads) -> float:
    """How many times ``spatial`` grows when padded by ``pads`` ((lo, hi) per axis)."""
    return math.prod(n + max(lo, 0) + max(hi, 0) for n, (lo, hi) in zip(spatial, pads)) / max(
        math.prod(spatial), 1
    )


def pads_once(shape, pads, dtype) -> bool:
    """Whether a form may copy an input of ``shape`` (N, C, *sp) zero-padded by ``pads``,
    in ``dtype``: the copy outgrows it at most ``PAD_GROWTH`` times, or is small."""
    growth = pad_growth(shape[2:], pads)
    copy = growth * math.prod(shape) * jnp.dtype(dtype).itemsize
    return growth <= PAD_GROWTH or copy <= SMALL_COPY


def group_block(groups: int, per_group: int, budget: int = BLOCK_BYTES) -> int:
    """The most groups, a divisor of ``groups``, whose ``per_group`` bytes each fit in
    ``budget``; 1 when not even one group fits."""
    return max(
        [b for b in range(1, groups + 1) if groups % b == 0 and b * per_group <= budget] or [1]
    )


def split_block(count: int, per: int, budget: int = BLOCK_BYTES) -> int:
    """``group_block`` of ``count`` items of ``per`` bytes, but at least two blocks where
    ``count`` is more than one: where all fit, the largest proper divisor."""
    b = group_block(count, per, budget)
    if b < count or count < 2:
        return b
    return max(d for d in range(1, count) if count % d == 0)


def by_blocks(part, count: int, out_shape, dtype, axis: int, *like):
    """The array of ``out_shape`` whose axis ``axis`` holds ``count`` equal blocks,
    block ``i`` being ``part(i)``, filled one block at a time in a loop: one block's
    temporaries exist at once, and the loop's operands are whole arrays that XLA
    cannot fuse their producers into (``like``: operands whose ``shard_map`` axes
    the result varies over)."""
    rows = out_shape[axis] // count

    def body(i, out):
        return lax.dynamic_update_slice_in_dim(out, part(i), i * rows, axis=axis)

    return lax.fori_loop(0, count, body, custom.zeros(out_shape, dtype, *like))


def block(a, i, rows: int, axis: int):
    """Block ``i`` of ``rows`` along ``axis``."""
    return lax.dynamic_slice_in_dim(a, i * rows, rows, axis=axis)


def over_groups(form, x, w, spec: ConvSpec, b: int):
    """``form(x, w, spec)`` of a grouped conv, ``b`` groups at a time (see ``by_blocks``)."""
    g, per_in, mult = spec.groups, x.shape[1] // spec.groups, w.shape[0] // spec.groups
    sub = spec._replace(groups=b)
    out = jax.eval_shape(lambda a, v: form(a, v, sub), x[:, : b * per_in], w[: b * mult])

    def part(i):
        return form(block(x, i, b * per_in, 1), block(w, i, b * mult, 0), sub)

    shape = (x.shape[0], out.shape[1] * (g // b), *out.shape[2:])
    return by_blocks(part, g // b, shape, out.dtype, 1, x, w)


def add_bias(y, b=None):
    """``y`` (N, C, *sp) plus the bias ``b`` (C,) per channel, in ``y``'s dtype (``y``
    itself without one)."""
    if b is None:
        return y
    return y + b.astype(y.dtype).reshape((-1,) + (1,) * (y.ndim - 2))


def accumulator(dtype):
    """The dtype sums run in: float32 or wider."""
    return jnp.promote_types(dtype, jnp.float32)


def transposed_spec(spec: ConvSpec, kernel) -> ConvSpec:
    """The stride-1 conv of ``dy`` that gives ``dx`` (pads ``d·(k−1) − pad``)."""
    pads = tuple(
        (d * (k - 1) - lo, d * (k - 1) - hi)
        for k, d, (lo, hi) in zip(kernel, spec.dilation, spec.pads)
    )
    return spec._replace(pads=pads)


def flip_swap(w, groups: int):
    """(O, C/g, *k) -> (C, O/g, *k), flipped: the kernel of the input gradient."""
    cout, per_in, kernel = w.shape[0], w.shape[1], w.shape[2:]
    w = w.reshape(groups, cout // groups, per_in, *kernel).swapaxes(1, 2)
    w = w.reshape(groups * per_in, cout // groups, *kernel)
    return jnp.flip(w, tuple(range(2, w.ndim)))


def light_weight(x_shape, w_shape) -> bool:
    """Whether a 1x1 weight broadcast over the batch is at most a quarter of the
    (windowed) input ``x_shape``. Then ``"matmul"`` broadcasts it (one product per image,
    written straight into NCHW order); else one product over the batch, whose weight
    gradient is one product too (autodiff of the broadcast form sums one weight per
    image), and a 1-d layer runs XLA's own. Forward / forward+backward against xla,
    float32, about 40 layers: at 0.01-0.16 weights per input (8x256x56² -> 64, 32x144x28² ->
    24, ...) broadcast 2.5-5.7x / 1.8-4.0x, one product 1.9-2.9x / 1.4-2.8x; in 2-d from
    0.5 on (8x512x14² -> 128 ... 64x2048x7² -> 512) broadcast 0.25-2.4x / 0.28-2.7x
    (5-7x xla's memory above 10 weights per input), one product 1.3-4.0x / 1.8-5.0x (at
    most 1.94x xla's memory); at 0.33-0.5 a draw. In 1-d, where XLA's 1x1 conv runs
    about twice as fast as its 2-d one, from 0.5 on (8x512x1024 -> 512 ... 8x768x512 ->
    768) both forms lost forward+backward: broadcast 0.61-1.00x, one product 0.63-0.94x
    (1.9-2.0x xla's memory)."""
    return 4 * x_shape[0] * math.prod(w_shape[:2]) <= math.prod(x_shape)


def channel_product(x, w, spec: ConvSpec, broadcast: bool):
    """1x1 stride-1 unpadded conv of ``x`` (N, C, *sp) with ``w`` (O, C/g, 1, ...) as
    products over channels. With ``broadcast`` the weight is broadcast over the batch:
    one (O/g, C/g) @ (C/g, Q) product per image and group, written straight into NCHW
    order (2.4x faster on CPU than a product whose output XLA transposes back); else one
    product (narrower dtypes: the broadcast's weight gradient would round per image)."""
    g, (batch, cin), cout = spec.groups, x.shape[:2], w.shape[0]
    xg = x.reshape(batch, g, cin // g, math.prod(x.shape[2:]))
    wg = w.reshape(g, cout // g, cin // g)
    kw = dict(precision=spec.precision, preferred_element_type=spec.preferred_element_type)
    if broadcast:
        wb = jnp.broadcast_to(wg, (batch, *wg.shape))
        y = lax.dot_general(wb, xg, (((3,), (2,)), ((0, 1), (0, 1))), **kw)
    else:
        y = jnp.einsum("ngcq,goc->ngoq", xg, wg, **kw)
    return y.reshape(batch, cout, *x.shape[2:])
