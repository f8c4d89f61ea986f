"""Convolutions rewritten as smaller-rank or stride-1 ones that XLA's CPU runs fast.

* ``"s2d"`` (space to depth): a stride-``s`` convolution equals a stride-1
  convolution of the input with each ``s``-block moved into channels,
  ``X'[(c, r), m] = x[c, s·m + r]``, by the kernel ``w'[o, (c, r), j] = w[o, c, s·j + r]``
  (zero past the kernel's end). Strided stems (7×7, stride 2, three channels)
  become 4×4 stride-1 convolutions over twelve channels, run ``"widened"``.
* ``"fold"``: a 3-d convolution as 2-d convolutions whose channels also hold
  the kernel's depth taps, ``X'[(n, z), (t, c)] = x[n, c, s·z + d·t]``, with the
  depth folded into the batch. On CPU (and an unsplit input) it runs over blocks
  of output depth planes, each block's input (and, as a sub-pixel form's phase,
  its output too) at most the input's size (4 MiB at most), so its temporaries
  stay near XLA's own (copying every tap at once held 3x them); each block is
  one channels-last 2-d conv, widened as in
  ``"widened"``, and the weight gradient is summed over the same blocks. The
  forward (and the input gradient at stride 1) first makes the whole input
  channels-last, outside the loop (:class:`_Blocks`), and gathers each block's depth
  taps from it, zeros in the depth padding. A weight larger than its input trains
  as XLA's convolution. Elsewhere it is one plain XLA 2-d convolution.

``"s2d"`` only moves data and adds exact zeros around one XLA convolution, so its
gradients are that convolution's (crash guard included).
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
from jax import lax

from jconv.lowering import custom, phases, widened, xla
from jconv.lowering.common import (
    BLOCK_BYTES,
    block,
    by_blocks,
    col2im,
    flip_swap,
    group_block,
    input_size,
    out_spatial,
    shifted_cotangents,
    transposed_spec,
    windows,
    with_input_past,
)
from jconv.lowering.spec import ConvSpec
from jconv.lowering.xla import pad_trailing


def s2d(x, w, spec: ConvSpec):
    """Forward conv of ``x`` (N, C, *sp) with ``w`` (O, C/g, *k) as a stride-1 conv."""
    n = x.ndim - 2
    kernel = w.shape[2:]
    out = out_spatial(x.shape[2:], kernel, spec)
    # per dim: dilated extent, blocks of the kernel, and the input length used
    ext = [d * (k - 1) + 1 for k, d in zip(kernel, spec.dilation)]
    blocks = [-(-e // s) for e, s in zip(ext, spec.stride)]
    used = [(o - 1 + b) * s for o, b, s in zip(out, blocks, spec.stride)]
    x = pad_trailing(x, [(lo, u - i - lo) for u, i, (lo, _) in zip(used, x.shape[2:], spec.pads)])
    # the dilated kernel, zero-padded to whole blocks
    tails = [(0, b * s - e) for b, s, e in zip(blocks, spec.stride, ext)]
    w = pad_trailing(w, tails, [d - 1 for d in spec.dilation])
    batch, cin, cout = x.shape[0], x.shape[1], w.shape[0]
    # (N, C, B0, s0, B1, s1, ...) -> (N, C, s0, s1, ..., B0, B1, ...)
    split = [v for u, s in zip(used, spec.stride) for v in (u // s, s)]
    x = x.reshape(batch, cin, *split)
    x = x.transpose(0, 1, *(3 + 2 * i for i in range(n)), *(2 + 2 * i for i in range(n)))
    x = x.reshape(batch, cin * math.prod(spec.stride), *(u // s for u, s in zip(used, spec.stride)))
    split = [v for b, s in zip(blocks, spec.stride) for v in (b, s)]
    w = w.reshape(cout, w.shape[1], *split)
    w = w.transpose(0, 1, *(3 + 2 * i for i in range(n)), *(2 + 2 * i for i in range(n)))
    w = w.reshape(cout, -1, *blocks)
    one = spec._replace(stride=(1,) * n, pads=((0, 0),) * n, dilation=(1,) * n)
    return widened.lowering(x, w, one, blocks=True)


def _stacked(x, w, spec: ConvSpec):
    """``fold`` in one piece: every depth tap's planes copied into channels at once, one
    2-d conv (off CPU or for a possibly split input, and the weight gradient of a grouped
    ``"fold"``, which has no blocked form)."""
    g = spec.groups
    batch, (cout, per_in, kd) = x.shape[0], w.shape[:3]
    (depth, *_), (d0, *dil), (s0, *stride) = (
        out_spatial(x.shape[2:], w.shape[2:], spec),
        spec.dilation,
        spec.stride,
    )
    xp = pad_trailing(x, [spec.pads[0], (0, 0), (0, 0)])
    taps = [
        lax.slice_in_dim(xp, t * d0, t * d0 + s0 * (depth - 1) + 1, s0, axis=2) for t in range(kd)
    ]  # each (N, C, D', H, W)
    z = jnp.stack(taps, axis=2).reshape(batch, g, per_in, kd, depth, *x.shape[3:])
    z = z.transpose(0, 4, 1, 3, 2, 5, 6).reshape(batch * depth, g * kd * per_in, *x.shape[3:])
    plane = spec._replace(stride=tuple(stride), pads=spec.pads[1:], dilation=tuple(dil))
    y = widened.lowering(z, _plane_weight(w), plane, blocks=True)  # (N·D', O, H', W')
    y = y.reshape(batch, depth, cout, *y.shape[2:])
    return y.transpose(0, 2, 1, 3, 4)


def _plane_weight(w):
    """(O, C/g, kd, kh, kw) -> (O, kd·C/g, kh, kw): depth taps into input channels."""
    return w.swapaxes(1, 2).reshape(w.shape[0], w.shape[2] * w.shape[1], *w.shape[3:])


class _Blocks:
    """Blocks of output depth planes, and the input planes each one reads.

    An operand the blocks read is rearranged for them either ``whole``, once before the
    loop (each block gathering its depth taps' planes from it, zeros in the depth
    padding), or block by block inside it.
    Whole is faster: the copies that moved each block's channels last (and its depth
    taps beside them), inside the loop, took over half of a 3-d UNet's training step in
    XLA's CPU profile (made whole, the step ran 1.11x and inference 1.27x as fast). It
    holds one more copy of the operand, so the sub-pixel form's phases, each of which
    would hold its own, and the weight gradient rearrange block by block.
    """

    def __init__(
        self, x_shape, itemsize: int, kernel, spec: ConvSpec, copies=1, floor=0, outputs=0
    ):
        self.depth, *out_plane = out_spatial(x_shape[2:], kernel, spec)
        self.kd, self.d0, self.s0 = kernel[0], spec.dilation[0], spec.stride[0]
        self.lo = spec.pads[0][0]
        self.plane = spec._replace(
            stride=spec.stride[1:], pads=spec.pads[1:], dilation=spec.dilation[1:]
        )
        # one folded output plane: every depth tap of one input plane, over the batch,
        # counted in float32 (XLA's CPU backend converts narrower convolutions to it)
        wide = max(itemsize, 4)
        plane = max(1, math.prod(x_shape[:2]) * self.kd * math.prod(x_shape[3:]) * wide)
        # and, with ``outputs`` channels, its output plane too
        plane += x_shape[0] * outputs * math.prod(out_plane) * wide
        # at most the input (or ``floor`` bytes), over the copies of its block a form makes
        budget = min(BLOCK_BYTES, max(floor, math.prod(x_shape) * itemsize)) // copies
        size = max(1, min(self.depth, budget // plane))
        self.count = -(-self.depth // size)
        self.size = -(-self.depth // self.count)  # the last block may overlap the one before
        self.span = self.s0 * (self.size - 1) + self.d0 * (self.kd - 1) + 1

    def start(self, i):
        """The first output plane of block ``i`` (the last block ends at the last plane)."""
        return jnp.minimum(i * self.size, self.depth - self.size)

    def first(self, i):
        """The input plane block ``i``'s first depth tap reads (negative in the padding)."""
        return self.start(i) * self.s0 - self.lo

    def source(self, x, order, whole: bool):
        """``x`` (N, C, D, H, W) for :meth:`taps` in the axis ``order``: rearranged now
        if ``whole``, else as it is."""
        return x.transpose(order) if whole else x

    def taps(self, z, i, order, whole: bool):
        """Block ``i``'s planes of each depth tap, in the axis ``order``, from
        :meth:`source`: zeros for planes in the depth padding. Whole, each tap's planes
        are gathered from the unpadded copy (a depth-padded copy had grown it up to
        1.75x, and the forward's temporaries to 2.1x XLA's: dilation 3, padding 3)."""
        depth = order.index(2)
        if whole:
            first = self.first(i) + self.s0 * jnp.arange(self.size)
            return [_planes(z, first + t * self.d0, depth) for t in range(self.kd)]
        slab = self._slab(z, i).transpose(order)
        last = self.s0 * (self.size - 1) + 1
        return [
            lax.slice_in_dim(slab, t * self.d0, t * self.d0 + last, self.s0, axis=depth)
            for t in range(self.kd)
        ]

    def _slab(self, x, i):
        """The input planes block ``i`` reads, (N, C, span, H, W), zeros past either end
        of depth: gathered, so the input is never padded whole."""
        return _planes(x, self.first(i) + jnp.arange(self.span), 2)


