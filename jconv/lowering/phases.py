"""Transposed convolution as one stride-1 convolution plus an interleave (the sub-pixel form).

Per dimension, output position ``q = s·m + r`` (before torch's crop) collects
``x[i]·w[t]`` for ``s·i + d·t = q``. For a fixed phase ``r`` only the taps with
``d·t ≡ r (mod s)`` meet it, at input ``i = m − (d·t − r)/s``: a stride-1
correlation of the undilated input with a small sub-kernel. Stacking the ``s``
phases' sub-kernels as output channels gives one convolution
``(N, C_in, *sp) -> (N, C_out·∏s, *m)``; interleaving the phases back
(depth-to-space) and cropping gives torch's output.

Nothing is multiplied by the zeros that input dilation inserts, and every
derivative is a stride-1 convolution as well. A dimension with stride 1 keeps
its kernel and dilation as they are.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from jconv import shapes
from jconv.lowering.spec import ConvSpec


def phase_taps(k: int, s: int, d: int) -> int:
    """Taps of each phase's sub-kernel in one dimension (at stride 1, the kernel's own)."""
    return k if s == 1 else d * (k - 1) // s + 1


class _Axis:
    """One spatial dimension's plan: phases, sub-kernel taps and window."""

    def __init__(self, k: int, s: int, d: int, size: int, lo: int, out: int):
        if s == 1:  # nothing to split: the flipped kernel with its own dilation
            self.phases, self.taps, self.dilation = 1, k, d
            self.where = [[(t, k - 1 - t) for t in range(k)]]
        else:
            self.phases, self.taps, self.dilation = s, phase_taps(k, s, d), 1
            self.where = [[] for _ in range(s)]
            for t in range(k):
                j, r = divmod(d * t, s)
                self.where[r].append((t, self.taps - 1 - j))
        # phases from ``live`` on hold no tap (a kernel shorter than its stride): the
        # convolution leaves them out, the interleave puts their zeros back
        self.live = 1 + max(r for r, items in enumerate(self.where) if items)
        span = self.dilation * (self.taps - 1)
        first = lo // s  # first phase block the crop keeps
        self.blocks = (lo + out - 1) // s - first + 1
        pad_lo = span - first
        pad_hi = self.blocks - size - pad_lo + span
        # input rows to keep (negative pads crop) and zeros to add around them
        self.keep = slice(max(0, -pad_lo), size + min(0, pad_hi))
        self.zeros = (max(0, pad_lo), max(0, pad_hi))
        self.crop = slice(lo - s * first, lo - s * first + out)


def _tap_index(kernel: tuple[int, ...], axes: list[_Axis]) -> np.ndarray:
    """For each (phase..., sub-tap...), the flat kernel tap it holds (∏k: a zero)."""
    empty = math.prod(kernel)
    index = np.full([a.phases for a in axes] + [a.taps for a in axes], empty, np.int32)
    for phase in np.ndindex(*(a.phases for a in axes)):
        lists = [a.where[r] for a, r in zip(axes, phase)]
        for pick in np.ndindex(*(len(items) for items in lists)):
            taps = tuple(items[p][0] for items, p in zip(lists, pick))
            spots = tuple(items[p][1] for items, p in zip(lists, pick))
            index[phase + spots] = np.ravel_multi_index(taps, kernel)
    return index


