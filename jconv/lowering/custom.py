"""Bilinear convolutions whose derivatives run through chosen fast forms.

A convolution ``y = f(x, w)`` is bilinear: its tangent is ``f(ẋ, w) + f(x, ẇ)``,
and reverse mode only needs the transposes of those two linear maps, a
``dy -> dx`` and a ``dy -> dw`` form. :func:`bilinear` binds one primitive,
``jconv_bilinear``, declared bilinear with exactly those transposes
(``jax.interpreters.ad.defbilinear``, as ``lax.dot_general`` is). So reverse
mode runs the fast forms directly, while forward mode, ``vmap`` (through the
primal form), higher orders and sharding (the lowering inlines plain JAX ops)
keep working.

A lowering registers its three forms once with :func:`register`:

* ``primal(x, w, spec) -> y``;
* ``dx(w, dy, spec) -> dx`` or None (autodiff of ``primal``);
* ``dw(x, dy, spec, kernel) -> dw`` or None (autodiff of ``primal``);
* ``linear(x, w, spec) -> y`` or None: the same map in another form, whose
  autodiff replaces ``primal``'s for a missing ``dx`` or ``dw`` (a primal that
  loops over blocks to save memory can keep the unblocked form's gradients).

Each form must be exactly the transpose of ``primal`` in that argument; the
lowering tests check every one against ``"xla"``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

Fn = Callable[..., jax.Array]

_FORMS: dict[str, tuple[Fn, Fn | None, Fn | None, Fn]] = {}

bilinear_p = Primitive("jconv_bilinear")


def register(
    name: str, primal: Fn, dx: Fn | None = None, dw: Fn | None = None, linear: Fn | None = None
) -> None:
    """Declares lowering ``name``'s primal form and its fast transposes."""
    _FORMS[name] = (primal, dx, dw, linear or primal)


def bilinear(name: str, x: jax.Array, w: jax.Array, spec: Any) -> jax.Array:
    """``primal(x, w, spec)`` of form ``name``, with its registered gradients.

    Inside ``shard_map`` both operands are first made to vary over the same
    manual axes (as ``lax`` does for its own primitives), so that a replicated
    weight's gradient is summed over the devices.
    """
    vx, vw = _varying(jax.typeof(x)), _varying(jax.typeof(w))
    x, w = _vary(x, vw - vx), _vary(w, vx - vw)
    return bilinear_p.bind(x, w, form=name, spec=spec)


def _varying(aval) -> frozenset:
    """The manual (``shard_map``) mesh axes a value varies over."""
    mat = getattr(aval, "manual_axis_type", None)  # jax >= 0.10
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", ()))  # earlier jax


def _vary(x, axes: frozenset):
    return jax.lax.pcast(x, tuple(sorted(axes, key=str)), to="varying") if axes else x


def _primal(x, w, *, form: str, spec):
    return _FORMS[form][0](x, w, spec)


def _abstract(x, w, *, form: str, spec):
    shape, dtype = _out_type(form, spec, x.shape, x.dtype, w.shape, w.dtype)
    # x's type with the output's shape: the same (manual) axes vary as for x and w
    return x.update(shape=shape, dtype=dtype, weak_type=False)


@functools.lru_cache(maxsize=4096)
def _out_type(form: str, spec, x_shape, x_dtype, w_shape, w_dtype):
    """The primal form's output shape and dtype, traced once per signature: a training
    step binds each primitive at least three times (the call and both tangents), and
    tracing a looped primal each time had cost a 3-d UNet step a third of its trace."""
    x, w = jax.ShapeDtypeStruct(x_shape, x_dtype), jax.ShapeDtypeStruct(w_shape, w_dtype)
    out = jax.eval_shape(lambda a, b: _primal(a, b, form=form, spec=spec), x, w)
    return out.shape, out.dtype


def clear_cache() -> None:
    """Forgets the cached output types (a benchmark compiling from a cold start)."""
    _out_type.cache_clear()


def zeros(shape, dtype, *like: jax.Array) -> jax.Array:
    """Zeros that vary over the ``shard_map`` axes any of ``like`` varies over (a loop
    carry that the loop's body fills from those operands)."""
    return _vary(
        jnp.zeros(shape, dtype), frozenset().union(*(_varying(jax.typeof(a)) for a in like))
    )


