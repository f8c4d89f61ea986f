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
* ``"matmul"``, ``"unfold"``, ``"fft"``, ``"pergroup"`` (:mod:`jconv.lowering.dense`):
  1×1 kernels as a matrix product, any kernel as one product over channels and
  taps (im2col), large kernels through the FFT, groups as one ungrouped
  convolution per group (forward or transposed).
* ``"shift_fft"``: ``"shift"``'s multiply-adds where nothing differentiates the
  convolution (inference), ``"fft"``'s forms under differentiation (training).
* ``"s2d"``, ``"fold"`` (:mod:`jconv.lowering.folded`): a strided convolution
  as a stride-1 one over space-to-depth channels; a 3-d convolution as a 2-d one
  with the kernel's depth taps in the channels (that 2-d one widened).
* ``"widened"`` (:mod:`jconv.lowering.widened`): XLA's convolution with one
  more output row than input, cropped, which keeps XLA's CPU backend on its
  Eigen kernel instead of its slower YNNPACK path; the input gradient is widened
  the same way; the weight gradient is XLA's own over blocks of 8 images (inside
  other lowerings: convolutions of <= 16 features).

Forms whose fast gradients are not autodiff's own bind
:func:`jconv.lowering.custom.bilinear`, a primitive declared bilinear with
those gradients as its transposes, so forward mode, ``vmap`` and higher orders
still work.
"""

from __future__ import annotations

import functools

import jax

from jconv.algorithms import ALGORITHMS, check_algorithm
from jconv.lowering import custom, dense, folded, subpixel, taps, widened, xla
from jconv.lowering.common import add_bias
from jconv.lowering.planner import plan, splits
from jconv.lowering.spec import ConvSpec

__all__ = ["ALGORITHMS", "ConvSpec", "check_algorithm", "plan", "run", "splits"]

SHIFT_FFT = custom.undifferentiated(
    taps.shift, lambda x, w, spec, *b: add_bias(dense.fft(x, w, spec), *b)
)
# the lowerings that add the bias themselves (inside the output they materialize)
BIASED = frozenset({"shift", "shift_fft"})


@functools.partial(jax.jit, static_argnames=("name", "spec"))
def run(name: str, x, w, spec: ConvSpec, b=None):
    """Runs lowering ``name`` on batched ``x`` (N, C, *spatial) and weight ``w``, plus the
    bias ``b`` (C_out,) when given (``BIASED`` lowerings add it inside their own output).

    Jitted, so that eager calls compile one program per shape instead of one per
    operation; inside a caller's ``jit`` it is inlined.
    """
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
            "shift_fft": SHIFT_FFT,
            "pergroup": dense.pergroup,
            "s2d": folded.s2d,
            "fold": folded.fold,
            "widened": widened.lowering,
            "unfold": dense.unfold,
        }
    if b is not None and name in BIASED:
        return lowerings[name](x, w, spec, b)
    return add_bias(lowerings[name](x, w, spec), b)
