"""Weights in and out with torch's names: ``load_state_dict`` and ``state_dict``.

A tree of configs (a config, or nested dicts/lists/tuples of them) names its
layers the way ``torch.nn.Module.state_dict`` does: ``{"0": cfg0, "2": cfg2}``
expects ``"0.weight"``, ``"0.bias"``, ``"2.weight"``, ...; a single config
expects ``"weight"`` and ``"bias"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jconv import weightnorm
from jconv.config import CONFIG_TYPES
from jconv.layer import Params


class Adapter:
    """How :func:`state_dict` and :func:`load_state_dict` see a framework's module trees.

    ``jconv.nnx``, ``jconv.linen`` and ``jconv.eqx`` each register one when imported
    (this module never imports a framework). ``owns(tree)`` says whether the tree is
    the framework's; ``layers(tree)`` lists ``(torch_name, Params)`` for its jconv
    layers, named as torch names the same model (``"features.0"``); ``rebuild(tree,
    params)`` returns a copy of the tree holding the given ``{torch_name: Params}``.
    """

    def owns(self, tree: Any) -> bool:
        raise NotImplementedError

    def layers(self, tree: Any) -> list[tuple[str, Params]]:
        raise NotImplementedError

    def rebuild(self, tree: Any, params: dict[str, Params]) -> Any:
        raise NotImplementedError


ADAPTERS: list[Adapter] = []


def _adapter(tree: Any) -> Adapter | None:
    return next((a for a in ADAPTERS if a.owns(tree)), None)


def _adapted(adapter: Adapter, tree: Any) -> list[tuple[str, Params]]:
    """An adapter's layers as (prefix, Params): ``"features.0."``, or ``""`` for a model
    that is one layer."""
    return [(name + "." if name else "", p) for name, p in adapter.layers(tree)]


def torch_name(parts) -> str:
    """Dotted torch name of a path of attribute names, list indices and dict keys."""
    return ".".join(str(p) for p in parts)


def key_name(entry) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _prefix(path) -> str:
    return "".join(key_name(p) + "." for p in path)


def to_numpy(value: Any) -> np.ndarray:
    """numpy, jax or torch (duck-typed, torch is never imported) to a numpy copy."""
    if hasattr(value, "detach") and hasattr(value, "__dlpack__"):
        value = value.detach().cpu().contiguous()
        return np.array(jax.dlpack.from_dlpack(value), copy=True)
    return np.array(value, copy=True)


def _layers(tree, types, expected: str) -> list[tuple[str, Any]]:
    """(prefix, leaf) for each leaf of ``tree``, which must be of ``types``; else a
    TypeError that says ``expected`` and where the odd leaf is."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, types))
    out = []
    for path, leaf in leaves:
        if not isinstance(leaf, types):
            raise TypeError(
                f"{expected}; found {type(leaf).__name__} at {_prefix(path)[:-1] or 'the root'!r}"
            )
        out.append((_prefix(path), leaf))
    return out


# torch's weight-norm names for a layer's weight: (g, v)
WEIGHT_NORM_KEYS = (
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
    ("weight_g", "weight_v"),
)


def _weight_norm_pair(state_dict: Mapping[str, Any], prefix: str) -> tuple[str, str] | None:
    """The (g, v) keys of a weight-norm weight under ``prefix``, if any is present."""
    for g, v in WEIGHT_NORM_KEYS:
        if prefix + g in state_dict or prefix + v in state_dict:
            return prefix + g, prefix + v
    return None


def _read(state_dict, key: str, cfg, shape, missing: list, mismatched: list):
    """``state_dict[key]`` as a numpy array of ``shape``, or None with the problem noted."""
    if key not in state_dict:
        missing.append(key)
        return None
    try:
        value = to_numpy(state_dict[key])
    except (TypeError, ValueError) as err:
        mismatched.append(
            f"could not read {key} ({type(state_dict[key]).__name__}) as an array: {err}"
        )
        return None
    if not (np.issubdtype(value.dtype, np.floating) or value.dtype.name == "bfloat16"):
        mismatched.append(
            f"dtype mismatch for {key}: the state_dict holds {value.dtype.name} "
            f"values, {type(cfg).__name__} needs floating-point ones"
        )
        return None
    if shape is not None and value.shape != shape:
        mismatched.append(
            f"size mismatch for {key}: copying a param with shape {value.shape} "
            f"from the state_dict, the shape in {type(cfg).__name__} is {shape}"
        )
        return None
    return value