def undifferentiated(plain: Fn, trained: Fn) -> Fn:
    """A lowering that runs ``plain(x, w, spec, *b)`` where nothing differentiates it,
    and ``trained(x, w, spec, *b)`` (its forward and gradients) under ``jvp``, ``grad``
    and their kin; ``b``: the bias, when the lowering adds it."""

    def lowering(x, w, spec, *b):
        @jax.custom_jvp
        def conv(*operands):
            return plain(*operands[:2], spec, *operands[2:])

        conv.defjvp(
            lambda primals, tangents: jax.jvp(
                lambda a, c, *d: trained(a, c, spec, *d), primals, tangents
            )
        )
        return conv(x, w, *b)

    return lowering


def materialized(form: Fn, x: jax.Array, w: jax.Array, *rest: jax.Array) -> jax.Array:
    """``form(x, w, *rest)``, computed as one array inside a ``lax.cond`` on a
    predicate true of every float (``w``'s first element is finite, infinite or NaN)
    that XLA cannot fold. Then consumers read that array: where a depthwise output
    fed a batch norm's mean, variance and scaling, XLA had run the multiply-adds
    again inside each, from copies of every tap window (MobileNetV2-style inference,
    batch norm: 65.5 -> 19.1 ms). What ``form`` should add (a bias) belongs inside it:
    added after the cond, a bias was a pass of its own over the output (a lone
    depthwise layer's forward 1.15-1.4x slower). Under ``jvp`` the primal is that array
    too, the tangent ``form``'s (MobileNetV2-style step 1.12x). The never-taken branch's
    zeros vary over the same ``shard_map`` axes as ``form``'s output."""

    @jax.custom_jvp
    def conv(*operands):
        first = operands[1].reshape(-1)[0]
        always = jnp.isfinite(first) | jnp.isinf(first) | jnp.isnan(first)
        out = jax.eval_shape(form, *operands)
        return jax.lax.cond(always, form, lambda *a: zeros(out.shape, out.dtype, *a), *operands)

    def jvp(primals, tangents):  # the primal materialized too; the tangent as ``form``'s
        return conv(*primals), jax.jvp(form, primals, tangents)[1]

    conv.defjvp(jvp)
    return conv(x, w, *rest)


def transpose(linear: Fn, shape, dtype, ct: jax.Array) -> jax.Array:
    """The transpose of the linear map ``linear`` (from arrays of ``shape``) at ``ct``.

    The vjp is taken at zeros that vary over the same ``shard_map`` axes as
    ``ct``, so the result is one device's, not summed over devices.
    """
    return jax.vjp(linear, zeros(shape, dtype, ct))[1](ct)[0]


def _in(ct, other, dtype, form: Fn) -> jax.Array:
    """``form(other, ct)`` in ``ct``'s dtype, cast to the operand's ``dtype``.

    With ``preferred_element_type`` wider than the inputs (bfloat16 in, float32
    out), the cotangent is wider than the other operand; as ``lax`` does, that
    operand is widened for the transpose and the result rounded back, so a
    gradient always has its primal's dtype.
    """
    if other.dtype != ct.dtype:
        other = other.astype(ct.dtype)
    out = form(other, ct)
    return out if out.dtype == dtype else out.astype(dtype)


def _dx(ct, x, w, *, form: str, spec):
    _, dx, _, linear = _FORMS[form]
    if dx is not None:
        return _in(ct, w, x.aval.dtype, lambda w, ct: dx(w, ct, spec))
    return transpose(lambda v: linear(v, w, spec), x.aval.shape, x.aval.dtype, ct)


def _dw(ct, x, w, *, form: str, spec):
    _, _, dw, linear = _FORMS[form]
    if dw is not None:
        return _in(ct, x, w.aval.dtype, lambda x, ct: dw(x, ct, spec, w.aval.shape[2:]))
    return transpose(lambda v: linear(x, v, spec), w.aval.shape, w.aval.dtype, ct)


def _batched(args, dims, *, form: str, spec):
    """vmap over inputs only folds the extra axis into the batch and binds the
    primitive again, so its gradients stay the registered forms; vmap over weights
    runs the primal form on the extra axis (its gradients are autodiff's)."""
    x, w = (a if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims))
    if dims[1] is None:
        y = bilinear_p.bind(x.reshape(-1, *x.shape[2:]), w, form=form, spec=spec)
        return y.reshape(x.shape[0], -1, *y.shape[1:]), 0
    axes = tuple(None if d is None else 0 for d in dims)
    return jax.vmap(lambda a, b: _primal(a, b, form=form, spec=spec), axes)(x, w), 0


bilinear_p.def_impl(_primal)
bilinear_p.def_abstract_eval(_abstract)
mlir.register_lowering(bilinear_p, mlir.lower_fun(_primal, multiple_results=False))
ad.defbilinear(bilinear_p, _dx, _dw)
batching.primitive_batchers[bilinear_p] = _batched
