"""torch.nn.functional-style convolutions; same engine as ``jconv.apply``.

Each op builds the config its arguments describe (validated as the layer's) and
runs it, so both front doors give identical numbers and errors.
"""

from __future__ import annotations

import jax
import numpy as np

from jconv import config as _config
from jconv import core
from jconv import padding as _padding


def _build(cls, weight, bias, groups, **kw):
    """The config that ``weight``, ``bias`` and ``groups`` describe, checked as torch does."""
    n, transposed, name = (
        cls.ndim,
        cls.transposed,
        cls.__name__.lower().replace("transpose", "_transpose"),
    )
    for what, value in (("weight", weight), ("bias", bias)):
        if what == "bias" and value is None:
            continue
        if not (hasattr(value, "shape") and hasattr(value, "dtype")):
            raise TypeError(
                f"{name}: {what} must be an array (jax or numpy), got {type(value).__name__}"
            )
    wshape = tuple(np.shape(weight))
    order = (
        "(in_channels, out_channels/groups" if transposed else "(out_channels, in_channels/groups"
    )
    if len(wshape) != n + 2:
        raise ValueError(
            f"{name}: weight must be {n + 2}-d {order}, *kernel_size), got a weight of "
            f"shape {list(wshape)}"
        )
    try:
        groups = _padding.as_int("groups", groups)
    except TypeError as err:
        raise TypeError(f"{name}: {err}") from None
    if groups <= 0:
        raise ValueError(f"{name}: groups must be a positive integer, got groups={groups!r}")
    if wshape[0] % groups:
        raise ValueError(
            f"{name}: given groups={groups}, expected weight to be divisible by {groups} at "
            f"dimension 0, but got weight of shape {list(wshape)}; weight.shape[0] must be "
            "a multiple of groups"
        )
    if transposed:
        in_ch, out_ch = wshape[0], wshape[1] * groups
    else:
        in_ch, out_ch = wshape[1] * groups, wshape[0]
    if bias is not None and tuple(np.shape(bias)) != (out_ch,):
        raise ValueError(
            f"{name}: given weight of shape {list(wshape)}, expected bias to be 1-d with "
            f"{out_ch} elements, but got bias of shape {list(np.shape(bias))}"
        )
    try:
        return cls(
            in_ch,
            out_ch,
            wshape[2:],
            groups=groups,
            bias=bias is not None,
            dtype=np.dtype(getattr(weight, "dtype", np.float32)),
            **kw,
        )
    except (ValueError, TypeError) as err:
        raise type(err)(str(err).replace(f"{cls.__name__}:", f"{name}:", 1)) from None


def _run(cls, input, weight, bias, groups, **kw):
    cfg = _build(cls, weight, bias, groups, **kw)
    try:
        return core.forward(cfg, weight, bias, input)
    except (ValueError, TypeError) as err:
        if type(err) not in (ValueError, TypeError):
            raise
        # the errors of the op the caller named: conv2d, not the Conv2d config behind it
        name = cls.__name__.lower().replace("transpose", "_transpose")
        raise type(err)(str(err).replace(cls.__name__, name, 1)) from None


def _conv(ndim, input, weight, bias, stride, padding, dilation, groups, padding_mode):
    cls = {1: _config.Conv1d, 2: _config.Conv2d, 3: _config.Conv3d}[ndim]
    return _run(
        cls,
        input,
        weight,
        bias,
        groups,
        stride=stride,
        padding=padding,
        dilation=dilation,
        padding_mode=padding_mode,
    )


def conv1d(
    input,
    weight,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    *,
    padding_mode: str = "zeros",
) -> jax.Array:
    """input (N, C_in, L) or (C_in, L); weight (C_out, C_in/groups, k) -> (N, C_out, L_out)."""
    return _conv(1, input, weight, bias, stride, padding, dilation, groups, padding_mode)


def conv2d(
    input,
    weight,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    *,
    padding_mode: str = "zeros",
) -> jax.Array:
    """input (N, C_in, H, W) or (C_in, H, W); weight (C_out, C_in/groups, kH, kW)."""
    return _conv(2, input, weight, bias, stride, padding, dilation, groups, padding_mode)


def conv3d(
    input,
    weight,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    *,
    padding_mode: str = "zeros",
) -> jax.Array:
    """input (N, C_in, D, H, W) or (C_in, D, H, W); weight (C_out, C_in/groups, kD, kH, kW)."""
    return _conv(3, input, weight, bias, stride, padding, dilation, groups, padding_mode)


def _conv_transpose(ndim, input, weight, bias, stride, padding, output_padding, groups, dilation):
    cls = {1: _config.ConvTranspose1d, 2: _config.ConvTranspose2d, 3: _config.ConvTranspose3d}
    return _run(
        cls[ndim],
        input,
        weight,
        bias,
        groups,
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
    )


def conv_transpose1d(
    input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1
) -> jax.Array:
    """input (N, C_in, L) or (C_in, L); weight (C_in, C_out/groups, k) -> (N, C_out, L_out)."""
    return _conv_transpose(
        1, input, weight, bias, stride, padding, output_padding, groups, dilation
    )


def conv_transpose2d(
    input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1
) -> jax.Array:
    """input (N, C_in, H, W) or (C_in, H, W); weight (C_in, C_out/groups, kH, kW)."""
    return _conv_transpose(
        2, input, weight, bias, stride, padding, output_padding, groups, dilation
    )


def conv_transpose3d(
    input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1
) -> jax.Array:
    """input (N, C_in, D, H, W) or (C_in, D, H, W); weight (C_in, C_out/groups, kD, kH, kW)."""
    return _conv_transpose(
        3, input, weight, bias, stride, padding, output_padding, groups, dilation
    )
