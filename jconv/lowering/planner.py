"""The planner: which lowering runs a call, from the config, shape, dtype and placement."""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp

from jconv import shapes
from jconv.lowering.common import accumulator, light_weight, pads_once
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
    * 1×1 kernels: ``"matmul"`` (a product over channels; with a heavy weight too:
      2048 -> 512 at 7², batch 8 and 64: 1.8x / 2.1-2.5x xla's forward / training),
      except in 1-d unless the weight is light (``light_weight``) and the layer
      large (``_large_1d``): ``"xla"``;
    * depthwise (one input channel per group): ``"shift"`` up to ``SHIFT_TAPS`` of
      its rank's taps per output (see there), then ``"shift_fft"`` up to
      ``SHIFT_FFT_TAPS`` where its forward may pad the input once (``pads_once``), then
      ``"fft"``; split inputs keep
      ``"shift"`` up to 49 taps, then ``"xla"`` (the FFT would gather the batch);
    * other grouped: ``"shift"`` while each output sums at most 64 terms,
      ``"pergroup"`` beyond in 1-d and 2-d (3-d: xla; pergroup 0.70x, 4.9x memory);
    * dense float32 (bfloat16 from 256 channels), 1-d to 3-d, on one device, where
      the weight outweighs the unfolded input (``_unfolds``: low resolution, wide
      channels, small batch): ``"unfold"``;
    * dense 3-d: ``"fold"`` (``"xla"`` when split in space, for a kernel of
      one tap in the plane, k×1×1, or at stride 1 from ``FOLD_CHANNELS`` input
      channels on; a weight larger than its input trains as XLA's inside it);
    * dense 1-d and 2-d at stride 1 with at most 16 output channels, and at least 8
      input channels per output one for 3x3 (``_narrow_head``), on one device:
      ``"tapgrad"``;
    * dense 2-d float32 or bfloat16 with more than 16 channels in or out, 8 to 64 in the
      narrower, no dilation, a stride-1 dimension of 16 or more to widen, on
      one device, within ``WIDENED`` (3x3 or smaller, 1e8 flops or more, channel
      pairs x output pixels at most 3e7 unless 1,536 pairs or fewer): ``"widened"``
      (at any batch, since its weight gradient is XLA's own over blocks of 8 images;
      over 16-feature blocks it had lost up to 7.6x at batch 1 to 8);
    * dense 2-d float32 stems, strided in every dimension, with at most 4 input
      channels and a kernel of at least 3 stride blocks per dimension, batch of
      8 or more, on one device: ``"s2d"`` (whose stride-1 conv is widened; at
      batch 1 its weight gradient was 10x slower than xla's);
    * everything else: ``"xla"`` (strided, ``"tapgrad"`` won on two of the grid's
      3x3 layers and lost on two, with 2.1x memory).
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
        windowed = (*x_shape[:2], *(-(-n // s) for n, s in zip(x_shape[2:], cfg.stride)))
        weight = (cfg.out_channels, per_group)
        if cfg.ndim == 1 and not (light_weight(windowed, weight) and _large_1d(windowed, weight)):
            return "xla"
        return "matmul"
    if cfg.groups > 1:
        if per_group == 1:
            if split:
                return "shift" if taps <= 49 else "xla"
            spread = _shift_taps(cfg)
            if spread <= SHIFT_TAPS[cfg.ndim]:
                return "shift"
            # shift_fft's inference pads the input once (``taps.shift_conv``)
            padded = pads_once(x_shape, cfg.pads, accumulator(dtype))
            return "shift_fft" if spread <= SHIFT_FFT_TAPS[cfg.ndim] and padded else "fft"
        if per_group * taps <= 64:
            return "shift"
        return "pergroup" if cfg.ndim <= 2 or split else "xla"
    if not split and _unfolds(cfg, x_shape, dtype):
        return "unfold"
    if cfg.ndim == 3:
        # a depth-only kernel folds into a 1x1 plane conv, which ran 0.69-0.74x xla's
        # (R(2+1)D's 3x1x1 on 2x64x8x56², 2x32x16x32² -> 64; 5x1x1 on 2x64x8x28²)
        flat = math.prod(cfg.kernel_size[1:]) == 1
        # XLA's own 3-d conv caught up with 256 input channels and more at stride 1:
        # forward / forward+backward against it, fold 0.71x / 0.64x (16x384x4³),
        # 1.01x / 0.92x (16x384x4x6²), 0.84x / 0.99x (4x384x8³), 1.09x / 0.86x
        # (16x256x4³), 1.19x / 0.68x (8x256x4³), at 1.8-2.5x its temporaries; it won
        # 1.21x / 1.35x at 4x256x8³, and 1.2-2.7x with 64 to 192 channels
        wide = cfg.in_channels >= FOLD_CHANNELS and not strided
        return "xla" if space_split or flat or wide else "fold"
    if cfg.ndim <= 2 and not split and not strided and _narrow_head(cfg):
        return "tapgrad"
    if cfg.ndim == 2 and not split and _widens(cfg, dtype, x_shape):
        return "widened"
    if cfg.ndim == 2 and not split and _stem(cfg, dtype) and x_shape[0] >= 8:
        return "s2d"
    return "xla"


def _narrow_head(cfg) -> bool:
    """Whether a layer (dense and at stride 1: the caller checks) has at most
    ``FEATURES`` output channels and its cotangent's shifted copies, one per tap (∏k·O
    channels), at most 9/8 of the input's channels (3x3: 8 input channels per output):
    an output head, a bottleneck's narrow end. There XLA's CPU weight gradient (its own kernel, which YNNPACK leaves to it)
    ran 1.2-10x slower than ``"tapgrad"``'s products of the input with those copies.
    Forward+backward against the planned lowering, one process, medians of 7, over 51
    layers: 3x3 at 28² and 96², batch 1, 4 and 16, 32 -> 1 to 256 -> 16 1.3-8.4x
    (batch 1 3.1-8.4x, 16 1.3-1.9x), at 1.1-1.8x XLA's training temporaries; 1-d (k 3
    to 7, 1,024-16,000 steps) 1.2-1.9x at 1.0-1.1x; bfloat16 2.4x and 6.7x. With 32
    outputs (256 -> 32) it lost on two of four (0.70x, 0.82x); with more copies (7x7
    64 -> 3, 5x5 96 -> 8: 2.3 and 2.1 times the input) it won 2.9-4.4x but held 3.0x
    and 2.6x XLA's temporaries."""
    copies = math.prod(cfg.kernel_size) * cfg.out_channels
    return cfg.out_channels <= FEATURES and 8 * copies <= 9 * cfg.in_channels


# Depthwise: the most kernel taps per output (``_shift_taps``) that ``"shift"`` runs
# before ``"fft"`` takes over, by rank. Measured (forward / forward+backward, x xla):
# 1-d (8x256x2000 and 4x64x16000): 17-25 taps shift 7.4-11.0x / 6.5-9.4x against fft's
# 3.6-6.3x / 5.4-11.3x (mixed at 25), 31 taps fft 8.8x / 13.9x against 8.2x / 8.9x,
# 49 fft 13.6x / 19.4x against 7.8x / 9.7x; 2-d (8x96x56²): 5x5 shift 10.3x / 6.1x
# against 5.5x / 3.1x, 7x7 even forward, fft training 7.8x against 6.3x; strided
# 7x7/2 shift 6.1x / 15.4x against 2.9x / 13.2x, 9x9/2 fft 3.6x / 17.0x against
# 2.0x / 10.5x, 13x13/4 shift 2.3x / 28x against 1.5x / 21x; 3-d (2x64x16x32²): 3³
# shift 68x / 40x against 26x / 23x, 5³/2 shift 28x / 68x against 20x / 53x, 5³ fft.
SHIFT_TAPS = {1: 25, 2: 25, 3: 49}

# Past those, and up to these, ``"shift_fft"``: inference as ``"shift"``, training as
# ``"fft"``. Once ``"shift"`` padded its input once beyond 12 taps, its forward ran
# 2.6-6.3x the FFT's on 7x7 (8x96x32², 8x384x14², 1x192x28², 8x96x56²; 32x96x56²:
# 1.6x), 9x9 (2.6x), 9x9/2 (2.6x), 1-d 31 and 49 taps (4.4x, 2.8x) and 3-d 5³ (2.0x),
# even at 13x13 (1.05x) and 0.03x at 31x31; its training mixed (0.62-1.74x).
SHIFT_FFT_TAPS = {1: 49, 2: 81, 3: 125}


def _shift_taps(cfg: Any) -> float:
    """A depthwise conv's kernel taps per output, strided ones counted twice (a strided
    window is a strided read; the FFT's cost is the input's, whatever the stride)."""
    stride = math.prod(cfg.stride)
    return math.prod(cfg.kernel_size) * (2 if stride > 1 else 1) / stride


def _unfolds(cfg: Any, x_shape: tuple[int, ...], dtype: Any) -> bool:
    """Whether a dense float32 conv's weight outweighs its unfolded input (``"unfold"``):
    at least ``UNFOLD_WEIGHT`` output channels per output pixel of one image,
    ``UNFOLD_BATCH_WEIGHT`` of a batch (see there). There XLA's
    CPU convolution, a product whose rows are those pixels, ran 1.1-33x slower than
    the product over channels and taps, forward and forward+backward, 1-d to 3-d
    (8x512x7² 3x3: 1.09x / 1.36x; batch 1, 512x7²: 2.1x / 2.5x; 8x1024x4²: 4.1x / 2.7x;
    2x2048->512 at 7²: 5.3x / 2.8x; 8x256x2²: 33x / 19x; 3-d 2x256x4³: 2.4x against XLA's,
    3.5x / 3.1x against ``"fold"``), with 0.1-1.4x XLA's temporaries. With fewer it lost:
    8x64x8² 0.55x / 0.77x forward / forward+backward at 6.5-8.5x the memory,
    64x128x4² 0.68x / 0.84x (and 2x64->128 at 16² stride 2, one channel per pixel, 0.73x
    forward before a batch's windows were stacked as its products read them: now 1.18x).
    bfloat16 takes it from ``UNFOLD_BF16_CHANNELS`` channels in and out (see there)."""
    name = str(jnp.dtype(dtype))
    if name not in ("float32", "bfloat16"):
        return False
    if name == "bfloat16" and min(cfg.in_channels, cfg.out_channels) < UNFOLD_BF16_CHANNELS:
        return False
    taps, out = math.prod(cfg.kernel_size), cfg.out_channels
    pixels = x_shape[0] * math.prod(shapes.output_spatial(cfg, x_shape[2:]))
    least = UNFOLD_WEIGHT if x_shape[0] == 1 else UNFOLD_BATCH_WEIGHT
    # temporaries against xla's: the windows and their stack against a weight copy and
    # the input's, per input channel. On 9 layers it read 1.42-2.07x where 1.21-2.18x
    # were measured: up to 1.94 at or above the measure (within 0.04x at stride 1, 0.21x
    # above on a strided layer), above 2 up to 0.14x below it
    memory = taps * (pixels + out) / (taps * out + x_shape[0] * math.prod(x_shape[2:]))
    return out >= least * pixels and memory <= UNFOLD_MEMORY


UNFOLD_WEIGHT = 1.25
# A batch's windows are stacked in the layout both products read (``dense._unfolded_batch``),
# and from 0.85 to 1.25 channels per pixel that won too: 24 layers (batch 2 to 32, 1-d to
# 3-d, 32 to 512 channels, stride 1 and 2, one process, 5-11 rounds) forward 1.00-2.51x
# xla's, forward+backward 1.07-3.42x (one 0.37 ms layer, 2x64x6², 0.88x), 8x256x6²
# 1.47-1.65x / 1.81-2.05x; 3-d ones trained 1.0-2.1x as fast as ``"fold"`` (six layers).
# Its temporaries there are about ``(1 + 1/r) / (1 + 1/(taps·r))`` xla's at ``r``
# channels per pixel, stride 1 (the windows and the stack concatenated from them, against
# a weight copy and the input's): measured 1.89x at 0.89 with 9 taps, as it reads; it
# reads 1.92x at 0.85 with 9 taps and 2.08x with 25 or 27, hence ``UNFOLD_MEMORY``. One
# image's form (the stack through ``channel_product``) lost forward there: 1x64x8²
# 0.83-0.95x, 1x96x10² 0.98-0.99x.
UNFOLD_BATCH_WEIGHT = 0.85
# bfloat16 (jaxlib 0.10.2, one process, 7 rounds, x xla's time; XLA's CPU convolution
# widens bfloat16 to float32, while unfold's product keeps it narrow): with 256 channels
# or more in and out, 13 layers on the rule's side of the line (1-d to 3-d, batch 1 to
# 32, 2x2 to 14x14) ran forward 1.85-12x, forward+backward 1.13-4.2x, and 1-d
# 4x256x64 (3 taps) forward 2.2-3.3x, forward+backward 0.95-0.98x, at 0.52-1.36x the
# temporaries; with 64 or 128 it lost on small layers (2x64x6² 0.50-0.57x, 2x128x8²
# forward+backward 0.81-0.93x, 2x64->128 at 16² stride 2 0.65x) and won on others
# (4x128x4² 1.06x, 1x128->256 at 8² 1.29x), so xla there.
UNFOLD_BF16_CHANNELS = 256
UNFOLD_MEMORY = 1.9
FOLD_CHANNELS = 256  # dense stride-1 3-d convs with this many input channels stay xla


def _large_1d(windowed: tuple[int, ...], weight: tuple[int, int]) -> bool:
    """Whether a 1-d 1x1 conv has 1e9 flops or more. XLA's 1-d 1x1 conv runs about
    twice as fast as its 2-d one; against it the broadcast product's forward+backward
    won only on large layers (8x256x2000 -> 256, 8x64x8000 -> 256: 2.1e9 flops,
    1.46-1.69x), was mixed at 5.4e8 (0.91x, 1.27x) and lost below (2.7e8: 0.87-1.17x, 1.7e7
    to 6.7e7: 0.60-0.83x, the audio decoder's 4x128x512 to 4x32x4096); in that model's
    step its 1x1 layers on xla ran 1.05x (float32) and 1.01x (bfloat16), inference
    1.15x and 1.09x."""
    batch, _, *length = windowed
    return 2 * batch * math.prod(length) * weight[0] * weight[1] >= 1e9


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
    narrower of the two (128 -> 128 at 28² and below: 0.8-1.0x xla's), at least 16
    outputs along the widened dimension (the extra row costs 1/16 or less), and inside
    the region where its wins held (``WIDENED``)."""
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
    if min(n for n, flat in zip(size, strided) if not flat) < 16:
        return False
    taps, pixels = math.prod(cfg.kernel_size), math.prod(size)
    pairs = cfg.in_channels * cfg.out_channels
    flops = 2 * x_shape[0] * pairs * taps * pixels
    return (
        taps <= WIDENED["taps"]
        and flops >= WIDENED["flops"]
        and (pairs <= WIDENED["channel_pairs"] or pairs * pixels <= WIDENED["pair_pixels"])
    )


# Where ``"widened"`` won, from sweeps of dense stride-1 2-d layers outside the grid
# (x xla, forward / forward+backward, one process, interleaved medians). Past these
# bounds its Eigen kernel ran even with or slower than XLA's YNNPACK path, so "xla":
# * taps: 5x5 kernels never clearly won training (forward+backward 0.86-1.08x over
#   seven shapes; 32 -> 32 on 8x128²: 0.69-0.86x forward);
# * flops: batch-1 layers under 1e8 flops (32 -> 32 at 56², 64 -> 64 at 28², about
#   0.4 ms) ran 0.82-1.08x forward, 0.84-1.09x forward+backward;
# * channel_pairs / pair_pixels: past 1,536 channel pairs (48 -> 48 and up), only while
#   pairs x output pixels stay within 3e7: 64 -> 64 at 112² to 256² ran 0.86-1.03x
#   forward and 0.88-0.99x forward+backward (batch 1 to 8), at 96² 1.00x / 0.98x;
#   48 -> 48 at 224² 0.88x forward; 64 -> 128 at 64² (a grid row, 3.4e7) 0.93-0.94x
#   forward+backward; within it 64 -> 64 at 28² to 80² ran 1.13-1.68x forward,
#   0.98-1.41x forward+backward (3.7x / 1.9x with reflect padding at 64²), 48 -> 48
#   at 112² 1.39-1.60x / 1.12-1.40x. Narrower pairs won at every size tried (32 ->
#   32 up to 256², 24 -> 48 at 200², 16 -> 64 at 112²: 1.15-1.72x forward,
#   1.03-1.62x forward+backward).
WIDENED = {"taps": 9, "flops": 1e8, "channel_pairs": 1536, "pair_pixels": 3e7}
