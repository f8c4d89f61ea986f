"""The ``"subpixel"`` lowering of strided transposed convolutions: the sub-pixel form
(:mod:`jconv.lowering.phases`) for the weight gradient (and the forward where it is
faster), the strided convolution it transposes for the input gradient."""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from jconv.lowering import custom, folded, phases, widened, xla
from jconv.lowering.common import BLOCK_BYTES, accumulator, channel_product, col2im, windows
from jconv.lowering.spec import ConvSpec


def _stride1(x, w, spec: ConvSpec):
    """The sub-pixel form's stride-1 convolution. A 3-d one runs ``"fold"`` (XLA's 3-d
    weight gradient is slow), which pads as it goes; otherwise the input is padded
    explicitly first, which keeps XLA's CPU weight gradient on its fast path (a conv
    padded by its kernel size or more is not)."""
    if x.ndim == 5 and spec.widen:
        return folded.fold_phase(x, w, spec)
    x = jnp.pad(x, ((0, 0), (0, 0), *spec.pads))
    # weight gradient: in 2-d over blocks of <= 16 features; in 1-d XLA's own over batch
    # blocks (the grid's transposed1d rows: forward+backward 1.0-1.6x faster, 0.6x memory)
    return widened.lowering(x, w, spec._replace(pads=((0, 0),) * (x.ndim - 2)), x.ndim > 3)


def conv_transpose(x, w, spec: ConvSpec):
    """torch's transposed convolution of ``x`` by the sub-pixel form (the weight
    gradient's: padded first, widened)."""
    return phases.conv_transpose(x, w, spec, _stride1)


def _forward(x, w, spec: ConvSpec):
    """The sub-pixel forward. In 1-d and 2-d its stride-1 conv is XLA's, padded inside
    the convolution: over 38 4x4 stride-2 layers (batch 1–16, 4² to 32²) that was
    at least as fast as padding first and widening on 36 (median 1.15x; 0.83x and
    0.90x on two 128-channel layers at 4² and 8²; one process, interleaved, 9
    rounds). Only the weight gradient needs the padded, widened form. Where every
    kernel equals its stride (UNet's 2x2 stride 2) each phase has one tap and the
    stride-1 conv is a product over channels (:func:`one_tap_form`): on six of seven
    such layers (64 -> 32 to 512 -> 256 channels, 16² to 128², batch 1 to 16) 1.3-6.4x
    XLA's forward; a weight past four inputs and 16 MiB gets XLA's own forward
    (``_heavy_one_tap``)."""
    if x.ndim == 5:
        return conv_transpose(x, w, spec)
    return phases.conv_transpose(x, w, spec, _phase_conv)


def one_tap_form(x_shape, w_shape, groups: int) -> str:
    """How the sub-pixel form's 1x1 stride-1 conv runs: ``"matmul"`` (the weight
    broadcast over the batch, as ``dense.matmul``) while that stays within one input,
    ``"einsum"`` (one product) while the weight stays within four inputs, else ``"xla"``
    (grouped too)."""
    size, weight = math.prod(x_shape), math.prod(w_shape)
    if groups > 1 or weight > 4 * size:
        return "xla"
    return "matmul" if x_shape[0] * weight <= size else "einsum"


def _heavy_one_tap(x_shape, w, spec: ConvSpec) -> bool:
    """Whether every phase's sub-kernel is one tap (as where kernel = stride), the product
    over channels would be XLA's conv (``one_tap_form``) and the weight passes 16 MiB:
    then the forward is XLA's own transposed conv. The sub-pixel one rearranges the
    weight on every call: XLA's forward / the sub-pixel one, one process, 9 rounds:
    ConvTranspose2d(2048, 1024, 2, 2) (32 MiB) at 8x2048x4² and 2x2048x8² 1.52-1.64x;
    1024 -> 512 (8 MiB) at 8x1024x8² and 16x1024x4² 1.05x and 0.93x; 512 -> 256 at
    1x512x8² 0.75x; ConvTranspose1d(1024, 512, 4, 4) at 4x1024x16 0.63x."""
    one_tap = all(
        phases.phase_taps(k, s, d) == 1 for k, s, d in zip(w.shape[2:], spec.stride, spec.dilation)
    )
    heavy = w.size * w.dtype.itemsize > 4 * BLOCK_BYTES
    return one_tap and heavy and one_tap_form(x_shape, w.shape, spec.groups) == "xla"


