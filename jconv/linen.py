"""Flax Linen modules: ``jconv.linen.Conv2d(3, 64, 3, padding=1)``.

``Conv1d/2d/3d`` and ``ConvTranspose1d/2d/3d`` are Linen dataclasses whose
fields are torch's arguments in torch's order, then jconv's keyword extras
(``dtype``, ``algorithm``, ...). The ``params`` collection holds ``weight`` and
``bias`` in torch's layout (no ``bias`` with ``bias=False``), initialized as
torch does. ``m.apply(variables, x)`` is ``jconv.apply``: x (N, C_in, *sp) or
(C_in, *sp) -> (N, C_out, *sp_out); transposed layers take ``output_size=``.

``jconv.state_dict(variables)`` and ``jconv.load_state_dict(variables, sd)`` (and
``save``/``load``) name the layers as torch does: Linen's submodule names with
``name_3`` written ``name.3`` (a list of layers, as a torch ``ModuleList``) and an
``nn.Sequential``'s ``layers_3`` written ``3``. ``load_state_dict`` returns new
variables; jconv layers must be the only ones holding ``weight``.

Needs ``pip install "jconv[flax]"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jconv import config as _config
from jconv import io
from jconv.layer import Params, apply, init

# jconv's keyword extras and their defaults, the fields after torch's
_EXTRAS = dict(dtype=np.float32, compute_dtype=None, precision=None,
               preferred_element_type=None, weight_init=None, bias_init=None,
               algorithm="auto")  # fmt: skip
_DEFAULTS = dict(stride=1, padding=0, output_padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros")  # fmt: skip


class _Conv(nn.Module):
    """Shared by the Linen layers: builds the config from the fields and applies it."""

    def config(self):
        """The validated jconv config of these fields."""
        return self.config_type(**{f: getattr(self, f) for f in self.config_fields})

    @nn.compact
    def __call__(self, x: jax.Array, output_size=None) -> jax.Array:
        cfg = self.config()
        weight = self.param("weight", lambda key: init(key, cfg).weight)
        bias = self.param("bias", lambda key: init(key, cfg).bias) if cfg.bias else None
        return apply(Params(weight, bias, cfg), x, output_size)


def _module(config_type: type) -> type:
    """A Linen dataclass whose fields are ``config_type``'s arguments, in torch's order."""
    name = config_type.__name__
    torch_fields = ["in_channels", "out_channels", "kernel_size", "stride", "padding"]
    if config_type.transposed:
        torch_fields += ["output_padding", "groups", "bias", "dilation", "padding_mode"]
    else:
        torch_fields += ["dilation", "groups", "bias", "padding_mode"]
    fields = torch_fields + list(_EXTRAS)
    namespace = {
        "__annotations__": {f: Any for f in fields},
        **{f: _DEFAULTS[f] for f in torch_fields if f in _DEFAULTS},
        **_EXTRAS,
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": f"Flax Linen ``{name}``: torch's arguments as fields. "
        + (config_type.__doc__ or "").split("\n")[0],
        "config_type": config_type,
        "config_fields": tuple(fields),
    }
    return type(name, (_Conv,), namespace)


Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d = map(
    _module, _config.LAYER_TYPES
)

_INDEXED = re.compile(r"^(.*)_(\d+)$")


def _part(key: str) -> str:
    """Linen's submodule name as torch's: ``layers_3`` -> ``3``, ``convs_3`` -> ``convs.3``."""
    m = _INDEXED.match(key)
    if not m:
        return key
    return m.group(2) if m.group(1) == "layers" else f"{m.group(1)}.{m.group(2)}"


def _params(tree: Mapping) -> Mapping:
    return tree["params"] if "params" in tree else tree


def _layer_dicts(tree: Mapping, parts=()) -> list[tuple[tuple[str, ...], Mapping]]:
    """(path, dict) of every dict holding a ``weight`` array, depth first."""
    if "weight" in tree and not isinstance(tree["weight"], Mapping):
        return [(parts, tree)]
    out = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out += _layer_dicts(value, parts + (key,))
    return out


def _as_params(layer: Mapping) -> Params:
    """A layer's arrays, with a stand-in config of the same weight and bias shapes and
    dtype: what loading needs (the config itself is not in the variables)."""
    w, b = layer["weight"], layer.get("bias")
    shape, n = np.shape(w), np.ndim(w) - 2
    bias = np.shape(b)[0] if b is not None else shape[0]
    if bias == shape[0]:  # (O, I/groups, *k), or a transposed layer that reads the same
        cfg = getattr(_config, f"Conv{n}d")(shape[1], shape[0], shape[2:], bias=b is not None,
                                            dtype=w.dtype)  # fmt: skip
    else:  # transposed: (I, O/groups, *k), bias (O,)
        cfg = getattr(_config, f"ConvTranspose{n}d")(
            shape[0], bias, shape[2:], groups=bias // shape[1], dtype=w.dtype
        )
    return Params(w, b, cfg)


def _name(parts) -> str:
    return io.torch_name(_part(p) for p in parts)


class _Adapter(io.Adapter):
    """Linen variables: ``{"params": {...}}`` or the params dict itself. The configs
    are not stored there, so each layer's is rebuilt from its arrays (weights load
    into arrays of the same shapes, transposed or not)."""

    def owns(self, tree: Any) -> bool:
        return isinstance(tree, Mapping) and bool(_layer_dicts(_params(tree)))

    def layers(self, tree):
        return [(_name(parts), _as_params(layer)) for parts, layer in _layer_dicts(_params(tree))]

    def rebuild(self, tree, params):
        def walk(node, parts):
            if "weight" in node and not isinstance(node["weight"], Mapping):
                p = params[_name(parts)]
                new = dict(node, weight=p.weight)
                if p.bias is not None:
                    new["bias"] = p.bias
                return type(node)(new) if not isinstance(node, dict) else new
            return {k: walk(v, parts + (k,)) if isinstance(v, Mapping) else v
                    for k, v in node.items()}  # fmt: skip

        if "params" in tree:
            return {**tree, "params": walk(tree["params"], ())}
        return walk(tree, ())


io.ADAPTERS.append(_Adapter())

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]
