"""The planner: which lowering runs a call, from the config, shape, dtype and placement."""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp

from jconv.lowering.widened import FEATURES


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

    * transposed, strided, ungrouped: ``"subpixel"`` (grouped: xla, 0.78x);
    * 1×1 kernels: ``"matmul"``, unless its weight broadcast over the batch
      outweighs four inputs;
    * depthwise (one input channel per group): ``"shift"`` below 25 taps;
      2-d from 5×5 on, ``"fft"`` (measured on 8×96×32² 7×7: forward+backward
      38 ms against shift's 225 ms and xla's 437 ms, temporary memory 1.7× xla's
      against shift's 13×); split inputs and other ranks keep ``"shift"`` up to
      49 taps, then ``"fft"`` (``"xla"`` when split);
    * other grouped: ``"shift"`` while each output sums at most 64 terms,
      ``"pergroup"`` beyond in 1-d and 2-d (3-d: xla; pergroup 0.70x, 4.9x memory);
    * dense 3-d: ``"fold"`` (``"xla"`` when split in space);
    * dense 2-d float32 or bfloat16 with more than 16 channels in or out, 8 to 64 in the
      narrower, no dilation, a stride-1 dimension of 16 or more to widen, on
      one device: ``"widened"`` (at any batch, since its weight gradient is
      XLA's own over blocks of 8 images; over 16-feature blocks it had lost up to
      7.6x at batch 1 to 8);
    * dense 2-d float32 stems, strided in every dimension, with at most 4 input
      channels and a kernel of at least 3 stride blocks per dimension, batch of
      8 or more, on one device: ``"s2d"`` (whose stride-1 conv is widened; at
      batch 1 its weight gradient was 10x slower than xla's);
    * everything else: ``"xla"`` (``"tapgrad"`` left the default rules: on the
      grid's strided 3x3 layers it won on two, lost on two, with 2.1x memory).
    """
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
        if strided and (space_split or (backend == "cpu" and cfg.groups == 1)):
            return "subpixel"
        return "xla"
    if backend != "cpu":
        return "pergroup" if grouped and split else "xla"
    if taps == 1:
        return "xla" if _broadcast_weight_dominates(cfg, x_shape) else "matmul"
    if cfg.groups > 1:
        if per_group == 1:
            if taps < 25 or (split and taps <= 49) or (cfg.ndim != 2 and taps <= 49):
                return "shift"
            return "xla" if split else "fft"
        if per_group * taps <= 64:
            return "shift"
        return "pergroup" if cfg.ndim <= 2 or split else "xla"
    if cfg.ndim == 3:
        return "xla" if space_split else "fold"
    if cfg.ndim == 2 and not split and _widens(cfg, dtype, x_shape):
        return "widened"
    if cfg.ndim == 2 and not split and _stem(cfg, dtype) and x_shape[0] >= 8:
        return "s2d"
    return "xla"


def _broadcast_weight_dominates(cfg: Any, x_shape: tuple[int, ...]) -> bool:
    """Whether ``"matmul"``'s weight, broadcast over the batch, outweighs 4 inputs: then
    it costs more memory and time than XLA's own 1x1 conv (64x2048x7² -> 512: 3x slower,
    8.6x the temporary memory)."""
    weight = cfg.in_channels * cfg.out_channels // cfg.groups
    return x_shape[0] * weight > 4 * math.prod(x_shape)


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


def _widens(cfg: Any, dtype: Any, x_shape: tuple[int, ...]) -> bool:
    """Whether ``"widened"`` keeps this 2-d conv off XLA's YNNPACK path (see its module)
    where that was measured to pay: more than 16 channels in or out, 8 to 64 in the
    narrower of the two (128 -> 128 at 28² and below: 0.8-1.0x xla's), and at least
    16 outputs along the widened dimension (the extra row costs 1/16 or less)."""
    wide = (
        max(cfg.in_channels, cfg.out_channels) > FEATURES
        and 8 <= min(cfg.in_channels, cfg.out_channels) <= 64
    )  # 1 -> 32 on 8x128²: forward+backward 0.35x xla's
    if max(cfg.dilation) > 1:  # 3x3 dilation 2 on 16x64x32²: forward 1.65x xla's but
        return False  # forward+backward 0.87x and 0.91x (two grid runs); dilation 4: 0.59x
    strided = [
        s > 1 or d * (k - 1) == 0 for k, s, d in zip(cfg.kernel_size, cfg.stride, cfg.dilation)
    ]
    # bfloat16 too: XLA's YNNPACK path runs it no faster than float32, and widened
    # measured 1.4-1.6x its forward on 8x64x56² and four model layers
    if not wide or all(strided) or str(jnp.dtype(dtype)) not in ("float32", "bfloat16"):
        return False
    size = [n // s for n, s in zip(x_shape[2:], cfg.stride)]  # about the output's size
    return min(n for n, flat in zip(size, strided) if not flat) >= 16