def _planes(z, planes, axis: int):
    """``z``'s slices at the indices ``planes`` along ``axis``, zeros for those outside."""
    shape = [1] * z.ndim
    shape[axis] = planes.shape[0]
    inside = ((planes >= 0) & (planes < z.shape[axis])).reshape(shape)
    picked = jnp.take(z, jnp.clip(planes, 0, z.shape[axis] - 1), axis=axis)
    return jnp.where(inside, picked, jnp.zeros((), z.dtype))


_LAST = (0, 2, 3, 4, 1)  # (N, D, H, W, C)
_FIRST = (1, 3, 4, 0, 2)  # (C, H, W, N, D)


def _fold_loop(x, w, spec: ConvSpec, whole: bool):
    """The forward over blocks of output depth planes, each one channels-last 2-d conv
    written into the output (N, O, D', H', W'); ``whole``: the input made channels-last
    once (its copy halves the blocks, which keeps the temporaries within twice XLA's).
    Writing the output channels-last too and transposing it once ran the 3-d UNet's
    inference about 1.5x as fast as per-block copies (this form: 1.27x), but held 2.3x
    XLA's forward temporaries (Conv3d(32, 32, 3) on 4x32x16³)."""
    # Block by block (a sub-pixel form's phases), each block's output counts as well:
    # its phases' channels (O·∏s) outgrow the input's, and beside the whole phases'
    # output they had held 2.25x XLA's temporaries (ConvTranspose3d(128, 3, 5, stride
    # 4) on 32x128x4³; now 1.74x). Against the blocks of inputs alone, one process,
    # medians of 7: that layer 0.98x / 0.93x (forward / forward+backward), four
    # 3x3x3 and 4x4x4 stride-2 ones 1.00-1.23x / 1.00-1.09x, the 3-d UNet unchanged.
    outputs = 0 if whole else w.shape[0]
    copies = 2 if whole else 1
    blocks = _Blocks(x.shape, x.dtype.itemsize, w.shape[2:], spec, copies, outputs=outputs)
    batch, cout, groups = x.shape[0], w.shape[0], spec.groups
    kh, kw = w.shape[3:]
    w2 = w.transpose(3, 4, 2, 1, 0).reshape(kh, kw, -1, cout)  # (kh, kw, kd·C/g, O)
    depth, *plane = out_spatial(x.shape[2:], w.shape[2:], spec)
    dtype = _result_type(x, spec)
    if batch == 0:
        return custom.zeros((batch, cout, depth, *plane), dtype, x, w)
    z = blocks.source(x, _LAST, whole)

    def part(i):  # (N, O, planes, H', W')
        taps = [t.reshape(*t.shape[:-1], groups, -1) for t in blocks.taps(z, i, _LAST, whole)]
        z_i = jnp.stack(taps, axis=-2)  # (N, planes, H, W, g, kd, C/g)
        z_i = z_i.reshape(batch * blocks.size, *x.shape[3:], -1)
        y_i = widened.conv_last(z_i, w2, blocks.plane)
        return y_i.reshape(batch, blocks.size, *y_i.shape[1:]).transpose(0, 4, 1, 2, 3)

    if blocks.count == 1:
        return part(0).astype(dtype)
    y = custom.zeros((batch, cout, depth, *plane), dtype, x, w)
    return lax.fori_loop(
        0,
        blocks.count,
        lambda i, y: lax.dynamic_update_slice_in_dim(
            y, part(i).astype(dtype), blocks.start(i), axis=2
        ),
        y,
    )


