"""XLA's convolution, widened by one output row so that XLA's CPU backend runs its
Eigen kernel instead of the YNNPACK path.

On jaxlib 0.10.2, XLA's CPU backend hands 2-d float32 convolutions with more than
16 channels to YNNPACK, which ran 1.5–1.8x slower on this project's 2-core CPU
than XLA's own (Eigen) convolution, forward and backward (``python -m jconv
bench``). It leaves a convolution whose output is larger than its input in some
dimension to Eigen. So, in one stride-1 dimension with a kernel reach
``r = d·(k − 1) ≥ 1``, the padding ``(lo, hi)`` grows to ``(lo', hi')`` with
``lo' + hi' = r + 1`` (each still at most ``r``): one more output than input,
which is cropped off again. The numbers are XLA's direct sums, as for ``"xla"``.

The input gradient of a stride-1 convolution is itself one (of the output
cotangent, with the flipped kernel), and is widened the same way. The weight
gradient cannot be: its kernel would be the widened cotangent, larger than its
input, and XLA then swaps the operands into a form 30x slower. It is XLA's own,
summed over blocks of images (``_dw_images``): where YNNPACK takes it (more than 16
output channels) blocks of at most 2 MiB of input and cotangent, whose cost per
image was lowest (training steps against blocks of 8 images, one process, 9
rounds: ResNet 1.11x, bfloat16 1.07x, UNet 1.08x, bfloat16 even); else blocks of 8
images (XLA's weight gradient cost about the same per image up to a batch of 8 and
up to 2x more per image beyond: 64x64x56² 3x3, 2.5 ms per image at 8, 4.1 at 32).
Over 14 dense 3x3 layers (batch 1–32) blocks of 8 were 0.89–7.6x as fast as summing
over blocks of 16 images and 16 output channels (which YNNPACK leaves to Eigen) and
0.92–1.30x XLA's whole weight gradient. The
lowerings built on this one (``"s2d"``, ``"fold"``, ``"pergroup"`` and 2-d
``"subpixel"``) keep the 16-feature blocks (``blocks=True``), which were up to
1.8x faster on their grid rows.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from jconv.lowering import custom, xla
from jconv.lowering.common import accumulator, flip_swap, group_block, transposed_spec
from jconv.lowering.spec import ConvSpec

FEATURES = 16  # YNNPACK takes a convolution only with more features than this
MAX_BLOCKS = 32  # more blocks than this: compile time grows (larger blocks, or XLA's own)
BATCH = 8  # XLA's CPU weight gradient cost the same per image up to a batch of 8, more beyond
DW_BLOCK_BYTES = 2 << 20  # YNNPACK's weight gradient: input and cotangent per block of images


def widen_axis(kernel, spec: ConvSpec) -> int | None:
    """The dimension to widen: stride 1 and reach ≥ 1 (the one with most room), or None."""
    room = {
        i: 2 * d * (k - 1) - lo - hi
        for i, (k, s, d, (lo, hi)) in enumerate(zip(kernel, spec.stride, spec.dilation, spec.pads))
        if s == 1 and d * (k - 1) >= 1
    }
    return max(room, key=room.get) if room else None


def _widening(kernel, spatial, spec: ConvSpec):
    """``(pads, axis, keep)``: the widened pads, the widened dimension and the crop
    ``(lo, hi)`` (negative) of the output along it; None where nothing widens."""
    axis = widen_axis(kernel, spec)
    if axis is None:
        return None
    reach = spec.dilation[axis] * (kernel[axis] - 1)
    lo, hi = spec.pads[axis]
    if lo + hi > reach:  # already one output more than input
        return None
    wide = (lo, reach + 1 - lo) if lo >= 1 else (1, reach)
    pads = list(spec.pads)
    pads[axis] = wide
    first = wide[0] - lo
    size = spatial[axis] + lo + hi - reach  # the unwidened output (stride 1)
    out = spatial[axis] + sum(wide) - reach
    return tuple(pads), axis, (-first, -(out - first - size))


def conv(x, w, spec: ConvSpec):
    """Forward conv of ``x`` (N, C, *sp) with ``w`` (O, C/g, *k), widened where possible."""
    kernel = w.shape[2:]
    x, spec = xla.within_reach(x, kernel, spec)
    widening = _widening(kernel, x.shape[2:], spec)
    if widening is None:
        return xla.conv(x, w, spec)
    pads, axis, crop = widening
    y = xla.conv(x, w, spec._replace(pads=pads))
    keep = [(0, 0)] * len(kernel)
    keep[axis] = crop
    return xla.pad_trailing(y, keep)


def conv_last(x, w, spec: ConvSpec):
    """Forward conv of channels-last ``x`` (N, *sp, C) with ``w`` (*k, C/g, O), widened
    where possible; (N, *sp', O).

    XLA's CPU backend runs a convolution inside a loop's body in the layout it is
    written in, and an NCHW one there ran 20x slower than outside the loop
    (64x96x16² 3x3 -> 32: 231 against 11 ms); a channels-last one runs as fast.
    """
    n = x.ndim - 2
    kernel = w.shape[:n]
    sp = "DHW"[3 - n :]
    numbers = ("N" + sp + "C", sp + "IO", "N" + sp + "C")
    widening = _widening(kernel, x.shape[1:-1], spec) if spec.widen else None
    pads = spec.pads if widening is None else widening[0]
    y = lax.conv_general_dilated(
        x,
        w,
        spec.stride,
        pads,
        rhs_dilation=spec.dilation,
        dimension_numbers=numbers,
        feature_group_count=spec.groups,
        precision=spec.precision,
        preferred_element_type=spec.preferred_element_type,
    )
    if widening is None:
        return y
    keep = [(0, 0)] * (n + 1)
    keep[widening[1]] = widening[2]
    return xla.pad_trailing(y, keep)


def _dx(w, dy, spec: ConvSpec):
    """Input gradient of a stride-1 conv: a widened conv of ``dy`` with the flipped kernel."""
    return conv(dy, flip_swap(w, spec.groups), transposed_spec(spec, w.shape[2:]))


def _dw_images(x_shape, dy_shape, itemsize: int) -> int:
    """Images per block of :func:`_dw`. XLA's CPU backend hands a weight gradient with
    more than ``FEATURES`` output channels to YNNPACK (the images are its input
    features), whose cost per image grew with the block past about ``DW_BLOCK_BYTES``
    of input and cotangent (float32): per image, batch 1 / 2 / 4 / 8, 3x3, ms: 32 ->
    32 at 48² 0.39 / 0.30 / 0.35 / 0.42, 64 -> 32 at 48² 0.71 / 0.58 / 0.73 / 0.80,
    64 -> 64 at 24² 0.28 / 0.27 / 0.24 / 0.30, 64 -> 64 at 56² 1.36 / 1.84 / 2.12 /
    1.96, while 128 -> 128 at 12² and 256 -> 256 at 6² kept falling to batch 16. Its
    own kernel (16 output channels or fewer) ran faster per image with more images
    (32 -> 16 at 96²: 2.80 / 1.57 / 1.04 / 0.72): blocks of ``BATCH`` there."""
    batch = x_shape[0]
    step = BATCH
    if dy_shape[1] > FEATURES and batch:
        per = (math.prod(x_shape[1:]) + math.prod(dy_shape[1:])) * max(4, itemsize)
        step = group_block(batch, per, DW_BLOCK_BYTES)
    return max(step, -(-batch // MAX_BLOCKS))


def _dw(x, dy, spec: ConvSpec, kernel):
    """Weight gradient as XLA's own, summed over blocks of images (``_dw_images``; in
    float32 for narrower dtypes, rounded at the end)."""
    batch, dtype = x.shape[0], dy.dtype
    shape = (dy.shape[1], x.shape[1] // spec.groups, *kernel)
    step = _dw_images(x.shape, dy.shape, x.dtype.itemsize)
    parts = [
        custom.transpose(
            lambda v, xb=x[n : n + step]: xla.conv(xb, v, spec), shape, dy.dtype, dy[n : n + step]
        )
        for n in range(0, max(batch, 1), step)  # (an empty batch: one empty block)
    ]
    if len(parts) == 1:
        return parts[0]
    return sum(p.astype(accumulator(dtype)) for p in parts).astype(dtype)


def _dw_blocks(x, dy, spec: ConvSpec, kernel):
    """Weight gradient as a sum over batch blocks of convolutions of <= 16 features."""
    batch, cout = x.shape[0], dy.shape[1]
    shape = (cout, x.shape[1] // spec.groups, *kernel)
    blocks = -(-batch // FEATURES) * -(-cout // FEATURES)
    if spec.groups > 1 or blocks > MAX_BLOCKS:  # (output-channel blocks would cut groups)
        return custom.transpose(lambda v: xla.conv(x, v, spec), shape, dy.dtype, dy)
    total = jnp.zeros(shape, accumulator(dy.dtype))
    for n in range(0, batch, FEATURES):
        xb, dyb = x[n : n + FEATURES], dy[n : n + FEATURES]
        parts = [
            custom.transpose(
                lambda v, xb=xb: xla.conv(xb, v, spec),
                (min(FEATURES, cout - o), *shape[1:]),
                dy.dtype,
                dyb[:, o : o + FEATURES],
            )
            for o in range(0, cout, FEATURES)
        ]
        total = total + jnp.concatenate(parts, axis=0).astype(total.dtype)
    return total.astype(dy.dtype)


custom.register("widened", conv, dx=_dx, dw=_dw)
custom.register("widened_strided", conv, dw=_dw)
custom.register("widened_blocks", conv, dx=_dx, dw=_dw_blocks)
custom.register("widened_strided_blocks", conv, dw=_dw_blocks)


def lowering(x, w, spec: ConvSpec, blocks: bool = False):
    """The ``"widened"`` lowering (its input gradient widened too when every stride is 1);
    ``blocks``: the weight gradient over blocks of <= 16 features (:func:`_dw_blocks`)."""
    if not spec.widen:  # off CPU, or the input may be split across devices
        return xla.conv(x, w, spec)
    x, spec = xla.within_reach(x, w.shape[2:], spec)  # so the input gradient's pads are >= 0
    form = "widened" if all(s == 1 for s in spec.stride) else "widened_strided"
    return custom.bilinear(form + ("_blocks" if blocks else ""), x, w, spec)
