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

from jconv.config import CONFIG_TYPES
from jconv.layer import Params


def _key_name(entry) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _prefix(path) -> str:
    return "".join(_key_name(p) + "." for p in path)


def to_numpy(value: Any) -> np.ndarray:
    """numpy, jax or torch (duck-typed, torch is never imported) to a numpy copy."""
    if hasattr(value, "detach") and hasattr(value, "__dlpack__"):
        value = value.detach().cpu().contiguous()
        return np.array(jax.dlpack.from_dlpack(value), copy=True)
    return np.array(value, copy=True)


def _layers(cfg_tree) -> list[tuple[str, Any]]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(cfg_tree)
    out = []
    for path, leaf in leaves:
        if not isinstance(leaf, CONFIG_TYPES):
            raise TypeError(
                f"cfg_tree must be a config or a nested dict/list/tuple of configs; found "
                f"{type(leaf).__name__} at {_prefix(path)[:-1] or 'the root'!r}"
            )
        out.append((_prefix(path), leaf))
    return out


def load_state_dict(cfg_tree: Any, state_dict: Mapping[str, Any], strict: bool = True):
    """Parameters for ``cfg_tree`` from a flat torch-style ``state_dict``.

    Values may be numpy arrays, jax arrays or torch tensors; they are cast to each
    config's ``dtype``. Strict (default): missing keys, unexpected keys and wrong
    shapes are all reported together in one ValueError. ``strict=False`` ignores
    unexpected keys only; missing keys and wrong shapes are still errors.
    Returns a tree of :class:`Params` shaped like ``cfg_tree``.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"state_dict must be a mapping of names to arrays, got {type(state_dict).__name__}"
        )
    layers = _layers(cfg_tree)
    missing, mismatched, built = [], [], []
    expected = set()
    for prefix, cfg in layers:
        wanted = {"weight": cfg.weight_shape}
        if cfg.bias:
            wanted["bias"] = cfg.bias_shape
        arrays = {}
        for kind, shape in wanted.items():
            key = prefix + kind
            expected.add(key)
            if key not in state_dict:
                missing.append(key)
                continue
            try:
                value = to_numpy(state_dict[key])
            except (TypeError, ValueError) as err:
                mismatched.append(
                    f"could not read {key} ({type(state_dict[key]).__name__}) as an array: {err}"
                )
                continue
            if not (np.issubdtype(value.dtype, np.floating) or value.dtype.name == "bfloat16"):
                mismatched.append(
                    f"dtype mismatch for {key}: the state_dict holds {value.dtype.name} "
                    f"values, {type(cfg).__name__} needs floating-point ones"
                )
                continue
            if value.shape != shape:
                mismatched.append(
                    f"size mismatch for {key}: copying a param with shape {value.shape} "
                    f"from the state_dict, the shape in {type(cfg).__name__} is {shape}"
                )
                continue
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
    params = iter(
        Params(weight=a["weight"], bias=a.get("bias"), cfg=cfg)
        for (_, cfg), a in zip(layers, built)
    )
    return jax.tree_util.tree_map(lambda _: next(params), cfg_tree)


def state_dict(tree: Any) -> dict[str, np.ndarray]:
    """A flat ``{"0.weight": ndarray, ...}`` for a tree of :class:`Params`, named as torch would."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, Params))
    out: dict[str, np.ndarray] = {}
    for path, leaf in leaves:
        if not isinstance(leaf, Params):
            raise TypeError(
                f"tree must be Params or a nested dict/list/tuple of Params; found "
                f"{type(leaf).__name__} at {_prefix(path)[:-1] or 'the root'!r}"
            )
        prefix = _prefix(path)
        out[prefix + "weight"] = np.asarray(leaf.weight)
        if leaf.bias is not None:
            out[prefix + "bias"] = np.asarray(leaf.bias)
    return out