def _result_type(x, spec: ConvSpec):
    return jnp.dtype(spec.preferred_element_type or x.dtype)


# A strided input gradient runs ``col2im`` where the batch's output pixels (times the
# groups) are at most this many times the output channels. There the sub-pixel form
# (its phase sub-kernels 2.4x the weight for 3x3x3 at stride 2, held twice, and its
# phases' outputs) held more than twice XLA's temporaries. Conv3d(C, O, 3, stride 2)
# training against XLA's, sub-pixel -> col2im (blocked as ``col2im`` says), one process:
# at 0.12-2 pixels per channel (1x256->512, 2x128->256, 8x128->256, 16x256->512 at 8³)
# memory 2.5-3.8x -> 1.1-1.7x, forward+backward 1.6-1.8x as fast; at 8 (2x64->128 and
# 1x64->64 at 16³) 2.2x -> 1.7x at 0.8-0.9x the speed; at 16 (2x64->64, 2x32->64 at 16³)
# 2.5x / 2.05x -> 1.9x / 1.55x at 0.84x / 0.67x the speed (still 9-13x XLA's); at 32
# the sub-pixel form held 1.9x, at 256 1.7x.
COL2IM_WEIGHT = 16


def _dx(w, dy, spec: ConvSpec, whole: bool):
    """Input gradient: at stride 1 the same blocked conv of ``dy`` with the flipped
    kernel; strided, the sub-pixel transposed conv (whose stride-1 conv is this one, in
    its phases rearranged block by block), or where the weight outweighs the output
    (``COL2IM_WEIGHT``) one product and the windows' transposes (``col2im``)."""
    kernel = w.shape[2:]
    if all(s == 1 for s in spec.stride):
        return _fold_loop(dy, flip_swap(w, spec.groups), transposed_spec(spec, kernel), whole)
    batch = dy.shape[0]
    if batch * math.prod(dy.shape[2:]) * spec.groups <= COL2IM_WEIGHT * dy.shape[1]:
        return col2im(w, dy, spec)
    t = spec._replace(transposed=True)

    def subpixel(d):  # output_padding holds the input rows past the last window
        return phases.conv_transpose(d, w, t, fold_phase)

    # Blocks of images: the phases' output (1.4x the input gradient for 3x3x3 at stride
    # 2 on 8³ planes), interleaved into the input gradient, had held 2.1x XLA's training
    # temporaries in one piece (Conv3d(16, 16, 3, 2) on 16x16x16³; 1.4x in blocks, as
    # fast). Per image: the input gradient and the phases' output, in float32 or wider.
    dx_shape = (batch, w.shape[1] * spec.groups, *input_size(dy.shape[2:], kernel, spec))
    per_image = 2 * math.prod(dx_shape[1:]) * max(4, dy.dtype.itemsize)
    rows = group_block(batch, per_image, BLOCK_BYTES)
    if rows >= batch:
        return subpixel(dy)
    return by_blocks(
        lambda i: subpixel(block(dy, i, rows, 0)),
        batch // rows,
        dx_shape,
        _result_type(dy, spec),
        0,
        dy,
        w,
    )