def _phase_conv(x, w, spec: ConvSpec):
    """The sub-pixel forward's stride-1 conv: XLA's, padded inside the convolution, or,
    where each phase's sub-kernel ``w`` is one tap, a product over channels."""
    one_tap = all(k == 1 for k in w.shape[2:])
    form = one_tap_form(x.shape, w.shape, spec.groups) if one_tap else "xla"
    if form == "xla":
        return xla.conv(x, w, spec)
    broadcast = form == "matmul" and accumulator(x.dtype) == x.dtype
    return channel_product(xla.pad_trailing(x, spec.pads), w, spec, broadcast)


def _forward_spec(spec: ConvSpec) -> ConvSpec:
    """The strided forward conv this transposed one is the input gradient of."""
    return spec._replace(
        transposed=False,
        pads=tuple((lo, hi - op) for (lo, hi), op in zip(spec.pads, spec.output_padding)),
        output_padding=(0,) * len(spec.stride),
    )


def _dw(x, dy, spec: ConvSpec, kernel):
    shape = (x.shape[1], dy.shape[1] // spec.groups, *kernel)
    return custom.transpose(lambda v: conv_transpose(x, v, spec), shape, dy.dtype, dy)


def _dx(w, dy, spec: ConvSpec):
    return xla.conv(dy, w, _forward_spec(spec))


def _col2im_form(x, w, spec: ConvSpec):
    """The transposed conv as the input gradient of the strided conv it transposes
    (``col2im``: one product with the weight as it lies, then every tap's plane added
    where it lands)."""
    y = col2im(w, x, spec._replace(transposed=False))
    return y.astype(spec.preferred_element_type or x.dtype)


def _windows_dw(x, dy, spec: ConvSpec, kernel):
    """Weight gradient of :func:`_col2im_form`: every tap's window of ``dy`` (where the
    strided conv it transposes reads it), stacked, times ``x`` in one product over the
    batch and its pixels, straight into torch's (C_in, C_out/g, *k) layout."""
    g, (batch, cin), cout = spec.groups, x.shape[:2], dy.shape[1]
    cols = jnp.stack(
        [t for _, t in windows(dy, kernel, _forward_spec(spec))], axis=2
    )  # (N, O, ∏k, *in)
    pixels = math.prod(x.shape[2:])
    cols = cols.reshape(batch, g, cout // g, math.prod(kernel), pixels)
    xg = x.reshape(batch, g, cin // g, pixels)
    dw = lax.dot_general(
        xg,
        cols,
        (((0, 3), (0, 4)), ((1,), (1,))),
        precision=spec.precision,
        preferred_element_type=accumulator(dy.dtype),
    )  # (g, C_in/g, C_out/g, ∏k)
    return dw.reshape(cin, cout // g, *kernel)


custom.register("subpixel", xla.conv_transpose, dx=_dx, dw=_dw)
custom.register("subpixel_even", _forward, dx=_dx, dw=_dw)
custom.register("subpixel_col2im", _col2im_form, dx=_dx, dw=_windows_dw)
custom.register("subpixel_windows", xla.conv_transpose, dx=_dx, dw=_windows_dw)
custom.register("subpixel_even_windows", _forward, dx=_dx, dw=_windows_dw)

# The forward is ``col2im`` (and the weight gradient the stacked windows' product) where
# the batch's input pixels (times the groups) are at most this many times the input
# channels, for kernels of at most ``COL2IM_TAPS`` taps. Training against the sub-pixel
# form, one process: ConvTranspose2d(128, 128, 5, 2) at 1x128x4² 5.8x as fast, 2.77x ->
# 0.70x xla's temporaries; (256, 128, 3, 2) at 2x256x4² 4.8x, 3.08x -> 0.67x;
# (512, 256, 4, 2) at 8x512x4² 1.17x, 1.12x -> 1.22x; (512, 512, 1, 4) at 1x512x4² 1.7x;
# ConvTranspose1d(512, 256, 16, 8) at 1x512x32 0.95x, 1.04x -> 0.56x. At one pixel per
# channel (4x256x8² -> 128) memory 1.69x -> 2.97x; for 5x5x5 kernels XLA's CPU backend
# copied out each of the 125 windows (5.5x).
COL2IM_WEIGHT, COL2IM_TAPS = 0.5, 27

# The weight gradient is the stacked windows' product (``_windows_dw``) where those
# windows of the output gradient, (N, O, ∏k, *in), hold fewer than this many times the
# input's elements, i.e. O/g·∏k < WINDOWS_DW·C_in/g: narrow outputs, as an image or
# waveform head (the sub-pixel form pads and copies the whole input for it). Training
# against the sub-pixel form's, one process, 7 rounds, two runs: ConvTranspose2d(256, 3,
# 3, 2) at 1x256x37² 4.5x and 3.1x / 2.7x and 2.6x xla's, temporaries 1.04x / 2.04x xla's;
# (512, 8, 3, 2) at 1x512x28² 8.9x and 5.6x / 5.3x and 3.2x, 1.16x / 2.10x; one run:
# (512, 16, 3, 2) at 2x512x14² 7.2x / 3.2x;
# (1024, 16, 4, 2) at 1x1024x8² 7.1x / 7.0x; ConvTranspose1d(512, 16, 8, 4) at 4x512x500
# 11.8x / 9.9x, 0.66x / 0.97x; ConvTranspose3d(256, 4, 3, 2) at 2x256x6³ 66x / 52x.
# At one half even (ConvTranspose1d(32, 1, 16, 8) at 4x32x2000: 3.30x / 3.33x) at 1.22x
# against 0.67x the temporaries; above it mixed (DCGAN's (64, 3, 4, 2) at 64x64x32²,
# three quarters: 2.9x / 3.5x).
WINDOWS_DW = 0.5


def _narrow_output(x_shape, w_shape, groups: int) -> bool:
    """Whether the output gradient's windows hold less than ``WINDOWS_DW`` times the
    input (``w_shape`` is torch's transposed (C_in, O/g, *k))."""
    return w_shape[1] * math.prod(w_shape[2:]) < WINDOWS_DW * x_shape[1] / groups


def lowering(x: jnp.ndarray, w: jnp.ndarray, spec: ConvSpec) -> jnp.ndarray:
    """The ``"subpixel"`` lowering: a sub-pixel or XLA forward, sub-pixel and strided-conv
    gradients.

    The forward is the sub-pixel form where every strided dimension's kernel is a
    multiple of its stride (each phase then gets the same taps, no zeros: 4x4
    stride 2 measured 1.1x faster than XLA's), and for every 3-d one (XLA's
    input-dilated 3-d forward on CPU: 1.8 s against 0.05 s for a 3x3x3 stride-2
    layer on 2x64x16^3); XLA's otherwise (3x3 stride 2 in 2-d: XLA's 1.3x faster).
    XLA's gradients of an input-dilated convolution are slow on CPU.
    The input gradient of a transposed convolution is the strided forward
    convolution it transposes (input = our output, pads ``(lo, hi − output_padding)``,
    torch's weight as its (out, in/g) weight); the weight gradient is the
    sub-pixel form's, or for narrow outputs (``WINDOWS_DW``) the stacked windows'
    product.
    """
    light = x.shape[0] * math.prod(x.shape[2:]) * spec.groups <= COL2IM_WEIGHT * x.shape[1]
    if spec.widen and light and math.prod(w.shape[2:]) <= COL2IM_TAPS:
        return custom.bilinear("subpixel_col2im", x, w, spec)
    even = x.ndim == 5 or all(k % s == 0 for k, s in zip(w.shape[2:], spec.stride) if s > 1)
    if even and x.ndim < 5 and _heavy_one_tap(x.shape, w, spec):
        even = False
    name = "subpixel_even" if even and spec.widen else "subpixel"
    if spec.widen and _narrow_output(x.shape, w.shape, spec.groups):
        name += "_windows"
    return custom.bilinear(name, x, w, spec)
