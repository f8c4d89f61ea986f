"""``jax.export`` support: :class:`jconv.Params` trees serialize with their configs.

``import jconv`` registers :class:`~jconv.layer.Params` with
``jax.export.register_pytree_node_serialization``, so
``jax.export.export(jax.jit(fn))(params, x).serialize()`` works for one layer and
for any list, tuple or dict of them. A config travels as JSON of its constructor
arguments (dtypes and precisions by name). Custom ``weight_init``/``bias_init``
callables cannot be serialized and are refused with an error: they only matter to
``jconv.init``, so export a tree whose configs have the default initializers.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
from jax import lax

from jconv.config import CONFIG_TYPES
from jconv.layer import Params

_BY_NAME = {cls.__name__: cls for base in CONFIG_TYPES for cls in base.__subclasses__()}
_DTYPES = ("dtype", "compute_dtype", "preferred_element_type")


def _precision(value):
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return [_precision(v) for v in value]
    return value.name.lower() if isinstance(value, lax.Precision) else str(value)


def config_to_json(cfg) -> str:
    """A config's constructor arguments as JSON (ValueError for custom initializers)."""
    args = {}
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        value = getattr(cfg, f.name)
        if f.name in ("weight_init", "bias_init"):
            if value is not None:
                raise ValueError(
                    f"cannot export a config with a custom {f.name}={value!r}: a function "
                    f"does not serialize; export with {f.name}=None (it only affects jconv.init)"
                )
            continue
        if f.name in _DTYPES:
            value = None if value is None else jnp.dtype(value).name
        elif f.name == "precision":
            value = _precision(value)
        args[f.name] = value
    return json.dumps({"type": type(cfg).__name__, "args": args})


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def config_from_json(text: str):
    data = json.loads(text)
    args = {k: _tuples(v) for k, v in data["args"].items()}
    for name in _DTYPES:
        if args.get(name) is not None:
            args[name] = jnp.dtype(args[name])
    return _BY_NAME[data["type"]](**args)


def _serialize(aux) -> bytes:
    (cfg,) = aux
    return config_to_json(cfg).encode()


def _deserialize(data: bytes):
    return (config_from_json(data.decode()),)


jax.export.register_pytree_node_serialization(
    Params,
    serialized_name="jconv.Params",
    serialize_auxdata=_serialize,
    deserialize_auxdata=_deserialize,
)
