"""Forms that visit a convolution one kernel tap at a time.

For tap ``t`` (a position in the kernel) the input window is a strided slice
of the padded input, ``x_t[q] = x_pad[s·q + d·t]``, the same shape as the output.
Then, within each of the ``g`` groups,

* forward: ``y = Σ_t W_t · x_t`` (``W_t``: the (O/g, C/g) matrix of tap ``t``);
* weight gradient: ``dW_t = dy · x_tᵀ``, one matrix product per tap.

``"shift"`` computes the forward as broadcast multiply-adds (one fused loop, no
matrix product), which suits depthwise and narrow grouped convolutions whose
few terms per output (``C/g · ∏k``) XLA's CPU convolution runs one by one.
``"tapgrad"`` keeps XLA's forward and input gradient and replaces its weight
gradient, the slow part on CPU, by the per-tap products.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jconv.lowering import custom, phases, xla
from jconv.lowering.common import (
    BLOCK_BYTES,
    accumulator,
    add_bias,
    flip_swap,
    group_block,
    over_groups,
    pads_once,
    shifted_cotangents,
    split_block,
    transposed_spec,
    windows,
    with_input_past,
)
from jconv.lowering.spec import ConvSpec
from jconv.lowering.xla import pad_trailing

FUSED_PAD_TAPS = 12


def shift_conv(x, w, spec: ConvSpec):
    """Forward conv of ``x`` (N, C, *sp) with ``w`` (O, C/g, *k) as broadcast multiply-adds.

    With one input channel per group and at most ``FUSED_PAD_TAPS`` taps, the windows
    pad themselves inside the fused loop (``windows``' ``fuse_pads``): 3x3, 1x7, 1-d 3
    to 11 taps ran 1.1-4x faster than from a padded copy. With more, that loop ran
    2-8.7x slower than padding the input once (1-d 15 to 25 taps, 3x5, 4x4, 5x5, 7x7,
    3x3x3), which is done where ``pads_once`` allows the copy (7x7 at 14², 2.04x the
    input, held 1.98x xla's forward temporaries; 8x96x12² and 8x192x6²: 9-12x slower fused).
    """
    n, g = x.ndim - 2, spec.groups
    batch, (cout, per_in), kernel = x.shape[0], w.shape[:2], w.shape[2:]
    dtype = spec.preferred_element_type or x.dtype
    acc = accumulator(dtype)
    xg = x.reshape(batch, g, per_in, *x.shape[2:]).astype(acc)
    wg = w.reshape(g, cout // g, per_in, *kernel).astype(acc)
    y = None
    few = math.prod(kernel) <= FUSED_PAD_TAPS
    fuse_pads = per_in == 1 and (few or not pads_once(x.shape, spec.pads, acc))
    for t, xt in windows(xg, kernel, spec, fuse_pads=fuse_pads):
        for c in range(per_in):
            term = xt[:, :, c, None] * wg[(slice(None), slice(None), c, *t)].reshape(
                (1, g, cout // g) + (1,) * n
            )
            y = term if y is None else y + term
    return y.reshape(batch, cout, *y.shape[3:]).astype(dtype)


def _shift_dx(w, dy, spec: ConvSpec):
    """Input gradient of a stride-1 shift conv: a shift conv of ``dy``, over blocks of
    groups (``_in_group_loop``)."""
    return _in_group_loop(
        shift_conv, dy, flip_swap(w, spec.groups), transposed_spec(spec, w.shape[2:])
    )


def _in_group_loop(form, dy, w, spec: ConvSpec):
    """``form(dy, w, spec)`` (an input gradient, or a forward under differentiation) in
    a loop over at least two blocks of groups. Given ``dy`` whole, XLA fused the
    cotangent's producers into the windows of ``dy`` they feed: with a loss of
    ``sin(y)``, the forward's multiply-adds ran again in every window of the input
    gradient, from a copy of every input window (8x96x56² 3x3: 105 ms and 83 MB of
    temporaries against 30 ms and 19 MB in a loop; 5x5: 8.3x xla's memory). A loop's
    operand is one materialized array."""
    g = spec.groups
    if g < 2:
        return form(dy, w, spec)
    per_group = math.prod(dy.shape) // g * jnp.dtype(accumulator(dy.dtype)).itemsize
    return over_groups(form, dy, w, spec, split_block(g, per_group))


def _shift_dw(x, dy, spec: ConvSpec, kernel):
    if x.shape[1] == spec.groups:
        return depthwise_weight_grad(x, dy, kernel, spec)
    from jconv.lowering import dense  # wider groups: per-group XLA weight gradients

    shape = (dy.shape[1], x.shape[1] // spec.groups, *kernel)
    return custom.transpose(lambda v: dense.pergroup(x, v, spec), shape, dy.dtype, dy)


def _shift_strided_dx(w, dy, spec: ConvSpec):
    """Input gradient of a strided shift conv: the sub-pixel transposed conv of ``dy``,
    its stride-1 conv a shift conv (autodiff's transposes of the strided windows held
    8x xla's temporary memory on a 3x3 stride-2 conv with 4 channels per group). With
    more than 4 taps in a stride phase, over blocks of groups (``_in_group_loop``: under a
    loss of ``y²``, 5x5 and 7x7 at stride 2 held 3.6x and 7.6x xla's temporaries, and
    3x3x3 at stride 2 ran 246 ms against 26 ms in the loop on 2x64x16x32²); with 4
    or fewer, whole (3x3 at stride 2: 1.0x xla's; MobileNetV2's step ran 0.85x in the
    loop), and materialized (``custom.materialized``: the cotangent's producers, a batch
    norm's backward, had run again for every tap; MobileNetV2's step 1.14x).
    ``output_padding`` holds the input rows past the last window
    (``with_input_past``). Only where ``spec.widen`` (CPU, input on one device): its
    depth-to-space interleave would gather a height-split input, which autodiff's
    transposes keep local."""

    def form(dy, w, spec):
        return phases.conv_transpose(dy, w, spec._replace(transposed=True), shift_conv)

    if not _strided_loops(w.shape[2:], spec):
        return custom.materialized(lambda a, b: form(a, b, spec), dy, w)
    return _in_group_loop(form, dy, w, spec)


def _strided_loops(kernel, spec: ConvSpec) -> bool:
    """Whether a strided shift conv's input gradient and its differentiated forward
    run over blocks of groups (``_in_group_loop``): where a stride phase gets more than 4
    kernel taps. One test for both, so that they always agree."""
    phase_taps = math.prod(
        max(np.bincount(d * np.arange(k) % s))
        for k, s, d in zip(kernel, spec.stride, spec.dilation)
    )
    return phase_taps > 4


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _strided_trained(x, w, spec: ConvSpec):
    """The strided shift conv; differentiated, its output comes from a loop over blocks
    of groups (``_in_group_loop``): with jaxlib 0.8.2's XLA and a bias, the fused forward
    of a 7x7 stride-2 layer was copied into the gradient's consumers with every tap
    window (105 MB of temporaries against xla's 14 MB under a loss of ``sin(y)``)."""
    return custom.bilinear("shift_strided", x, w, spec)


@_strided_trained.defjvp
def _strided_trained_jvp(spec, primals, tangents):
    (x, w), (dx, dw) = primals, tangents
    y = _in_group_loop(shift_conv, x, w, spec)
    return y, custom.bilinear("shift_strided", dx, w, spec) + custom.bilinear(
        "shift_strided", x, dw, spec
    )


custom.register("shift", shift_conv, dx=_shift_dx, dw=_shift_dw)
custom.register("shift_strided", shift_conv, dx=_shift_strided_dx, dw=_shift_dw)
custom.register("shift_strided_split", shift_conv, dw=_shift_dw)


@jax.custom_jvp
def _keep_loop_fusion(y):
    """``y`` unchanged, through an op XLA's CPU backend keeps and YNNPACK does not take
    (``reduce_precision`` to ``y``'s own precision). Without it a YNNPACK fusion that
    starts at a consumer (a norm's reduction) swallows the multiply-adds and copies out
    every tap window first: a 3-d depthwise layer and a channel mean took 32 MB of
    temporaries for a 2 MB input, 2 MB with it; MobileNetV2's inference 53.7 -> 32.0 ms.
    Under differentiation it is left out (its JVP returns ``y`` itself): the same
    training step ran 8% slower with it."""
    info = jnp.finfo(y.dtype)
    return lax.reduce_precision(y, info.nexp, info.nmant)


_keep_loop_fusion.defjvp(lambda primals, tangents: (primals[0], tangents[0]))


def shift(x, w, spec: ConvSpec, b=None):
    """The ``"shift"`` lowering, plus the bias ``b`` when given; its input gradient
    (stride 1) is a shift conv too. On CPU with the input on one device, its output is
    materialized (``custom.materialized``) with the bias added inside."""

    def form(x, w, *b):
        return add_bias(_shift(x, w, spec), *b)

    operands = (x, w) if b is None else (x, w, b)
    return custom.materialized(form, *operands) if spec.widen else form(*operands)


def _shift(x, w, spec: ConvSpec):
    if all(s == 1 for s in spec.stride):
        return _keep_loop_fusion(custom.bilinear("shift", x, w, spec))
    if not spec.widen:
        return _keep_loop_fusion(custom.bilinear("shift_strided_split", x, w, spec))
    x, spec = xla.within_reach(x, w.shape[2:], spec)
    spec = with_input_past(x.shape, w.shape[2:], spec)
    if not _strided_loops(w.shape[2:], spec):
        return _keep_loop_fusion(custom.bilinear("shift_strided", x, w, spec))
    return _keep_loop_fusion(_strided_trained(x, w, spec))


def depthwise_weight_grad(x, dy, kernel, spec: ConvSpec):
    """``dw`` (g·m, 1, *k) of a depthwise conv: Σ over batch and space of ``x_t · dy``.

    On CPU with the input on one device (``spec.widen``), every tap's sum in one pass
    per tile (``_tap_sums``), in a loop over tiles of images (or, where one image is
    more than a block, of channels): at least two tiles, so that the loop's operands
    are materialized arrays. Given the cotangent whole, XLA fused its producers into
    that pass, the forward's multiply-adds included, and copied out every tap window
    (8x96x56² 3x3 under a loss of ``sin(y)``: 87 MB of temporaries against 9.6 MB in
    the loop, 17 MB with one sum per tap and xla's 39 MB). Elsewhere
    (``_per_tap_weight_grad``), one sum per tap.
    """
    g, batch = spec.groups, x.shape[0]
    image = math.prod(x.shape[1:]) * x.dtype.itemsize
    tiles = _tiles(batch, g, image) if spec.widen and x.size else None
    if tiles is None:
        return _per_tap_weight_grad(x, dy, kernel, spec)
    (nb, cb), mult, acc = tiles, dy.shape[1] // g, accumulator(dy.dtype)
    per_row, lead = g // cb, (0,) * len(kernel)

    def body(i, dw):
        n0, c0 = (i // per_row) * nb, (i % per_row) * cb
        xs = lax.dynamic_slice(x, (n0, c0, *lead), (nb, cb, *x.shape[2:]))
        ds = lax.dynamic_slice(dy, (n0, c0 * mult, *lead), (nb, cb * mult, *dy.shape[2:]))
        part = _tap_sums(xs, ds, kernel, spec._replace(groups=cb))  # (cb, m, taps)
        at = (c0, 0, 0)
        return lax.dynamic_update_slice(dw, lax.dynamic_slice(dw, at, part.shape) + part, at)

    shape = (g, mult, math.prod(kernel))
    dw = lax.fori_loop(0, batch // nb * per_row, body, custom.zeros(shape, acc, x, dy))
    return dw.reshape(g * mult, 1, *kernel).astype(dy.dtype)


def _tiles(batch: int, groups: int, image: int):
    """(images, channels) per tile of ``depthwise_weight_grad``'s loop: the most images
    that fit a block (``BLOCK_BYTES``), else one image's most channels; at least two
    tiles. ``None`` where no split gives two (one image of one channel)."""
    if batch > 1 and image <= BLOCK_BYTES:
        return split_block(batch, image, BLOCK_BYTES), groups
    if batch == 1 and groups == 1:
        return None
    block = split_block if batch == 1 else group_block
    return 1, block(groups, image // groups, BLOCK_BYTES)


def _tap_sums(x, dy, kernel, spec: ConvSpec):
    """Every tap's Σ ``x_t · dy`` over batch and space, (g, m, taps), for ``x`` (N, g,
    *sp) and ``dy`` (N, g·m, *out): variadic reductions of up to 9 taps each, which
    XLA's CPU backend runs as one loop reading the windows in place. Per-tap sums
    (``_per_tap_weight_grad``) each copied their window out first: training a
    depthwise layer took 1.15-2.3x as long, with 1.0-3.5x the temporaries (13 layers,
    1-d to 3-d, strided, 3x3 to 7x7)."""
    g, n, acc = spec.groups, len(kernel), accumulator(dy.dtype)
    xs = x.reshape(x.shape[0], g, 1, *x.shape[2:]).astype(acc)
    ds = dy.reshape(dy.shape[0], g, -1, *dy.shape[2:]).astype(acc)
    prods = [xt * ds for _, xt in windows(xs, kernel, spec, fuse_pads=True)]
    zero, axes, sums = jnp.zeros((), acc), (0, *range(3, 3 + n)), []
    for i in range(0, len(prods), 9):
        part = tuple(prods[i : i + 9])
        sums += lax.reduce(part, (zero,) * len(part), _add_pairs, axes)
    return jnp.stack(sums, axis=-1)


def _add_pairs(a, b):
    return tuple(u + v for u, v in zip(a, b))


def _per_tap_weight_grad(x, dy, kernel, spec: ConvSpec):
    """``depthwise_weight_grad`` one tap at a time.

    A loop over blocks of channels, each small enough to stay in cache while its
    ``∏k`` sums read it (one pass over the whole tensor per tap is 2-3x slower on
    CPU). Within a block, a loop over taps, so that one window exists at a time:
    XLA's CPU backend copies out every window it is given at once, 8-27 times the
    input's memory at stride 1, and the loop was also 1.0-1.7x faster. Strided, the
    block is first split into its stride phases (``x[s·q + r]`` for each ``r``), so
    that each tap's window is a unit-stride slice of one phase. Where the strided
    windows together hold at most 8 inputs (``∏k / ∏s <= 8``: 3x3 and 5x5 at stride 2)
    they stay static instead, which ran 1.2-2.4x faster than the phase copy; beyond,
    static windows held 2.5-4.4x xla's temporaries (7x7 and 9x9 at stride 2) and the
    loop was 1.2-2.3x faster; 3-d strided windows always take the phase loop (3x3x3
    at stride 2: static, 4.8x xla's temporaries). A block holds at most a quarter of
    the input. Static windows also keep a split spatial axis local (the loop's dynamic
    slices would gather it), so off CPU or split they stay static.
    Channels are never sharded, so the loops keep batch and space sharding.
    """
    g, batch, n = spec.groups, x.shape[0], len(kernel)
    mult = dy.shape[1] // g
    plane = batch * math.prod(x.shape[2:]) * x.dtype.itemsize
    block = group_block(g, plane, min(BLOCK_BYTES, max(plane, x.size * x.dtype.itemsize // 4)))
    sub, acc, out = spec._replace(groups=block), accumulator(dy.dtype), dy.shape[2:]
    axes = (0, *range(3, dy.ndim + 1))
    stride = np.array(spec.stride)
    starts = np.array(list(np.ndindex(*kernel))) * np.array(spec.dilation)  # (taps, n)
    # per tap: its stride phase, and its window's start within that phase
    lengths = [int(v) for v in starts.max(axis=0) // stride + np.array(out)]
    table = np.concatenate(
        [np.ravel_multi_index(tuple((starts % stride).T), spec.stride)[:, None], starts // stride],
        axis=1,
    )
    static = math.prod(kernel) <= 8 * math.prod(spec.stride) and stride.max() > 1 and n < 3

    def one(i):
        xs = lax.dynamic_slice_in_dim(x, i * block, block, axis=1)
        xs = xs.reshape(batch, block, 1, *x.shape[2:]).astype(acc)
        ds = lax.dynamic_slice_in_dim(dy, i * block * mult, block * mult, axis=1)
        ds = ds.reshape(batch, block, mult, *out).astype(acc)
        if static or not spec.widen:  # (widen: CPU, unsplit)
            return jnp.stack([jnp.sum(xt * ds, axis=axes) for _, xt in windows(xs, kernel, sub)])
        phases = _phases(xs, spec, lengths)  # (∏s, N, block, 1, *lengths)

        def tap(row):
            at = (row[0], 0, 0, 0, *(row[1 + j] for j in range(n)))
            window = lax.dynamic_slice(phases, at, (1, *phases.shape[1:4], *out))[0]
            return jnp.sum(window * ds, axis=axes)

        return lax.map(tap, jnp.asarray(table, jnp.int32))  # (taps, block, m)

    dw = lax.map(one, jnp.arange(g // block))  # (blocks, taps, block, m)
    return jnp.moveaxis(dw, 1, -1).reshape(g * mult, 1, *kernel).astype(dy.dtype)


def _phases(x, spec: ConvSpec, lengths):
    """The zero-padded ``x`` (..., *sp) split into its stride phases, (∏s, ..., *lengths):
    phase ``r`` holds ``x_pad[s·q + r]`` for ``q < lengths``."""
    n, lead = len(lengths), x.ndim - len(lengths)
    x = pad_trailing(
        x,
        [
            (lo, s * size - lo - i)
            for (lo, _), s, size, i in zip(spec.pads, spec.stride, lengths, x.shape[lead:])
        ],
    )
    x = x.reshape(*x.shape[:lead], *(v for s, size in zip(spec.stride, lengths) for v in (size, s)))
    x = x.transpose(
        *(lead + 1 + 2 * j for j in range(n)), *range(lead), *(lead + 2 * j for j in range(n))
    )
    return x.reshape(math.prod(spec.stride), *x.shape[n:])


def tap_weight_grad(x, dy, kernel, spec: ConvSpec):
    """``dw`` (O, C/g, *k) of a conv with output cotangent ``dy``: a product per tap, of
    ``dy`` with the input's window, or at stride 1 with fewer output than input channels
    of the input with ``dy`` shifted to where the tap meets it (the smaller copies),
    image by image, so that the input is read as it lies."""
    g = spec.groups
    (batch, cin), cout = x.shape[:2], dy.shape[1]
    xg = x.reshape(batch, g, cin // g, *x.shape[2:])
    dyg = dy.reshape(batch, g, cout // g, *dy.shape[2:])
    dims = tuple(range(3, dy.ndim + 1))
    acc = accumulator(dy.dtype)
    if all(s == 1 for s in spec.stride) and cout < cin:
        frames = shifted_cotangents(dyg, kernel, spec, x.shape[2:], range(3, xg.ndim))
        rows = [
            lax.dot_general(
                xg,
                f,
                ((dims, dims), ((0, 1), (0, 1))),
                precision=spec.precision,
                preferred_element_type=acc,
            )
            .sum(0)
            .swapaxes(1, 2)  # (N, g, C/g, O/g) summed over the images: the input as it lies
            for f in frames
        ]
    else:
        rows = [
            lax.dot_general(
                dyg,
                xt,
                (((0, *dims), (0, *dims)), ((1,), (1,))),
                precision=spec.precision,
                preferred_element_type=acc,
            )  # (g, O/g, C/g), summed in float32 or wider
            for _, xt in windows(xg, kernel, spec)
        ]
    dw = jnp.stack(rows, axis=-1).astype(dy.dtype)
    return dw.reshape(cout, cin // g, *kernel)


custom.register(
    "tapgrad", xla.conv, dw=lambda x, dy, spec, kernel: tap_weight_grad(x, dy, kernel, spec)
)


def tapgrad(x, w, spec: ConvSpec):
    """The ``"tapgrad"`` lowering: XLA's forward, per-tap weight gradient."""
    return custom.bilinear("tapgrad", x, w, spec)
