"""The default lowering: one ``lax.conv_general_dilated`` in NCHW/OIHW layout.

It is what plain JAX code runs, with one difference: it never hands XLA a
convolution whose gradient aborts the process (see :func:`swap_hazard`).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jconv.lowering import ConvSpec

_SPATIAL = "DHW"


def dimension_numbers(ndim: int) -> tuple[str, str, str]:
    """``("NCHW", "OIHW", "NCHW")`` and its 1-d and 3-d forms."""
    sp = _SPATIAL[3 - ndim :] if ndim <= 3 else "".join(chr(65 + i) for i in range(ndim))
    return ("NC" + sp, "OI" + sp, "NC" + sp)


def swap_hazard(kernel, stride, dilation, groups: int) -> bool:
    """Whether XLA's convolution operand swapper may abort on this conv's gradient.

    XLA (CPU, seen on jaxlib 0.10.2) swaps the operands of a convolution whose
    kernel is larger than its input. It keeps a spatial dimension unchanged when
    that dimension looks like a "group" (window 2, base dilation 2, stride 1, no
    padding) but still swaps the operands, so the window no longer fits the new
    kernel and a ``Check failed`` aborts the process. The input gradient of a
    forward conv has exactly that shape in a dimension with kernel 2, stride 2,
    dilation 1 and low padding 1; ungrouped convolutions of 2 or more dimensions
    are exposed. We test the kernel/stride/dilation part only, a superset, and
    pad explicitly there: the gradient conv then carries padding and is safe.
    """
    if groups != 1 or len(kernel) < 2:
        return False
    return any(k == 2 and s == 2 and d == 1 for k, s, d in zip(kernel, stride, dilation))


def conv(x: jnp.ndarray, w: jnp.ndarray, spec: ConvSpec) -> jnp.ndarray:
    """Forward convolution of batched ``x`` (N, C, *sp) with ``w`` (O, C/g, *k)."""
    if spec.transposed:
        raise NotImplementedError("transposed convolutions are not lowered yet")
    nd = x.ndim - 2
    pads = spec.pads
    if any(lo or hi for lo, hi in pads) and swap_hazard(
        w.shape[2:], spec.stride, spec.dilation, spec.groups
    ):
        x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0)] * 2 + [(lo, hi, 0) for lo, hi in pads])
        pads = ((0, 0),) * nd
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=spec.stride,
        padding=pads,
        rhs_dilation=spec.dilation,
        dimension_numbers=dimension_numbers(nd),
        feature_group_count=spec.groups,
        precision=spec.precision,
        preferred_element_type=spec.preferred_element_type,
    )
