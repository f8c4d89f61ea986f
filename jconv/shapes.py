"""Output shapes, parameter counts and FLOPs, without computing anything.

Per spatial dimension, with padding ``(lo, hi)``, kernel ``k``, stride ``s``,
dilation ``d``::

    conv:        out = ⌊(in + lo + hi − d·(k − 1) − 1) / s⌋ + 1
    transposed:  out = (in − 1)·s − lo − hi + d·(k − 1) + output_padding + 1

The input checks here are the ones ``jconv.apply`` runs, so ``output_shape``
raises exactly the errors that applying the layer would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np

from jconv import padding as _padding
from jconv.config import CONFIG_TYPES


def _fmt(sizes: Sequence[int]) -> str:
    return "(" + " x ".join(str(s) for s in sizes) + ")"


def _name(cfg) -> str:
    return type(cfg).__name__


def _layout(n: int) -> str:
    return ("L", "H, W", "D, H, W")[n - 1] if n <= 3 else "*spatial"


def check_config(cfg, where: str) -> None:
    """TypeError unless ``cfg`` is a jconv config; ``where`` names the caller."""
    if isinstance(cfg, jax.core.Tracer):
        raise TypeError(
            f"{where} got a traced config: a config is not an array, so under jax.jit "
            "mark it static (jax.jit(jconv.init, static_argnums=1)) or close over it"
        )
    if not isinstance(cfg, CONFIG_TYPES):
        raise TypeError(
            f"{where} expects a jconv config such as jconv.Conv2d(3, 16, 3), got "
            f"{type(cfg).__name__}"
        )


def _sizes(cfg, shape) -> tuple[int, ...]:
    """``shape`` as a tuple of non-negative ints, or a clear error."""
    if not _padding._seq(shape):
        raise TypeError(
            f"{_name(cfg)}: the input shape must be a tuple of ints such as x.shape, got {shape!r}"
        )
    try:
        sizes = tuple(_padding.as_int(f"input shape[{i}]", s) for i, s in enumerate(shape))
    except TypeError as err:
        raise TypeError(f"{_name(cfg)}: {err}") from None
    if any(s < 0 for s in sizes):
        raise ValueError(f"{_name(cfg)}: the input shape has a negative size, got {sizes}")
    return sizes


def check_input(cfg, shape: Sequence[int], dtype=None) -> bool:
    """Validates an input shape (and dtype) for ``cfg``; returns whether it is batched."""
    shape = _sizes(cfg, shape)
    n, name = cfg.ndim, _name(cfg)
    if len(shape) not in (n + 1, n + 2):
        raise ValueError(
            f"{name} expects a {n + 1}-d unbatched (C, {_layout(n)}) or {n + 2}-d batched "
            f"(N, C, {_layout(n)}) input, but got an input of shape {list(shape)} "
            f"({len(shape)}-d)"
        )
    batched = len(shape) == n + 2
    channels = shape[1] if batched else shape[0]
    if channels != cfg.in_channels:
        hint = ""
        if shape[-1] == cfg.in_channels:
            axis = 1 if batched else 0
            hint = (
                f" The input looks channels-last; jconv, like torch, puts channels first: "
                f"move them with jnp.moveaxis(x, -1, {axis})."
            )
        raise ValueError(
            f"{name}: given groups={cfg.groups}, weight of shape {list(cfg.weight_shape)}, "
            f"expected input{list(shape)} to have {cfg.in_channels} channels, but got "
            f"{channels} channels instead.{hint}"
        )
    if dtype is not None:
        dt = np.dtype(dtype)
        if not (np.issubdtype(dt, np.floating) or dt.name == "bfloat16"):
            raise TypeError(
                f"{name} expects a floating-point input, got dtype {dt.name}; convert it "
                "with x.astype(jnp.float32)"
            )
    spatial = shape[-n:]
    if cfg.padding_mode != "zeros":
        _padding.check_mode_fits(cfg.padding_mode, cfg.pads, spatial, shape)
    if not cfg.transposed:
        padded = [s + lo + hi for s, (lo, hi) in zip(spatial, cfg.pads)]
        kernel = [d * (k - 1) + 1 for k, d in zip(cfg.kernel_size, cfg.dilation)]
        if any(p < k for p, k in zip(padded, kernel)):
            raise ValueError(
                f"{name}: calculated padded input size per channel: {_fmt(padded)}. "
                f"Kernel size (dilated): {_fmt(kernel)}. The kernel can't be greater than "
                f"the padded input; use a larger input, more padding, or a smaller "
                f"kernel_size or dilation"
            )
    elif any(s == 0 for s in spatial):
        raise ValueError(
            f"{name}: the input's spatial size {_fmt(spatial)} has an empty dimension; "
            "a transposed convolution needs at least one element per dimension"
        )
    return batched


def transposed_spatial(spatial, kernel, stride, pads, dilation, output_padding):
    """``(in − 1)·s − lo − hi + d·(k − 1) + output_padding + 1`` per dimension."""
    return tuple(
        (i - 1) * s - lo - hi + d * (k - 1) + op + 1
        for i, k, s, (lo, hi), d, op in zip(spatial, kernel, stride, pads, dilation, output_padding)
    )


def _transposed_base(cfg, spatial: Sequence[int]) -> tuple[int, ...]:
    """Transposed output size per dimension with output_padding 0."""
    zeros = (0,) * cfg.ndim
    return transposed_spatial(spatial, cfg.kernel_size, cfg.stride, cfg.pads, cfg.dilation, zeros)


def resolve_output_padding(cfg, shape: Sequence[int], output_size=None) -> tuple[int, ...]:
    """torch's ``_output_padding``: ``output_size`` (optional) to output_padding."""
    n, name = cfg.ndim, _name(cfg)
    if not cfg.transposed:
        if output_size is not None:
            raise TypeError(
                f"output_size is only accepted by transposed convolutions, not {name}; "
                "drop output_size or use a ConvTranspose config"
            )
        return (0,) * n
    if output_size is None:
        return cfg.output_padding
    batched = len(shape) == n + 2
    lead = 2 if batched else 1
    try:
        sizes = [_padding.as_int("output_size", s) for s in output_size]
    except TypeError:
        raise TypeError(
            f"{name}: output_size must be a sequence of ints, got output_size={output_size!r}"
        ) from None
    if len(sizes) == lead + n:
        sizes = sizes[lead:]
    if len(sizes) != n:
        raise ValueError(
            f"{name}: for a {len(shape)}-d input, output_size must have {n} or {lead + n} "
            f"elements, got {len(sizes)} (output_size={tuple(output_size)})"
        )
    spatial = tuple(shape[-n:])
    lows = _transposed_base(cfg, spatial)
    highs = [lo + s - 1 for lo, s in zip(lows, cfg.stride)]
    if any(not lo <= o <= hi for o, lo, hi in zip(sizes, lows, highs)):
        raise ValueError(
            f"{name}: requested an output size of {tuple(sizes)}, but valid sizes range "
            f"from {tuple(lows)} to {tuple(highs)} (for an input of spatial size "
            f"{spatial}); pick output_size within that range"
        )
    return tuple(o - lo for o, lo in zip(sizes, lows))


