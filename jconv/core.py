"""The one engine behind ``jconv.apply`` and ``jconv.functional``.

``forward(cfg, weight, bias, x)`` checks ``x`` against ``cfg`` (at trace time,
so under ``jit`` too), applies a non-zero padding mode, asks the planner for a
lowering, runs it and adds the bias.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from jconv import lowering, shapes
from jconv import padding as _padding
from jconv.lowering import tune
from jconv.lowering.common import add_bias
from jconv.lowering.placement import output_spec, placement


def _check_params(cfg, weight, bias) -> None:
    name = type(cfg).__name__
    wshape = tuple(np.shape(weight))
    if wshape != cfg.weight_shape:
        raise ValueError(
            f"{name}: weight has shape {wshape}, but this config expects "
            f"{cfg.weight_shape}; build parameters with jconv.init(key, cfg) or "
            "jconv.load_state_dict(cfg, state_dict)"
        )
    for what, value in (("weight", weight), ("bias", bias)):
        dtype = getattr(value, "dtype", None)
        if value is not None and not (dtype is not None and jnp.issubdtype(dtype, jnp.floating)):
            raise TypeError(
                f"{name}: {what} must be a floating-point array, got "
                f"{dtype if dtype is not None else type(value).__name__}; build parameters "
                "with jconv.init(key, cfg) or jconv.load_state_dict(cfg, state_dict)"
            )
    if cfg.bias and bias is None:
        raise ValueError(
            f"{name} was built with bias=True but no bias was given; pass a bias of "
            f"shape {(cfg.out_channels,)} or build the config with bias=False"
        )
    if not cfg.bias and bias is not None:
        raise ValueError(
            f"{name} was built with bias=False but a bias was given; drop it or build "
            "the config with bias=True"
        )
    if bias is not None and tuple(np.shape(bias)) != (cfg.out_channels,):
        raise ValueError(
            f"{name}: bias has shape {tuple(np.shape(bias))}, expected "
            f"({cfg.out_channels},), one value per output channel"
        )


def _as_array(x, name: str):
    """``x`` as a jax array; lists, None and other non-arrays are refused, as torch does."""
    if isinstance(x, jax.Array):
        return x
    refused = TypeError(
        f"{name}: the input must be an array (jax or numpy), got {type(x).__name__}"
        + ("; convert it with jnp.asarray(x)" if isinstance(x, (list, tuple)) else "")
    )
    if x is None or isinstance(x, (str, bytes, list, tuple, dict)):
        raise refused
    try:
        return jnp.asarray(x)
    except (TypeError, ValueError):
        raise refused from None


def forward(cfg, weight, bias, x, output_size=None):
    """``cfg`` applied to ``x`` (N, C_in, *sp) or (C_in, *sp) -> (N, C_out, *sp_out)."""
    x = _as_array(x, type(cfg).__name__)
    batched, out_pad, out_shape = shapes.resolve(cfg, x.shape, output_size, x.dtype)
    _check_params(cfg, weight, bias)
    if not batched:
        x = x[None]
    dtype = cfg.compute_dtype or jnp.result_type(x.dtype, weight.dtype)
    given = (x.shape, x.dtype, jnp.result_type(weight))
    x, w = x.astype(dtype), jnp.asarray(weight).astype(dtype)
    wide_sums = bias is not None and cfg.preferred_element_type is None and _narrow(dtype)
    place = placement(x)
    spec = lowering.ConvSpec(
        transposed=cfg.transposed,
        stride=cfg.stride,
        pads=cfg.pads if cfg.padding_mode == "zeros" else ((0, 0),) * cfg.ndim,
        dilation=cfg.dilation,
        groups=cfg.groups,
        output_padding=out_pad,
        precision=cfg.precision,
        preferred_element_type=cfg.preferred_element_type,
    )

    # the bias joins the lowering (``"shift"`` adds it inside its materialized output),
    # except where bfloat16/float16 sums widen (``_widened``: float32 sums, then the bias)
    inner = () if bias is None or wide_sums else (jnp.asarray(bias),)

    def lowered(name, spec):
        def conv(x, w, *b):
            if cfg.padding_mode != "zeros":
                x = _padding.apply_mode(x, cfg.pads, cfg.padding_mode)
            return lowering.run(name, x, w, spec, *b)

        if not place.explicit:
            return conv
        # explicit-mode sharding: let GSPMD partition the lowering
        out = output_spec(place.sharding, (x.shape[0], *out_shape[-cfg.ndim - 1 :]))
        return jax.sharding.auto_axes(conv, axes=place.explicit, out_sharding=out)

    def branch(name, widen):
        narrow = lowered(name, spec._replace(widen=widen))
        if not wide_sums:
            return narrow
        wide = spec._replace(widen=widen, preferred_element_type=jnp.dtype(jnp.float32))
        return _widened(narrow, lowered(name, wide))

    plans = platform_plans(cfg, given, dtype, place)
    branches = {key: branch(*key) for key in dict.fromkeys(plans.values())}
    if len(branches) == 1:
        (y_of,) = branches.values()
        y = y_of(x, w, *inner)
    else:  # chosen when the program is lowered, for the platform it is lowered for
        default = plans.pop("default")
        per_platform = {p: branches[key] for p, key in plans.items() if key != default}
        y = jax.lax.platform_dependent(x, w, *inner, default=branches[default], **per_platform)
    if bias is not None and not inner:
        y = add_bias(y, jnp.asarray(bias))
    if wide_sums:
        y = y.astype(dtype)
    return y if batched else y[0]


# platforms that ``jax.lax.platform_dependent`` names, and how the planner calls them
PLATFORMS = {"cpu": "cpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu", "default": "other"}


def platform_plans(cfg, given, dtype, place) -> dict[str, tuple[str, bool]]:
    """(lowering, widen) per platform, for the batched input ``given`` = (shape, dtype, wdtype).

    Every platform gets its own plan, and the program picks its own when it is
    lowered (``jax.lax.platform_dependent``): a ``jit`` on another backend's
    device, or ``jax.export`` for several platforms, runs each platform's plan.
    The autotuner, when on, times the default backend's platform only.
    """
    shape, local = given[0], jax.default_backend()
    unsplit = not any(lowering.splits(place.devices, place.sharded))
    tuned = None
    if cfg.algorithm == "auto" and place.devices == 1:  # opt-in: lowering/tune.py
        tuned = tune.choose(cfg, *given, forward)
    out = {}
    for platform, backend in PLATFORMS.items():
        name = lowering.plan(cfg, shape, dtype, backend, place.devices, place.sharded)
        if tuned and backend == local:
            name = tuned
        out[platform] = (name, backend == "cpu" and unsplit)
    return out


def _widened(narrow, wide):
    """``wide(x, w)`` (float32 sums, not rounded) with ``narrow``'s derivatives.

    bfloat16/float16 with a bias: as torch does, the bias joins the float32 sums
    and the result is rounded once, and the bias gradient sums in float32. The
    convolution's own derivatives stay those of ``narrow`` (its tangent is rounded
    to the input dtype), so reverse mode runs the same forms and dtypes as
    without a bias, and forward mode keeps working.
    """

    @jax.custom_jvp
    def conv(x, w):
        return wide(x, w)

    def jvp(primals, tangents):
        x, w = primals
        dx, dw = tangents
        # through jax.jvp, so that a lowering's branches (fft's finiteness check) follow
        # the primal; the unused primal it also computes is dropped under jit
        if type(dx) is SymbolicZero:
            tangent = jax.jvp(lambda w: narrow(x, w), (w,), (dw,))[1]
        elif type(dw) is SymbolicZero:
            tangent = jax.jvp(lambda x: narrow(x, w), (x,), (dx,))[1]
        else:
            tangent = jax.jvp(narrow, (x, w), (dx, dw))[1]
        return conv(x, w), tangent.astype(jnp.float32)

    conv.defjvp(jvp, symbolic_zeros=True)
    return conv


def _narrow(dtype) -> bool:
    """Whether ``dtype`` is a float narrower than 32 bits (bfloat16, float16, ...)."""
    return jnp.finfo(dtype).bits < 32
