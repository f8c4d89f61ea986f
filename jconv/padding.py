"""Padding specs to explicit (lo, hi) pairs, and the padding modes.

Every padding form ends up as one ``(lo, hi)`` pair per spatial dimension:

* int ``p``: ``(p, p)`` in every dimension;
* tuple of ints, one per dimension: ``(p_i, p_i)``;
* tuple of ``(lo, hi)`` pairs, one per dimension: used as given;
* ``"valid"``: ``(0, 0)``;
* ``"same"``: total ``d·(k−1)``, split as torch does (``lo = total // 2``, the
  extra element of an odd total on the high side); stride must be 1;
* ``"causal"`` (1-d only): ``(d·(k−1), 0)``, so output ``t`` sees inputs ``≤ t``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
PADDING_STRINGS = ("valid", "same", "causal")
_JNP_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}

Pairs = tuple[tuple[int, int], ...]


def as_int(name: str, value: object) -> int:
    """``value`` as a Python int; bools and floats are refused."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got the bool {value!r}")
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"{name} must be a concrete int, got a traced value; under jax.jit pass it "
            f"as a static argument (static_argnames=({name.split('[')[0]!r},))"
        )
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an int, got {value!r} of type {type(value).__name__}"
        ) from None


def _seq(value: object) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        or (hasattr(value, "shape") and hasattr(value, "tolist") and len(value.shape) > 0)
    )


def _pad_error(n: int, padding: object, detail: str = "") -> ValueError:
    forms = (
        f"an int, a tuple of {n} ints, a tuple of {n} (lo, hi) pairs, "
        f"or one of {', '.join(repr(s) for s in PADDING_STRINGS)}"
    )
    return ValueError(f"padding must be {forms}; got padding={padding!r}{detail}")


def normalize(
    padding: object,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    *,
    transposed: bool = False,
) -> tuple[str | tuple, Pairs]:
    """Returns ``(padding as stored on the config, (lo, hi) pairs)``."""
    n = len(kernel_size)
    if isinstance(padding, str):
        if transposed:
            raise ValueError(
                f"padding={padding!r} is not supported for transposed convolutions; "
                "give the padding as ints, as torch's ConvTranspose does"
            )
        if padding not in PADDING_STRINGS:
            raise ValueError(
                f"Invalid padding string {padding!r}, should be one of "
                f"{', '.join(repr(s) for s in PADDING_STRINGS)}"
            )
        totals = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
        if padding == "valid":
            return padding, tuple((0, 0) for _ in totals)
        if padding == "causal":
            if n != 1:
                raise ValueError(
                    f"padding='causal' is only defined for 1-d convolutions, got a "
                    f"{n}-d one; use explicit (lo, hi) pairs, e.g. padding=((2, 0), (1, 1))"
                )
            return padding, ((totals[0], 0),)
        if any(s != 1 for s in stride):
            raise ValueError(
                f"padding='same' is not supported for strided convolutions "
                f"(stride={stride}); use stride=1 or give the padding explicitly"
            )
        return padding, tuple((t // 2, t - t // 2) for t in totals)

    if not _seq(padding):
        p = as_int("padding", padding)
        if p < 0:
            raise ValueError(
                f"negative padding is not supported, got padding={p}; use padding >= 0"
            )
        return (p,) * n, ((p, p),) * n

    items = list(padding.tolist() if hasattr(padding, "tolist") else padding)
    if len(items) == 1 and n > 1 and not _seq(items[0]):
        items = items * n  # torch broadcasts a one-element tuple
    if len(items) != n:
        raise _pad_error(n, padding, f" with {len(items)} entries")
    if all(_seq(it) for it in items):
        pairs = []
        for it in items:
            it = list(it)
            if len(it) != 2:
                raise _pad_error(n, padding, f"; the entry {tuple(it)!r} is not a (lo, hi) pair")
            pairs.append((as_int("padding", it[0]), as_int("padding", it[1])))
        symmetric = all(lo == hi for lo, hi in pairs)  # store like an int tuple: equal configs
        stored = tuple(lo for lo, _ in pairs) if symmetric else tuple(pairs)
    elif not any(_seq(it) for it in items):
        ints = tuple(as_int("padding", it) for it in items)
        pairs, stored = [(p, p) for p in ints], ints
    else:
        raise _pad_error(n, padding, "; do not mix ints and (lo, hi) pairs")
    if any(v < 0 for pair in pairs for v in pair):
        raise ValueError(
            f"negative padding is not supported, got padding={stored}; use values >= 0"
        )
    return stored, tuple(pairs)


def check_mode(padding_mode: object, *, transposed: bool = False, owner: str = "") -> str:
    """Validates ``padding_mode`` against torch's four modes."""
    if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
        raise ValueError(
            f"padding_mode must be one of {list(PADDING_MODES)}, but got "
            f"padding_mode={padding_mode!r}"
        )
    if transposed and padding_mode != "zeros":
        raise ValueError(
            f'Only "zeros" padding mode is supported for {owner or "transposed convolutions"}, '
            f"got padding_mode={padding_mode!r}; pad the input yourself with "
            "jnp.pad before the layer if you need another mode"
        )
    return padding_mode


def check_mode_fits(mode: str, pairs: Pairs, spatial: tuple[int, ...], shape: tuple) -> None:
    """Torch's limits on non-zero modes, checked against the input's spatial sizes."""
    offset = len(shape) - len(spatial)
    for i, ((lo, hi), size) in enumerate(zip(pairs, spatial)):
        if mode == "reflect" and max(lo, hi) >= size:
            raise ValueError(
                f"padding_mode='reflect' needs each pad to be smaller than the input "
                f"size, but got padding ({lo}, {hi}) at dimension {i + offset} of input "
                f"{list(shape)} (size {size}); use padding < {size}, a larger input, "
                "or padding_mode='replicate'"
            )
        if mode == "circular" and max(lo, hi) > size:
            raise ValueError(
                f"padding_mode='circular' needs each pad to be at most the input size "
                f"(it would wrap around more than once), but got padding ({lo}, {hi}) "
                f"at dimension {i + offset} of input {list(shape)} (size {size}); use "
                f"padding <= {size} or a larger input"
            )
        if mode == "replicate" and size == 0 and (lo or hi):
            raise ValueError(
                f"padding_mode='replicate' cannot pad the empty dimension {i + offset} "
                f"of input {list(shape)}"
            )


def apply_mode(x: jnp.ndarray, pairs: Pairs, mode: str) -> jnp.ndarray:
    """Pads the trailing spatial dimensions of ``x`` (N, C, *spatial) with ``mode``."""
    width = [(0, 0)] * (x.ndim - len(pairs)) + [tuple(p) for p in pairs]
    return jnp.pad(x, width, mode=_JNP_MODE[mode])
