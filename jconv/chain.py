"""Shapes through a chain of layers, for ``python -m jconv shape``.

>>> rows = trace((1, 3, 224, 224), ["Conv2d(3, 64, 7, stride=2, padding=3)"])
>>> rows[0].output_shape, rows[0].params, rows[0].receptive_field
((1, 64, 112, 112), 9472, (7, 7))

The receptive field is the chain's: how many consecutive input positions, per
spatial dimension, one element of that layer's output depends on, padding and
image borders aside. Through a conv with stride ``s`` it grows by
``d·(k − 1)`` times the input step; a transposed conv spreads each input over
``⌈(d·(k − 1) + 1)/s⌉`` outputs' worth of inputs.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from collections.abc import Sequence

from jconv import config as _config
from jconv import shapes as _shapes

LAYERS = {
    name: getattr(_config, name)
    for name in (
        "Conv1d",
        "Conv2d",
        "Conv3d",
        "ConvTranspose1d",
        "ConvTranspose2d",
        "ConvTranspose3d",
    )
}


@dataclasses.dataclass(frozen=True)
class Row:
    """One layer of the chain and what comes out of it."""

    index: int
    layer: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    flops: int
    receptive_field: tuple[int, ...]


class ChainError(ValueError):
    """A layer that cannot be built or cannot follow the one before it."""

    def __init__(self, index: int, text: str, reason: str, rows: Sequence[Row] = ()):
        self.index, self.text, self.reason, self.rows = index, text, reason, list(rows)
        super().__init__(f"layer {index} {text}: {reason}")


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` or ``"1x3x224x224"`` -> ``(1, 3, 224, 224)``."""
    parts = text.replace("x", ",").replace("(", "").replace(")", "").split(",")
    try:
        shape = tuple(int(p) for p in parts if p.strip())
    except ValueError:
        shape = ()
    if not shape or any(s < 0 for s in shape):
        raise ValueError(
            f"input shape {text!r} is not a list of non-negative integers; "
            "write it like 1,3,224,224 (N, C, H, W) or 3,224,224 (C, H, W)"
        )
    return shape


def parse_layer(text: str):
    """``"Conv2d(3, 64, 7, stride=2)"`` -> ``jconv.Conv2d(3, 64, 7, stride=2)``.

    Only the six conv classes with literal arguments are accepted; nothing is
    evaluated. A ``nn.``, ``torch.nn.`` or ``jconv.`` prefix is allowed, so layers
    copied from torch code work.
    """
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as err:
        raise ValueError(f"cannot parse {text!r}: {err.msg}") from None
    func = node.func if isinstance(node, ast.Call) else None
    name = (
        func.id
        if isinstance(func, ast.Name)
        else func.attr
        if isinstance(func, ast.Attribute)
        else None
    )
    if name not in LAYERS:
        raise ValueError(
            f"{text!r} is not a layer; write one of {', '.join(LAYERS)} with its arguments, "
            "e.g. Conv2d(3, 64, 3, padding=1)"
        )
    try:
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except ValueError:
        raise ValueError(
            f"{text!r}: arguments must be literals (numbers, tuples, strings, True/False)"
        ) from None
    if None in kwargs:
        raise ValueError(f"{text!r}: ** arguments are not supported")
    return LAYERS[name](*args, **kwargs)


def _in_span(cfg, dim: int, lo: int, hi: int) -> tuple[int, int]:
    """Input positions that output positions ``lo..hi`` of ``cfg`` depend on (unclipped)."""
    k, s, d = cfg.kernel_size[dim], cfg.stride[dim], cfg.dilation[dim]
    pad = cfg.pads[dim][0]
    if cfg.transposed:  # input i reaches outputs i·s − pad + t·d, t < k
        return -((-(lo + pad - d * (k - 1))) // s), (hi + pad) // s
    return lo * s - pad, hi * s - pad + d * (k - 1)


def _receptive_field(cfgs: Sequence, out_spatial: Sequence[int]) -> tuple[int, ...]:
    """The widest input span of any output position of the last layer, per dimension."""
    fields = []
    for dim, size in enumerate(out_spatial):
        period = math.prod(c.stride[dim] for c in cfgs if c.transposed) or 1
        widest = 0
        for pos in range(min(size, period)):  # the span only depends on pos mod period
            lo = hi = pos
            for cfg in reversed(cfgs):
                lo, hi = _in_span(cfg, dim, lo, hi)
            widest = max(widest, hi - lo + 1)
        fields.append(widest)
    return tuple(fields)


def trace(input_shape: Sequence[int], layers: Sequence[str]) -> list[Row]:
    """One :class:`Row` per layer.

    Raises :class:`ChainError` at the first layer that fails, holding the rows before it.
    """
    shape, cfgs, rows = tuple(input_shape), [], []
    for index, text in enumerate(layers, start=1):
        try:
            cfg = parse_layer(text)
        except (TypeError, ValueError) as err:
            raise ChainError(index, text, str(err), rows) from None
        if cfgs and cfg.ndim != cfgs[-1].ndim:
            raise ChainError(
                index,
                text,
                f"a {cfg.ndim}-d layer cannot follow a {cfgs[-1].ndim}-d one "
                f"(its input would be {list(shape)})",
                rows,
            )
        try:
            out = _shapes.output_shape(cfg, shape)
            flops = _shapes.flops(cfg, shape)
        except (TypeError, ValueError) as err:
            raise ChainError(index, text, str(err), rows) from None
        cfgs.append(cfg)
        field = _receptive_field(cfgs, out[-cfg.ndim :])
        rows.append(Row(index, repr(cfg), shape, out, _shapes.num_params(cfg), flops, field))
        shape = out
    return rows


def _human(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def table(input_shape: Sequence[int], rows: Sequence[Row]) -> str:
    """The rows as an aligned text table with a total line."""
    head = ("#", "layer", "output shape", "params", "FLOPs", "receptive field")
    body = [("", "input", str(tuple(input_shape)), "", "", "")]
    body += [
        (
            str(r.index),
            r.layer,
            str(r.output_shape),
            f"{r.params:,}",
            _human(r.flops),
            "x".join(map(str, r.receptive_field)),
        )
        for r in rows
    ]
    body.append(
        (
            "",
            "total",
            "",
            f"{sum(r.params for r in rows):,}",
            _human(sum(r.flops for r in rows)),
            "",
        )
    )
    widths = [max(len(line[i]) for line in (head, *body)) for i in range(len(head))]
    right = {0, 3, 4}

    def fmt(line):
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(head), rule, *map(fmt, body[:-1]), rule, fmt(body[-1])])


def as_json(input_shape: Sequence[int], rows: Sequence[Row], error: ChainError | None = None):
    """A JSON-ready dict: the input, one entry per layer, totals, and the error if any."""
    out = {
        "input_shape": list(input_shape),
        "layers": [
            {
                **dataclasses.asdict(r),
                "input_shape": list(r.input_shape),
                "output_shape": list(r.output_shape),
                "receptive_field": list(r.receptive_field),
            }
            for r in rows
        ],
        "total_params": sum(r.params for r in rows),
        "total_flops": sum(r.flops for r in rows),
        "output_shape": list(rows[-1].output_shape) if rows else list(input_shape),
    }
    if error is not None:
        out["error"] = {"layer": error.index, "text": error.text, "reason": error.reason}
    return out