def output_spatial(cfg, spatial: Sequence[int], output_padding=None) -> tuple[int, ...]:
    """Output spatial sizes for input spatial sizes (assumed valid)."""
    if cfg.transposed:
        op = cfg.output_padding if output_padding is None else output_padding
        return transposed_spatial(spatial, cfg.kernel_size, cfg.stride, cfg.pads, cfg.dilation, op)
    return tuple(
        (i + lo + hi - d * (k - 1) - 1) // s + 1
        for i, (lo, hi), d, k, s in zip(
            spatial, cfg.pads, cfg.dilation, cfg.kernel_size, cfg.stride
        )
    )


def resolve(cfg, input_shape: Sequence[int], output_size=None, dtype=None):
    """Checks an input for ``cfg``; returns ``(batched, output_padding, output shape)``."""
    shape = _sizes(cfg, input_shape)
    batched = check_input(cfg, shape, dtype)
    out_pad = resolve_output_padding(cfg, shape, output_size)
    out = output_spatial(cfg, shape[-cfg.ndim :], out_pad)
    if any(o <= 0 for o in out):
        raise ValueError(
            f"{_name(cfg)}: given input size per channel {_fmt(shape[-cfg.ndim :])}, the "
            f"calculated output size per channel is {_fmt(out)}, which is too small; "
            "use less padding or a larger input"
        )
    return batched, out_pad, ((shape[0],) if batched else ()) + (cfg.out_channels, *out)


def output_shape(cfg, input_shape: Sequence[int], output_size=None) -> tuple[int, ...]:
    """Shape of ``apply(params, x)`` for ``x.shape == input_shape``.

    ``(N, C_in, *sp)`` gives ``(N, C_out, *sp_out)``; ``(C_in, *sp)`` gives
    ``(C_out, *sp_out)``.
    """
    check_config(cfg, "jconv.output_shape")
    return resolve(cfg, input_shape, output_size)[2]


def num_params(cfg) -> int:
    """Number of scalars in the weight and the bias."""
    check_config(cfg, "jconv.num_params")
    return math.prod(cfg.weight_shape) + (cfg.out_channels if cfg.bias else 0)


def flops(cfg, input_shape: Sequence[int], output_size=None) -> int:
    """Floating-point operations of one forward call: 2 per multiply-add, 1 per bias add.

    conv: ``2 · N · C_out · ∏out · (C_in/groups) · ∏k``; transposed: ``2 · N · C_in ·
    ∏in · (C_out/groups) · ∏k`` (each input element meets each kernel tap once).
    """
    check_config(cfg, "jconv.flops")
    out = resolve(cfg, input_shape, output_size)[2]
    batch = out[0] if len(out) == cfg.ndim + 2 else 1
    taps = math.prod(cfg.kernel_size)
    if cfg.transposed:
        spatial_in = math.prod(tuple(input_shape)[-cfg.ndim :])
        macs = batch * cfg.in_channels * spatial_in * (cfg.out_channels // cfg.groups) * taps
    else:
        macs = batch * math.prod(out[-cfg.ndim - 1 :]) * (cfg.in_channels // cfg.groups) * taps
    bias = batch * math.prod(out[-cfg.ndim - 1 :]) if cfg.bias else 0
    return 2 * macs + bias


def receptive_field(cfg) -> tuple[int, ...]:
    """Input extent one output element sees, per dimension: ``d·(k − 1) + 1``."""
    check_config(cfg, "jconv.receptive_field")
    return tuple(d * (k - 1) + 1 for k, d in zip(cfg.kernel_size, cfg.dilation))
