"""Lowerings and the planner that picks one.

A lowering computes one convolution from a :class:`ConvSpec` (everything static,
input already padded for non-zero padding modes). The planner is a pure function
of (config, input shape, dtype, backend, device count, which input axes are
sharded): no global state, no timing at run time.
Every lowering must equal the ``"xla"`` one to float32 rounding, forward and
gradients.

Lowerings:

* ``"xla"``: one ``lax.conv_general_dilated``; a transposed convolution dilates
  the input by the stride and convolves it with the flipped kernel (what
  ``lax.conv_transpose`` computes).
* ``"subpixel"`` (transposed only): XLA's forward, with gradients that avoid
  XLA's slow input-dilated ones on CPU: the weight gradient of the sub-pixel
  form (one stride-1 convolution over the undilated input that yields every
  stride phase as extra channels, then an interleave) and the input gradient as
  the strided convolution this one transposes.
* ``"shift"``, ``"tapgrad"`` (:mod:`jconv.lowering.taps`): a convolution tap by
  tap, as multiply-adds (depthwise and narrow groups) or with a matrix product
  per tap for the weight gradient (dense).
* ``"matmul"``, ``"fft"``, ``"pergroup"`` (:mod:`jconv.lowering.dense`): 1×1
  kernels as a matrix product, large kernels through the FFT, groups as one
  ungrouped convolution per group (forward or transposed).
* ``"s2d"``, ``"fold"`` (:mod:`jconv.lowering.folded`): a strided convolution
  as a stride-1 one over space-to-depth channels; a 3-d convolution as a 2-d one
  with the kernel's depth taps in the channels (that 2-d one widened).
* ``"widened"`` (:mod:`jconv.lowering.widened`): XLA's convolution with one
  more output row than input, cropped, which keeps XLA's CPU backend on its
  Eigen kernel instead of its slower YNNPACK path; the input gradient is widened
  the same way and the weight gradient runs as convolutions of <= 16 features.

Forms whose fast gradients are not autodiff's own bind
:func:`jconv.lowering.custom.bilinear`, a primitive declared bilinear with
those gradients as its transposes, so forward mode, ``vmap`` and higher orders
still work.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

ALGORITHMS = (
    "auto",
    "xla",
    "subpixel",
    "shift",
    "tapgrad",
    "matmul",
    "fft",
    "pergroup",
    "s2d",
    "fold",
    "widened",
)
_TRANSPOSED_ONLY = ("subpixel",)
_FORWARD_ONLY = ("shift", "tapgrad", "matmul", "fft", "s2d", "fold", "widened")


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


def check_algorithm(algorithm: object, transposed: bool, kernel_size: tuple[int, ...] = ()) -> None:
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
    if algorithm in _FORWARD_ONLY and transposed:
        raise ValueError(
            f"algorithm={algorithm!r} computes forward convolutions only; use "
            "algorithm='auto', 'xla', 'subpixel' or 'pergroup' for a transposed one"
        )
    if algorithm == "fold" and len(kernel_size) != 3:
        raise ValueError(
            f"algorithm='fold' computes 3-d convolutions only, got a {len(kernel_size)}-d "
            "kernel; use algorithm='auto' or 'xla'"
        )
    if algorithm == "matmul" and any(k != 1 for k in kernel_size):
        raise ValueError(
            f"algorithm='matmul' needs a 1x1 kernel, got kernel_size={kernel_size}; use "
            "algorithm='auto' or 'xla'"
        )


def splits(devices: int, sharded: tuple[bool, ...] | None) -> tuple[bool, bool]:
    """Whether the batch, and whether any spatial axis, may be split across devices."""
    if devices <= 1:
        return False, False
    if sharded is None:  # unknown (GSPMD decides): assume any axis may be split
        return True, True
    return any(sharded[:2]), any(sharded[2:])


def plan(
    cfg: Any,
    x_shape: tuple[int, ...],
    dtype: Any,
    backend: str,
    devices: int = 1,
    sharded: tuple[bool, ...] | None = None,
) -> str:
    """Name of the lowering for this call; ``cfg.algorithm`` forces one.

    ``devices`` is how many devices the input may span; ``sharded`` says, per
    axis of the batched input (N, C, *spatial), whether it is split across them,
    or is None when unknown (under ``jit`` in GSPMD's auto mode), which counts as
    "any axis may be". Split inputs only get lowerings that XLA's partitioner
    keeps local: no ``"fft"`` (its batch is gathered), no ``"fold"`` across a
    split space axis, and never one grouped XLA convolution (openxla/xla#47945
    gathers it), which runs ``"pergroup"`` instead.

    Off CPU everything else runs ``"xla"`` (cuDNN and TPU convolutions are fast);
    a strided transposed conv split in space runs ``"subpixel"``, whose forward
    is XLA's but whose weight gradient is not gathered. On CPU, by layer family
    (see ``python -m jconv bench``):

    * transposed, strided: ``"subpixel"``;
    * 1×1 kernels: ``"matmul"``;
    * depthwise (one input channel per group): ``"shift"`` up to 7×7 taps,
      ``"fft"`` above (``"xla"`` when split);
    * other grouped: ``"shift"`` while each output sums at most 64 terms,
      ``"pergroup"`` beyond;
    * dense 3-d: ``"fold"`` (``"xla"`` when split in space);
    * dense 2-d float32 with more than 16 channels in or out and a stride-1
      dimension to widen, on one device: ``"widened"``;
    * dense 2-d float32 stems, strided in every dimension, with at most 4 input
      channels and a kernel of at least 3 stride blocks per dimension, on one
      device: ``"s2d"`` (whose stride-1 conv is widened);
    * other dense 2-d with ≥ 16 input channels and ≤ 9 taps: ``"tapgrad"``;
    * everything else: ``"xla"``.
    """
    del x_shape
    if cfg.algorithm != "auto":
        return cfg.algorithm
    batch_split, space_split = splits(devices, sharded)
    split = batch_split or space_split
    taps = math.prod(cfg.kernel_size)
    per_group = cfg.in_channels // cfg.groups
    grouped = cfg.groups > 1 and per_group > 1  # grouped, not depthwise
    strided = any(s > 1 for s in cfg.stride)
    if cfg.transposed:
        if grouped and split:
            return "pergroup"
        if strided and (backend == "cpu" or space_split):
            return "subpixel"
        return "xla"
    if backend != "cpu":
        return "pergroup" if grouped and split else "xla"
    if taps == 1:
        return "matmul"
    if cfg.groups > 1:
        if per_group == 1:
            if taps <= 49:
                return "shift"
            return "xla" if split else "fft"
        return "shift" if per_group * taps <= 64 else "pergroup"
    if cfg.ndim == 3:
        return "xla" if space_split else "fold"
    if cfg.ndim == 2 and not split and _widens(cfg, dtype):
        return "widened"
    if cfg.ndim == 2 and not split and _stem(cfg, dtype):
        return "s2d"
    if cfg.ndim == 2 and per_group >= 16 and taps <= 9:
        return "tapgrad"
    return "xla"


def _stem(cfg: Any, dtype: Any) -> bool:
    """A strided stem whose space-to-depth form is a widenable 3x3-or-larger conv."""
    blocks = [
        -(-(d * (k - 1) + 1) // s) for k, s, d in zip(cfg.kernel_size, cfg.stride, cfg.dilation)
    ]
    return (
        all(s > 1 for s in cfg.stride)
        and cfg.in_channels <= 4
        and min(blocks) >= 3
        and max(cfg.in_channels * math.prod(cfg.stride), cfg.out_channels) > 16
        and str(jnp.dtype(dtype)) == "float32"
    )


def _widens(cfg: Any, dtype: Any) -> bool:
    """Whether ``"widened"`` keeps this 2-d conv off XLA's YNNPACK path (see its module)."""
    from jconv.lowering.widened import FEATURES

    wide = max(cfg.in_channels, cfg.out_channels) > FEATURES
    strided = [
        s > 1 or d * (k - 1) == 0 for k, s, d in zip(cfg.kernel_size, cfg.stride, cfg.dilation)
    ]
    return wide and not all(strided) and str(jnp.dtype(dtype)) == "float32"


@functools.partial(jax.jit, static_argnames=("name", "spec"))
def run(name: str, x, w, spec: ConvSpec):
    """Runs lowering ``name`` on batched ``x`` (N, C, *spatial) and weight ``w``.

    Jitted, so that eager calls compile one program per shape instead of one per
    operation; inside a caller's ``jit`` it is inlined.
    """
    from jconv.lowering import dense, folded, subpixel, taps, widened, xla

    if spec.transposed:
        lowerings = {
            "xla": xla.conv_transpose,
            "subpixel": subpixel.lowering,
            "pergroup": dense.pergroup,
        }
    else:
        lowerings = {
            "xla": xla.conv,
            "shift": taps.shift,
            "tapgrad": taps.tapgrad,
            "matmul": dense.matmul,
            "fft": dense.fft,
            "pergroup": dense.pergroup,
            "s2d": folded.s2d,
            "fold": folded.fold,
            "widened": widened.lowering,
        }
    return lowerings[name](x, w, spec)
