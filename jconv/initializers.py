"""Parameter initializers, with the fan computed for torch's weight layout.

torch's default for both weight and bias is U(−b, b) with ``b = 1/√fan_in`` and
``fan_in = weight.shape[1] · ∏kernel``: ``(in/groups)·∏k`` for a convolution and,
torch's quirk for transposed weights ``(in, out/groups, *k)``, ``(out/groups)·∏k``.

A ``jax.nn.initializers`` callable assumes the kernel is HWIO (fan-in on axis −2,
fan-out on −1). We call it with the shape ``(*k, weight.shape[1], weight.shape[0])``
and move the axes into place, so its fans are the ones torch would use.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def torch_uniform(key: jax.Array, shape: tuple[int, ...], dtype, fan_in: int) -> jax.Array:
    """U(±1/√fan_in); zeros when ``fan_in`` is 0 (torch leaves that memory unset)."""
    if fan_in == 0:
        return jnp.zeros(shape, dtype)
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def weight_with(init, key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """Runs a ``jax.nn.initializers``-style ``init`` with fans for the OIHW ``shape``."""
    n = len(shape) - 2
    hwio = init(key, (*shape[2:], shape[1], shape[0]), dtype)
    return jnp.moveaxis(jnp.asarray(hwio), (n + 1, n), (0, 1))
