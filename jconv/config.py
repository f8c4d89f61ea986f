"""Convolution configs: frozen, hashable, normalized and validated at construction.

A config holds everything static about a layer; ``jconv.init`` turns it into
parameters and ``jconv.apply`` runs it. Arguments and their order are torch's::

    Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0,
           dilation=1, groups=1, bias=True, padding_mode="zeros", *, ...)
    ConvTranspose2d(in_channels, out_channels, kernel_size, stride=1, padding=0,
                    output_padding=0, groups=1, bias=True, dilation=1,
                    padding_mode="zeros", *, ...)

Keyword-only extras (all configs):

* ``dtype``: parameter dtype (torch's ``dtype``), default float32;
* ``compute_dtype``: dtype the convolution runs in, e.g. bfloat16 with float32
  parameters; default: the promoted dtype of input and parameters;
* ``precision``, ``preferred_element_type``: passed to ``lax.conv_general_dilated``;
* ``weight_init``, ``bias_init``: ``jax.nn.initializers``-style callables
  ``(key, shape, dtype) -> array``; default torch's U(±1/√fan_in);
* ``algorithm``: ``"auto"`` (the planner picks) or a lowering name to force.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from jax import lax

from jconv import padding as _padding
from jconv.algorithms import check_algorithm

Initializer = Callable[..., Any]


def ntuple(name: str, value: object, n: int, *, minimum: int) -> tuple[int, ...]:
    """An int or a sequence of ``n`` ints (torch also takes 1) as an ``n``-tuple."""
    if _padding._seq(value):
        items = list(value.tolist() if hasattr(value, "tolist") else value)
        if len(items) == 1 and n > 1:
            items = items * n
        if len(items) != n:
            raise ValueError(
                f"{name} must be an int or a tuple of {n} ints for a {n}-d convolution, "
                f"got {name}={value!r}"
            )
        out = tuple(_element(name, value, v, n) for v in items)
    else:
        out = (_padding.as_int(name, value),) * n
    if any(v < minimum for v in out):
        shown = out[0] if len(set(out)) == 1 and not _padding._seq(value) else out
        what = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {what} in every dimension, got {name}={shown}")
    return out


def _element(name: str, value: object, item: object, n: int) -> int:
    """One entry of a sequence ``value`` as an int; the error shows the whole value."""
    try:
        return _padding.as_int(name, item)
    except TypeError as err:
        if "traced" in str(err):
            raise
        raise TypeError(
            f"{name} must be an int or a tuple of {n} ints, got {name}={value!r}, whose "
            f"entry {item!r} is a {type(item).__name__}"
        ) from None


def _dtype(name: str, value: object, *, optional: bool) -> np.dtype | None:
    if value is None and optional:
        return None
    text = str(value)
    candidates = (value, getattr(value, "dtype", None), text.removeprefix("torch."))
    for candidate in filter(lambda c: c is not None, candidates):  # numpy/jax, str, torch
        try:
            dt = np.dtype(candidate)
            break
        except TypeError:
            continue
    else:
        raise TypeError(f"{name} must be a dtype such as jnp.float32, got {value!r}")
    if not np.issubdtype(dt, np.floating) and dt.name != "bfloat16":
        raise TypeError(
            f"{name} must be a floating-point dtype (float32, bfloat16, float16, ...), "
            f"got {name}={dt.name}"
        )
    return dt


def _precision(value: object):
    if value is None:
        return None
    if isinstance(value, tuple) and len(value) == 2:
        return tuple(_precision(v) for v in value)
    try:
        return lax.Precision(value)
    except (ValueError, TypeError, KeyError):
        raise ValueError(
            "precision must be None, 'default', 'high', 'highest', a lax.Precision, "
            f"or a pair of them, got precision={value!r}"
        ) from None


def _callable(name: str, value: object) -> Initializer | None:
    if value is not None and not callable(value):
        raise TypeError(
            f"{name} must be None (torch's default) or a callable (key, shape, dtype) -> "
            f"array such as jax.nn.initializers.he_normal(), got {value!r}"
        )
    return value


class _ConvBase:
    """What every config shares: derived shapes and the common validation."""

    ndim: ClassVar[int]
    transposed: ClassVar[bool]

    def _validate(self) -> None:
        n, name = self.ndim, type(self).__name__
        try:
            self._normalize(n)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{name}: {err}") from None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = type(self).__name__
        raise TypeError(
            f"a {name} config holds no weights and is not called; build them with "
            f"params = jconv.init(key, cfg) (or jconv.load_state_dict(cfg, state_dict)), "
            f"then run y = jconv.apply(params, x)"
        )

    def _set(self, **kw: Any) -> None:
        for key, value in kw.items():
            object.__setattr__(self, key, value)

    def _normalize_common(self, n: int) -> None:
        a = _padding.as_int
        in_ch, out_ch, groups = (
            a("in_channels", self.in_channels),
            a("out_channels", self.out_channels),
            a("groups", self.groups),
        )
        if groups <= 0:
            raise ValueError(f"groups must be a positive integer, got groups={groups}")
        if in_ch < 0:
            raise ValueError(f"in_channels must be >= 0, got in_channels={in_ch}")
        if out_ch <= 0:
            raise ValueError(f"out_channels must be positive, got out_channels={out_ch}")
        for cname, c in (("in_channels", in_ch), ("out_channels", out_ch)):
            if c % groups:
                raise ValueError(
                    f"{cname} must be divisible by groups, got {cname}={c} and "
                    f"groups={groups}; pick groups that divides both in_channels and "
                    "out_channels"
                )
        if not isinstance(self.bias, (bool, np.bool_, int)) or isinstance(self.bias, float):
            raise TypeError(f"bias must be True or False, got bias={self.bias!r}")
        kernel = ntuple("kernel_size", self.kernel_size, n, minimum=1)
        stride = ntuple("stride", self.stride, n, minimum=1)
        dilation = ntuple("dilation", self.dilation, n, minimum=1)
        check_algorithm(self.algorithm, self.transposed, kernel)
        self._set(
            in_channels=in_ch,
            out_channels=out_ch,
            groups=groups,
            bias=bool(self.bias),
            kernel_size=kernel,
            stride=stride,
            dilation=dilation,
            dtype=_dtype("dtype", self.dtype, optional=False),
            compute_dtype=_dtype("compute_dtype", self.compute_dtype, optional=True),
            preferred_element_type=_dtype(
                "preferred_element_type", self.preferred_element_type, optional=True
            ),
            precision=_precision(self.precision),
            weight_init=_callable("weight_init", self.weight_init),
            bias_init=_callable("bias_init", self.bias_init),
        )

    def __repr__(self) -> str:
        """torch's ``extra_repr`` for torch's arguments, then any non-default extra."""
        parts = [
            f"{self.in_channels}, {self.out_channels}",
            f"kernel_size={self.kernel_size}",
            f"stride={self.stride}",
        ]
        n = self.ndim
        if isinstance(self.padding, str) or self.padding != (0,) * n:
            parts.append(f"padding={self.padding!r}")
        if self.dilation != (1,) * n:
            parts.append(f"dilation={self.dilation}")
        if self.transposed and self.output_padding != (0,) * n:
            parts.append(f"output_padding={self.output_padding}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if not self.bias:
            parts.append("bias=False")
        if self.padding_mode != "zeros":
            parts.append(f"padding_mode={self.padding_mode!r}")
        for f in dataclasses.fields(self):
            if f.kw_only and f.init and getattr(self, f.name) != f.default:
                value = getattr(self, f.name)
                shown = f"jnp.{value.name}" if isinstance(value, np.dtype) else repr(value)
                parts.append(f"{f.name}={shown}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # ----------------------------------------------------------------- derived
    @property
    def weight_shape(self) -> tuple[int, ...]:
        """``(out, in/groups, *k)``; transposed: ``(in, out/groups, *k)``."""
        lead, follow = (
            (self.in_channels, self.out_channels)
            if self.transposed
            else (self.out_channels, self.in_channels)
        )
        return (lead, follow // self.groups, *self.kernel_size)

    @property
    def bias_shape(self) -> tuple[int, ...] | None:
        return (self.out_channels,) if self.bias else None

    @property
    def fan_in(self) -> int:
        """torch's fan-in: ``weight.shape[1] · ∏kernel`` (for transposed, out/groups · ∏k)."""
        return self.weight_shape[1] * math.prod(self.kernel_size)


