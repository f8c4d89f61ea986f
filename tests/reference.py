"""A float64 NumPy convolution written independently of lax: a loop over kernel taps.

For each tap ``t`` the strided window ``xp[..., t·d : t·d + s·(out − 1) + 1 : s]``
meets ``w[..., t]``; the gradients run the same loop backwards. The transposed
convolution is the adjoint of the forward one with respect to its input.
"""

from __future__ import annotations

import itertools

import numpy as np

_NP_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _windows(kernel, stride, dilation, out):
    """Yields (tap index, tuple of slices into the padded input) for every kernel tap."""
    for tap in itertools.product(*(range(k) for k in kernel)):
        sl = tuple(
            slice(t * d, t * d + s * (o - 1) + 1, s)
            for t, d, s, o in zip(tap, dilation, stride, out)
        )
        yield tap, sl


def _out_sizes(padded, kernel, stride, dilation):
    return tuple(
        (p - d * (k - 1) - 1) // s + 1 for p, k, s, d in zip(padded, kernel, stride, dilation)
    )


def conv(x, w, b, stride, pads, dilation, groups, mode="zeros"):
    """x (N, C, *sp) float64, w (O, C/g, *k) -> (N, O, *out)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    xp = np.pad(x, [(0, 0), (0, 0)] + [tuple(p) for p in pads], mode=_NP_MODE[mode])
    n, c = x.shape[:2]
    o, cg = w.shape[:2]
    kernel = w.shape[2:]
    out = _out_sizes(xp.shape[2:], kernel, stride, dilation)
    y = np.zeros((n, o, *out))
    og = o // groups
    for g in range(groups):
        xs, ws = xp[:, g * cg : (g + 1) * cg], w[g * og : (g + 1) * og]
        for tap, sl in _windows(kernel, stride, dilation, out):
            y[:, g * og : (g + 1) * og] += np.einsum(
                "nc...,oc->no...", xs[(Ellipsis,) + sl], ws[(Ellipsis,) + tap]
            )
    if b is not None:
        y += np.asarray(b, np.float64).reshape((-1,) + (1,) * len(kernel))
    return y


def conv_vjp(x, w, gy, stride, pads, dilation, groups):
    """Gradients (dx, dw, db) of ``sum(conv(x, w, b) * gy)`` for zero padding."""
    x, w, gy = (np.asarray(a, np.float64) for a in (x, w, gy))
    xp = np.pad(x, [(0, 0), (0, 0)] + [tuple(p) for p in pads])
    cg, o = w.shape[1], w.shape[0]
    og = o // groups
    kernel, out = w.shape[2:], gy.shape[2:]
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for g in range(groups):
        cs, os_ = slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)
        for tap, sl in _windows(kernel, stride, dilation, out):
            window = xp[(slice(None), cs) + sl]
            summed = [0, *range(2, window.ndim)]
            dw[(os_, slice(None)) + tap] += np.tensordot(gy[:, os_], window, (summed, summed))
            dxp[(slice(None), cs) + sl] += np.einsum(
                "no...,oc->nc...", gy[:, os_], w[(os_, slice(None)) + tap]
            )
    crop = tuple(slice(lo, lo + size) for (lo, _), size in zip(pads, x.shape[2:]))
    dx = dxp[(slice(None), slice(None)) + crop]
    db = gy.sum(axis=(0,) + tuple(range(2, gy.ndim)))
    return dx, dw, db


def conv_transpose(x, w, b, stride, pads, dilation, groups, output_padding):
    """x (N, C_in, *sp), w (C_in, C_out/g, *k) -> (N, C_out, *out), torch's ConvTranspose."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n, cin = x.shape[:2]
    og = w.shape[1]
    cg = cin // groups
    kernel, sp = w.shape[2:], x.shape[2:]
    full = tuple(
        (i - 1) * s + d * (k - 1) + 1 + op
        for i, s, d, k, op in zip(sp, stride, dilation, kernel, output_padding)
    )
    y = np.zeros((n, og * groups, *full))
    for g in range(groups):
        xs, ws = x[:, g * cg : (g + 1) * cg], w[g * cg : (g + 1) * cg]
        for tap, sl in _windows(kernel, stride, dilation, sp):
            y[(slice(None), slice(g * og, (g + 1) * og)) + sl] += np.einsum(
                "nc...,co->no...", xs, ws[(Ellipsis,) + tap]
            )
    crop = tuple(slice(lo, f - hi) for (lo, hi), f in zip(pads, full))
    y = y[(slice(None), slice(None)) + crop]
    if b is not None:
        y += np.asarray(b, np.float64).reshape((-1,) + (1,) * len(kernel))
    return y
