"""The default lowering: one ``lax.conv_general_dilated`` in NCHW/OIHW layout.

It is what plain JAX code runs, with two differences:

* it never hands XLA a convolution whose derivatives abort the process (see
  :func:`swap_hazard`). A transposed convolution is guarded by asking the same
  question about the forward convolution whose input gradient it is;
* it never hands XLA a negative padding, nor a padding beyond the dilated
  kernel's reach ``d·(k − 1)``, whose input gradient would have a negative one.
  XLA's CPU convolution reads outside its input when a dimension is padded
  negatively on one side and positively on the other (seen on jaxlib 0.10.2):
  the input gradient of ``Conv1d(1, 4, 2, padding=((2, 0),))`` comes back with
  garbage in it, different from run to run. Padding past the reach is applied
  to the input first (its gradient is a slice); a negative one of a transposed
  convolution becomes a crop of the output.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jconv import shapes
from jconv.lowering.spec import ConvSpec

_SPATIAL = "DHW"


def dimension_numbers(ndim: int) -> tuple[str, str, str]:
    """``("NCHW", "OIHW", "NCHW")`` and its 1-d and 3-d forms."""
    sp = _SPATIAL[3 - ndim :]
    return ("NC" + sp, "OI" + sp, "NC" + sp)


def pad_trailing(x, pads, interior=None):
    """Zero-pads the trailing ``len(pads)`` dims of ``x`` by (lo, hi) pairs (negative
    values crop), with ``interior`` zeros between elements where given."""
    interior = interior or (0,) * len(pads)
    cfg = [(0, 0, 0)] * (x.ndim - len(pads))
    cfg += [(lo, hi, i) for (lo, hi), i in zip(pads, interior)]
    return lax.pad(x, jnp.zeros((), x.dtype), cfg)


def within_reach(x, kernel, spec: ConvSpec):
    """``x`` padded by whatever of ``spec.pads`` exceeds ``d·(k − 1)``, and the rest.

    The same convolution, but its input gradient's padding ``d·(k − 1) − pad`` is
    never negative.
    """
    reach = [d * (k - 1) for k, d in zip(kernel, spec.dilation)]
    excess = [(max(lo - r, 0), max(hi - r, 0)) for (lo, hi), r in zip(spec.pads, reach)]
    if not any(lo or hi for lo, hi in excess):
        return x, spec
    pads = tuple((min(lo, r), min(hi, r)) for (lo, hi), r in zip(spec.pads, reach))
    return pad_trailing(x, excess), spec._replace(pads=pads)


def swap_hazard(spatial, kernel, stride, dilation, pads, groups: int) -> bool:
    """Whether XLA's convolution operand swapper may abort on this conv or its derivatives.

    XLA (CPU, seen on jaxlib 0.10.2) swaps the operands of an ungrouped convolution
    whose kernel is larger than its input. It keeps a spatial dimension as it is
    when that dimension looks like a "group": window n, base dilation n, step
    n − 1, no window dilation, no padding. It still swaps the operands, so the
    window no longer fits the new kernel and a ``Check failed`` aborts the process.

    Every convolution in the derivative tower relates the same three tensors: the
    input X (size I), the kernel W (size K) and the output Y (size O). Y is dilated
    by the stride s and W by the dilation d. So a "group" window is one of:

    * W with (s, d) = (2, 1) and K = 2: the input gradient, at low padding 1;
    * Y with (s, d) = (1, 2) and O = 2: a second-order derivative;
    * X with I = s and d = I − 1, or I = d and s = I − 1 (I padded or not).

    One such dimension is enough. 1-d convolutions never swap (the group
    dimension is their only one), and grouped ones never do either.
    """
    if groups != 1 or len(kernel) < 2:
        return False
    for i, k, s, d, (lo, hi) in zip(spatial, kernel, stride, dilation, pads):
        o = (i + lo + hi - d * (k - 1) - 1) // s + 1
        if (s, d) == (2, 1) and k == 2 and lo >= 1:
            return True
        if (s, d) == (1, 2) and o == 2:
            return True
        for n in (i, i + lo + hi):
            if n >= 2 and ((s, d) == (n, n - 1) or (d, s) == (n, n - 1)):
                return True
    return False


def _guarded(x, w, spec: ConvSpec, guard: bool, **window) -> jnp.ndarray:
    """One ``lax.conv_general_dilated``; with ``guard``, as two identical feature groups.

    XLA never swaps a grouped convolution, and the convolutions autodiff derives from
    this one stay grouped through second order. The second copy's output is dropped,
    so its gradients are exact zeros.
    """
    groups = spec.groups
    if guard:
        x, w, groups = jnp.concatenate([x, x], axis=1), jnp.concatenate([w, w], axis=0), 2
    y = lax.conv_general_dilated(
        x,
        w,
        dimension_numbers=dimension_numbers(x.ndim - 2),
        feature_group_count=groups,
        precision=spec.precision,
        preferred_element_type=spec.preferred_element_type,
        **window,
    )
    return y[:, : w.shape[0] // 2] if guard else y


def conv(x: jnp.ndarray, w: jnp.ndarray, spec: ConvSpec) -> jnp.ndarray:
    """Forward convolution of batched ``x`` (N, C, *sp) with ``w`` (O, C/g, *k)."""
    x, spec = within_reach(x, w.shape[2:], spec)
    guard = swap_hazard(
        x.shape[2:], w.shape[2:], spec.stride, spec.dilation, spec.pads, spec.groups
    )
    return _guarded(
        x,
        w,
        spec,
        guard,
        window_strides=spec.stride,
        padding=spec.pads,
        rhs_dilation=spec.dilation,
    )


def transposed_pads(kernel, dilation, pads, output_padding) -> list[tuple[int, int]]:
    """The padding of the input-dilated convolution a transposed one runs: ``d·(k − 1)``
    less torch's padding on each side, plus ``output_padding`` high (may be negative)."""
    return [
        (d * (k - 1) - lo, d * (k - 1) - hi + op)
        for k, d, (lo, hi), op in zip(kernel, dilation, pads, output_padding)
    ]


