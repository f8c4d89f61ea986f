"""Lowerings and the planner that picks one.

A lowering computes one convolution from a :class:`ConvSpec` (everything static,
input already padded for non-zero padding modes). The planner is a pure function
of (config, input shape, dtype, backend): no global state, no timing at run time.
Every lowering must equal the ``"xla"`` one to float32 rounding, forward and
gradients.

Lowerings:

* ``"xla"``: one ``lax.conv_general_dilated``; a transposed convolution dilates
  the input by the stride and convolves it with the flipped kernel (what
  ``lax.conv_transpose`` computes).
* ``"subpixel"`` (transposed only): one stride-1 convolution over the
  undilated input that yields every stride phase as extra channels, then an
  interleave. Its gradients are stride-1 convolutions too, where XLA's
  input-dilated ones are slow on CPU.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax

ALGORITHMS = ("auto", "xla", "subpixel")
_TRANSPOSED_ONLY = ("subpixel",)


class ConvSpec(NamedTuple):
    """The static description a lowering receives.

    ``pads`` are the zero pads still to apply (``(0, 0)`` after a non-zero mode
    padded the input). For transposed convolutions ``pads`` and
    ``output_padding`` are torch's (``output_padding`` already resolved from
    ``output_size``).
    """

    transposed: bool
    stride: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int
    output_padding: tuple[int, ...]
    precision: Any
    preferred_element_type: Any


def check_algorithm(algorithm: object, transposed: bool) -> None:
    """Raises ValueError unless ``algorithm`` names a lowering that fits the config."""
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"algorithm must be one of {list(ALGORITHMS)}, got algorithm={algorithm!r}"
        )
    if algorithm in _TRANSPOSED_ONLY and not transposed:
        raise ValueError(
            f"algorithm={algorithm!r} computes transposed convolutions only; use "
            "algorithm='auto' or 'xla' here"
        )


def plan(cfg: Any, x_shape: tuple[int, ...], dtype: Any, backend: str) -> str:
    """Name of the lowering for this call; ``cfg.algorithm`` forces one.

    Strided transposed convolutions run ``"subpixel"`` on CPU, where it was
    measured 5–15× faster than ``"xla"`` for forward plus backward; elsewhere,
    and for everything else, ``"xla"``.
    """
    del x_shape, dtype
    if cfg.algorithm != "auto":
        return cfg.algorithm
    if cfg.transposed and backend == "cpu" and any(s > 1 for s in cfg.stride):
        return "subpixel"
    return "xla"


@functools.partial(jax.jit, static_argnames=("name", "spec"))
def run(name: str, x, w, spec: ConvSpec):
    """Runs lowering ``name`` on batched ``x`` (N, C, *spatial) and weight ``w``.

    Jitted, so that eager calls compile one program per shape instead of one per
    operation; inside a caller's ``jit`` it is inlined.
    """
    from jconv.lowering import subpixel, xla

    if spec.transposed:
        lowerings = {"xla": xla.conv_transpose, "subpixel": subpixel.conv_transpose}
    else:
        lowerings = {"xla": xla.conv}
    return lowerings[name](x, w, spec)
