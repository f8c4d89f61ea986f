"""Forms built from matrix products and FFTs, for layer shapes XLA's CPU
convolution handles slowly.

* ``"matmul"``: a 1×1 kernel is a matrix product over channels, after the
  padding and a strided slice of the input.
* ``"unfold"``: any kernel as one matrix product over channels and kernel taps
  (im2col), where the weight outweighs the stacked windows.
* ``"fft"``: a large kernel (e.g. depthwise 31×31) is a product in the frequency
  domain: ``y = irfft(rfft(x_pad) · rfft(flip(w)))``, cropped to the valid part
  and strided. Its cost barely grows with the kernel; its rounding is FFT
  rounding (≈1e-6 of the output's scale in float32), not a direct sum's.
* ``"pergroup"``: a grouped conv as ``groups`` ungrouped XLA convolutions of
  channel slices, whose gradients stay on XLA's fast (ungrouped) path.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
from jax import lax

from jconv.lowering import custom, subpixel, widened, xla
from jconv.lowering.common import (
    BLOCK_BYTES,
    accumulator,
    block,
    by_blocks,
    channel_product,
    group_block,
    light_weight,
    out_spatial,
    over_groups,
    windows,
    with_input_past,
)
from jconv.lowering.spec import ConvSpec
from jconv.lowering.xla import pad_trailing


def matmul(x, w, spec: ConvSpec):
    """1×1 conv of ``x`` (N, C, *sp) with ``w`` (O, C/g, 1, ...): a product over channels,
    the weight broadcast over the batch where that stays light (``light_weight``) and
    the accumulator is the input's dtype, else one product over the batch."""
    ((_, xt),) = windows(x, w.shape[2:], spec)
    broadcast = light_weight(xt.shape, w.shape) and accumulator(x.dtype) == x.dtype
    return channel_product(xt, w, spec, broadcast)


def unfold(x, w, spec: ConvSpec):
    """Conv of ``x`` (N, C, *sp) with ``w`` (O, C/g, *k) as one matrix product over
    channels and kernel taps (im2col): every tap's window stacked beside its channel,
    ``X[n, (c, t), q] = x_pad[n, c, s·q + d·t]``, times ``w`` as an (O, C/g·∏k) matrix.
    Its gradients are autodiff's: a product and the windows' transposes (pads and adds)
    for the input, and the product with ``X``, rebuilt from ``x``, for the weight."""
    return custom.bilinear("unfold", x, w, spec)


def _unfolded(x, w, spec: ConvSpec):
    if x.shape[0] > 1:
        return _unfolded_batch(x, w, spec)
    n, kernel = x.ndim - 2, w.shape[2:]
    cols = jnp.stack([xt for _, xt in windows(x, kernel, spec)], axis=2)  # (N, C, ∏k, *out)
    cols = cols.reshape(x.shape[0], x.shape[1] * math.prod(kernel), *cols.shape[3:])
    one = spec._replace(stride=(1,) * n, pads=((0, 0),) * n, dilation=(1,) * n)
    return channel_product(cols, w.reshape(w.shape[0], -1, *(1,) * n), one, False)


