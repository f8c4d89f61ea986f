"""Runs a test case through PyTorch (the oracle); imported only when torch is installed."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_MODULE = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
_F_MODE = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "replicate",
    "circular": "circular",
}


def _native(kwargs) -> bool:
    """Whether torch's module takes this padding form as it is."""
    p = kwargs["padding"]
    if isinstance(p, str):
        return p in ("valid", "same")
    return not any(
        isinstance(v, (tuple, list)) for v in (p if isinstance(p, (tuple, list)) else [p])
    )


def _tuples(value):
    """``value`` with every list made a tuple (JSON turns tuples into lists)."""
    return tuple(map(_tuples, value)) if isinstance(value, (list, tuple)) else value


def conv_with_grads(ndim, kwargs, pairs, x, w, b, gy):
    """torch's output and (dx, dw, db) of ``sum(y * gy)``, all float32 numpy."""
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.nn.Parameter(torch.tensor(w))
    bt = torch.nn.Parameter(torch.tensor(b)) if b is not None else None
    if _native(kwargs):
        kw = dict(kwargs)
        if isinstance(kw["padding"], list):
            kw["padding"] = tuple(kw["padding"])
        mod = _MODULE[ndim](**kw)
        mod.weight, mod.bias = wt, bt
        y = mod(xt)
    else:
        flat = [v for lo, hi in reversed(pairs) for v in (lo, hi)]
        unbatched = xt.dim() == ndim + 1
        xin = xt[None] if unbatched else xt
        xp = F.pad(xin, flat, mode=_F_MODE[kwargs["padding_mode"]])
        conv = getattr(F, f"conv{ndim}d")
        y = conv(
            xp,
            wt,
            bt,
            stride=kwargs["stride"],
            dilation=kwargs["dilation"],
            groups=kwargs["groups"],
        )
        y = y[0] if unbatched else y
    (y * torch.tensor(gy)).sum().backward()
    grads = [xt.grad, wt.grad, bt.grad if bt is not None else None]
    out = [y.detach().numpy()] + [g.numpy() if g is not None else None for g in grads]
    return out


_MODULE_T = {1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}


def conv_transpose_with_grads(ndim, kwargs, pairs, x, w, b, gy, output_size=None):
    """torch's ConvTranspose output and (dx, dw, db) of ``sum(y * gy)``.

    (lo, hi) pairs, which torch's module does not take, run with padding 0 and a
    crop of lo and hi elements: that is what torch's padding means.
    """
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.nn.Parameter(torch.tensor(w))
    bt = torch.nn.Parameter(torch.tensor(b)) if b is not None else None
    kw = {k: _tuples(v) for k, v in kwargs.items()}
    paired = isinstance(kw["padding"], tuple) and any(isinstance(v, tuple) for v in kw["padding"])
    if paired:
        kw["padding"] = 0
    mod = _MODULE_T[ndim](**kw)
    mod.weight, mod.bias = wt, bt
    y = mod(xt, output_size=list(output_size) if output_size is not None else None)
    if paired:
        crop = tuple(slice(lo, y.shape[-ndim + i] - hi) for i, (lo, hi) in enumerate(pairs))
        y = y[(Ellipsis,) + crop]
    (y * torch.tensor(gy)).sum().backward()
    grads = [xt.grad, wt.grad, bt.grad if bt is not None else None]
    return [y.detach().numpy()] + [g.numpy() if g is not None else None for g in grads]
