"""How an input is spread over devices, as far as the trace can tell.

* A concrete ``jax.Array`` (an eager call) carries its sharding: known exactly.
* Under ``jit`` in explicit-sharding mode (``jax.make_mesh`` + ``jax.set_mesh``)
  the sharding is part of the type (``jax.typeof(x)``): known exactly.
* Under ``jit`` in GSPMD's auto mode the partitioner decides later: unknown, so
  the planner must assume that any axis may be split.
* Inside ``shard_map`` (manual axes) the function sees one device's block.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec


class Placement(NamedTuple):
    """``devices`` the input may span; ``sharded`` per axis, or None if unknown.

    ``explicit`` names the explicit-mode mesh axes that split the input: the
    convolution then runs inside ``jax.sharding.auto_axes`` over them, because
    the lowerings' reshapes and pads along split axes have no explicit-mode
    sharding rule.
    """

    devices: int
    sharded: tuple[bool, ...] | None
    explicit: tuple[str, ...] = ()
    sharding: NamedSharding | None = None


def _names(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _entries(spec: PartitionSpec, ndim: int) -> list:
    return list(spec) + [None] * (ndim - len(spec))


def placement(x: jax.Array) -> Placement:
    """The :class:`Placement` of ``x`` (a concrete array or a tracer)."""
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        sharding = x.sharding
        devices = len(sharding.device_set)
        if devices == 1:
            return Placement(1, (False,) * x.ndim)
        if isinstance(sharding, NamedSharding):
            entries = _entries(sharding.spec, x.ndim)
            return Placement(devices, tuple(e is not None for e in entries))
        return Placement(devices, None)
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty:
        devices = jax.device_count()
        return Placement(devices, None if devices > 1 else (False,) * x.ndim)
    kinds = dict(zip(mesh.axis_names, mesh.axis_types))
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    entries = _entries(sharding.spec, x.ndim)
    explicit = tuple(
        name for e in entries for name in _names(e) if kinds[name] == AxisType.Explicit
    )
    devices = math.prod(sizes[a] for a in mesh.axis_names if kinds[a] != AxisType.Manual)
    if devices == 1:
        return Placement(1, (False,) * x.ndim)
    if any(kinds[a] == AxisType.Auto and sizes[a] > 1 for a in mesh.axis_names):
        return Placement(devices, None, explicit, sharding)
    flags = tuple(any(kinds[n] == AxisType.Explicit for n in _names(e)) for e in entries)
    return Placement(devices, flags, explicit, sharding)


def output_spec(sharding: NamedSharding, out_shape: tuple[int, ...]) -> PartitionSpec:
    """The input's split carried to the output: batch and space axes keep theirs
    where the output's size divides; channels are not split."""
    sizes = dict(zip(sharding.mesh.axis_names, sharding.mesh.axis_sizes))
    entries = _entries(sharding.spec, len(out_shape))
    return PartitionSpec(
        *(
            entry if axis != 1 and size % math.prod(sizes[n] for n in _names(entry)) == 0 else None
            for axis, (entry, size) in enumerate(zip(entries, out_shape))
        )
    )