def _unfolded_batch(x, w, spec: ConvSpec):
    """The unfolded product of a batch: the windows of the channels-first input (C, N,
    *sp) stacked as one (C/g·∏k, N·∏out) matrix per group, which the forward and the
    weight gradient's products read as it lies. Stacked from (N, C, *sp), every product
    copied it to another layout first: against that, over 8 layers (batch 2 to 8,
    1-d to 3-d, 128 to 2048 channels) training temporaries 0.67x on four, even on four,
    forward 0.96-1.32x as fast, forward+backward 0.96-1.31x (one process, 9 rounds)."""
    g, (batch, cin), (cout, kernel) = spec.groups, x.shape[:2], (w.shape[0], w.shape[2:])
    xc = jnp.moveaxis(x, 1, 0)
    cols = jnp.stack([xt for _, xt in windows(xc, kernel, spec)], axis=1)  # (C, ∏k, N, *out)
    out = cols.shape[3:]
    cols = cols.reshape(g, cin // g * math.prod(kernel), batch * math.prod(out))
    kw = dict(precision=spec.precision, preferred_element_type=spec.preferred_element_type)
    wg = w.reshape(g, cout // g, -1)
    y = lax.dot_general(wg, cols, (((2,), (1,)), ((0,), (0,))), **kw)  # (g, O/g, N·∏out)
    return jnp.moveaxis(y.reshape(cout, batch, *out), 1, 0)


custom.register("unfold", _unfolded)


def _fft_size(n: int) -> int:
    """The smallest 2^a·3^b·5^c ≥ n (sizes the FFT runs fast on)."""
    best = 1 << (n - 1).bit_length()
    p2 = 1
    while p2 < best:
        p3 = p2
        while p3 < best:
            p5 = p3
            while p5 < best:
                if p5 >= n:
                    best = p5
                p5 *= 5
            p3 *= 3
        p2 *= 2
    return best


def fft(x, w, spec: ConvSpec):
    """Forward conv of ``x`` (N, C, *sp) with ``w`` (O, C/g, *k) through ``rfftn``."""
    return custom.bilinear("fft", x, w, with_input_past(x.shape, w.shape[2:], spec))


def _fft_guarded(x, w, spec: ConvSpec):
    """``_fft_blocked``, or XLA's direct convolution when ``x`` or ``w`` holds a NaN or
    inf (one ``lax.cond`` on a finiteness check): the FFT would spread one over a whole
    channel, the direct sum puts non-finite values where torch does.

    The guard is in the forward form only; the gradients are always the FFT's, so with
    a non-finite operand or cotangent they are NaN over whole channels where torch's
    may be NaN at fewer positions. A guard differentiated with the forward had put
    XLA's backward convolutions in every step: ConvNeXt's step (six depthwise 7x7
    layers) compiled in 3.2-3.7 s, 2.8-3.1 s with the guard here (three runs each).
    """
    finite = jnp.isfinite(x).all() & jnp.isfinite(w).all()
    return lax.cond(
        finite,
        lambda a, b: _fft_blocked(a, b, spec),
        lambda a, b: xla.conv(a, b, spec),
        x,
        w,
    )


def _group_block(x_shape, dtype, spec: ConvSpec) -> int | None:
    """Groups per block of the blocked ``"fft"`` forms, or None for one piece: at most
    BLOCK_BYTES of padded input per block, and half the input (8x96x56² 5x5 depthwise:
    temporary memory 2.4x the input's -> 0.8x, as fast)."""
    g, (batch, cin) = spec.groups, x_shape[:2]
    padded = math.prod(_fft_size(p + lo + hi) for p, (lo, hi) in zip(x_shape[2:], spec.pads))
    per_group = batch * (cin // g) * padded * jnp.dtype(accumulator(dtype)).itemsize
    size = math.prod(x_shape) * jnp.dtype(dtype).itemsize
    b = group_block(g, per_group, min(BLOCK_BYTES, max(size // 2, per_group)))
    return None if b == g or g // b > 64 else b  # one block, or too many small ones


def _fft_blocked(x, w, spec: ConvSpec):
    """``_fft_conv`` over blocks of groups, one at a time: its padded input, spectra and
    product exist for one block only."""
    b = _group_block(x.shape, x.dtype, spec)
    return _fft_conv(x, w, spec) if b is None else over_groups(_fft_conv, x, w, spec, b)


def _fft_dx(w, dy, spec: ConvSpec):
    """Input gradient: the transpose of each block's ``_fft_conv`` (strided too: the
    spec's ``output_padding`` holds the input rows past the last window)."""
    g, kernel = spec.groups, w.shape[2:]
    spatial = tuple(
        (o - 1) * s + d * (k - 1) + 1 - lo - hi + past
        for o, s, d, k, (lo, hi), past in zip(
            dy.shape[2:], spec.stride, spec.dilation, kernel, spec.pads, spec.output_padding
        )
    )
    x_shape = (dy.shape[0], g * w.shape[1], *spatial)
    b = _group_block(x_shape, dy.dtype, spec)
    if b is None:
        return custom.transpose(lambda v: _fft_conv(v, w, spec), x_shape, dy.dtype, dy)
    per_in, mult, sub = w.shape[1], w.shape[0] // g, spec._replace(groups=b)

    def part(i):
        ws, shape = block(w, i, b * mult, 0), (x_shape[0], b * per_in, *spatial)
        return custom.transpose(
            lambda v: _fft_conv(v, ws, sub), shape, dy.dtype, block(dy, i, b * mult, 1)
        )

    return by_blocks(part, g // b, x_shape, dy.dtype, 1, w, dy)


def _fft_dw(x, dy, spec: ConvSpec, kernel):
    """Weight gradient: the transpose of each block's ``_fft_conv`` in the weight."""
    g, cout = spec.groups, dy.shape[1]
    w_shape = (cout, x.shape[1] // g, *kernel)
    b = _group_block(x.shape, x.dtype, spec)
    if b is None:
        return custom.transpose(lambda v: _fft_conv(x, v, spec), w_shape, dy.dtype, dy)
    per_in, mult, sub = x.shape[1] // g, cout // g, spec._replace(groups=b)

    def part(i):
        xs = block(x, i, b * per_in, 1)
        return custom.transpose(
            lambda v: _fft_conv(xs, v, sub), (b * mult, per_in, *kernel), dy.dtype,
            block(dy, i, b * mult, 1),
        )  # fmt: skip

    return by_blocks(part, g // b, w_shape, dy.dtype, 0, x, dy)


def _fft_conv(x, w, spec: ConvSpec):
    n, g = x.ndim - 2, spec.groups
    batch, (cout, per_in), kernel = x.shape[0], w.shape[:2], w.shape[2:]
    dtype = spec.preferred_element_type or x.dtype
    acc = accumulator(dtype)
    xp = pad_trailing(x.astype(acc), spec.pads)
    padded = xp.shape[2:]
    # the dilated, flipped kernel: convolution by it is correlation by w
    wd = pad_trailing(w.astype(acc), [(0, 0)] * n, [d - 1 for d in spec.dilation])
    wd = jnp.flip(wd, tuple(range(2, n + 2)))
    sizes = [_fft_size(p) for p in padded]
    axes = tuple(range(-n, 0))
    freq = [*sizes[:-1], sizes[-1] // 2 + 1]
    xf = jnp.fft.rfftn(xp, sizes, axes=axes).reshape(batch, g, per_in, math.prod(freq))
    wf = jnp.fft.rfftn(wd, sizes, axes=axes).reshape(g, cout // g, per_in, math.prod(freq))
    if per_in == 1:
        yf = xf * wf[None, :, :, 0]
    else:
        yf = jnp.einsum("ngcf,gocf->ngof", xf, wf, precision=spec.precision)
    y = jnp.fft.irfftn(yf.reshape(batch, cout, *freq), sizes, axes=axes)
    span = [d * (k - 1) for k, d in zip(kernel, spec.dilation)]
    out = out_spatial(x.shape[2:], kernel, spec)
    keep = tuple(slice(e, e + s * (o - 1) + 1, s) for e, s, o in zip(span, spec.stride, out))
    return y[(..., *keep)].astype(dtype)


custom.register("fft", _fft_guarded, dx=_fft_dx, dw=_fft_dw)


def pergroup(x, w, spec: ConvSpec):
    """A grouped conv as one ungrouped conv per group, concatenated over channels.

    Forward: group ``i`` takes input channels and weight rows (output channels)
    ``i·C/g ..``. Transposed: the weight's rows are input channels, and each
    group runs the ``"subpixel"`` form when strided, else XLA's.
    """
    g = spec.groups
    cin = x.shape[1]
    rows = cin if spec.transposed else w.shape[0]
    one = spec._replace(groups=1)
    if not spec.transposed:
        inner = functools.partial(widened.lowering, blocks=True)  # XLA off CPU or when split
    elif any(s > 1 for s in spec.stride):
        inner = subpixel.lowering
    else:
        inner = xla.conv_transpose
    parts = [
        inner(x[:, i * cin // g : (i + 1) * cin // g], w[i * rows // g : (i + 1) * rows // g], one)
        for i in range(g)
    ]
    return jnp.concatenate(parts, axis=1)
