"""The layer API: ``init(key, cfg) -> Params`` and ``apply(params, x) -> y``."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jconv import core, initializers
from jconv.shapes import check_config


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Params:
    """A layer's parameters; a pytree whose leaves are ``weight`` and ``bias``.

    weight: (out, in/groups, *k), or (in, out/groups, *k) for transposed configs.
    bias: (out,), or None when the config has ``bias=False``.
    cfg: the config, carried as static pytree metadata (so ``jit`` needs no
    static arguments and equal configs share one compiled program).
    """

    weight: jax.Array
    bias: jax.Array | None
    cfg: Any = dataclasses.field(metadata=dict(static=True))


def init(key: jax.Array, cfg: Any) -> Params:
    """Fresh parameters for ``cfg``; deterministic for a given ``key``.

    Default: torch's U(±1/√fan_in) for weight and bias; ``cfg.weight_init`` and
    ``cfg.bias_init`` replace either.
    """
    check_config(cfg, "jconv.init")
    try:
        wkey, bkey = jax.random.split(key)
    except (TypeError, ValueError):
        raise TypeError(
            f"jconv.init expects a PRNG key such as jax.random.key(0), got {key!r}"
        ) from None
    if cfg.weight_init is None:
        weight = initializers.torch_uniform(wkey, cfg.weight_shape, cfg.dtype, cfg.fan_in)
    else:
        weight = initializers.weight_with(cfg.weight_init, wkey, cfg.weight_shape, cfg.dtype)
    bias = None
    if cfg.bias:
        if cfg.bias_init is None:
            bias = initializers.torch_uniform(bkey, cfg.bias_shape, cfg.dtype, cfg.fan_in)
        else:
            bias = jnp.asarray(cfg.bias_init(bkey, cfg.bias_shape, cfg.dtype))
    return Params(weight=weight, bias=bias, cfg=cfg)


def apply(params: Params, x: jax.Array, output_size=None) -> jax.Array:
    """Runs the layer: ``x`` (N, C_in, *sp) or (C_in, *sp) -> (N, C_out, *sp_out).

    ``output_size`` (transposed configs only) picks among the output sizes that a
    stride allows, as torch's ``ConvTranspose.forward(input, output_size)``.
    """
    if not isinstance(params, Params):
        raise TypeError(
            "jconv.apply expects the Params from jconv.init or jconv.load_state_dict, "
            f"got {type(params).__name__}"
        )
    return core.forward(params.cfg, params.weight, params.bias, x, output_size)
