"""Convolutions rewritten as smaller-rank or stride-1 ones that XLA's CPU runs fast.

* ``"s2d"`` (space to depth): a stride-``s`` convolution equals a stride-1
  convolution of the input with each ``s``-block moved into channels,
  ``X'[(c, r), m] = x[c, s·m + r]``, by the kernel ``w'[o, (c, r), j] = w[o, c, s·j + r]``
  (zero past the kernel's end). Strided stems (7×7, stride 2, three channels)
  become 4×4 stride-1 convolutions over twelve channels, run ``"widened"``.
* ``"fold"``: a 3-d convolution as one 2-d convolution whose channels also hold
  the kernel's depth taps, ``X'[(n, z), (t, c)] = x[n, c, s·z + d·t]``, with the
  depth folded into the batch. The 2-d convolution runs ``"widened"`` (plain XLA
  off CPU or when the input may be split across devices).

Both only move data and add exact zeros around one XLA convolution, so their
gradients are that convolution's (crash guard included).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from jconv.lowering import widened
from jconv.lowering.common import out_spatial
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
    return widened.lowering(x, w, one)


def fold(x, w, spec: ConvSpec):
    """3-d conv of ``x`` (N, C, D, H, W) with ``w`` (O, C/g, kd, kh, kw) as one 2-d conv."""
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
    w2 = w.swapaxes(1, 2).reshape(cout, kd * per_in, *w.shape[3:])
    plane = spec._replace(stride=tuple(stride), pads=spec.pads[1:], dilation=tuple(dil))
    y = widened.lowering(z, w2, plane)  # (N·D', O, H', W')
    y = y.reshape(batch, depth, cout, *y.shape[2:])
    return y.transpose(0, 2, 1, 3, 4)
