"""Bilinear convolutions whose derivatives run through chosen fast forms.

A convolution ``y = f(x, w)`` is bilinear, so its tangent is
``f(ẋ, w) + f(x, ẇ)`` and reverse mode only transposes those two linear maps.
:func:`bilinear` states the tangent with ``jax.custom_jvp`` and writes each
linear map as the transpose of a fast *cotangent* form (``dy -> dx`` or
``dy -> dw``). Reverse mode transposes the transpose back into that fast form;
forward mode, ``vmap`` and higher orders keep working, because nothing here is
a ``custom_vjp``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

Fn = Callable[..., jax.Array]


def transpose_of(cotangent: Fn, y_like: jax.Array) -> Callable[[jax.Array], jax.Array]:
    """The linear map whose transpose is ``cotangent`` (a linear map of ``dy``).

    The VJP of a linear map, taken at zero, is its transpose; unlike
    ``jax.linear_transpose`` it accepts closures over traced values. Under ``jit``
    the unused evaluation at zero is dead code.
    """
    zero = jax.numpy.zeros(y_like.shape, y_like.dtype)
    return lambda v: jax.vjp(cotangent, zero)[1](v)[0]


def bilinear(primal: Fn, dx: Fn | None = None, dw: Fn | None = None) -> Fn:
    """``primal(x, w)`` whose reverse mode computes ``dx(w, dy)`` and ``dw(x, dy)``.

    Either form may be None: that input's derivative is then ``primal``'s own
    autodiff. Each given form must be exactly the transpose of ``primal`` in that
    argument (the lowering tests check this against ``"xla"``).
    """
    if dx is None and dw is None:
        return primal

    @jax.custom_jvp
    def f(x, w):
        return primal(x, w)

    @f.defjvp
    def _jvp(primals, tangents):
        x, w = primals
        x_dot, w_dot = tangents
        y = primal(x, w)
        tx = primal(x_dot, w) if dx is None else transpose_of(lambda g: dx(w, g), y)(x_dot)
        tw = primal(x, w_dot) if dw is None else transpose_of(lambda g: dw(x, g), y)(w_dot)
        return y, tx + tw

    return f
