"""output_shape, num_params and flops against jax.eval_shape and hand counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from conftest import random_case, tiered

import jconv


@pytest.mark.parametrize("seed", tiered(range(3000, 3040), 5))
def test_output_shape_equals_eval_shape(seed):
    case = random_case(seed)
    cfg = case.cfg()
    params = jconv.init(jax.random.key(0), cfg)
    spec = jax.eval_shape(jconv.apply, params, jax.ShapeDtypeStruct(case.shape, jnp.float32))
    assert jconv.output_shape(cfg, case.shape) == spec.shape


def test_output_shape_formula_by_hand():
    # the seed walkthrough: 5x5, k=3 -> 3x3; stride 2 -> 2x2; padding 1 -> 3x3
    assert jconv.output_shape(jconv.Conv2d(1, 1, 3), (1, 1, 5, 5)) == (1, 1, 3, 3)
    assert jconv.output_shape(jconv.Conv2d(1, 1, 3, stride=2), (1, 1, 5, 5)) == (1, 1, 2, 2)
    assert jconv.output_shape(jconv.Conv2d(1, 1, 3, stride=2, padding=1), (1, 5, 5)) == (1, 3, 3)
    # floor((10 + 2·3 − 2·(4 − 1) − 1)/3) + 1 = 4
    assert jconv.output_shape(jconv.Conv1d(2, 5, 4, 3, 3, 2), (7, 2, 10)) == (7, 5, 4)
    # "same" keeps the size, even kernels included
    assert jconv.output_shape(jconv.Conv3d(1, 2, (2, 3, 4), padding="same"), (1, 5, 6, 7)) == (
        2,
        5,
        6,
        7,
    )
    assert jconv.output_shape(jconv.Conv1d(1, 1, 5, padding="causal", dilation=3), (1, 9)) == (1, 9)


def test_num_params_by_hand():
    assert jconv.num_params(jconv.Conv2d(3, 64, 7)) == 64 * 3 * 49 + 64
    assert jconv.num_params(jconv.Conv2d(32, 32, 3, groups=32, bias=False)) == 32 * 9
    assert jconv.num_params(jconv.Conv3d(4, 6, (1, 2, 3), groups=2)) == 6 * 2 * 6 + 6
    params = jconv.init(jax.random.key(0), jconv.Conv1d(4, 6, 5, groups=2))
    assert jconv.num_params(params.cfg) == sum(a.size for a in jax.tree.leaves(params))


def test_flops_by_hand():
    # 2 FLOPs per multiply-add, 1 per bias add
    cfg = jconv.Conv2d(3, 8, 3, padding=1)
    macs = 2 * 8 * 32 * 32 * 3 * 9
    assert jconv.flops(cfg, (2, 3, 32, 32)) == 2 * macs + 2 * 8 * 32 * 32
    dw = jconv.Conv2d(16, 16, 5, groups=16, bias=False)
    assert jconv.flops(dw, (16, 12, 12)) == 2 * 16 * 8 * 8 * 1 * 25


def test_flops_close_to_xla_cost_analysis():
    cfg = jconv.Conv2d(8, 16, 3, bias=False)
    params = jconv.init(jax.random.key(0), cfg)
    x = jnp.ones((2, 8, 10, 10))
    cost = jax.jit(jconv.apply).lower(params, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert abs(cost["flops"] - jconv.flops(cfg, x.shape)) / jconv.flops(cfg, x.shape) < 0.05


def test_receptive_field():
    assert jconv.receptive_field(jconv.Conv2d(1, 1, (3, 5), dilation=(2, 1))) == (5, 5)


def test_numpy_and_jax_integers_are_ints_everywhere():
    """torch takes numpy integers for every size; a 0-d one is a scalar, not a sequence."""
    import jax.numpy as jnp
    import numpy as np

    cfg = jconv.Conv2d(
        np.int64(3), np.int32(4), np.int64(3), stride=np.int64(2), padding=np.int64(1),
        dilation=jnp.int32(1), groups=np.int64(1),
    )  # fmt: skip
    assert cfg == jconv.Conv2d(3, 4, 3, stride=2, padding=1)
    assert jconv.Conv2d(3, 4, np.array([3, 5])).kernel_size == (3, 5)
    assert jconv.output_shape(cfg, np.array([2, 3, 9, 9])) == (2, 4, 5, 5)