def conv_transpose(x: jnp.ndarray, w: jnp.ndarray, spec: ConvSpec) -> jnp.ndarray:
    """torch's transposed convolution of ``x`` (N, C_in, *sp) with ``w`` (C_in, C_out/g, *k).

    What ``lax.conv_transpose`` computes: ``x`` dilated by the stride, padded by
    ``d·(k − 1) − pad`` (plus ``output_padding`` high), convolved with the flipped
    kernel whose in/out axes are swapped within each group.

    torch's weight is the weight of the forward convolution C_out -> C_in whose
    input gradient this is, so the crash guard asks :func:`swap_hazard` about that
    forward convolution: its input is our output and its padding is
    ``(lo, hi − output_padding)``.
    """
    nd, kernel, groups = x.ndim - 2, w.shape[2:], spec.groups
    cin, per_group = w.shape[:2]
    out = shapes.transposed_spatial(
        x.shape[2:], kernel, spec.stride, spec.pads, spec.dilation, spec.output_padding
    )
    forward_pads = tuple((lo, hi - op) for (lo, hi), op in zip(spec.pads, spec.output_padding))
    guard = swap_hazard(out, kernel, spec.stride, spec.dilation, forward_pads, groups)
    w = w.reshape(groups, cin // groups, per_group, *kernel).swapaxes(1, 2)
    w = jnp.flip(w.reshape(groups * per_group, cin // groups, *kernel), range(2, nd + 2))
    pads = transposed_pads(kernel, spec.dilation, spec.pads, spec.output_padding)
    y = _guarded(
        x,
        w,
        spec,
        guard,
        window_strides=(1,) * nd,
        padding=[(max(lo, 0), max(hi, 0)) for lo, hi in pads],
        lhs_dilation=spec.stride,
        rhs_dilation=spec.dilation,
    )
    # a window step of 1: a negative pad drops exactly that many outputs
    return pad_trailing(y, [(min(lo, 0), min(hi, 0)) for lo, hi in pads])
