"""Weight normalization as torch computes it: ``weight = g · v / ‖v‖``.

torch's ``nn.utils.parametrizations.weight_norm(module, dim=0)`` stores ``g``
and ``v`` as ``parametrizations.weight.original0`` / ``original1``, the legacy
``nn.utils.weight_norm`` as ``weight_g`` / ``weight_v``. The norm runs over every
axis but ``dim``; ``g`` keeps the size of ``dim`` and 1 elsewhere. ``dim=None``
(and torch's ``-1``, which means the same there) takes one norm of the whole of
``v``, with a 0-d ``g``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def norm_axes(v_ndim: int, dim: int | None) -> tuple[int, ...]:
    """The axes torch's ``norm_except_dim(v, 2, dim)`` sums over."""
    if dim is None or dim == -1:  # torch: -1 is "no dim", the whole tensor
        return tuple(range(v_ndim))
    if not -v_ndim <= dim < v_ndim:
        raise ValueError(
            f"dim must name an axis of the {v_ndim}-d weight (or be None), got dim={dim}"
        )
    dim %= v_ndim
    return tuple(a for a in range(v_ndim) if a != dim)


def infer_axes(g_shape: tuple[int, ...], v_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The norm's axes that a stored ``g`` of ``g_shape`` implies for ``v``; None if none fits."""
    if g_shape == () or (len(g_shape) == len(v_shape) and all(s == 1 for s in g_shape)):
        return tuple(range(len(v_shape)))  # one norm; a size-1 dim gives the same
    if len(g_shape) != len(v_shape):
        return None
    kept = [a for a, s in enumerate(g_shape) if s != 1]
    if len(kept) != 1 or g_shape[kept[0]] != v_shape[kept[0]]:
        return None
    return norm_axes(len(v_shape), kept[0])


def weight_norm(v, g, dim: int | None = 0):
    """``g · v / ‖v‖`` with the norm over every axis of ``v`` but ``dim``, as torch's
    ``weight_norm``: ``v`` (O, I/groups, *k) or a transposed (I, O/groups, *k)
    weight, ``g`` of size ``v.shape[dim]`` along ``dim`` and 1 elsewhere (0-d for
    ``dim=None``). Differentiable in both, for training with weight norm in JAX."""
    v, g = jnp.asarray(v), jnp.asarray(g)
    norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=norm_axes(v.ndim, dim), keepdims=True))
    return v * (g / norm)


def fold(g: np.ndarray, v: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """The weight of a stored pair, computed in float64 and returned in ``v``'s dtype."""
    v64, g64 = v.astype(np.float64), g.astype(np.float64)
    norm = np.sqrt(np.sum(np.square(v64), axis=axes, keepdims=True))
    return (v64 * (g64.reshape(norm.shape) / norm)).astype(v.dtype)