def _dw(x, dy, spec: ConvSpec, kernel):
    """Weight gradient summed over the blocks of depth planes, each block rearranging its
    own operands (rearranged whole first, the training temporaries of Conv3d(32, 64, 3,
    stride 2) on 2x32x32³ under a ``sum(sin(y))`` loss were 29.9 MB against 21.3 and
    XLA's 12.8)."""
    if spec.groups > 1:
        shape = (dy.shape[1], x.shape[1] // spec.groups, *kernel)
        return custom.transpose(lambda v: _stacked(x, v, spec), shape, dy.dtype, dy)
    # XLA's CPU backend swaps the operands of a weight-gradient convolution whose
    # cotangent outgrows its input (a sub-pixel block's 17 rows against 16); the
    # swapped form ran 27x slower (ConvTranspose3d(32, 16) on 2x32x16³: 187 against
    # 7 ms). There each kernel tap's window is a matrix product instead (8.2 against
    # 3.2 MB of temporaries on 4x32x16³ -> 32, 1.1x slower).
    swaps = any(o > i for o, i in zip(dy.shape[3:], x.shape[3:]))
    # At stride 1, each tap's product can read the cotangent shifted to where it meets
    # the input instead of the input's window. Swapped, that is the smaller copy
    # wherever the output channels are fewer than the folded input ones: XLA held every
    # tap's window at once (ConvTranspose3d(64, 4, 4, stride=2) on 1x64x16³: 2.6x ->
    # 1.36x XLA's training temporaries; five such layers' training 1.10-1.37x faster).
    # Unswapped, it beats XLA's convolution over channels where the output channels
    # are at most a sixth of the folded ones (weight gradient, one process, medians of
    # 7: 64 -> 16 on 1x64x32³ 3.5x; 32 -> 8, 32 -> 16 and 16 -> 8 on 2x·x32³ 2.7x,
    # 1.8x and 1.7x; 64 -> 32 on 2x64x16³ and 8x64x8³ 1.35-1.4x; at a quarter to a
    # third, 32 -> 24, 32 -> 32 and 16 -> 16, 0.57-0.96x). Each plane tap is one product
    # in the program, so only up to 3x3 plane taps: Conv3d(48, 1, 7) on 8x48x8³
    # compiled in 1.69 s against 0.86 s, for forward+backward 1.05x as fast.
    batch, cout, folded = x.shape[0], dy.shape[1], x.shape[1] * kernel[0]  # folded: kd·C
    shifted = all(s == 1 for s in spec.stride[1:]) and (
        cout < folded if swaps else 6 * cout <= folded and math.prod(kernel[1:]) <= 9
    )
    products = swaps or shifted
    # blocks as large as the float32 weight gradient, which a loop's sum would hold again
    grad = 4 * dy.shape[1] * x.shape[1] * math.prod(kernel)
    blocks = _Blocks(x.shape, x.dtype.itemsize, kernel, spec, 2 if swaps else 1, grad)
    plane, (_, h_out, w_out) = blocks.plane, dy.shape[2:]
    taps = kernel[1] * kernel[2]

    def product(a, b):  # (kd·C, P) x (P, O) -> (kd·C, O), summed in float32
        return lax.dot_general(
            a,
            b,
            (((1,), (0,)), ((), ())),
            precision=spec.precision,
            preferred_element_type=jnp.float32,
        )

    def by_products(z, g):  # z (kd·C, H, W, B), g (H', W', B, O)
        z = z.transpose(0, 3, 1, 2)  # (kd·C, B, H, W)
        g = g.transpose(2, 0, 1, 3).reshape(-1, cout)
        windowed = windows(z, kernel[1:], plane)
        return jnp.concatenate([product(t.reshape(folded, -1), g) for _, t in windowed])

    def by_shifted(z, g):  # stride 1: each tap's cotangent placed where it meets z
        zf = z.transpose(0, 3, 1, 2).reshape(folded, -1)
        frames = shifted_cotangents(g, kernel[1:], plane, z.shape[1:3], (0, 1))
        return jnp.concatenate(
            [product(zf, f.transpose(2, 0, 1, 3).reshape(-1, cout)) for f in frames]
        )

    def by_conv(z, g):  # z (kd·C, H, W, B): channels as the batch
        # the input window each kernel tap meets: exactly (out − 1)·s + d·(k − 1) + 1 long
        reach = [
            (o - 1) * s + d * (k - 1) + 1
            for o, s, d, k in zip((h_out, w_out), plane.stride, plane.dilation, kernel[1:])
        ]
        pads = [(lo, r - lo - n) for (lo, _), r, n in zip(plane.pads, reach, z.shape[1:3])]
        part = lax.conv_general_dilated(
            pad_trailing(z, [*pads, (0, 0)]),
            g,
            plane.dilation,
            ((0, 0), (0, 0)),
            rhs_dilation=plane.stride,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=spec.precision,
            preferred_element_type=jnp.float32,
        )  # (kd·C, kh, kw, O), summed in this layout (transposed once, after the loop)
        return part

    def part(i):
        start = blocks.start(i)
        g = lax.dynamic_slice_in_dim(dy, start, blocks.size, axis=2)
        g = g.transpose(3, 4, 0, 2, 1)  # (H', W', N, planes, O)
        if blocks.count > 1:  # the last block's planes that an earlier block summed
            fresh = start + jnp.arange(blocks.size) >= i * blocks.size
            g = jnp.where(fresh[:, None], g, jnp.zeros((), g.dtype))
        g = g.reshape(h_out, w_out, -1, cout)  # (H', W', N·planes, O)
        z_i = jnp.stack(blocks.taps(x, i, _FIRST, False))  # (kd, C, H, W, N, planes)
        z_i = z_i.reshape(folded, *x.shape[3:], -1)
        return (by_shifted if shifted else by_products if swaps else by_conv)(z_i, g)

    summed = (taps * folded, cout) if products else (folded, *kernel[1:], cout)
    if batch and blocks.count == 1:
        total = part(0)
    else:
        total = custom.zeros(summed, jnp.float32, x, dy)
        if batch:
            total = lax.fori_loop(0, blocks.count, lambda i, t: t + part(i), total)
    if products:  # (kh, kw, kd, C, O)
        dw = total.reshape(*kernel[1:], blocks.kd, x.shape[1], cout).transpose(4, 3, 2, 0, 1)
    else:  # (kd, C, kh, kw, O)
        dw = total.reshape(blocks.kd, x.shape[1], *kernel[1:], cout).transpose(4, 1, 0, 2, 3)
    return dw.astype(dy.dtype)


for _name, _whole in (("fold", True), ("fold_phase", False)):
    custom.register(
        _name,
        functools.partial(_fold_loop, whole=_whole),
        dx=functools.partial(_dx, whole=_whole),
        dw=_dw,
    )
custom.register("fold_xla_forward", xla.conv, dx=functools.partial(_dx, whole=True), dw=_dw)

# A strided fold runs XLA's own forward (its gradients stay fold's: XLA's ran 10-40x
# slower) with at least ``XLA_FORWARD_CHANNELS`` input channels or ``XLA_FORWARD_OUTPUTS``
# output channels, and where nothing differentiates it (inference) with at least
# ``XLA_INFERENCE_CHANNELS`` input channels. Strided 3x3x3, one process, medians of 7-9,
# fold's forward time over XLA's: 256 -> 512 channels 1.1-1.45x (8x256x8³, 2x256x16³,
# 8x256x16³); with 128 to 512 outputs 0.94-1.31x in float32 and 1.06-1.99x in bfloat16
# (17 layers from 8 -> 384 at 32x8x4³ to 64 -> 128 at 2x64x32³; training with XLA's
# forward 0.92-1.30x as fast, geomean 1.06x); with 32 to 96 outputs 0.25-0.94x (3 -> 64
# at 8x3x32³: 0.25x; 64 -> 64 at 4x64x16³: 0.62x; training 0.74-1.07x), so fold there.
XLA_FORWARD_CHANNELS = 256
XLA_FORWARD_OUTPUTS = 128
XLA_INFERENCE_CHANNELS = 128


def fold(x, w, spec: ConvSpec, form: str = "fold"):
    """3-d conv of ``x`` (N, C, D, H, W) with ``w`` (O, C/g, kd, kh, kw) as 2-d convs
    over blocks of output depth planes (one plain XLA 2-d conv, ``_stacked``, off CPU or
    when the input may be split across devices); strided and wide, XLA's own forward
    with fold's gradients (``XLA_FORWARD_CHANNELS``, ``XLA_FORWARD_OUTPUTS``,
    ``XLA_INFERENCE_CHANNELS``)."""
    if not spec.widen:
        return _stacked(x, w, spec)
    x, spec = xla.within_reach(x, w.shape[2:], spec)
    spec = with_input_past(x.shape, w.shape[2:], spec)
    if form == "fold" and math.prod(w.shape) > math.prod(x.shape):
        reach = [d * (k - 1) + 1 for k, d in zip(w.shape[3:], spec.dilation[1:])]
        if any(r > n for r, n in zip(reach, x.shape[3:])):
            return xla.conv(x, w, spec)
        return _TRAINING_XLA(x, w, spec)
    if form == "fold" and any(s > 1 for s in spec.stride):
        if x.shape[1] >= XLA_FORWARD_CHANNELS or w.shape[0] >= XLA_FORWARD_OUTPUTS:
            form = "fold_xla_forward"
        elif x.shape[1] >= XLA_INFERENCE_CHANNELS:
            return _INFERENCE_XLA(x, w, spec)
    return custom.bilinear(form, x, w, spec)


def _fold(x, w, spec: ConvSpec):
    return custom.bilinear("fold", x, w, spec)


_INFERENCE_XLA = custom.undifferentiated(xla.conv, _fold)
# A weight larger than its input trains as XLA's (inference stays fold's): fold's
# gradients held two more weight-sized copies, and trained in 2.1-2.4x XLA's temporaries
# (4x128x6³ -> 96, 2x16x8³ -> 24 at dilation 2, 32x24x4³ -> 128), the last at 0.45x its
# speed; at most as heavy (nine other layers, 0.02-0.9 weight per input) they held
# 1.0-1.9x. Where its plane kernel also reaches past the input's planes, XLA's CPU
# backend reverses the plane weight inside fold's forward too (another weight-sized
# copy: 2.0x XLA's forward temporaries, 4x24x4³ -> 32 at 5³, 8x96x4³ -> 48 at 7³),
# so there it is XLA's convolution throughout.
_TRAINING_XLA = custom.undifferentiated(_fold, xla.conv)


def fold_phase(x, w, spec: ConvSpec):
    """:func:`fold` as one phase of the sub-pixel form: operands rearranged block by
    block (:class:`_Blocks`)."""
    return fold(x, w, spec, "fold_phase")
