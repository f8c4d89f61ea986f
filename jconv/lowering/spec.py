"""The static description of one convolution that every lowering receives."""

from __future__ import annotations

from typing import Any, NamedTuple


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
    # "widened" may widen (on CPU, input on one device: its weight gradient's batch
    # blocks would gather a split batch); otherwise it is plain "xla"
    widen: bool = False