def _sub_kernels(w: jnp.ndarray, axes: list[_Axis], dilation) -> jnp.ndarray:
    """(C_in, C_out/g, *phases, *taps): each phase's sub-kernel from ``w``
    (C_in, C_out/g, *k), exact (no multiply by one-hot masks).

    Undilated, tap ``t = s·j + r`` is phase ``r``'s spot ``taps − 1 − j``: the kernel
    zero-padded to ``taps·s``, split into ``(taps, s)``, reversed along ``taps`` and
    transposed. Its transpose (in the weight gradient) is one copy as well, where a
    gather's is a scatter into a second weight-sized buffer (HiFi-GAN's 16-tap
    stride-8 upsampler at batch 1: 17.3 against XLA's 8.4 MB). A dilated strided
    dimension takes the gather (:func:`_tap_index`)."""
    n, kernel = len(axes), w.shape[2:]
    if any(a.phases > 1 and d > 1 for a, d in zip(axes, dilation)):
        flat = w.reshape(*w.shape[:2], math.prod(kernel))
        flat = jnp.concatenate([flat, jnp.zeros((*w.shape[:2], 1), w.dtype)], axis=2)
        return flat[:, :, _tap_index(kernel, axes)]
    w = jnp.pad(w, ((0, 0), (0, 0), *((0, a.taps * a.phases - k) for a, k in zip(axes, kernel))))
    w = w.reshape(*w.shape[:2], *(v for a in axes for v in (a.taps, a.phases)))
    w = lax.rev(w, tuple(2 + 2 * i for i in range(n)))
    return w.transpose(0, 1, *(3 + 2 * i for i in range(n)), *(2 + 2 * i for i in range(n)))


def conv_transpose(x: jnp.ndarray, w: jnp.ndarray, spec: ConvSpec, conv) -> jnp.ndarray:
    """torch's transposed convolution of ``x`` (N, C_in, *sp) with ``w`` (C_in, C_out/g, *k);
    ``conv(x, w, spec)`` runs its stride-1 convolution (its ``spec`` holds the zero pads)."""
    n, (batch, cin), kernel = x.ndim - 2, x.shape[:2], w.shape[2:]
    groups, per_group = spec.groups, w.shape[1]
    cout = per_group * groups
    out = shapes.transposed_spatial(
        x.shape[2:], kernel, spec.stride, spec.pads, spec.dilation, spec.output_padding
    )
    axes = [
        _Axis(k, s, d, size, lo, o)
        for k, s, d, size, (lo, _), o in zip(
            kernel, spec.stride, spec.dilation, x.shape[2:], spec.pads, out
        )
    ]
    phases, taps = [a.phases for a in axes], [a.taps for a in axes]
    live = [a.live for a in axes]

    # Sub-kernels (exact: no multiply by one-hot masks) of the phases that hold taps,
    # laid out as the weight of a grouped forward conv whose output channels are
    # (group, c, phase).
    sub = _sub_kernels(w, axes, spec.dilation)  # (C_in, C_out/g, *phases, *taps)
    sub = sub[(slice(None), slice(None), *(slice(0, a) for a in live))]
    sub = sub.reshape(groups, cin // groups, per_group, *live, *taps)
    order = (0, 2, *range(3, 3 + n), 1, *range(3 + n, 3 + 2 * n))
    sub = sub.transpose(order).reshape(cout * math.prod(live), cin // groups, *taps)

    # The input window: crop where the kept blocks need less than the full input,
    # zero-pad (in ``conv``) where they need more.
    x = x[(..., *(a.keep for a in axes))]
    forward = ConvSpec(
        transposed=False,
        stride=(1,) * n,
        pads=tuple(a.zeros for a in axes),
        dilation=tuple(a.dilation for a in axes),
        groups=groups,
        output_padding=(0,) * n,
        precision=spec.precision,
        preferred_element_type=spec.preferred_element_type,
        widen=spec.widen,
    )
    z = conv(x, sub, forward)  # (N, C_out·∏live, *blocks)

    # Depth-to-space: (N, C_out, *phases, *blocks) -> (N, C_out, b0, p0, b1, p1, ...).
    blocks = [a.blocks for a in axes]
    z = z.reshape(batch, cout, *live, *blocks)
    if live != phases:
        z = jnp.pad(z, ((0, 0), (0, 0), *((0, p - a) for p, a in zip(phases, live)), *[(0, 0)] * n))
    z = z.transpose(0, 1, *(v for i in range(n) for v in (2 + n + i, 2 + i)))
    z = z.reshape(batch, cout, *(b * p for b, p in zip(blocks, phases)))
    return z[(..., *(a.crop for a in axes))]