_KW = dict(kw_only=True)


@dataclasses.dataclass(frozen=True, repr=False)
class _Extras(_ConvBase):
    """The keyword-only extras every config takes, and the derived (lo, hi) pairs."""

    dtype: Any = dataclasses.field(default=np.float32, **_KW)
    compute_dtype: Any = dataclasses.field(default=None, **_KW)
    precision: Any = dataclasses.field(default=None, **_KW)
    preferred_element_type: Any = dataclasses.field(default=None, **_KW)
    weight_init: Initializer | None = dataclasses.field(default=None, **_KW)
    bias_init: Initializer | None = dataclasses.field(default=None, **_KW)
    algorithm: str = dataclasses.field(default="auto", **_KW)
    pads: tuple[tuple[int, int], ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._validate()


@dataclasses.dataclass(frozen=True, repr=False)
class ConvNd(_Extras):
    """An N-d convolution config; use ``Conv1d``, ``Conv2d`` or ``Conv3d``."""

    in_channels: int
    out_channels: int
    kernel_size: int | tuple[int, ...]
    stride: int | tuple[int, ...] = 1
    padding: Any = 0
    dilation: int | tuple[int, ...] = 1
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"

    transposed: ClassVar[bool] = False

    def _normalize(self, n: int) -> None:
        self._normalize_common(n)
        mode = _padding.check_mode(self.padding_mode)
        stored, pairs = _padding.normalize(
            self.padding, self.kernel_size, self.stride, self.dilation
        )
        self._set(padding=stored, pads=pairs, padding_mode=mode)


@dataclasses.dataclass(frozen=True, repr=False)
class ConvTransposeNd(_Extras):
    """An N-d transposed convolution config; use ``ConvTranspose1d/2d/3d``.

    Output size per dimension:
    ``(in − 1)·stride − 2·padding + dilation·(k − 1) + output_padding + 1``.
    """

    in_channels: int
    out_channels: int
    kernel_size: int | tuple[int, ...]
    stride: int | tuple[int, ...] = 1
    padding: Any = 0
    output_padding: int | tuple[int, ...] = 0
    groups: int = 1
    bias: bool = True
    dilation: int | tuple[int, ...] = 1
    padding_mode: str = "zeros"

    transposed: ClassVar[bool] = True

    def _normalize(self, n: int) -> None:
        self._normalize_common(n)
        mode = _padding.check_mode(self.padding_mode, transposed=True, owner=type(self).__name__)
        stored, pairs = _padding.normalize(
            self.padding, self.kernel_size, self.stride, self.dilation, transposed=True
        )
        out_pad = ntuple("output_padding", self.output_padding, n, minimum=0)
        for op, s, d in zip(out_pad, self.stride, self.dilation):
            if op >= s and op >= d:
                raise ValueError(
                    f"output padding must be smaller than either stride or dilation, but "
                    f"got output_padding={out_pad} with stride={self.stride} and "
                    f"dilation={self.dilation}; use output_padding < max(stride, dilation) "
                    "in every dimension"
                )
        self._set(padding=stored, pads=pairs, padding_mode=mode, output_padding=out_pad)


def _own_init(base: type, name: str):
    """``base.__init__`` under ``name``, so that argument errors say ``Conv2d.__init__()``,
    as torch's do, and an unknown keyword gets the nearest real one as a hint."""
    inherited = base.__init__
    renamed = types.FunctionType(
        inherited.__code__,
        inherited.__globals__,
        "__init__",
        inherited.__defaults__,
        inherited.__closure__,
    )
    renamed.__kwdefaults__ = inherited.__kwdefaults__
    renamed.__qualname__ = f"{name}.__init__"
    known = [f.name for f in dataclasses.fields(base) if f.init]

    @functools.wraps(inherited)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for key in kwargs:
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                raise TypeError(
                    f"{name}.__init__() got an unexpected keyword argument {key!r}"
                    + (f"; did you mean {near[0]!r}?" if near else "")
                )
        renamed(self, *args, **kwargs)

    __init__.__qualname__ = f"{name}.__init__"
    return __init__


def _fixed(base: type, n: int, doc: str) -> type:
    name = base.__name__.replace("Nd", f"{n}d")
    cls = type(name, (base,), {"ndim": n, "__doc__": doc, "__init__": _own_init(base, name)})
    cls.__module__ = __name__
    return cls


Conv1d = _fixed(ConvNd, 1, "1-d convolution config; input (N, C, L) or (C, L).")
Conv2d = _fixed(ConvNd, 2, "2-d convolution config; input (N, C, H, W) or (C, H, W).")
Conv3d = _fixed(ConvNd, 3, "3-d convolution config; input (N, C, D, H, W) or (C, D, H, W).")
ConvTranspose1d = _fixed(
    ConvTransposeNd, 1, "1-d transposed convolution config; input (N, C, L) or (C, L)."
)
ConvTranspose2d = _fixed(
    ConvTransposeNd, 2, "2-d transposed convolution config; input (N, C, H, W) or (C, H, W)."
)
ConvTranspose3d = _fixed(
    ConvTransposeNd,
    3,
    "3-d transposed convolution config; input (N, C, D, H, W) or (C, D, H, W).",
)

CONFIG_TYPES = (ConvNd, ConvTransposeNd)
# the six torch layer kinds, in torch's order (the framework modules wrap each one)
LAYER_TYPES = (Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d)
