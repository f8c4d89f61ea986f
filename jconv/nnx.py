"""Flax NNX modules: ``jconv.nnx.Conv2d(3, 64, 3, padding=1, rngs=nnx.Rngs(0))``.

``Conv1d/2d/3d`` and ``ConvTranspose1d/2d/3d`` take torch's arguments in torch's
order (and jconv's keyword extras such as ``dtype`` or ``algorithm``), plus
``rngs=``. ``weight`` and ``bias`` are ``nnx.Param``s in torch's layout (``bias``
is None with ``bias=False``), initialized as torch does. ``m(x)`` is
``jconv.apply``: x (N, C_in, *sp) or (C_in, *sp) -> (N, C_out, *sp_out).

``jconv.state_dict(model)`` and ``jconv.load_state_dict(model, sd)`` (and
``save``/``load``) name the layers of a model as torch does, an
``nnx.Sequential``'s layers by their index: ``"0.weight"``, ``"features.3.bias"``.
``load_state_dict`` loads into the model in place, as ``torch.nn.Module.load_state_dict``
and ``nnx.update`` do, and returns it; nothing changes when a key is wrong.

Needs ``pip install "jconv[flax]"``.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from jconv import config as _config
from jconv import io
from jconv.layer import Params, apply, init


class _Conv(nnx.Module):
    """A jconv layer as an NNX module; ``cfg`` holds the validated config."""

    config_type: type

    def __init__(self, *args: Any, rngs: nnx.Rngs, **kwargs: Any) -> None:
        self.cfg = nnx.static(self.config_type(*args, **kwargs))
        params = init(rngs.params(), self.cfg)
        self.weight = nnx.Param(params.weight)
        self.bias = None if params.bias is None else nnx.Param(params.bias)

    @property
    def params(self) -> Params:
        """The layer's :class:`jconv.Params` (current values)."""
        bias = None if self.bias is None else self.bias[...]
        return Params(self.weight[...], bias, self.cfg)

    def __call__(self, x: jax.Array, output_size=None) -> jax.Array:
        return apply(self.params, x, output_size)


def _module(config_type: type) -> type:
    name = config_type.__name__
    return type(
        name,
        (_Conv,),
        {
            "config_type": config_type,
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"Flax NNX ``{name}``: torch's arguments, plus ``rngs=``. "
            + (config_type.__doc__ or "").split("\n")[0],
        },
    )


Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d = map(
    _module, _config.LAYER_TYPES
)


def _as_module(tree: Any) -> nnx.Module:
    """``tree`` itself, or a plain list, tuple or dict of modules held in an nnx container
    (which keeps the same module objects, so loading in place reaches them)."""
    if isinstance(tree, (list, tuple)):
        return nnx.List(list(tree))
    if isinstance(tree, dict):
        return nnx.Dict(tree)
    return tree


def _names(model: Any) -> list[tuple[str, _Conv]]:
    """(torch name, layer) for every jconv layer in ``model``."""
    nodes = dict(nnx.iter_modules(_as_module(model)))
    out = []
    for path, node in nodes.items():
        if not isinstance(node, _Conv):
            continue
        parts = [
            p
            for i, p in enumerate(path)
            if not (p == "layers" and isinstance(nodes.get(path[:i]), nnx.Sequential))
        ]
        out.append((io.torch_name(parts), node))
    return out


class _Adapter(io.Adapter):
    def owns(self, tree: Any) -> bool:
        if isinstance(tree, nnx.Module):
            return True
        items = tree.values() if isinstance(tree, dict) else tree
        return isinstance(tree, (list, tuple, dict)) and any(isinstance(m, nnx.Module)
                                                             for m in items)  # fmt: skip

    def layers(self, tree):
        return [(name, m.params) for name, m in _names(tree)]

    def rebuild(self, tree, params):
        for name, m in _names(tree):  # in place: every key was checked before this runs
            m.weight[...] = params[name].weight
            if m.bias is not None:
                m.bias[...] = params[name].bias
        return tree


io.ADAPTERS.append(_Adapter())

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]
