"""Equinox modules: ``jconv.eqx.Conv2d(3, 64, 3, padding=1, key=jax.random.key(0))``.

``Conv1d/2d/3d`` and ``ConvTranspose1d/2d/3d`` take torch's arguments in torch's
order (and jconv's keyword extras such as ``dtype`` or ``algorithm``), plus
``key=``. Fields: ``weight`` and ``bias`` in torch's layout (``bias`` is None
with ``bias=False``), initialized as torch does, and the static config ``cfg``.
``m(x)`` is ``jconv.apply``: x (C_in, *sp) as Equinox layers take it (use
``jax.vmap`` over a batch, or pass one: (N, C_in, *sp) works too).

``jconv.state_dict(model)`` and ``jconv.load_state_dict(model, sd)`` (and
``save``/``load``) name the layers of a model as torch does, an
``eqx.nn.Sequential``'s layers by their index: ``"0.weight"``,
``"features.3.bias"``. ``load_state_dict`` returns a new model.

Needs ``pip install "jconv[equinox]"``.
"""

from __future__ import annotations

from typing import Any

import equinox
import jax

from jconv import config as _config
from jconv import io
from jconv.layer import Params, apply, init


class _Conv(equinox.Module):
    """A jconv layer as an Equinox module."""

    weight: jax.Array
    bias: jax.Array | None
    cfg: Any = equinox.field(static=True)

    def __init__(self, *args: Any, key: jax.Array, **kwargs: Any) -> None:
        self.cfg = self.config_type(*args, **kwargs)
        params = init(key, self.cfg)
        self.weight, self.bias = params.weight, params.bias

    @property
    def params(self) -> Params:
        """The layer's :class:`jconv.Params`."""
        return Params(self.weight, self.bias, self.cfg)

    def __call__(self, x: jax.Array, output_size=None, *, key: jax.Array | None = None):
        return apply(self.params, x, output_size)


def _module(config_type: type) -> type:
    name = config_type.__name__
    cls = type(
        name,
        (_Conv,),
        {
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"Equinox ``{name}``: torch's arguments, plus ``key=``. "
            + (config_type.__doc__ or "").split("\n")[0],
        },
    )
    cls.config_type = config_type  # a class attribute, not a field
    return cls


Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d = map(
    _module, _config.LAYER_TYPES
)


def _is_layer(x: Any) -> bool:
    return isinstance(x, _Conv)


def _names(model: Any) -> list[tuple[str, _Conv]]:
    """(torch name, layer) for every jconv layer in ``model``, in tree order."""
    leaves = jax.tree_util.tree_leaves_with_path(model, is_leaf=_is_layer)
    out = []
    for path, leaf in leaves:
        if not _is_layer(leaf):
            continue
        node, parts = model, []
        for entry in path:
            part = io.key_name(entry)
            if not (part == "layers" and isinstance(node, equinox.nn.Sequential)):
                parts.append(part)
            node = _child(node, entry)
        out.append((io.torch_name(parts), leaf))
    return out


def _child(node: Any, entry: Any) -> Any:
    if isinstance(entry, jax.tree_util.GetAttrKey):
        return getattr(node, entry.name)
    if isinstance(entry, jax.tree_util.SequenceKey):
        return node[entry.idx]
    if isinstance(entry, jax.tree_util.DictKey):
        return node[entry.key]
    return None


class _Adapter(io.Adapter):
    def owns(self, tree: Any) -> bool:
        return isinstance(tree, equinox.Module) or (
            isinstance(tree, (list, tuple, dict))
            and any(_is_layer(x) for x in jax.tree_util.tree_leaves(tree, is_leaf=_is_layer))
        )

    def layers(self, tree):
        return [(name, m.params) for name, m in _names(tree)]

    def rebuild(self, tree, params):
        names = [name for name, _ in _names(tree)]
        it = iter(names)

        def swap(x):
            if not _is_layer(x):
                return x
            p = params[next(it)]
            return equinox.tree_at(lambda m: (m.weight, m.bias), x, (p.weight, p.bias),
                                   is_leaf=lambda v: v is None)  # fmt: skip

        return jax.tree_util.tree_map(swap, tree, is_leaf=_is_layer)


io.ADAPTERS.append(_Adapter())

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]
