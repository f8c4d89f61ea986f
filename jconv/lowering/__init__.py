"""Lowerings and the planner that picks one.

A lowering computes one convolution from a :class:`ConvSpec` (everything static,
input already padded for non-zero padding modes). The planner is a pure function
of (config, input shape, dtype, backend): no global state, no timing at run time.
Every lowering must equal the ``"xla"`` one to float32 rounding, forward and
gradients.
"""

from __future__ import annotations

from typing import Any, NamedTuple

ALGORITHMS = ("auto", "xla")


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


def plan(cfg: Any, x_shape: tuple[int, ...], dtype: Any, backend: str) -> str:
    """Name of the lowering for this call; ``cfg.algorithm`` forces one."""
    del x_shape, dtype, backend  # one lowering so far; the arguments are the contract
    if cfg.algorithm != "auto":
        return cfg.algorithm
    return "xla"


def run(name: str, x, w, spec: ConvSpec):
    """Runs lowering ``name`` on batched ``x`` (N, C, *spatial) and weight ``w``."""
    from jconv.lowering import xla

    lowerings = {"xla": xla.conv}
    return lowerings[name](x, w, spec)