def _read_weight_norm(state_dict, pair, cfg, shape, missing: list, mismatched: list):
    """The weight torch computes from a weight-norm (g, v) pair: ``g · v / ‖v‖``."""
    g_key, v_key = pair
    v = _read(state_dict, v_key, cfg, shape, missing, mismatched)
    g = _read(state_dict, g_key, cfg, None, missing, mismatched)
    if g is None or v is None:
        return None
    axes = weightnorm.infer_axes(g.shape, v.shape)
    if axes is None:
        mismatched.append(
            f"weight norm mismatch for {g_key}: shape {g.shape} does not fit {v_key} of "
            f"shape {v.shape}; torch's weight_norm stores g with the size of v along one "
            "dim and 1 elsewhere (0-d for dim=None)"
        )
        return None
    return weightnorm.fold(g, v, axes)


def load_state_dict(cfg_tree: Any, state_dict: Mapping[str, Any], strict: bool = True):
    """Parameters for ``cfg_tree`` from a flat torch-style ``state_dict``.

    Values may be numpy arrays, jax arrays or torch tensors; they are cast to each
    config's ``dtype``. Strict (default): missing keys, unexpected keys and wrong
    shapes are all reported together in one ValueError. ``strict=False`` ignores
    unexpected keys only; missing keys and wrong shapes are still errors.
    A weight under torch's weight norm (``parametrizations.weight.original0`` /
    ``original1``, or the legacy ``weight_g`` / ``weight_v``) is folded into
    ``weight`` as torch computes it, ``g · v / ‖v‖``.
    Returns a tree of :class:`Params` shaped like ``cfg_tree``. ``cfg_tree`` may also
    be a ``jconv.nnx`` model (loaded in place and returned), ``jconv.linen`` variables
    or a ``jconv.eqx`` model (new ones returned).
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"state_dict must be a mapping of names to arrays, got {type(state_dict).__name__}"
        )
    adapter = _adapter(cfg_tree)
    if adapter is not None:  # a Flax or Equinox module tree holding the weights
        layers = [(prefix, p.cfg) for prefix, p in _adapted(adapter, cfg_tree)]
        loaded = _load(layers, state_dict, strict)
        return adapter.rebuild(cfg_tree, {k.removesuffix("."): p for k, p in loaded})
    layers = _layers(
        cfg_tree,
        CONFIG_TYPES,
        "cfg_tree must be a config or a nested dict/list/tuple of configs",
    )
    params = iter(p for _, p in _load(layers, state_dict, strict))
    return jax.tree_util.tree_map(lambda _: next(params), cfg_tree)


def _load(layers: list[tuple[str, Any]], state_dict: Mapping[str, Any], strict: bool):
    """(prefix, Params) for each (prefix, config), read from ``state_dict`` with every
    problem reported together."""
    missing, mismatched, built = [], [], []
    expected = set()
    for prefix, cfg in layers:
        wanted = {"weight": cfg.weight_shape}
        if cfg.bias:
            wanted["bias"] = cfg.bias_shape
        arrays = {}
        for kind, shape in wanted.items():
            key = prefix + kind
            pair = _weight_norm_pair(state_dict, prefix) if kind == "weight" else None
            if key in state_dict or pair is None:
                expected.add(key)
                value = _read(state_dict, key, cfg, shape, missing, mismatched)
            else:
                expected.update(pair)
                value = _read_weight_norm(state_dict, pair, cfg, shape, missing, mismatched)
            if value is not None:
                arrays[kind] = jnp.asarray(value, dtype=cfg.dtype)
        built.append(arrays)
    unexpected = sorted(k for k in state_dict if k not in expected) if strict else []
    if missing or unexpected or mismatched:
        lines = []
        if missing:
            lines.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing))
        if unexpected:
            lines.append(
                "Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected)
            )
        lines += mismatched
        raise ValueError(
            "Error(s) in loading state_dict:\n\t" + "\n\t".join(lines) + "\nCheck that the "
            "config tree matches the model the state_dict came from (names, kernel sizes, "
            "channels, bias)."
        )
    return [
        (prefix, Params(weight=a["weight"], bias=a.get("bias"), cfg=cfg))
        for (prefix, cfg), a in zip(layers, built)
    ]


def state_dict(tree: Any) -> dict[str, np.ndarray]:
    """A flat ``{"0.weight": ndarray, ...}`` for a tree of :class:`Params`, named as torch would.

    Also takes a Flax NNX module, Linen variables or an Equinox module built from
    ``jconv.nnx``, ``jconv.linen`` or ``jconv.eqx`` layers.
    """
    adapter = _adapter(tree)
    if adapter is not None:
        layers = _adapted(adapter, tree)
    else:
        layers = _layers(tree, Params, "tree must be Params or a nested dict/list/tuple of Params")
    out: dict[str, np.ndarray] = {}
    for prefix, leaf in layers:
        out[prefix + "weight"] = np.asarray(leaf.weight)
        if leaf.bias is not None:
            out[prefix + "bias"] = np.asarray(leaf.bias)
    return out
